/**
 * The reply coordinator of one session, shared by every toolset on it.
 *
 * A toolset inserts a call's later update or final result into the chat itself (so it is there
 * when `update` returns, rule C1) and hands the inserted item here. One fiber per session waits
 * until the session is inactive, takes everything pending from every toolset at once, and asks
 * for exactly one reply covering it all (C2, C3): two toolsets never cause two back-to-back
 * replies. It also retries insertions that failed (stamping the items anew, C4b), chooses the
 * wording (C4), and keeps, per toolset, the count of items not yet answered (for `awaitIdle`).
 *
 * Every answer of the session port, whatever its shape (a failure, a defect, an interrupt cause, a
 * hang), is a fault to retry or report: only the coordinator's own `closed` flag says it is
 * stopping (E9). Its fiber never dies of a port answer, and no port call it makes is unbounded
 * but the wait for the session to be inactive.
 */
import { Cause, Clock, Deferred, Duration, Effect, Exit, Fiber, Option, References, Schedule } from "effect"
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
  /** Bounds each reply request (its chat read and the request, not its wait for idle), and an insertion retried with its retries. */
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
  /** Whether someone listens to the toolset's events (else none is built). */
  readonly listening: () => boolean
  /** Called when `pending` went down: the toolset may be idle now. */
  readonly settled: () => void
  /** Completed when the toolset closes. */
  readonly closing: Deferred.Deferred<void>
}

/** What the coordinator needs to know of the call an item comes from. */
export interface CallState {
  /** Why the call was stopped, once it was (`closed`: its toolset closed). */
  readonly stopCause: string | undefined
}

/**
 * Why an item whose insertion failed is not inserted any more: its call was cancelled (nothing of
 * it reaches the chat after that, E2). Nothing else drops an item (C3): an update retried after
 * its call's final result is in the chat goes in after it, stamped when it is inserted (C4b).
 */
export type DropReason = "cancelled"

/** A call/output pair a toolset put (or tried to put) into the chat, owed a reply. */
export interface Item {
  readonly owner: Owner
  /** The synthetic call id (`<callId>_update_<n>`, `<callId>_final`). */
  readonly callId: string
  items: ReadonlyArray<ChatItem>
  inserted: boolean
  /** Clock time at which the insertion completed. */
  insertedAt: number
  readonly call: CallState
  readonly dropped: () => DropReason | undefined
  /** Its call was cancelled after its insertion failed, and the chat was looked at for part of it. */
  looked?: boolean
}

/** The coordinator of one session. */
export interface Coordinator {
  readonly session: Session
  readonly clock: Clock.Clock
  /** Items handed over and not taken yet. */
  queue: Array<Item>
  /** Items taken for the reply being prepared or requested. */
  batch: Array<Item>
  /** Resumes the fiber when the queue gets an item while it waits for one. */
  parked: (() => void) | undefined
  readonly owners: Set<Owner>
  fiber: Fiber.Fiber<never, unknown> | undefined
  closed: boolean
  /** The reply decided in the round under way: what it covers and asks, with whose policy. */
  request: Request | undefined
  /** The round's request step (or retried request), while it runs: stopped when the round ends and when the coordinator stops. */
  step: Fiber.Fiber<unknown, unknown> | undefined
  /**
   * Request steps interrupted that have not ended yet (inside an uninterruptible port operation):
   * the coordinator's stop waits for them too.
   */
  readonly stopping: Set<Fiber.Fiber<unknown, unknown>>
  /**
   * When the request step's time bound started: when the step started, and again when its wait
   * for idle ended (the bound counts the chat read and the request, not the wait).
   */
  boundFrom: number
  /** Called when the request step's wait for idle ends (set while `bounded` waits through it). */
  waitEnded: (() => void) | undefined
  /** The round retries a failed reply request (a request failing inside a retry fails the attempt). */
  retrying: boolean
  /** Called when the batch of a retrying round is left with nothing of an open toolset. */
  nothingLeft: (() => void) | undefined
  /** The round's request step suspended (on the chat read, the last idle wait, or the request). */
  stepSuspended: boolean
  /** The round read the chat again after a step that suspended (at most once per round). */
  reread: boolean
  /** The request step waits for the session to be inactive (a wait the time bound does not count). */
  waiting: boolean
}

