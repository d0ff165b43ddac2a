/**
 * A toolset whose calls survive the process: each call runs as an effect/workflow execution,
 * keyed by its session and call id, and everything it says (its first update, later updates, its
 * result) is recorded in a SQL store before it reaches the chat. A process that crashes in the
 * middle of a booking starts again, the booking goes on where it was, and the user is told its
 * result exactly once.
 *
 * The same `FunctionTool`s as `AsyncToolset`, the same `AsyncRunContext`, the same rules for the
 * chat (first-update hand-off, numbered `_update_<n>` and `_final` pairs, one idle-gated reply for
 * everything pending, duplicate modes, cancellation, timeouts), and the same value shape
 * (`AsyncToolset.AsyncToolset`), so `AiAgent.addToolset` takes it. What differs:
 *
 * - A call's body replays from the top after a restart. Steps that must not run twice (charge the
 *   card) are activities: `DurableToolset.activity("charge_card", effect)`. Their result is stored
 *   and replayed; the rest of the tool (waiting, polling the airline) may run again.
 * - Cancelling is recorded (a call cancelled before a crash stays cancelled), and a timeout is a
 *   deadline in the call's record (a call past it after a restart times out at once).
 * - Closing the toolset does not stop its calls: they go on in the workflow engine and are found
 *   again by the next `make` for the session. `drain` cancels them.
 *
 * Three parts: `define` (the tools and options), `layer` (registers the calls' workflow with the
 * engine: on every runner), and `make` (the toolset of one session, in the process of its agent).
 *
 * @since 0.1.0
 */
import { Clock, Deferred, Duration, Effect, Exit, Layer, PubSub, Result, Schedule, Schema, Stream } from "effect"
import type { Scope } from "effect"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import * as Activity from "effect/workflow/Activity"
import { AgentSession } from "./AgentSession.ts"
import { AsyncRunContext } from "./AsyncRunContext.ts"
import type { AsyncToolset, Options as AsyncToolsetOptions } from "./AsyncToolset.ts"
import { FunctionCallOutput, functionCallOutput } from "./ChatContext.ts"
import type { FunctionCall } from "./ChatContext.ts"
import { DurableChat } from "./DurableChat.ts"
import { DurableStore } from "./DurableStore.ts"
import * as Calls from "./durable/internal/calls.ts"
import * as Coordinator from "./durable/internal/coordinator.ts"
import { body, DurableRun, makeWorkflow } from "./durable/internal/run.ts"
import type { CallWorkflow, Definition } from "./durable/internal/run.ts"
import * as FunctionTool from "./FunctionTool.ts"
import { decide } from "./internal/admission.ts"
import * as ToolTable from "./internal/toolTable.ts"
import { clip, confirmParameter } from "./internal/toolTable.ts"
import * as Prompts from "./Prompts.ts"
import { ToolError } from "./ToolError.ts"
import type { ToolsetEvent } from "./ToolsetEvent.ts"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<Tools extends ReadonlyArray<FunctionTool.Any>>
  extends Omit<AsyncToolsetOptions<Tools>, "id" | "replyTimeout" | "spanPerCall">
{
  /**
   * Names the toolset: its management tools, and its calls' workflow (`effect-async-toolset/<id>`):
   * keep it stable across deploys. `[A-Za-z0-9_-]`, at most 40.
   */
  readonly id: string
  /** How long a reply request (with its retries) may take before it is given up (default 2 minutes). */
  readonly replyTimeout?: Duration.Input | undefined
}

const TypeId = "~effect-async-toolset/DurableToolset" as const

/**
 * A durable toolset's definition: its tools and options, and the workflow its calls run as.
 *
 * @since 0.1.0
 * @category models
 */
export interface DurableToolset<Tools extends ReadonlyArray<FunctionTool.Any>> {
  readonly [TypeId]: typeof TypeId
  readonly id: string
  readonly tools: Tools
  readonly options: Options<Tools>
  /** The workflow each call runs as. */
  readonly workflow: CallWorkflow
  /** @internal */
  readonly definition: Definition
  /** @internal */
  readonly names: { readonly getRunningTasks: string; readonly cancelTask: string }
}

