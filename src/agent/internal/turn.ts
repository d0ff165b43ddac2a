/**
 * One turn: the model is asked, its words are stored, its tool calls run on the toolsets (an async
 * tool hands back its first update at once) and are stored with their outputs, and the model is
 * asked again, until it answers in words or the turn's steps run out (the last step allows no
 * tools). The turn runner runs one at a time.
 */
import { Cause, Effect, Exit } from "effect"
import type { AiError } from "effect/ai"
import type * as AiAgent from "../AiAgent.ts"
import { ChatMessage, FunctionCall } from "../../ChatContext.ts"
import type { ChatItem } from "../../ChatContext.ts"
import { newId } from "../../internal/id.ts"
import { argumentsText } from "../PromptConversion.ts"
import * as ChatLog from "./chatLog.ts"
import * as ModelRequest from "./modelRequest.ts"
import * as PromptBuilder from "./promptBuilder.ts"
import * as ToolsetRegistry from "./toolsetRegistry.ts"

/** What a turn runs on. Fixed for the agent's life. */
export interface Turns {
  readonly log: ChatLog.ChatLog
  readonly toolsets: ToolsetRegistry.ToolsetRegistry
  readonly prompts: PromptBuilder.PromptBuilder
  readonly request: ModelRequest.ModelRequest
  /** Most model requests in one turn (at least 1). */
  readonly maxSteps: number
  readonly now: () => number
  readonly emit: (event: AiAgent.Event) => void
}

/** What a turn is asked to do. */
export interface TurnRequest {
  /** Who asked: the user (a message), or a reply (a toolset, or `generateReply`). */
  readonly cause: "user" | "reply"
  /** Instructions for this turn only: the model reads them last; they are not stored. */
  readonly instructions: string | undefined
  readonly toolChoice: "auto" | "none"
}

/** What a running turn did so far. */
interface Progress {
  /** The items it added to the chat, as placed. */
  readonly stored: Array<ChatItem>
  /** Its messages' words. */
  readonly said: Array<string>
  /** The call ids of the calls it made (their notes are left out of its prompts). */
  readonly madeThisTurn: Set<string>
  /** The newest item the model read in this step, then the last the turn added after it. */
  anchor: ChatItem | undefined
}

/**
 * Runs turn number `turn`. Emits `TurnStarted`, and `TurnEnded` unless it is interrupted; a
 * failure is logged (the conversation goes on) and is the turn's result.
 */
export const run = (turns: Turns, request: TurnRequest, turn: number): Effect.Effect<AiAgent.Turn, AiError.AiError> => {
  const progress: Progress = { stored: [], said: [], madeThisTurn: new Set(), anchor: undefined }
  return Effect.gen(function*() {
    turns.emit({ _tag: "TurnStarted", turn, cause: request.cause, at: turns.now() })
    for (let step = 0; step < turns.maxSteps; step++) {
      const toolChoice = request.toolChoice === "none" || step === turns.maxSteps - 1 ? "none" : "auto"
      if (!(yield* runStep(turns, request, turn, progress, toolChoice))) break
    }
    return { text: progress.said.join("\n"), items: progress.stored } satisfies AiAgent.Turn
  }).pipe(
    Effect.tapCause((cause) =>
      Cause.hasInterruptsOnly(cause)
        ? Effect.void
        : Effect.logError("the turn failed; the conversation goes on", cause)
    ),
    Effect.onExit((exit) =>
      Effect.sync(() => {
        if (Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause)) return
        const text = progress.said.join("\n")
        const outcome = Exit.isFailure(exit) ? "failed" : text === "" ? "silent" : "answered"
        turns.emit({ _tag: "TurnEnded", turn, outcome, text, at: turns.now() })
      })
    ),
    Effect.withSpan("AiAgent.turn", { attributes: { "agent.turn": turn, "agent.turn.cause": request.cause } }),
    Effect.annotateLogs({ turn })
  )
}

/** One model request of the turn and the calls it made. Succeeds with whether the turn goes on. */
const runStep = Effect.fnUntraced(function*(
  turns: Turns,
  request: TurnRequest,
  turn: number,
  progress: Progress,
  toolChoice: "auto" | "none"
) {
  const askedAt = turns.now()
  const { prompt, read } = yield* PromptBuilder.build(turns.prompts, request.instructions, progress.madeThisTurn)
  progress.anchor = read
  const answer = yield* ModelRequest.answer(
    turns.request,
    turn,
    prompt,
    ToolsetRegistry.toolkit(turns.toolsets),
    toolChoice
  )
  const text = answer.text
  if (text.trim() !== "") {
    yield* store(turns, progress, [
      new ChatMessage({ id: answer.itemId, role: "assistant", content: text, createdAt: askedAt })
    ])
    progress.said.push(text)
  }
  const calls = answer.calls.filter((call) => !call.providerExecuted)
  if (calls.length === 0) return false
  if (toolChoice === "none") {
    yield* Effect.logWarning("the model called tools in a turn that allows none; the calls were not run", {
      tools: calls.map((call) => call.name)
    })
    return false
  }
  const taken = new Set<string>()
  yield* Effect.forEach(calls, (part) => {
    const call = new FunctionCall({
      id: newId("fc"),
      callId: uniqueCallId(turns.log, taken, part.id),
      name: part.name,
      arguments: argumentsText(part.params),
      createdAt: askedAt
    })
    progress.madeThisTurn.add(call.callId)
    return Effect.flatMap(ToolsetRegistry.dispatch(turns.toolsets, call), (output) => store(turns, progress, [call, output]))
  }, { concurrency: "unbounded", discard: true })
  return true
})

/** Adds items of the turn after the newest the model read (and those the turn added since), then saves them. */
const store = (turns: Turns, progress: Progress, batch: ReadonlyArray<ChatItem>): Effect.Effect<void> => {
  const placed = ChatLog.addAfter(turns.log, progress.anchor, batch)
  progress.anchor = placed.at(-1) ?? progress.anchor
  progress.stored.push(...placed)
  return ChatLog.save(turns.log, placed)
}

/**
 * Provider call ids must stay unique in the chat: a model that repeats one (or sends none) gets
 * its call stored under a fresh id, which its output answers. `taken`: the ids given in this step.
 */
const uniqueCallId = (log: ChatLog.ChatLog, taken: Set<string>, id: string): string => {
  let unique = id === "" ? "call_1" : id
  for (let k = 2; log.callIds.has(unique) || taken.has(unique); k++) unique = `${id === "" ? "call" : id}_${k}`
  taken.add(unique)
  return unique
}