interface Request {
  readonly ready: ReadonlyArray<Item>
  readonly instructions: string
  readonly policy: ReplyPolicy
}

const coordinators = new WeakMap<Session, Coordinator>()

/**
 * The session's coordinator: made (and its fiber started) by the first toolset of the session,
 * stopped by `release` of the last.
 */
export const acquire = (session: Session, owner: Owner): Effect.Effect<Coordinator> =>
  Effect.clockWith((clock) =>
    Effect.suspend(() => {
      const coordinator = coordinators.get(session)
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
        fiber: undefined,
        closed: false,
        request: undefined,
        step: undefined,
        stopping: new Set(),
        boundFrom: 0,
        waitEnded: undefined,
        retrying: false,
        nothingLeft: undefined,
        stepSuspended: false,
        reread: false,
        waiting: false
      }
      coordinators.set(session, made)
      // The fiber never yields to the scheduler (it does little between waits, and its last idle
      // wait and the reply request must not be separated by a yield: C2).
      const loop = Effect.provideService(run(made), References.PreventSchedulerYield, true)
      return Effect.map(Effect.forkDetach(loop, { startImmediately: true }), (fiber) => {
        made.fiber = fiber
        return made
      })
    })
  )

/** The toolset leaves (it closed); the last toolset's release stops the fiber. */
export const release = (coordinator: Coordinator, owner: Owner): Effect.Effect<void> =>
  Effect.suspend(() => {
    const report = letGo(owner, closeOwner(coordinator, owner))
    coordinator.owners.delete(owner)
    if (coordinator.owners.size > 0) return report
    coordinator.closed = true
    if (coordinators.get(coordinator.session) === coordinator) coordinators.delete(coordinator.session)
    // The fiber and the round's request step, if one runs (it may be inside a port operation, or
    // just started by a round this very release interrupts).
    const fibers: Array<Fiber.Fiber<unknown, unknown>> = []
    if (coordinator.fiber !== undefined) fibers.push(coordinator.fiber)
    stopStep(coordinator)
    for (const fiber of coordinator.stopping) fibers.push(fiber)
    return fibers.length === 0 ? report : Effect.andThen(report, Fiber.interruptAll(fibers))
  })

/**
 * Interrupts the round's request step if it still runs (without waiting for it: until it ends it
 * is kept in `stopping`, which the coordinator's stop waits for).
 */
const stopStep = (coordinator: Coordinator): void => {
  const step = coordinator.step
  if (step === undefined) return
  coordinator.step = undefined
  if (step.pollUnsafe() !== undefined) return
  step.interruptUnsafe()
  if (step.pollUnsafe() !== undefined) return
  coordinator.stopping.add(step)
  step.addObserver(() => coordinator.stopping.delete(step))
}

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
  if (coordinator.nothingLeft !== undefined && coordinator.batch.length === 0) coordinator.nothingLeft()
  return left
}

/** Says which items a closing toolset lets go: those not in the chat, and those owed a reply. */
export const letGo = (owner: Owner, items: ReadonlyArray<Item>): Effect.Effect<void> => {
  // Not in the chat, as far as the toolset knows: an insertion that failed may have put part of
  // one there (a function call without its output), which no one completes after close. An item
  // of a cancelled call is left out unless its insertion failed (it was handed over for a look).
  const lost = items.filter((item) => !item.inserted && item.dropped() !== "cancelled").map((item) => item.callId)
  const cancelled = items.filter((item) => !item.inserted && item.dropped() === "cancelled").map((item) => item.callId)
  const unanswered = items.filter((item) => item.inserted).map((item) => item.callId)
  if (lost.length === 0 && cancelled.length === 0 && unanswered.length === 0) return Effect.void
  const half = "(a failed insertion may have left part of it there: a function call without its output)"
  return Effect.all([
    lost.length > 0 ? Effect.logError(`closing: ${lost.join(", ")} never reached the chat ${half}`) : Effect.void,
    cancelled.length > 0
      ? Effect.logError(`closing: ${cancelled.join(", ")} of cancelled calls: a failed insertion may have left part of it in the chat (a function call without its output), not completed`)
      : Effect.void,
    unanswered.length > 0
      ? Effect.logInfo(`closing: no reply will be requested for ${unanswered.join(", ")} (they are in the chat)`)
      : Effect.void
  ], { discard: true }).pipe(Effect.annotateLogs({ toolset: owner.id }))
}

