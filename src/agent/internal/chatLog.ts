/**
 * The agent's chat: one array of items kept in creation order, the ids the prompt builder and the
 * turns look up in it, and the store hook. Inserting k items costs O(k) when they belong at the
 * tail (nearly always); nothing copies the history except a `ChatContext` handed out, which is
 * kept until the chat changes.
 *
 * Every addition is published as an `ItemAdded` event once the whole batch is in the chat
 * (subscribers may run inside the publish).
 */
import { Effect } from "effect"
import type * as AiAgent from "../AiAgent.ts"
import { isPending } from "../../AsyncToolset.ts"
import { ChatContext, ChatMessage, FunctionCall, FunctionCallOutput } from "../../ChatContext.ts"
import type { ChatItem } from "../../ChatContext.ts"
import { insertSorted } from "../../internal/ordered.ts"

/** The chat of one agent. Its fixed parts are readonly; the rest changes only through the functions below. */
export interface ChatLog {
  /** The items in creation order: the session's own array (`AgentSession.items` hands it out as is). */
  readonly items: Array<ChatItem>
  /** The call ids of the chat's function calls: a new call or note must not reuse one. */
  readonly callIds: Set<string>
  /**
   * Call ids whose output in the chat is a first update (the call was still running then). The
   * prompt builder forgets those whose call ended (`forgetEnded`), so it stays as small as what runs.
   */
  readonly firstUpdates: Set<string>
  /** The last `ChatContext` handed out, until the chat changes. */
  snapshot: ChatContext | undefined
  readonly store: AiAgent.ChatStore | undefined
  readonly now: () => number
  readonly emit: (event: AiAgent.Event) => void
}

/** A chat holding `history` (published as added, like any other item). */
export const make = (options: {
  readonly history: ReadonlyArray<ChatItem>
  readonly store: AiAgent.ChatStore | undefined
  readonly now: () => number
  readonly emit: (event: AiAgent.Event) => void
}): ChatLog => {
  const log: ChatLog = {
    items: [],
    callIds: new Set(),
    firstUpdates: new Set(),
    snapshot: undefined,
    store: options.store,
    now: options.now,
    emit: options.emit
  }
  add(log, options.history)
  return log
}

/** The chat as a `ChatContext` (a copy, made once per change of the chat). */
export const chatContext = (log: ChatLog): ChatContext => log.snapshot ??= new ChatContext({ items: log.items.slice() })

/** Hands items just added to the store, if any (it skips what it holds already). */
export const save = (log: ChatLog, batch: ReadonlyArray<ChatItem>): Effect.Effect<void> =>
  log.store === undefined || batch.length === 0 ? Effect.void : log.store.save(batch)

/** Adds items by creation time: at the tail, nearly always. */
export const add = (log: ChatLog, batch: ReadonlyArray<ChatItem>): void => {
  if (batch.length === 0) return
  for (const item of batch) insertSorted(log.items, item)
  added(log, batch)
}

/**
 * Adds what the model produced right after the newest item it read (`anchor`), so that whatever
 * reached the chat while it thought stands after its words: they did not cover it (the
 * toolset's "did the agent already speak after these results?" check relies on that). Times are
 * clamped to keep the chat in creation order. Costs O(k + d) for k items placed d items from the
 * tail (d: what arrived meanwhile). Returns the items as placed.
 */
export const addAfter = (
  log: ChatLog,
  anchor: ChatItem | undefined,
  batch: ReadonlyArray<ChatItem>
): ReadonlyArray<ChatItem> => {
  const items = log.items
  const at = anchor === undefined ? -1 : items.lastIndexOf(anchor)
  let i = anchor !== undefined && at < 0 ? items.length : at + 1
  const placed = batch.map((item) => {
    const createdAt = Math.min(
      Math.max(item.createdAt, items[i - 1]?.createdAt ?? Number.NEGATIVE_INFINITY),
      items[i]?.createdAt ?? Number.POSITIVE_INFINITY
    )
    const stamped = createdAt === item.createdAt ? item : withCreatedAt(item, createdAt)
    items.splice(i++, 0, stamped)
    return stamped
  })
  added(log, placed)
  return placed
}

/** Forgets the first updates of calls no longer running (`running`: the call ids that run). */
export const forgetEnded = (log: ChatLog, running: ReadonlySet<string>): void => {
  for (const callId of log.firstUpdates) if (!running.has(callId)) log.firstUpdates.delete(callId)
}

/** Bookkeeping once a batch is in the array: the snapshot goes stale, ids are noted, then the events. */
const added = (log: ChatLog, batch: ReadonlyArray<ChatItem>): void => {
  log.snapshot = undefined
  for (const item of batch) {
    if (item._tag === "FunctionCall") log.callIds.add(item.callId)
    else if (item._tag === "FunctionCallOutput" && isPending(item)) log.firstUpdates.add(item.callId)
  }
  // Subscribers may run at once, inside `emit`: the whole batch is in the chat by then.
  const at = log.now()
  for (const item of batch) log.emit({ _tag: "ItemAdded", item, at })
}

/** The same item at another time. */
export const withCreatedAt = (item: ChatItem, createdAt: number): ChatItem => {
  switch (item._tag) {
    case "ChatMessage":
      return new ChatMessage({ id: item.id, role: item.role, content: item.content, createdAt })
    case "FunctionCall":
      return new FunctionCall({
        id: item.id,
        callId: item.callId,
        name: item.name,
        arguments: item.arguments,
        createdAt,
        ...(item.extra === undefined ? {} : { extra: item.extra })
      })
    case "FunctionCallOutput":
      return new FunctionCallOutput({
        id: item.id,
        callId: item.callId,
        name: item.name,
        output: item.output,
        isError: item.isError,
        createdAt,
        ...(item.extra === undefined ? {} : { extra: item.extra })
      })
  }
}
