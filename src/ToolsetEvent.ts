/**
 * What a toolset reports as it works, for an app's UI (a status line of background calls) and for
 * logs: calls starting, updating and ending, and replies being scheduled, delivered or skipped.
 * `AsyncToolset.events` publishes them as a `Stream`.
 *
 * Each event is a plain object with a `_tag`, described by a Schema: `ToolsetEvent` is their
 * tagged union, with a constructor per case (`CallStarted.make({ ... })`), guards
 * (`ToolsetEvent.guards.CallEnded(u)`), `match`, and a JSON codec (`JsonString`) to send events to
 * a UI and read them back there.
 *
 * @example
 * ```ts
 * import { Schema } from "effect"
 * import { ToolsetEvent } from "effect-async-toolset"
 *
 * const event = ToolsetEvent.CallStarted.make({
 *   toolsetId: "travel", callId: "call_1", name: "book_flight", arguments: `{"to":"Tokyo"}`, at: 0
 * })
 * const text = Schema.encodeSync(ToolsetEvent.JsonString)(event) // send it over a socket
 * const back = Schema.decodeUnknownSync(ToolsetEvent.JsonString)(text) // in the UI
 * const line = ToolsetEvent.ToolsetEvent.match(back, {
 *   CallStarted: (e) => `${e.name} started`,
 *   CallUpdated: (e) => `${e.name}: ${e.message}`,
 *   CallEnded: (e) => `${e.name} ${e.outcome}`,
 *   ReplyScheduled: () => "",
 *   ReplyDelivered: () => "",
 *   ReplySkipped: () => ""
 * })
 * ```
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * How a call ended.
 *
 * @since 0.1.0
 * @category models
 */
export const Outcome = Schema.Literals(["done", "error", "cancelled", "timed-out"])

/**
 * @since 0.1.0
 * @category models
 */
export type Outcome = typeof Outcome.Type

const base = {
  toolsetId: Schema.String,
  /** Clock time in milliseconds. */
  at: Schema.Number
}

/**
 * A call was admitted and its fiber started.
 *
 * @since 0.1.0
 * @category models
 */
export const CallStarted = Schema.TaggedStruct("CallStarted", {
  ...base,
  callId: Schema.String,
  name: Schema.String,
  /** The model's argument text, as it sent it. */
  arguments: Schema.String
})

/**
 * @since 0.1.0
 * @category models
 */
export type CallStarted = typeof CallStarted.Type

/**
 * A call reported progress. `step` 0 is the first update (the one the model got as the output).
 *
 * @since 0.1.0
 * @category models
 */
export const CallUpdated = Schema.TaggedStruct("CallUpdated", {
  ...base,
  callId: Schema.String,
  name: Schema.String,
  step: Schema.Number,
  /** The update as the tool gave it: its string, or the JSON of its value. */
  message: Schema.String
})

/**
 * @since 0.1.0
 * @category models
 */
export type CallUpdated = typeof CallUpdated.Type

/**
 * A call's fiber stopped.
 *
 * @since 0.1.0
 * @category models
 */
export const CallEnded = Schema.TaggedStruct("CallEnded", {
  ...base,
  callId: Schema.String,
  name: Schema.String,
  outcome: Outcome,
  /** Milliseconds from start to end. */
  duration: Schema.Number
})

/**
 * @since 0.1.0
 * @category models
 */
export type CallEnded = typeof CallEnded.Type

/**
 * An item (`<callId>_update_<n>` or `<callId>_final`) is in the chat and waits for a reply.
 *
 * @since 0.1.0
 * @category models
 */
export const ReplyScheduled = Schema.TaggedStruct("ReplyScheduled", {
  ...base,
  callId: Schema.String
})

/**
 * @since 0.1.0
 * @category models
 */
export type ReplyScheduled = typeof ReplyScheduled.Type

/**
 * One reply was requested for these items.
 *
 * @since 0.1.0
 * @category models
 */
export const ReplyDelivered = Schema.TaggedStruct("ReplyDelivered", {
  ...base,
  callIds: Schema.Array(Schema.String),
  instructions: Schema.String
})

/**
 * @since 0.1.0
 * @category models
 */
export type ReplyDelivered = typeof ReplyDelivered.Type

/**
 * No reply was requested for these items: the agent had already spoken after them (`skip` mode),
 * or the session failed.
 *
 * @since 0.1.0
 * @category models
 */
export const ReplySkipped = Schema.TaggedStruct("ReplySkipped", {
  ...base,
  callIds: Schema.Array(Schema.String),
  reason: Schema.Literals(["already-answered", "session-failed"])
})

/**
 * @since 0.1.0
 * @category models
 */
export type ReplySkipped = typeof ReplySkipped.Type

/**
 * Every event of a toolset: a tagged union of plain objects (the engine builds them as object
 * literals), with `guards`, `match`, `isAnyOf` and `cases`.
 *
 * @since 0.1.0
 * @category models
 */
export const ToolsetEvent = Schema.Union([CallStarted, CallUpdated, CallEnded, ReplyScheduled, ReplyDelivered, ReplySkipped])
  .pipe(Schema.toTaggedUnion("_tag"))

/**
 * @since 0.1.0
 * @category models
 */
export type ToolsetEvent = typeof ToolsetEvent.Type

/**
 * An event as JSON text, and back: `Schema.encodeSync(JsonString)(event)` gives the text to send,
 * `Schema.decodeUnknownSync(JsonString)(text)` (or `decodeUnknownEffect`) checks and reads it.
 *
 * @since 0.1.0
 * @category codecs
 */
export const JsonString = Schema.fromJsonString(Schema.toCodecJson(ToolsetEvent))
