/**
 * Our chat data as `effect/ai` sees it, and back: a `ChatContext` becomes a `Prompt` (messages with
 * text, tool-call and tool-result parts, the synthetic `<callId>_update_<n>` / `<callId>_final`
 * pairs included), a `Prompt` becomes chat items, and a `FunctionTool` becomes the `Tool` a
 * provider describes to the model.
 *
 * The conversion is lossless both ways for what the model reads (roles, texts, call ids, tool
 * names, arguments, outputs, error flags; arguments travel as JSON values, so only their
 * formatting may change). It is lossless for our own bookkeeping too (item ids, creation times,
 * the `developer` role, an item's `extra`): those ride along in the parts' provider options under
 * {@link metadataKey}, which providers ignore.
 *
 * @since 0.1.0
 */
import { Clock, Effect } from "effect"
import type { Schema } from "effect"
import { Prompt, Tool } from "effect/ai"
import { ChatContext, ChatMessage, FunctionCall, FunctionCallOutput } from "../ChatContext.ts"
import type { ChatItem } from "../ChatContext.ts"
import type * as FunctionTool from "../FunctionTool.ts"
import { newId } from "../internal/id.ts"

/**
 * The provider-options key under which a part (or a system message) carries the chat item it was
 * made from: `{ id, createdAt, role?, extra? }`.
 *
 * @since 0.1.0
 * @category constants
 */
export const metadataKey = "effect-async-toolset"

interface Metadata {
  readonly id: string
  readonly createdAt: number
  readonly role?: "developer"
  readonly extra?: Schema.JsonObject
}

type Options = Prompt.ProviderOptions

const metadataOf = (item: ChatItem): Options => {
  const meta: { [key: string]: Schema.Json } = { id: item.id, createdAt: item.createdAt }
  if (item._tag === "ChatMessage" && item.role === "developer") meta.role = "developer"
  if (item._tag !== "ChatMessage" && item.extra !== undefined && isJson(item.extra)) meta.extra = item.extra
  return { [metadataKey]: meta }
}

const isJson = (u: unknown): u is Schema.Json => {
  switch (typeof u) {
    case "string":
    case "boolean":
      return true
    case "number":
      return Number.isFinite(u)
    case "object":
      if (u === null) return true
      if (Array.isArray(u)) return u.every(isJson)
      return Object.getPrototypeOf(u) === Object.prototype && Object.values(u).every(isJson)
    default:
      return false
  }
}

const isJsonObject = (json: Schema.Json | undefined): json is Schema.JsonObject =>
  typeof json === "object" && json !== null && !Array.isArray(json)

const readMetadata = (options: Options | undefined): Metadata | undefined => {
  const meta = options?.[metadataKey]
  if (typeof meta !== "object" || meta === null || Array.isArray(meta)) return undefined
  const { createdAt, extra, id, role } = meta as { readonly [key: string]: Schema.Json | undefined }
  if (typeof id !== "string" || typeof createdAt !== "number") return undefined
  return {
    id,
    createdAt,
    ...(role === "developer" ? { role } : {}),
    ...(isJsonObject(extra) ? { extra } : {})
  }
}

