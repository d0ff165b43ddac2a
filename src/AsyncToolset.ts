/**
 * Runs long tools in the background of a conversation.
 *
 * The model calls a tool; the call runs in its own fiber, owned by the toolset's scope. The first
 * `update` the tool makes is handed back to the model at once (through a `Deferred`), so the agent
 * can tell the user the work has started and the conversation goes on. Later updates and the final
 * result are inserted into the chat as they come and queued; one reply fiber waits until the
 * session is idle, takes everything pending at once, and asks the agent for one reply covering it.
 *
 * @since 0.1.0
 */
import {
  Cause,
  Clock,
  Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Metric,
  Option,
  PubSub,
  Queue,
  References,
  Result,
  Schedule,
  Schema,
  Scope,
  Stream
} from "effect"
import { AgentSession } from "./AgentSession.ts"
import { AsyncRunContext } from "./AsyncRunContext.ts"
import { functionCall as makeFunctionCall, functionCallOutput } from "./ChatContext.ts"
import type { ChatItem, FunctionCall, FunctionCallOutput } from "./ChatContext.ts"
import * as FunctionTool from "./FunctionTool.ts"
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
   * Wrap each call in an `AsyncToolset.call` span (default `true`). A span is kept for as long as
   * its call runs (about 3 KB each); turn it off for very many concurrent calls.
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
  /** Interrupts every call and the reply fiber; later calls get an error output. */
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

/** One running call. Mutable, and only touched synchronously, so every check is atomic. */
interface Call {
  readonly call: FunctionCall
  readonly tool: Prepared
  readonly key: string
  readonly startedAt: number
  /** Completed by the first update; swapped for `handedOff` once the caller has the output. */
  first: Deferred.Deferred<FunctionCallOutput>
  fiber: Fiber.Fiber<void> | undefined
  state: "running" | "cancelling" | "done"
  /** Cancelled, timed out or replaced: its items still waiting for an insertion retry are dropped. */
  detached: boolean
  updates: number
  outcome: Outcome
}

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

