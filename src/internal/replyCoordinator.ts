/**
 * The reply coordinator of one session, shared by every toolset on it.
 *
 * A toolset inserts a call's later update or final result into the chat itself (so it is there
 * when `update` returns, rule C1) and hands the inserted items here. One fiber per session waits
 * until the session is inactive, takes everything pending from every toolset at once, and asks
 * for exactly one reply covering it all (C2, C3): two toolsets never cause two back-to-back
 * replies. It also retries insertions that failed (stamping the items anew, C4b), chooses the
 * wording (C4), and keeps, per toolset, the count of items not yet answered (for `awaitIdle`).
 *
 * Every answer of the session port, whatever its shape (a failure, a defect, an interrupt cause),
 * is a fault to retry or report: only the coordinator's own `closed` flag says it is stopping
 * (E9). Its fiber never dies of a port answer.
 */
import { Cause, Clock, Deferred, Duration, Effect, Exit, Fiber, Option, References, Schedule } from "effect"
import type { Scope } from "effect"
import type { AgentSession } from "../AgentSession.ts"
import type { ChatItem } from "../ChatContext.ts"
import * as Prompts from "../Prompts.ts"
import type { ToolsetEvent } from "../ToolsetEvent.ts"
import { withCreatedAt } from "./items.ts"

type Session = AgentSession["Service"]

/** How a toolset wants its results answered. */
export interface ReplyPolicy {
  readonly prompts: Prompts.Prompts
  readonly whenAlreadyAnswered: "ask" | "skip"
  readonly sessionRetry: Schedule.Schedule<unknown, unknown>
  readonly replyTimeout: Duration.Duration
}

/** A toolset, as the coordinator sees it. */
export interface Owner {
  readonly id: string
  readonly policy: ReplyPolicy
  /** Items not answered yet: being inserted, queued, retried, or in a reply in flight. */
  pending: number
  closed: boolean
  /** Publishes one of the toolset's events (a no-op without subscribers). */
  readonly emit: (event: ToolsetEvent) => void
  /** Called when `pending` went down: the toolset may be idle now. */
  readonly settled: () => void
  /** Completed when the toolset closes. */
  readonly closing: Deferred.Deferred<void>
}

/** A call/output pair a toolset put (or tried to put) into the chat, owed a reply. */
export interface Item {
  readonly owner: Owner
  /** The synthetic call id (`<callId>_update_<n>`, `<callId>_final`). */
  readonly callId: string
  items: ReadonlyArray<ChatItem>
  inserted: boolean
  /** Its call was cancelled meanwhile: a failed insertion is not retried. */
  readonly dropped: () => boolean
}

/** The coordinator of one session. */
export interface Coordinator {
  readonly session: Session
  readonly clock: Clock.Clock
  /** Items handed over and not taken yet. */
  queue: Array<Item>
  /** Items taken for the reply being prepared or requested. */
  batch: Array<Item>
  /** Completed when the queue gets an item while the fiber waits for one. */
  parked: Deferred.Deferred<void> | undefined
  readonly owners: Set<Owner>
  /** Synthetic id bases handed out, by original call id, newest last (rule B7). */
  readonly bases: Map<string, number>
  fiber: Fiber.Fiber<never, unknown> | undefined
  closed: boolean
  /** The chat as read before the last idle wait of the reply being prepared. */
  chat: ReadonlyArray<ChatItem> | undefined
}

/** How many reused call ids the coordinator remembers (the newest). */
const maxRememberedIds = 10_000

const coordinators = new WeakMap<Session, Coordinator>()

/**
 * The session's coordinator for as long as the current scope is open: made (and its fiber
 * started) by the first toolset of the session, closed with the last.
 */
export const acquire = (session: Session, owner: Owner): Effect.Effect<Coordinator, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.clockWith((clock) =>
      Effect.suspend(() => {
        let coordinator = coordinators.get(session)
        if (coordinator !== undefined) {
          coordinator.owners.add(owner)
          return Effect.succeed(coordinator)
        }
        const made: Coordinator = {
          session,
          clock,
          queue: [],
          batch: [],
          parked: undefined,
          owners: new Set([owner]),
          bases: new Map(),
          fiber: undefined,
          closed: false,
          chat: undefined
        }
        coordinators.set(session, made)
        coordinator = made
        return Effect.map(
          Effect.forkDetach(run(made), { startImmediately: true }),
          (fiber) => {
            made.fiber = fiber
            return made
          }
        )
      })
    ),
    (coordinator) => release(coordinator, owner)
  )

