/**
 * Running one call, whatever its store: its fiber (made with its context set once, at admission),
 * its turn (a replacing call waits for the calls it replaces), its first output, the delivery of
 * its later items (`delivery.ts`), its end, its timeout.
 *
 * Top-level functions over `Toolset`, the data a toolset's calls share, and `Call`, one call's
 * lifecycle (`callLifecycle.ts`). Every state change goes through a lifecycle transition; the
 * functions here add what a change means for the model and the chat. What differs between the
 * in-memory and the durable toolset is the toolset's `CallStore`: where the call's body runs and
 * where what it says is recorded first (`callStore.ts`, `src/durable/internal/store.ts`).
 */
import { Cause, Context, Deferred, Duration, Effect, Exit, References, Scope, Tracer } from "effect"
import type { Clock, Fiber } from "effect"
import type { AgentSession } from "../AgentSession.ts"
import { AsyncRunContext } from "../AsyncRunContext.ts"
import type { ChatItem, FunctionCallOutput } from "../ChatContext.ts"
import type * as FunctionTool from "../FunctionTool.ts"
import * as Prompts from "../Prompts.ts"
import type { Outcome, ToolsetEvent } from "../ToolsetEvent.ts"
import * as Lifecycle from "./callLifecycle.ts"
import * as Coordinator from "./coordinator/index.ts"
import { deliverNow, deliverPair, insertItem, lostAtClose, pairOf, prepareItem, syntheticId } from "./delivery.ts"
import { newId } from "./id.ts"
import * as Items from "./items.ts"
import type { Prepared } from "./toolTable.ts"

// The durable store delivers a call's items through this module.
export { deliverPair } from "./delivery.ts"

/** The key set in a first-update output's `extra`: the call is still running in the background. */
export const pendingKey = "asyncToolsetPending"

/** The `extra` of every first-update output (one frozen object, shared). */
export const pendingExtra: Readonly<Record<string, unknown>> = Object.freeze({ [pendingKey]: true })

export type Call = Lifecycle.Call<Prepared>

/**
 * Where a toolset's calls run and what they say is recorded: in this process (`callStore.ts`), or
 * in a durable store and a workflow engine (`src/durable/internal/store.ts`).
 */
export interface CallStore {
  /**
   * The body of a call's fiber, from its admission to its end (the fiber starts uninterruptible):
   * it waits for its turn (`waitTurn`), tells that the call runs (`begin`), runs it, and reports
   * through the functions below (`settleFirst`, `update`/`deliverPair`, `ended`...).
   */
  readonly run: (
    toolset: Toolset,
    c: Call,
    args: unknown,
    context: Context.Context<never>,
    callScope: Scope.Closeable
  ) => Effect.Effect<void>
  /**
   * What a caller still waiting for its first output gets when the toolset closes: an output now,
   * or `undefined` when the call's fiber answers it (the durable store records first that the call
   * goes on, and answers with what it recorded).
   */
  readonly closedOutput: (toolset: Toolset, c: Call) => FunctionCallOutput | undefined
  /**
   * Whether the toolset's own notice of a timeout is delivered by the timer (in memory), or by the
   * call's fiber once it is recorded (durable).
   */
  readonly timerTellsTimeout: boolean
  /**
   * Completes once the stop of a call is recorded where it must be (`undefined`: nothing to wait
   * for, in memory): a cancel answers then.
   */
  readonly stopRecorded: ((toolset: Toolset, c: Call) => Effect.Effect<void>) | undefined
}

/** What the calls of one toolset share. */
export interface Toolset {
  readonly id: string
  readonly session: AgentSession["Service"]
  /** The services captured by `AsyncToolset.make`, which the tools may need. */
  readonly services: Context.Context<never>
  readonly clock: Clock.Clock
  readonly prompts: Prompts.Prompts
  readonly spanPerCall: boolean
  readonly registry: Lifecycle.Registry<Prepared>
  readonly owner: Coordinator.Owner
  readonly coordinator: Coordinator.Coordinator
  readonly store: CallStore
  /** Timers of calls with a timeout, still running (a fired one may be telling the model). */
  readonly timers: Set<Fiber.Fiber<unknown, unknown>>
  /** Publishes an event; the event is built only when someone listens. */
  readonly emit: (event: () => ToolsetEvent) => void
  /** Counts a call that started (+1) or ended (-1), and an ended call by tool and outcome. */
  readonly countRunning: (delta: number) => void
  readonly countEnded: (tool: string, outcome: Outcome) => void
  /** The output of a call stopped before it said anything (a cancel, a replacement, the toolset closing). */
  readonly cancelled: (call: Call) => FunctionCallOutput | undefined
  /** The last caller context a call was started from, and what was derived from it. */
  cache: ContextCache
}

