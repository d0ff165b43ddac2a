/**
 * A `LanguageModel` that answers from a script, for tests and offline demos: no network, no keys,
 * the same answer every run. The script is a list of replies (one per request, in order) or a
 * function of the request (simple rules: "if the user mentions a flight, call `book_flight`").
 * Every request is recorded, so a test can check what the model saw: the prompt, the tools, the
 * tool choice.
 *
 * Tool calls get ids unique across the model's life (`call_<request>_<n>`, both from 1), so two
 * turns never reuse a call id.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { LanguageModel } from "effect/ai"
 * import { ScriptedModel } from "effect-async-toolset/testing"
 *
 * const model = ScriptedModel.layer((request) =>
 *   request.lastUserText.includes("flight")
 *     ? { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }] }
 *     : "How can I help?"
 * )
 *
 * const program = LanguageModel.generateText({ prompt: "hello" }).pipe(Effect.provide(model))
 * ```
 *
 * @since 0.1.0
 */
import { Context, Duration, Effect, Layer, Stream } from "effect"
import { AiError, LanguageModel, Prompt } from "effect/ai"
import type { Response } from "effect/ai"

/**
 * One request as the model received it, with a few views a script commonly needs.
 *
 * @since 0.1.0
 * @category models
 */
export interface Request {
  /** 0 for the first request the model received, then 1, 2, … */
  readonly index: number
  /** Everything the provider got (prompt, tools, tool choice, …). */
  readonly options: LanguageModel.ProviderOptions
  readonly prompt: Prompt.Prompt
  readonly toolChoice: LanguageModel.ToolChoice<string>
  /** The names of the tools the model may see. */
  readonly toolNames: ReadonlyArray<string>
  /** The text of the newest user message ("" if there is none). */
  readonly lastUserText: string
  /** Every system message's text, joined by blank lines. */
  readonly systemText: string
  /** Every tool result in the prompt, in order. */
  readonly toolResults: ReadonlyArray<Prompt.ToolResultPart>
  /** The tool results after the newest user message: what the model has not answered yet, roughly. */
  readonly resultsSinceUser: ReadonlyArray<Prompt.ToolResultPart>
}

/**
 * A tool call the model makes. Without an `id`, it gets `call_<request>_<n>`.
 *
 * @since 0.1.0
 * @category models
 */
export interface ToolCall {
  readonly name: string
  readonly params?: unknown
  readonly id?: string | undefined
}

/**
 * What the model answers: a string (its words), or words and tool calls, optionally after a
 * `delay` (the model "thinks" that long; under `TestClock` the test moves time on).
 *
 * `text` may be given as its deltas (`["Hel", "lo"]`): `streamText` sends one text delta per
 * element, `generateText` their concatenation. `fail` makes the answer fail part-way:
 * `streamText` sends the words and the tool calls, then fails with it instead of finishing;
 * `generateText` fails with it.
 *
 * @since 0.1.0
 * @category models
 */
export type Reply = string | {
  readonly text?: string | ReadonlyArray<string> | undefined
  readonly toolCalls?: ReadonlyArray<ToolCall> | undefined
  readonly delay?: Duration.Input | undefined
  readonly fail?: AiError.AiError | undefined
}

/**
 * A list of replies, one per request in order (a request past the end fails), or a function of the
 * request. A function may return an Effect, e.g. to fail like a provider would
 * (`Effect.fail(ScriptedModel.error("rate limited"))`).
 *
 * @since 0.1.0
 * @category models
 */
export type Script =
  | ReadonlyArray<Reply>
  | ((request: Request) => Reply | Effect.Effect<Reply, AiError.AiError>)

/**
 * The recorded requests of the scripted model.
 *
 * @since 0.1.0
 * @category services
 */
export class ScriptedModel extends Context.Service<ScriptedModel, {
  /** Every request the model received, in order (failed ones included). */
  readonly requests: Effect.Effect<ReadonlyArray<Request>>
}>()("effect-async-toolset/testing/ScriptedModel") {}

/**
 * A model failure, as a provider would report one.
 *
 * @since 0.1.0
 * @category constructors
 */
export const error = (description: string): AiError.AiError =>
  AiError.make({
    module: "ScriptedModel",
    method: "generateText",
    reason: new AiError.UnknownError({ description })
  })

const usage = { inputTokens: {}, outputTokens: {} }

const textOf = (message: Prompt.Message): string => {
  if (typeof message.content === "string") return message.content
  let text = ""
  for (const part of message.content) if (part.type === "text") text += part.text
  return text
}

const toRequest = (index: number, options: LanguageModel.ProviderOptions): Request => {
  const messages = options.prompt.content
  const lastUser = messages.findLastIndex((m) => m.role === "user")
  const toolResults: Array<Prompt.ToolResultPart> = []
  const resultsSinceUser: Array<Prompt.ToolResultPart> = []
  messages.forEach((m, i) => {
    if (m.role !== "tool" && m.role !== "assistant") return
    for (const part of m.content) {
      if (part.type !== "tool-result") continue
      toolResults.push(part)
      if (i > lastUser) resultsSinceUser.push(part)
    }
  })
  return {
    index,
    options,
    prompt: options.prompt,
    toolChoice: options.toolChoice,
    toolNames: options.tools.map((tool) => tool.name),
    lastUserText: lastUser < 0 ? "" : textOf(messages[lastUser]!),
    systemText: messages.filter((m) => m.role === "system").map(textOf).join("\n\n"),
    toolResults,
    resultsSinceUser
  }
}

