/**
 * What a durable call's follower does with what its execution records: it waits for the next
 * event (told in this process, or read from the store), applies a first output or a later pair
 * through the engine's functions, catches up with what the store holds beyond what was applied,
 * and tells the execution's end. `store.ts` starts and stops the follower.
 */
import { Effect } from "effect"
import type { ChatItem, FunctionCall, FunctionCallOutput } from "../../ChatContext.ts"
import * as Lifecycle from "../../internal/callLifecycle.ts"
import * as CallRun from "../../internal/callRun.ts"
import type { Call, Toolset } from "../../internal/callRun.ts"
import * as Coordinator from "../../internal/coordinator/index.ts"
import { withCreatedAt } from "../../internal/items.ts"
import { retrying } from "./body.ts"
import { readCall } from "./calls.ts"
import { itemsOfCall, rename, restamp, restoreCall } from "./chatItems.ts"
import { post } from "./hub.ts"
import type { CallEvent, Mailbox } from "./hub.ts"
import type { Deps, Record } from "./store.ts"
import type { ItemRow } from "./tables.ts"
import { decodeItem, decodeOutput, isLive } from "./tables.ts"

/** Follows the execution until it ends: what it records is applied as it comes. */
export const untilEnded = (
  deps: Deps,
  toolset: Toolset,
  c: Call,
  record: Record,
  box: Mailbox
): Effect.Effect<Extract<CallEvent, { readonly _tag: "Ended" }>> =>
  Effect.gen(function*() {
    while (true) {
      const event = yield* next(deps, toolset, c, record, box)
      if (event._tag === "Ended") return event
      yield* apply(deps, toolset, c, record, event)
    }
  })

/**
 * The next event of the call: told in this process, or read from the store when nothing was told
 * for `pollInterval` (the execution runs in another process).
 */
const next = (deps: Deps, toolset: Toolset, c: Call, record: Record, box: Mailbox): Effect.Effect<CallEvent> =>
  Effect.suspend(() => {
    const ready = box.events.shift()
    if (ready !== undefined) return Effect.succeed(ready)
    return Effect.flatMap(
      Effect.timeoutOption(take(box), deps.store.pollInterval),
      (event) => event._tag === "Some" ? Effect.succeed(event.value) : Effect.andThen(catchUp(deps, toolset, c, record, box), next(deps, toolset, c, record, box))
    )
  })

const take = (box: Mailbox): Effect.Effect<CallEvent> =>
  Effect.callback<CallEvent>((resume) => {
    const ready = box.events.shift()
    if (ready !== undefined) return resume(Effect.succeed(ready))
    // The event is taken when the fiber runs again, not when it is told: a fiber interrupted
    // meanwhile leaves it in the box for the next reader.
    box.wake = () => resume(Effect.suspend(() => take(box)))
    return Effect.sync(() => {
      box.wake = undefined
    })
  })

/** Applies what the execution recorded: the first output, or a later pair. */
const apply = (deps: Deps, toolset: Toolset, c: Call, record: Record, event: CallEvent): Effect.Effect<void> => {
  switch (event._tag) {
    case "First": {
      if (record.first) return Effect.void
      record.first = true
      if (record.adopted !== undefined && !c.firstSettled) return restore(deps, toolset, c, event.output, event.message)
      CallRun.settleFirst(toolset, c, event.output, event.message)
      return Effect.void
    }
    case "Returned": {
      // Its tool returned: its result stands, whatever the clock says meanwhile (E7).
      markReturned(toolset, c)
      return Effect.void
    }
    case "Pair": {
      if (event.n <= record.pairs) return Effect.void
      record.pairs = event.n
      // A model call may have taken the pair's id meanwhile (B7): the chat gets a free one.
      CallRun.emitUpdated(toolset, c, event.n, event.message, event.items[1].output)
      return deliver(deps, toolset, c, event.items, false)
    }
    default:
      return Effect.void
  }
}