interface ContextCache {
  readonly caller: Context.Context<never> | undefined
  readonly base: Context.Context<never>
  readonly annotations: Readonly<Record<string, unknown>>
  readonly traced: boolean
}

/** An empty cache: the first call fills it. */
export const emptyCache = (services: Context.Context<never>): ContextCache => ({
  caller: undefined,
  base: services,
  annotations: {},
  traced: false
})

// --- outputs -------------------------------------------------------------------------------------

/** An output the toolset writes itself. */
export const output = (
  toolset: Toolset,
  callId: string,
  name: string,
  text: string,
  isError: boolean,
  extra?: Record<string, unknown>
): FunctionCallOutput =>
  Items.functionCallOutput(newId("fco"), callId, name, text, isError, toolset.clock.currentTimeMillisUnsafe(), extra)

/** The output of a call cancelled before it said anything. */
export const cancelledOutput = (toolset: Toolset, c: Call): FunctionCallOutput =>
  output(
    toolset,
    c.functionCall.callId,
    c.functionCall.name,
    Prompts.render(toolset.prompts.cancelled, { functionName: c.functionCall.name, callId: c.functionCall.callId }),
    true
  )

export const timedOutText = (toolset: Toolset, c: Call): string =>
  Prompts.render(toolset.prompts.timedOut, {
    functionName: c.functionCall.name,
    callId: c.functionCall.callId,
    timeout: Duration.format(c.tool.timeout ?? Duration.zero)
  })

// --- starting ------------------------------------------------------------------------------------

/**
 * Starts an admitted call's fiber and yields its first output. The fiber is made with its whole
 * context at once and starts uninterruptible (its store makes interruptible what may be
 * interrupted); the toolset owns it through its registry, and interrupts it on close. A call that
 * waits for its turn (`replace`) has its fiber from now on too: it waits there.
 */
export const launch = (
  toolset: Toolset,
  c: Call,
  args: unknown,
  caller: Context.Context<never>,
  callerFiber?: Fiber.Fiber<unknown, unknown>
): Effect.Effect<FunctionCallOutput> => {
  const callScope = Scope.makeUnsafe()
  const context = contextOf(toolset, caller, c, callScope)
  if (c.status === "running") announce(toolset, c)
  const body = toolset.store.run(toolset, c, args, context, callScope)
  const fiber = Effect.runForkWith(context)(
    toolset.cache.traced
      ? Effect.withSpan(body, "AsyncToolset.call", {
        attributes: { "toolset.id": toolset.id, "tool.name": c.functionCall.name, "tool.call_id": c.functionCall.callId },
        captureStackTrace: false
      })
      : body,
    startUninterruptible
  )
  fiber.addObserver(() => ended(toolset, c))
  if (c.status !== "done") {
    c.fiber = fiber
    // Stopped while it ran inline (before the fiber was known): interrupt it now.
    if (c.status === "stopping") fiber.interruptUnsafe()
    else if (c.status === "running") armTimer(toolset, c, context)
  }
  return awaitFirst(c, callerFiber)
}

const startUninterruptible = { uninterruptible: true } as const

/**
 * A replacing call waits, in its fiber, until every call it replaces has stopped; then it runs
 * (its start told, its timer armed: the wait is not part of its time, E7). False if it was
 * replaced, cancelled or drained while it waited (its caller was answered then).
 */
export const waitTurn = (toolset: Toolset, c: Call, context: Context.Context<never>): Effect.Effect<boolean> => {
  const gate = c.gate
  if (c.status !== "waiting" || gate === undefined) return Effect.succeed(c.status === "running")
  return Effect.map(Effect.interruptible(Deferred.await(gate)), () => {
    if (!Lifecycle.start(c)) return false
    announce(toolset, c)
    armTimer(toolset, c, context)
    return true
  })
}

/** The call begins to run: its start is told. */
const announce = (toolset: Toolset, c: Call): void => {
  c.begun = true
  c.counted = true
  Coordinator.callBegan(toolset.coordinator, c.startedAt)
  const { arguments: argumentsText, callId, name } = c.functionCall
  toolset.emit(() => ({ _tag: "CallStarted", toolsetId: toolset.id, callId, name, arguments: argumentsText, at: c.startedAt }))
  toolset.countRunning(1)
}

/**
 * The first output: at once if it is settled (the call ran inline up to its first update, or was
 * stopped); else waited for. A caller that stops waiting abandons the call (see `AsyncToolset.execute`).
 */
export const awaitFirst = (c: Call, caller?: Fiber.Fiber<unknown, unknown>): Effect.Effect<FunctionCallOutput> => {
  const first = Lifecycle.takeFirst(c)
  if (first === undefined) return Effect.flatMap(Deferred.await(Lifecycle.firstWaiter(c)), handOver)
  return caller !== undefined && nearYield(caller) ? Effect.as(Effect.yieldNow, first) : Effect.succeed(first)
}