/** The toolset leaves; the last toolset's release stops the fiber. */
const release = (coordinator: Coordinator, owner: Owner): Effect.Effect<void> =>
  Effect.suspend(() => {
    const left = closeOwner(coordinator, owner)
    coordinator.owners.delete(owner)
    const report = letGo(owner, left)
    if (coordinator.owners.size > 0) return report
    coordinator.closed = true
    if (coordinators.get(coordinator.session) === coordinator) coordinators.delete(coordinator.session)
    const fiber = coordinator.fiber
    return fiber === undefined ? report : Effect.andThen(report, Fiber.interrupt(fiber))
  })

/** Says which items a closing toolset lets go: those not in the chat, and those owed a reply. */
export const letGo = (owner: Owner, items: ReadonlyArray<Item>): Effect.Effect<void> => {
  const lost = items.filter((item) => !item.inserted && !item.dropped()).map((item) => item.callId)
  const unanswered = items.filter((item) => item.inserted).map((item) => item.callId)
  if (lost.length === 0 && unanswered.length === 0) return Effect.void
  return Effect.andThen(
    lost.length > 0 ? Effect.logError(`closing: ${lost.join(", ")} never reached the chat`) : Effect.void,
    unanswered.length > 0
      ? Effect.logInfo(`closing: no reply will be requested for ${unanswered.join(", ")} (they are in the chat)`)
      : Effect.void
  ).pipe(Effect.annotateLogs({ toolset: owner.id }))
}

// --- what toolsets call ------------------------------------------------------------------------

/**
 * The toolset is closing: nothing of it is inserted or answered from now on. Its items still
 * queued or in the batch are taken back and returned, for `letGo` to report; its count drops to
 * zero. A second call returns nothing.
 */
export const closeOwner = (coordinator: Coordinator, owner: Owner): ReadonlyArray<Item> => {
  if (owner.closed) return []
  owner.closed = true
  const mine = (item: Item) => item.owner === owner
  const left = [...coordinator.queue.filter(mine), ...coordinator.batch.filter(mine)]
  coordinator.queue = coordinator.queue.filter((item) => !mine(item))
  coordinator.batch = coordinator.batch.filter((item) => !mine(item))
  owner.pending = 0
  owner.settled()
  Deferred.doneUnsafe(owner.closing, Exit.void)
  return left
}

/**
 * The base of a call's synthetic ids: its call id, or, when that call id already had synthetic
 * items in this session (a model reusing an ended call's id), `<callId>_run<k>`, so no two pairs
 * in the chat share a call id.
 */
export const claimBase = (coordinator: Coordinator, callId: string): string => {
  const bases = coordinator.bases
  const used = bases.get(callId) ?? 0
  bases.delete(callId)
  bases.set(callId, used + 1)
  if (bases.size > maxRememberedIds) bases.delete(bases.keys().next().value!)
  return used === 0 ? callId : `${callId}_run${used + 1}`
}

/** An item is being inserted by its toolset: it counts as pending from now on. */
export const begin = (item: Item): void => {
  item.owner.pending++
}

/** The item is in the chat (or its insertion failed and is to be retried): queue it for the reply. */
export const handOver = (coordinator: Coordinator, item: Item): void => {
  if (item.owner.closed || coordinator.closed) return settle(item)
  coordinator.queue.push(item)
  const parked = coordinator.parked
  if (parked !== undefined) {
    coordinator.parked = undefined
    Deferred.doneUnsafe(parked, Exit.void)
  }
}

/** The item will never be answered (its call was cancelled, or its toolset closed). */
export const settle = (item: Item): void => {
  if (item.owner.closed) return
  item.owner.pending--
  item.owner.settled()
}

// --- the fiber ---------------------------------------------------------------------------------

/** A port answer that was not a success, kept whole for the log. */
class PortFault {
  readonly _tag = "PortFault"
  readonly cause: Cause.Cause<unknown>
  constructor(cause: Cause.Cause<unknown>) {
    this.cause = cause
  }
}

