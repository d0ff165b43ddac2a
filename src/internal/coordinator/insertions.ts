/**
 * Insertions the coordinator retries: items whose insertion by their toolset failed, inserted
 * again once the session is inactive (a session may refuse insertions while it generates),
 * stamped when they finally reach the chat (C4b), each within its toolset's retry schedule and
 * time bound. An insertion cut short may have happened all the same, so the chat is read first and
 * only what is missing goes in: inserting blindly could put an item in twice (C3).
 */
import { Cause, Deferred, Duration, Effect, Exit, Option } from "effect"
import type { ChatItem } from "../../ChatContext.ts"
import { withCreatedAt } from "../items.ts"
import { awaitsInsertion, portCause, portFault, unbatch } from "./batch.ts"
import type { PortFault } from "./batch.ts"
import type { Coordinator, Item } from "./coordinator.ts"
import { callPort, inserted, isClosed } from "./coordinator.ts"
import { callIdsOf, ownersOf } from "./decide.ts"

/**
 * Inserts the batch's items whose insertion failed, stamped now. An item of a call cancelled
 * meanwhile is let go; one that still fails is reported and not answered.
 */
export const retryInsertions = (coordinator: Coordinator): Effect.Effect<void> =>
  Effect.forEach(coordinator.batch.filter(awaitsInsertion), (item) => retryOne(coordinator, item), { discard: true })

const retryOne = (coordinator: Coordinator, item: Item): Effect.Effect<void> => {
  const owner = item.owner
  const onFault = portFault(coordinator)
  const attempt = Effect.suspend((): Effect.Effect<"inserted" | "skipped", PortFault> => {
    if (owner.closed) return Effect.succeed("skipped")
    // If the chat cannot be read, the attempt fails (and is retried).
    return Effect.flatMap(Effect.exit(coordinator.session.items), (read) => {
      if (Exit.isFailure(read)) return onFault(read.cause)
      // Only what is missing goes in (an insertion cut short may have put part of it there).
      const missing = item.items.filter((i) => !contains(read.value, i.id))
      if (missing.length === 0) return Effect.succeed("inserted" as const)
      // Its call was cancelled: nothing more of it goes in, unless part of it is there already
      // (a function call without its output, which a provider refuses): then the pair is completed.
      if (item.dropped() !== undefined && missing.length === item.items.length) return Effect.succeed("skipped" as const)
      const now = coordinator.clock.currentTimeMillisUnsafe()
      const stamped = missing.map((i) => withCreatedAt(i, now))
      item.items = item.items.map((i) => stamped.find((s) => s.id === i.id) ?? i)
      return Effect.as(Effect.catchCause(callPort(() => coordinator.session.insert(stamped)), onFault), "inserted" as const)
    })
  }).pipe(
    Effect.retry(owner.policy.sessionRetry),
    Effect.timeoutOption(owner.policy.replyTimeout)
  )
  // A toolset that closes meanwhile takes its items back (and reports them): stop inserting.
  return Effect.raceFirst(Effect.exit(attempt), Effect.as(Deferred.await(owner.closing), undefined)).pipe(
    Effect.flatMap((exit) => {
      if (exit === undefined || owner.closed) return Effect.void
      if (Exit.isSuccess(exit) && Option.isSome(exit.value) && exit.value.value === "inserted") {
        // In the chat: it is answered, even if its call was stopped meanwhile.
        inserted(coordinator, item)
        owner.emit({ _tag: "ReplyScheduled", toolsetId: owner.id, callId: item.callId, at: item.insertedAt })
        return Effect.void
      }
      if (isClosed(coordinator)) return Effect.interrupt
      const reason = item.dropped()
      // Logged before the count drops: a toolset waiting to be idle may close at once.
      const clean = Exit.isSuccess(exit) && Option.isSome(exit.value) // "skipped": nothing of it is in the chat
      const log = reason === "cancelled" && clean
        ? Effect.logDebug(`${item.callId} is not inserted: its call was cancelled before the insertion worked`)
        : reason === "cancelled"
        ? Effect.logError(
          `${item.callId}: its call was cancelled, but a failed insertion may have left part of it in the chat (a function call without its output) and it could not be completed`,
          Exit.isFailure(exit) ? portCause(exit.cause) : Cause.fail("no answer in time")
        )
        : Exit.isSuccess(exit)
        ? Effect.logError(`could not insert ${item.callId} into the chat in time; no reply is requested for it`)
        : Effect.logError(
          `could not insert ${item.callId} into the chat (or read the chat to see whether an insertion cut short put it there); no reply is requested for it`,
          portCause(exit.cause)
        )
      return log.pipe(
        Effect.annotateLogs({ toolset: owner.id }),
        Effect.andThen(Effect.sync(() => unbatch(coordinator, item)))
      )
    })
  )
}

/**
 * Items of calls cancelled after their insertion failed: let go at once when nothing of them is
 * in the chat (no wait for the session to be idle); kept, to be completed, when part of them is
 * (a function call without its output, which a provider refuses). The look is retried by each
 * item's toolset's schedule and bounded in time like an insertion; if the chat cannot be read,
 * they are let go with an error saying that part of them may be in the chat.
 */
export const letGoCancelled = (coordinator: Coordinator): Effect.Effect<void> => {
  const cancelled = coordinator.batch.filter((item) => awaitsInsertion(item) && item.dropped() !== undefined && item.looked !== true)
  if (cancelled.length === 0) return Effect.void
  for (const item of cancelled) item.looked = true
  // One look for all of them, by the most patient of their toolsets' policies.
  const policy = cancelled.reduce(
    (best, item) =>
      Duration.toMillis(item.owner.policy.replyTimeout) > Duration.toMillis(best.replyTimeout) ? item.owner.policy : best,
    cancelled[0]!.owner.policy
  )
  const read = Effect.catchCause(coordinator.session.items, portFault(coordinator))
  const letGo = (items: ReadonlyArray<Item>) =>
    Effect.sync(() => {
      for (const item of items) unbatch(coordinator, item)
    })
  return read.pipe(
    Effect.retry(policy.sessionRetry),
    Effect.timeoutOption(policy.replyTimeout),
    Effect.matchCauseEffect({
      onSuccess: (chat) => {
        const absent = Option.isSome(chat)
          ? cancelled.filter((item) => !item.items.some((i) => contains(chat.value, i.id)))
          : cancelled
        if (absent.length === 0) return Effect.void
        const log = Option.isSome(chat)
          ? Effect.logDebug(`${callIdsOf(absent)} not inserted: their calls were cancelled before the insertion worked`)
          : Effect.logError(
            `${callIdsOf(absent)}: their calls were cancelled, but a failed insertion may have left part of them in the chat (a function call without its output); the chat could not be read in time to complete them`
          )
        return Effect.andThen(log.pipe(Effect.annotateLogs({ toolset: ownersOf(absent) })), letGo(absent))
      },
      onFailure: (cause) =>
        isClosed(coordinator) ? Effect.interrupt : Effect.andThen(
          Effect.logError(
            `${callIdsOf(cancelled)}: their calls were cancelled, but a failed insertion may have left part of them in the chat (a function call without its output); the chat could not be read to complete them`,
            portCause(cause)
          ).pipe(Effect.annotateLogs({ toolset: ownersOf(cancelled) })),
          letGo(cancelled)
        )
    })
  )
}

/** Whether the chat holds an item with this id (searched from the newest: a retried item is recent). */
export const contains = (chat: ReadonlyArray<ChatItem>, id: string): boolean => {
  for (let i = chat.length - 1; i >= 0; i--) if (chat[i]!.id === id) return true
  return false
}
