/**
 * The port between a toolset and an agent runtime: what the toolset needs from a session, and no
 * more. Adapters implement it (the in-memory test kit, a real agent loop).
 *
 * @since 0.1.0
 */
import { Context, Schema } from "effect"
import type { Effect } from "effect"
import type { ChatContext, ChatItem } from "./ChatContext.ts"

/**
 * A reply the toolset asks the agent for.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReplyRequest {
  readonly instructions: string
  readonly toolChoice: "none" | "auto"
}

/**
 * A session operation failed.
 *
 * @since 0.1.0
 * @category errors
 */
export class SessionError extends Schema.TaggedError<SessionError>()("SessionError", {
  operation: Schema.Literals(["chatContext", "insert", "generateReply"]),
  message: Schema.String,
  cause: Schema.optionalKey(Schema.Defect())
}) {}

/**
 * @since 0.1.0
 * @category services
 */
export class AgentSession extends Context.Service<AgentSession, {
  /** The current agent's chat context. */
  readonly chatContext: Effect.Effect<ChatContext, SessionError>
  /**
   * The current agent's chat items in creation order, without a copy: it may be the session's own
   * array. Read it at once, never keep or change it. Must cost O(1): the toolset reads it before
   * every reply, and a `ChatContext` of a long history costs O(n) to build (its items are parsed).
   */
  readonly items: Effect.Effect<ReadonlyArray<ChatItem>, SessionError>
  /**
   * Inserts items into the current agent's chat context, by creation time. Must cost O(k) (or
   * O(k log n)) for k items: never a copy of the whole history. All or nothing, as far as it can:
   * the toolset inserts a function call with its output in one call, and after a failure it looks
   * in the chat and inserts what is missing, but it cannot once its toolset has closed.
   */
  readonly insert: (items: ReadonlyArray<ChatItem>) => Effect.Effect<void, SessionError>
  /**
   * Completes when the session is inactive: not generating or speaking, the user not speaking. It
   * must complete only while the session is inactive (an adapter woken by a state change checks
   * again): the toolset requests its reply right after, without suspending.
   */
  readonly awaitInactive: Effect.Effect<void>
  /**
   * Asks the agent for one reply. Completes once the agent has taken the request up (it is making
   * that reply now, or will next, whatever else it is asked meanwhile); the reply itself may go on
   * for as long as the agent speaks (`awaitInactive` tells when it is over). Fails if the request
   * cannot be taken up: the toolset asks again (its `sessionRetry`). The toolset's `replyTimeout`
   * bounds how long taking it up may take, never how long the reply lasts.
   */
  readonly generateReply: (request: ReplyRequest) => Effect.Effect<void, SessionError>
}>()("effect-async-toolset/AgentSession") {}