/** The model's JSON text as a value; text that is not JSON is passed on as is. */
const parseArguments = (text: string): unknown => {
  if (text.trim() === "") return {}
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

/**
 * A tool call's parameters (as `effect/ai` gives them, already parsed) as the JSON text a
 * `FunctionCall` keeps and `AsyncToolset.execute` decodes. A string is taken as the text itself.
 *
 * @since 0.1.0
 * @category converting
 */
export const argumentsText = (params: unknown): string => {
  if (typeof params === "string") return params
  try {
    return JSON.stringify(params ?? {}) ?? "{}"
  } catch (error) {
    // Not JSON text, on purpose: the toolset then tells the model its arguments were unusable,
    // instead of running the tool with none.
    return `<arguments with no JSON form: ${error instanceof Error ? error.message : String(error)}>`
  }
}

const resultText = (result: unknown): string => {
  if (typeof result === "string") return result
  try {
    return JSON.stringify(result) ?? ""
  } catch {
    return String(result)
  }
}

/**
 * The prompt for a sequence of chat items, in their order. Assistant words and the function calls
 * that follow them form one assistant message; the outputs after them form one tool message, so
 * every call is answered by the tool message right after it, as providers require.
 *
 * Takes any iterable, so a caller can add items for one request (notes, placeholders) without
 * copying the history.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ChatContext, PromptConversion } from "effect-async-toolset"
 *
 * const program = Effect.gen(function*() {
 *   const chat = ChatContext.ChatContext.fromItems([
 *     yield* ChatContext.message("user", "Book me a flight"),
 *     yield* ChatContext.functionCall({ callId: "c1", name: "book_flight", arguments: `{"to":"Tokyo"}` }),
 *     yield* ChatContext.functionCallOutput({ callId: "c1", name: "book_flight", output: "Looking up flights", isError: false })
 *   ])
 *   const prompt = PromptConversion.toPrompt(chat.items)
 *   // roles: user, assistant (tool-call c1), tool (tool-result c1)
 * })
 * ```
 *
 * @since 0.1.0
 * @category converting
 */
export const toPrompt = (items: Iterable<ChatItem>): Prompt.Prompt => {
  const messages: Array<Prompt.Message> = []
  let assistant: Array<Prompt.AssistantMessagePart> | undefined
  let tool: Array<Prompt.ToolMessagePart> | undefined
  const close = () => {
    if (assistant !== undefined) messages.push(Prompt.makeMessage("assistant", { content: assistant }))
    if (tool !== undefined) messages.push(Prompt.makeMessage("tool", { content: tool }))
    assistant = undefined
    tool = undefined
  }
  /** The open assistant message; a new one once outputs have followed the current one. */
  const assistantParts = () => {
    if (tool !== undefined) close()
    return assistant ??= []
  }
  for (const item of items) {
    const options = metadataOf(item)
    switch (item._tag) {
      case "ChatMessage": {
        if (item.role === "assistant") {
          assistantParts().push(Prompt.makePart("text", { text: item.content, options }))
          break
        }
        close()
        messages.push(
          item.role === "user"
            ? Prompt.makeMessage("user", { content: [Prompt.makePart("text", { text: item.content, options })] })
            : Prompt.makeMessage("system", { content: item.content, options })
        )
        break
      }
      case "FunctionCall": {
        assistantParts().push(Prompt.makePart("tool-call", {
          id: item.callId,
          name: item.name,
          params: parseArguments(item.arguments),
          providerExecuted: false,
          options
        }))
        break
      }
      case "FunctionCallOutput": {
        ;(tool ??= []).push(Prompt.makePart("tool-result", {
          id: item.callId,
          name: item.name,
          isFailure: item.isError,
          result: item.output,
          providerExecuted: false,
          options
        }))
        break
      }
    }
  }
  close()
  return Prompt.fromMessages(messages)
}

/**
 * The chat items a prompt holds, in prompt order: system and user messages, assistant words, tool
 * calls (arguments as JSON text) and tool results (a non-string result as JSON text). Parts with
 * no chat form (files, reasoning, approvals) are left out. Items made by {@link toPrompt} come
 * back as they were; others get a new id and the current `Clock` time (never earlier than the item
 * before them, so the context stays ordered).
 *
 * @since 0.1.0
 * @category converting
 */
export const fromPrompt = (prompt: Prompt.Prompt): Effect.Effect<ChatContext> =>
  Effect.map(Clock.currentTimeMillis, (now) => {
    const items: Array<ChatItem> = []
    let last = Number.NEGATIVE_INFINITY
    const stamp = (prefix: string, options: Options | undefined) => {
      const meta = readMetadata(options)
      const createdAt = Math.max(meta?.createdAt ?? now, last)
      last = createdAt
      return { meta, id: meta?.id ?? newId(prefix), createdAt }
    }
    const message = (role: ChatMessage["role"], content: string, options: Options | undefined) => {
      const { createdAt, id, meta } = stamp("msg", options)
      items.push(new ChatMessage({ id, role: meta?.role ?? role, content, createdAt }))
    }
    const call = (part: Prompt.ToolCallPart) => {
      const { createdAt, id, meta } = stamp("fc", part.options)
      items.push(
        new FunctionCall({
          id,
          callId: part.id,
          name: part.name,
          arguments: argumentsText(part.params),
          createdAt,
          ...(meta?.extra === undefined ? {} : { extra: meta.extra })
        })
      )
    }
    const result = (part: Prompt.ToolResultPart) => {
      const { createdAt, id, meta } = stamp("fco", part.options)
      items.push(
        new FunctionCallOutput({
          id,
          callId: part.id,
          name: part.name,
          output: resultText(part.result),
          isError: part.isFailure,
          createdAt,
          ...(meta?.extra === undefined ? {} : { extra: meta.extra })
        })
      )
    }
    for (const m of prompt.content) {
      switch (m.role) {
        case "system":
          message("system", m.content, m.options)
          break
        case "user": {
          const texts = m.content.filter((p): p is Prompt.TextPart => p.type === "text")
          if (texts.length > 0) message("user", texts.map((p) => p.text).join(""), texts[0]!.options)
          break
        }
        case "assistant":
          for (const part of m.content) {
            if (part.type === "text") message("assistant", part.text, part.options)
            else if (part.type === "tool-call") call(part)
            else if (part.type === "tool-result") result(part)
          }
          break
        case "tool":
          for (const part of m.content) if (part.type === "tool-result") result(part)
          break
      }
    }
    return new ChatContext({ items })
  })

/**
 * One of our tools as `effect/ai` describes it to a provider: raw JSON Schema parameters, no
 * handler of its own.
 *
 * @since 0.1.0
 * @category models
 */
export type AiTool = Tool.Tool<string, {
  readonly parameters: typeof Schema.Unknown
  readonly success: typeof Schema.Unknown
  readonly failure: typeof Schema.Never
  readonly failureMode: "error"
}>

const tools = new WeakMap<FunctionTool.Any, AiTool>()

/**
 * The `effect/ai` tool a provider describes to the model for one of our tools: same name and
 * description, its JSON Schema as is (strict where the tool's schema is). The tool has no
 * handler: an agent loop dispatches the model's calls to `AsyncToolset.execute`. The same tool
 * gives the same `Tool` object each time, so a provider's per-tool caches stay warm.
 *
 * @since 0.1.0
 * @category converting
 */
export const toTool = (tool: FunctionTool.Any): AiTool => {
  let converted = tools.get(tool)
  if (converted === undefined) {
    // A dynamic tool keeps the JSON Schema as is: `Tool.getJsonSchema` gives it to the provider.
    converted = Tool.dynamic(tool.name, { description: tool.description, parameters: tool.jsonSchema })
      .annotate(Tool.Strict, tool.strict)
    tools.set(tool, converted)
  }
  return converted
}