// --- synthetic call ids (B7) ---------------------------------------------------------------------

/**
 * The synthetic id bases handed out in a session, newest last: they outlive the session's
 * coordinators (a toolset made again at an agent hand-off must not write a pair written before).
 * At most `maxRememberedBases` are kept (the newest).
 */
const bases = new WeakMap<Session, Map<string, true>>()
const maxRememberedBases = 10_000

/**
 * The base of a call's synthetic ids: its call id, or, when that was a base already (a model
 * reusing an ended call's id, or a model id that equals a base made before), `<callId>_run<k>`
 * with the first free `k`, so no two pairs in the chat share a call id.
 */
export const claimBase = (session: Session, callId: string): string => {
  let used = bases.get(session)
  if (used === undefined) bases.set(session, used = new Map())
  let base = callId
  for (let k = 2; used.has(base); k++) base = `${callId}_run${k}`
  used.set(base, true)
  if (used.size > maxRememberedBases) used.delete(used.keys().next().value!)
  return base
}

// --- items ---------------------------------------------------------------------------------------

/** Why an item is not to be inserted (or answered) any more, if it is not. */
export const dropped = (call: CallState, force: boolean): DropReason | undefined =>
  !force && call.stopCause !== undefined && call.stopCause !== "closed" ? "cancelled" : undefined

/** An item is being inserted by its toolset: it counts as pending from now on. */
export const begin = (item: Item): void => {
  item.owner.pending++
}

/** The item's insertion completed. */
export const inserted = (coordinator: Coordinator, item: Item): void => {
  item.inserted = true
  item.insertedAt = coordinator.clock.currentTimeMillisUnsafe()
}

/** The item is in the chat (or its insertion failed and is to be retried): queue it for the reply. */
export const handOver = (coordinator: Coordinator, item: Item): void => {
  if (item.owner.closed || coordinator.closed) return settle(item)
  coordinator.queue.push(item)
  const parked = coordinator.parked
  if (parked !== undefined) {
    coordinator.parked = undefined
    parked()
  }
}

/** The item will never be answered. */
export const settle = (item: Item): void => {
  if (item.owner.closed) return
  item.owner.pending--
  item.owner.settled()
}

// --- the fiber -----------------------------------------------------------------------------------

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

/** What a round's request step ended with: the reply was asked for (or not needed), or items must be inserted first. */
type Step = "done" | "again"

/**
 * The coordinator's fiber: wait for items, let a burst of results that arrive together join, then
 * one round. The effects are built once, here; a round reads and writes the coordinator's state.
 */
