/**
 * A durable call as an effect/workflow execution: the workflow of a toolset, and the body that runs
 * one call of it on whichever runner holds it.
 *
 * The body replays from the top after a restart (or on the runner that takes a dead runner's call
 * over). What must not happen twice is recorded in the call's row: each update is counted there
 * (`steps`), so an update recorded before is not recorded again; its end is recorded once; a tool's
 * own steps that must not run twice are activities (`DurableToolset.activity`). Everything else in
 * the tool (waiting, polling) may run again.
 *
 * Each record is one statement, committed before anyone hears of it; then it is handed to the
 * call's follower if it is in this process (`hub.ts`), else the follower reads it.
 *
 * Cancellation and the timeout are data: a call asked to stop has its row say `stopping` (seen here
 * at once in this process, else at the next look), and a call's deadline is in its row.
 */
import { Cause, Clock, Context, Duration, Effect, Exit, Fiber, Latch, Option, Result, Schedule, Schema, Semaphore } from "effect"
import * as Workflow from "effect/workflow/Workflow"
import type { WorkflowEngine, WorkflowInstance } from "effect/workflow/WorkflowEngine"
import { AsyncRunContext } from "../../AsyncRunContext.ts"
import { FunctionCall, FunctionCallOutput } from "../../ChatContext.ts"
import * as FunctionTool from "../../FunctionTool.ts"
import { encodeUpdate, lateFailure, pendingExtra } from "../../internal/callRun.ts"
import type { Prepared } from "../../internal/toolTable.ts"
import { confirmParameter } from "../../internal/toolTable.ts"
import * as Prompts from "../../Prompts.ts"
import type { DurableStore } from "../DurableStore.ts"
import type { CallEvent } from "./hub.ts"
import type { CallRow, End } from "./tables.ts"
import { beginRunning, liveAmong, markUnusable, readCall, recordEnd, recordUpdate } from "./calls.ts"
import { isLive, usable } from "./tables.ts"

/** What the runner side needs of a toolset. */
export interface Definition {
  readonly id: string
  readonly tools: ReadonlyMap<string, Prepared>
  readonly prompts: Prompts.Prompts
  readonly workflow: CallWorkflow
}

/**
 * What a call's execution starts from: the row of the call in the session (`base` is the call's id
 * in its synthetic ids: the model's call id, or `<id>_run<k>` when that id was used before).
 */
export const Payload = Schema.Struct({
  sessionId: Schema.String,
  base: Schema.String
})

export const makeWorkflow = (toolsetId: string) =>
  Workflow.make(`effect-async-toolset/${toolsetId}`, {
    payload: Payload,
    idempotencyKey: ({ base, sessionId }) => executionKey(sessionId, base)
  })

/**
 * A call's key in effect/workflow: `<session>/<base>`, with `%` and `/` escaped in the session id,
 * so that a session id and a call id never combine into another session's key ("s/1" and "x" vs
 * "s" and "1/x"). Session ids without either character keep the key they had.
 */
export const executionKey = (sessionId: string, base: string): string =>
  `${sessionId.replaceAll("%", "%25").replaceAll("/", "%2F")}/${base}`

export type CallWorkflow = ReturnType<typeof makeWorkflow>

// --- ids -----------------------------------------------------------------------------------------

/** The id of the output the model gets for the call (its first update, or its whole result). */
export const firstOutputId = (base: string): string => `fco:${base}:first`

/** The item ids of the pair of update `n` (`_update_<n>`) or of the final result. */
export const pairIds = (base: string, step: number | "final" | "timeout"): readonly [string, string] => [
  `fc:${base}:${step}`,
  `fco:${base}:${step}`
]

/** The synthetic call id of a step's pair. */
export const syntheticCallId = (base: string, step: number | "final"): string =>
  step === "final" ? `${base}_final` : `${base}_update_${step}`