const idPattern = /^[A-Za-z0-9_-]{1,40}$/

/**
 * Defines a durable toolset. Throws if the options are not valid (a bad id, two tools of one name).
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
 * import { DurableToolset } from "effect-async-toolset/durable"
 *
 * const bookFlight = FunctionTool.make("book_flight", {
 *   description: "Book a flight",
 *   parameters: Schema.Struct({ to: Schema.String })
 * }, ({ to }) =>
 *   Effect.gen(function*() {
 *     yield* AsyncRunContext.update(`Looking up flights to ${to}`)
 *     yield* Effect.sleep("5 seconds") // may run again after a restart
 *     const confirmation = yield* DurableToolset.activity("charge_card", Effect.succeed("FL-847293")) // runs once
 *     return { confirmation }
 *   }))
 *
 * export const travel = DurableToolset.define({ id: "travel", tools: [bookFlight] })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const define = <const Tools extends ReadonlyArray<FunctionTool.Any>>(options: Options<Tools>): DurableToolset<Tools> => {
  if (!idPattern.test(options.id)) throw new Error(`DurableToolset.define: id "${options.id}" must match ${idPattern}`)
  const prompts: Prompts.Prompts = { ...Prompts.defaults, ...options.prompts }
  const names = { getRunningTasks: `get_running_tasks_${options.id}`, cancelTask: `cancel_task_${options.id}` }
  const prepared = ToolTable.prepare("DurableToolset.define", options, prompts, names)
  if (Result.isFailure(prepared)) throw prepared.failure
  const tools = prepared.success
  const workflow = makeWorkflow(options.id)
  return {
    [TypeId]: TypeId,
    id: options.id,
    tools: options.tools,
    options,
    workflow,
    definition: { id: options.id, tools, prompts, confirmParameter, workflow },
    names
  }
}

/**
 * Registers the toolset's workflow with the engine, so that this process runs its calls (those it
 * starts, and those of a process that ended). Every runner builds it; it needs the services the
 * tools need.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = <Tools extends ReadonlyArray<FunctionTool.Any>>(
  toolset: DurableToolset<Tools>
): Layer.Layer<never, never, WorkflowEngine | DurableStore | Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext>> =>
  Layer.unwrap(Effect.gen(function*() {
    const store = yield* DurableStore
    // The tools' services, for their handlers (which run in the engine's fibers).
    const services = yield* Effect.context<Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext>>()
    return toolset.workflow.toLayer(body(toolset.definition, store, services))
  }))

/**
 * The toolset of the current session (`DurableChat`), for its agent: the same value as
 * `AsyncToolset.make` gives. It picks up the session's calls still running and the results still
 * owed a reply. Closing its scope stops following them here; the calls go on.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*<Tools extends ReadonlyArray<FunctionTool.Any>>(
  toolset: DurableToolset<Tools>
): Effect.fn.Return<AsyncToolset, never, Scope.Scope | AgentSession | DurableChat | DurableStore | WorkflowEngine> {
  const options = toolset.options
  const session = yield* AgentSession
  const chat = yield* DurableChat
  const store = yield* DurableStore
  const engine = yield* Effect.context<WorkflowEngine>()
  const clock = yield* Clock.clockWith(Effect.succeed)
  const pubsub = yield* PubSub.unbounded<ToolsetEvent>()
  let subscribers = 0
  const sessionRetry = options.sessionRetry ?? Schedule.exponential("100 millis").pipe(Schedule.upTo({ times: 3 }))
  const owner: Coordinator.Owner = {
    id: toolset.id,
    policy: {
      prompts: toolset.definition.prompts,
      whenAlreadyAnswered: options.whenAlreadyAnswered ?? "ask",
      sessionRetry,
      replyTimeout: Duration.fromInputUnsafe(options.replyTimeout ?? "2 minutes")
    },
    pending: 0,
    closed: false,
    emit: (event) => {
      if (subscribers > 0) PubSub.publishUnsafe(pubsub, event)
    },
    settled: () => Calls.notifyIdle(state)
  }
  const state: Calls.State = {
    definition: toolset.definition,
    session,
    chat,
    store,
    engine,
    clock,
    sessionRetry,
    live: new Set(),
    byBase: new Map(),
    byItem: new Map(),
    owner,
    coordinator: undefined,
    seq: 0,
    handedOver: new Set(),
    idleWaiters: new Set(),
    closed: false,
    emit: (event) => {
      if (subscribers > 0) PubSub.publishUnsafe(pubsub, event())
    }
  }
  state.coordinator = yield* Coordinator.acquire(session, store, chat, owner)
  yield* Effect.orDie(Calls.load(state))
  const watcher = yield* Effect.forkDetach(Calls.watch(state), { startImmediately: true })

  const closed = Deferred.makeUnsafe<void>()
  let closeStarted = false
  const close = Effect.uninterruptible(Effect.suspend(() => {
    if (closeStarted) return Deferred.await(closed)
    closeStarted = true
    state.closed = true
    // Callers still waiting hear that the toolset closed; their calls go on in the store.
    for (const entry of state.live) {
      if (entry.firstSettled) continue
      entry.firstSettled = true
      Deferred.doneUnsafe(entry.first, Exit.succeed(closedOutput(entry.call, clock)))
    }
    Calls.notifyIdle(state)
    return Effect.andThen(
      Effect.andThen(Calls.stopWatcher(watcher), Coordinator.release(state.coordinator!, owner)),
      Effect.andThen(PubSub.shutdown(pubsub), Deferred.done(closed, Exit.void))
    )
  }))
  yield* Effect.addFinalizer(() => close)

  const management = managementTools(state, toolset.names)
  const maxArgumentsLength = options.maxArgumentsLength ?? FunctionTool.defaultMaxArgumentsLength
  const events = Stream.unwrap(
    Effect.as(
      Effect.acquireRelease(Effect.sync(() => subscribers++), () => Effect.sync(() => subscribers--)),
      Stream.fromPubSub(pubsub)
    )
  )
  return {
    id: toolset.id,
    tools: [...Array.from(toolset.definition.tools.values(), (p) => p.visible), management.getRunningTasks, management.cancelTask],
    execute: (call) => execute(state, toolset.names, management, maxArgumentsLength, call),
    cancel: (callId) => Calls.cancel(state, callId),
    runningTasks: Effect.sync(() => Calls.runningTasks(state)),
    awaitIdle: Calls.awaitIdle(state),
    drain: Effect.suspend(() =>
      Effect.andThen(
        Effect.forEach(Array.from(state.live).filter((entry) => entry.cancellable && entry.status !== "cancelling"), (entry) =>
          Calls.cancelEntry(state, entry), { discard: true }),
        Calls.awaitNoCalls(state)
      )
    ),
    close,
    events
  } satisfies AsyncToolset
})

const closedOutput = (call: FunctionCall, clock: Clock.Clock): FunctionCallOutput =>
  new FunctionCallOutput({
    id: `fco:${call.id}:closed`,
    callId: call.callId,
    name: call.name,
    output: `${call.name} goes on in the background; this conversation was closed before it answered. Its result will be added when the conversation resumes.`,
    isError: false,
    createdAt: clock.currentTimeMillisUnsafe()
  })

// --- execute -------------------------------------------------------------------------------------

const reject = (call: FunctionCall, text: string): Effect.Effect<FunctionCallOutput> =>
  functionCallOutput({ callId: call.callId, name: call.name, output: text, isError: true })

/**
 * Runs one model call: a management tool at once; a tool of the toolset once its arguments are
 * decoded and the duplicate check lets it run. Yields the output the model gets now.
 */
