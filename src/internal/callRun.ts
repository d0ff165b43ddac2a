/**
 * Running one call: its fiber (made with its context set once), its updates, the delivery of its
 * later items, its end, its timeout.
 *
 * Top-level functions over `Toolset`, the data a toolset's calls share, and `Call`, one call's
 * lifecycle (`callLifecycle.ts`). Every state change goes through a lifecycle transition; the
 * functions here add what a change means for the model and the chat.
 */
import { Cause, Context, Deferred, Duration, Effect, Exit, References, Result, Scope, Tracer } from "effect"
import type { Clock, Fiber } from "effect"
import type { AgentSession } from "../AgentSession.ts"
import { AsyncRunContext } from "../AsyncRunContext.ts"
import type { FunctionCallOutput } from "../ChatContext.ts"
import * as FunctionTool from "../FunctionTool.ts"
import * as Prompts from "../Prompts.ts"
import type { Outcome, ToolsetEvent } from "../ToolsetEvent.ts"
import * as Lifecycle from "./callLifecycle.ts"
import { newId } from "./id.ts"
import * as Items from "./items.ts"
import * as Coordinator from "./coordinator/index.ts"
import type { Prepared } from "./toolTable.ts"

/** The key set in a first-update output's `extra`: the call is still running in the background. */
export const pendingKey = "asyncToolsetPending"

/** The `extra` of every first-update output (one frozen object, shared). */
const pendingExtra: Readonly<Record<string, unknown>> = Object.freeze({ [pendingKey]: true })

export type Call = Lifecycle.Call<Prepared>

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
  /** Timers of calls with a timeout, still running (a fired one may be telling the model). */
  readonly timers: Set<Fiber.Fiber<unknown, unknown>>
  /** Publishes an event; the event is built only when someone listens. */
  readonly emit: (event: () => ToolsetEvent) => void
  /** Counts a call that started (+1) or ended (-1), and an ended call by tool and outcome. */
  readonly countRunning: (delta: number) => void
  readonly countEnded: (tool: string, outcome: Outcome) => void
  /** The cancelled output of a call, for the lifecycle's transitions. */
  readonly cancelled: (call: Call) => FunctionCallOutput
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

const timedOutText = (toolset: Toolset, c: Call) =>
  Prompts.render(toolset.prompts.timedOut, {
    functionName: c.functionCall.name,
    callId: c.functionCall.callId,
    timeout: Duration.format(c.tool.timeout ?? Duration.zero)
  })

// --- starting ------------------------------------------------------------------------------------

/**
 * Starts a running call's fiber and yields its first output. The fiber is made with its whole
 * context at once and starts uninterruptible (only the handler is interruptible); the toolset
 * owns it through its registry, and interrupts it on close.
 */
