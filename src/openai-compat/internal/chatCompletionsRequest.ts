/**
 * The Chat Completions request body, from what `LanguageModel` hands a provider: the prompt as
 * messages, the tools as function definitions (strict where the schema allows), the tool choice
 * and the response format.
 *
 * The one rule a server enforces that effect/ai's `Prompt` does not: an assistant message with
 * `tool_calls` must be followed at once by one `tool` message per call id. A prompt may keep a
 * result apart from its call (a note between them, results in a later `tool` message, two
 * assistant messages in a row), so the results are collected first and placed right after their
 * call.
 */
import { Result } from "effect"
import type { JsonSchema } from "effect"
import { OpenAiStructuredOutput, Prompt, Tool } from "effect/ai"
import type { LanguageModel } from "effect/ai"
import { Base64 } from "effect/encoding"

// --- the wire ---------------------------------------------------------------------------------

/** A part of a user message's content. */
export type ContentPart =
  | { readonly type: "text"; readonly text: string }
  | { readonly type: "image_url"; readonly image_url: { readonly url: string } }
  | { readonly type: "input_audio"; readonly input_audio: { readonly data: string; readonly format: "wav" | "mp3" } }
  | { readonly type: "file"; readonly file: { readonly filename: string; readonly file_data: string } }

/** A tool call as an assistant message carries it. */
export interface ToolCall {
  readonly id: string
  readonly type: "function"
  readonly function: { readonly name: string; readonly arguments: string }
}

/** One Chat Completions message. */
export type Message =
  | { readonly role: "system"; readonly content: string }
  | { readonly role: "user"; readonly content: string | ReadonlyArray<ContentPart> }
  | { readonly role: "assistant"; readonly content: string | null; readonly tool_calls?: ReadonlyArray<ToolCall> }
  | { readonly role: "tool"; readonly tool_call_id: string; readonly content: string }

/** A function definition in `tools`. */
export interface FunctionDefinition {
  readonly type: "function"
  readonly function: {
    readonly name: string
    readonly description?: string
    readonly parameters: JsonSchema.JsonSchema
    readonly strict?: true
  }
}

/** A `response_format` asking for JSON that follows a schema. */
export interface ResponseFormat {
  readonly type: "json_schema"
  readonly json_schema: { readonly name: string; readonly schema: JsonSchema.JsonSchema; readonly strict: true }
}

/** What `tool_choice` takes. */
export type ToolChoice =
  | "auto"
  | "none"
  | "required"
  | { readonly type: "function"; readonly function: { readonly name: string } }

// --- messages ---------------------------------------------------------------------------------

/** The text a tool message carries when the prompt holds no result for a call. */
export const missingResult = "No result was recorded for this tool call."

/** The messages of a prompt, and what did not fit the protocol's pairing rule. */
export interface Messages {
  readonly messages: ReadonlyArray<Message>
  /** Calls the prompt holds no result for: each got a tool message saying {@link missingResult}. */
  readonly unanswered: ReadonlyArray<string>
  /** Results with no call before them: left out (a server rejects a tool message without its call). */
  readonly orphans: ReadonlyArray<string>
}

interface PendingResult {
  /** Index of the prompt message that holds it: a result answers a call made before it. */
  readonly at: number
  readonly part: Prompt.ToolResultPart
  placed: boolean
}

/**
 * The prompt as Chat Completions messages, each assistant `tool_calls` followed by exactly one
 * tool message per call id. Fails with a description for content the protocol cannot carry (a
 * file type other than images, wav/mp3 audio and PDF).
 */