const execute = (
  state: Calls.State,
  names: { readonly getRunningTasks: string; readonly cancelTask: string },
  management: ReturnType<typeof managementTools>,
  maxArgumentsLength: number,
  call: FunctionCall
): Effect.Effect<FunctionCallOutput> =>
  // From the registration of a call to its start nothing may interrupt: a call registered but not
  // started would hold its duplicate key for good. Waiting for its output is interruptible.
  Effect.uninterruptibleMask((restore) =>
    Effect.suspend(() => {
      const reading = ToolTable.read(state.definition.tools, names, call, state.closed, maxArgumentsLength)
      switch (reading._tag) {
        case "GetRunningTasks":
          return restore(FunctionTool.execute(management.getRunningTasks, call))
        case "CancelTask":
          return restore(FunctionTool.execute(management.cancelTask, call))
        case "Refused":
          return reject(call, reading.text)
      }
      const { args, confirmed, prepared: p } = reading
      // The call id keys the call's record in the store: a database takes neither NUL nor any length.
      if (call.callId.length > maxCallIdLength || call.callId.includes("\u0000")) {
        return reject(
          call,
          `${call.name} was not run: its call id must be at most ${maxCallIdLength} characters, without NUL characters. Call it again with a shorter id.`
        )
      }
      // The same model call started again: it is the same call (it runs once).
      const same = state.byItem.get(call.id)
      if (same !== undefined) return restore(Calls.awaitFirst(same))
      if (Calls.byCallId(state, call.callId) !== undefined) return reject(call, ToolTable.inUse(call))
      // The duplicate check and the registration are one synchronous step (D5).
      const key = p.scope === "name" ? call.name : `${call.name}\u001f${p.tool.canonicalArgs(args)}`
      const active = p.mode === "allow" ? [] : Calls.activeOfKey(state, key)
      const decision = decide(p.mode, confirmed, active)
      if (decision._tag === "Reject") {
        const runningCalls = describeRunning(decision.running)
        const vars = { functionName: call.name, runningCalls, cancelTool: names.cancelTask }
        switch (decision.reason) {
          case "duplicate":
            return reject(call, Prompts.render(state.definition.prompts.duplicateReject, vars))
          case "unconfirmed":
            return reject(call, Prompts.render(state.definition.prompts.duplicateConfirm, { ...vars, confirmParameter }))
          case "not-cancellable":
            return reject(call, `${call.name} was not started: it would replace running calls that cannot be cancelled:\n${runningCalls}`)
        }
      }
      // Under `replace` two calls of a key never run at once: the new one waits for every call of
      // the key to end, those still stopping from earlier cancels included (D4).
      const predecessors = decision._tag === "Replace" ? Calls.liveOfKey(state, key) : []
      const entry = Calls.newEntry(call, p, key, predecessors.length > 0 ? "waiting" : "starting", state.clock.currentTimeMillisUnsafe())
      Calls.register(state, entry)
      const cancels = decision._tag === "Replace" ? decision.replaced.map((r) => Calls.cancelEntry(state, r)) : []
      return Effect.andThen(
        Effect.andThen(Effect.all(cancels, { discard: true }), Calls.start(state, entry, predecessors)),
        restore(Calls.awaitFirst(entry))
      )
    })
  )