const run = (coordinator: Coordinator): Effect.Effect<never> => {
  const session = coordinator.session
  /** A port answer that is not a success is a `PortFault`, unless the coordinator itself is closing. */
  const onPortFault = (cause: Cause.Cause<unknown>) => coordinator.closed ? Effect.interrupt : Effect.fail(new PortFault(cause))
  const awaitInactive = Effect.catchCause(session.awaitInactive, onPortFault)

  // The request step, in a fiber of its own so that the coordinator can bound it in time when it
  // does not answer at once: read the chat, wait until the session is inactive, decide, ask. No
  // scheduler yield anywhere in it (it inherits the coordinator's setting), and nothing suspends
  // between the idle wait and the request when the session answers at once: a user who starts
  // speaking is never talked over (C2). Read before the wait: if the wait suspended, the step
  // reads once more (see `decide`). Once the chat is read, the step waits for idle (a wait of any
  // length: the time bound does not count it).
  const afterRead = (chat: ReadonlyArray<ChatItem> | undefined): Effect.Effect<Step, PortFault> => {
    coordinator.waiting = true
    return Effect.matchCauseEffect(session.awaitInactive, {
      onSuccess: () => decide(coordinator, chat),
      onFailure: onPortFault
    })
  }
  // The chat only picks the wording; if the read fails, ask as if the items were the latest.
  const requestStep: Effect.Effect<Step, PortFault> = Effect.matchCauseEffect(session.items, {
    onSuccess: afterRead,
    onFailure: (cause) => {
      if (coordinator.closed) return Effect.interrupt
      const batch = coordinator.batch.filter(answerable)
      return Effect.andThen(
        Effect.logWarning(`could not read the chat; asking for the reply for ${callIdsOf(batch)} as if they were the latest`, cause)
          .pipe(Effect.annotateLogs({ toolset: ownersOf(batch) })),
        Effect.suspend(() => afterRead(undefined))
      )
    }
  })

  // Insert what failed before (once the session is inactive: a session may refuse insertions while
  // it generates), then the request step.
  const prepare: Effect.Effect<void, PortFault> = Effect.suspend(() => {
    take(coordinator)
    if (coordinator.batch.some(awaitsInsertion)) {
      return Effect.andThen(
        letGoCancelled(coordinator),
        Effect.suspend(() =>
          coordinator.batch.some(awaitsInsertion)
            ? Effect.andThen(awaitInactive, Effect.andThen(Effect.suspend(() => retryInsertions(coordinator)), prepare))
            : prepare
        )
      )
    }
    if (!coordinator.batch.some(answerable)) return Effect.void
    coordinator.stepSuspended = false
    coordinator.waiting = false
    coordinator.boundFrom = coordinator.clock.currentTimeMillisUnsafe()
    // Started here and now, on this fiber's context; when it answers at once (the usual case) it
    // is over before this returns. A step that suspends is waited for, and interrupted with the
    // coordinator.
    const step = Effect.runForkWith(Fiber.getCurrent()!.context)(requestStep)
    const exit = step.pollUnsafe()
    if (exit !== undefined && Exit.isSuccess(exit)) return exit.value === "again" ? prepare : Effect.void
    coordinator.step = step
    coordinator.stepSuspended = true
    return slowRequest(coordinator, step, prepare)
  })

  // One reply: everything pending once the session is idle. Never fails.
  const settled = Effect.sync(() => settleBatch(coordinator))
  const round = Effect.matchCauseEffect(prepare, {
    onSuccess: () => settled,
    onFailure: (cause) =>
      coordinator.closed
        ? Effect.andThen(settled, Effect.interrupt)
        : Effect.ensuring(
          // A defect of its own (not a port's answer, which comes as a `PortFault`) is a bug: say so.
          cause.reasons.some(Cause.isDieReason)
            ? Effect.andThen(Effect.logError("the reply coordinator's round failed", cause), roundFailed(coordinator, cause))
            : roundFailed(coordinator, portCause(cause)),
          settled
        )
  })

  // Waits for an item, then until the synchronous run that handed it over is over (a microtask):
  // a burst of results that arrive together (in one run of the fibers that make them) joins one
  // reply. Cheaper than a scheduler yield, which waits for the event loop's next turn; it is one
  // pause per reply, on the coordinator's fiber only.
  const awaitWork = Effect.callback<void>((resume) => {
    const go = () => void Promise.resolve().then(() => resume(Effect.void))
    if (coordinator.queue.length > 0) go()
    else coordinator.parked = go
  })

  // However the fiber ends (interrupted by `release`, at any point of a round), the round's request
  // step ends with it: an interrupted fiber skips recovery handlers, not finalizers.
  const stopStepAndWait = Effect.suspend(() => {
    stopStep(coordinator)
    return coordinator.stopping.size === 0 ? Effect.void : Fiber.awaitAll(coordinator.stopping)
  })
  return Effect.ensuring(Effect.forever(Effect.andThen(awaitWork, round), { disableYield: true }), stopStepAndWait)
}

/**
 * After the last idle wait: take what arrived meanwhile, decide whether and how to reply, and make
 * the first request. Nothing here suspends before the request.
 */