/**
 * The first output goes back to the caller with run-loop steps to spare before the caller's fiber
 * yields to the scheduler (B9). Effect's run loop yields when a fiber spends its budget, and an
 * interruption that arrives during that yield replaces the value being returned: if that happened
 * between here and the caller's next step, the caller would lose the output while its call went
 * on. So when the budget is nearly spent, the fiber yields here first, where an interruption
 * still reaches `execute`'s exit handler (which withdraws the call).
 */
const handOver = (output: FunctionCallOutput): Effect.Effect<FunctionCallOutput> =>
  Effect.withFiber((fiber) => nearYield(fiber) ? Effect.as(Effect.yieldNow, output) : Effect.succeed(output))

const nearYield = (fiber: Fiber.Fiber<unknown, unknown>): boolean =>
  !fiber.cache.preventYield && fiber.currentOpCount + handOverSteps >= fiber.cache.maxOpsBeforeYield

/** The run-loop steps from the hand-over to the caller's next step, and a margin. */
const handOverSteps = 8

/** The caller stopped waiting for the call's first output (or never got it): the call is cancelled. */
export const abandon = (toolset: Toolset, c: Call): void => {
  Lifecycle.stop(toolset.registry, c, "abandoned", toolset.cancelled)
  Lifecycle.flush(toolset.registry)
}

/**
 * The context a call's fiber runs with: the caller's (its tracer, its span, its references) under
 * the services the toolset captured, plus the call's own run context, log annotations and scope.
 * The merge is cached per caller context.
 */
const contextOf = (
  toolset: Toolset,
  caller: Context.Context<never>,
  c: Call,
  callScope: Scope.Closeable
): Context.Context<never> => {
  if (caller !== toolset.cache.caller) {
    const base = Context.merge(caller, toolset.services)
    toolset.cache = {
      caller,
      base,
      annotations: Context.get(base, References.CurrentLogAnnotations),
      traced: toolset.spanPerCall && Context.get(base, Tracer.Tracer) !== Tracer.nativeTracer
    }
  }
  const { base, annotations } = toolset.cache
  const runContext = AsyncRunContext.of({
    functionCall: c.functionCall,
    toolsetId: toolset.id,
    update: (message) => update(toolset, c, message)
  })
  return Context.add(
    Context.add(
      Context.add(base, AsyncRunContext, runContext),
      References.CurrentLogAnnotations,
      { ...annotations, toolset: toolset.id, tool: c.functionCall.name, callId: c.functionCall.callId }
    ),
    Scope.Scope,
    callScope
  )
}

// --- what a call says ----------------------------------------------------------------------------

/**
 * Settles the call's first output (B2, B3), if it is still running and nobody did: checking and
 * settling is one synchronous step, so of two updates racing exactly one is the first output
 * (B8). `message` (the update as the tool gave it) makes it a first update, told as one.
 */
export const settleFirst = (toolset: Toolset, c: Call, out: FunctionCallOutput, message?: unknown): boolean => {
  if (c.firstSettled || !Lifecycle.settleFirst(toolset.registry, c, out)) return false
  if (message !== undefined) emitUpdated(toolset, c, 0, message, out.output)
  Lifecycle.flush(toolset.registry)
  return true
}

export const emitUpdated = (toolset: Toolset, c: Call, step: number, message: unknown, text: string): void =>
  toolset.emit(() => ({
    _tag: "CallUpdated",
    toolsetId: toolset.id,
    callId: c.functionCall.callId,
    name: c.functionCall.name,
    step,
    // the update as the tool gave it: its string, or the JSON of its value
    message: typeof message === "string" ? message : text,
    at: toolset.clock.currentTimeMillisUnsafe()
  }))

// --- the end -------------------------------------------------------------------------------------

/**
 * The call's result, for a call that was still running (`Lifecycle.handlerReturned` said so): its
 * output if it never updated (B3), else the pair `<callId>_final` (B5); nothing for a void result
 * after an update (`out` undefined).
 */
export const tellResult = (
  toolset: Toolset,
  c: Call,
  out: FunctionTool.Output | undefined,
  final?: { readonly callId: string; readonly items: ReadonlyArray<ChatItem> }
): Effect.Effect<void> => {
  c.outcome = out?.isError === true ? "error" : "done"
  const { callId, name } = c.functionCall
  if (!c.firstSettled && settleFirst(toolset, c, output(toolset, callId, name, out?.output ?? "", out?.isError ?? false))) {
    return Effect.void
  }
  if (out === undefined) return Effect.void
  if (final !== undefined) return deliverPair(toolset, c, final.callId, final.items)
  // The fiber is uninterruptible here already (only the insertion is not).
  if (toolset.owner.closed) return lostAtClose(toolset, syntheticId(toolset, c, "_final"))
  const finalId = syntheticId(toolset, c, "_final")
  return deliverNow(toolset, c, finalId, pairOf(toolset, c, finalId, out), false)
}