/** The longest call id a durable call takes (its record is keyed by it). */
const maxCallIdLength = 200

const describeRunning = (entries: ReadonlyArray<Calls.Entry>) =>
  entries.map((e) => `- call_id ${clip(e.call.callId)}, arguments ${clip(e.call.arguments)}`).join("\n")

// --- management tools ----------------------------------------------------------------------------

/** `get_running_tasks_<id>` and `cancel_task_<id>`, over the session's live calls (E1). */
const managementTools = (state: Calls.State, names: ToolTable.Names) =>
  ToolTable.managementTools(names, {
    id: state.definition.id,
    running: () => Calls.runningTasks(state),
    cancel: (callId) => Calls.cancel(state, callId),
    nameOf: (callId) => Calls.byCallId(state, callId)?.call.name
  })


// --- steps that run once -------------------------------------------------------------------------

/**
 * What an activity's effect is given: a key that is the same every time this step of this call
 * runs (after a restart too), for an outside service that deduplicates requests (a payment
 * provider's `Idempotency-Key`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Step {
  readonly idempotencyKey: string
}

/**
 * A step of a tool that must not run again once it has finished: in a durable call it is an
 * effect/workflow activity, whose result is stored and given back when the call replays after a
 * restart. In an in-memory `AsyncToolset` it simply runs.
 *
 * Steps are named by `name` and the order the tool takes them in (a second `charge_card` in the
 * same call is `charge_card/2`), so a tool must take its steps in the same order each time it
 * runs. A step that was running when the process died runs again: give outside services its
 * `idempotencyKey`. The result is stored as JSON (give `success` for other values); a failure is
 * stored with `error` (default: `ToolError`; another failure becomes a defect).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { DurableToolset } from "effect-async-toolset/durable"
 *
 * declare const chargeCard: (amount: number, idempotencyKey: string) => Effect.Effect<string>
 *
 * const charge = DurableToolset.activity("charge_card", ({ idempotencyKey }) => chargeCard(420, idempotencyKey))
 * ```
 *
 * @since 0.1.0
 * @category steps
 */