export const launch = (
  toolset: Toolset,
  c: Call,
  args: unknown,
  caller: Context.Context<never>
): Effect.Effect<FunctionCallOutput> => {
  const callScope = Scope.makeUnsafe()
  const context = contextOf(toolset, caller, c, callScope)
  const { arguments: argumentsText, callId, name } = c.functionCall
  toolset.emit(() => ({ _tag: "CallStarted", toolsetId: toolset.id, callId, name, arguments: argumentsText, at: c.startedAt }))
  toolset.countRunning(1)
  const body = run(toolset, c, args, callScope)
  const fiber = Effect.runForkWith(context)(
    toolset.cache.traced
      ? Effect.withSpan(body, "AsyncToolset.call", {
        attributes: { "toolset.id": toolset.id, "tool.name": name, "tool.call_id": callId },
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
    if (c.tool.timeout !== undefined && c.status === "running") startTimer(toolset, c, c.tool.timeout, context)
  }
  return awaitFirst(c)
}

const startUninterruptible = { uninterruptible: true } as const

/**
 * A replacing call waits for its predecessors to stop, then starts. Replaced, cancelled or
 * drained meanwhile, its caller gets the cancelled output at once; a caller that stops waiting
 * abandons it.
 */
export const awaitTurn = (
  toolset: Toolset,
  c: Call,
  args: unknown,
  caller: Context.Context<never>
): Effect.Effect<FunctionCallOutput> => {
  // A caller that stops waiting abandons the call (see `AsyncToolset.execute`).
  return Effect.flatMap(
    Deferred.await(c.gate!),
    () => Lifecycle.start(c) ? launch(toolset, c, args, caller) : awaitFirst(c)
  )
}

/**
 * The first output: at once if it is settled (the call ran inline up to its first update, or was
 * stopped); else waited for. A caller that stops waiting abandons the call (see `AsyncToolset.execute`).
 */
const awaitFirst = (c: Call): Effect.Effect<FunctionCallOutput> => {
  const first = Lifecycle.takeFirst(c)
  return first !== undefined ? Effect.succeed(first) : Deferred.await(Lifecycle.firstWaiter(c))
}

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

// --- the call's fiber ----------------------------------------------------------------------------

/**
 * What a call's fiber runs (it starts uninterruptible): the handler, interruptible, in the call's
 * own scope; then, once the handler returned, the outcome.
 */
const run = (toolset: Toolset, c: Call, args: unknown, callScope: Scope.Closeable): Effect.Effect<void> =>
  Effect.matchCauseEffect(Effect.interruptible(handle(c, args)), {
    onSuccess: (value) => finish(toolset, c, callScope, Exit.succeed(value)),
    onFailure: (cause) => finish(toolset, c, callScope, Exit.failCause(cause))
  })

/** The handler's effect; a handler that throws instead of returning one is a defect of the tool. */
const handle = (c: Call, args: unknown): Effect.Effect<unknown, unknown> => {
  try {
    return c.tool.tool.handler(args) as Effect.Effect<unknown, unknown>
  } catch (error) {
    return Effect.die(error)
  }
}

/**
 * The handler returned. If the call was still running, its outcome is what the model hears: as
 * the output if it never updated (B3), else as `<callId>_final` (B5). If it was stopped before,
 * nothing is delivered, but a defect (say, in its clean-up) is still logged.
 */
const finish = (
  toolset: Toolset,
  c: Call,
  callScope: Scope.Closeable,
  exit: Exit.Exit<unknown, unknown>
): Effect.Effect<void> => {
  const won = Lifecycle.handlerReturned(toolset.registry, c)
  Lifecycle.flush(toolset.registry)
  const close = Scope.closeUnsafe(callScope, exit)
  const then = won ? deliverOutcome(toolset, c, exit) : lateFailure(exit)
  return close === undefined ? then : Effect.andThen(close, then)
}

const deliverOutcome = (toolset: Toolset, c: Call, exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> => {
  // A success is encoded at once; a failure (which may be logged) or an encoding that fails
  // takes the effectful path.
  if (Exit.isSuccess(exit)) {
    const encoded = FunctionTool.encodeSuccess(c.tool.tool, exit.value)
    if (Result.isSuccess(encoded)) {
      const text = encoded.success
      return outcome(toolset, c, text._tag === "Some" ? { output: text.value, isError: false } : undefined)
    }
  }
  return Effect.flatMap(
    FunctionTool.encodeExit(c.tool.tool, c.functionCall.callId, exit),
    (result) => outcome(toolset, c, result._tag === "Some" ? result.value : undefined)
  )
}

/** The call's outcome for the model: its output if it never updated (B3), else `<callId>_final` (B5). */
const outcome = (toolset: Toolset, c: Call, out: FunctionTool.Output | undefined): Effect.Effect<void> => {
  c.outcome = out?.isError === true ? "error" : "done"
  const { callId, name } = c.functionCall
  if (!c.firstSettled && Lifecycle.settleFirst(toolset.registry, c, output(toolset, callId, name, out?.output ?? "", out?.isError ?? false))) {
    Lifecycle.flush(toolset.registry)
    return Effect.void
  }
  if (out === undefined) return Effect.void
  // The fiber is uninterruptible here already (only the insertion is not).
  if (toolset.owner.closed) return lostAtClose(toolset, syntheticId(toolset, c, "_final"))
  return insertItem(toolset, c, prepareItem(toolset, c, "_final", out, false))
}

const lateFailure = (exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> =>
  Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)
    ? Effect.logError("tool failed after it was cancelled; nothing is delivered", exit.cause)
    : Effect.void

/** The call's fiber ended: out of the tables, counted, reported. */
const ended = (toolset: Toolset, c: Call): void => {
  Lifecycle.fiberEnded(toolset.registry, c, toolset.cancelled)
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
  Lifecycle.flush(toolset.registry)
}

// --- timeouts ------------------------------------------------------------------------------------

const startTimer = (toolset: Toolset, c: Call, timeout: Duration.Duration, context: Context.Context<never>) => {
  const timer = Effect.runForkWith(context)(Effect.andThen(Effect.sleep(timeout), timeOut(toolset, c)))
  if (timer.pollUnsafe() !== undefined) return
  c.timer = timer
  toolset.timers.add(timer)
  timer.addObserver(() => toolset.timers.delete(timer))
}

/**
 * A call that ran out of time: the model is told at expiry, even inside an uninterruptible
 * region. After a first update the notice is `<callId>_final`; it counts as pending before the
 * call is stopped, so the toolset never looks idle in between.
 */
const timeOut = (toolset: Toolset, c: Call): Effect.Effect<void> =>
  Effect.uninterruptible(Effect.suspend(() => {
    if (c.status !== "running") return Effect.void
    const text = timedOutText(toolset, c)
    const notice = c.firstSettled && !toolset.owner.closed
      ? prepareItem(toolset, c, "_final", { output: text, isError: true }, true)
      : undefined
    Lifecycle.stop(toolset.registry, c, "timed-out", (c) => output(toolset, c.functionCall.callId, c.functionCall.name, text, true))
    Lifecycle.flush(toolset.registry)
    return notice === undefined ? Effect.void : insertItem(toolset, c, notice)
  }))

// --- updates and later items ---------------------------------------------------------------------

/** `AsyncRunContext.update` of a call. The first update settles its output (B2); later ones are delivered (B4). */
export const update = (toolset: Toolset, c: Call, message: unknown): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (c.status !== "running") {
      // Dropped: the call was stopped (E2). Stopped by the toolset closing rather than by the
      // model, the update is lost, not unwanted: say so.
      return c.stopCause === "closed" && c.firstSettled
        ? lostAtClose(toolset, syntheticId(toolset, c, `_update_${++c.updates}`))
        : Effect.void
    }
    const text = encodeUpdate(toolset, c, message)
    const { callId, name } = c.functionCall
    // Checking and settling the first output is one synchronous step: of two updates racing,
    // exactly one is the first output and the other is `_update_1` (B8).
    if (!c.firstSettled && Lifecycle.settleFirst(toolset.registry, c, output(toolset, callId, name, text, false, pendingExtra))) {
      emitUpdated(toolset, c, 0, message, text)
      Lifecycle.flush(toolset.registry)
      return Effect.void
    }
    const step = ++c.updates
    emitUpdated(toolset, c, step, message, text)
    return deliver(toolset, c, `_update_${step}`, { output: text, isError: false })
  })

const encodeUpdate = (toolset: Toolset, c: Call, message: unknown): string => {
  if (typeof message === "string") {
    return Prompts.render(toolset.prompts.update, { functionName: c.functionCall.name, callId: c.functionCall.callId, message })
  }
  const json = JSON.stringify(message)
  if (json === undefined) throw new Error("AsyncRunContext.update: the value has no JSON form")
  return json
}

const emitUpdated = (toolset: Toolset, c: Call, step: number, message: unknown, text: string) =>
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

/**
 * A call's synthetic call id: its base (claimed for the session once) and a suffix, unless the
 * model took that id for a call of its own (B7).
 */
const syntheticId = (toolset: Toolset, c: Call, suffix: string): string =>
  Coordinator.claimSynthetic(toolset.session, c.base ??= Coordinator.claimBase(toolset.session, c.functionCall.callId), suffix)

const lostAtClose = (toolset: Toolset, callId: string) =>
  Effect.logError(`the toolset closed before ${callId} reached the chat; it is not delivered`)
    .pipe(Effect.annotateLogs({ toolset: toolset.id, callId }))

/**
 * Inserts a call/output pair `<base><suffix>` into the chat now (C1) and hands it to the reply
 * coordinator. Nothing is delivered for a stopped call (E2), except the toolset's own word that it
 * timed out (`force`). A failed insertion, whatever its cause, is the coordinator's to retry: a
 * port answer never cancels the call; only the call's own state says it is stopping (E9).
 *
 * The insertion is interruptible even inside a tool's uninterruptible region, so a cancel, a
 * timeout or close is not held up by a slow session; the region still stays whole: an
 * interrupted insertion is not an interruption of the tool (`update` returns normally, and the
 * tool's own interruption comes when its region ends).
 */
const deliver = (toolset: Toolset, c: Call, suffix: string, out: FunctionTool.Output): Effect.Effect<void> =>
  // From the count of pending items to the hand-over nothing may interrupt: the count moves with
  // the item, whatever interrupts the caller and when. Only the insertion is interruptible.
  Effect.uninterruptible(Effect.suspend(() => {
    if (c.status !== "running" && c.status !== "finishing") return Effect.void
    if (toolset.owner.closed) return lostAtClose(toolset, syntheticId(toolset, c, suffix))
    return insertItem(toolset, c, prepareItem(toolset, c, suffix, out, false))
  }))

/** The pair `<base><suffix>` of a call, stamped now; it counts as pending from here on. */
const prepareItem = (toolset: Toolset, c: Call, suffix: string, out: FunctionTool.Output, force: boolean) => {
  const callId = syntheticId(toolset, c, suffix)
  const now = toolset.clock.currentTimeMillisUnsafe()
  const { arguments: args, name } = c.functionCall
  const item: Coordinator.Item = {
    owner: toolset.owner,
    callId,
    items: [
      Items.functionCall(newId("fc"), callId, name, args, now),
      Items.functionCallOutput(newId("fco"), callId, name, out.output, out.isError, now)
    ],
    inserted: false,
    insertedAt: 0,
    call: c,
    dropped: () => Coordinator.dropped(c, force)
  }
  Coordinator.begin(item)
  return item
}

/** Inserts a prepared item, then hands it over (or lets it go, or reports it lost). */
const insertItem = (toolset: Toolset, c: Call, item: Coordinator.Item): Effect.Effect<void> =>
  Effect.matchCauseEffect(Effect.interruptible(toolset.session.insert(item.items)), {
    onSuccess: () => {
      // In the chat: it is answered, even if its call was stopped in the same instant (the model
      // never finds an item nobody asked it about).
      Coordinator.inserted(toolset.coordinator, item)
      toolset.emit(() => ({ _tag: "ReplyScheduled", toolsetId: toolset.id, callId: item.callId, at: toolset.clock.currentTimeMillisUnsafe() }))
      Coordinator.handOver(toolset.coordinator, item)
      return Effect.void
    },
    onFailure: (cause) => insertFailed(toolset, c, item, cause)
  })

/** The insertion did not work, whatever its shape: lost at close, let go after a cancel, or retried. */
const insertFailed = (toolset: Toolset, c: Call, item: Coordinator.Item, cause: Cause.Cause<unknown>): Effect.Effect<void> => {
    const owner = toolset.owner
    if (owner.closed || c.stopCause === "closed") {
      // Lost because the toolset closed: say so (before the count drops: an idle waiter may close).
      return Effect.andThen(lostAtClose(toolset, item.callId), Effect.sync(() => Coordinator.settle(item)))
    }
    if (item.dropped() === "cancelled") {
      // Its call was cancelled: nothing more of it reaches the chat. The insertion cut short may
      // have put part of it there (a function call without its output, which a provider refuses):
      // the coordinator looks, lets it go if nothing is there, and completes it if part is. If
      // the call's fiber was interrupted, the interruption goes on by itself as this region ends.
      Coordinator.handOver(toolset.coordinator, item)
      return Effect.void
    }
    Coordinator.handOver(toolset.coordinator, item)
    return Effect.logWarning("could not insert a tool result into the chat; the reply coordinator will retry", cause)
      .pipe(Effect.annotateLogs({ toolset: toolset.id, callId: item.callId }))
}
