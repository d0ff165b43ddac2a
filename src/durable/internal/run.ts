/**
 * A durable call as an effect/workflow execution: the workflow of a toolset, and the body that runs
 * one call of it on whichever runner holds it.
 *
 * The body replays from the top after a restart. What must not happen twice is an activity, whose
 * result the engine stores under its name: each `update` is the activity `update/<n>`, the end of
 * the call is the activity `end`, and a tool's own steps are `step/<name>` (see
 * `DurableToolset.activity`). Each of those records its effect on the session's chat and calls in
 * one transaction, which the cluster engine commits with the activity's stored result
 * (`ClusterSchema.WithTransaction`): an update is in the chat exactly once, never twice, never
 * skipped. Everything else in the tool (waiting, polling) may run again.
 *
 * Cancellation and the timeout are durable as data: a cancelled call's row says `cancelling`
 * (checked at the start of every replay, and watched while the tool runs), and the deadline is in
 * the call's payload.
 */
import { Cause, Clock, Context, Duration, Effect, Exit, Option, Result, Schedule, Schema } from "effect"
import * as ClusterSchema from "effect/cluster/ClusterSchema"
import * as Activity from "effect/workflow/Activity"
import * as Workflow from "effect/workflow/Workflow"
import type { WorkflowEngine, WorkflowInstance } from "effect/workflow/WorkflowEngine"
import { AsyncRunContext } from "../../AsyncRunContext.ts"
import { pendingKey } from "../../AsyncToolset.ts"
import { FunctionCall, FunctionCallOutput } from "../../ChatContext.ts"
import type { DurableStore } from "../../DurableStore.ts"
import * as FunctionTool from "../../FunctionTool.ts"
import type { Prepared } from "../../internal/toolTable.ts"
import * as Prompts from "../../Prompts.ts"
import type { End } from "./tables.ts"
import { callStatus, decodeCall, isLive, recordEnd, recordFirst, recordPair } from "./tables.ts"

/** A tool as a durable toolset runs it (as the in-memory toolset does). */
export type { Prepared }

/** What the runner side needs of a toolset. */
export interface Definition {
  readonly id: string
  readonly tools: ReadonlyMap<string, Prepared>
  readonly prompts: Prompts.Prompts
  readonly confirmParameter: string
  readonly workflow: CallWorkflow
}

/**
 * What a call's execution starts from. `base` is the call's id in its synthetic ids (the model's
 * call id, or `<id>_run<k>` when that id was used before in the session).
 */
export const Payload = Schema.Struct({
  sessionId: Schema.String,
  base: Schema.String,
  /** The model's call, as stored (`FunctionCall` JSON). */
  call: Schema.String,
  startedAt: Schema.Number,
  /** When the call times out (clock milliseconds), if its tool has a timeout. */
  deadline: Schema.NullOr(Schema.Number)
})

export const makeWorkflow = (toolsetId: string) =>
  Workflow.make(`effect-async-toolset/${toolsetId}`, {
    payload: Payload,
    idempotencyKey: ({ base, sessionId }) => `${sessionId}/${base}`
  })

export type CallWorkflow = ReturnType<typeof makeWorkflow>

// --- ids -----------------------------------------------------------------------------------------

/** The id of the output the model gets for the call (its first update, or its whole result). */
export const firstOutputId = (base: string): string => `fco:${base}:first`

/** The item ids of the pair of step `n` (`_update_<n>`) or of the final result. */
export const pairIds = (base: string, step: number | "final"): readonly [string, string] => [
  `fc:${base}:${step}`,
  `fco:${base}:${step}`
]

/** The synthetic call id of a step's pair. */
export const syntheticCallId = (base: string, step: number | "final"): string =>
  step === "final" ? `${base}_final` : `${base}_update_${step}`

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
  | { readonly _tag: "Exit"; readonly exit: Exit.Exit<unknown, unknown> }
  | { readonly _tag: "TimedOut" }
  | { readonly _tag: "Cancelled" }
  | { readonly _tag: "Invalid"; readonly message: string }