const decide = (coordinator: Coordinator, chat: ReadonlyArray<ChatItem> | undefined): Effect.Effect<Step, PortFault> => {
  if (coordinator.waiting) {
    coordinator.waiting = false
    coordinator.boundFrom = coordinator.clock.currentTimeMillisUnsafe()
    coordinator.waitEnded?.()
  }
  const late = take(coordinator)
  if (late > 0 && lateAwaitInsertion(coordinator, late)) return Effect.succeed("again")
  // The step suspended (a session that reads its chat asynchronously, or that was busy at the
  // last idle wait): the agent may have spoken since the chat was read. Read it once more
  // (a session busy all through an asynchronous read is the one case this cannot see).
  if (coordinator.stepSuspended && !coordinator.reread) {
    coordinator.reread = true
    return Effect.succeed("again")
  }
  const ready = coordinator.batch.filter(answerable)
  if (ready.length === 0) return Effect.succeed("done")
  // Items taken after the chat was read are newer than anything in it.
  const covered = late === 0 && chat !== undefined && spokeAfter(chat, ready)
  if (covered && ready.every((item) => item.owner.policy.whenAlreadyAnswered === "skip")) {
    skipped(coordinator, ready, "already-answered")
    return Effect.as(Effect.logDebug("the agent already spoke after the pending results; no reply requested"), "done")
  }
  const policy = ready[ready.length - 1]!.owner.policy
  const instructions = Prompts.render(covered ? policy.prompts.replyMaybeCovered : policy.prompts.replyAtTail, {
    pendingCallIds: callIdsOf(ready)
  })
  coordinator.request = { ready, instructions, policy }
  return Effect.matchCauseEffect(coordinator.session.generateReply({ instructions, toolChoice: "none" }), {
    onSuccess: () => {
      delivered(coordinator, ready, instructions)
      return Effect.succeed("done")
    },
    onFailure: (cause) => coordinator.closed ? Effect.interrupt : Effect.fail(new PortFault(cause))
  })
}

/**
 * The request step did not answer at once: wait for it (its wait for idle unbounded, its chat read
 * and its request bounded in time), retry a failed request (each time after the session is
 * inactive again), and give up and report what does not answer in time. Built only then.
 */
const slowRequest = (
  coordinator: Coordinator,
  step: Fiber.Fiber<Step, PortFault>,
  prepare: Effect.Effect<void, PortFault>
): Effect.Effect<void, PortFault> => {
  const policy = coordinator.request?.policy ?? newestPolicy(coordinator)
  // Nothing left to answer (the toolsets of the batch closed meanwhile): the step is not needed.
  if (policy === undefined) return Effect.sync(() => void stopStep(coordinator))
  return Effect.flatMap(bounded(coordinator, step, policy.replyTimeout), (result): Effect.Effect<void, PortFault> => {
    if (Option.isNone(result)) {
      // A request that does not answer in time is not retried: the session may still make that
      // reply (an agent queues it), and a second request would repeat it.
      return giveUp(coordinator, Cause.fail(`no answer within ${Duration.format(policy.replyTimeout)}`))
    }
    const exit = result.value
    if (Exit.isSuccess(exit)) return exit.value === "again" ? prepare : Effect.void
    if (coordinator.closed) return Effect.interrupt
    const request = coordinator.request
    // The step failed before it asked (reading the chat, or the idle wait): the round's failure.
    // A request that failed in a retry fails that attempt (the retry's schedule goes on).
    if (request === undefined || coordinator.retrying) return Effect.failCause(exit.cause)
    return retryRound(coordinator, request.policy, exit.cause, prepare)
  })
}

/**
 * Waits for the round's step (or a retried request) to end, within `limit` counted from
 * `boundFrom` (the step's start, or the end of its wait for idle): the wait for idle is not
 * counted. Not in time: `None`, and the fiber is stopped (and kept in `stopping` until it ends).
 */
const bounded = <A, E>(
  coordinator: Coordinator,
  fiber: Fiber.Fiber<A, E>,
  limit: Duration.Duration
): Effect.Effect<Option.Option<Exit.Exit<A, E>>> => {
  const millis = Duration.toMillis(limit)
  const loop: Effect.Effect<Option.Option<Exit.Exit<A, E>>> = Effect.suspend(() => {
    if (coordinator.waiting) {
      return Effect.flatMap(endOrWaitEnd(coordinator, fiber), (exit) => exit === undefined ? loop : Effect.succeed(Option.some(exit)))
    }
    const left = millis - (coordinator.clock.currentTimeMillisUnsafe() - coordinator.boundFrom)
    if (left <= 0) {
      const exit = fiber.pollUnsafe()
      if (exit !== undefined) return Effect.succeed(Option.some(exit))
      stopStep(coordinator)
      return Effect.succeed(Option.none())
    }
    return Effect.flatMap(
      Effect.timeoutOption(Fiber.await(fiber), Duration.millis(left)),
      (exit) => Option.isNone(exit) ? loop : Effect.succeed(exit)
    )
  })
  return loop
}