/** The pair a call says at a step, made now. */
export const pairAt = (
  call: FunctionCall,
  base: string,
  step: number | "final" | "timeout",
  callId: string,
  out: FunctionTool.Output,
  now: number
): readonly [FunctionCall, FunctionCallOutput] => {
  const [fc, fco] = pairIds(base, step)
  return [
    new FunctionCall({ id: fc, callId, name: call.name, arguments: call.arguments, createdAt: now }),
    new FunctionCallOutput({ id: fco, callId, name: call.name, output: out.output, isError: out.isError, createdAt: now })
  ]
}

// --- the run of one call -------------------------------------------------------------------------

/**
 * One run (replay) of a call's body, for `DurableToolset.activity`: it names the tool's steps
 * (`step/<name>`, `step/<name>/2`, … in the order the tool takes them) and runs them as activities.
 */
export class DurableRun extends Context.Service<DurableRun, {
  readonly executionId: string
  readonly context: Context.Context<WorkflowEngine | WorkflowInstance>
  readonly steps: Map<string, number>
}>()("effect-async-toolset/DurableToolset/DurableRun") {}

type Outcome =
  // `ownInterrupt`: the tool interrupted itself (every interruption in its exit is its own fiber's)
  | { readonly _tag: "Exit"; readonly exit: Exit.Exit<unknown, unknown>; readonly ownInterrupt: boolean }
  | { readonly _tag: "Stopped" }
  | { readonly _tag: "TimedOut" }
  | { readonly _tag: "Invalid"; readonly message: string }

/** The workflow body of a toolset's calls. */
export const body = <S>(definition: Definition, store: DurableStore["Service"], services: Context.Context<S>) =>
(
  payload: typeof Payload.Type,
  executionId: string
): Effect.Effect<void, never, WorkflowEngine | WorkflowInstance> =>
  Effect.gen(function*() {
    const { base, sessionId } = payload
    // Listening before reading (a stop or a predecessor's end told from now on is not missed).
    const told = yield* Effect.acquireRelease(Effect.sync(() => arm(store, sessionId, [base], isStop)), (armed) => Effect.sync(armed.close))
    // As this process just recorded it (its first run here), else as the store has it.
    let row = store.hub.take(sessionId, base) ?? (yield* retrying(readCall(store.sql, sessionId, base)))
    // Ended already (its end was recorded; this is a replay), or never recorded: nothing to do.
    if (row === undefined || !isLive(row.status)) return
    // A row that cannot be run (a corrupted store): the call ends failed, the others go on. (Its
    // model call is decoded once, here: it never changes.)
    const readable = usable(row)
    if (Result.isFailure(readable)) {
      yield* Effect.logError(`The durable call ${base} of session ${sessionId} cannot be run: ${readable.failure}. It is marked failed.`)
      const now = yield* Clock.currentTimeMillis
      return yield* retrying(markUnusable(store.sql, sessionId, base, now))
    }
    const call = readable.success
    if (row.status === "waiting") {
      row = yield* awaitTurn(store, sessionId, row, told)
      if (row === undefined || !isLive(row.status)) return
    }
    const p = definition.tools.get(call.name)
    const context = yield* Effect.context<WorkflowEngine | WorkflowInstance>()
    const outcome: Outcome = row.status === "stopping"
      ? { _tag: "Stopped" }
      : p === undefined
      ? { _tag: "Invalid", message: `${call.name} is no longer a tool of this agent; the call did not finish.` }
      : yield* runTool(definition, store, sessionId, row, call, p, executionId, context, told).pipe(Effect.provideContext(services))
    if (outcome._tag === "Exit" && Exit.isFailure(outcome.exit) && Cause.hasInterruptsOnly(outcome.exit.cause) && !outcome.ownInterrupt) {
      // Interrupted, and not by a stop of ours (that is `Stopped`), the deadline or the tool itself:
      // the workflow engine stopped this execution (its runner shutting down, its shard moving, an
      // activity interrupted with it). The call is not over: nothing is recorded, the execution
      // ends without a result, and the engine runs it again where it resumes it (issue 18: an
      // engine's interruption is not the tool's failure). A tool that interrupted itself
      // (`Effect.interrupt` in its own fiber) ends as in memory: an error output, recorded below,
      // not a call that never ends.
      return yield* Effect.failCause(outcome.exit.cause as Cause.Cause<never>)
    }
    // The tool returned: the follower in this process knows it at once (no timeout or cancel
    // applies any more, E7), before the end is recorded (which may take the store a while).
    // (Known as returned until the end is recorded, or this run stops before: then the tool runs again.)
    const recorded = recordOutcome(definition, store, sessionId, base, call, p, outcome)
    if (outcome._tag !== "Exit") return yield* recorded
    const forget = store.hub.returned(sessionId, base)
    yield* Effect.ensuring(recorded, Effect.sync(forget))
  }).pipe(Effect.scoped, Effect.annotateLogs({ toolset: definition.id, callId: payload.base }))