/**
 * Hands a recorded pair to the engine: into the agent's chat, then to the reply coordinator. The
 * pair is the store's already (the agent's chat store must not save it again), and it counts from
 * when it reaches the chat: if the chat moved on since it was recorded, it is stamped now (C4b).
 */
export const deliver = (
  deps: Deps,
  toolset: Toolset,
  c: Call,
  items: ReadonlyArray<ChatItem>,
  force: boolean
): Effect.Effect<void> =>
  Effect.suspend(() => {
    // In the agent's chat already (it was there when the session was opened, or this is the same
    // call taken up again): it was told, or is owed and was handed over then.
    if (items.every((item) => deps.chat.has(item.id))) return Effect.void
    // Placed after the newest item of the agent's chat (as the store knows it: no read of the
    // session's chat, whose port may be slow or failing, on the way to the chat).
    const newest = deps.chat.newestAt()
    const callId = (items[0] as FunctionCall).callId
    const free = Coordinator.isTaken(toolset.session, callId) ? Coordinator.claimSynthetic(toolset.session, callId, "") : callId
    const now = deps.clock.currentTimeMillisUnsafe()
    const late = items.some((item) => item.createdAt < newest)
    let placed = items
    if (late || free !== callId) placed = items.map((item) => renamed(late ? withCreatedAt(item, Math.max(now, newest)) : item, free))
    else Coordinator.claimSynthetic(toolset.session, callId, "")
    deps.chat.adopt(placed.map((item) => item.id))
    // (Stored as placed: when it counts from, and under which call id.)
    const rewrite = free !== callId
      ? Effect.ignore(rename(deps.store.sql, deps.chat.sessionId, placed, free))
      : late
      ? Effect.ignore(restamp(deps.store.sql, deps.chat.sessionId, placed.map((i) => i.id), placed[0]!.createdAt))
      : Effect.void
    return Effect.andThen(rewrite, CallRun.deliverPair(toolset, c, free, placed, force))
  })

const renamed = (item: ChatItem, callId: string): ChatItem =>
  item._tag === "ChatMessage" || item.callId === callId ? item : Object.assign(Object.create(Object.getPrototypeOf(item)), item, { callId })

/**
 * Reads what the store holds of the call beyond what was applied (after a restart, or when its
 * execution runs in another process) and posts it as events, in order.
 */
export const catchUp = (deps: Deps, _toolset: Toolset, c: Call, record: Record, box: Mailbox): Effect.Effect<void> =>
  Effect.gen(function*() {
    const sessionId = deps.chat.sessionId
    const row = yield* readCall(deps.store.sql, sessionId, c.base!)
    if (row === undefined || row.version === record.version) return
    record.version = row.version
    if (!record.first && row.firstOutput !== null && (isLive(row.status) || row.updates > 0 || row.steps > 0)) {
      post(box, { _tag: "First", output: decodeOutput(row.firstOutput), message: row.firstMessage ?? "" })
    }
    const items = yield* itemsOfCall(deps.store.sql, sessionId, c.base!, record.pairs)
    for (const [fc, fco] of pairs(items)) {
      if (fc.step !== null && fc.step > 0) {
        post(box, { _tag: "Pair", n: fc.step, items: [decodeItem(fc.item, fc.createdAt) as FunctionCall, decodeItem(fco.item, fco.createdAt) as FunctionCallOutput], message: fco.message ?? "" })
      }
    }
    if (row.status === "running" && c.status === "waiting") post(box, { _tag: "Running" })
    if (!isLive(row.status)) {
      const final = pairs(items).find(([fc]) => fc.step === -1)
      post(box, {
        _tag: "Ended",
        found: row.stopCause === null ? "running" : "stopping",
        status: row.status as Exclude<typeof row.status, "waiting" | "running" | "stopping">,
        output: row.firstOutput === null ? undefined : decodeOutput(row.firstOutput),
        final: final === undefined ? undefined : [decodeItem(final[0].item, final[0].createdAt) as FunctionCall, decodeItem(final[1].item, final[1].createdAt) as FunctionCallOutput],
        message: undefined
      })
    }
  }).pipe(
    Effect.catchCause((cause) =>
      Effect.logWarning("could not read a durable call from its store; trying again", cause).pipe(
        Effect.annotateLogs({ toolset: deps.toolsetId, callId: c.functionCall.callId })
      )
    )
  )

