/**
 * What a Chat Completions server answers, as effect/ai response parts: a whole completion, or the
 * chunks of a streamed one assembled as they come (text and reasoning deltas, tool-call argument
 * deltas by index), with finish reasons and usage mapped. Also the error body servers send.
 *
 * The wire schemas are lenient on purpose: the servers that speak this protocol differ in what
 * they leave out (`null` or absent, no `index` on a tool-call delta, no `id`), and a field we do not
 * read is never a reason to reject an answer.
 */
import { Result, Schema } from "effect"
import type { Response } from "effect/ai"

// --- the wire ---------------------------------------------------------------------------------

const optionalNullable = <S extends Schema.Top>(schema: S) => Schema.optional(Schema.NullOr(schema))

const Usage = Schema.Struct({
  prompt_tokens: optionalNullable(Schema.Number),
  completion_tokens: optionalNullable(Schema.Number),
  total_tokens: optionalNullable(Schema.Number),
  prompt_tokens_details: optionalNullable(Schema.Struct({ cached_tokens: optionalNullable(Schema.Number) })),
  completion_tokens_details: optionalNullable(Schema.Struct({ reasoning_tokens: optionalNullable(Schema.Number) }))
})
type Usage = typeof Usage.Type

/**
 * A message's content: text, or (Mistral's reasoning models) a list of parts, `text` parts and
 * `thinking` parts, read by {@link contentText}. Parts of other types are left out.
 */
const Content = Schema.Union([Schema.String, Schema.Array(Schema.Unknown)])

const Completion = Schema.Struct({
  id: optionalNullable(Schema.String),
  model: optionalNullable(Schema.String),
  created: optionalNullable(Schema.Number),
  choices: Schema.Array(Schema.Struct({
    index: optionalNullable(Schema.Number),
    message: Schema.Struct({
      content: optionalNullable(Content),
      refusal: optionalNullable(Schema.String),
      // vLLM and DeepSeek call it `reasoning_content`, Ollama and OpenRouter `reasoning`
      reasoning_content: optionalNullable(Schema.String),
      reasoning: optionalNullable(Schema.String),
      tool_calls: optionalNullable(Schema.Array(Schema.Struct({
        id: optionalNullable(Schema.String),
        function: Schema.Struct({ name: Schema.String, arguments: optionalNullable(Schema.Unknown) })
      })))
    }),
    finish_reason: optionalNullable(Schema.String)
  })),
  usage: optionalNullable(Usage)
})

const Chunk = Schema.Struct({
  id: optionalNullable(Schema.String),
  model: optionalNullable(Schema.String),
  created: optionalNullable(Schema.Number),
  choices: optionalNullable(Schema.Array(Schema.Struct({
    index: optionalNullable(Schema.Number),
    delta: optionalNullable(Schema.Struct({
      content: optionalNullable(Content),
      refusal: optionalNullable(Schema.String),
      reasoning_content: optionalNullable(Schema.String),
      reasoning: optionalNullable(Schema.String),
      tool_calls: optionalNullable(Schema.Array(Schema.Struct({
        index: optionalNullable(Schema.Number),
        id: optionalNullable(Schema.String),
        function: optionalNullable(Schema.Struct({
          name: optionalNullable(Schema.String),
          arguments: optionalNullable(Schema.String)
        }))
      })))
    })),
    finish_reason: optionalNullable(Schema.String)
  }))),
  usage: optionalNullable(Usage)
})
type Chunk = typeof Chunk.Type

/** An error as the server described it: `{ error: { message, type, param, code } }` and kin. */
export interface ServerError {
  readonly message: string | undefined
  readonly type: string | undefined
  readonly code: string | number | undefined
  readonly param: string | undefined
  /**
   * The HTTP status the error stands for, when the body says it: a `status_code` or `status`
   * (Groq), or a numeric `code` (OpenRouter). An error sent inside a 200 stream has no other.
   */
  readonly status: number | undefined
}

// --- errors -----------------------------------------------------------------------------------

const isRecord = (u: unknown): u is { readonly [key: string]: unknown } =>
  typeof u === "object" && u !== null && !Array.isArray(u)

