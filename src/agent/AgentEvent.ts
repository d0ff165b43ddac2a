/**
 * What an `AiAgent` reports as it works, for an app's UI: turns starting and ending, the agent's
 * words as they stream in, and every item added to the chat. `agent.events` publishes them as a
 * `Stream`.
 *
 * Each event is a plain object with a `_tag`, described by a Schema: `AgentEvent` is their tagged
 * union, with a constructor per case (`TextDelta.make({ ... })`), guards
 * (`AgentEvent.guards.ItemAdded(u)`), `match`, and a JSON codec (`JsonString`) to send events to
 * a UI and read them back there (a chat item travels in its encoded form and comes back as the
 * same class).
 *
 * How a UI shows a streamed answer: the `TextDelta`s of one `itemId` are a draft of the assistant
 * message with that id; the `ItemAdded` of that id replaces the draft with the stored message (its
 * content is the deltas joined). A draft whose turn ends with no such item was dropped: the model
 * failed mid-way (`TurnEnded` with `failed`) or said only blanks.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { AgentEvent } from "effect-async-toolset"
 *
 * const event = AgentEvent.TextDelta.make({ turn: 1, itemId: "msg_1", delta: "Hel", at: 0 })
 * const text = Schema.encodeSync(AgentEvent.JsonString)(event) // send it over a socket
 * const back = Schema.decodeUnknownSync(AgentEvent.JsonString)(text) // in the UI
 * if (AgentEvent.AgentEvent.guards.TextDelta(back)) console.log(back.delta)
 * ```
 *
 * @since 0.1.0
 */
import { Schema } from "effect"
import { ChatItem } from "../ChatContext.ts"

/**
 * A turn was taken up (it may have waited behind others).
 *
 * @since 0.1.0
 * @category models
 */
export const TurnStarted = Schema.TaggedStruct("TurnStarted", {
  turn: Schema.Number,
  /** `user`: a user message; `reply`: a reply request (a toolset's, or `generateReply`). */
  cause: Schema.Literals(["user", "reply"]),
  /** Clock time in milliseconds. */
  at: Schema.Number
})

/**
 * @since 0.1.0
 * @category models
 */
export type TurnStarted = typeof TurnStarted.Type

/**
 * A piece of what the agent is saying, as the model streams it. The deltas of one `itemId`, in
 * order, make the content of the assistant message stored under that id at the end of the model's
 * answer (see the module's notes for a UI).
 *
 * @since 0.1.0
 * @category models
 */
export const TextDelta = Schema.TaggedStruct("TextDelta", {
  turn: Schema.Number,
  /** The id the assistant message will have in the chat. */
  itemId: Schema.String,
  delta: Schema.String,
  at: Schema.Number
})

/**
 * @since 0.1.0
 * @category models
 */
export type TextDelta = typeof TextDelta.Type

/**
 * An item is in the chat: a user or assistant message, a call and its output, a toolset's update.
 *
 * @since 0.1.0
 * @category models
 */
export const ItemAdded = Schema.TaggedStruct("ItemAdded", {
  item: ChatItem,
  at: Schema.Number
})

/**
 * @since 0.1.0
 * @category models
 */
export type ItemAdded = typeof ItemAdded.Type

/**
 * A turn is over.
 *
 * @since 0.1.0
 * @category models
 */
export const TurnEnded = Schema.TaggedStruct("TurnEnded", {
  turn: Schema.Number,
  /** `answered`: the agent said something; `silent`: it chose to say nothing; `failed`: the model failed. */
  outcome: Schema.Literals(["answered", "silent", "failed"]),
  /** What the turn stored as the agent's words, its messages joined by newlines. */
  text: Schema.String,
  at: Schema.Number
})

/**
 * @since 0.1.0
 * @category models
 */
export type TurnEnded = typeof TurnEnded.Type

/**
 * Every event of an agent: a tagged union of plain objects, with `guards`, `match`, `isAnyOf`
 * and `cases`.
 *
 * @since 0.1.0
 * @category models
 */
export const AgentEvent = Schema.Union([TurnStarted, TextDelta, ItemAdded, TurnEnded]).pipe(Schema.toTaggedUnion("_tag"))

/**
 * @since 0.1.0
 * @category models
 */
export type AgentEvent = typeof AgentEvent.Type

/**
 * An event as JSON text, and back: `Schema.encodeSync(JsonString)(event)` gives the text to send,
 * `Schema.decodeUnknownSync(JsonString)(text)` (or `decodeUnknownEffect`) checks and reads it.
 *
 * @since 0.1.0
 * @category codecs
 */
export const JsonString = Schema.fromJsonString(Schema.toCodecJson(AgentEvent))
