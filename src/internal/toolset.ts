/**
 * A toolset, whatever its store: the composition of its tools (`toolTable.ts`), admission
 * (`admission.ts`), its calls' lifecycle (`callLifecycle.ts`), how a call runs (`callRun.ts`, over
 * the toolset's `CallStore`), how its calls stop (`stopping.ts`) and the session's reply coordinator
 * (`coordinator/`). The in-memory toolset (`AsyncToolset.make`) and the durable one
 * (`DurableToolset.make`) are this, over two stores: one call lifecycle, one admission, one reply
 * coordinator.
 */
import { Cause, Clock, Context, Deferred, Duration, Effect, Exit, Fiber, Metric, PubSub, Result, Schedule, Scope, Stream } from "effect"
import { AgentSession } from "../AgentSession.ts"
import type { AsyncRunContext } from "../AsyncRunContext.ts"
import type { AsyncToolset, Options, RunningTask } from "../AsyncToolset.ts"
import type { ChatItem, FunctionCall, FunctionCallOutput } from "../ChatContext.ts"
import * as FunctionTool from "../FunctionTool.ts"
import * as Prompts from "../Prompts.ts"
import type { Outcome, ToolsetEvent } from "../ToolsetEvent.ts"
import { decide } from "./admission.ts"
import * as Lifecycle from "./callLifecycle.ts"
import * as CallRun from "./callRun.ts"
import type { Call, CallStore } from "./callRun.ts"
import * as Delivery from "./delivery.ts"
import * as Coordinator from "./coordinator/index.ts"
import { cancel, closing, drain, waitFor } from "./stopping.ts"
import * as ToolTable from "./toolTable.ts"
import type { Names, Prepared } from "./toolTable.ts"

/** What makes a toolset the kind it is. */
export interface Setup {
  /** The constructor, as errors name it (`AsyncToolset.make`). */
  readonly who: string
  readonly store: CallStore
  /** What the store does around replies (the durable toolset keeps its items owed in its store). */
  readonly hooks: Coordinator.ReplyHooks | undefined
  /** Why the store cannot take a call id (a text for the model), if it cannot. */
  readonly refuseCallId?: ((call: FunctionCall) => string | undefined) | undefined
}

/** A toolset as its store sees it: the value users get, and what the operations share. */
export interface Built {
  readonly toolset: AsyncToolset
  readonly state: State
}

function runningCallsOptions(attributes?: Metric.Metric.AttributeSet) {
  return { description: "Background tool calls running now", ...(attributes === undefined ? {} : { attributes }) }
}

function callsEndedOptions(attributes?: Metric.Metric.AttributeSet) {
  return {
    description: "Background tool calls ended, by outcome",
    incremental: true,
    ...(attributes === undefined ? {} : { attributes })
  }
}

/** Calls running now, per toolset (`toolset` attribute). */
export const runningCalls = Metric.gauge("async_toolset_running_calls", runningCallsOptions())

/** Calls ended, per toolset, tool and outcome (`toolset`, `tool`, `outcome` attributes). */
export const callsEnded = Metric.counter("async_toolset_calls_total", callsEndedOptions())

const idPattern = /^[A-Za-z0-9_-]{1,40}$/

/** Whether a toolset id is valid (it names the management tools, and a durable toolset's workflow). */
export const checkId = (who: string, id: string): Error | undefined =>
  idPattern.test(id) ? undefined : new Error(`${who}: id "${id}" must match ${idPattern}`)