/** The call's fiber ended: out of the tables, counted, reported. */
const ended = (toolset: Toolset, c: Call): void => {
  Lifecycle.fiberEnded(toolset.registry, c, (c) => toolset.cancelled(c) ?? cancelledOutput(toolset, c))
  if (c.counted) {
    c.counted = false
    Coordinator.callEnded(toolset.coordinator, c.startedAt)
  }
  if (c.begun) {
    toolset.countRunning(-1)
    toolset.countEnded(c.functionCall.name, c.outcome)
    toolset.emit(() => {
      const at = toolset.clock.currentTimeMillisUnsafe()
      return {
        _tag: "CallEnded",
        toolsetId: toolset.id,
        callId: c.functionCall.callId,
        name: c.functionCall.name,
        outcome: c.outcome,
        duration: at - c.startedAt,
        at
      }
    })
  }
  Lifecycle.flush(toolset.registry)
}

// --- timeouts ------------------------------------------------------------------------------------

const armTimer = (toolset: Toolset, c: Call, context: Context.Context<never>): void => {
  const timeout = c.tool.timeout
  if (timeout === undefined) return
  const left = c.deadline === undefined
    ? timeout
    : Duration.millis(Math.max(0, c.deadline - toolset.clock.currentTimeMillisUnsafe()))
  const timer = Effect.runForkWith(context)(Effect.andThen(Effect.sleep(left), timeOut(toolset, c)))
  if (timer.pollUnsafe() !== undefined) return
  c.timer = timer
  toolset.timers.add(timer)
  timer.addObserver(() => toolset.timers.delete(timer))
}

/**
 * A call that ran out of time: the model is told at expiry, even inside an uninterruptible
 * region. After a first update the notice is `<callId>_final`; it counts as pending before the
 * call is stopped, so the toolset never looks idle in between. (A durable call's fiber records
 * and tells the notice itself.)
 */
const timeOut = (toolset: Toolset, c: Call): Effect.Effect<void> =>
  Effect.uninterruptible(Effect.suspend(() => {
    if (c.status !== "running") return Effect.void
    const text = timedOutText(toolset, c)
    const tells = toolset.store.timerTellsTimeout && c.firstSettled && !toolset.owner.closed
    const finalId = tells ? syntheticId(toolset, c, "_final") : undefined
    const notice = finalId === undefined
      ? undefined
      : prepareItem(toolset, c, finalId, pairOf(toolset, c, finalId, { output: text, isError: true }), true)
    Lifecycle.stop(
      toolset.registry,
      c,
      "timed-out",
      (c) => toolset.store.timerTellsTimeout ? output(toolset, c.functionCall.callId, c.functionCall.name, text, true) : undefined
    )
    Lifecycle.flush(toolset.registry)
    return notice === undefined ? Effect.void : insertItem(toolset, c, notice)
  }))

// --- the in-memory store's updates ---------------------------------------------------------------

/**
 * `AsyncRunContext.update` of a call run in this process. The first update settles its output
 * (B2); later ones are delivered as `<callId>_update_<n>` (B4).
 */
export const update = (toolset: Toolset, c: Call, message: unknown): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (c.status !== "running") {
      // Dropped: the call was stopped (E2). Stopped by the toolset closing rather than by the
      // model, the update is lost, not unwanted: say so.
      return c.stopCause === "closed" && c.firstSettled
        ? lostAtClose(toolset, syntheticId(toolset, c, `_update_${++c.updates}`))
        : Effect.void
    }
    const text = encodeUpdate(toolset.prompts, c, message)
    const { callId, name } = c.functionCall
    if (!c.firstSettled && settleFirst(toolset, c, output(toolset, callId, name, text, false, pendingExtra), message)) {
      return Effect.void
    }
    const step = ++c.updates
    emitUpdated(toolset, c, step, message, text)
    const pairId = syntheticId(toolset, c, `_update_${step}`)
    return deliverPair(toolset, c, pairId, pairOf(toolset, c, pairId, { output: text, isError: false }))
  })

/** An update as the model reads it: a string through the update template, any other value as JSON. */
export const encodeUpdate = (
  prompts: Prompts.Prompts,
  c: { readonly functionCall: { readonly name: string; readonly callId: string } },
  message: unknown
): string => {
  if (typeof message === "string") {
    return Prompts.render(prompts.update, { functionName: c.functionCall.name, callId: c.functionCall.callId, message })
  }
  const json = JSON.stringify(message)
  if (json === undefined) throw new Error("AsyncRunContext.update: the value has no JSON form")
  return json
}

export const lateFailure = (exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> =>
  Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)
    ? Effect.logError("tool failed after it was cancelled; nothing is delivered", exit.cause)
    : Effect.void
