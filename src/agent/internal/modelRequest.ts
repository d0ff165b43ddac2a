/**
 * One model request: the prompt goes out, the answer comes back as words and tool calls. The
 * agent runs the calls itself (`disableToolCallResolution`), so the answer's calls are only read.
 * Streamed (the default), the words reach the events as `TextDelta`s while the model writes them.
 */
import { Cause, Effect, Stream } from "effect"
import { AiError } from "effect/ai"
import type { LanguageModel, Prompt } from "effect/ai"
import type * as AiAgent from "../AiAgent.ts"
import { newId } from "../../internal/id.ts"
import type { Tools } from "./toolsetRegistry.ts"

/** How the agent asks its model. Fixed for the agent's life. */
export interface ModelRequest {
  readonly model: LanguageModel.LanguageModel
  /** Ask with `streamText` (else `generateText`). */
  readonly stream: boolean
  readonly now: () => number
  readonly emit: (event: AiAgent.Event) => void
}

/** A tool call in the model's answer. */
export interface AnswerCall {
  readonly id: string
  readonly name: string
  readonly params: unknown
  readonly providerExecuted: boolean
}

/** What the model answered in one request: its words (stored under `itemId`) and its calls. */
export interface Answer {
  readonly itemId: string
  readonly text: string
  readonly calls: ReadonlyArray<AnswerCall>
}

/** Asks the model once, in turn number `turn`. */
export const answer = (
  request: ModelRequest,
  turn: number,
  prompt: Prompt.Prompt,
  toolkit: Tools,
  toolChoice: "auto" | "none"
): Effect.Effect<Answer, AiError.AiError> =>
  (request.stream ? streamAnswer(request, turn, prompt, toolkit, toolChoice) : generateAnswer(request, prompt, toolkit, toolChoice))
    .pipe(Effect.catchCause((cause) => Cause.hasInterruptsOnly(cause) ? Effect.fail(interrupted(request.stream)) : Effect.failCause(cause)))

/**
 * The model's request ended in an interruption of its own (a provider's fiber was interrupted),
 * while the turn was not: a failure of the model like any other, reported as the turn's, not a
 * silent end of the turn. (When the turn itself is interrupted, no handler runs.)
 */
const interrupted = (stream: boolean): AiError.AiError =>
  AiError.make({
    module: "AiAgent",
    method: stream ? "streamText" : "generateText",
    reason: new AiError.UnknownError({ description: "the model's request was interrupted before its answer was complete" })
  })

/** The whole answer at once. */
const generateAnswer = (
  request: ModelRequest,
  prompt: Prompt.Prompt,
  toolkit: Tools,
  toolChoice: "auto" | "none"
): Effect.Effect<Answer, AiError.AiError> =>
  Effect.map(
    request.model.generateText({
      prompt,
      toolkit,
      toolChoice,
      disableToolCallResolution: true,
      toolCallValidation: "deferred"
    }),
    (response): Answer => ({ itemId: newId("msg"), text: response.text, calls: response.toolCalls })
  )

/**
 * The answer as the model streams it: each non-empty text delta is published at once (a
 * `TextDelta` of the message the answer's words will be stored as); the words and the calls
 * are kept for the end. A failure mid-way (the stream fails, or sends an error part) fails the
 * request: nothing of the answer is stored and none of its calls runs.
 */
const streamAnswer = (
  request: ModelRequest,
  turn: number,
  prompt: Prompt.Prompt,
  toolkit: Tools,
  toolChoice: "auto" | "none"
): Effect.Effect<Answer, AiError.AiError> =>
  Effect.suspend(() => {
    const itemId = newId("msg")
    let text = ""
    const calls: Array<AnswerCall> = []
    return request.model.streamText({
      prompt,
      toolkit,
      toolChoice,
      disableToolCallResolution: true,
      toolCallValidation: "deferred"
    }).pipe(
      Stream.runForEach((part): Effect.Effect<void, AiError.AiError> => {
        switch (part.type) {
          case "text-delta":
            if (part.delta !== "") {
              text += part.delta
              request.emit({ _tag: "TextDelta", turn, itemId, delta: part.delta, at: request.now() })
            }
            return Effect.void
          case "tool-call":
            calls.push(part)
            return Effect.void
          case "error":
            return Effect.fail(streamError(part.error))
          default:
            return Effect.void
        }
      }),
      Effect.map((): Answer => ({ itemId, text, calls }))
    )
  })

/** An error part in a streamed answer, as the turn's failure. */
const streamError = (error: unknown): AiError.AiError =>
  AiError.isAiError(error) ? error : AiError.make({
    module: "AiAgent",
    method: "streamText",
    reason: new AiError.UnknownError({
      description: `the model's stream reported an error: ${error instanceof Error ? error.message : String(error)}`
    })
  })
