/**
 * The durable call store: the toolset's engine (`src/internal/toolset.ts`) is the in-memory one;
 * what differs is here. A call is recorded in the store before it runs, runs as an effect/workflow
 * execution (in this process or on another runner), and everything it says is recorded before
 * the agent hears it. In the agent's process the call's fiber follows that execution: it hands
 * what was recorded to the same engine functions the in-memory store uses (first output, later
 * pairs, the result), and it records what the engine decides (a cancel, a timeout, the toolset
 * closing while a caller waits).
 *
 * - A cancel (or a replacement, a drain, a caller gone) is the engine's word: the caller is
 *   answered at once (E8), the stop is recorded (what the model was not told is withdrawn, E2),
 *   and the call's fiber lives until the execution has stopped (E4; an activity is never cut short,
 *   F3).
 * - A timeout holds only if the call still runs when it is recorded: a result recorded first is
 *   told as the result (E7).
 * - Closing the toolset lets the calls go on: a caller still waiting hears that the call goes on
 *   in the background once that is recorded, and the toolset made again for the session tells
 *   what it says later (F2).
 */
import { Cause, Data, Deferred, Duration, Effect, Exit, Fiber, Option } from "effect"
import type { Clock, Context } from "effect"
import { PersistenceError } from "effect/cluster/ClusterError"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import type { ChatItem, FunctionCallOutput } from "../../ChatContext.ts"
import * as Lifecycle from "../../internal/callLifecycle.ts"
import * as CallRun from "../../internal/callRun.ts"
import type { Call, CallStore, Toolset } from "../../internal/callRun.ts"
import * as Coordinator from "../../internal/coordinator/index.ts"
import type { DurableChat } from "../DurableChat.ts"
import type { DurableStore } from "../DurableStore.ts"
import type { CallWorkflow } from "./body.ts"
import { crypto, WebCrypto } from "./digest.ts"
import { firstOutputId, pairAt, retrying, syntheticCallId } from "./body.ts"
import type { CallEvent, Mailbox } from "./hub.ts"
import * as Runners from "./runners.ts"
import { mailbox, post } from "./hub.ts"
import { claimCall, recordEnd, recordPlaceholder, requestStop } from "./calls.ts"
import { catchUp, deliver, ended, markReturned, tellEnd, untilEnded } from "./following.ts"
import type { CallRow, StopCause } from "./tables.ts"
import { decodeOutput } from "./tables.ts"

/** What the store of one durable toolset in one session works with. */
export interface Deps {
  readonly toolsetId: string
  readonly workflow: CallWorkflow
  readonly store: DurableStore["Service"]
  readonly chat: DurableChat["Service"]
  readonly engine: Context.Context<WorkflowEngine>
  readonly clock: Clock.Clock
  /** What this process knows of each call's record (a call adopted from the store has its row). */
  readonly records: WeakMap<Call, Record>
}

/** A call's record as its follower knows it. */
export interface Record {
  /** Its row, if it was recorded before this follower (a call adopted after a restart). */
  readonly adopted: CallRow | undefined
  /** It was recorded (claimed) and its execution started. */
  recorded: boolean
  /** The first output was applied. */
  first: boolean
  /** The `_update_<n>` pairs applied (the last `n`). */
  pairs: number
  /** The row's version last read (a follower of a call run elsewhere compares it). */
  version: number
  /** Completed once a stop asked by the engine is recorded (or there was nothing to record). */
  readonly stopped: Deferred.Deferred<void>
}

export const make = (deps: Deps): CallStore => ({
  run: (toolset, c, _args, context) => follow(deps, toolset, c, context),
  closedOutput: () => undefined,
  timerTellsTimeout: false,
  // A cancel answers once it is recorded (or after `stopBound`: the store is slow or down; the
  // call's fiber goes on trying).
  stopRecorded: (_toolset, c) => {
    const record = recordOf(deps, c)
    return Effect.asVoid(Effect.timeoutOption(Deferred.await(record.stopped), stopBound))
  }
})

const stopBound = Duration.seconds(10)

const recordOf = (deps: Deps, c: Call): Record => {
  let record = deps.records.get(c)
  if (record === undefined) {
    record = { adopted: undefined, recorded: false, first: false, pairs: 0, version: -1, stopped: Deferred.makeUnsafe() }
    deps.records.set(c, record)
  }
  return record
}

// --- the call's fiber ----------------------------------------------------------------------------

/**
 * A durable call's fiber: records the call and starts its execution (uninterruptible), waits for
 * its turn if it replaces others, then follows the execution to its end (interruptible: the
 * engine stops a call by interrupting it, and what that means is recorded on the way out).
 */