/**
 * A call that replaces others begins once each of them has ended (D4): woken when one ends in this
 * process, else looking every `pollInterval`. Returns its row once it runs (or once it was stopped).
 */
const awaitTurn = (store: DurableStore["Service"], sessionId: string, row: CallRow, told: Armed) =>
  Effect.acquireUseRelease(
    Effect.sync(() => arm(store, sessionId, row.after, isEnd)),
    (predecessors) =>
      Effect.gen(function*() {
        let current: CallRow | undefined = row
        while (current !== undefined && current.status === "waiting") {
          const live = yield* retrying(liveAmong(store.sql, sessionId, current.after))
          if (live === 0) {
            const now = yield* Clock.currentTimeMillis
            current = yield* retrying(beginRunning(store.sql, sessionId, current.base, now))
            if (current?.status === "running") store.hub.publish(sessionId, current.base, running)
            return current
          }
          yield* Effect.raceFirst(predecessors.wait, told.wait)
          current = yield* retrying(readCall(store.sql, sessionId, current.base))
        }
        return current
      }),
    (predecessors) => Effect.sync(predecessors.close)
  )

const isStop = (event: CallEvent) => event._tag === "Stop"
const isEnd = (event: CallEvent) => event._tag === "Ended"

const running: CallEvent = { _tag: "Running" }

/**
 * A listener armed on some calls' events in this process: `wait` completes at once if one was told
 * since the last wait, else at the next one, or after `pollInterval` (what another process changed
 * is read then). Armed before the store is read, nothing told after the read is missed.
 */
interface Armed {
  readonly wait: Effect.Effect<void>
  readonly close: () => void
}

const arm = (
  store: DurableStore["Service"],
  sessionId: string,
  bases: ReadonlyArray<string>,
  matters: (event: CallEvent) => boolean
): Armed => {
  // Open once an event that matters was told since the last wait (Effect's `Latch`).
  const told = Latch.makeUnsafe(false)
  const listener = (event: CallEvent) => {
    if (matters(event)) told.openUnsafe()
  }
  const stops = bases.map((base) => store.hub.listen(sessionId, base, listener))
  const wait = Effect.timeoutOption(told.await, store.pollInterval).pipe(
    Effect.andThen(Effect.sync(() => {
      told.closeUnsafe()
    }))
  )
  return { wait, close: () => stops.forEach((stop) => stop()) }
}

