/**
 * A session's chat kept in the durable store, beside its calls: the agent's messages, its calls
 * and their outputs, and the durable toolsets' updates and results, each stored once by its item
 * id. When the process starts again, the agent opens the session and has the whole conversation
 * back; the durable toolsets find what is still owed a reply.
 *
 * `DurableChat.layer({ sessionId })` opens a session; `DurableChat.agentLayer(options)` runs
 * `AiAgent` on it. For another agent runtime, give its chat the session's `history` and hand every
 * item it adds to `save`.
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Result, Schedule } from "effect"
import type { LanguageModel } from "effect/ai"
import type { SqlError } from "effect/sql/SqlError"
import type { AgentSession } from "../AgentSession.ts"
import * as AiAgent from "../agent/AiAgent.ts"
import { ChatContext } from "../ChatContext.ts"
import type { ChatItem } from "../ChatContext.ts"
import { DurableStore } from "./DurableStore.ts"
import { loadChat, markReplied, saveItems } from "./internal/chatItems.ts"
import { decodeItem, tryDecode } from "./internal/tables.ts"

/**
 * @since 0.1.0
 * @category services
 */
export class DurableChat extends Context.Service<DurableChat, {
  readonly sessionId: string
  /** The conversation as the store held it when the session opened. */
  readonly history: ChatContext
  /**
   * Saves items the agent added to its chat; items stored already (or put into the agent's chat by
   * a durable toolset) are skipped. A save that fails after retries is logged.
   */
  readonly save: (items: ReadonlyArray<ChatItem>) => Effect.Effect<void>
  /** Whether an item is in the agent's chat (loaded, saved, or put there by a durable toolset). */
  readonly has: (itemId: string) => boolean
  /** A durable toolset is putting these stored items into the agent's chat: they need no save. */
  readonly adopt: (itemIds: ReadonlyArray<string>) => void
  /**
   * When the newest item the agent's chat holds was made, as far as the store knows (loaded or
   * saved): a durable call's result recorded before it is placed after it.
   */
  readonly newestAt: () => number
  /**
   * A reply about these items was asked for: the first assistant message saved from now on is
   * stored in the same statement as the record that they are owed nothing (so a process that stops
   * right after the reply never asks for it again). Items of an earlier request no message marked
   * (the agent answered in silence) are marked now.
   */
  readonly replyFor: (itemIds: ReadonlyArray<string>) => void
  /** No reply will be asked for these items (the agent already answered them): they are owed nothing. */
  readonly markReplied: (itemIds: ReadonlyArray<string>) => Effect.Effect<void>
}>()("effect-async-toolset/DurableChat") {}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** The conversation's id in the store: `[A-Za-z0-9_-]`, at most 100 characters. */
  readonly sessionId: string
}

const sessionIdPattern = /^[A-Za-z0-9_-]{1,100}$/

/**
 * Opens a session's chat: reads what the store holds of it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(options: Options) {
  if (!sessionIdPattern.test(options.sessionId)) {
    return yield* Effect.die(new Error(`DurableChat: session id "${options.sessionId}" must match ${sessionIdPattern}`))
  }
  const { sessionId } = options
  const store = yield* DurableStore
  const rows = yield* loadChat(store.sql, sessionId)
  // An item that cannot be read (a corrupted store) is logged and left out: the rest loads.
  const items: Array<ChatItem> = []
  for (const row of rows) {
    const item = tryDecode(() => decodeItem(row.item, row.createdAt))
    if (Result.isSuccess(item)) items.push(item.success)
    else {
      yield* Effect.logError(`The stored item ${row.itemId} of session ${sessionId} cannot be read: ${item.failure}. It is left out of the conversation.`)
        .pipe(Effect.annotateLogs({ session: sessionId }))
    }
  }
  const history = new ChatContext({ items })
  const known = new Set(rows.map((row) => row.itemId))
  let newest = rows.reduce((max, row) => Math.max(max, row.createdAt), Number.NEGATIVE_INFINITY)
  let awaitingReply: ReadonlyArray<string> = []
  const retry = Schedule.exponential("100 millis").pipe(Schedule.upTo({ times: 4 }))
  const services = yield* Effect.context<never>()
  const mark = (itemIds: ReadonlyArray<string>) =>
    markReplied(store.sql, sessionId, itemIds).pipe(
      Effect.retry(retry),
      Effect.catchCause((cause) =>
        Effect.logWarning("could not record that a reply was asked for; after a restart it may be asked for again", cause)
      ),
      Effect.annotateLogs({ session: sessionId })
    )
  return DurableChat.of({
    sessionId,
    history,
    has: (itemId) => known.has(itemId),
    adopt: (itemIds) => {
      for (const id of itemIds) known.add(id)
    },
    newestAt: () => newest,
    replyFor: (itemIds) => {
      const left = awaitingReply
      awaitingReply = itemIds
      if (left.length > 0) Effect.runForkWith(services)(mark(left))
    },
    markReplied: mark,
    save: (items) =>
      Effect.suspend(() => {
        const fresh = items.filter((item) => !known.has(item.id))
        if (fresh.length === 0) return Effect.void
        for (const item of fresh) {
          known.add(item.id)
          if (item.createdAt > newest) newest = item.createdAt
        }
        // The agent's reply, when one was asked for: it answers those items, in the same commit.
        const replied = fresh.some((item) => item._tag === "ChatMessage" && item.role === "assistant") ? awaitingReply : []
        if (replied.length > 0) awaitingReply = []
        return saveItems(store.sql, sessionId, fresh, replied).pipe(
          Effect.retry(retry),
          Effect.catchCause((cause) => {
            for (const item of fresh) known.delete(item.id)
            if (replied.length > 0 && awaitingReply.length === 0) awaitingReply = replied
            return Effect.logError(
              `could not store ${fresh.map((item) => item.id).join(", ")}; they are in the agent's chat but will be missing after a restart`,
              cause
            )
          }),
          Effect.annotateLogs({ session: sessionId })
        )
      })
  })
})

/**
 * Opens a session's chat as a layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<DurableChat, SqlError, DurableStore> =>
  Layer.effect(DurableChat, make(options))

/**
 * `AiAgent` on the session's chat: it starts with the stored conversation, and stores every item it
 * adds. Provides `AiAgent` and `AgentSession` (for the toolsets).
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { DurableChat, DurableStore } from "effect-async-toolset/durable"
 *
 * const agent = DurableChat.agentLayer({ instructions: "You book flights." }).pipe(
 *   Layer.provideMerge(DurableChat.layer({ sessionId: "alice" })),
 *   Layer.provideMerge(DurableStore.layerEmbedded({ dataDir: "./data" }))
 * )
 * // then provide a LanguageModel layer
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const agentLayer = (
  options: Omit<AiAgent.Options, "history" | "store"> = {}
): Layer.Layer<AiAgent.AiAgent | AgentSession, never, DurableChat | LanguageModel.LanguageModel> =>
  Layer.unwrap(DurableChat.useSync((chat) => AiAgent.layer({ ...options, history: chat.history, store: chat })))
