/**
 * The delivery of a call's later items: the pair made under a synthetic call id (`<base>_update_<n>`,
 * `<base>_final`), inserted into the chat and handed to the reply coordinator, or retried, let go
 * or reported lost; and an item already in the chat, owed a reply, handed over.
 */
import { Effect } from "effect"
import type { Cause } from "effect"
import type { ChatItem } from "../ChatContext.ts"
import type * as FunctionTool from "../FunctionTool.ts"
import type { Call, Toolset } from "./callRun.ts"
import * as Coordinator from "./coordinator/index.ts"
import { newId } from "./id.ts"
import * as Items from "./items.ts"

/**
 * A call's synthetic call id: its base (claimed for the session once) and a suffix, unless the
 * model took that id for a call of its own (B7).
 */
export const syntheticId = (toolset: Toolset, c: Call, suffix: string): string =>
  Coordinator.claimSynthetic(toolset.session, c.base ??= Coordinator.claimBase(toolset.session, c.functionCall.callId), suffix)

/** A call/output pair made now, under `callId`. */
export const pairOf = (
  toolset: Toolset,
  c: Call,
  callId: string,
  out: FunctionTool.Output
): readonly [ChatItem, ChatItem] => {
  const now = toolset.clock.currentTimeMillisUnsafe()
  const { arguments: args, name } = c.functionCall
  return [
    Items.functionCall(newId("fc"), callId, name, args, now),
    Items.functionCallOutput(newId("fco"), callId, name, out.output, out.isError, now)
  ]
}

export const lostAtClose = (toolset: Toolset, callId: string) =>
  Effect.logError(`the toolset closed before ${callId} reached the chat; it is not delivered`)
    .pipe(Effect.annotateLogs({ toolset: toolset.id, callId }))

/**
 * Delivers a later item of a call (B4, B5): the pair `items` under the synthetic id `callId`,
 * inserted into the chat now (C1) and handed to the reply coordinator. Nothing is delivered for a
 * stopped call (E2), except the toolset's own word that it timed out (`force`). A failed
 * insertion, whatever its cause, is the coordinator's to retry: a port answer never cancels the
 * call; only the call's own state says it is stopping (E9).
 *
 * The insertion is interruptible even inside a tool's uninterruptible region, so a cancel, a
 * timeout or close is not held up by a slow session; the region still stays whole: an
 * interrupted insertion is not an interruption of the tool (`update` returns normally, and the
 * tool's own interruption comes when its region ends).
 */
export const deliverPair = (
  toolset: Toolset,
  c: Call,
  callId: string,
  items: ReadonlyArray<ChatItem>,
  force = false
): Effect.Effect<void> =>
  // From the count of pending items to the hand-over nothing may interrupt: the count moves with
  // the item, whatever interrupts the caller and when. Only the insertion is interruptible.
  Effect.uninterruptible(Effect.suspend(() => deliverNow(toolset, c, callId, items, force)))

/** `deliverPair`, run where nothing can interrupt already. */
export const deliverNow = (
  toolset: Toolset,
  c: Call,
  callId: string,
  items: ReadonlyArray<ChatItem>,
  force: boolean
): Effect.Effect<void> => {
  if (!force && c.status !== "running" && c.status !== "finishing") return Effect.void
  if (toolset.owner.closed) return lostAtClose(toolset, callId)
  return insertItem(toolset, c, prepareItem(toolset, c, callId, items, force))
}

/** An item of a call; it counts as pending from here on. */
export const prepareItem = (
  toolset: Toolset,
  c: Call,
  callId: string,
  items: ReadonlyArray<ChatItem>,
  force: boolean
): Coordinator.Item => {
  const item: Coordinator.Item = {
    owner: toolset.owner,
    callId,
    items,
    inserted: false,
    insertedAt: 0,
    call: c,
    dropped: () => Coordinator.dropped(c, force)
  }
  Coordinator.begin(item)
  return item
}

/** Inserts a prepared item, then hands it over (or lets it go, or reports it lost). */
export const insertItem = (toolset: Toolset, c: Call, item: Coordinator.Item): Effect.Effect<void> =>
  Effect.matchCauseEffect(Effect.interruptible(Coordinator.callPort(() => toolset.session.insert(item.items))), {
    onSuccess: () => {
      // In the chat: it is answered, even if its call was stopped in the same instant (the model
      // never finds an item nobody asked it about).
      Coordinator.inserted(toolset.coordinator, item)
      toolset.emit(() => ({ _tag: "ReplyScheduled", toolsetId: toolset.id, callId: item.callId, at: toolset.clock.currentTimeMillisUnsafe() }))
      Coordinator.handOver(toolset.coordinator, item)
      return Effect.void
    },
    onFailure: (cause) => insertFailed(toolset, c, item, cause)
  })

/** The insertion did not work, whatever its shape: lost at close, let go after a cancel, or retried. */
const insertFailed = (toolset: Toolset, c: Call, item: Coordinator.Item, cause: Cause.Cause<unknown>): Effect.Effect<void> => {
  const owner = toolset.owner
  if (owner.closed || c.stopCause === "closed") {
    // Lost because the toolset closed: say so (before the count drops: an idle waiter may close).
    return Effect.andThen(lostAtClose(toolset, item.callId), Effect.sync(() => Coordinator.settle(item)))
  }
  if (item.dropped() === "cancelled") {
    // Its call was cancelled: nothing more of it reaches the chat. The insertion cut short may
    // have put part of it there (a function call without its output, which a provider refuses):
    // the coordinator looks, lets it go if nothing is there, and completes it if part is. If
    // the call's fiber was interrupted, the interruption goes on by itself as this region ends.
    Coordinator.handOver(toolset.coordinator, item)
    return Effect.void
  }
  Coordinator.handOver(toolset.coordinator, item)
  return Effect.logWarning("could not insert a tool result into the chat; the reply coordinator will retry", cause)
    .pipe(Effect.annotateLogs({ toolset: toolset.id, callId: item.callId }))
}

/**
 * An item already in the chat, owed a reply (a store brought it back: recorded before this
 * toolset was made, or a call's output put back into the chat): handed to the coordinator. With
 * `inserted` false, its insertion failed: the coordinator retries it as any other (C4b), and asks
 * for the reply only once it is in the chat.
 */
export const owe = (toolset: Toolset, callId: string, items: ReadonlyArray<ChatItem>, insertedAt: number, inserted = true): void => {
  const item: Coordinator.Item = {
    owner: toolset.owner,
    callId,
    items,
    inserted,
    insertedAt,
    call: noCall,
    dropped: () => undefined
  }
  Coordinator.begin(item)
  toolset.emit(() => ({ _tag: "ReplyScheduled", toolsetId: toolset.id, callId, at: insertedAt }))
  Coordinator.handOver(toolset.coordinator, item)
}

const noCall: Coordinator.CallState = { stopCause: undefined }