/** The fiber's exit when it ends, or `undefined` when the step's wait for idle ends first. */
const endOrWaitEnd = <A, E>(coordinator: Coordinator, fiber: Fiber.Fiber<A, E>) =>
  Effect.callback<Exit.Exit<A, E> | undefined>((resume) => {
    const remove = fiber.addObserver((exit) => resume(Effect.succeed(exit)))
    // Once the step's synchronous run is over (a microtask): a request that answers at once has
    // ended the step by then, whatever the bound.
    coordinator.waitEnded = () => void Promise.resolve().then(() => resume(Effect.succeed(undefined)))
    return Effect.sync(() => {
      remove()
      coordinator.waitEnded = undefined
    })
  })

/**
 * A reply request failed (`first`): the round is prepared again by the toolset's retry schedule.
 * Each attempt takes what arrived meanwhile (one reply for everything pending), reads the chat
 * again (the agent may have spoken: C4), waits for idle and asks, its request bounded in time (one
 * that does not answer in time is given up, not repeated). Ends at once when the batch is left
 * with nothing of an open toolset.
 */
const retryRound = (
  coordinator: Coordinator,
  policy: ReplyPolicy,
  first: Cause.Cause<PortFault>,
  prepare: Effect.Effect<void, PortFault>
): Effect.Effect<void> => {
  let attempt = 0
  const once = Effect.suspend((): Effect.Effect<void, PortFault> => {
    if (attempt++ === 0) return Effect.failCause(first) // the step's own attempt: the schedule decides when to ask again
    coordinator.reread = false
    coordinator.request = undefined
    return prepare
  })
  const nothingLeft = Effect.callback<void>((resume) => {
    coordinator.nothingLeft = () => resume(Effect.void)
    return Effect.sync(() => {
      coordinator.nothingLeft = undefined
    })
  })
  return Effect.suspend(() => {
    coordinator.retrying = true
    return Effect.raceFirst(Effect.retry(once, policy.sessionRetry), nothingLeft)
  }).pipe(
    Effect.ensuring(Effect.sync(() => {
      coordinator.retrying = false
    })),
    // Given up: a failed request reports what the round covers; a failure before asking (the
    // idle wait) reports also what still waited to be inserted.
    Effect.catchCause((cause) =>
      coordinator.closed
        ? Effect.interrupt
        : coordinator.request === undefined
        ? roundFailed(coordinator, portCause(cause))
        : giveUp(coordinator, portCause(cause))
    )
  )
}

/**
 * Items of calls cancelled after their insertion failed: let go at once when nothing of them is
 * in the chat (no wait for the session to be idle); kept, to be completed, when part of them is
 * (a function call without its output, which a provider refuses). The look is retried by the
 * schedule and bounded in time like an insertion; if the chat cannot be read, they are let go with
 * an error saying that part of them may be in the chat.
 */
const letGoCancelled = (coordinator: Coordinator): Effect.Effect<void> => {
  const cancelled = coordinator.batch.filter((item) => awaitsInsertion(item) && item.dropped() !== undefined && item.looked !== true)
  if (cancelled.length === 0) return Effect.void
  for (const item of cancelled) item.looked = true
  const policy = cancelled[cancelled.length - 1]!.owner.policy
  const read = Effect.catchCause(coordinator.session.items, (cause) =>
    coordinator.closed ? Effect.interrupt : Effect.fail(new PortFault(cause)))
  const letGo = (items: ReadonlyArray<Item>) => Effect.sync(() => {
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
        coordinator.closed ? Effect.interrupt : Effect.andThen(
          Effect.logError(
            `${callIdsOf(cancelled)}: their calls were cancelled, but a failed insertion may have left part of them in the chat (a function call without its output); the chat could not be read to complete them`,
            portCause(cause)
          ).pipe(Effect.annotateLogs({ toolset: ownersOf(cancelled) })),
          letGo(cancelled)
        )
    })
  )
}

