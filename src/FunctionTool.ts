/**
 * A tool the model can call: a name, a description, Schema-typed parameters, and a handler that is
 * an Effect program. The parameters give the provider-facing strict JSON Schema and decode the
 * model's JSON arguments; the optional `success` and `failure` schemas say how results and typed
 * failures are encoded for the model.
 *
 * @since 0.1.0
 */
import { Cause, Duration, Effect, Exit, Option, Result, Schema } from "effect"
import type * as JsonSchema from "effect/JsonSchema"
import { Tool } from "effect/ai"
import type { Toolkit } from "effect/ai"
import { functionCallOutput } from "./ChatContext.ts"
import type { FunctionCall } from "./ChatContext.ts"
import { formatIssue, truncate } from "./internal/argumentProblems.ts"
import { notSupported, parametersOf, runHandler } from "./internal/toolkitTool.ts"
import { compileParameters, inspectJson } from "./internal/toolParameters.ts"
import { ToolError } from "./ToolError.ts"

const TypeId = "~effect-async-toolset/FunctionTool" as const

/**
 * What to do when a tool is called while an earlier call of it is still running.
 * - `allow`: run both.
 * - `replace`: cancel the running call(s), then run the new one.
 * - `reject`: do not run the new call; tell the model what is running.
 * - `confirm`: like `reject`, unless the model sets the confirmation flag (after asking the user).
 *
 * @since 0.1.0
 * @category models
 */
export type DuplicateMode = "allow" | "replace" | "reject" | "confirm"

/**
 * What makes two calls duplicates: the same tool (`name`) or the same tool with the same decoded
 * arguments (`arguments`).
 *
 * @since 0.1.0
 * @category models
 */
export type DuplicateScope = "name" | "arguments"

/**
 * Per-tool options used by `AsyncToolset`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Whether the model or `cancel` may interrupt a running call (default `true`). */
  readonly cancellable?: boolean | undefined
  /** Interrupt the call after this long and tell the model it timed out. */
  readonly timeout?: Duration.Input | undefined
  /** Overrides the toolset's duplicate mode for this tool. */
  readonly onDuplicateCall?: DuplicateMode | undefined
  /** What counts as a duplicate (default `name`). */
  readonly duplicateScope?: DuplicateScope | undefined
}

/**
 * The Schema a tool's parameters are described with: a struct whose JSON form is an object.
 *
 * @since 0.1.0
 * @category models
 */
export type Parameters = Schema.Struct<Schema.Struct.Fields> & Schema.Codec<any, any, never, never>

/**
 * @since 0.1.0
 * @category models
 */
export interface FunctionTool<Name extends string, Args, Success, Failure, R> {
  readonly [TypeId]: typeof TypeId
  readonly name: Name
  readonly description: string
  readonly parameters: Parameters
  readonly success: Schema.Codec<Success, unknown, never, never> | undefined
  readonly failure: Schema.Codec<Failure, unknown, never, never> | undefined
  readonly options: Options
  readonly handler: (args: Args) => Effect.Effect<Success, Failure | ToolError, R>
  /** The provider-facing JSON Schema of the parameters. */
  readonly jsonSchema: JsonSchema.JsonSchema
  /** Whether `jsonSchema` is in strict form (every property required, no extra properties). */
  readonly strict: boolean
  /** @internal decodes the JSON-compatible value the model sent */
  readonly decodeArgs: (input: unknown) => Result.Result<Args, Schema.SchemaError>
  /** @internal */
  readonly canonicalArgs: (args: Args) => string
}

/**
 * Any tool, whatever its types.
 *
 * @since 0.1.0
 * @category models
 */
export interface Any extends FunctionTool<string, any, any, any, any> {}

/**
 * The services a tool's handler needs.
 *
 * @since 0.1.0
 * @category models
 */
export type Services<T> = T extends FunctionTool<any, any, any, any, infer R> ? R : never

/**
 * @since 0.1.0
 * @category guards
 */
export const isFunctionTool = (u: unknown): u is Any => typeof u === "object" && u !== null && TypeId in u

const namePattern = /^[A-Za-z0-9_-]{1,64}$/