const stringOf = (u: unknown): string | undefined => typeof u === "string" && u !== "" ? u : undefined

/**
 * The error a body describes, if it describes one. Reads OpenAI's `{ error: { message, ... } }`,
 * `{ error: "text" }`, and the `{ message }` / `{ detail }` bodies of vLLM and other servers.
 */
export const serverError = (body: unknown): ServerError | undefined => {
  if (!isRecord(body)) return undefined
  const error = body.error
  if (typeof error === "string") {
    return { message: error, type: undefined, code: undefined, param: undefined, status: httpStatus(body.status_code) }
  }
  const source = isRecord(error) ? error : body.object === "error" || body.error === undefined ? body : undefined
  if (source === undefined) return undefined
  const detail = source.detail
  const message = stringOf(source.message) ??
    stringOf(detail) ??
    (Array.isArray(detail) ? JSON.stringify(detail) : undefined)
  const code = typeof source.code === "string" || typeof source.code === "number" ? source.code : undefined
  if (message === undefined && code === undefined) return undefined
  const status = httpStatus(source.status_code) ?? httpStatus(source.status) ?? httpStatus(code) ??
    httpStatus(body.status_code)
  return { message, type: stringOf(source.type), code, param: stringOf(source.param), status }
}

const httpStatus = (u: unknown): number | undefined =>
  typeof u === "number" && Number.isInteger(u) && u >= 100 && u <= 599 ? u : undefined

/** JSON text as a value, or `undefined` if it is not JSON. */
export const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** The start of a text, for error messages: enough to recognise it, never a whole body. */
export const excerpt = (text: string, max = 300): string =>
  text.length > max ? `${text.slice(0, max)}… (${text.length} characters)` : text

// --- shared mappings ----------------------------------------------------------------------------

/**
 * The finish reason. Some servers (Ollama) end a tool-calling answer with "stop", and some send no
 * reason at all: an answer with tool calls finishes with "tool-calls" then, which is what a caller
 * looping on tool calls checks.
 */
export const finishReason = (raw: string | null | undefined, hasToolCalls: boolean): Response.FinishReason => {
  switch (raw) {
    case "stop":
      return hasToolCalls ? "tool-calls" : "stop"
    case "length":
      return "length"
    case "tool_calls":
    case "function_call":
      return "tool-calls"
    case "content_filter":
      return "content-filter"
    case null:
    case undefined:
      return hasToolCalls ? "tool-calls" : "unknown"
    default:
      return "other"
  }
}

const count = (n: number | null | undefined): number | undefined =>
  typeof n === "number" && Number.isInteger(n) && n >= 0 ? n : undefined

/**
 * Token counts as effect/ai's `Usage`: cached prompt tokens and reasoning tokens split out, the
 * way each server counts. Most count reasoning inside `completion_tokens` (OpenAI, DeepSeek, Groq:
 * prompt + completion = total); some beside it (xAI, and Gemini, which does not name them: prompt
 * + completion < total). Either way the output total is everything the model wrote, so input
 * and output add up to the server's total.
 */
export const usage = (wire: Usage | null | undefined): typeof Response.Usage.Encoded => {
  const input = count(wire?.prompt_tokens)
  const cached = count(wire?.prompt_tokens_details?.cached_tokens)
  const completion = count(wire?.completion_tokens)
  const total = count(wire?.total_tokens)
  const named = count(wire?.completion_tokens_details?.reasoning_tokens)
  const beside = input !== undefined && completion !== undefined && total !== undefined && total > input + completion
    ? total - input - completion
    : undefined
  const output = beside === undefined
    ? {
      ...(completion === undefined ? {} : { total: completion }),
      ...(named === undefined ? {} : { reasoning: named }),
      ...(completion === undefined || named === undefined ? {} : { text: Math.max(0, completion - named) })
    }
    : { total: completion! + (named ?? beside), reasoning: named ?? beside, text: completion! }
  return {
    inputTokens: {
      ...(input === undefined ? {} : { total: input }),
      ...(cached === undefined ? {} : { cacheRead: cached }),
      ...(input === undefined || cached === undefined ? {} : { uncached: Math.max(0, input - cached) })
    },
    outputTokens: output
  }
}

