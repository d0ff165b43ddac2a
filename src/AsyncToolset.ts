/**
 * Runs long tools in the background of a conversation.
 *
 * The model calls a tool; the call runs in its own fiber, owned by the toolset. The first `update`
 * the tool makes is handed back to the model at once (through a `Deferred`), so the agent can tell
 * the user the work has started and the conversation goes on. Later updates and the final result
 * are inserted into the chat as they come; the session's reply coordinator waits until the session
 * is idle, takes everything pending (from every toolset of the session) at once, and asks the
 * agent for one reply covering it.
 *
 * This module is the composition: admission (`internal/admission.ts`), the call lifecycle
 * (`internal/callLifecycle.ts`) and the reply coordinator (`internal/replyCoordinator.ts`) are
 * each in a module of their own.
 *
 * @since 0.1.0
 */
import { Cause, Clock, Context, Deferred, Duration, Effect, Exit, Fiber, Metric, PubSub, References, Result, Schedule, Schema, Scope, Stream, Tracer } from "effect"
import { AgentSession } from "./AgentSession.ts"
import { AsyncRunContext } from "./AsyncRunContext.ts"
import type { FunctionCall, FunctionCallOutput } from "./ChatContext.ts"
import * as FunctionTool from "./FunctionTool.ts"
import { checkCallId, decide } from "./internal/admission.ts"
import * as Lifecycle from "./internal/callLifecycle.ts"
import { newId } from "./internal/id.ts"
import * as Items from "./internal/items.ts"
import * as Coordinator from "./internal/replyCoordinator.ts"
import * as Prompts from "./Prompts.ts"
import type { Outcome, ToolsetEvent } from "./ToolsetEvent.ts"

/**
 * The key set in a first-update output's `extra`: the call is still running in the background.
 *
 * @since 0.1.0
 * @category constants
 */
export const pendingKey = "asyncToolsetPending"

/**
 * Whether an output is a first update of a call that goes on in the background.
 *
 * @since 0.1.0
 * @category guards
 */
export const isPending = (output: FunctionCallOutput): boolean => output.extra?.[pendingKey] === true

/**
 * The name of the optional boolean parameter added to tools in `confirm` mode.
 *
 * @since 0.1.0
 * @category constants
 */
export const confirmParameter = "confirm_duplicate"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<Tools extends ReadonlyArray<FunctionTool.Any>> {
  /** Names this toolset; its management tools are named after it. `[A-Za-z0-9_-]`, at most 40. */
  readonly id: string
  readonly tools: Tools
  /** Default duplicate mode (default `confirm`); a tool's own option wins. */
  readonly onDuplicateCall?: FunctionTool.DuplicateMode | undefined
  /** Default duplicate scope (default `name`); a tool's own option wins. */
  readonly duplicateScope?: FunctionTool.DuplicateScope | undefined
  /** Prompt texts to replace; the rest keep their defaults. */
  readonly prompts?: Partial<Prompts.Prompts> | undefined
  /**
   * When the agent already spoke after the pending results: `ask` (default) still requests a reply
   * whose instructions let the model answer empty if it covered them; `skip` requests none.
   */
  readonly whenAlreadyAnswered?: "ask" | "skip" | undefined
  /** Longest argument text accepted from the model (default 1,000,000 characters). */
  readonly maxArgumentsLength?: number | undefined
  /** How a failed chat insertion or reply request is retried (default: 3 retries, from 100 ms). */
  readonly sessionRetry?: Schedule.Schedule<unknown, unknown> | undefined
  /**
   * How long a reply request (with its retries) may take before it is given up and reported, so
   * a stalled session never holds back later replies. Default 2 minutes.
   */
  readonly replyTimeout?: Duration.Input | undefined
  /**
   * Wrap each call in an `AsyncToolset.call` span (default `true`). The span is made only when a
   * tracer other than Effect's native no-op one is installed (an exporter, a test tracer), and
   * without a stack trace.
   */
  readonly spanPerCall?: boolean | undefined
}