/** The workflow body of a toolset's calls. */
export const body = <S>(definition: Definition, store: DurableStore["Service"], services: Context.Context<S>) =>
(
  payload: typeof Payload.Type,
  executionId: string
): Effect.Effect<void, never, WorkflowEngine | WorkflowInstance> =>
  Effect.gen(function*() {
    const { base, sessionId } = payload
    const status = yield* retrying(callStatus(store.sql, sessionId, base))
    // Ended already (its end was recorded; this is a replay): nothing to do again.
    if (status === undefined || !isLive(status)) return
    const call = decodeCall(payload.call)
    const context = yield* Effect.context<WorkflowEngine | WorkflowInstance>()
    const p = definition.tools.get(call.name)
    const outcome: Outcome = status === "cancelling"
      ? { _tag: "Cancelled" }
      : p === undefined
      ? { _tag: "Invalid", message: `${call.name} is no longer a tool of this agent; the call did not finish.` }
      : yield* runTool(definition, store, payload, call, p, executionId, context).pipe(Effect.provideContext(services))
    yield* Activity.make({
      name: "end",
      execute: store.sql.withTransaction(
        recordEnd(store.sql, sessionId, definition.id, base, (row) => endOf(definition, p, call, base, outcome, row.firstOutput !== null))
      ).pipe(retrying)
    }).annotate(ClusterSchema.WithTransaction, true)
    store.signal(sessionId)
  }).pipe(Effect.annotateLogs({ toolset: definition.id, callId: payload.base }))

/** Runs the tool, raced against its cancellation and its deadline. */
const runTool = (
  definition: Definition,
  store: DurableStore["Service"],
  payload: typeof Payload.Type,
  call: FunctionCall,
  p: Prepared,
  executionId: string,
  context: Context.Context<WorkflowEngine | WorkflowInstance>
): Effect.Effect<Outcome> => {
  const decoded = FunctionTool.decodeArguments(p.visible, call.arguments, { maxLength: Number.MAX_SAFE_INTEGER })
  if (Result.isFailure(decoded)) return Effect.succeed({ _tag: "Invalid", message: decoded.failure.message })
  const { [definition.confirmParameter]: _flag, ...args } = decoded.success as Record<string, unknown>
  const run = DurableRun.of({ executionId, context, steps: new Map() })
  let updates = 0
  const runContext = AsyncRunContext.of({
    functionCall: call,
    toolsetId: definition.id,
    update: (message) => update(definition, store, payload, call, updates++, message, context)
  })
  const handler = Effect.suspend(() => p.tool.handler(p.mode === "confirm" ? args : decoded.success) as Effect.Effect<unknown, unknown>)
    .pipe(
      Effect.provideService(AsyncRunContext, runContext),
      Effect.provideService(DurableRun, run),
      Effect.exit,
      Effect.map((exit): Outcome => ({ _tag: "Exit", exit }))
    )
  const timed: Effect.Effect<Outcome> = payload.deadline === null ? handler : Effect.flatMap(
    Clock.currentTimeMillis,
    (now) =>
      Effect.map(
        Effect.timeoutOption(handler, Duration.millis(Math.max(0, payload.deadline! - now))),
        Option.getOrElse((): Outcome => ({ _tag: "TimedOut" }))
      )
  )
  return Effect.raceFirst(timed, watchCancel(store, payload.sessionId, payload.base))
}

/**
 * Completes once the call's row says it is being cancelled: looked at when a cancel in this process
 * signals it, else every `pollInterval` (a cancel from another process).
 */
const watchCancel = (store: DurableStore["Service"], sessionId: string, base: string): Effect.Effect<Outcome> =>
  Effect.gen(function*() {
    while (true) {
      yield* store.awaitCall(sessionId, base)
      const status = yield* Effect.orElseSucceed(callStatus(store.sql, sessionId, base), () => "running" as const)
      if (status !== "running") return { _tag: "Cancelled" } as const
    }
  })