/** Builds a toolset in the current scope, over `setup`'s store; closing the scope closes it. */
export const make = Effect.fnUntraced(function*<const Tools extends ReadonlyArray<FunctionTool.Any>>(
  options: Options<Tools>,
  setup: Setup
): Effect.fn.Return<
  Built,
  never,
  Scope.Scope | AgentSession | Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext>
> {
  const invalid = checkId(setup.who, options.id)
  if (invalid !== undefined) return yield* Effect.die(invalid)
  const id = options.id
  const session = yield* AgentSession
  const services = yield* Effect.context<Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext>>()
  const clock = yield* Clock.clockWith(Effect.succeed)
  const prompts: Prompts.Prompts = { ...Prompts.defaults, ...options.prompts }
  const maxArgumentsLength = options.maxArgumentsLength ?? FunctionTool.defaultMaxArgumentsLength
  const names = { getRunningTasks: `get_running_tasks_${id}`, cancelTask: `cancel_task_${id}` }
  const prepared = ToolTable.prepare(setup.who, options, prompts, names)
  if (Result.isFailure(prepared)) return yield* Effect.die(prepared.failure)
  const tools = prepared.success

  // --- events and metrics ------------------------------------------------------------------------
  const pubsub = yield* PubSub.unbounded<ToolsetEvent>()
  let subscribers = 0
  /** Publishes an event; the event is built only when someone listens. */
  const emit = (event: () => ToolsetEvent): void => {
    if (subscribers > 0) PubSub.publishUnsafe(pubsub, event())
  }
  const events = Stream.unwrap(
    Effect.as(
      Effect.acquireRelease(Effect.sync(() => subscribers++), () => Effect.sync(() => subscribers--)),
      Stream.fromPubSub(pubsub)
    )
  )
  // Each series is a metric of its own with its attributes built in (the same series as
  // `runningCalls` / `callsEnded` with those attributes): an update merges nothing.
  const runningGauge = Metric.gauge("async_toolset_running_calls", runningCallsOptions({ toolset: id }))
  const endedCounters = new Map<string, Metric.Metric<number, unknown>>()
  const countEnded = (tool: string, outcome: Outcome) => {
    const key = `${tool}\u0000${outcome}`
    let counter = endedCounters.get(key)
    if (counter === undefined) {
      counter = Metric.counter("async_toolset_calls_total", callsEndedOptions({ toolset: id, tool, outcome }))
      endedCounters.set(key, counter)
    }
    counter.updateUnsafe(1, services)
  }

  // --- the calls and the session's reply coordinator ----------------------------------------------
  const registry = Lifecycle.makeRegistry<Prepared>()
  const owner: Coordinator.Owner = {
    id,
    hooks: setup.hooks,
    policy: {
      prompts,
      whenAlreadyAnswered: options.whenAlreadyAnswered ?? "ask",
      sessionRetry: options.sessionRetry ?? Schedule.exponential("100 millis").pipe(Schedule.upTo({ times: 3 })),
      replyTimeout: Duration.fromInputUnsafe(options.replyTimeout ?? "2 minutes")
    },
    pending: 0,
    closed: false,
    emit: (event) => emit(() => event),
    listening: () => subscribers > 0,
    settled: () => {
      Lifecycle.notify(registry)
      Lifecycle.flush(registry)
    },
    closing: Deferred.makeUnsafe<void>()
  }

  const store = setup.store
  const toolset: CallRun.Toolset = {
    id,
    session,
    services,
    clock,
    prompts,
    spanPerCall: options.spanPerCall ?? true,
    registry,
    owner,
    coordinator: yield* Coordinator.acquire(session, owner),
    store,
    timers: new Set(),
    emit,
    countRunning: (delta) => runningGauge.modifyUnsafe(delta, services),
    countEnded,
    cancelled: (c) => c.stopCause === "closed" ? store.closedOutput(toolset, c) : CallRun.cancelledOutput(toolset, c),
    cache: CallRun.emptyCache(services)
  }
  // Closing happens once, whoever asks first (`close`, or the scope the toolset was made in); every
  // asker returns only once it is over.
  const closed = Deferred.makeUnsafe<void>()
  let closeStarted = false
  const close = Effect.uninterruptibleMask((restore) => {
    if (closeStarted) return restore(Deferred.await(closed))
    closeStarted = true
    return Effect.ensuring(
      Effect.andThen(closing(toolset), PubSub.shutdown(pubsub)),
      Effect.sync(() => Deferred.doneUnsafe(closed, Exit.void))
    )
  })
  yield* Effect.addFinalizer(() => close)
  const state: State = {
    toolset,
    tools,
    names,
    maxArgumentsLength,
    management: management(toolset, names),
    refuseCallId: setup.refuseCallId
  }
  return {
    state,
    toolset: {
      id,
      tools: [...Array.from(tools.values(), (p) => p.visible), state.management.getRunningTasks, state.management.cancelTask],
      execute: (call) => execute(state, call),
      cancel: (callId) => cancel(toolset, callId),
      runningTasks: Effect.sync(() => runningTasks(registry)),
      awaitIdle: waitFor(registry, () => registry.live.size === 0 && owner.pending === 0),
      drain: Effect.suspend(() => drain(toolset)),
      close,
      events
    }
  }
})

/** What the operations of one toolset need. */
export interface State {
  readonly toolset: CallRun.Toolset
  readonly tools: ReadonlyMap<string, Prepared>
  readonly names: Names
  readonly maxArgumentsLength: number
  readonly management: ReturnType<typeof ToolTable.managementTools>
  readonly refuseCallId: ((call: FunctionCall) => string | undefined) | undefined
}

// --- execute -------------------------------------------------------------------------------------

const reject = (toolset: CallRun.Toolset, call: FunctionCall, text: string): Effect.Effect<FunctionCallOutput> =>
  Effect.succeed(CallRun.output(toolset, call.callId, call.name, text, true))

/**
 * Runs one model call: a management tool at once; a tool of the toolset once its arguments are
 * decoded and admission lets it run.
 */