/**
 * A call the toolset is running, as `runningTasks` reports it.
 *
 * @since 0.1.0
 * @category models
 */
export interface RunningTask {
  readonly callId: string
  readonly name: string
  readonly arguments: string
  /** `cancelling`: interruption was requested and the fiber has not stopped yet. */
  readonly status: "running" | "cancelling"
  /** Whether `cancel` would interrupt it now. */
  readonly cancellable: boolean
  readonly startedAt: number
}

/**
 * What `cancel` did.
 *
 * @since 0.1.0
 * @category models
 */
export type CancelResult = "cancelled" | "not-found" | "not-cancellable"

/**
 * @since 0.1.0
 * @category models
 */
export interface AsyncToolset {
  readonly id: string
  /** What the model sees: the tools (with the confirmation flag where it applies) and the management tools. */
  readonly tools: ReadonlyArray<FunctionTool.Any>
  /** Runs one model tool call; yields the output the model gets now. */
  readonly execute: (call: FunctionCall) => Effect.Effect<FunctionCallOutput>
  /** Interrupts a running call. Returns at once, even if the tool is in an uninterruptible region. */
  readonly cancel: (callId: string) => Effect.Effect<CancelResult>
  readonly runningTasks: Effect.Effect<ReadonlyArray<RunningTask>>
  /** Completes when no call is running and no reply is pending (for tests and shutdown). */
  readonly awaitIdle: Effect.Effect<void>
  /** Cancels the cancellable calls and waits for the others to end (for agent hand-off). */
  readonly drain: Effect.Effect<void>
  /** Interrupts every call and leaves the reply coordinator; later calls get an error output. */
  readonly close: Effect.Effect<void>
  /**
   * What the toolset does, as it happens (calls started, updated, ended; replies scheduled,
   * delivered, skipped). A subscriber sees the events published after it starts; the stream ends
   * when the toolset closes.
   */
  readonly events: Stream.Stream<ToolsetEvent>
}

/**
 * Calls running now, per toolset (`toolset` attribute).
 *
 * @since 0.1.0
 * @category metrics
 */
export const runningCalls = Metric.gauge("async_toolset_running_calls", {
  description: "Background tool calls running now"
})

/**
 * Calls ended, per toolset, tool and outcome (`toolset`, `tool`, `outcome` attributes).
 *
 * @since 0.1.0
 * @category metrics
 */
export const callsEnded = Metric.counter("async_toolset_calls_total", {
  description: "Background tool calls ended, by outcome",
  incremental: true
})

/** A tool as this toolset runs it. */
interface Prepared {
  /** The tool as the user wrote it. */
  readonly tool: FunctionTool.Any
  /** The tool as the model sees it (with the confirmation flag in `confirm` mode). */
  readonly visible: FunctionTool.Any
  readonly mode: FunctionTool.DuplicateMode
  readonly scope: FunctionTool.DuplicateScope
  readonly cancellable: boolean
  readonly timeout: Duration.Duration | undefined
}

type Call = Lifecycle.Call<Prepared>

/** What `Effect.uninterruptibleMask` hands its body: makes an effect interruptible again. */
type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

const idPattern = /^[A-Za-z0-9_-]{1,40}$/