/** The port's own answer inside a cause of ours, for the log. */
const portCause = (cause: Cause.Cause<unknown>): Cause.Cause<unknown> => {
  const reason = cause.reasons.length === 1 ? cause.reasons[0]! : undefined
  return reason !== undefined && Cause.isFailReason(reason) && reason.error instanceof PortFault ? reason.error.cause : cause
}

/**
 * The coordinator's fiber: wait for items, let a burst of results that arrive together join, then
 * one round. The effects are built once, here; a round reads and writes the coordinator's state.
 */
const run = (coordinator: Coordinator): Effect.Effect<never> => {
  const session = coordinator.session
  /** A port answer that is not a success is a `PortFault`, unless the coordinator itself is closing. */
  const onPortFault = (cause: Cause.Cause<unknown>) => coordinator.closed ? Effect.interrupt : Effect.fail(new PortFault(cause))
  const awaitInactive = Effect.catchCause(session.awaitInactive, onPortFault)

  // The chat, read only to pick the wording: if the read fails, ask as if the items were the latest.
  const readChat = Effect.matchCauseEffect(session.items, {
    onSuccess: (chat) => {
      coordinator.chat = chat
      return Effect.void
    },
    onFailure: (cause) => {
      coordinator.chat = undefined
      if (coordinator.closed) return Effect.interrupt
      return Effect.logWarning(
        `could not read the chat; asking for the reply for ${callIdsOf(coordinator.batch)} as if they were the latest`,
        cause
      ).pipe(Effect.annotateLogs({ toolset: ownersOf(coordinator.batch) }))
    }
  })

  // After the last idle wait: decide, then request. Nothing here suspends before the request.
  const decide = Effect.suspend((): Effect.Effect<void, PortFault> => {
    const late = take(coordinator)
    if (late.some(awaitsInsertion)) return prepare
    const ready = coordinator.batch.filter(answerable)
    if (ready.length === 0) return Effect.void
    // Items taken after the chat was read are newer than anything in it.
    const chat = coordinator.chat
    coordinator.chat = undefined
    const covered = late.length === 0 && chat !== undefined && spokeAfter(chat, ready)
    if (covered && ready.every((item) => item.owner.policy.whenAlreadyAnswered === "skip")) {
      skipped(coordinator, ready, "already-answered")
      return Effect.logDebug("the agent already spoke after the pending results; no reply requested")
    }
    const policy = ready[ready.length - 1]!.owner.policy
    const instructions = Prompts.render(covered ? policy.prompts.replyMaybeCovered : policy.prompts.replyAtTail, {
      pendingCallIds: callIdsOf(ready)
    })
    return request(coordinator, ready, policy, instructions)
  })

  // The last idle wait and the reply request, with no scheduler yield between them: a user who
  // starts speaking is never talked over.
  const gate = Effect.provideService(Effect.andThen(awaitInactive, decide), References.PreventSchedulerYield, true)

  // Once idle: insert what failed before (inserting suspends: wait for idle again), or read the
  // chat before the last idle wait, so nothing suspends between that wait and the request.
  const afterIdle = Effect.suspend((): Effect.Effect<void, PortFault> => {
    take(coordinator)
    if (coordinator.batch.some(awaitsInsertion)) return Effect.andThen(retryInsertions(coordinator), prepare)
    if (coordinator.batch.length === 0) return Effect.void
    return Effect.andThen(readChat, gate)
  })

  const prepare: Effect.Effect<void, PortFault> = Effect.suspend(() => {
    take(coordinator)
    return Effect.andThen(awaitInactive, afterIdle)
  })

  // One reply: everything pending once the session is idle. Never fails.
  const round = prepare.pipe(
    Effect.catchCause((cause) => {
      if (coordinator.closed) return Effect.interrupt
      const batch = coordinator.batch
      return Effect.logError(
        `the session failed while a reply was prepared; no reply was requested for ${callIdsOf(batch)} (they are in the chat for the next reply)`,
        portCause(cause)
      ).pipe(
        Effect.andThen(Effect.sync(() => skipped(coordinator, batch.filter((item) => item.inserted), "session-failed"))),
        Effect.annotateLogs({ toolset: ownersOf(batch) })
      )
    }),
    Effect.ensuring(Effect.sync(() => settleBatch(coordinator)))
  )

  const park = Effect.suspend(() => {
    if (coordinator.queue.length > 0) return Effect.void
    const parked = Deferred.makeUnsafe<void>()
    coordinator.parked = parked
    return Deferred.await(parked)
  })

  // The yield lets a burst of results that arrive together join one reply.
  return Effect.forever(Effect.andThen(park, Effect.andThen(Effect.yieldNow, round)), { disableYield: true })
}