/** Item rows as pairs (a call and its output, by call id), in order. */
const pairs = (rows: ReadonlyArray<ItemRow>): ReadonlyArray<readonly [ItemRow, ItemRow]> => {
  const out: Array<readonly [ItemRow, ItemRow]> = []
  for (let i = 0; i + 1 < rows.length; i++) {
    const a = rows[i]!
    const b = rows[i + 1]!
    if (a.callId !== null && a.callId === b.callId && a.itemId.startsWith("fc:") && b.itemId.startsWith("fco:")) {
      out.push([a, b])
      i++
    }
  }
  return out
}

/**
 * Its tool returned: the call is finishing from now on, no timeout or cancel applies (E7); true if
 * it is (also when the return was told before), false if it was stopped first.
 */
export const markReturned = (toolset: Toolset, c: Call): boolean => {
  if (c.status === "finishing") return true
  if (!Lifecycle.handlerReturned(toolset.registry, c)) return false
  Lifecycle.flush(toolset.registry)
  return true
}

/** The execution ended while the call was running: its result is what the model hears (B3, B5). */
export const ended = (
  deps: Deps,
  toolset: Toolset,
  c: Call,
  record: Record,
  end: Extract<CallEvent, { readonly _tag: "Ended" }>
): Effect.Effect<void> => {
  if (!markReturned(toolset, c)) return Effect.void
  return tellEnd(deps, toolset, c, record, end, false)
}

/** Tells a recorded end: the whole result as the first output, or the `_final` pair. */
export const tellEnd = (
  deps: Deps,
  toolset: Toolset,
  c: Call,
  record: Record,
  end: Extract<CallEvent, { readonly _tag: "Ended" }>,
  force: boolean
): Effect.Effect<void> => {
  c.outcome = end.status === "done" ? "done" : end.status === "error" ? "error" : end.status
  if (end.found !== "running") return Effect.void
  if (!c.firstSettled && end.output !== undefined) {
    record.first = true
    if (record.adopted !== undefined) return restore(deps, toolset, c, end.output, undefined)
    CallRun.settleFirst(toolset, c, end.output)
    return Effect.void
  }
  if (end.final === undefined) return Effect.void
  return deliver(deps, toolset, c, end.final, force)
}

/**
 * A call taken up after a restart answered, and nobody here waits for that answer (the turn that
 * asked ended with the process that asked): its call and that answer are put back into the chat,
 * owed a reply.
 */
const restore = (
  deps: Deps,
  toolset: Toolset,
  c: Call,
  output: FunctionCallOutput,
  message: string | undefined
): Effect.Effect<void> => {
  Lifecycle.settleFirst(toolset.registry, c, output)
  Lifecycle.flush(toolset.registry)
  if (message !== undefined) CallRun.emitUpdated(toolset, c, 0, message, output.output)
  const call = c.functionCall
  if (deps.chat.has(call.id)) return Effect.void
  const items = [call, output] as const
  return Effect.gen(function*() {
    yield* retrying(restoreCall(deps.store.sql, deps.chat.sessionId, deps.toolsetId, c.base!, call, output))
    deps.chat.adopt([call.id, output.id])
    // Into the agent's chat as a call's later item is (interruptibly; a failed insertion is the
    // reply coordinator's to retry), owed a reply.
    yield* CallRun.deliverPair(toolset, c, call.callId, items, true)
  })
}