interface Answer {
  /** The words, as the deltas a stream sends. */
  readonly deltas: ReadonlyArray<string>
  readonly calls: ReadonlyArray<{ readonly id: string; readonly name: string; readonly params: unknown }>
  readonly fail: AiError.AiError | undefined
}

/** `"Hello there, you"` → `["Hello ", "there, ", "you"]`: each word with the blanks after it. */
const words = (text: string): ReadonlyArray<string> => text.match(/\s*\S+\s*/g) ?? (text === "" ? [] : [text])

const toAnswer = (index: number, reply: Reply, textDeltas: "whole" | "words"): Answer => {
  const { fail, text = "", toolCalls = [] } = typeof reply === "string" ? { text: reply } : reply
  return {
    deltas: typeof text !== "string" ? text : text === "" ? [] : textDeltas === "words" ? words(text) : [text],
    calls: toolCalls.map((call, n) => ({
      id: call.id ?? `call_${index + 1}_${n + 1}`,
      name: call.name,
      params: call.params ?? {}
    })),
    fail
  }
}

const finishReason = (answer: Answer) => answer.calls.length > 0 ? "tool-calls" : "stop"

const toParts = (answer: Answer): Array<Response.PartEncoded> => {
  const text = answer.deltas.join("")
  return [
    ...(text === "" ? [] : [{ type: "text" as const, text }]),
    ...answer.calls.map((call) => ({ type: "tool-call" as const, ...call })),
    { type: "finish", reason: finishReason(answer), usage }
  ]
}

/** The answer as a stream: its words delta by delta (`pause` before each), its calls, its end. */
const toStream = (
  answer: Answer,
  pause: Duration.Input | undefined
): Stream.Stream<Response.StreamPartEncoded, AiError.AiError> => {
  const deltas = Stream.fromIterable(answer.deltas).pipe(
    Stream.map((delta): Response.StreamPartEncoded => ({ type: "text-delta", id: "text_1", delta }))
  )
  const words = answer.deltas.length === 0 ? Stream.empty : Stream.concat(
    Stream.make<Array<Response.StreamPartEncoded>>({ type: "text-start", id: "text_1" }),
    Stream.concat(
      pause === undefined ? deltas : Stream.mapEffect(deltas, (part) => Effect.as(Effect.sleep(pause), part)),
      Stream.make<Array<Response.StreamPartEncoded>>({ type: "text-end", id: "text_1" })
    )
  )
  const end: Stream.Stream<Response.StreamPartEncoded, AiError.AiError> = answer.fail === undefined
    ? Stream.make({ type: "finish", reason: finishReason(answer), usage })
    : Stream.fail(answer.fail)
  return Stream.concat(
    words,
    Stream.concat(
      Stream.fromIterable(answer.calls.map((call): Response.StreamPartEncoded => ({ type: "tool-call", ...call }))),
      end
    )
  )
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * What the model reports as `supportsSystemMessagesInHistory` (default: nothing, i.e. unknown).
   * `false` plays a provider that only takes a leading system message.
   */
  readonly systemMessagesInHistory?: boolean | undefined
  /**
   * How `streamText` sends a reply given as one string: as one delta (`whole`, the default) or
   * word by word (`words`), as a real model streams. A reply given as deltas is sent as given.
   */
  readonly textDeltas?: "whole" | "words" | undefined
  /** How long `streamText` waits before each text delta (default: no wait). */
  readonly deltaDelay?: Duration.Input | undefined
}

/**
 * Builds the model and its recorder.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(script: Script, options: Options = {}) {
  const requests: Array<Request> = []

  const answer = (provider: LanguageModel.ProviderOptions): Effect.Effect<Answer, AiError.AiError> =>
    Effect.suspend(() => {
      const request = toRequest(requests.length, provider)
      requests.push(request)
      const reply: Reply | Effect.Effect<Reply, AiError.AiError> | undefined = typeof script === "function"
        ? script(request)
        : script[request.index]
      if (reply === undefined) {
        return Effect.fail(error(`the script has no reply for request ${request.index + 1}`))
      }
      return Effect.flatMap(
        Effect.isEffect(reply) ? reply : Effect.succeed(reply),
        (r) => {
          const delay = typeof r === "string" ? undefined : r.delay
          const result = Effect.succeed(toAnswer(request.index, r, options.textDeltas ?? "whole"))
          return delay === undefined ? result : Effect.delay(result, delay)
        }
      )
    })

  const model = yield* LanguageModel.make({
    generateText: (provider) =>
      Effect.flatMap(answer(provider), (a) => a.fail === undefined ? Effect.succeed(toParts(a)) : Effect.fail(a.fail)),
    streamText: (provider) => Stream.unwrap(Effect.map(answer(provider), (a) => toStream(a, options.deltaDelay))),
    ...(options.systemMessagesInHistory === undefined
      ? {}
      : { supportsSystemMessagesInHistory: Effect.succeed(options.systemMessagesInHistory) })
  })
  const recorder = ScriptedModel.of({ requests: Effect.sync(() => requests.slice()) })
  return { model, recorder } as const
})

/**
 * The scripted model: provides `LanguageModel` and the `ScriptedModel` recorder.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  script: Script,
  options?: Options
): Layer.Layer<LanguageModel.LanguageModel | ScriptedModel> =>
  Layer.effectContext(
    Effect.map(make(script, options), ({ model, recorder }) =>
      Context.make(LanguageModel.LanguageModel, model).pipe(Context.add(ScriptedModel, recorder)))
  )
