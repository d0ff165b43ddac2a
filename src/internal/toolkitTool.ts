/**
 * The parts of `FunctionTool.fromTool`: what of an effect/ai `Tool` a toolset can run (its
 * parameters as ours, or why not), and the handler that runs the toolkit's handler for it.
 */
import { Context, Effect, Option, Schema, SchemaAST } from "effect"
import type { Tool, Toolkit } from "effect/ai"
import { AsyncRunContext } from "../AsyncRunContext.ts"
import type { Parameters } from "../FunctionTool.ts"

/** The tool's parameters as ours: a struct as is; effect/ai's empty parameters as an empty struct. */
export const parametersOf = (tool: Tool.Any): Parameters => {
  const schema: unknown = tool.parametersSchema
  if (!Schema.isSchema(schema) || !SchemaAST.isObjects(schema.ast)) return notSupported(tool, "its parameters are not a Schema.Struct")
  const { indexSignatures, propertySignatures } = schema.ast
  if (propertySignatures.length === 0 && indexSignatures.every((index) => SchemaAST.isNever(index.type))) {
    return Schema.Struct({}) // `Tool.EmptyParams`: a record of nothing
  }
  if (indexSignatures.length > 0 || !("fields" in schema)) return notSupported(tool, "its parameters are not a Schema.Struct")
  // a struct whose fields decode without services, as `Tool.make` requires of its parameters
  return schema as Parameters
}

export const notSupported = (tool: Tool.Any, why: string): never => {
  throw new Error(`FunctionTool.fromTool: ${tool.name} cannot run in an AsyncToolset: ${why}`)
}


/**
 * The handler of the `FunctionTool` made from `tool`: runs the handler the toolkit's layer provides
 * for it, with its preliminary results sent as updates.
 */
export const runHandler = (tool: Tool.Any, success: Schema.Codec<unknown, unknown, never, never>) => {
  const handlerKey = Context.Service<Tool.Handler<string>>(tool.id)
  const encodePreliminary = Schema.encodeUnknownEffect(Schema.toCodecJson(success))
  return (args: unknown) =>
    Effect.gen(function*() {
      const handler = yield* handlerKey
      const run = Option.getOrUndefined(yield* Effect.serviceOption(AsyncRunContext))
      const context: Toolkit.HandlerContext<Tool.Any> = {
        toolCallId: run?.functionCall.callId,
        preliminary: (value) =>
          run === undefined
            ? Effect.void
            : encodePreliminary(value).pipe(
              Effect.flatMap(run.update),
              Effect.catchCause((cause) => Effect.logWarning("a preliminary result could not be encoded; it is not sent", cause))
            )
      }
      // As `Toolkit` runs a handler: in the context its layer was built with, under the caller's.
      return yield* (handler.handler(args, context) as Effect.Effect<unknown, unknown>).pipe(
        Effect.updateContext((input: Context.Context<never>) => Context.merge(handler.context, input))
      )
    })
}