/**
 * Builds a toolset in the current scope; closing the scope closes it.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
 *
 * const bookFlight = FunctionTool.make("book_flight", {
 *   description: "Book a flight",
 *   parameters: Schema.Struct({ to: Schema.String })
 * }, ({ to }) =>
 *   Effect.gen(function*() {
 *     yield* AsyncRunContext.update(`Looking up flights to ${to}`)
 *     yield* Effect.sleep("5 seconds")
 *     return { confirmation: "FL-847293" }
 *   }))
 *
 * const toolset = AsyncToolset.make({ id: "travel", tools: [bookFlight] })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*<const Tools extends ReadonlyArray<FunctionTool.Any>>(
  options: Options<Tools>
): Effect.fn.Return<
  AsyncToolset,
  never,
  Scope.Scope | AgentSession | Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext>
> {
  if (!idPattern.test(options.id)) {
    return yield* Effect.die(new Error(`AsyncToolset.make: id "${options.id}" must match ${idPattern}`))
  }
  const id = options.id
  const session = yield* AgentSession
  const services = yield* Effect.context<Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext>>()
  const clock = yield* Clock.clockWith(Effect.succeed)
  const prompts: Prompts.Prompts = { ...Prompts.defaults, ...options.prompts }
  const maxArgumentsLength = options.maxArgumentsLength ?? FunctionTool.defaultMaxArgumentsLength
  const spanPerCall = options.spanPerCall ?? true
  const names = { getRunningTasks: `get_running_tasks_${id}`, cancelTask: `cancel_task_${id}` }
  const prepared = prepare(options, prompts, names)
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
  const runningGauge = Metric.withAttributes(runningCalls, { toolset: id })
  const endedCounters = new Map<string, Metric.Metric<number, unknown>>()
  const countEnded = (tool: string, outcome: Outcome) => {
    const key = `${tool}\u0000${outcome}`
    let counter = endedCounters.get(key)
    if (counter === undefined) {
      counter = Metric.withAttributes(callsEnded, { toolset: id, tool, outcome })
      endedCounters.set(key, counter)
    }
    counter.updateUnsafe(1, services)
  }

  // --- the calls and the session's reply coordinator ----------------------------------------------
  const registry = Lifecycle.makeRegistry<Prepared>()
  const owner: Coordinator.Owner = {
    id,
    policy: {
      prompts,
      whenAlreadyAnswered: options.whenAlreadyAnswered ?? "ask",
      sessionRetry: options.sessionRetry ?? Schedule.exponential("100 millis").pipe(Schedule.upTo({ times: 3 })),
      replyTimeout: Duration.fromInputUnsafe(options.replyTimeout ?? "2 minutes")
    },
    pending: 0,
    closed: false,
    emit: (event) => emit(() => event),
    settled: () => {
      Lifecycle.notify(registry)
      Lifecycle.flush(registry)
    },
    closing: Deferred.makeUnsafe<void>()
  }
  const timers = new Set<Fiber.Fiber<unknown, unknown>>()

  // Finalizers run last-added first: calls stop (and are awaited), then the toolset leaves the
  // coordinator (its items still owed a reply are reported), then the event stream ends (so
  // subscribers see the calls that close ended).
  const scope = yield* Scope.fork(yield* Scope.Scope, "sequential")
  yield* Scope.addFinalizer(scope, PubSub.shutdown(pubsub))
  const coordinator = yield* Coordinator.acquire(session, owner).pipe(Scope.provide(scope))
  yield* Scope.addFinalizer(
    scope,
    Effect.suspend(() => {
      Coordinator.closeOwner(owner)
      Lifecycle.closeAll(registry, cancelledOutput)
      Lifecycle.flush(registry)
      for (const timer of timers) timer.interruptUnsafe()
      return Effect.andThen(
        waitUntil(() => registry.live.size === 0),
        Fiber.awaitAll(Array.from(timers))
      )
    })
  )

  const waitUntil = (ready: () => boolean): Effect.Effect<void> =>
    Effect.suspend(() => {
      const done = Lifecycle.waiter(registry, ready)
      if (done === undefined) return Effect.void
      return Deferred.await(done).pipe(Effect.onInterrupt(() => Effect.sync(() => Lifecycle.forgetWaiter(registry, done))))
    })

  // --- outputs -----------------------------------------------------------------------------------
  const output = (callId: string, name: string, text: string, isError: boolean, extra?: Record<string, unknown>) =>
    Items.functionCallOutput(newId("fco"), callId, name, text, isError, clock.currentTimeMillisUnsafe(), extra)

  const describeRunning = (calls: Iterable<Call>) =>
    Array.from(calls, (c) => `- call_id ${clip(c.functionCall.callId)}, arguments ${clip(c.functionCall.arguments)}`)
      .join("\n")

  const cancelledOutput = (c: Call) =>
    output(
      c.functionCall.callId,
      c.functionCall.name,
      Prompts.render(prompts.cancelled, { functionName: c.functionCall.name, callId: c.functionCall.callId }),
      true
    )

  const timedOutText = (c: Call) =>
    Prompts.render(prompts.timedOut, {
      functionName: c.functionCall.name,
      callId: c.functionCall.callId,
      timeout: Duration.format(c.tool.timeout ?? Duration.zero)
    })

  // --- delivering later items --------------------------------------------------------------------
  /**
   * Inserts a call/output pair `<base><suffix>` into the chat now (C1) and hands it to the reply
   * coordinator. Nothing is delivered for a stopped call (E2), except the toolset's own word that
   * it timed out (`force`). A failed insertion, whatever its cause, is the coordinator's to retry:
   * a port answer never cancels the call; only the call's own state says it is stopping (E9).
   */
  const deliver = (c: Call, suffix: string, out: FunctionTool.Output, force: boolean): Effect.Effect<void> =>
    // From the count of pending items to the hand-over nothing may interrupt: the count moves with
    // the item, whatever interrupts the caller and when. Only the insertion is interruptible.
    Effect.uninterruptibleMask((restore) => {
    if (owner.closed || (!force && c.status !== "running" && c.status !== "finishing")) return Effect.void
    const callId = (c.base ??= Coordinator.claimBase(coordinator, c.functionCall.callId)) + suffix
    const now = clock.currentTimeMillisUnsafe()
    const { arguments: args, name } = c.functionCall
    const item: Coordinator.Item = {
      owner,
      callId,
      items: [
        Items.functionCall(newId("fc"), callId, name, args, now),
        Items.functionCallOutput(newId("fco"), callId, name, out.output, out.isError, now)
      ],
      inserted: false,
      dropped: () => !force && c.stopCause !== undefined && c.stopCause !== "closed"
    }
    Coordinator.begin(item)
    return Effect.flatMap(Effect.exit(restore(session.insert(item.items))), (exit) => {
        if (Exit.isSuccess(exit)) {
          item.inserted = true
          emit(() => ({ _tag: "ReplyScheduled", toolsetId: id, callId, at: clock.currentTimeMillisUnsafe() }))
          Coordinator.handOver(coordinator, item)
          return Effect.void
        }
        if (owner.closed || c.stopCause !== undefined && !force) {
          // The call is stopping: its interruption goes on; nothing of it reaches the chat.
          Coordinator.settle(item)
          return Cause.hasInterrupts(exit.cause) ? Effect.interrupt : Effect.void
        }
        Coordinator.handOver(coordinator, item)
        return Effect.logWarning("could not insert a tool result into the chat; the reply coordinator will retry", exit.cause)
          .pipe(Effect.annotateLogs({ toolset: id, callId }))
      })
    })

  const encodeUpdate = (c: Call, message: unknown): string => {
    if (typeof message === "string") {
      return Prompts.render(prompts.update, { functionName: c.functionCall.name, callId: c.functionCall.callId, message })
    }
    const json = JSON.stringify(message)
    if (json === undefined) throw new Error("AsyncRunContext.update: the value has no JSON form")
    return json
  }

  /** `AsyncRunContext.update` of a call. The first update settles its output (B2); later ones are delivered (B4). */
  const update = (c: Call, message: unknown): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (c.status !== "running" || owner.closed) return Effect.void
      const text = encodeUpdate(c, message)
      const { callId, name } = c.functionCall
      // Checking and settling the first output is one synchronous step: of two updates racing,
      // exactly one is the first output and the other is `_update_1` (B8).
      if (Lifecycle.settleFirst(registry, c, output(callId, name, text, false, { [pendingKey]: true }))) {
        emit(() => ({ _tag: "CallUpdated", toolsetId: id, callId, name, step: 0, message: eventText(message, text), at: clock.currentTimeMillisUnsafe() }))
        Lifecycle.flush(registry)
        return Effect.void
      }
      const step = ++c.updates
      emit(() => ({ _tag: "CallUpdated", toolsetId: id, callId, name, step, message: eventText(message, text), at: clock.currentTimeMillisUnsafe() }))
      return deliver(c, `_update_${step}`, { output: text, isError: false }, false)
    })

  // --- a call's fiber ----------------------------------------------------------------------------
  /**
   * What a call's fiber runs (it starts uninterruptible): the handler, interruptible, in the
   * call's own scope; then, once the handler returned, the outcome.
   */
  const runCall = (c: Call, args: unknown, callScope: Scope.Closeable): Effect.Effect<void> =>
    Effect.matchCauseEffect(
      Effect.interruptible(Effect.suspend(() => c.tool.tool.handler(args) as Effect.Effect<unknown, unknown>)),
      {
        onSuccess: (value) => finish(c, callScope, Exit.succeed(value)),
        onFailure: (cause) => finish(c, callScope, Exit.failCause(cause))
      }
    )

  /**
   * The handler returned. If the call was still running, its outcome is what the model hears:
   * as the output if it never updated (B3), else as `<callId>_final` (B5). If it was stopped
   * before, nothing is delivered, but a defect (say, in its clean-up) is still logged.
   */
  const finish = (c: Call, callScope: Scope.Closeable, exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> => {
    const won = Lifecycle.handlerReturned(registry, c)
    Lifecycle.flush(registry)
    const close = Scope.closeUnsafe(callScope, exit)
    const then = won ? deliverOutcome(c, exit) : lateFailure(exit)
    return close === undefined ? then : Effect.andThen(close, then)
  }

  const deliverOutcome = (c: Call, exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> =>
    Effect.flatMap(FunctionTool.encodeExit(c.tool.tool, c.functionCall.callId, exit), (result) => {
      const out = result._tag === "Some" ? result.value : undefined
      c.outcome = out?.isError === true ? "error" : "done"
      const { callId, name } = c.functionCall
      if (Lifecycle.settleFirst(registry, c, output(callId, name, out?.output ?? "", out?.isError ?? false))) {
        Lifecycle.flush(registry)
        return Effect.void
      }
      return out === undefined ? Effect.void : deliver(c, "_final", out, false)
    })

  const lateFailure = (exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> =>
    Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)
      ? Effect.logError("tool failed after it was cancelled; nothing is delivered", exit.cause)
      : Effect.void

  /** A call that ran out of time: the model is told at expiry, even inside an uninterruptible region. */
  const timeOut = (c: Call): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (c.status !== "running") return Effect.void
      const answered = c.first === undefined
      Lifecycle.stop(registry, c, "timed-out", (c) => output(c.functionCall.callId, c.functionCall.name, timedOutText(c), true))
      Lifecycle.flush(registry)
      return answered ? deliver(c, "_final", { output: timedOutText(c), isError: true }, true) : Effect.void
    })

  // The context a call's fiber runs with: the caller's (its tracer, its span, its references)
  // under the services captured here, plus the call's own run context, log annotations and
  // scope. Built once per call and set when the fiber is made; the merge is cached per caller
  // context.
  let lastCaller: Context.Context<never> | undefined
  let lastBase: Context.Context<never> = services
  let lastAnnotations: Readonly<Record<string, unknown>> = {}
  let lastTraced = false
  const contextOf = (caller: Context.Context<never>, c: Call, callScope: Scope.Closeable): Context.Context<never> => {
    if (caller !== lastCaller) {
      lastCaller = caller
      lastBase = Context.merge(caller, services)
      lastAnnotations = Context.get(lastBase, References.CurrentLogAnnotations)
      lastTraced = spanPerCall && Context.get(lastBase, Tracer.Tracer) !== Tracer.nativeTracer
    }
    const { callId, name } = c.functionCall
    const runContext = AsyncRunContext.of({
      functionCall: c.functionCall,
      toolsetId: id,
      update: (message) => update(c, message)
    })
    return Context.add(
      Context.add(
        Context.add(lastBase, AsyncRunContext, runContext),
        References.CurrentLogAnnotations,
        { ...lastAnnotations, toolset: id, tool: name, callId }
      ),
      Scope.Scope,
      callScope
    )
  }

  /** Starts a running call's fiber; yields its first output. */
  const launch = (c: Call, args: unknown, caller: Context.Context<never>, restore: Restore): Effect.Effect<FunctionCallOutput> => {
    const first = c.first!
    const callScope = Scope.makeUnsafe()
    const context = contextOf(caller, c, callScope)
    const { arguments: argumentsText, callId, name } = c.functionCall
    emit(() => ({ _tag: "CallStarted", toolsetId: id, callId, name, arguments: argumentsText, at: c.startedAt }))
    runningGauge.modifyUnsafe(1, services)
    const body = runCall(c, args, callScope)
    const fiber = Effect.runForkWith(context)(
      lastTraced
        ? Effect.withSpan(body, "AsyncToolset.call", {
          attributes: { "toolset.id": id, "tool.name": name, "tool.call_id": callId },
          captureStackTrace: false
        })
        : body,
      { uninterruptible: true }
    )
    fiber.addObserver(() => ended(c))
    if (c.status !== "done") {
      c.fiber = fiber
      // Stopped while it ran inline (before the fiber was known): interrupt it now.
      if (c.status === "stopping") fiber.interruptUnsafe()
      if (c.tool.timeout !== undefined && c.status === "running") startTimer(c, c.tool.timeout, context)
    }
    return awaitFirst(c, first, restore)
  }

  const startTimer = (c: Call, timeout: Duration.Duration, context: Context.Context<never>) => {
    const timer = Effect.runForkWith(context)(Effect.andThen(Effect.sleep(timeout), timeOut(c)))
    if (timer.pollUnsafe() !== undefined) return
    c.timer = timer
    timers.add(timer)
    timer.addObserver(() => timers.delete(timer))
  }

  /** The call's fiber ended: out of the tables, counted, reported. */
  const ended = (c: Call) => {
    Lifecycle.fiberEnded(registry, c, cancelledOutput)
    runningGauge.modifyUnsafe(-1, services)
    countEnded(c.functionCall.name, c.outcome)
    emit(() => {
      const at = clock.currentTimeMillisUnsafe()
      return {
        _tag: "CallEnded",
        toolsetId: id,
        callId: c.functionCall.callId,
        name: c.functionCall.name,
        outcome: c.outcome,
        duration: at - c.startedAt,
        at
      }
    })
    Lifecycle.flush(registry)
  }

  /** Waits for the first output. A caller that stops waiting abandons the call: it is cancelled. */
  const awaitFirst = (c: Call, first: Deferred.Deferred<FunctionCallOutput>, restore: Restore) =>
    Effect.onInterrupt(restore(Deferred.await(first)), () => Effect.sync(() => abandon(c)))

  const abandon = (c: Call) => {
    Lifecycle.stop(registry, c, "abandoned", cancelledOutput)
    Lifecycle.flush(registry)
  }

  // --- execute -----------------------------------------------------------------------------------
  const reject = (call: FunctionCall, text: string) => Effect.succeed(output(call.callId, call.name, text, true))

  const execute = (call: FunctionCall): Effect.Effect<FunctionCallOutput> =>
    // From admission until the caller waits for the first output nothing may interrupt: a call
    // admitted but never started, or started with nobody to abandon it, would stay for good.
    Effect.uninterruptibleMask((restore) => Effect.withFiber((caller) => {
      if (call.name === names.getRunningTasks) return restore(FunctionTool.execute(getRunningTasks, call))
      if (call.name === names.cancelTask) return restore(FunctionTool.execute(cancelTask, call))
      const p = tools.get(call.name)
      if (p === undefined) {
        const available = [...tools.keys(), names.getRunningTasks, names.cancelTask].join(", ")
        return reject(call, `Unknown tool "${clip(call.name)}". The available tools are: ${available}.`)
      }
      if (registry.closed) return reject(call, `${call.name} was not run: the toolset is shut down.`)
      const decoded = FunctionTool.decodeArguments(p.visible, call.arguments, { maxLength: maxArgumentsLength })
      if (Result.isFailure(decoded)) return reject(call, decoded.failure.message)
      let args = decoded.success as Record<string, unknown>
      let confirmed = false
      if (p.mode === "confirm" && confirmParameter in args) {
        const { [confirmParameter]: flag, ...rest } = args
        confirmed = flag === true
        args = rest
      }
      switch (checkCallId(call.callId, Lifecycle.isInUse(registry, call.callId))) {
        case "empty":
          return reject(call, `${call.name} was not run: the call has no call id. Call it again with a call id.`)
        case "in-use":
          return reject(call, `${call.name} was not run: a call with id ${clip(call.callId)} is already running.`)
      }
      const key = p.scope === "name" ? call.name : `${call.name}\u0000${p.tool.canonicalArgs(args)}`
      // The duplicate check and the registration are one synchronous step (D5): no other fiber
      // runs between them, so two identical calls at the same instant cannot both pass.
      const decision = decide(p.mode, confirmed, Lifecycle.activeOfKey(registry, key))
      if (decision._tag === "Reject") {
        const vars = { functionName: call.name, runningCalls: describeRunning(decision.running), cancelTool: names.cancelTask }
        switch (decision.reason) {
          case "duplicate":
            return reject(call, Prompts.render(prompts.duplicateReject, vars))
          case "unconfirmed":
            return reject(call, Prompts.render(prompts.duplicateConfirm, { ...vars, confirmParameter }))
          case "not-cancellable":
            return reject(
              call,
              `${call.name} was not started: it would replace running calls that cannot be cancelled:\n${vars.runningCalls}`
            )
        }
      }
      const c = Lifecycle.makeCall(call, p, key, p.cancellable, clock.currentTimeMillisUnsafe())
      if (decision._tag === "Replace") {
        for (const r of decision.replaced) Lifecycle.stop(registry, r, "replaced", cancelledOutput)
        // Two calls of a key never run at once: wait for every call of the key to stop, those
        // still stopping from earlier cancels included (D4).
        Lifecycle.register(registry, c, registry.byKey.get(key) ?? [])
      } else {
        Lifecycle.register(registry, c, [])
      }
      Lifecycle.flush(registry)
      if (c.status === "running") return launch(c, args, caller.context, restore)
      return awaitTurn(c, args, caller.context, restore)
    }))

  /**
   * A replacing call waits for its predecessors to stop. Replaced, cancelled or drained meanwhile,
   * its caller gets the cancelled output at once; a caller that stops waiting abandons it.
   */
  const awaitTurn = (
    c: Call,
    args: unknown,
    caller: Context.Context<never>,
    restore: Restore
  ): Effect.Effect<FunctionCallOutput> => {
    const first = c.first!
    return Effect.onInterrupt(restore(Deferred.await(c.gate!)), () => Effect.sync(() => abandon(c))).pipe(
      Effect.flatMap(() => Lifecycle.start(c) ? launch(c, args, caller, restore) : awaitFirst(c, first, restore))
    )
  }

  // --- cancel, drain, close ----------------------------------------------------------------------
  const cancel = (callId: string): Effect.Effect<CancelResult> =>
    Effect.sync(() => {
      const c = registry.byId.get(callId)
      // Asked again while it stops: it is being cancelled, as the model wanted.
      if (c === undefined) return Lifecycle.isStopping(registry, callId) ? "cancelled" : "not-found"
      if (!c.cancellable) return "not-cancellable"
      Lifecycle.stop(registry, c, "cancelled", cancelledOutput)
      Lifecycle.flush(registry)
      return "cancelled"
    })

  const runningTasks = Effect.sync((): ReadonlyArray<RunningTask> => {
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
  })

  const drain = Effect.suspend(() => {
    for (const c of Array.from(registry.live)) {
      if (c.cancellable) Lifecycle.stop(registry, c, "drained", cancelledOutput)
    }
    Lifecycle.flush(registry)
    return waitUntil(() => registry.live.size === 0)
  })

  // --- management tools --------------------------------------------------------------------------
  const getRunningTasks = FunctionTool.make(names.getRunningTasks, {
    description: `List the calls of the "${id}" tools still running in the background.`
  }, () =>
    Effect.map(runningTasks, (tasks) =>
      tasks.map((t) => ({
        call_id: t.callId,
        name: t.name,
        arguments: t.arguments,
        status: t.status,
        cancellable: t.cancellable
      }))))

  const cancelTask = FunctionTool.make(names.cancelTask, {
    description: `Cancel a call of the "${id}" tools still running in the background, by its call id.`,
    parameters: Schema.Struct({ call_id: Schema.String.annotate({ description: "The call id to cancel" }) })
  }, ({ call_id }) =>
    Effect.map(cancel(call_id), (result) => {
      switch (result) {
        case "cancelled":
          return `Call ${clip(call_id)} was cancelled.`
        case "not-found":
          return `No running call has id ${clip(call_id)}; it may have finished already. ${names.getRunningTasks} lists the running calls.`
        case "not-cancellable":
          return `Call ${clip(call_id)} cannot be cancelled: ${
            registry.byId.get(call_id)?.functionCall.name ?? "this tool"
          } does not allow it once started. It will finish on its own.`
      }
    }))

  return {
    id,
    tools: [...Array.from(tools.values(), (p) => p.visible), getRunningTasks, cancelTask],
    execute,
    cancel,
    runningTasks,
    awaitIdle: waitUntil(() => registry.live.size === 0 && owner.pending === 0),
    drain,
    close: Scope.close(scope, Exit.void),
    events
  } satisfies AsyncToolset
})

