/**
 * A tool the model can call: a name, a description, Schema-typed parameters, and a handler that is
 * an Effect program. The parameters give the provider-facing strict JSON Schema and decode the
 * model's JSON arguments; the optional `success` and `failure` schemas say how results and typed
 * failures are encoded for the model.
 *
 * @since 0.1.0
 */
import { Cause, Context, Duration, Effect, Exit, Option, Result, Schema, SchemaAST, SchemaIssue } from "effect"
import type * as JsonSchema from "effect/JsonSchema"
import { OpenAiStructuredOutput, Tool } from "effect/ai"
import type { Toolkit } from "effect/ai"
import { AsyncRunContext } from "./AsyncRunContext.ts"
import { functionCallOutput } from "./ChatContext.ts"
import type { FunctionCall } from "./ChatContext.ts"
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

const emptyObjectSchema: JsonSchema.JsonSchema = {
  type: "object",
  properties: {},
  required: [],
  additionalProperties: false
}

const compileParameters = (parameters: Parameters) => {
  const decodeOptions = { errors: "all", onExcessProperty: "error" } as const
  if (Object.keys(parameters.fields).length === 0) {
    const decode = Schema.decodeUnknownResult(parameters)
    return {
      jsonSchema: emptyObjectSchema,
      strict: true,
      // Effect's parser skips the excess-property check for a struct without fields, so do it here.
      decodeArgs: (input: unknown) => {
        if (typeof input === "object" && input !== null && !Array.isArray(input)) {
          const issues = Object.entries(input).map(([key, value]) =>
            new SchemaIssue.Pointer([key], new SchemaIssue.UnexpectedKey(parameters.ast, value))
          )
          if (issues.length > 0) {
            return Result.fail(
              new Schema.SchemaError(new SchemaIssue.Composite(parameters.ast, [issues[0]!, ...issues.slice(1)], input))
            )
          }
        }
        return decode(input, decodeOptions)
      },
      canonicalArgs: () => "{}"
    }
  }
  // The strict form (OpenAI's structured-output subset: every key required, optional ones
  // nullable, no extra keys) is what most providers accept; its codec maps `null` back to a missing
  // key, so the schema the model sees and the decoder agree exactly.
  let codec: Schema.ConstraintCodec<any, unknown, never, never> = parameters
  let jsonSchema: JsonSchema.JsonSchema
  let strict = true
  try {
    const openAi = OpenAiStructuredOutput.toCodecOpenAI(parameters)
    codec = openAi.codec
    jsonSchema = openAi.jsonSchema
  } catch {
    strict = false
    jsonSchema = Tool.getJsonSchemaFromSchema(Schema.toCodecJson(parameters))
  }
  const decode = Schema.decodeUnknownResult(codec)
  const fields = new Set(Object.keys(parameters.fields))
  const encode = Schema.encodeUnknownResult(Schema.toCodecJson(parameters))
  return {
    jsonSchema,
    strict,
    // Most calls are valid: decode with the parser's fast path (no generator), then check for
    // keys the schema dropped; only a failure or a suspected extra key takes the full pass, which
    // reports every problem.
    decodeArgs: (input: unknown) => {
      const fast = decode(input)
      if (Result.isSuccess(fast) && !hasDroppedKey(input, fast.success, fields)) return fast
      return decode(input, decodeOptions)
    },
    canonicalArgs: (args: unknown) =>
      Result.match(encode(args), { onSuccess: canonicalJson, onFailure: () => canonicalJson(args) })
  }
}

/**
 * Whether decoding dropped a key of the input (an extra key: the default parse options ignore
 * them): a key present in an input object and absent from its decoded counterpart, unless it is a
 * declared field sent as `null` (the strict codec decodes a `null` optional key as absent; below
 * the top level, where the fields are not known here, a dropped `null` counts as suspect). Walks
 * input and output together; a false alarm (a schema that renames keys, say) only costs the full
 * pass.
 */
