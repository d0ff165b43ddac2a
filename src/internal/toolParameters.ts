/**
 * A tool's parameters compiled for the model and for decoding: the provider-facing JSON Schema
 * (strict where the schema allows), the decoder of the model's arguments, and their canonical text
 * for duplicate checks; and the safety check run on parsed arguments before decoding.
 */
import { Result, Schema, SchemaIssue } from "effect"
import type * as JsonSchema from "effect/JsonSchema"
import { OpenAiStructuredOutput, Tool } from "effect/ai"
import type { Parameters } from "../FunctionTool.ts"

const emptyObjectSchema: JsonSchema.JsonSchema = {
  type: "object",
  properties: {},
  required: [],
  additionalProperties: false
}

export const compileParameters = (parameters: Parameters) => {
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
 * Why parsed arguments must not be decoded, if they must not: nested deeper than `maxDepth`, or an
 * own `__proto__` key, or a `constructor` holding a `prototype` (however the key was escaped in
 * the JSON text). Recursive, but never deeper than `maxDepth`.
 */
export const inspectJson = (
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