/**
 * The text and the reasoning of a message's content or a delta's. Mistral's reasoning models send
 * a list of parts: `{ type: "text", text }` and `{ type: "thinking", thinking: [{ type: "text",
 * text }] }` (or `thinking` as text); parts of other types carry neither.
 */
export const contentText = (
  content: typeof Content.Type | null | undefined
): { readonly text: string; readonly reasoning: string } => {
  if (content == null) return { text: "", reasoning: "" }
  if (typeof content === "string") return { text: content, reasoning: "" }
  let text = ""
  let reasoning = ""
  for (const part of content) {
    if (!isRecord(part)) continue
    if (part.type === "text" && typeof part.text === "string") text += part.text
    else if (part.type === "thinking") reasoning += thinkingText(part.thinking)
  }
  return { text, reasoning }
}

const thinkingText = (thinking: unknown): string => {
  if (typeof thinking === "string") return thinking
  if (!Array.isArray(thinking)) return ""
  return thinking.map((part) => isRecord(part) && typeof part.text === "string" ? part.text : "").join("")
}

/**
 * The choice to read: the one with index 0. With `n` > 1 a server sends several, and a stream
 * interleaves their chunks; this provider answers with the first.
 */
const firstChoice = <C extends { readonly index?: number | null | undefined }>(
  choices: ReadonlyArray<C> | null | undefined
): C | undefined => choices?.find((choice) => (choice.index ?? 0) === 0)

/** A string that says something: servers send `""` for a value they do not have yet. */
const given = (s: string | null | undefined): string | undefined => s == null || s === "" ? undefined : s

interface WireMetadata {
  readonly id?: string | null | undefined
  readonly model?: string | null | undefined
  readonly created?: number | null | undefined
}

/** Whether a chunk says who answered. Azure's first chunk is a placeholder: `""`, `""`, `0`. */
const hasMetadata = (wire: WireMetadata): boolean => given(wire.id) !== undefined || given(wire.model) !== undefined

const metadataPart = (wire: WireMetadata): Response.ResponseMetadataPartEncoded => {
  const id = given(wire.id)
  const model = given(wire.model)
  return {
    type: "response-metadata",
    ...(id === undefined ? {} : { id }),
    ...(model === undefined ? {} : { modelId: model }),
    ...(typeof wire.created === "number" && Number.isFinite(wire.created) && wire.created > 0
      ? { timestamp: new Date(wire.created * 1000).toISOString() }
      : {})
  }
}

/**
 * A tool call's arguments as a value. Empty text is no arguments; text that is not JSON is passed
 * on as is, so the caller can tell the model its arguments were unusable (and effect/ai's toolkit
 * reports it as invalid parameters) instead of the whole answer being lost.
 */
export const parseArguments = (raw: unknown): unknown => {
  if (typeof raw !== "string") return raw ?? {}
  if (raw.trim() === "") return {}
  try {
    return JSON.parse(raw)
  } catch {
    return raw
  }
}

// --- a whole completion -----------------------------------------------------------------------

/** A tool call whose id the server left out: the caller gives it one. */
export type NewId = () => string

/**
 * The parts of a completion body. Fails with a description when the body is not a completion
 * (missing or mistyped fields, no choice).
 */
export const completionParts = (body: unknown, newId: NewId): Result.Result<Array<Response.PartEncoded>, string> => {
  const decoded = Schema.decodeUnknownResult(Completion)(body)
  if (Result.isFailure(decoded)) return Result.fail(`the completion has not the expected shape: ${decoded.failure.message}`)
  const completion = decoded.success
  const choice = firstChoice(completion.choices)
  if (choice === undefined) return Result.fail("the completion has no choices")
  const { message } = choice
  const parts: Array<Response.PartEncoded> = [metadataPart(completion)]
  const content = contentText(message.content)
  const reasoning = (message.reasoning_content ?? message.reasoning ?? "") + content.reasoning
  if (reasoning !== "") parts.push({ type: "reasoning", text: reasoning })
  const text = content.text !== "" ? content.text : message.refusal ?? ""
  if (text !== "") parts.push({ type: "text", text })
  const calls = message.tool_calls ?? []
  for (const call of calls) {
    parts.push({
      type: "tool-call",
      id: call.id == null || call.id === "" ? newId() : call.id,
      name: call.function.name,
      params: parseArguments(call.function.arguments),
      providerExecuted: false
    })
  }
  parts.push({
    type: "finish",
    reason: finishReason(choice.finish_reason, calls.length > 0),
    usage: usage(completion.usage)
  })
  return Result.succeed(parts)
}