const hasDroppedKey = (input: unknown, output: unknown, fields?: ReadonlySet<string>): boolean => {
  if (input === null || typeof input !== "object" || output === null || typeof output !== "object") return false
  if (Array.isArray(input)) {
    if (!Array.isArray(output) || output.length !== input.length) return false
    for (let i = 0; i < input.length; i++) if (hasDroppedKey(input[i], output[i])) return true
    return false
  }
  for (const key in input) {
    const value = (input as Record<string, unknown>)[key]
    if (!Object.hasOwn(output, key)) {
      if (value !== null || fields === undefined || !fields.has(key)) return true
    } else if (hasDroppedKey(value, (output as Record<string, unknown>)[key])) {
      return true
    }
  }
  return false
}

/** JSON with object keys sorted, so equal arguments give equal text. */
const canonicalJson = (value: unknown): string =>
  JSON.stringify(value, (_key, v: unknown) => {
    if (v === null || typeof v !== "object" || Array.isArray(v)) return v
    const sorted: Record<string, unknown> = {}
    for (const k of Object.keys(v).sort()) sorted[k] = (v as Record<string, unknown>)[k]
    return sorted
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
 * Why parsed arguments must not be decoded, if they must not: nested deeper than `maxDepth`, or an
 * own `__proto__` key, or a `constructor` holding a `prototype` (however the key was escaped in
 * the JSON text). Recursive, but never deeper than `maxDepth`.
 */
const inspectJson = (
  value: unknown,
  maxDepth: number,
  depth = 1
): { readonly reason: "json" | "size"; readonly detail: string } | undefined => {
  if (value === null || typeof value !== "object") return undefined
  if (depth > maxDepth) return { reason: "size", detail: `nested more than ${maxDepth} levels deep` }
  if (Array.isArray(value)) {
    for (const item of value) {
      const found = inspectJson(item, maxDepth, depth + 1)
      if (found !== undefined) return found
    }
    return undefined
  }
  if (Object.hasOwn(value, "__proto__")) {
    return { reason: "json", detail: `the key "__proto__" is not allowed: it could change an object's prototype` }
  }
  const ctor: unknown = (value as Record<string, unknown>)["constructor"]
  if (Object.hasOwn(value, "constructor") && typeof ctor === "object" && ctor !== null && Object.hasOwn(ctor, "prototype")) {
    return { reason: "json", detail: `the key "constructor.prototype" is not allowed: it could change an object's prototype` }
  }
  for (const key in value) {
    const found = inspectJson((value as Record<string, unknown>)[key], maxDepth, depth + 1)
    if (found !== undefined) return found
  }
  return undefined
}

// --- what the model is told about arguments that do not match -------------------------------------
//
// One line a problem, each naming what was expected, where, and what the model sent, in words a
// model acts on: `Expected number at ["n"], got the string "one"`. Effect's default formatter
// describes the codec rather than the parameter (a number's JSON codec also takes "Infinity",
// "-Infinity" and "NaN", so "one" read `Expected "Infinity" | "-Infinity" | "NaN"`) and never
// says what was sent; the model's own arguments are at hand here, so each line quotes them.

/** A problem with the arguments: where, and the line that tells the model. */
interface ArgumentProblem {
  readonly path: ReadonlyArray<PropertyKey>
  readonly line: string
}

const pathText = (path: ReadonlyArray<PropertyKey>): string =>
  path.length === 0 ? "the top level" : path.map((key) => `[${JSON.stringify(typeof key === "symbol" ? String(key) : key)}]`).join("")

/** The value at `path` of the model's arguments (`undefined` where there is none). */
const valueAt = (input: unknown, path: ReadonlyArray<PropertyKey>): unknown =>
  path.reduce<unknown>(
    (value, key) =>
      value !== null && typeof value === "object" && Object.hasOwn(value, key)
        ? (value as Record<PropertyKey, unknown>)[key]
        : undefined,
    input
  )

/** What the model sent, in words: `the string "one"`, `the number 1.5`, `an array of 2 items`. */
const sentText = (value: unknown): string => {
  if (value === undefined) return "nothing"
  if (value === null) return "null"
  if (typeof value === "string") return `the string ${JSON.stringify(truncate(value, 80))}`
  if (typeof value === "number") return `the number ${value}`
  if (typeof value === "boolean") return `the boolean ${value}`
  if (Array.isArray(value)) return `an array of ${value.length} item${value.length === 1 ? "" : "s"}`
  return "an object"
}

// The strings a number's JSON codec takes besides numbers: not something to ask a model for.
const nonFinite = new Set<unknown>(["Infinity", "-Infinity", "NaN"])

/** The members of a union, nested unions flattened, less the non-finite strings beside a number. */
const unionMembers = (ast: SchemaAST.AST): Array<SchemaAST.AST> => {
  const flat = (node: SchemaAST.AST): Array<SchemaAST.AST> => SchemaAST.isUnion(node) ? node.types.flatMap(flat) : [node]
  const members = flat(ast)
  const hasNumber = members.some((member) => member._tag === "Number")
  return members.filter((member) =>
    member._tag !== "Undefined" && !(hasNumber && SchemaAST.isLiteral(member) && nonFinite.has(member.literal))
  )
}

/**
 * What a schema takes, in words: `string`, `one of "economy", "business"`, `string or null`,
 * `number (an integer, a value between 1 and 9)`.
 */
const expectedText = (ast: SchemaAST.AST): string => {
  const base = typeText(ast)
  // JSON has no infinite number: "finite" tells the model nothing
  const checks = (ast.checks ?? []).flatMap(checkExpectations).filter((check) => !(base === "number" && check === finiteText))
  return checks.length === 0 ? base : `${base} (${checks.join(", ")})`
}

const typeText = (ast: SchemaAST.AST): string => {
  switch (ast._tag) {
    case "String":
      return "string"
    case "Number":
      return "number"
    case "Boolean":
      return "boolean (true or false)"
    case "Null":
      return "null"
    case "Literal":
      return JSON.stringify(ast.literal)
    case "Enum":
      return `one of ${ast.enums.map(([, value]) => JSON.stringify(value)).join(", ")}`
    case "Arrays":
      return "array"
    case "Objects":
      return "object"
    case "Union": {
      const members = unionMembers(ast)
      if (members.length === 1) return expectedText(members[0]!)
      const literals = members.filter(SchemaAST.isLiteral)
      const others = members.filter((member) => !SchemaAST.isLiteral(member) && member._tag !== "Null")
      const words = [
        ...(literals.length === 0 ? [] : [
          literals.length === 1
            ? JSON.stringify(literals[0]!.literal)
            : `one of ${literals.map((literal) => JSON.stringify(literal.literal)).join(", ")}`
        ]),
        ...others.map(expectedText),
        ...(members.some((member) => member._tag === "Null") ? ["null"] : [])
      ]
      return words.join(" or ")
    }
    default:
      return SchemaIssue.defaultLeafHook(new SchemaIssue.InvalidType(ast)).replace(/^Expected /, "")
  }
}

const finiteText = "a finite number"

// Checks whose filter has no `expected` text (the OpenAI codec drops it for these, so they add no
// description to the JSON Schema): without these the model would read "Expected <filter>".
const knownChecks: Record<string, string> = {
  "effect/schema/isInt": "an integer",
  "effect/schema/isFinite": finiteText
}

/** What a check asks for, if it says. */
const checkExpected = (annotations: Schema.Annotations.Filter | undefined): string | undefined => {
  const expected = annotations?.expected
  if (typeof expected === "string") return expected
  const id = annotations?.representation?.id
  return typeof id === "string" ? knownChecks[id] : undefined
}

const checkExpectations = (check: SchemaAST.Check<unknown>): Array<string> => {
  if (check._tag === "FilterGroup") return check.checks.flatMap(checkExpectations)
  const expected = checkExpected(check.annotations)
  return expected === undefined ? [] : [expected]
}

/** What a failed check asked for: its own message if it has one, else `Expected <what it checks>`. */
const checkText = (issue: SchemaIssue.Filter): string =>
  SchemaIssue.defaultCheckHook(issue) ?? `Expected ${checkExpected(issue.filter.annotations) ?? "a valid value"}`

/** The names an object schema takes, for the model that sent another. */
const allowedKeys = (ast: SchemaAST.AST | undefined): string =>
  ast !== undefined && SchemaAST.isObjects(ast) && ast.propertySignatures.length > 0
    ? `the parameters are ${ast.propertySignatures.map((p) => JSON.stringify(String(p.name))).join(", ")}`
    : "this tool takes no parameters"

/** The problems an issue holds, each with its path; `parent` is the object schema around a key. */
const argumentProblems = (
  issue: SchemaIssue.Issue,
  input: unknown,
  path: ReadonlyArray<PropertyKey>,
  parent: SchemaAST.AST | undefined
): Array<ArgumentProblem> => {
  const at = pathText(path)
  const got = () => sentText(valueAt(input, path))
  switch (issue._tag) {
    case "Pointer":
      return argumentProblems(issue.issue, input, [...path, ...issue.path], parent)
    case "Composite":
      return issue.issues.flatMap((inner) => argumentProblems(inner, input, path, SchemaAST.isObjects(issue.ast) ? issue.ast : parent))
    case "Encoding":
      return argumentProblems(issue.issue, input, path, parent)
    case "Filter":
      return [{ path, line: `${checkText(issue)} at ${at}, got ${got()}` }]
    case "MissingKey": {
      const key = path.at(-1)
      const field = parent !== undefined && SchemaAST.isObjects(parent)
        ? parent.propertySignatures.find((p) => p.name === key)
        : undefined
      const wanted = field === undefined ? "" : `: expected ${expectedText(field.type)}`
      return [{ path, line: `Missing key ${JSON.stringify(String(key))} at ${at}${wanted}` }]
    }
    case "UnexpectedKey":
      return [{
        path,
        line: `Unexpected key ${JSON.stringify(String(path.at(-1)))} at ${at}: ${allowedKeys(issue.ast)}; leave it out`
      }]
    case "AnyOf": {
      // A member the value matched in type, but not inside (an object with a wrong field): say
      // what is wrong inside. Otherwise no member fits: say what the union takes as a whole.
      const inside = issue.issues.filter((inner) => inner._tag !== "AnyOf" && inner._tag !== "InvalidType")
      return inside.length > 0
        ? inside.flatMap((inner) => argumentProblems(inner, input, path, parent))
        : [{ path, line: `Expected ${expectedText(issue.ast)} at ${at}, got ${got()}` }]
    }
    case "InvalidType":
      return [{ path, line: `Expected ${expectedText(issue.ast)} at ${at}, got ${got()}` }]
    case "InvalidValue":
    case "OneOf":
    case "Forbidden":
      return [{ path, line: `${SchemaIssue.defaultLeafHook(issue)} at ${at}, got ${got()}` }]
  }
}

const formatIssue = (issue: SchemaIssue.Issue, input: unknown): string =>
  argumentProblems(issue, input, [], undefined).map((problem) => problem.line).join("\n")

const truncate = (s: string, max: number): string => s.length <= max ? s : `${s.slice(0, max)}…`

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

/** The tool's parameters as ours: a struct as is; effect/ai's empty parameters as an empty struct. */
const parametersOf = (tool: Tool.Any): Parameters => {
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

const notSupported = (tool: Tool.Any, why: string): never => {
  throw new Error(`FunctionTool.fromTool: ${tool.name} cannot run in an AsyncToolset: ${why}`)
}

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
  const handlerKey = Context.Service<Tool.Handler<string>>(tool.id)
  const success = tool.successSchema as Schema.Codec<unknown, unknown, never, never>
  const encodePreliminary = Schema.encodeUnknownEffect(Schema.toCodecJson(success))
  const made = make(tool.name, {
    ...options,
    description: Tool.getDescription(tool) ?? "",
    parameters,
    success,
    failure: tool.failureSchema as Schema.Codec<unknown, unknown, never, never>
  }, (args) =>
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
    }))
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
