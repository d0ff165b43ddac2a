/**
 * The prompt of one model request: the standing instructions, the chat with a note after the first
 * update of each call still running, and the turn's own instructions last.
 *
 * Rule G1: the prompt ends with what the user said last, never with a note, or the model answers
 * the note instead of the user. So each note sits at its call's own place in the history.
 */
import { Effect } from "effect"
import { Prompt } from "effect/ai"
import type { LanguageModel } from "effect/ai"
import { isPending } from "../../AsyncToolset.ts"
import { FunctionCall, FunctionCallOutput } from "../../ChatContext.ts"
import type { ChatItem } from "../../ChatContext.ts"
import { newId } from "../../internal/id.ts"
import * as Prompts from "../../Prompts.ts"
import { toPrompt } from "../PromptConversion.ts"
import * as ChatLog from "./chatLog.ts"
import type { ToolsetRegistry } from "./toolsetRegistry.ts"

/** The note template: what the model reads for a call still running. */
export type RunningCall = Prompts.Template<
  { readonly functionName: string; readonly callId: string; readonly arguments: string }
>

/** What a prompt is built from. Nothing here changes: the changing parts are the chat and the toolsets. */
export interface PromptBuilder {
  readonly model: LanguageModel.LanguageModel
  /** The standing instructions: the leading system message. */
  readonly instructions: string | undefined
  readonly runningCall: RunningCall
  readonly log: ChatLog.ChatLog
  readonly toolsets: ToolsetRegistry
}

/** A running call's note: a call/output pair `<callId>_running`, placed after the call's first update. */
type Note = readonly [FunctionCall, FunctionCallOutput]

/**
 * The prompt of the next request of a turn (`madeThisTurn`: the calls the turn made so far), and
 * `read`, the newest item of the chat the model reads: what it says goes right after it.
 */
export const build = Effect.fnUntraced(function*(
  builder: PromptBuilder,
  instructions: string | undefined,
  madeThisTurn: ReadonlySet<string>
) {
  const notes = yield* runningNotes(builder, madeThisTurn)
  const items = builder.log.items
  // No copy of the history: the conversion reads the items, and the notes in their places, in
  // one pass, and nothing can change the array meanwhile (it does not suspend).
  const history = toPrompt(notes.size === 0 ? items : withNotes(items, notes)).content
  const read = items.at(-1)
  // The turn's instructions come last, where the model weighs them most; a provider that takes
  // no system message inside the history gets them in the leading one.
  const inHistory = builder.model.supportsSystemMessagesInHistory === undefined ||
    (yield* builder.model.supportsSystemMessagesInHistory)
  const last = inHistory ? instructions : undefined
  const leading = [builder.instructions, inHistory ? undefined : instructions].filter((s) => s !== undefined)
  const prompt = Prompt.fromMessages([
    ...(leading.length === 0 ? [] : [Prompt.makeMessage("system", { content: leading.join("\n\n") })]),
    ...history,
    ...(last === undefined ? [] : [Prompt.makeMessage("system", { content: last })])
  ])
  return { prompt, read } as const
})

/**
 * For each call still running whose output in the chat is its first update, a call/output pair
 * `<callId>_running` saying so, so that the model does not start it again (LiveKit added these
 * after models re-issued running calls, e.g. booked a flight twice). Keyed by the call id whose
 * first update it follows. Left out: calls made in the current turn (their first update is the
 * newest thing the model read), and a call whose note id the chat already holds (call ids stay
 * unique in what the model reads). Prompt only, never stored.
 */
const runningNotes = Effect.fnUntraced(function*(builder: PromptBuilder, madeThisTurn: ReadonlySet<string>) {
  const { callIds, firstUpdates } = builder.log
  const notes = new Map<string, Note>()
  const running = new Set<string>()
  for (const toolset of builder.toolsets.byId.values()) {
    for (const task of yield* toolset.runningTasks) {
      running.add(task.callId)
      const callId = `${task.callId}_running`
      if (
        task.status !== "running" || !firstUpdates.has(task.callId) || madeThisTurn.has(task.callId) ||
        callIds.has(callId)
      ) continue
      notes.set(task.callId, [
        new FunctionCall({ id: newId("fc"), callId, name: task.name, arguments: task.arguments, createdAt: 0 }),
        new FunctionCallOutput({
          id: newId("fco"),
          callId,
          name: task.name,
          output: Prompts.render(builder.runningCall, {
            functionName: task.name,
            callId: task.callId,
            arguments: task.arguments
          }),
          isError: false,
          createdAt: 0
        })
      ])
    }
  }
  // Calls that ended need no note again: forget them, so the set stays as small as what runs.
  ChatLog.forgetEnded(builder.log, running)
  return notes
})

/** The chat as the model reads it: each running call's note right after the call's first update (G1). */
function* withNotes(items: ReadonlyArray<ChatItem>, notes: ReadonlyMap<string, Note>): Iterable<ChatItem> {
  for (const item of items) {
    yield item
    if (item._tag !== "FunctionCallOutput" || !isPending(item)) continue
    const note = notes.get(item.callId)
    if (note !== undefined) yield* note.map((part) => ChatLog.withCreatedAt(part, item.createdAt))
  }
}