const execute = (state: State, call: FunctionCall): Effect.Effect<FunctionCallOutput> => {
  const ticket: Ticket = { call: undefined }
  // A caller interrupted once its call is admitted (while it waits for the first output, or just
  // as that output is handed over) does not get it: it abandons the call, which is withdrawn (B9).
  // `onExitPrimitive`: the finalizer is synchronous and returns no effect, which saves the steps
  // `onExit` spends running one. It runs uninterruptibly (`false`), as `onExit`'s do: with an
  // interruptible one, a caller interrupted during the tool's inline run left its call running
  // (test/AsyncToolset/callerInterrupted.test.ts).
  return Effect.onExitPrimitive(admitAndAwait(state, call, ticket), (exit) => {
    if (ticket.call !== undefined && Exit.isFailure(exit) && Cause.hasInterrupts(exit.cause)) {
      CallRun.abandon(state.toolset, ticket.call)
    }
    return undefined
  }, false)
}

/** What `execute` admitted, once it did. */
interface Ticket {
  call: Call | undefined
}

const admitAndAwait = (state: State, call: FunctionCall, ticket: Ticket): Effect.Effect<FunctionCallOutput> =>
  // Decoding, the admission and the launch are one synchronous step: nothing can interrupt the
  // caller in between. From the admission on, whatever interrupts it abandons the call (above).
  Effect.suspend(() => {
    // This runs on the caller's fiber: its context is what the call's fiber inherits.
    const caller = Fiber.getCurrent()!
    const { management, names, toolset } = state
    // The model's id is the chat's from now on, whatever the toolset answers (a management tool, bad
    // input and a refusal put their output under it too): no synthetic id of another call may take it (B7).
    Coordinator.noteCallId(toolset.session, call.callId)
    const reading = ToolTable.read(state.tools, names, call, toolset.registry.closed, state.maxArgumentsLength)
    switch (reading._tag) {
      case "GetRunningTasks":
        return FunctionTool.execute(management.getRunningTasks, call)
      case "CancelTask":
        return FunctionTool.execute(management.cancelTask, call)
      case "Refused":
        return reject(toolset, call, reading.text)
    }
    const holder = toolset.registry.byId.get(call.callId)
    if (holder !== undefined) {
      // The same model call executed again (an agent runtime retrying a turn) is that call: it
      // runs once, and this caller gets its output too. Another call with its id is refused.
      return holder.functionCall.id === call.id ? CallRun.awaitFirst(holder, caller) : reject(toolset, call, ToolTable.inUse(call))
    }
    const refusal = state.refuseCallId?.(call)
    if (refusal !== undefined) return reject(toolset, call, refusal)
    const { args, confirmed, prepared: p } = reading
    return admit(state, call, p, args, confirmed, caller, ticket)
  })

/**
 * The duplicate check and the registration of the new call, in one synchronous step (D5): no
 * other fiber runs between them, so two identical calls at the same instant cannot both pass.
 */
const admit = (
  state: State,
  call: FunctionCall,
  p: Prepared,
  args: unknown,
  confirmed: boolean,
  caller: Fiber.Fiber<unknown, unknown>,
  ticket: Ticket
): Effect.Effect<FunctionCallOutput> => {
  const { toolset } = state
  const { prompts, registry } = toolset
  // `allow` never looks at what runs, so its calls need no duplicate key (and no index by key).
  const key = p.mode === "allow"
    ? undefined
    : p.scope === "name"
    ? call.name
    : `${call.name}:${p.tool.canonicalArgs(args)}` // a tool name has no ":"
  const decision = decide(p.mode, confirmed, key === undefined ? noneRunning : Lifecycle.activeOfKey(registry, key))
  if (decision._tag === "Reject") {
    const runningCalls = describeRunning(decision.running)
    const vars = { functionName: call.name, runningCalls, cancelTool: state.names.cancelTask }
    switch (decision.reason) {
      case "duplicate":
        return reject(toolset, call, Prompts.render(prompts.duplicateReject, vars))
      case "unconfirmed":
        return reject(toolset, call, Prompts.render(prompts.duplicateConfirm, { ...vars, confirmParameter: ToolTable.confirmParameter }))
      case "not-cancellable":
        return reject(
          toolset,
          call,
          `${call.name} was not started: it would replace running calls that cannot be cancelled:\n${runningCalls}`
        )
    }
  }
  const c = Lifecycle.makeCall(call, p, key, p.cancellable, toolset.clock.currentTimeMillisUnsafe())
  ticket.call = c
  if (decision._tag === "Replace") {
    for (const r of decision.replaced) Lifecycle.stop(registry, r, "replaced", toolset.cancelled)
  }
  // Under `replace` two calls of a key never run at once: the new one waits for every call of the
  // key to stop, those still stopping from earlier cancels, timeouts or replacements included (D4).
  Lifecycle.register(registry, c, p.mode === "replace" && key !== undefined ? registry.byKey.get(key) ?? [] : [])
  Lifecycle.flush(registry)
  // (The first output goes back with run-loop steps to spare: B9, see `CallRun.awaitFirst`.)
  return CallRun.launch(toolset, c, args, caller.context, caller)
}

