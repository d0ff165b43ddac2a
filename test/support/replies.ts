/**
 * Helpers for the hand-off and reply tests: build the model's calls, and read what reached the
 * chat and the session's reply requests.
 */
import { Effect } from "effect"
import { ChatContext } from "effect-async-toolset"

/** A model call of `name` with id `callId` and `args` as its JSON text. */
export const call = (callId: string, name: string, args: object = {}): Effect.Effect<ChatContext.FunctionCall> =>
  ChatContext.functionCall({ callId, name, arguments: JSON.stringify(args) })

/** The call ids of the function calls in the chat, in chat order. */
export const callIdsInChat = (chat: ChatContext.ChatContext): ReadonlyArray<string> =>
  chat.items.flatMap((item) => item._tag === "FunctionCall" ? [item.callId] : [])

/** The call/output pair the chat holds for `callId` (fails the test if it is not exactly one pair). */
export const pairOf = (
  chat: ChatContext.ChatContext,
  callId: string
): { readonly call: ChatContext.FunctionCall; readonly output: ChatContext.FunctionCallOutput } => {
  const calls = chat.items.filter((i): i is ChatContext.FunctionCall => i._tag === "FunctionCall" && i.callId === callId)
  const outputs = chat.items.filter((i): i is ChatContext.FunctionCallOutput =>
    i._tag === "FunctionCallOutput" && i.callId === callId
  )
  if (calls.length !== 1 || outputs.length !== 1) {
    throw new Error(`expected one call/output pair for ${callId}, found ${calls.length} calls and ${outputs.length} outputs`)
  }
  return { call: calls[0]!, output: outputs[0]! }
}

/** How many times an item of `callId` was inserted into the chat, per item kind. */
export const insertionsOf = (
  insertions: ReadonlyArray<ReadonlyArray<ChatContext.ChatItem>>,
  callId: string
): { readonly calls: number; readonly outputs: number } => {
  let calls = 0
  let outputs = 0
  for (const batch of insertions) {
    for (const item of batch) {
      if (item._tag === "FunctionCall" && item.callId === callId) calls++
      if (item._tag === "FunctionCallOutput" && item.callId === callId) outputs++
    }
  }
  return { calls, outputs }
}

/** The synthetic call ids (`<id>_update_<n>`, `<id>_final`) named in reply instructions. */
export const namedCallIds = (instructions: string): ReadonlyArray<string> =>
  instructions.match(/[A-Za-z0-9_-]+(?:_update_\d+|_final)\b/g) ?? []