/** Checks the toolset's tools and prepares each as the model sees it. */
const prepare = <Tools extends ReadonlyArray<FunctionTool.Any>>(
  options: Options<Tools>,
  prompts: Prompts.Prompts,
  names: { readonly getRunningTasks: string; readonly cancelTask: string }
): Result.Result<Map<string, Prepared>, Error> => {
  const prepared = new Map<string, Prepared>()
  for (const tool of options.tools) {
    if (prepared.has(tool.name) || tool.name === names.getRunningTasks || tool.name === names.cancelTask) {
      return Result.fail(new Error(`AsyncToolset.make: two tools are named "${tool.name}"`))
    }
    const mode = tool.options.onDuplicateCall ?? options.onDuplicateCall ?? "confirm"
    if (mode === "confirm" && confirmParameter in tool.parameters.fields) {
      return Result.fail(
        new Error(`AsyncToolset.make: ${tool.name} has a parameter named "${confirmParameter}", which confirm mode adds`)
      )
    }
    const visible = mode === "confirm"
      ? FunctionTool.mapParameters(
        tool,
        Schema.Struct({
          ...tool.parameters.fields,
          [confirmParameter]: Schema.optionalKey(Schema.Boolean).annotate({
            description: Prompts.render(prompts.confirmParameter, { functionName: tool.name })
          })
        }),
        tool.handler
      )
      : tool
    prepared.set(tool.name, {
      tool,
      visible,
      mode,
      scope: tool.options.duplicateScope ?? options.duplicateScope ?? "name",
      cancellable: tool.options.cancellable ?? true,
      timeout: tool.options.timeout === undefined ? undefined : Duration.fromInputUnsafe(tool.options.timeout)
    })
  }
  return Result.succeed(prepared)
}

/** The update as the tool gave it, for events: its string, or the JSON of its value. */
const eventText = (message: unknown, text: string): string => typeof message === "string" ? message : text

/** Model input echoed in an output is cut short: the model needs to recognise it, not read it back. */
const clip = (s: string, max = 200): string => s.length <= max ? s : `${s.slice(0, max)}… (${s.length} characters)`