const noneRunning: ReadonlyArray<Call> = []

const describeRunning = (calls: Iterable<Call>) =>
  Array.from(calls, (c) => `- call_id ${ToolTable.clip(c.functionCall.callId)}, arguments ${ToolTable.clip(c.functionCall.arguments)}`)
    .join("\n")

// --- running tasks -------------------------------------------------------------------------------

/** The calls as `runningTasks` and `get_running_tasks` list them. */
const runningTasks = (registry: Lifecycle.Registry<Prepared>): ReadonlyArray<RunningTask> => {
  const tasks: Array<RunningTask> = []
  for (const c of registry.live) {
    if (c.status === "finishing" || c.status === "done") continue
    const stopping = c.status === "stopping"
    tasks.push({
      callId: c.functionCall.callId,
      name: c.functionCall.name,
      arguments: c.functionCall.arguments,
      status: stopping ? "cancelling" : "running",
      cancellable: !stopping && c.cancellable,
      startedAt: c.startedAt
    })
  }
  return tasks
}

// --- management tools ----------------------------------------------------------------------------

/** `get_running_tasks_<id>` and `cancel_task_<id>`: what the model uses to see and stop calls (E1). */
const management = (toolset: CallRun.Toolset, names: Names) =>
  ToolTable.managementTools(names, {
    id: toolset.id,
    running: () => runningTasks(toolset.registry),
    cancel: (callId) => cancel(toolset, callId),
    nameOf: (callId) => toolset.registry.byId.get(callId)?.functionCall.name
  })

// --- calls and items a store brings back -----------------------------------------------------------

/** A call recorded before this toolset was made (by a process that ended), still live. */
export interface Adopted {
  readonly functionCall: FunctionCall
  /** Its base in synthetic ids (`<callId>` or `<callId>_run<k>`). */
  readonly base: string
  readonly key: string | undefined
  readonly cancellable: boolean
  readonly startedAt: number
  readonly status: "waiting" | "running" | "stopping"
  readonly stopCause: Lifecycle.StopCause | undefined
  /** The calls it waits for (`waiting`), by base. */
  readonly after: ReadonlyArray<string>
  /** The output the model got for it, if it got one. */
  readonly answered: boolean
  /** When it times out (clock milliseconds), if it has a timeout and runs. */
  readonly deadline: number | undefined
}

/**
 * Takes up a live call of the store: it is registered as if admitted now (nobody waits for its
 * first output), its start is told, and its fiber follows it. A call asked to stop before is
 * stopped again (its fiber waits until it has).
 */
export const adopt = (
  state: State,
  a: Adopted,
  caller: Context.Context<never>,
  made: (c: Call) => void
): Call => {
  const { toolset } = state
  const { registry } = toolset
  const p = state.tools.get(a.functionCall.name) ?? missingTool(a.functionCall.name)
  const c = Lifecycle.makeCall(a.functionCall, p, a.key, a.cancellable, a.startedAt)
  c.base = a.base
  Coordinator.noteBase(toolset.session, a.base)
  Coordinator.noteCallId(toolset.session, a.functionCall.callId)
  c.deadline = a.deadline
  if (a.answered) c.firstSettled = true
  const predecessors: Array<Call> = []
  for (const other of registry.live) if (other.base !== undefined && a.after.includes(other.base)) predecessors.push(other)
  Lifecycle.register(registry, c, a.status === "waiting" ? predecessors : [])
  Lifecycle.flush(registry)
  made(c)
  Effect.runFork(Effect.ignore(CallRun.launch(toolset, c, undefined, caller)))
  if (a.status === "stopping") {
    Lifecycle.stop(registry, c, a.stopCause ?? "cancelled", () => undefined)
    Lifecycle.flush(registry)
  }
  return c
}

/** A tool no longer in the toolset (a call recorded before a deploy removed it): its execution ends it. */
const missingTool = (name: string): Prepared => ({
  tool: FunctionTool.make(name, { description: name }, () => Effect.die(new Error(`${name} is no longer a tool`))),
  visible: FunctionTool.make(name, { description: name }, () => Effect.die(new Error(`${name} is no longer a tool`))),
  mode: "allow",
  scope: "name",
  cancellable: true,
  timeout: undefined
})

/**
 * An item in the chat, owed a reply (recorded by a store before this toolset was made): handed to
 * the coordinator. `inserted` false: its insertion into the chat failed (the coordinator retries it).
 */
export const owe = (state: State, callId: string, items: ReadonlyArray<ChatItem>, insertedAt: number, inserted = true): void =>
  Delivery.owe(state.toolset, callId, items, insertedAt, inserted)