const follow = (deps: Deps, toolset: Toolset, c: Call, context: Context.Context<never>): Effect.Effect<void> => {
  const record = recordOf(deps, c)
  const box = mailbox()
  let unlisten: (() => void) | undefined
  const body = Effect.gen(function*() {
    if (record.adopted === undefined) {
      const started = yield* start(deps, toolset, c, record, box, (stop) => {
        unlisten?.()
        unlisten = stop
      })
      if (!started) return
    } else {
      unlisten = listen(deps, c, box)
      // Its tool returned in this process and its end is being recorded (the toolset was closed
      // and made again meanwhile): no timeout or cancel applies any more (E7).
      if (deps.store.hub.hasReturned(deps.chat.sessionId, c.base!)) markReturned(toolset, c)
      // Its execution may never have been started (the process that recorded the call ended
      // before it could): starting it again is a no-op for one that exists.
      yield* Effect.catchCause(
        retryAfterFailure(startExecution(deps, c.base!)),
        (cause) => Effect.logError(`${c.base} could not be resumed; it goes on when the toolset is made again`, cause)
      )
      yield* catchUp(deps, toolset, c, record, box)
    }
    // Stopped while it was being recorded (a call waiting for its turn is not interrupted: it ends).
    if (c.status === "done") return yield* stopped(deps, toolset, c, record, box)
    if (c.status === "waiting" && !(yield* CallRun.waitTurn(toolset, c, context))) {
      return yield* stopped(deps, toolset, c, record, box)
    }
    // Only the wait for what the execution says is interruptible: the engine stops a call by
    // interrupting it there, and the fiber goes on (uninterruptible) to record what that means.
    const end = yield* Effect.exit(Effect.interruptible(untilEnded(deps, toolset, c, record, box)))
    if (Exit.isSuccess(end)) return yield* ended(deps, toolset, c, record, end.value)
    if (!Cause.hasInterrupts(end.cause)) yield* Effect.logError("a durable call's follower failed", end.cause)
    // In a fiber of its own: this one stays interrupted, and what follows inserts into the chat
    // (interruptibly, as every insertion does). A call whose tool returned was not stopped (a
    // drain, or the close, cut its wait short): its result is told once recorded, as in memory,
    // unless the toolset closes first (then the toolset made again tells it).
    const after = c.status === "finishing" ? finished(deps, toolset, c, record, box) : stopped(deps, toolset, c, record, box)
    yield* Effect.flatMap(Effect.forkDetach(after, { startImmediately: true }), Fiber.join)
  })
  return Effect.ensuring(
    body,
    Effect.sync(() => {
      unlisten?.()
      // (its execution ran elsewhere, or never began: nothing is held for it any more)
      if (c.base !== undefined) deps.store.hub.drop(deps.chat.sessionId, c.base)
    })
  )
}

const listen = (deps: Deps, c: Call, box: Mailbox): () => void =>
  deps.store.hub.listen(deps.chat.sessionId, c.base!, (event) => post(box, event))

/**
 * Records a new call under the first free base (`<callId>`, then `<callId>_run<k>`), and starts its
 * execution. A base taken by this very model call (recorded before by a process that ended) is
 * joined. False if it could not be started: its caller is told, and the call ends.
 */
const start = (
  deps: Deps,
  toolset: Toolset,
  c: Call,
  record: Record,
  box: Mailbox,
  listening: (stop: () => void) => void
): Effect.Effect<boolean> => {
  // The base recorded for the call, once it is: a start that fails after it ends it there too.
  let claimed: string | undefined
  return Effect.gen(function*() {
    const sessionId = deps.chat.sessionId
    const now = deps.clock.currentTimeMillisUnsafe()
    const timeoutMs = c.tool.timeout === undefined ? undefined : Duration.toMillis(c.tool.timeout)
    // Live runners of the cluster that cannot run it (it would wait on one of them, then fail).
    const refusal = deps.store.runners === undefined ? undefined : yield* deps.store.runners.refusal(deps.toolsetId)
    if (refusal !== undefined) return yield* Effect.fail(new Refused({ refusal }))
    for (let k = 1;; k++) {
      // The store knows which bases the session's calls took (this process may not: a restart).
      c.base = k === 1 ? c.functionCall.callId : `${c.functionCall.callId}_run${k}`
      listening(listen(deps, c, box))
      const claim = yield* claimCall(deps.store.sql, {
        sessionId,
        base: c.base,
        toolsetId: deps.toolsetId,
        call: c.functionCall,
        dupKey: c.key,
        cancellable: c.cancellable,
        status: c.status === "waiting" ? "waiting" : "running",
        after: c.status === "waiting" ? predecessorsOf(toolset, c) : [],
        timeoutMs,
        deadline: c.status === "waiting" || timeoutMs === undefined ? undefined : now + timeoutMs,
        startedAt: c.startedAt
      })
      const existing = claim._tag === "Taken" ? claim.row : undefined
      if (existing !== undefined && existing.callItemId !== c.functionCall.id) continue
      claimed = c.base
      Coordinator.noteBase(toolset.session, c.base)
      // Its execution, if it runs here, starts from the row just written (no read of it again;
      // held only where no other process writes the rows: see `Hub.hold`).
      if (claim._tag === "Recorded") deps.store.hub.hold(sessionId, c.base, claim.row)
      yield* startExecution(deps, c.base)
      record.recorded = true
      if (existing !== undefined) {
        // The same model call, recorded before: it is that call.
        yield* catchUp(deps, toolset, c, record, box)
      }
      return true
    }
  }).pipe(
    // A store that failed for a moment (a connection dropped, the pool full) is tried again.
    (effect) => retryAfterFailure(effect, (error) => !(error instanceof Refused)),
    Effect.catchCause((cause) => couldNotStart(deps, toolset, c, claimed, cause))
  )
}

