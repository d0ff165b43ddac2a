/**
 * The conversation as the toolset sees it: messages, function calls and their outputs, ordered by
 * creation time. Every item is Schema-backed data, so a chat context can be encoded, stored and
 * decoded again, and it is immutable: inserting gives a new context.
 *
 * The toolset never copies a whole history to add to it; it hands new items to the
 * `AgentSession`, whose `insert` costs O(k) for k items.
 *
 * @since 0.1.0
 */
import { Clock, Effect, Schema } from "effect"
import { newId } from "./internal/id.ts"
import { insertSorted } from "./internal/ordered.ts"

/**
 * A message from the system, the user or the assistant.
 *
 * @since 0.1.0
 * @category models
 */
export class ChatMessage extends Schema.TaggedClass<ChatMessage>()("ChatMessage", {
  id: Schema.String,
  role: Schema.Literals(["system", "developer", "user", "assistant"]),
  content: Schema.String,
  createdAt: Schema.Number
}) {
}

/**
 * A message stamped with the current `Clock` time.
 *
 * @since 0.1.0
 * @category constructors
 */
export const message = (role: ChatMessage["role"], content: string): Effect.Effect<ChatMessage> =>
  Effect.map(Clock.currentTimeMillis, (createdAt) => new ChatMessage({ id: newId("msg"), role, content, createdAt }))

/**
 * A tool call as the model made it: `arguments` is the model's JSON text, untouched.
 *
 * @since 0.1.0
 * @category models
 */
export class FunctionCall extends Schema.TaggedClass<FunctionCall>()("FunctionCall", {
  id: Schema.String,
  callId: Schema.String,
  name: Schema.String,
  arguments: Schema.String,
  createdAt: Schema.Number,
  extra: Schema.optionalKey(Schema.Record(Schema.String, Schema.Unknown))
}) {
}

/**
 * A function call stamped with the current `Clock` time.
 *
 * @since 0.1.0
 * @category constructors
 */
export const functionCall = (options: {
    readonly callId: string
    readonly name: string
    readonly arguments?: string | undefined
    readonly extra?: Record<string, unknown> | undefined
  }): Effect.Effect<FunctionCall> =>
    Effect.map(Clock.currentTimeMillis, (createdAt) =>
      new FunctionCall({
        id: newId("fc"),
        callId: options.callId,
        name: options.name,
        arguments: options.arguments ?? "{}",
        createdAt,
        ...(options.extra === undefined ? {} : { extra: options.extra })
      }))

/**
 * What a tool call produced, as the model will read it. `isError` marks outputs that report a
 * failure (bad arguments, a typed failure, a `ToolError`, a defect, a cancellation, a timeout).
 *
 * @since 0.1.0
 * @category models
 */
export class FunctionCallOutput extends Schema.TaggedClass<FunctionCallOutput>()("FunctionCallOutput", {
  id: Schema.String,
  callId: Schema.String,
  name: Schema.String,
  output: Schema.String,
  isError: Schema.Boolean,
  createdAt: Schema.Number,
  extra: Schema.optionalKey(Schema.Record(Schema.String, Schema.Unknown))
}) {
}

/**
 * A function call output stamped with the current `Clock` time.
 *
 * @since 0.1.0
 * @category constructors
 */
export const functionCallOutput = (options: {
    readonly callId: string
    readonly name: string
    readonly output: string
    readonly isError: boolean
    readonly extra?: Record<string, unknown> | undefined
  }): Effect.Effect<FunctionCallOutput> =>
    Effect.map(Clock.currentTimeMillis, (createdAt) =>
      new FunctionCallOutput({
        id: newId("fco"),
        callId: options.callId,
        name: options.name,
        output: options.output,
        isError: options.isError,
        createdAt,
        ...(options.extra === undefined ? {} : { extra: options.extra })
      }))

/**
 * Any item of a chat context.
 *
 * @since 0.1.0
 * @category models
 */
export const ChatItem = Schema.Union([ChatMessage, FunctionCall, FunctionCallOutput])

/**
 * @since 0.1.0
 * @category models
 */
export type ChatItem = typeof ChatItem.Type

/**
 * An immutable, creation-ordered list of chat items.
 *
 * @since 0.1.0
 * @category models
 */
export class ChatContext extends Schema.Class<ChatContext>("effect-async-toolset/ChatContext")({
  items: Schema.Array(ChatItem)
}) {
  /**
   * The empty chat context.
   *
   * @since 0.1.0
   */
  static readonly empty: ChatContext = new ChatContext({ items: [] })

  /**
   * A chat context holding `items`, ordered by `createdAt` (ties keep the given order).
   *
   * @since 0.1.0
   */
  static fromItems(items: Iterable<ChatItem>): ChatContext {
    return ChatContext.empty.insert(items)
  }

  /**
   * A new context with `items` inserted by creation time; equal times keep insertion order.
   *
   * @since 0.1.0
   */
  insert(items: Iterable<ChatItem>): ChatContext {
    const next = this.items.slice()
    for (const item of items) insertSorted(next, item)
    return new ChatContext({ items: next })
  }

  /**
   * The newest item, if any.
   *
   * @since 0.1.0
   */
  get last(): ChatItem | undefined {
    return this.items[this.items.length - 1]
  }
}
