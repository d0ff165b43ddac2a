/**
 * What one reply asks, decided after the session's last inactive check: plain functions over the
 * items pending and the chat, so the decision can be read and tested on its own.
 *
 * Each toolset's items follow its own options (C4c): whether the agent already spoke after them
 * is judged per toolset; a toolset with `whenAlreadyAnswered: "skip"` has its covered items
 * skipped while the others are still asked for; each toolset's prompt names its own items.
 */
import type { ChatItem } from "../../ChatContext.ts"
import * as Prompts from "../../Prompts.ts"
import type { Item, Owner } from "./coordinator.ts"

/** One reply: what it asks about and with which instructions, and what it skips. */
export interface Decision {
  /** Items the reply covers (empty: no reply). */
  readonly ask: ReadonlyArray<Item>
  readonly instructions: string
  /** Items of toolsets that skip what the agent already answered (C4, `skip`). */
  readonly skip: ReadonlyArray<Item>
}

/**
 * Decides one reply over `ready` (items in the chat, oldest first). `chat` is the chat as read
 * before the last inactive check (`undefined`: it could not be read: everything counts as not
 * covered); `late` holds the items taken after it was read, which are newer than anything in it.
 */
export const decide = (
  ready: ReadonlyArray<Item>,
  chat: ReadonlyArray<ChatItem> | undefined,
  late: ReadonlySet<Item>
): Decision => {
  const first = ready[0]?.owner
  if (first !== undefined && ready.every((item) => item.owner === first)) return decideOne(first, ready, chat, late)
  const groups = byOwner(ready)
  const ask: Array<Item> = []
  const skip: Array<Item> = []
  // The instructions, one rendering per template: toolsets that share a template (the default
  // one, usually) are named in one sentence.
  const renderings = new Map<Prompts.Template<{ readonly pendingCallIds: string }>, Array<Item>>()
  for (const [owner, items] of groups) {
    const covered = chat !== undefined && !items.some((item) => late.has(item)) && spokeAfter(chat, items)
    if (covered && owner.policy.whenAlreadyAnswered === "skip") {
      for (const item of items) skip.push(item)
      continue
    }
    for (const item of items) ask.push(item)
    const template = covered ? owner.policy.prompts.replyMaybeCovered : owner.policy.prompts.replyAtTail
    const named = renderings.get(template)
    if (named === undefined) renderings.set(template, items.slice())
    else for (const item of items) named.push(item)
  }
  const instructions = Array.from(renderings, ([template, items]) =>
    Prompts.render(template, { pendingCallIds: callIdsOf(items) })
  ).join("\n\n")
  return { ask, instructions, skip }
}

/** `decide` for the items of one toolset (the usual case): the same, with nothing to group. */
const decideOne = (
  owner: Owner,
  items: ReadonlyArray<Item>,
  chat: ReadonlyArray<ChatItem> | undefined,
  late: ReadonlySet<Item>
): Decision => {
  const covered = chat !== undefined && (late.size === 0 || !items.some((item) => late.has(item))) && spokeAfter(chat, items)
  if (covered && owner.policy.whenAlreadyAnswered === "skip") return { ask: none, instructions: "", skip: items }
  const template = covered ? owner.policy.prompts.replyMaybeCovered : owner.policy.prompts.replyAtTail
  return { ask: items, instructions: Prompts.render(template, { pendingCallIds: callIdsOf(items) }), skip: none }
}

const none: ReadonlyArray<Item> = []

/** The items by their toolset, in the order the toolsets first appear. */
export const byOwner = (items: ReadonlyArray<Item>): ReadonlyMap<Owner, Array<Item>> => {
  const first = items[0]?.owner
  if (first !== undefined && items.every((item) => item.owner === first)) return new Map([[first, items.slice()]])
  const out = new Map<Owner, Array<Item>>()
  for (const item of items) {
    const mine = out.get(item.owner)
    if (mine === undefined) out.set(item.owner, [item])
    else mine.push(item)
  }
  return out
}

export const callIdsOf = (items: ReadonlyArray<Item>): string => items.map((item) => item.callId).join(", ")

export const ownersOf = (items: ReadonlyArray<Item>): string =>
  Array.from(new Set(items.map((item) => item.owner.id))).join(", ")

/**
 * Whether the agent spoke after the pending items: an assistant message stands after the newest of
 * them in the chat, and was made once they were all in it (a message made while an insertion was
 * still under way cannot have covered it). Compared by position first, so items made in the same
 * millisecond are ordered correctly; only the tail after our items is scanned.
 */
export const spokeAfter = (chat: ReadonlyArray<ChatItem>, pending: ReadonlyArray<Item>): boolean => {
  let insertedAt = 0
  for (const p of pending) if (p.insertedAt > insertedAt) insertedAt = p.insertedAt
  // A few items (the usual case) are compared directly; many go into a set first.
  const ids = pending.length > 8 ? new Set(pending.flatMap((p) => p.items.map((item) => item.id))) : undefined
  const ours = (item: ChatItem) => {
    if (ids !== undefined) return ids.has(item.id)
    for (const p of pending) for (const own of p.items) if (own.id === item.id) return true
    return false
  }
  for (let i = chat.length - 1; i >= 0; i--) {
    const item = chat[i]!
    if (item._tag === "ChatMessage") {
      if (item.role === "assistant" && item.createdAt >= insertedAt) return true
    } else if (ours(item)) {
      return false
    }
  }
  return false
}