/** Items inserted into the chat (or waiting to be), and owed a reply. */
interface Pending {
  readonly callId: string
  readonly items: ReadonlyArray<ChatItem>
  /** The call that delivered the items, and whether they go even if it was cancelled (its timeout notice). */
  readonly call: Call
  readonly force: boolean
  inserted: boolean
}

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
  const prompts: Prompts.Prompts = { ...Prompts.defaults, ...options.prompts }
  const whenAlreadyAnswered = options.whenAlreadyAnswered ?? "ask"
  const maxArgumentsLength = options.maxArgumentsLength ?? FunctionTool.defaultMaxArgumentsLength
  const sessionRetry = options.sessionRetry ??
    Schedule.exponential("100 millis").pipe(Schedule.upTo({ times: 3 }))
  const replyTimeout = Duration.fromInputUnsafe(options.replyTimeout ?? "2 minutes")
  const spanPerCall = options.spanPerCall ?? true

  const clock = yield* Clock.clockWith(Effect.succeed)
  const runningGauge = Metric.withAttributes(runningCalls, { toolset: id })
  const endedCounters = new Map<string, Metric.Metric<number, unknown>>()
  const endedCounter = (tool: string, outcome: Outcome) => {
    const key = `${tool}\u0000${outcome}`
    let counter = endedCounters.get(key)
    if (counter === undefined) {
      counter = Metric.withAttributes(callsEnded, { toolset: id, tool, outcome })
      endedCounters.set(key, counter)
    }
    return counter
  }

  const getRunningTasksName = `get_running_tasks_${id}`
  const cancelTaskName = `cancel_task_${id}`

  // --- the tools -------------------------------------------------------------------------------
  const prepared = new Map<string, Prepared>()
  for (const tool of options.tools) {
    if (prepared.has(tool.name) || tool.name === getRunningTasksName || tool.name === cancelTaskName) {
      return yield* Effect.die(new Error(`AsyncToolset.make: two tools are named "${tool.name}"`))
    }
    const mode = tool.options.onDuplicateCall ?? options.onDuplicateCall ?? "confirm"
    if (mode === "confirm" && confirmParameter in tool.parameters.fields) {
      return yield* Effect.die(
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

  // --- state: plain mutable maps, only read and written in synchronous steps --------------------
  const active = new Map<string, Call>() // call id -> the running call with that id
  const byKey = new Map<string, Set<Call>>() // duplicate key -> running calls
  const stopping = new Set<Call>() // cancelled, not yet stopped (still reported by runningTasks)
  let pendingReplies = 0 // items queued or being replied to
  let closed = false
  const waiters = new Set<{ readonly ready: () => boolean; readonly done: Deferred.Deferred<void> }>()

  const noCalls = () => active.size === 0 && stopping.size === 0
  const isIdle = () => noCalls() && pendingReplies === 0
  const notify = () => {
    for (const waiter of waiters) {
      if (waiter.ready()) {
        waiters.delete(waiter)
        Deferred.doneUnsafe(waiter.done, Exit.void)
      }
    }
  }
  const waitUntil = (ready: () => boolean): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (ready()) return Effect.void
      const waiter = { ready, done: Deferred.makeUnsafe<void>() }
      waiters.add(waiter)
      return Deferred.await(waiter.done).pipe(Effect.onInterrupt(() => Effect.sync(() => waiters.delete(waiter))))
    })

  const unregister = (c: Call) => {
    if (active.get(c.call.callId) === c) active.delete(c.call.callId) // a newer call may own the id (E5)
    const set = byKey.get(c.key)
    if (set !== undefined) {
      set.delete(c)
      if (set.size === 0) byKey.delete(c.key)
    }
  }

  /** Stops listening to a call: from now on its updates and result are dropped (E2). */
  const detach = (c: Call) => {
    c.state = "cancelling"
    c.detached = true
    unregister(c)
    stopping.add(c)
    notify()
  }

  /** Marks a call cancelled and interrupts it without waiting (the fiber may be uninterruptible). */
  const cancelUnsafe = (c: Call) => {
    if (c.state !== "running") return
    detach(c)
    c.fiber?.interruptUnsafe()
  }

  /** Forgets a call whose fiber never started. */
  const forget = (c: Call) => {
    c.state = "done"
    unregister(c)
    stopping.delete(c)
    notify()
  }

  // --- scopes: calls and the reply fiber die with the toolset ----------------------------------
  // Finalizers run last-added first: on close, `closed` is set (nothing new is delivered), the
  // reply fiber is interrupted, every call is interrupted (in parallel), and last the items still
  // queued are let go, so `awaitIdle` completes. They are in the chat already.
  const parent = yield* Scope.Scope
  const scope = yield* Scope.fork(parent, "sequential")
  // Shut down last, so subscribers see the calls that close interrupts end.
  const pubsub = yield* PubSub.unbounded<ToolsetEvent>()
  yield* Scope.addFinalizer(scope, PubSub.shutdown(pubsub))
  const queue = yield* Queue.unbounded<Pending>()
  yield* Scope.addFinalizer(
    scope,
    Effect.flatMap(Queue.clear(queue), (left) =>
      Effect.andThen(
        letGo(left),
        Effect.sync(() => {
          pendingReplies -= left.length
          notify()
        })
      ))
  )
  const callsScope = yield* Scope.fork(scope, "parallel")
  const emit = (event: ToolsetEvent) => {
    PubSub.publishUnsafe(pubsub, event)
  }

  /** Says which items the toolset lets go as it closes: those not in the chat, and those owed a reply. */
  const letGo = (items: ReadonlyArray<Pending>) =>
    Effect.gen(function*() {
      const lost = items.filter((item) => !item.inserted && !(item.call.detached && !item.force)).map((item) => item.callId)
      const unanswered = items.filter((item) => item.inserted).map((item) => item.callId)
      if (lost.length > 0) yield* Effect.logError(`closing: ${lost.join(", ")} never reached the chat`)
      if (unanswered.length > 0) yield* Effect.logInfo(`closing: no reply will be requested for ${unanswered.join(", ")} (they are in the chat)`)
    }).pipe(Effect.annotateLogs({ toolset: id }))

  // --- outputs ---------------------------------------------------------------------------------
  const output = (callId: string, name: string, text: string, isError: boolean, extra?: Record<string, unknown>) =>
    functionCallOutput({ callId, name, output: text, isError, extra })

  const describeRunning = (calls: Iterable<Call>) =>
    Array.from(calls, (c) => `- call_id ${clip(c.call.callId)}, arguments ${clip(c.call.arguments)}`).join("\n")

  const cancelledOutput = (c: Call) =>
    output(
      c.call.callId,
      c.call.name,
      Prompts.render(prompts.cancelled, { functionName: c.call.name, callId: c.call.callId }),
      true
    )

  /**
   * Inserts items now (C1) and queues them for the reply fiber; items of a cancelled call are
   * dropped (E2), except the toolset's own word that the call timed out (`force`).
   */
  const deliver = (c: Call, suffix: string, out: FunctionTool.Output, force = false) =>
    // Uninterruptible but for the insertion itself: the count of items owed a reply must move with
    // the queue, whatever interrupts the caller and when.
    Effect.uninterruptible(Effect.gen(function*() {
      if ((c.state !== "running" && !force) || closed) return
      const callId = `${c.call.callId}${suffix}`
      const items: ReadonlyArray<ChatItem> = [
        yield* makeFunctionCall({ callId, name: c.call.name, arguments: c.call.arguments }),
        yield* output(callId, c.call.name, out.output, out.isError)
      ]
      if ((c.state !== "running" && !force) || closed) return
      pendingReplies++
      // Insert before queueing: the reply fiber retries only items whose insertion failed, so an
      // insertion still in flight can never be made twice. The insertion stays interruptible even
      // when called from `finish`, so a hanging session cannot keep a call (or `close`) stuck.
      const inserted = yield* session.insert(items).pipe(
        Effect.interruptible,
        Effect.as(true),
        Effect.catchCause((cause) =>
          Cause.hasInterruptsOnly(cause)
            ? Effect.interrupt
            : Effect.as(
              Effect.logWarning("could not insert a tool result into the chat; the reply fiber will retry", cause),
              false
            )
        ),
        Effect.onInterrupt(() =>
          Effect.sync(() => {
            pendingReplies--
            notify()
          })
        ),
        Effect.annotateLogs({ toolset: id, callId })
      )
      yield* Queue.offer(queue, { callId, items, call: c, force, inserted })
      emit({ _tag: "ReplyScheduled", toolsetId: id, callId, at: clock.currentTimeMillisUnsafe() })
    }))

  const encodeUpdate = (c: Call, message: unknown): string => {
    if (typeof message === "string") {
      return Prompts.render(prompts.update, { functionName: c.call.name, callId: c.call.callId, message })
    }
    const json = JSON.stringify(message)
    if (json === undefined) throw new Error("AsyncRunContext.update: the value has no JSON form")
    return json
  }

  const update = (c: Call) => (message: unknown): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (c.state !== "running") return Effect.void
      const text = encodeUpdate(c, message)
      emit({
        _tag: "CallUpdated",
        toolsetId: id,
        callId: c.call.callId,
        name: c.call.name,
        step: Deferred.isDoneUnsafe(c.first) ? c.updates + 1 : 0,
        message: typeof message === "string" ? message : text,
        at: clock.currentTimeMillisUnsafe()
      })
      if (!Deferred.isDoneUnsafe(c.first)) {
        // The first update completes the call for the model: it can answer the user now, and the
        // tool goes on in the background.
        return Effect.flatMap(
          output(c.call.callId, c.call.name, text, false, { [pendingKey]: true }),
          (out) => Deferred.succeed(c.first, out)
        )
      }
      c.updates++
      return deliver(c, `_update_${c.updates}`, { output: text, isError: false })
    })

  /** Runs in the call's fiber, uninterruptibly, once the tool has ended. */
  const finish = (c: Call, exit: Exit.Exit<unknown, unknown>) =>
    Effect.gen(function*() {
      if (c.state !== "running" || (Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause))) {
        // Nothing is delivered, but a defect (e.g. in the tool's clean-up) is still the developer's to know.
        if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) {
          yield* Effect.logError("tool failed after it was cancelled; nothing is delivered", exit.cause)
        }
        if (!Deferred.isDoneUnsafe(c.first)) yield* Deferred.succeed(c.first, yield* cancelledOutput(c))
        return
      }
      const result = yield* FunctionTool.encodeExit(c.tool.tool, c.call.callId, exit)
      c.outcome = Option.isSome(result) && result.value.isError ? "error" : "done"
      if (!Deferred.isDoneUnsafe(c.first)) {
        // Never updated: the tool behaves as a plain blocking tool (B3).
        const out = Option.getOrElse(result, () => ({ output: "", isError: false }))
        yield* Deferred.succeed(c.first, yield* output(c.call.callId, c.call.name, out.output, out.isError))
        return
      }
      if (Option.isSome(result)) yield* deliver(c, "_final", result.value)
    })

  const runCall = (c: Call, args: unknown) => {
    const runContext = AsyncRunContext.of({ functionCall: c.call, toolsetId: id, update: update(c) })
    // The fiber is the call's own: its context is set once and never restored (an
    // `updateContext`, `annotateLogs` or `withSpan` around the call would copy the context again
    // and keep a frame on the fiber for as long as the call runs). The tool sees the services
    // captured by `make` over the caller's context, its run context and the call's log annotations.
    const run = Effect.withFiber((fiber) => {
      const context = Context.add(Context.merge(fiber.context, services), AsyncRunContext, runContext)
      fiber.setContext(Context.add(context, References.CurrentLogAnnotations, {
        ...Context.get(context, References.CurrentLogAnnotations),
        toolset: id,
        tool: c.call.name,
        callId: c.call.callId
      }))
      return Effect.uninterruptibleMask((restore) =>
        // The services the handler needs are in the context set above.
        // Its own scope: what the tool acquires is released when the call ends, not when the toolset closes.
        restore(Effect.scoped(Effect.suspend(() => c.tool.tool.handler(args) as Effect.Effect<unknown, unknown>))).pipe(
          Effect.exit,
          Effect.flatMap((exit) =>
          finish(c, exit).pipe(
            // Encoding the outcome must not pass for a cancellation: the model gets the generic error.
            Effect.catchCause((cause) =>
              Cause.hasInterruptsOnly(cause) ? Effect.failCause(cause) : Effect.gen(function*() {
                yield* Effect.logError("could not deliver the tool's outcome", cause)
                c.outcome = "error"
                const fallback = FunctionTool.internalError(c.call.name)
                if (!Deferred.isDoneUnsafe(c.first)) {
                  yield* Deferred.succeed(c.first, yield* output(c.call.callId, c.call.name, fallback.output, true))
                }
              })
            )
          )
        )
        )
      )
    })
    return spanPerCall
      ? Effect.withSpan(run, "AsyncToolset.call", {
        attributes: { "toolset.id": id, "tool.name": c.call.name, "tool.call_id": c.call.callId }
      })
      : run
  }

  // --- execute -----------------------------------------------------------------------------------
  const execute = (call: FunctionCall): Effect.Effect<FunctionCallOutput> =>
    Effect.suspend(() => {
      if (call.name === getRunningTasksName || call.name === cancelTaskName) {
        return call.name === cancelTaskName
          ? FunctionTool.execute(cancelTask, call)
          : FunctionTool.execute(getRunningTasks, call)
      }
      const p = prepared.get(call.name)
      if (p === undefined) {
        const names = [...prepared.keys(), getRunningTasksName, cancelTaskName].join(", ")
        return output(call.callId, call.name, `Unknown tool "${clip(call.name)}". The available tools are: ${names}.`, true)
      }
      if (closed) {
        return output(call.callId, call.name, `${call.name} was not run: the toolset is shut down.`, true)
      }
      const decoded = FunctionTool.decodeArguments(p.visible, call.arguments, { maxLength: maxArgumentsLength })
      if (Result.isFailure(decoded)) return output(call.callId, call.name, decoded.failure.message, true)
      let args = decoded.success as Record<string, unknown>
      let confirmed = false
      if (p.mode === "confirm") {
        const { [confirmParameter]: flag, ...rest } = args
        confirmed = flag === true
        args = rest
      }
      const key = p.scope === "name" ? call.name : `${call.name}\u0000${p.tool.canonicalArgs(args)}`
      return start(call, p, key, args, confirmed)
    })

  const start = (call: FunctionCall, p: Prepared, key: string, args: unknown, confirmed: boolean) =>
    // From admission to the observer nothing may interrupt: a call registered but never started (or
    // started but never observed) would stay in the registry for good. Only the waits are interruptible.
    Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
      const startedAt = yield* Effect.clockWith((clock) => clock.currentTimeMillis)
      const first = yield* Deferred.make<FunctionCallOutput>()
      const c: Call = {
        call,
        tool: p,
        key,
        startedAt,
        first,
        fiber: undefined,
        state: "running",
        detached: false,
        updates: 0,
        outcome: "cancelled"
      }

      // The duplicate check and the registration are one synchronous step (D5): no other fiber can
      // run between them, so two identical calls at the same instant cannot both pass.
      const admission = ((): { readonly reject: string } | { readonly replaced: ReadonlyArray<Call> } => {
        if (active.has(call.callId)) return { reject: `A call with id ${call.callId} is already running.` }
        const running = byKey.get(key)
        let replaced: ReadonlyArray<Call> = []
        if (running !== undefined && running.size > 0 && p.mode !== "allow") {
          const vars = { functionName: call.name, runningCalls: describeRunning(running), cancelTool: cancelTaskName }
          if (p.mode === "reject") return { reject: Prompts.render(prompts.duplicateReject, vars) }
          if (p.mode === "confirm" && !confirmed) {
            return { reject: Prompts.render(prompts.duplicateConfirm, { ...vars, confirmParameter }) }
          }
          if (p.mode === "replace") {
            const stuck = [...running].filter((r) => !r.tool.cancellable)
            if (stuck.length > 0) {
              return {
                reject: `${call.name} was not started: it would replace running calls that cannot be cancelled:\n${
                  describeRunning(stuck)
                }`
              }
            }
            replaced = [...running]
            for (const r of replaced) cancelUnsafe(r)
          }
        }
        active.set(call.callId, c)
        const set = byKey.get(key)
        if (set === undefined) byKey.set(key, new Set([c]))
        else set.add(c)
        return { replaced }
      })()
      if ("reject" in admission) return yield* output(call.callId, call.name, admission.reject, true)

      // Replaced calls stop before their successor starts, so two bookings never overlap. The
      // successor may be cancelled meanwhile, or its caller may give up: then it never runs.
      if (admission.replaced.length > 0) {
        yield* restore(waitUntil(() => c.state !== "running" || admission.replaced.every((r) => r.state === "done")))
          .pipe(Effect.onInterrupt(() => Effect.sync(() => forget(c))))
        if (c.state !== "running") {
          forget(c)
          return yield* restore(Deferred.await(first))
        }
      }

      emit({
        _tag: "CallStarted",
        toolsetId: id,
        callId: call.callId,
        name: call.name,
        arguments: call.arguments,
        at: startedAt
      })
      runningGauge.modifyUnsafe(1, services)
      const fiber = yield* runCall(c, args).pipe(Effect.forkIn(callsScope, { startImmediately: true }))
      c.fiber = fiber
      if ((c.state as Call["state"]) === "cancelling") fiber.interruptUnsafe()
      const timer = p.timeout === undefined
        ? undefined
        : yield* Effect.sleep(p.timeout).pipe(Effect.andThen(timeOut(c)), Effect.forkIn(callsScope, { startImmediately: true }))
      // Runs after the fiber has fully ended, whatever ended it (even a fiber that never started).
      fiber.addObserver(() => {
        if (c.outcome !== "timed-out") timer?.interruptUnsafe() // a fired timer finishes telling the model
        if (!Deferred.isDoneUnsafe(c.first)) {
          Deferred.doneUnsafe(c.first, cancelledOutput(c))
        }
        c.state = "done"
        unregister(c)
        stopping.delete(c)
        const at = clock.currentTimeMillisUnsafe()
        runningGauge.modifyUnsafe(-1, services)
        endedCounter(c.call.name, c.outcome).updateUnsafe(1, services)
        emit({
          _tag: "CallEnded",
          toolsetId: id,
          callId: c.call.callId,
          name: c.call.name,
          outcome: c.outcome,
          duration: at - c.startedAt,
          at
        })
        notify()
      })
      const out = yield* restore(Deferred.await(first))
      // The caller has the output now: do not keep it for as long as the call runs.
      c.first = handedOff
      return out
    }))

  /**
   * A timeout answers the model at expiry, even if the tool is in an uninterruptible region: the
   * call is detached first (later updates and its result are dropped), the model is told, and the
   * fiber is interrupted without waiting for it.
   */
  const timeOut = (c: Call) =>
    Effect.gen(function*() {
      if (c.state !== "running") return
      c.outcome = "timed-out"
      detach(c)
      const text = Prompts.render(prompts.timedOut, {
        functionName: c.call.name,
        callId: c.call.callId,
        timeout: Duration.format(c.tool.timeout ?? Duration.zero)
      })
      if (!Deferred.isDoneUnsafe(c.first)) {
        yield* Deferred.succeed(c.first, yield* output(c.call.callId, c.call.name, text, true))
      } else {
        yield* deliver(c, "_final", { output: text, isError: true }, true)
      }
      c.fiber?.interruptUnsafe()
    })

  // --- cancel, drain, close ----------------------------------------------------------------------
  const cancel = (callId: string): Effect.Effect<CancelResult> =>
    Effect.suspend(() => {
      const c = active.get(callId)
      if (c === undefined) {
        // Asked again while it stops: it is being cancelled, as the model wanted.
        for (const s of stopping) if (s.call.callId === callId) return Effect.succeed("cancelled")
        return Effect.succeed("not-found")
      }
      if (!c.tool.cancellable) return Effect.succeed("not-cancellable")
      cancelUnsafe(c)
      // The caller still waiting on the first update gets a clear answer now, not when the fiber stops.
      if (Deferred.isDoneUnsafe(c.first)) return Effect.succeed("cancelled")
      return Effect.as(
        Effect.flatMap(cancelledOutput(c), (out) => Deferred.succeed(c.first, out)),
        "cancelled"
      )
    })

  const runningTasks = Effect.sync((): ReadonlyArray<RunningTask> => {
    const tasks: Array<RunningTask> = []
    for (const c of active.values()) tasks.push(toRunningTask(c, "running", c.tool.cancellable))
    for (const c of stopping) tasks.push(toRunningTask(c, "cancelling", false))
    return tasks
  })

  const drain = Effect.suspend(() => {
    for (const c of [...active.values()]) if (c.tool.cancellable) cancelUnsafe(c)
    return waitUntil(noCalls)
  })

  const close = Scope.close(scope, Exit.void)

  // --- management tools --------------------------------------------------------------------------
  const getRunningTasks = FunctionTool.make(getRunningTasksName, {
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

  const cancelTask = FunctionTool.make(cancelTaskName, {
    description: `Cancel a call of the "${id}" tools still running in the background, by its call id.`,
    parameters: Schema.Struct({ call_id: Schema.String.annotate({ description: "The call id to cancel" }) })
  }, ({ call_id }) =>
    Effect.map(cancel(call_id), (result) => {
      switch (result) {
        case "cancelled":
          return `Call ${call_id} was cancelled.`
        case "not-found":
          return `No running call has id ${clip(call_id)}; it may have finished already. ${getRunningTasksName} lists the running calls.`
        case "not-cancellable":
          return `Call ${call_id} cannot be cancelled: ${
            active.get(call_id)?.call.name ?? "this tool"
          } does not allow it once started. It will finish on its own.`
      }
    }))

  // --- the reply fiber ---------------------------------------------------------------------------
  const retryInsert = (batch: ReadonlyArray<Pending>) =>
    Effect.forEach(batch, (item) =>
      item.inserted ? Effect.void : item.call.detached && !item.force
        ? Effect.logDebug(`${item.callId} is not inserted: its call was cancelled before the insertion worked`)
        : session.insert(item.items).pipe(
        Effect.retry(sessionRetry),
        Effect.tap(() => Effect.sync(() => item.inserted = true)),
        Effect.catchCause((cause) =>
          Effect.logError(`could not insert ${item.callId} into the chat; no reply is requested for it`, cause)
        )
      ), { discard: true })

  const replyOnce = Effect.gen(function*() {
    const first = yield* Queue.takeAll(queue)
    const batch: Array<Pending> = [...first]
    yield* Effect.gen(function*() {
      // Items that arrived while we waited join this reply; if one of them could not be inserted,
      // retry it too (inserting may suspend, so wait for idle again afterwards).
      let late: ReadonlyArray<Pending> = []
      do {
        yield* session.awaitInactive
        yield* retryInsert(batch)
        yield* session.awaitInactive
        // From here to the reply request nothing may suspend: the session is idle now, and
        // whatever arrived while we waited joins this one reply instead of causing another.
        late = yield* Queue.clear(queue)
        batch.push(...late)
      } while (late.some((item) => !item.inserted))
      const ready = batch.filter((item) => item.inserted)
      if (ready.length === 0) return
      const callIds = ready.map((item) => item.callId)
      // Reading the chat only picks the wording; if it fails, ask as if the items were at the tail.
      const covered = yield* session.items.pipe(
        Effect.map((items) => spokeAfter(items, ready)),
        Effect.catchCause((cause) =>
          Cause.hasInterruptsOnly(cause) ? Effect.failCause(cause) : Effect.as(
            Effect.logWarning(`could not read the chat; asking for the reply for ${callIds.join(", ")} as if they were the latest`, cause),
            false
          )
        )
      )
      if (covered && whenAlreadyAnswered === "skip") {
        yield* Effect.logDebug("agent already spoke after the pending results; no reply requested")
        emit({ _tag: "ReplySkipped", toolsetId: id, callIds, reason: "already-answered", at: clock.currentTimeMillisUnsafe() })
        return
      }
      const pendingCallIds = callIds.join(", ")
      const instructions = Prompts.render(covered ? prompts.replyMaybeCovered : prompts.replyAtTail, { pendingCallIds })
      // A retry waits for the session to be inactive again: the first attempt may have failed
      // because the agent got busy.
      let attempt = 0
      yield* Effect.suspend(() =>
        attempt++ === 0
          ? session.generateReply({ instructions, toolChoice: "none" })
          : Effect.andThen(session.awaitInactive, session.generateReply({ instructions, toolChoice: "none" }))
      ).pipe(
        Effect.retry(sessionRetry),
        // Bounds the request and its retries. A timed-out request is not retried: the session may
        // still make that reply (an agent queues it), and a second request would repeat it.
        Effect.timeout(replyTimeout),
        Effect.matchCauseEffect({
          onSuccess: () =>
            Effect.sync(() =>
              emit({ _tag: "ReplyDelivered", toolsetId: id, callIds, instructions, at: clock.currentTimeMillisUnsafe() })
            ),
          onFailure: (cause) =>
            Effect.andThen(
              Effect.logError(
                `the reply for ${pendingCallIds} could not be requested; the results are in the chat for the next reply`,
                cause
              ),
              Effect.sync(() =>
                emit({ _tag: "ReplySkipped", toolsetId: id, callIds, reason: "session-failed", at: clock.currentTimeMillisUnsafe() })
              )
            )
        })
      )
    }).pipe(
      Effect.catchCause((cause) =>
        Cause.hasInterruptsOnly(cause) ? Effect.failCause(cause) : Effect.logError(
          `reply fiber step failed; no reply was requested for ${batch.map((item) => item.callId).join(", ")}`,
          cause
        )
      ),
      Effect.onInterrupt(() => letGo(batch)),
      Effect.ensuring(Effect.sync(() => {
        pendingReplies -= batch.length
        notify()
      }))
    )
  })

  yield* replyOnce.pipe(
    Effect.forever,
    Effect.annotateLogs({ toolset: id }),
    Effect.forkIn(scope, { startImmediately: true })
  )
  yield* Scope.addFinalizer(
    scope,
    Effect.sync(() => {
      closed = true
    })
  )

  return {
    id,
    tools: [...Array.from(prepared.values(), (p) => p.visible), getRunningTasks, cancelTask],
    execute,
    cancel,
    runningTasks,
    awaitIdle: waitUntil(isIdle),
    drain,
    close,
    events: Stream.fromPubSub(pubsub)
  } satisfies AsyncToolset
})