/** The policy of the newest item in the batch (whose toolset's bounds apply to the round). */
const newestPolicy = (coordinator: Coordinator): ReplyPolicy | undefined =>
  coordinator.batch[coordinator.batch.length - 1]?.owner.policy

/** The reply could not be requested: reported with the call ids it was for. */
const giveUp = (coordinator: Coordinator, cause: Cause.Cause<unknown>) => {
  // A toolset closed meanwhile has said that no reply is requested for its items.
  // Everything of the round in the chat (a retry may have taken more than the last request named).
  const ready = coordinator.batch.filter(answerable)
  if (ready.length === 0) return Effect.void
  return Effect.logError(
    `the reply for ${callIdsOf(ready)} could not be requested; the results are in the chat for the next reply`,
    cause
  ).pipe(
    Effect.andThen(Effect.sync(() => skipped(coordinator, ready, "session-failed"))),
    Effect.annotateLogs({ toolset: ownersOf(ready) })
  )
}

/** The session failed before the request: what is in the chat waits for the next reply; what is not, is lost. */
const roundFailed = (coordinator: Coordinator, cause: Cause.Cause<unknown>) => {
  const inChat = coordinator.batch.filter(answerable)
  const lost = coordinator.batch.filter(awaitsInsertion)
  return Effect.andThen(
    inChat.length === 0 ? Effect.void : Effect.logError(
      `the session failed while a reply was prepared; no reply was requested for ${callIdsOf(inChat)} (they are in the chat for the next reply)`,
      cause
    ),
    lost.length === 0 ? Effect.void : Effect.logError(
      `the session failed while ${callIdsOf(lost)} waited to be inserted again; they never reached the chat`,
      cause
    )
  ).pipe(
    Effect.andThen(Effect.sync(() => skipped(coordinator, inChat, "session-failed"))),
    Effect.annotateLogs({ toolset: ownersOf(coordinator.batch) })
  )
}

/** Moves the queued items into the batch; returns how many it moved (they are the batch's last). */
const take = (coordinator: Coordinator): number => {
  const queue = coordinator.queue
  const taken = queue.length
  for (let i = 0; i < taken; i++) coordinator.batch.push(queue[i]!)
  queue.length = 0
  return taken
}

/** Whether one of the batch's last `n` items waits to be inserted again. */
const lateAwaitInsertion = (coordinator: Coordinator, n: number): boolean => {
  const batch = coordinator.batch
  for (let i = batch.length - n; i < batch.length; i++) if (awaitsInsertion(batch[i]!)) return true
  return false
}

/** An item whose insertion failed, to be retried (unless its toolset closed: then it is let go). */
const awaitsInsertion = (item: Item): boolean => !item.inserted && !item.owner.closed

/** An item in the chat whose toolset is open: the reply covers it. */
const answerable = (item: Item): boolean => item.inserted && !item.owner.closed

const callIdsOf = (items: ReadonlyArray<Item>): string => items.map((item) => item.callId).join(", ")

/**
 * Inserts the batch's items whose insertion failed, stamped now (what the agent said before they
 * reached the chat does not cover them), each bounded in time. An item of a call cancelled
 * meanwhile is let go, one whose call's later item is in the chat already is dropped (and said
 * so); one that still fails is reported and not answered.
 */