/** How a call's start is tried again (8 more times: over about 9 seconds). */
const startRetry = (attempt: number): Duration.Duration => Duration.millis(Math.min(100 * 2 ** attempt, 2000))

/**
 * `effect`, tried again after a failure `retryable` accepts, up to 8 more times, pausing as
 * `startRetry` says. Unlike `Effect.retry` with a schedule, a first attempt that succeeds costs no
 * run-loop step more than the attempt itself (a call's start is on the path of its first output).
 */
const retryAfterFailure = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  retryable: (error: E) => boolean = () => true
): Effect.Effect<A, E, R> => {
  const attempt = (n: number): Effect.Effect<A, E, R> =>
    n >= 8 ? effect : Effect.catchIf(effect, retryable, () => Effect.andThen(Effect.sleep(startRetry(n)), attempt(n + 1)))
  return attempt(0)
}

/** Live runners of the cluster cannot run the call's toolset: it is not started. */
class Refused extends Data.TaggedError("Refused")<{ readonly refusal: Runners.Refusal }> {}

/**
 * Starts a recorded call's execution (its id hashed at once: no round trip to a worker thread).
 * effect/cluster's storage failing (a `PersistenceError`, which its engine turns into a defect) is
 * a failure here, so that it is tried again.
 */
const startExecution = (deps: Deps, base: string) =>
  deps.workflow.execute({ sessionId: deps.chat.sessionId, base }, { discard: true }).pipe(
    Effect.catchDefect((defect) => defect instanceof PersistenceError ? Effect.fail(defect) : Effect.die(defect)),
    Effect.provideContext(deps.engine),
    Effect.provideService(WebCrypto, crypto)
  )

/** The calls of its key a waiting call waits for, by base (those with a record). */
const predecessorsOf = (toolset: Toolset, c: Call): ReadonlyArray<string> => {
  const calls = c.key === undefined ? undefined : toolset.registry.byKey.get(c.key)
  const bases: Array<string> = []
  if (calls !== undefined) for (const other of calls) if (other !== c && other.base !== undefined) bases.push(other.base)
  return bases
}

/** The store or the engine failed: the call did not start. The model hears so; the cause is logged. */
const couldNotStart = (
  deps: Deps,
  toolset: Toolset,
  c: Call,
  claimed: string | undefined,
  cause: Cause.Cause<unknown>
): Effect.Effect<boolean> => {
  const { callId, name } = c.functionCall
  const refused = Cause.findErrorOption(cause).pipe(Option.filter((error) => error instanceof Refused))
  const output = CallRun.output(
    toolset,
    callId,
    name,
    refused._tag === "Some"
      ? `${name} could not be started: the service that runs it is not available right now. Tell the user it did not work, and that they may try again later.`
      : `${name} could not be started: its store failed. Tell the user it did not work, and that they may try again.`,
    true
  )
  CallRun.settleFirst(toolset, c, output)
  c.outcome = "error"
  const logged = refused._tag === "Some"
    ? Effect.logError(`could not start a durable call. ${Runners.describe((refused.value as Refused).refusal, deps.store.application)}`)
    : Effect.logError("could not start a durable call", cause)
  // Recorded, its execution never started: its record says it ended as the model was told (else
  // it would stay running for good, and be taken up again at every start of the session).
  if (claimed !== undefined) deps.store.hub.drop(deps.chat.sessionId, claimed)
  const ended = claimed === undefined ? Effect.void : recordEnd(deps.store.sql, {
    sessionId: deps.chat.sessionId,
    base: claimed,
    toolsetId: deps.toolsetId,
    status: "error",
    output: withId(output, firstOutputId(claimed)),
    final: undefined,
    message: undefined,
    now: deps.clock.currentTimeMillisUnsafe()
  }).pipe(
    retryAfterFailure,
    Effect.catchCause((failure) => Effect.logError("could not record that a durable call did not start", failure))
  )
  return Effect.as(Effect.andThen(logged, ended).pipe(Effect.annotateLogs({ toolset: deps.toolsetId, callId })), false)
}