/** Model input echoed in an output is cut short: the model needs to recognise it, not read it back. */
const clip = (s: string, max = 200): string => s.length <= max ? s : `${s.slice(0, max)}… (${s.length} characters)`

/** Stands for a first output already handed to its caller. */
const handedOff: Deferred.Deferred<FunctionCallOutput> = Deferred.makeUnsafe<FunctionCallOutput>()
Deferred.doneUnsafe(handedOff, Effect.die(new Error("AsyncToolset: a first output is read once")))

const toRunningTask = (c: Call, status: RunningTask["status"], cancellable: boolean): RunningTask => ({
  callId: c.call.callId,
  name: c.call.name,
  arguments: c.call.arguments,
  status,
  cancellable,
  startedAt: c.startedAt
})

/**
 * Whether the agent spoke after the newest pending item: an assistant message stands after it in
 * the chat. Compared by position, not time, so items created in the same millisecond are ordered
 * correctly. Only the tail after our items is scanned.
 */
const spokeAfter = (items: ReadonlyArray<ChatItem>, pending: ReadonlyArray<Pending>): boolean => {
  const ours = new Set<string>()
  for (const p of pending) for (const item of p.items) ours.add(item.id)
  for (let i = items.length - 1; i >= 0; i--) {
    const item = items[i]!
    if (ours.has(item.id)) return false
    if (item._tag === "ChatMessage" && item.role === "assistant") return true
  }
  return false
}