/**
 * Defines a tool.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { FunctionTool } from "effect-async-toolset"
 *
 * const getWeather = FunctionTool.make("get_weather", {
 *   description: "Current weather in a city",
 *   parameters: Schema.Struct({ city: Schema.String })
 * }, ({ city }) => Effect.succeed(`Sunny in ${city}`))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <
  const Name extends string,
  P extends Parameters = Schema.Struct<{}>,
  S extends Schema.Codec<any, unknown, never, never> = never,
  F extends Schema.Codec<any, unknown, never, never> = never,
  R = never
>(
  name: Name,
  options: Options & {
    readonly description: string
    readonly parameters?: P | undefined
    readonly success?: S | undefined
    readonly failure?: F | undefined
  },
  handler: (args: P["Type"]) => Effect.Effect<[S] extends [never] ? unknown : S["Type"], F["Type"] | ToolError, R>
): FunctionTool<Name, P["Type"], [S] extends [never] ? unknown : S["Type"], F["Type"], R> => {
  if (!namePattern.test(name)) {
    throw new Error(`FunctionTool.make: tool name "${name}" must match ${namePattern} (what providers accept)`)
  }
  const parameters: Parameters = options.parameters ?? Schema.Struct({})
  const compiled = compileParameters(parameters)
  const { cancellable, timeout, onDuplicateCall, duplicateScope } = options
  return {
    [TypeId]: TypeId,
    name,
    description: options.description,
    parameters,
    success: options.success,
    failure: options.failure,
    options: { cancellable, timeout, onDuplicateCall, duplicateScope },
    handler,
    ...compiled
  }
}

/**
 * The same tool with other parameters; `handler` receives the decoded arguments of the new
 * parameters and runs the original tool's handler.
 *
 * @since 0.1.0
 * @category combinators
 */
export const mapParameters = <Name extends string, Args, Success, Failure, R, Args2>(
  self: FunctionTool<Name, Args, Success, Failure, R>,
  parameters: Parameters,
  handler: (args: Args2) => Effect.Effect<Success, Failure | ToolError, R>
): FunctionTool<Name, Args2, Success, Failure, R> => ({
  ...self,
  parameters,
  handler,
  ...compileParameters(parameters)
})

/**
 * The provider-facing function definition: name, description and the JSON Schema of the
 * parameters.
 *
 * @since 0.1.0
 * @category converting
 */
export const toJsonSchema = (tool: Any): {
  readonly type: "function"
  readonly name: string
  readonly description: string
  readonly parameters: JsonSchema.JsonSchema
  readonly strict: boolean
} => ({ type: "function", name: tool.name, description: tool.description, parameters: tool.jsonSchema, strict: tool.strict })

/**
 * Why the model's arguments could not be used.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidArguments extends Schema.TaggedError<InvalidArguments>()("InvalidArguments", {
  toolName: Schema.String,
  reason: Schema.Literals(["json", "schema", "size"]),
  detail: Schema.String
}) {
  override get message(): string {
    switch (this.reason) {
      case "json":
        return `The call to ${this.toolName} did not run: its arguments are not a valid JSON object (${this.detail}). Send the arguments as one JSON object.`
      case "size":
        return `The call to ${this.toolName} did not run: its arguments are too large (${this.detail}).`
      case "schema":
        return `The call to ${this.toolName} did not run: its arguments do not match the tool's parameters.\n${this.detail}\nFix these and call it again.`
    }
  }
}

/** Default limit on the length of the model's argument text. */
export const defaultMaxArgumentsLength = 1_000_000

/**
 * Parses and decodes the model's JSON argument text. Keys such as `__proto__` are rejected, not
 * merged into an object's prototype.
 *
 * @since 0.1.0
 * @category decoding
 */
export const decodeArguments = <Name extends string, Args>(
  tool: FunctionTool<Name, Args, any, any, any>,
  text: string,
  options?: { readonly maxLength?: number | undefined; readonly maxDepth?: number | undefined }
): Result.Result<Args, InvalidArguments> => {
  const maxLength = options?.maxLength ?? defaultMaxArgumentsLength
  if (text.length > maxLength) {
    return Result.fail(
      new InvalidArguments({ toolName: tool.name, reason: "size", detail: `${text.length} characters, at most ${maxLength}` })
    )
  }
  let input: unknown
  try {
    input = text.trim() === "" ? {} : JSON.parse(text)
  } catch (e) {
    const detail = e instanceof Error ? e.message : String(e)
    return Result.fail(new InvalidArguments({ toolName: tool.name, reason: "json", detail: truncate(detail, 300) }))
  }
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    return Result.fail(new InvalidArguments({ toolName: tool.name, reason: "json", detail: "expected an object" }))
  }
  const unsafe = inspectJson(input, options?.maxDepth ?? defaultMaxArgumentsDepth)
  if (unsafe !== undefined) return Result.fail(new InvalidArguments({ toolName: tool.name, reason: unsafe.reason, detail: unsafe.detail }))
  try {
    return Result.mapError(
      tool.decodeArgs(input),
      (error) =>
        new InvalidArguments({ toolName: tool.name, reason: "schema", detail: truncate(formatIssue(error.issue, input), 4000) })
    )
  } catch {
    // a schema that recurses deeper than the stack allows; the depth limit makes this rare
    return Result.fail(new InvalidArguments({ toolName: tool.name, reason: "size", detail: "too deeply nested to check" }))
  }
}