/**
 * The agent's chat as the session says, if it answers in time (its toolset's `replyTimeout`);
 * whatever else it answers (a failure, a defect, an interruption), or if the fiber is stopped
 * meanwhile, `undefined`.
 */
export const readChat = (toolset: Toolset): Effect.Effect<ReadonlyArray<ChatItem> | undefined> =>
  Effect.matchCause(Effect.interruptible(Effect.timeout(toolset.session.items, toolset.owner.policy.replyTimeout)), {
    onSuccess: (items): ReadonlyArray<ChatItem> | undefined => items,
    onFailure: () => undefined
  })

/**
 * The follower of a call whose tool returned was interrupted (a drain, the close) before the end
 * was recorded: the end is told once it is, or, if the toolset closes first, the call is left to
 * the toolset made again for the session (a caller still waiting hears that it goes on).
 */
const finished = (deps: Deps, toolset: Toolset, c: Call, record: Record, box: Mailbox): Effect.Effect<void> =>
  Effect.flatMap(untilEndedOrClosed(deps, toolset, c, record, box), (end) =>
    end === undefined ? detach(deps, toolset, c) : tellEnd(deps, toolset, c, record, end, false))

// --- stopped by the engine -----------------------------------------------------------------------

/**
 * The engine stopped the call (its fiber was interrupted, or its turn never came): record what
 * that means. Runs uninterruptibly; its waits end when the toolset closes.
 */
const stopped = (deps: Deps, toolset: Toolset, c: Call, record: Record, box: Mailbox): Effect.Effect<void> =>
  Effect.suspend(() => {
    const cause = c.stopCause
    if (!record.recorded || c.base === undefined || cause === undefined || cause === "closed") {
      Deferred.doneUnsafe(record.stopped, Exit.void)
      return record.recorded && c.base !== undefined ? detach(deps, toolset, c) : Effect.void
    }
    return stopRecorded(deps, toolset, c, record, box, cause)
  })

/**
 * The toolset closed: the call goes on. A caller still waiting hears so once it is recorded (the
 * call's result will be told when the conversation resumes); if the call had said something
 * meanwhile, that is what it hears.
 */
const detach = (deps: Deps, toolset: Toolset, c: Call): Effect.Effect<void> => {
  if (c.firstSettled) return Effect.void
  const { callId, name } = c.functionCall
  const placeholder = CallRun.output(
    toolset,
    callId,
    name,
    `${name} goes on in the background; this conversation was closed before it answered. Its result will be added when the conversation resumes.`,
    false
  )
  const stamped = Object.assign(Object.create(Object.getPrototypeOf(placeholder)), placeholder, { id: firstOutputId(c.base!) }) as FunctionCallOutput
  deps.store.hub.drop(deps.chat.sessionId, c.base!)
  return Effect.matchCauseEffect(recordPlaceholder(deps.store.sql, deps.chat.sessionId, c.base!, stamped), {
    onSuccess: (recorded) => {
      Lifecycle.settleFirst(toolset.registry, c, recorded === undefined ? stamped : decodeOutput(recorded))
      Lifecycle.flush(toolset.registry)
      return Effect.void
    },
    onFailure: (failure) => {
      Lifecycle.settleFirst(toolset.registry, c, stamped)
      Lifecycle.flush(toolset.registry)
      return Effect.logError(`${callId} goes on, but the store could not note that its result is owed: it may not be told`, failure)
        .pipe(Effect.annotateLogs({ toolset: deps.toolsetId, callId }))
    }
  })
}

/**
 * A cancel, a replacement, a drain, a caller gone, or a timeout: recorded (the execution sees it
 * and stops), then the fiber waits until the execution has stopped, so the call stays listed as
 * cancelling until it really has (E4). A timeout the execution beat (its end recorded first) is
 * not one: the result is told (E7).
 */