/** `AsyncRunContext.update` in a durable call: the activity `update/<step>`. */
const update = (
  definition: Definition,
  store: DurableStore["Service"],
  payload: typeof Payload.Type,
  call: FunctionCall,
  step: number,
  message: unknown,
  context: Context.Context<WorkflowEngine | WorkflowInstance>
): Effect.Effect<void> =>
  Effect.suspend(() => {
    const text = typeof message === "string"
      ? Prompts.render(definition.prompts.update, { functionName: call.name, callId: call.callId, message })
      : JSON.stringify(message)
    if (text === undefined) return Effect.die(new Error("AsyncRunContext.update: the value has no JSON form"))
    const raw = typeof message === "string" ? message : text
    const { base, sessionId } = payload
    const record = Effect.flatMap(Clock.currentTimeMillis, (now) => {
      if (step === 0) {
        // The first update is the call's output: the model gets it as the call's answer.
        const output = new FunctionCallOutput({
          id: firstOutputId(base),
          callId: call.callId,
          name: call.name,
          output: text,
          isError: false,
          createdAt: now,
          extra: { [pendingKey]: true }
        })
        return recordFirst(store.sql, sessionId, base, output, raw)
      }
      const items = pair(call, base, step, { output: text, isError: false }, now)
      return recordPair(store.sql, sessionId, definition.id, base, step, items, raw)
    })
    return Activity.make({
      name: `update/${step}`,
      success: Schema.Boolean,
      execute: store.sql.withTransaction(record).pipe(retrying)
    }).annotate(ClusterSchema.WithTransaction, true).pipe(
      Effect.provideContext(context),
      Effect.andThen(Effect.sync(() => store.signal(sessionId)))
    )
  })

const pair = (
  call: FunctionCall,
  base: string,
  step: number | "final",
  out: FunctionTool.Output,
  now: number
): readonly [FunctionCall, FunctionCallOutput] => {
  const callId = syntheticCallId(base, step)
  const [fc, fco] = pairIds(base, step)
  return [
    new FunctionCall({ id: fc, callId, name: call.name, arguments: call.arguments, createdAt: now }),
    new FunctionCallOutput({ id: fco, callId, name: call.name, output: out.output, isError: out.isError, createdAt: now })
  ]
}

/** How the call ended, as the store records it (inside the `end` activity: a defect is logged once). */
const endOf = (
  definition: Definition,
  p: Prepared | undefined,
  call: FunctionCall,
  base: string,
  outcome: Outcome,
  answered: boolean
): Effect.Effect<End> =>
  Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const vars = { functionName: call.name, callId: call.callId }
    let status: End["status"]
    let out: FunctionTool.Output | undefined
    switch (outcome._tag) {
      case "Exit": {
        const encoded = yield* FunctionTool.encodeExit(p!.tool, call.callId, outcome.exit)
        out = Option.getOrUndefined(encoded)
        status = out?.isError === true ? "error" : "done"
        break
      }
      case "TimedOut":
        status = "timed-out"
        out = {
          output: Prompts.render(definition.prompts.timedOut, { ...vars, timeout: Duration.format(p?.timeout ?? Duration.zero) }),
          isError: true
        }
        break
      case "Cancelled":
        status = "cancelled"
        out = { output: Prompts.render(definition.prompts.cancelled, vars), isError: true }
        break
      case "Invalid":
        status = "error"
        out = { output: outcome.message, isError: true }
        break
    }
    if (outcome._tag === "Exit" && Exit.isFailure(outcome.exit) && Cause.hasInterruptsOnly(outcome.exit.cause)) {
      yield* Effect.logWarning("the tool was interrupted; its call ends with an error output")
    }
    return {
      status,
      output: new FunctionCallOutput({
        id: firstOutputId(base),
        callId: call.callId,
        name: call.name,
        output: out?.output ?? "",
        isError: out?.isError ?? false,
        createdAt: now
      }),
      final: answered && out !== undefined ? pair(call, base, "final", out, now) : undefined,
      endedAt: now
    }
  })

/**
 * A store operation retried for a while (a database restarting, a connection dropped); past that,
 * a defect: the engine keeps the call to run again.
 */
const retrying = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, never, R> =>
  effect.pipe(
    Effect.retry({ times: 8, schedule: Schedule.exponential("200 millis") }),
    Effect.orDie
  )