/** Runs the tool, raced against the call being asked to stop and against its deadline. */
const runTool = (
  definition: Definition,
  store: DurableStore["Service"],
  sessionId: string,
  row: CallRow,
  call: FunctionCall,
  p: Prepared,
  executionId: string,
  context: Context.Context<WorkflowEngine | WorkflowInstance>,
  told: Armed
): Effect.Effect<Outcome> => {
  const decoded = FunctionTool.decodeArguments(p.visible, call.arguments, { maxLength: Number.MAX_SAFE_INTEGER })
  if (Result.isFailure(decoded)) return Effect.succeed({ _tag: "Invalid", message: decoded.failure.message })
  const { [confirmParameter]: _flag, ...args } = decoded.success as Record<string, unknown>
  const run = DurableRun.of({ executionId, context, steps: new Map() })
  const counts: Counts = { steps: 0, recorded: row.steps, updates: row.updates, lock: Semaphore.makeUnsafe(1) }
  const runContext = AsyncRunContext.of({
    functionCall: call,
    toolsetId: definition.id,
    update: (message) => update(definition, store, sessionId, row.base, call, counts, message)
  })
  const handler = Effect.suspend(() => p.tool.handler(p.mode === "confirm" ? args : decoded.success) as Effect.Effect<unknown, unknown>)
    .pipe(
      Effect.provideService(AsyncRunContext, runContext),
      Effect.provideService(DurableRun, run),
      // A scope of the call's own, closed when the tool ends (as in memory).
      Effect.scoped
    )
  // The tool runs until it ends, is asked to stop, or runs out of time; stopped, it is interrupted
  // and waited for: the end is recorded once the tool has really stopped (an activity is never
  // cut short, F3).
  const stopOrDeadline: Effect.Effect<Outcome> = row.deadline === null
    ? watchStop(store, sessionId, row.base, told)
    : Effect.raceFirst(
      watchStop(store, sessionId, row.base, told),
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Effect.as(Effect.sleep(Duration.millis(Math.max(0, row.deadline! - now))), timedOut))
    )
  return Effect.flatMap(Effect.forkChild(Effect.exit(handler), { startImmediately: true }), (fiber) =>
    Effect.flatMap(
      Effect.raceFirst(
        Effect.map(Fiber.join(fiber), (exit): Outcome => ({ _tag: "Exit", exit, ownInterrupt: interruptedBy(exit, fiber.id) })),
        stopOrDeadline
      ),
      (outcome): Effect.Effect<Outcome> =>
        outcome._tag === "Exit" ? Effect.succeed(outcome) : Effect.as(
          // What the tool did as it stopped (a clean-up that died) is logged, not delivered (as in memory).
          Effect.flatMap(Effect.andThen(Fiber.interrupt(fiber), Fiber.await(fiber)), (exit) =>
            lateFailure(Exit.isSuccess(exit) ? exit.value : exit)),
          outcome
        )
    ))
}

const timedOut: Outcome = { _tag: "TimedOut" }

/** Whether `exit` is an interruption by `fiberId` alone (a fiber that interrupted itself: `Effect.interrupt`). */
const interruptedBy = (exit: Exit.Exit<unknown, unknown>, fiberId: number): boolean => {
  if (Exit.isSuccess(exit) || !Cause.hasInterruptsOnly(exit.cause)) return false
  const by = Cause.interruptors(exit.cause)
  return by.size === 1 && by.has(fiberId)
}

/**
 * Completes once the call's row says it is asked to stop: told at once by a stop in this process,
 * else seen at the next look (every `pollInterval`). The tool is interrupted then; its activities
 * are not cut short (F3).
 */
const watchStop = (store: DurableStore["Service"], sessionId: string, base: string, told: Armed): Effect.Effect<Outcome> =>
  Effect.gen(function*() {
    while (true) {
      yield* told.wait
      const now = yield* Effect.orElseSucceed(readCall(store.sql, sessionId, base), () => undefined)
      if (now !== undefined && now.status !== "running") return { _tag: "Stopped" } as const
    }
  })