/** Moves the queued items into the batch; returns them. */
const take = (coordinator: Coordinator): ReadonlyArray<Item> => {
  const taken = coordinator.queue
  if (taken.length === 0) return taken
  coordinator.queue = []
  for (const item of taken) coordinator.batch.push(item)
  return taken
}

/** An item whose insertion failed, to be retried (unless its toolset closed: then it is let go). */
const awaitsInsertion = (item: Item): boolean => !item.inserted && !item.owner.closed

/** An item in the chat whose toolset is open: the reply covers it. */
const answerable = (item: Item): boolean => item.inserted && !item.owner.closed

const callIdsOf = (items: ReadonlyArray<Item>): string => items.map((item) => item.callId).join(", ")

/**
 * Asks for the reply. The first attempt runs at once, in a fiber of its own; retries (each after
 * the session is inactive again) and the time bound are built only when it fails or does not
 * answer at once.
 */
const request = (
  coordinator: Coordinator,
  ready: ReadonlyArray<Item>,
  policy: ReplyPolicy,
  instructions: string
): Effect.Effect<void> => {
  const session = coordinator.session
  const reply = session.generateReply({ instructions, toolChoice: "none" })
  return Effect.flatMap(Effect.forkChild(reply, { startImmediately: true }), (first) => {
    const exit = first.pollUnsafe()
    if (exit !== undefined && Exit.isSuccess(exit)) {
      delivered(coordinator, ready, instructions)
      return Effect.void
    }
    let attempt = 0
    const once = Effect.catchCause(
      Effect.suspend(() => attempt++ === 0 ? Fiber.join(first) : Effect.andThen(session.awaitInactive, reply)),
      (cause) => coordinator.closed ? Effect.interrupt : Effect.fail(new PortFault(cause))
    )
    return once.pipe(
      Effect.retry(policy.sessionRetry),
      // A request that does not answer in time is not retried: the session may still make that
      // reply (an agent queues it), and a second request would repeat it.
      Effect.timeoutOption(policy.replyTimeout),
      Effect.matchCauseEffect({
        onSuccess: (answered) => {
          if (Option.isSome(answered)) return Effect.sync(() => delivered(coordinator, ready, instructions))
          first.interruptUnsafe()
          return giveUp(coordinator, ready, Cause.fail(`no answer within ${Duration.format(policy.replyTimeout)}`))
        },
        onFailure: (cause) => coordinator.closed ? Effect.interrupt : giveUp(coordinator, ready, portCause(cause))
      })
    )
  })
}

const giveUp = (coordinator: Coordinator, ready: ReadonlyArray<Item>, cause: Cause.Cause<unknown>) =>
  Effect.logError(
    `the reply for ${callIdsOf(ready)} could not be requested; the results are in the chat for the next reply`,
    cause
  ).pipe(
    Effect.andThen(Effect.sync(() => skipped(coordinator, ready, "session-failed"))),
    Effect.annotateLogs({ toolset: ownersOf(ready) })
  )

/**
 * Inserts the batch's items whose insertion failed, stamped now (what the agent said before they
 * reached the chat does not cover them). An item of a call cancelled meanwhile is let go; one that
 * still fails is reported and not answered.
 */