// --- a streamed completion --------------------------------------------------------------------

/** A tool call of a streamed answer, as its deltas build it up. */
interface StreamedToolCall {
  id: string
  name: string
  arguments: string
  /** `tool-params-start` was emitted (it needs the id and the name). */
  started: boolean
}

/** What a streamed answer has said so far. One per response; the functions below update it. */
export interface StreamState {
  metadataSent: boolean
  textOpen: boolean
  reasoningOpen: boolean
  /** Tool calls in the order they began. */
  readonly calls: Array<StreamedToolCall>
  /** Tool calls by the `index` their deltas carry. */
  readonly byIndex: Map<number, StreamedToolCall>
  /** The call the latest tool-call delta went to. */
  lastCall: StreamedToolCall | undefined
  finishReason: string | undefined
  usage: Usage | undefined
  /** `data: [DONE]` arrived. */
  done: boolean
}

export const makeStreamState = (): StreamState => ({
  metadataSent: false,
  textOpen: false,
  reasoningOpen: false,
  calls: [],
  byIndex: new Map(),
  lastCall: undefined,
  finishReason: undefined,
  usage: undefined,
  done: false
})

const textId = "text"
const reasoningId = "reasoning"

/**
 * The parts one `data:` payload adds. Fails with a description when it is not JSON, not a chunk,
 * or an error the server reports in the stream (as OpenRouter, Groq and vLLM do).
 */
export const onData = (
  state: StreamState,
  data: string
): Result.Result<Array<Response.StreamPartEncoded>, { readonly description: string; readonly error?: ServerError }> => {
  if (data.trim() === "[DONE]") {
    state.done = true
    return Result.succeed([])
  }
  if (state.done) return Result.succeed([]) // nothing counts after [DONE]
  const json = parseJson(data)
  if (json === undefined) return Result.fail({ description: `a stream event is not JSON: ${excerpt(data)}` })
  if (isRecord(json) && json.error !== undefined && json.error !== null) {
    const error = serverError(json)
    return Result.fail({
      description: error?.message ?? `the server reported an error: ${excerpt(data)}`,
      ...(error === undefined ? {} : { error })
    })
  }
  const decoded = Schema.decodeUnknownResult(Chunk)(json)
  if (Result.isFailure(decoded)) {
    return Result.fail({ description: `a stream event has not the expected shape: ${decoded.failure.message}` })
  }
  return Result.succeed(onChunk(state, decoded.success))
}

const onChunk = (state: StreamState, chunk: Chunk): Array<Response.StreamPartEncoded> => {
  const parts: Array<Response.StreamPartEncoded> = []
  if (!state.metadataSent && hasMetadata(chunk)) {
    state.metadataSent = true
    parts.push(metadataPart(chunk))
  }
  if (chunk.usage != null) state.usage = chunk.usage
  // With `n` > 1 the choices' chunks come interleaved: only choice 0's are read.
  const choice = firstChoice(chunk.choices)
  if (choice == null) return parts
  const delta = choice.delta
  const content = contentText(delta?.content)
  const reasoning = (delta?.reasoning_content ?? delta?.reasoning ?? "") + content.reasoning
  if (reasoning !== "") {
    if (!state.reasoningOpen) {
      state.reasoningOpen = true
      parts.push({ type: "reasoning-start", id: reasoningId })
    }
    parts.push({ type: "reasoning-delta", id: reasoningId, delta: reasoning })
  }
  const text = content.text !== "" ? content.text : delta?.refusal ?? ""
  if (text !== "") {
    closeReasoning(state, parts)
    if (!state.textOpen) {
      state.textOpen = true
      parts.push({ type: "text-start", id: textId })
    }
    parts.push({ type: "text-delta", id: textId, delta: text })
  }
  for (const call of delta?.tool_calls ?? []) onToolCallDelta(state, call, parts)
  if (choice.finish_reason != null) state.finishReason = choice.finish_reason
  return parts
}

