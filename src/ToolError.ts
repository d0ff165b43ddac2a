/**
 * A failure whose message is written for the model. A tool fails with a `ToolError` when the model
 * should read why ("no seats left on that flight"); any other unexpected failure is hidden from the
 * model and logged instead.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * Fail a tool with this to tell the model `message` as an error output.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ToolError } from "effect-async-toolset"
 *
 * const soldOut = Effect.fail(new ToolError.ToolError({ message: "That flight is sold out." }))
 * ```
 *
 * @since 0.1.0
 * @category errors
 */
export class ToolError extends Schema.TaggedError<ToolError>()("ToolError", {
  message: Schema.String
}) {}

/**
 * @since 0.1.0
 * @category guards
 */
export const isToolError = (u: unknown): u is ToolError => u instanceof ToolError