const retryInsertions = (coordinator: Coordinator): Effect.Effect<void> =>
  Effect.forEach(coordinator.batch.filter(awaitsInsertion), (item) => {
    if (item.dropped()) {
      return Effect.logDebug(`${item.callId} is not inserted: its call was cancelled before the insertion worked`)
        .pipe(Effect.andThen(Effect.sync(() => unbatch(coordinator, item))))
    }
    const attempt = Effect.suspend(() => {
      const now = coordinator.clock.currentTimeMillisUnsafe()
      item.items = item.items.map((i) => withCreatedAt(i, now))
      return coordinator.session.insert(item.items)
    }).pipe(
      Effect.catchCause((cause) => coordinator.closed ? Effect.interrupt : Effect.fail(new PortFault(cause))),
      Effect.retry(item.owner.policy.sessionRetry)
    )
    // A toolset that closes meanwhile takes its items back (and reports them): stop inserting.
    return Effect.raceFirst(Effect.exit(attempt), Effect.as(Deferred.await(item.owner.closing), undefined)).pipe(
      Effect.flatMap((exit) => {
        if (exit === undefined || item.owner.closed) return Effect.void
        if (Exit.isSuccess(exit)) {
          item.inserted = true
          item.owner.emit({
            _tag: "ReplyScheduled",
            toolsetId: item.owner.id,
            callId: item.callId,
            at: coordinator.clock.currentTimeMillisUnsafe()
          })
          return Effect.void
        }
        if (coordinator.closed) return Effect.interrupt
        // Logged before the count drops: a toolset waiting to be idle may close at once.
        return Effect.logError(
          `could not insert ${item.callId} into the chat; no reply is requested for it`,
          portCause(exit.cause)
        ).pipe(
          Effect.annotateLogs({ toolset: item.owner.id }),
          Effect.andThen(Effect.sync(() => unbatch(coordinator, item)))
        )
      })
    )
  }, { discard: true })

/** The item leaves the batch unanswered. */
const unbatch = (coordinator: Coordinator, item: Item): void => {
  const index = coordinator.batch.indexOf(item)
  if (index >= 0) coordinator.batch.splice(index, 1)
  settle(item)
}

/** The reply was requested: tell each toolset, per its own items. */
const delivered = (coordinator: Coordinator, ready: ReadonlyArray<Item>, instructions: string): void => {
  const at = coordinator.clock.currentTimeMillisUnsafe()
  for (const [owner, callIds] of byOwner(ready)) {
    owner.emit({ _tag: "ReplyDelivered", toolsetId: owner.id, callIds, instructions, at })
  }
}

const skipped = (
  coordinator: Coordinator,
  items: ReadonlyArray<Item>,
  reason: "already-answered" | "session-failed"
): void => {
  const at = coordinator.clock.currentTimeMillisUnsafe()
  for (const [owner, callIds] of byOwner(items)) {
    owner.emit({ _tag: "ReplySkipped", toolsetId: owner.id, callIds, reason, at })
  }
}

/** The batch is answered (or given up): its items no longer count as pending. */
const settleBatch = (coordinator: Coordinator): void => {
  const batch = coordinator.batch
  coordinator.batch = []
  const owners = new Set<Owner>()
  for (const item of batch) {
    if (item.owner.closed) continue
    item.owner.pending--
    owners.add(item.owner)
  }
  for (const owner of owners) owner.settled()
}

const byOwner = (items: ReadonlyArray<Item>): Map<Owner, Array<string>> => {
  const out = new Map<Owner, Array<string>>()
  for (const item of items) {
    if (item.owner.closed) continue
    const ids = out.get(item.owner)
    if (ids === undefined) out.set(item.owner, [item.callId])
    else ids.push(item.callId)
  }
  return out
}

const ownersOf = (items: ReadonlyArray<Item>): string => Array.from(new Set(items.map((item) => item.owner.id))).join(", ")

/**
 * Whether the agent spoke after the newest pending item: an assistant message stands after it in
 * the chat. Compared by position, not time, so items created in the same millisecond are ordered
 * correctly. Only the tail after our items is scanned.
 */
const spokeAfter = (chat: ReadonlyArray<ChatItem>, pending: ReadonlyArray<Item>): boolean => {
  const ours = new Set<string>()
  for (const p of pending) for (const item of p.items) ours.add(item.id)
  for (let i = chat.length - 1; i >= 0; i--) {
    const item = chat[i]!
    if (ours.has(item.id)) return false
    if (item._tag === "ChatMessage" && item.role === "assistant") return true
  }
  return false
}

/** @internal for tests: the coordinator a session has now, if any. */
export const current = (session: Session): Coordinator | undefined => coordinators.get(session)
