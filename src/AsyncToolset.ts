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
 * Its calls run in this process. The engine (one call lifecycle, one admission, one reply
 * coordinator) is shared with the durable toolset, which differs only in its call store:
 * `internal/toolset.ts` composes it, `internal/callStore.ts` is this toolset's store.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import type { Duration, Metric, Schedule, Scope, Stream } from "effect"
import type { AgentSession } from "./AgentSession.ts"
import type { AsyncRunContext } from "./AsyncRunContext.ts"
import type { FunctionCall, FunctionCallOutput } from "./ChatContext.ts"
import type * as FunctionTool from "./FunctionTool.ts"
import * as CallRun from "./internal/callRun.ts"
import { memory } from "./internal/callStore.ts"
import * as ToolTable from "./internal/toolTable.ts"
import * as Engine from "./internal/toolset.ts"
import type * as Prompts from "./Prompts.ts"
import type { ToolsetEvent } from "./ToolsetEvent.ts"

/**
 * The key set in a first-update output's `extra`: the call is still running in the background.
 *
 * @since 0.1.0
 * @category constants
 */
export const pendingKey = CallRun.pendingKey

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
export const confirmParameter: "confirm_duplicate" = ToolTable.confirmParameter

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
   * How long one reply request may take (reading the chat and asking; waits for the session to be
   * inactive are not counted) before it is given up and reported, so a stalled session never
   * holds back later replies. A request that failed is asked again by `sessionRetry`, each time
   * within this bound; one that did not answer in time is not repeated. Default 2 minutes.
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
export const runningCalls: Metric.Gauge<number> = Engine.runningCalls

/**
 * Calls ended, per toolset, tool and outcome (`toolset`, `tool`, `outcome` attributes).
 *
 * @since 0.1.0
 * @category metrics
 */
export const callsEnded: Metric.Counter<number> = Engine.callsEnded


/**
 * Builds a toolset in the current scope; closing the scope closes it. Its calls run in this
 * process (`DurableToolset` keeps them in a store, to survive a restart).
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
export const make = <const Tools extends ReadonlyArray<FunctionTool.Any>>(
  options: Options<Tools>
): Effect.Effect<
  AsyncToolset,
  never,
  Scope.Scope | AgentSession | Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext>
> => Effect.map(Engine.make(options, inMemory), (built) => built.toolset)

const inMemory: Engine.Setup = { who: "AsyncToolset.make", store: memory, hooks: undefined }