export const activity = <A, E = never, R = never>(
  name: string,
  effect: Effect.Effect<A, E, R> | ((step: Step) => Effect.Effect<A, E, R>),
  ...[options]: ActivityOptionsArgs<A, E>
): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.serviceOption(DurableRun), (found) => {
    const run = (step: Step) => typeof effect === "function" ? effect(step) : effect
    if (found._tag === "None") {
      return Effect.flatMap(
        Effect.serviceOption(AsyncRunContext),
        (ctx) => run({ idempotencyKey: ctx._tag === "Some" ? `${ctx.value.functionCall.callId}/${name}` : name })
      )
    }
    const durable = found.value
    const n = (durable.steps.get(name) ?? 0) + 1
    durable.steps.set(name, n)
    const unique = `step/${name}${n === 1 ? "" : `/${n}`}`
    const success: Schema.Codec<A, unknown> = options?.success ?? voidSchema
    const error: Schema.Codec<E, unknown> = options?.error ?? toolErrorSchema
    return Effect.flatMap(Effect.provideContext(Activity.idempotencyKey(unique), durable.context), (idempotencyKey) =>
      Activity.make({ name: unique, success, error, execute: run({ idempotencyKey }) }).pipe(
        Effect.provideContext(durable.context)
      ))
  })

/**
 * How an activity's result and failure are stored. `success` is needed unless the step returns
 * nothing; `error` unless it cannot fail or fails only with `ToolError`.
 *
 * @since 0.1.0
 * @category models
 */
export interface ActivityOptions<A, E> {
  readonly success?: Schema.Codec<A, unknown> | undefined
  readonly error?: Schema.Codec<E, unknown> | undefined
}

/** The options argument of `activity`: required where a schema is needed. */
type ActivityOptionsArgs<A, E> = [A] extends [void] ? [E] extends [ToolError] ? [options?: ActivityOptions<A, E>]
  : [options: ActivityOptions<A, E> & { readonly error: Schema.Codec<E, unknown> }]
  : [E] extends [ToolError] ? [options: ActivityOptions<A, E> & { readonly success: Schema.Codec<A, unknown> }]
  : [options: { readonly success: Schema.Codec<A, unknown>; readonly error: Schema.Codec<E, unknown> }]

// Used only where the argument types say they fit: `A` is void, `E` is `ToolError` or never.
const voidSchema: Schema.Codec<any, unknown> = Schema.Void
const toolErrorSchema: Schema.Codec<any, unknown> = ToolError