/** Default limit on how deeply the model's arguments may nest (objects and arrays). */
export const defaultMaxArgumentsDepth = 64

/**
 * The text the model reads for one outcome of a tool.
 *
 * @since 0.1.0
 * @category models
 */
export interface Output {
  readonly output: string
  readonly isError: boolean
}

/**
 * Encodes a success for the model: a string as is, anything else as JSON (through the tool's
 * `success` schema when it has one). `undefined` (a `void` tool) gives `Option.none()`.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodeSuccess = (tool: Any, value: unknown): Result.Result<Option.Option<string>, unknown> => {
  if (value === undefined) return Result.succeed(Option.none())
  const encoded = tool.success === undefined
    ? Result.succeed(value)
    : Schema.encodeUnknownResult(Schema.toCodecJson(tool.success))(value)
  return Result.flatMap(encoded, (e) => {
    if (typeof e === "string") return Result.succeed(Option.some(e))
    if (e === undefined) return Result.succeed(Option.none())
    try {
      const json: string | undefined = JSON.stringify(e)
      return json === undefined
        ? Result.fail(new Error(`the result (${typeof e}) has no JSON form`))
        : Result.succeed(Option.some(json))
    } catch (error) {
      return Result.fail(error)
    }
  })
}

/**
 * Encodes a failure for the model (rule A2): a `ToolError` gives its message; a declared typed
 * failure gives its JSON encoding (tag and fields); anything else gives a generic text that leaks
 * nothing, and the full cause is logged.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodeFailure = Effect.fnUntraced(function*(tool: Any, callId: string, cause: Cause.Cause<unknown>) {
  const error = Cause.findErrorOption(cause)
  if (Option.isSome(error)) {
    const e = error.value
    if (e instanceof ToolError) return { output: e.message, isError: true } satisfies Output
    if (tool.failure !== undefined && Schema.is(tool.failure)(e)) {
      const encoded = Schema.encodeUnknownResult(Schema.toCodecJson(tool.failure))(e)
      if (Result.isSuccess(encoded)) {
        return { output: JSON.stringify(encoded.success), isError: true } satisfies Output
      }
    }
  }
  yield* Effect.logError("tool failed unexpectedly", cause).pipe(
    Effect.annotateLogs({ tool: tool.name, callId })
  )
  return internalError(tool.name)
})

/**
 * The generic output for an unexpected failure.
 *
 * @since 0.1.0
 * @category encoding
 */
export const internalError = (name: string): Output => ({
  output: `${name} failed because of an internal error. The details were logged for the developers; tell the user it did not work.`,
  isError: true
})

/**
 * Encodes a tool's exit for the model. `Option.none()` means a `void` success (nothing to say).
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodeExit = (
  tool: Any,
  callId: string,
  exit: Exit.Exit<unknown, unknown>
): Effect.Effect<Option.Option<Output>> => {
  if (Exit.isFailure(exit)) return Effect.map(encodeFailure(tool, callId, exit.cause), Option.some)
  const encoded = encodeSuccess(tool, exit.value)
  if (Result.isSuccess(encoded)) return Effect.succeed(Option.map(encoded.success, (output) => ({ output, isError: false })))
  return Effect.map(
    encodeFailure(tool, callId, Cause.die(encoded.failure)),
    Option.some
  )
}

/**
 * Runs one call of a tool as a plain blocking tool: decode the arguments, run the handler, encode
 * the outcome. `AsyncToolset.execute` gives the same output for a tool that never calls `update`.
 *
 * @since 0.1.0
 * @category execution
 */
export const execute = Effect.fnUntraced(function*<Name extends string, Args, Success, Failure, R>(
  tool: FunctionTool<Name, Args, Success, Failure, R>,
  call: FunctionCall
) {
  const args = decodeArguments(tool, call.arguments)
  if (Result.isFailure(args)) {
    return yield* functionCallOutput({ callId: call.callId, name: tool.name, output: args.failure.message, isError: true })
  }
  const exit = yield* Effect.exit(Effect.suspend(() => tool.handler(args.success)))
  const out = yield* encodeExit(tool, call.callId, exit)
  return yield* functionCallOutput({
    callId: call.callId,
    name: tool.name,
    output: Option.match(out, { onNone: () => "", onSome: (o) => o.output }),
    isError: Option.match(out, { onNone: () => false, onSome: (o) => o.isError })
  })
})

