/**
 * What a toolset reports as it works, for an app's UI (a status line of background calls) and for
 * logs: calls starting, updating and ending, and replies being scheduled, delivered or skipped.
 * `AsyncToolset.events` publishes them as a `Stream`.
 *
 * @since 0.1.0
 */

/**
 * How a call ended.
 *
 * @since 0.1.0
 * @category models
 */
export type Outcome = "done" | "error" | "cancelled" | "timed-out"

interface Base {
  readonly toolsetId: string
  /** Clock time in milliseconds. */
  readonly at: number
}

/**
 * A call was admitted and its fiber started.
 *
 * @since 0.1.0
 * @category models
 */
export interface CallStarted extends Base {
  readonly _tag: "CallStarted"
  readonly callId: string
  readonly name: string
  readonly arguments: string
}

/**
 * A call reported progress. `step` 0 is the first update (the one the model got as the output).
 *
 * @since 0.1.0
 * @category models
 */
export interface CallUpdated extends Base {
  readonly _tag: "CallUpdated"
  readonly callId: string
  readonly name: string
  readonly step: number
  /** The update as the tool gave it: its string, or the JSON of its value. */
  readonly message: string
}

/**
 * A call's fiber stopped.
 *
 * @since 0.1.0
 * @category models
 */
export interface CallEnded extends Base {
  readonly _tag: "CallEnded"
  readonly callId: string
  readonly name: string
  readonly outcome: Outcome
  /** Milliseconds from start to end. */
  readonly duration: number
}

/**
 * An item (`<callId>_update_<n>` or `<callId>_final`) is in the chat and waits for a reply.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReplyScheduled extends Base {
  readonly _tag: "ReplyScheduled"
  readonly callId: string
}

/**
 * One reply was requested for these items.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReplyDelivered extends Base {
  readonly _tag: "ReplyDelivered"
  readonly callIds: ReadonlyArray<string>
  readonly instructions: string
}

/**
 * No reply was requested for these items: the agent had already spoken after them (`skip` mode),
 * or the session failed.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReplySkipped extends Base {
  readonly _tag: "ReplySkipped"
  readonly callIds: ReadonlyArray<string>
  readonly reason: "already-answered" | "session-failed"
}

/**
 * @since 0.1.0
 * @category models
 */
export type ToolsetEvent = CallStarted | CallUpdated | CallEnded | ReplyScheduled | ReplyDelivered | ReplySkipped
