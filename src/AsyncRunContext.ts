/**
 * The service a background tool uses to talk while it works. A tool that requires
 * `AsyncRunContext` can `update` the conversation: the first update becomes the call's output
 * (the model can answer the user at once), later ones reach the chat as they come.
 *
 * @since 0.1.0
 */
import { Context, Effect } from "effect"
import type { FunctionCall } from "./ChatContext.ts"

/**
 * @since 0.1.0
 * @category services
 */
export class AsyncRunContext extends Context.Service<AsyncRunContext, {
  /** The model's call this run serves. */
  readonly functionCall: FunctionCall
  /** The id of the toolset running it. */
  readonly toolsetId: string
  /**
   * Reports progress. A string goes through the update template; any other value is sent as JSON.
   * The first update completes the call for the model; later ones are inserted into the chat and
   * answered when the agent is idle. Updates of a cancelled call are dropped.
   */
  readonly update: (message: unknown) => Effect.Effect<void>
}>()("effect-async-toolset/AsyncRunContext") {}

/**
 * Reports progress from inside a tool.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { AsyncRunContext } from "effect-async-toolset"
 *
 * const work = Effect.gen(function*() {
 *   yield* AsyncRunContext.update("Looking up flights")
 *   yield* Effect.sleep("2 seconds")
 *   return "Booked"
 * })
 * ```
 *
 * @since 0.1.0
 * @category accessors
 */
export const update = (message: unknown): Effect.Effect<void, never, AsyncRunContext> =>
  AsyncRunContext.use((ctx) => ctx.update(message))

/**
 * The call this run serves.
 *
 * @since 0.1.0
 * @category accessors
 */
export const functionCall: Effect.Effect<FunctionCall, never, AsyncRunContext> = AsyncRunContext.useSync((ctx) =>
  ctx.functionCall
)
