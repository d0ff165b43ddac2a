/**
 * The items a round works on (the batch) and what is said of them: taken from the queue, answered,
 * skipped or given up, each toolset told of its own items.
 */
import { Cause, Effect } from "effect"
import type { Coordinator, Item, Owner } from "./coordinator.ts"
import { isClosed, settle } from "./coordinator.ts"
import { byOwner, callIdsOf, ownersOf } from "./decide.ts"

/** A port answer that was not a success, kept whole for the log. */
export class PortFault {
  readonly _tag = "PortFault"
  readonly cause: Cause.Cause<unknown>
  constructor(cause: Cause.Cause<unknown>) {
    this.cause = cause
  }
}

/** A port answer that is not a success is a `PortFault`, unless the coordinator itself is closing (E9). */
export const portFault = (coordinator: Coordinator) => (cause: Cause.Cause<unknown>): Effect.Effect<never, PortFault> =>
  isClosed(coordinator) ? Effect.interrupt : Effect.fail(new PortFault(cause))

/** The port's own answer inside a cause of ours, for the log. */
export const portCause = (cause: Cause.Cause<unknown>): Cause.Cause<unknown> => {
  const reason = cause.reasons.length === 1 ? cause.reasons[0]! : undefined
  return reason !== undefined && Cause.isFailReason(reason) && reason.error instanceof PortFault ? reason.error.cause : cause
}

/** Moves the queued items into the batch; returns those it moved (they are the batch's last). */
export const take = (coordinator: Coordinator): ReadonlyArray<Item> => {
  const queue = coordinator.queue
  if (queue.length === 0) return none
  for (let i = 0; i < queue.length; i++) coordinator.batch.push(queue[i]!)
  coordinator.queue = []
  return queue
}

const none: ReadonlyArray<Item> = []

/** An item whose insertion failed, to be retried (unless its toolset closed: then it is let go). */
export const awaitsInsertion = (item: Item): boolean => !item.inserted && !item.owner.closed

/** An item in the chat whose toolset is open: the reply covers it. */
export const answerable = (item: Item): boolean => item.inserted && !item.owner.closed

/** The item leaves the batch unanswered. */
export const unbatch = (coordinator: Coordinator, item: Item): void => {
  const index = coordinator.batch.indexOf(item)
  if (index >= 0) coordinator.batch.splice(index, 1)
  settle(item)
  if (coordinator.nothingLeft !== undefined && !coordinator.batch.some((i) => !i.owner.closed)) coordinator.nothingLeft()
}

const listened = (item: Item): boolean => item.owner.listening()

/** The reply was asked for (and taken up): tell each toolset, per its own items. */
export const delivered = (coordinator: Coordinator, asked: ReadonlyArray<Item>, instructions: string): void => {
  if (!asked.some(listened)) return
  const at = coordinator.clock.currentTimeMillisUnsafe()
  // (An item given up while the request was under way is not in the batch any more: it was told so.)
  for (const [owner, items] of byOwner(asked.filter((item) => coordinator.batch.includes(item)))) {
    if (owner.closed) continue
    owner.emit({ _tag: "ReplyDelivered", toolsetId: owner.id, callIds: items.map((i) => i.callId), instructions, at })
  }
}

/** No reply for these items: tell each toolset, per its own items. */
export const skipped = (
  coordinator: Coordinator,
  items: ReadonlyArray<Item>,
  reason: "already-answered" | "session-failed"
): void => {
  if (!items.some(listened)) return
  const at = coordinator.clock.currentTimeMillisUnsafe()
  for (const [owner, mine] of byOwner(items)) {
    if (owner.closed) continue
    owner.emit({ _tag: "ReplySkipped", toolsetId: owner.id, callIds: mine.map((i) => i.callId), reason, at })
  }
}

/**
 * These items of the batch are given up (the session failed them within their toolset's retry
 * schedule, or did not answer in time): reported with `reason` and the cause, then they leave the
 * batch. Those in the chat wait there for a later reply; those not in it never reached it.
 */
export const giveUp = (
  coordinator: Coordinator,
  items: ReadonlyArray<Item>,
  cause: Cause.Cause<unknown>,
  reason: string
): Effect.Effect<void> => {
  const inChat = items.filter(answerable)
  const lost = items.filter(awaitsInsertion)
  if (inChat.length === 0 && lost.length === 0) return Effect.sync(() => unbatchAll(coordinator, items))
  return Effect.andThen(
    inChat.length === 0 ? Effect.void : Effect.logError(
      `the reply for ${callIdsOf(inChat)} could not be requested (${reason}); they are in the chat for the next reply`,
      cause
    ),
    lost.length === 0 ? Effect.void : Effect.logError(
      `${callIdsOf(lost)} waited to be inserted again and never reached the chat (${reason})`,
      cause
    )
  ).pipe(
    Effect.andThen(Effect.sync(() => {
      skipped(coordinator, inChat, "session-failed")
      unbatchAll(coordinator, items)
    })),
    Effect.annotateLogs({ toolset: ownersOf(items) })
  )
}

const unbatchAll = (coordinator: Coordinator, items: ReadonlyArray<Item>): void => {
  for (const item of items) unbatch(coordinator, item)
}

/** The batch is answered (or given up): its items no longer count as pending. */
export const settleBatch = (coordinator: Coordinator): void => {
  const batch = coordinator.batch
  if (batch.length === 0) return
  coordinator.batch = []
  let single: Owner | undefined
  let several: Set<Owner> | undefined
  for (const item of batch) {
    if (item.owner.closed) continue
    item.owner.pending--
    if (single === undefined) single = item.owner
    else if (single !== item.owner) (several ??= new Set([single])).add(item.owner)
  }
  // Waking comes last: a toolset found idle may act at once.
  if (several !== undefined) {
    for (const owner of several) if (!owner.closed) owner.settled()
  } else if (single !== undefined) {
    single.settled()
  }
}