type ToolCallDelta = NonNullable<NonNullable<NonNullable<Chunk["choices"]>[number]["delta"]>["tool_calls"]>[number]

/**
 * The call a tool-call delta belongs to, a new one if it starts one. OpenAI numbers each call's
 * deltas with `index`, and sends the id and the name only in the first. Servers that send each
 * call whole may leave `index` out or `null` (Mistral, Gemini), send the id as `""` (Gemini,
 * Alibaba's later deltas), or number every call 0: so a different id at a known index is a new
 * call, and without an index a delta starts a call when it has a new id, or a name and no id.
 */
const callOf = (state: StreamState, delta: ToolCallDelta): StreamedToolCall => {
  const id = given(delta.id)
  const name = given(delta.function?.name)
  const known = delta.index == null ? state.lastCall : state.byIndex.get(delta.index)
  const startsAnother = known === undefined ||
    (id !== undefined ? known.id !== "" && id !== known.id : delta.index == null && name !== undefined)
  if (!startsAnother) return known
  const call: StreamedToolCall = { id: "", name: "", arguments: "", started: false }
  state.calls.push(call)
  if (delta.index != null) state.byIndex.set(delta.index, call)
  return call
}

const onToolCallDelta = (state: StreamState, delta: ToolCallDelta, parts: Array<Response.StreamPartEncoded>) => {
  const call = callOf(state, delta)
  state.lastCall = call
  const id = given(delta.id)
  const name = given(delta.function?.name)
  if (call.id === "" && id !== undefined) call.id = id
  if (call.name === "" && name !== undefined) call.name = name
  const args = delta.function?.arguments ?? ""
  if (!call.started && call.id !== "" && call.name !== "") {
    call.started = true
    parts.push({ type: "tool-params-start", id: call.id, name: call.name, providerExecuted: false })
    if (call.arguments !== "") parts.push({ type: "tool-params-delta", id: call.id, delta: call.arguments })
  }
  call.arguments += args
  if (call.started && args !== "") parts.push({ type: "tool-params-delta", id: call.id, delta: args })
}

const closeReasoning = (state: StreamState, parts: Array<Response.StreamPartEncoded>) => {
  if (!state.reasoningOpen) return
  state.reasoningOpen = false
  parts.push({ type: "reasoning-end", id: reasoningId })
}

/**
 * The parts that close the answer once the body has ended: open text and reasoning end, each tool
 * call is emitted whole, then the finish part. Fails when the answer is incomplete: the body ended
 * with neither `[DONE]` nor a finish reason (the connection was cut), or a tool call has no name.
 */
export const onEnd = (state: StreamState, newId: NewId): Result.Result<Array<Response.StreamPartEncoded>, string> => {
  if (!state.done && state.finishReason === undefined) {
    return Result.fail("the stream ended before the answer was complete (no finish reason and no [DONE])")
  }
  const parts: Array<Response.StreamPartEncoded> = []
  closeReasoning(state, parts)
  if (state.textOpen) {
    state.textOpen = false
    parts.push({ type: "text-end", id: textId })
  }
  for (const call of state.calls) {
    if (call.name === "") return Result.fail("the stream has a tool call without a function name")
    if (call.id === "") call.id = newId()
    if (!call.started) {
      parts.push({ type: "tool-params-start", id: call.id, name: call.name, providerExecuted: false })
      if (call.arguments !== "") parts.push({ type: "tool-params-delta", id: call.id, delta: call.arguments })
    }
    parts.push(
      { type: "tool-params-end", id: call.id },
      { type: "tool-call", id: call.id, name: call.name, params: parseArguments(call.arguments), providerExecuted: false }
    )
  }
  parts.push({ type: "finish", reason: finishReason(state.finishReason, state.calls.length > 0), usage: usage(state.usage) })
  return Result.succeed(parts)
}