const retryInsertions = (coordinator: Coordinator): Effect.Effect<void> =>
  Effect.forEach(coordinator.batch.filter(awaitsInsertion), (item) => {
    const owner = item.owner
    const attempt = Effect.suspend((): Effect.Effect<"inserted" | "skipped", PortFault> => {
      if (owner.closed) return Effect.succeed("skipped")
      // An insertion cut short may have happened all the same: look before inserting again. If
      // the chat cannot be read, the attempt fails (and is retried): inserting blindly could put
      // the item in twice (C3).
      return Effect.flatMap(Effect.exit(coordinator.session.items), (read) => {
        if (Exit.isFailure(read)) return coordinator.closed ? Effect.interrupt : Effect.fail(new PortFault(read.cause))
        // Only what is missing goes in (an insertion cut short may have put part of it there),
        // stamped now (C4b).
        const missing = item.items.filter((i) => !contains(read.value, i.id))
        if (missing.length === 0) return Effect.succeed("inserted" as const)
        // Its call was cancelled (or a later item of it is in the chat): nothing more of it goes
        // in, unless part of it is there already (a function call without its output, which a
        // provider refuses): then the pair is completed.
        if (item.dropped() !== undefined && missing.length === item.items.length) return Effect.succeed("skipped" as const)
        const now = coordinator.clock.currentTimeMillisUnsafe()
        const stamped = missing.map((i) => withCreatedAt(i, now))
        item.items = item.items.map((i) => stamped.find((s) => s.id === i.id) ?? i)
        return Effect.as(
          Effect.catchCause(coordinator.session.insert(stamped), (cause) =>
            coordinator.closed ? Effect.interrupt : Effect.fail(new PortFault(cause))),
          "inserted" as const
        )
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
        if (coordinator.closed) return Effect.interrupt
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
  }, { discard: true })

/** Whether the chat holds an item with this id (searched from the newest: a retried item is recent). */
const contains = (chat: ReadonlyArray<ChatItem>, id: string): boolean => {
  for (let i = chat.length - 1; i >= 0; i--) if (chat[i]!.id === id) return true
  return false
}

/** The item leaves the batch unanswered. */
const unbatch = (coordinator: Coordinator, item: Item): void => {
  const index = coordinator.batch.indexOf(item)
  if (index >= 0) coordinator.batch.splice(index, 1)
  settle(item)
}

const listened = (item: Item): boolean => item.owner.listening()

/** The reply was requested: tell each toolset, per its own items. */
const delivered = (coordinator: Coordinator, ready: ReadonlyArray<Item>, instructions: string): void => {
  coordinator.request = undefined
  if (!ready.some(listened)) return
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
  if (!items.some(listened)) return
  const at = coordinator.clock.currentTimeMillisUnsafe()
  for (const [owner, callIds] of byOwner(items)) {
    owner.emit({ _tag: "ReplySkipped", toolsetId: owner.id, callIds, reason, at })
  }
}

/** The batch is answered (or given up): its items no longer count as pending. */
const settleBatch = (coordinator: Coordinator): void => {
  // A step still running when its round ends (the round failed, or gave up on it) must not ask.
  stopStep(coordinator)
  const batch = coordinator.batch
  coordinator.request = undefined
  coordinator.reread = false
  let single: Owner | undefined
  let several = false
  for (const item of batch) {
    if (item.owner.closed) continue
    item.owner.pending--
    if (single === undefined) single = item.owner
    else if (single !== item.owner) several = true
  }
  const owners = several ? new Set(batch.map((item) => item.owner)) : undefined
  batch.length = 0
  // Waking comes last: a toolset found idle may act at once.
  if (owners !== undefined) {
    for (const owner of owners) if (!owner.closed) owner.settled()
  } else if (single !== undefined) {
    single.settled()
  }
}

const byOwner = (items: ReadonlyArray<Item>): ReadonlyMap<Owner, Array<string>> => {
  const first = items[0]?.owner
  if (first !== undefined && !first.closed && items.every((item) => item.owner === first)) {
    return new Map([[first, items.map((item) => item.callId)]])
  }
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
 * Whether the agent spoke after the pending items: an assistant message stands after the newest of
 * them in the chat, and was made once they were all in it (a message made while an insertion was
 * still under way cannot have covered it). Compared by position first, so items made in the same
 * millisecond are ordered correctly; only the tail after our items is scanned.
 */
const spokeAfter = (chat: ReadonlyArray<ChatItem>, pending: ReadonlyArray<Item>): boolean => {
  let insertedAt = 0
  for (const p of pending) if (p.insertedAt > insertedAt) insertedAt = p.insertedAt
  // A few items (the usual case) are compared directly; many go into a set first.
  const ids = pending.length > 8 ? new Set(pending.flatMap((p) => p.items.map((item) => item.id))) : undefined
  const ours = (item: ChatItem) => {
    if (ids !== undefined) return ids.has(item.id)
    for (const p of pending) for (const own of p.items) if (own.id === item.id) return true
    return false
  }
  for (let i = chat.length - 1; i >= 0; i--) {
    const item = chat[i]!
    if (item._tag === "ChatMessage") {
      if (item.role === "assistant" && item.createdAt >= insertedAt) return true
    } else if (ours(item)) {
      return false
    }
  }
  return false
}