/** `AsyncRunContext.update` in a durable call: recorded (unless a replay recorded it before), then told. */
const update = (
  definition: Definition,
  store: DurableStore["Service"],
  sessionId: string,
  base: string,
  call: FunctionCall,
  counts: Counts,
  message: unknown
): Effect.Effect<void> =>
  // One at a time, in the order the tool gave them: each update's pair number follows the one
  // recorded before it (B8: of updates racing from the tool's fibers, none is lost).
  counts.lock.withPermits(1)(Effect.suspend(() => {
    const k = counts.steps++
    // Recorded by a run before this one (this is a replay): its follower has it.
    if (k < counts.recorded) return Effect.void
    const text = encodeUpdate(definition.prompts, { functionCall: call }, message)
    const raw = typeof message === "string" ? message : text
    return Effect.flatMap(Clock.currentTimeMillis, (now) => {
      const n = counts.updates + 1
      const first = new FunctionCallOutput({
        id: firstOutputId(base),
        callId: call.callId,
        name: call.name,
        output: text,
        isError: false,
        createdAt: now,
        extra: pendingExtra
      })
      const pair = pairAt(call, base, n, syntheticCallId(base, n), { output: text, isError: false }, now)
      return Effect.map(
        retrying(recordUpdate(store.sql, { sessionId, base, toolsetId: definition.id, steps: k, updates: counts.updates, first, pair, message: raw })),
        (recorded) => {
          switch (recorded._tag) {
            case "First":
              return store.hub.publish(sessionId, base, { _tag: "First", output: first, message: raw })
            case "Pair":
              counts.updates = n
              return store.hub.publish(sessionId, base, { _tag: "Pair", n, items: pair, message: raw })
            case "Dropped":
              return
          }
        }
      )
    })
  }))

/** Where a run of a call's body is in its updates. */
interface Counts {
  /** Updates the tool gave in this run. */
  steps: number
  /** Updates recorded by runs before this one (a replay skips them). */
  readonly recorded: number
  /** `_update_<n>` pairs recorded. */
  updates: number
  /** Updates are recorded one at a time. */
  readonly lock: Semaphore.Semaphore
}

/** How the call ended, recorded once, then told. */
const recordOutcome = (
  definition: Definition,
  store: DurableStore["Service"],
  sessionId: string,
  base: string,
  call: FunctionCall,
  p: Prepared | undefined,
  outcome: Outcome
): Effect.Effect<void> =>
  Effect.gen(function*() {
    const vars = { functionName: call.name, callId: call.callId }
    let status: End
    let out: FunctionTool.Output | undefined
    switch (outcome._tag) {
      case "Exit": {
        const encoded = yield* FunctionTool.encodeExit(p!.tool, call.callId, outcome.exit)
        out = Option.getOrUndefined(encoded)
        status = out?.isError === true ? "error" : "done"
        if (Exit.isFailure(outcome.exit) && Cause.hasInterruptsOnly(outcome.exit.cause)) {
          yield* Effect.logWarning("the tool was interrupted; its call ends with an error output")
        }
        break
      }
      case "TimedOut":
        status = "timed-out"
        out = {
          output: Prompts.render(definition.prompts.timedOut, { ...vars, timeout: Duration.format(p?.timeout ?? Duration.zero) }),
          isError: true
        }
        break
      case "Stopped":
        status = "cancelled"
        out = { output: Prompts.render(definition.prompts.cancelled, vars), isError: true }
        break
      case "Invalid":
        status = "error"
        out = { output: outcome.message, isError: true }
        break
    }
    const now = yield* Clock.currentTimeMillis
    const output = new FunctionCallOutput({
      id: firstOutputId(base),
      callId: call.callId,
      name: call.name,
      output: out?.output ?? "",
      isError: out?.isError ?? false,
      createdAt: now
    })
    const final = out === undefined ? undefined : pairAt(call, base, "final", syntheticCallId(base, "final"), out, now)
    const found = yield* retrying(recordEnd(store.sql, { sessionId, base, toolsetId: definition.id, status, output, final, message: undefined, now }))
    store.hub.publish(sessionId, base, { _tag: "Ended", found, status, output, final, message: undefined })
  })

/**
 * A store operation retried until it works (a database restarting, a connection dropped), with a
 * warning now and then: a durable call waits for its store rather than fail, and the runner says
 * that it is stuck.
 */
export const retrying = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, never, R> =>
  effect.pipe(
    Effect.tapError((error) => Effect.logWarning("the durable store failed; trying again", error)),
    Effect.retry(Schedule.min([Schedule.exponential("100 millis"), Schedule.spaced("5 seconds")])),
    Effect.orDie
  )