export const toMessages = (prompt: Prompt.Prompt): Result.Result<Messages, string> => {
  const pending = new Map<string, Array<PendingResult>>()
  prompt.content.forEach((message, at) => {
    if (message.role !== "tool") return
    for (const part of message.content) {
      if (part.type !== "tool-result") continue
      const list = pending.get(part.id)
      const entry: PendingResult = { at, part, placed: false }
      if (list === undefined) pending.set(part.id, [entry])
      else list.push(entry)
    }
  })
  /** The first result for this id after the call, not yet placed. Call ids may repeat across turns. */
  const takeResult = (id: string, after: number): Prompt.ToolResultPart | undefined => {
    const entry = pending.get(id)?.find((r) => !r.placed && r.at > after)
    if (entry === undefined) return undefined
    entry.placed = true
    return entry.part
  }

  const messages: Array<Message> = []
  const unanswered: Array<string> = []
  for (const [at, message] of prompt.content.entries()) {
    switch (message.role) {
      case "system":
        messages.push({ role: "system", content: message.content })
        break
      case "user": {
        const content = userContent(message.content)
        if (Result.isFailure(content)) return Result.fail(content.failure)
        messages.push({ role: "user", content: content.success })
        break
      }
      case "assistant": {
        const text = message.content.flatMap((part) => part.type === "text" ? [part.text] : []).join("")
        const calls = message.content.flatMap((part): Array<ToolCall> =>
          part.type === "tool-call" && !part.providerExecuted
            ? [{ id: part.id, type: "function", function: { name: part.name, arguments: argumentsText(part.params) } }]
            : []
        )
        if (text === "" && calls.length === 0) break // only reasoning or provider-side parts: nothing to send
        messages.push(calls.length === 0 ? { role: "assistant", content: text } : {
          role: "assistant",
          content: text === "" ? null : text,
          tool_calls: calls
        })
        for (const call of calls) {
          const result = takeResult(call.id, at)
          if (result === undefined) unanswered.push(call.id)
          const content = result === undefined ? missingResult : resultText(result)
          messages.push({ role: "tool", tool_call_id: call.id, content })
        }
        break
      }
      case "tool":
        break // placed after their calls above
    }
  }
  const orphans = [...pending.values()].flat().filter((r) => !r.placed).map((r) => r.part.id)
  return Result.succeed({ messages, unanswered, orphans })
}

const argumentsText = (params: unknown): string => {
  // A string is the model's own text that was not JSON: send it back as it came.
  if (typeof params === "string") return params
  return JSON.stringify(params ?? {}) ?? "{}"
}

const resultText = (part: Prompt.ToolResultPart): string => {
  if (part.modelOutput !== undefined) return Prompt.toolModelOutputToText(part.modelOutput)
  if (typeof part.result === "string") return part.result
  try {
    return JSON.stringify(part.result) ?? ""
  } catch {
    return String(part.result)
  }
}

const userContent = (
  parts: ReadonlyArray<Prompt.UserMessagePart>
): Result.Result<string | ReadonlyArray<ContentPart>, string> => {
  const only = parts[0]
  if (parts.length === 1 && only?.type === "text") return Result.succeed(only.text)
  const out: Array<ContentPart> = []
  for (const part of parts) {
    if (part.type === "text") {
      out.push({ type: "text", text: part.text })
      continue
    }
    const file = filePart(part)
    if (Result.isFailure(file)) return Result.fail(file.failure)
    out.push(file.success)
  }
  return Result.succeed(out)
}

type FileData = Prompt.FilePart["data"]

/** Data given by URL (checked without the `URL` global, which not every runtime's types declare). */
const isUrl = (data: FileData): data is Exclude<FileData, string | Uint8Array> =>
  typeof data !== "string" && !(data instanceof Uint8Array)

const filePart = (part: Prompt.FilePart): Result.Result<ContentPart, string> => {
  const { data, mediaType } = part
  if (mediaType.startsWith("image/")) {
    return Result.succeed({ type: "image_url", image_url: { url: isUrl(data) ? data.href : dataUrl(mediaType, data) } })
  }
  const audio = mediaType === "audio/wav" || mediaType === "audio/x-wav"
    ? "wav"
    : mediaType === "audio/mpeg" || mediaType === "audio/mp3"
    ? "mp3"
    : undefined
  if (audio !== undefined && !isUrl(data)) {
    return Result.succeed({ type: "input_audio", input_audio: { data: base64(data), format: audio } })
  }
  if (mediaType === "application/pdf" && !isUrl(data)) {
    return Result.succeed({
      type: "file",
      file: { filename: part.fileName ?? "document.pdf", file_data: dataUrl(mediaType, data) }
    })
  }
  return Result.fail(
    `a ${mediaType} file${isUrl(data) ? " given by URL" : ""} cannot be sent to a Chat Completions server ` +
      "(it takes images, wav or mp3 audio, and PDF documents)"
  )
}

/** A string is taken as base64 data unless it already is a URL. */
const dataUrl = (mediaType: string, data: string | Uint8Array): string =>
  typeof data === "string" && /^(https?|data):/i.test(data) ? data : `data:${mediaType};base64,${base64(data)}`

const base64 = (data: string | Uint8Array): string => typeof data === "string" ? data : Base64.encode(data)

// --- tools ------------------------------------------------------------------------------------

/**
 * The function definitions of the tools a request may use. A tool is sent strict when it does not
 * opt out (`Tool.Strict` false), strict tools are on, and its schema has a strict form.
 */