// --- effect/ai tools -----------------------------------------------------------------------------

/**
 * The `FunctionTool` made from an effect/ai `Tool` by {@link fromTool}: the same name, parameters,
 * success and failure; it needs the tool's handler (from the toolkit's `toLayer`) and the
 * services the tool declares as dependencies.
 *
 * @since 0.1.0
 * @category models
 */
export type FromTool<T> = T extends Tool.Tool<infer Name, infer Config, infer Requirements> ? FunctionTool<
    Name,
    Config["parameters"]["Type"],
    Config["success"]["Type"],
    Config["failure"]["Type"],
    Tool.Handler<Name> | Requirements
  >
  : never

/**
 * An effect/ai `Tool` as a `FunctionTool`, so it runs in an `AsyncToolset`: its name, description,
 * parameters (a `Schema.Struct`, or none), success and failure schemas are kept; a call runs the
 * handler the toolkit's handler layer (`Toolkit.toLayer`) provides for it, with the services that
 * layer was built with.
 *
 * In the toolset, the handler is a background tool like any other:
 * - it may call `AsyncRunContext.update` (declare `dependencies: [AsyncRunContext.AsyncRunContext]`
 *   on the `Tool` so its handler may use it); the first update is the call's output, later ones
 *   reach the chat;
 * - its `preliminary(value)` results are updates too (the value encoded with the success schema);
 * - a failure of its `failure` schema reaches the model as an error output with the encoded
 *   failure, tag and fields; a `ToolError` its message; anything else (an `AiError` included) a
 *   generic error output, logged with its full cause, whatever the tool's `failureMode`.
 *
 * Not supported (the conversion throws): provider-defined tools, tools that need approval
 * (`needsApproval`: the toolset has no approval step), parameters that are not a struct. A
 * `toModelOutput` mapping is not used: the model reads the success encoded as JSON.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromTool = <T extends Tool.Any>(tool: T, options: Options = {}): FromTool<T> => {
  if (Tool.isProviderDefined(tool)) return notSupported(tool, "it is provider-defined (the provider runs it)")
  if (tool.needsApproval !== undefined && tool.needsApproval !== false) {
    return notSupported(tool, "it needs approval, and a toolset has no approval step")
  }
  const parameters = parametersOf(tool)
  const success = tool.successSchema as Schema.Codec<unknown, unknown, never, never>
  const made = make(tool.name, {
    ...options,
    description: Tool.getDescription(tool) ?? "",
    parameters,
    success,
    failure: tool.failureSchema as Schema.Codec<unknown, unknown, never, never>
  }, runHandler(tool, success))
  // `make` typed the tool from the schemas as given; `FromTool` states the same types from `T`.
  return made as unknown as FromTool<T>
}

/**
 * The tools of an effect/ai `Toolkit` as `FunctionTool`s (see {@link fromTool}), in the toolkit's
 * order; `options` sets per-tool options by tool name. The tools need the handlers of the
 * toolkit's `toLayer`, so an `AsyncToolset` made of them does too.
 *
 * @example
 * ```ts
 * import { Effect, Layer, Schema } from "effect"
 * import { Tool, Toolkit } from "effect/ai"
 * import { AiAgent, AsyncRunContext, FunctionTool } from "effect-async-toolset"
 *
 * const Report = Tool.make("Report", {
 *   description: "Build the sales report of a quarter",
 *   parameters: Schema.Struct({ quarter: Schema.String }),
 *   success: Schema.String,
 *   dependencies: [AsyncRunContext.AsyncRunContext]
 * })
 * const Reports = Toolkit.make(Report)
 * const handlers = Reports.toLayer({
 *   Report: ({ quarter }) =>
 *     Effect.gen(function*() {
 *       yield* AsyncRunContext.update(`Collecting ${quarter} sales`)
 *       yield* Effect.sleep("1 minute")
 *       return `The ${quarter} report is ready`
 *     })
 * })
 * const ReportTools = AiAgent.toolset({
 *   id: "reports",
 *   tools: FunctionTool.fromToolkit(Reports, { Report: { timeout: "10 minutes" } })
 * }).pipe(Layer.provide(handlers))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromToolkit = <Tools extends Record<string, Tool.Any>>(
  toolkit: Toolkit.Toolkit<Tools>,
  options: { readonly [Name in keyof Tools]?: Options | undefined } = {}
): ReadonlyArray<FromTool<Tools[keyof Tools]>> =>
  Object.entries(toolkit.tools).map(([name, tool]) =>
    fromTool(tool, options[name as keyof Tools] ?? {}) as FromTool<Tools[keyof Tools]>
  )