const stopRecorded = (
  deps: Deps,
  toolset: Toolset,
  c: Call,
  record: Record,
  box: Mailbox,
  cause: Exclude<Lifecycle.StopCause, "closed">
): Effect.Effect<void> => {
  const sessionId = deps.chat.sessionId
  const base = c.base!
  const timedOut = cause === "timed-out"
  const now = deps.clock.currentTimeMillisUnsafe()
  const { callId, name } = c.functionCall
  const timedOutText = timedOut ? CallRun.timedOutText(toolset, c) : ""
  // What the model is told now, if it was told nothing yet: that it was cancelled, or timed out.
  const given = c.firstSettled && record.first
    ? undefined
    : timedOut
    ? CallRun.output(toolset, callId, name, timedOutText, true)
    : toolset.cancelled(c) ?? CallRun.cancelledOutput(toolset, c)
  // (Claimed for the session when it is delivered.)
  const finalId = timedOut && record.first ? syntheticCallId(base, "final") : undefined
  const notice = finalId === undefined
    ? undefined
    : pairAt(c.functionCall, base, "timeout", finalId, { output: timedOutText, isError: true }, now)
  return Effect.gen(function*() {
    deps.store.hub.drop(sessionId, base)
    const held = yield* retrying(requestStop(deps.store.sql, {
      sessionId,
      base,
      toolsetId: deps.toolsetId,
      cause: cause as StopCause,
      given: given === undefined ? undefined : withId(given, firstOutputId(base)),
      delivered: record.pairs,
      notice,
      now
    }))
    deps.store.hub.publish(sessionId, base, stopEvent)
    Deferred.doneUnsafe(record.stopped, Exit.void)
    if (timedOut && !held) {
      // The execution ended first: its result is the answer, not a timeout.
      yield* catchUp(deps, toolset, c, record, box)
      const end = yield* untilEndedOrClosed(deps, toolset, c, record, box)
      if (end !== undefined) yield* tellEnd(deps, toolset, c, record, { ...end, found: "running" }, true)
      return
    }
    if (given !== undefined) {
      record.first = true
      Lifecycle.settleFirst(toolset.registry, c, given)
      Lifecycle.flush(toolset.registry)
    } else if (notice !== undefined && held) {
      c.outcome = "timed-out"
      yield* deliver(deps, toolset, c, notice, true)
    }
    // The execution stops (after what it cannot leave halfway): the call is listed until it has.
    // (A call stopped while it waited for its turn never ran: its record says it ended.)
    if (c.begun) yield* untilEndedOrClosed(deps, toolset, c, record, box)
  })
}

const stopEvent: CallEvent = { _tag: "Stop" }

const withId = (output: FunctionCallOutput, id: string): FunctionCallOutput =>
  output.id === id ? output : Object.assign(Object.create(Object.getPrototypeOf(output)), output, { id })

/**
 * The execution's end, or `undefined` when the toolset closes first (the call goes on; the toolset
 * made again for the session follows it). Uninterruptible callers wait here: close wakes it.
 */
const untilEndedOrClosed = (
  deps: Deps,
  toolset: Toolset,
  c: Call,
  record: Record,
  box: Mailbox
): Effect.Effect<Extract<CallEvent, { readonly _tag: "Ended" }> | undefined> => {
  const told = Effect.callback<Extract<CallEvent, { readonly _tag: "Ended" }> | undefined>((resume) => {
    const registry = toolset.registry
    const closed = Lifecycle.waiter(registry, () => registry.closed, () => resume(Effect.succeed(undefined)))
    if (closed === undefined) return resume(Effect.succeed(undefined))
    const check = (): void => {
      const end = box.events.find((event) => event._tag === "Ended")
      if (end !== undefined && end._tag === "Ended") {
        Lifecycle.forgetWaiter(registry, closed)
        return resume(Effect.succeed(end))
      }
      box.events.length = 0
      box.wake = check
    }
    check()
    return Effect.sync(() => {
      box.wake = undefined
      Lifecycle.forgetWaiter(registry, closed)
    })
  })
  // What the execution recorded is read again every `pollInterval` (it runs in another process,
  // or its end was told before this wait began): an end recorded is never waited for in vain.
  const loop: Effect.Effect<Extract<CallEvent, { readonly _tag: "Ended" }> | undefined> = Effect.flatMap(
    Effect.timeoutOption(told, deps.store.pollInterval),
    (end) => {
      if (end._tag === "Some") return Effect.succeed(end.value)
      record.version = -1
      return Effect.andThen(Effect.ignore(catchUp(deps, toolset, c, record, box)), loop)
    }
  )
  return loop
}