export const toFunctions = (tools: ReadonlyArray<Tool.Any>, strictTools: boolean): Array<FunctionDefinition> =>
  tools.filter((tool) => !Tool.isProviderDefined(tool)).map((tool) => {
    const parameters = Tool.getJsonSchema(tool)
    const description = Tool.getDescription(tool)
    const strict = strictTools && Tool.getStrictMode(tool) !== false ? strictForm(parameters) : undefined
    return {
      type: "function",
      function: {
        name: tool.name,
        ...(description === undefined || description === "" ? {} : { description }),
        ...(strict === undefined ? { parameters } : { parameters: strict, strict: true })
      }
    }
  })

/** The `tool_choice` of a request with tools (a `oneOf` has already narrowed the tools sent). */
export const toToolChoice = (choice: LanguageModel.ToolChoice<string>): ToolChoice => {
  if (typeof choice === "string") return choice
  if ("tool" in choice) return { type: "function", function: { name: choice.tool } }
  return choice.mode ?? "auto"
}

/**
 * The `response_format` of a `generateObject` request: the schema in Structured Outputs form (the
 * same transformer decodes the answer), or none for text. Fails for a schema with no such form.
 */
export const toResponseFormat = (
  format: LanguageModel.ProviderOptions["responseFormat"]
): Result.Result<ResponseFormat | undefined, string> => {
  if (format.type === "text") return Result.succeed(undefined)
  return Result.try({
    try: () => ({
      type: "json_schema" as const,
      json_schema: {
        name: format.objectName,
        schema: OpenAiStructuredOutput.toCodecOpenAI(format.schema).jsonSchema,
        strict: true as const
      }
    }),
    catch: (error) => error instanceof Error ? error.message : String(error)
  })
}

// Structured Outputs accept a subset of JSON Schema; anything else makes a strict tool a 400.
const strictKeywords = new Set([
  "type",
  "properties",
  "required",
  "additionalProperties",
  "items",
  "enum",
  "const",
  "anyOf",
  "$ref",
  "$defs",
  "description",
  "title",
  "pattern",
  "format",
  "minimum",
  "maximum",
  "exclusiveMinimum",
  "exclusiveMaximum",
  "multipleOf",
  "minItems",
  "maxItems"
])
const strictFormats = new Set(["date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"])

/**
 * The schema in strict form (OpenAI's Structured Outputs rules), or `undefined` if it has none.
 *
 * Strict form: the root is an object; every object lists all its properties in `required` and has
 * `additionalProperties: false`; only the supported keywords appear. An object that would accept
 * extra keys is closed (its decoder ignores extra keys anyway); an optional property has no strict
 * form (the model would have to send it), so such a tool is sent as it is, not strict.
 */
export const strictForm = (schema: JsonSchema.JsonSchema): JsonSchema.JsonSchema | undefined => {
  if (schema.type !== "object" || schema.anyOf !== undefined) return undefined
  return strictNode(schema)
}

const isRecord = (u: unknown): u is { readonly [key: string]: unknown } =>
  typeof u === "object" && u !== null && !Array.isArray(u)

const strictNode = (node: unknown): JsonSchema.JsonSchema | undefined => {
  if (!isRecord(node)) return undefined
  const out: { [key: string]: unknown } = {}
  for (const [key, value] of Object.entries(node)) {
    if (!strictKeywords.has(key)) return undefined
    switch (key) {
      case "format":
        if (typeof value !== "string" || !strictFormats.has(value)) return undefined
        out[key] = value
        break
      case "properties":
      case "$defs": {
        if (!isRecord(value)) return undefined
        const children: { [key: string]: JsonSchema.JsonSchema } = {}
        for (const [name, child] of Object.entries(value)) {
          const strict = strictNode(child)
          if (strict === undefined) return undefined
          children[name] = strict
        }
        out[key] = children
        break
      }
      case "items": {
        const strict = strictNode(value)
        if (strict === undefined) return undefined
        out[key] = strict
        break
      }
      case "anyOf": {
        if (!Array.isArray(value)) return undefined
        const members: Array<JsonSchema.JsonSchema> = []
        for (const member of value) {
          const strict = strictNode(member)
          if (strict === undefined) return undefined
          members.push(strict)
        }
        out[key] = members
        break
      }
      case "additionalProperties":
        if (typeof value !== "boolean") return undefined // a schema: a record, which has no strict form
        break // set below
      default:
        out[key] = value
    }
  }
  const isObject = node.type === "object" || (Array.isArray(node.type) && node.type.includes("object"))
  if (isObject || node.properties !== undefined) {
    const properties = isRecord(out.properties) ? out.properties : {}
    const required = Array.isArray(node.required) ? node.required : []
    if (Object.keys(properties).some((name) => !required.includes(name))) return undefined
    out.properties = properties
    out.required = Object.keys(properties)
    out.additionalProperties = false
  }
  return out
}
