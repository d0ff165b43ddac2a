/**
 * Answers recorded from real servers (test/fixtures/openai-compat, each file's origin in its
 * README), replayed byte for byte from 127.0.0.1: what a user of `LanguageModel` gets from each,
 * streamed and not: text, reasoning, tool calls with their own ids and arguments, the finish
 * reason, usage that adds up the way each server counts, response metadata, and errors mapped
 * to the right `AiError` reason. Every request we send on the way passes OpenAI's published
 * request schema (the stand-in checks it).
 */
import { assert, describe, it } from "@effect/vitest"
import { DateTime, Effect, Exit, Redacted, Schema, Stream } from "effect"
import { AiError, Tool, Toolkit } from "effect/ai"
import type { Response } from "effect/ai"
import { FetchHttpClient } from "effect/http"
import { OpenAiCompat } from "effect-async-toolset/openai-compat"
import * as OpenAiServer from "../support/openAiServer.ts"

/** The tools the recorded answers call, as the recorders declared them. */
const Recorded = Toolkit.make(
  Tool.make("weather", { parameters: Schema.Struct({ location: Schema.optionalKey(Schema.String) }) }),
  Tool.make("GetWeatherArgs", {
    parameters: Schema.Struct({ city: Schema.String, country: Schema.String, units: Schema.Literals(["c", "f"]) })
  }),
  Tool.make("get_stock_price", {
    parameters: Schema.Struct({ ticker: Schema.String, exchange: Schema.Literals(["NYSE", "NASDAQ"]) })
  }),
  Tool.make("get_current_time")
)

/** What a user of the answer reads from it. */
interface Summary {
  readonly text: string
  readonly reasoning: string
  readonly calls: ReadonlyArray<{ readonly id: string; readonly name: string; readonly params: unknown }>
  readonly finish: Response.FinishReason | undefined
  readonly usage: {
    readonly input: Response.Usage["inputTokens"]
    readonly output: Response.Usage["outputTokens"]
  } | undefined
  readonly metadata: { readonly id?: string; readonly model?: string; readonly timestamp?: string }
}

const summarize = (parts: ReadonlyArray<Response.AnyPart>): Summary => {
  let text = ""
  let reasoning = ""
  const calls: Array<Summary["calls"][number]> = []
  let finish: Summary["finish"]
  let usage: Summary["usage"]
  let metadata: Summary["metadata"] = {}
  for (const part of parts) {
    switch (part.type) {
      case "text":
        text += part.text
        break
      case "text-delta":
        text += part.delta
        break
      case "reasoning":
        reasoning += part.text
        break
      case "reasoning-delta":
        reasoning += part.delta
        break
      case "tool-call":
        calls.push({ id: part.id, name: part.name, params: part.params })
        break
      case "finish":
        finish = part.reason
        usage = { input: part.usage.inputTokens, output: part.usage.outputTokens }
        break
      case "response-metadata":
        metadata = {
          ...(part.id === undefined ? {} : { id: part.id }),
          ...(part.modelId === undefined ? {} : { model: part.modelId }),
          ...(part.timestamp === undefined ? {} : { timestamp: DateTime.formatIso(part.timestamp) })
        }
        break
    }
  }
  return { text, reasoning, calls, finish, usage, metadata }
}

/** The recording answered to one request, streamed (`streamText`) or not (`generateText`). */
const replay = (file: string, how: "stream" | "generate", options: { readonly crlf?: boolean } = {}) =>
  Effect.gen(function*() {
    const server = yield* OpenAiServer.make([{ _tag: "Recorded", file, ...options }])
    const model = yield* OpenAiCompat.make({
      baseUrl: server.baseUrl,
      apiKey: Redacted.make(server.apiKey),
      model: "recorded-model"
    }).pipe(Effect.provide(FetchHttpClient.layer))
    const request = { prompt: "Hi", toolkit: Recorded, disableToolCallResolution: true } as const
    const parts = how === "stream"
      ? yield* Stream.runCollect(model.streamText(request))
      : (yield* model.generateText(request)).content
    assert.deepStrictEqual(server.rejected, [], "every request follows OpenAI's rules and schema")
    return summarize([...parts])
  })

const replayError = (file: string) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(replay(file, "stream"))
    assert.isTrue(Exit.isFailure(exit), "expected the stream to fail")
    const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error : undefined
    assert.isTrue(AiError.isAiError(error), `expected an AiError, got ${String(error)}`)
    return error as AiError.AiError
  })

const callsOf = (summary: Summary) => summary.calls.map(({ name, params }) => ({ name, params }))

describe("OpenAiCompat on recorded answers", () => {
  describe("OpenAI", () => {
    it.live("a long text stream: the text whole, the usage, the metadata", () =>
      Effect.gen(function*() {
        const answer = yield* replay("openai/text.chunks.txt", "stream")

        assert.isTrue(answer.text.startsWith("**Holiday Name:** Harmony Day\n\n**Date:**"))
        assert.strictEqual(answer.finish, "stop")
        assert.deepStrictEqual(answer.usage, {
          input: { total: 16, cacheRead: 0, uncached: 16 },
          output: { total: 300, reasoning: 0, text: 300 }
        })
        assert.deepStrictEqual(answer.metadata, {
          id: "chatcmpl-D8Z5oo6uDh67AD85p73ksdT1KxhE0",
          model: "gpt-4.1-nano-2025-04-14",
          timestamp: "2026-02-12T22:04:52.000Z"
        })
      }))

    it.live("a whole answer, asked for with generateText and with streamText", () =>
      Effect.gen(function*() {
        const whole = yield* replay("openai/text.json", "generate")
        const streamed = yield* replay("openai/text.json", "stream")

        assert.isTrue(whole.text.startsWith("**Holiday Name:** Galaxy Day"))
        assert.deepStrictEqual(streamed, whole)
        assert.deepStrictEqual(whole.usage?.output, { total: 363, reasoning: 0, text: 363 })
      }))

    it.live("a stream with n = 3: the text is choice 0's alone, not the three interleaved", () =>
      Effect.gen(function*() {
        const answer = yield* replay("openai/three-choices.sse", "stream")

        assert.strictEqual(answer.text, `{"city":"San Francisco","temperature":65,"units":"f"}`)
        assert.strictEqual(answer.finish, "stop")
      }))

    it.live("a refusal streamed as refusal deltas is the answer's text; CRLF framing reads the same", () =>
      Effect.gen(function*() {
        const answer = yield* replay("openai/refusal.sse", "stream")
        const crlf = yield* replay("openai/refusal.sse", "stream", { crlf: true })

        assert.strictEqual(answer.text, "I'm sorry, I can't assist with that request.")
        assert.strictEqual(answer.finish, "stop")
        assert.deepStrictEqual(crlf, answer)
      }))

    it.live("two parallel tool calls: each with its own id and arguments", () =>
      Effect.gen(function*() {
        const answer = yield* replay("openai/parallel-tool-calls.sse", "stream")

        assert.deepStrictEqual(answer.calls.map((call) => call.id), [
          "call_JMW1whyEaYG438VE1OIflxA2",
          "call_DNYTawLBoN8fj3KN6qU9N1Ou"
        ])
        assert.deepStrictEqual(callsOf(answer), [
          { name: "GetWeatherArgs", params: { city: "Edinburgh", country: "GB", units: "c" } },
          { name: "get_stock_price", params: { ticker: "AAPL", exchange: "NASDAQ" } }
        ])
        assert.strictEqual(answer.finish, "tool-calls")
      }))

    it.live("an answer cut by the token limit finishes with length", () =>
      Effect.gen(function*() {
        const answer = yield* replay("openai/length.sse", "stream")

        assert.strictEqual(answer.text, `{"`)
        assert.strictEqual(answer.finish, "length")
        assert.deepStrictEqual(answer.usage?.input, { total: 79 })
      }))
  })

  describe("Azure OpenAI", () => {
    it.live("a placeholder first chunk (no id, no model, created 0) does not become the response metadata", () =>
      Effect.gen(function*() {
        const answer = yield* replay("azure/model-router.chunks.txt", "stream")

        assert.strictEqual(answer.text, "Capital of Denmark.")
        assert.deepStrictEqual(answer.metadata, {
          id: "chatcmpl-CYPS1lijGoK8gd9lYzY3r9Sx50nbt",
          model: "gpt-5-nano-2025-08-07",
          timestamp: "2025-11-05T04:30:21.000Z"
        })
        // reasoning tokens inside completion tokens: 15 + 78 = 93
        assert.deepStrictEqual(answer.usage?.output, { total: 78, reasoning: 64, text: 14 })
      }))

    it.live("a whole answer with content-filter results", () =>
      Effect.gen(function*() {
        const answer = yield* replay("azure/chat.json", "generate")

        assert.strictEqual(answer.text, "The capital of France is **Paris**.")
        assert.deepStrictEqual(answer.usage?.input, { total: 14, cacheRead: 0, uncached: 14 })
      }))
  })

  describe("Mistral", () => {
    it.live("content as parts (thinking, then text), streamed: reasoning and text apart", () =>
      Effect.gen(function*() {
        const answer = yield* replay("mistral/reasoning.chunks.txt", "stream")

        assert.strictEqual(answer.reasoning, "The user is asking for 2+2. This is basic arithmetic. 2+2=4.")
        assert.strictEqual(answer.text, "2 + 2 = 4")
        assert.strictEqual(answer.finish, "stop")
        assert.deepStrictEqual(answer.usage?.output, { total: 46 })
      }))

    it.live("content as parts, not streamed: reasoning and text apart", () =>
      Effect.gen(function*() {
        const answer = yield* replay("mistral/reasoning.json", "generate")

        assert.strictEqual(answer.reasoning, "The user is asking for 2+2. This is basic arithmetic. 2+2=4.")
        assert.strictEqual(answer.text, "2 + 2 = 4")
        assert.strictEqual(answer.metadata.model, "magistral-medium-2507")
      }))

    it.live("a whole tool call without an index", () =>
      Effect.gen(function*() {
        const answer = yield* replay("mistral/tool-call.chunks.txt", "stream")

        assert.deepStrictEqual(answer.calls, [{ id: "gSIMJiOkT", name: "weather", params: { location: "San Francisco" } }])
        assert.strictEqual(answer.finish, "tool-calls")
        assert.deepStrictEqual(answer.usage, { input: { total: 124 }, output: { total: 22 } })
      }))
  })

  describe("DeepSeek", () => {
    it.live("reasoning_content, then the answer; reasoning tokens counted inside completion tokens", () =>
      Effect.gen(function*() {
        const answer = yield* replay("deepseek/reasoning.chunks.txt", "stream")

        assert.isTrue(answer.reasoning.startsWith(`We need to count the number of the letter "r"`))
        assert.strictEqual(answer.text, `The word "strawberry" contains three "r"s.`)
        assert.deepStrictEqual(answer.usage?.output, { total: 219, reasoning: 205, text: 14 })
      }))

    it.live("reasoning, then a tool call in argument deltas; cached prompt tokens", () =>
      Effect.gen(function*() {
        const answer = yield* replay("deepseek/tool-call.chunks.txt", "stream")

        assert.deepStrictEqual(answer.calls, [{
          id: "call_00_ioIn7yN9p1ZOMNpDLwd4MgAF",
          name: "weather",
          params: { location: "San Francisco" }
        }])
        assert.deepStrictEqual(answer.usage?.input, { total: 339, cacheRead: 320, uncached: 19 })
        assert.deepStrictEqual(answer.usage?.output, { total: 83, reasoning: 39, text: 44 })
      }))
  })

  describe("Groq", () => {
    it.live("a whole tool call; the usage in the last chunk", () =>
      Effect.gen(function*() {
        const answer = yield* replay("groq/tool-call.chunks.txt", "stream")

        assert.deepStrictEqual(answer.calls, [{ id: "tk85n1k4m", name: "weather", params: {} }])
        assert.deepStrictEqual(answer.usage, { input: { total: 210 }, output: { total: 15 } })
      }))

    it.live("reasoning deltas; reasoning tokens inside completion tokens", () =>
      Effect.gen(function*() {
        const answer = yield* replay("groq/reasoning.chunks.txt", "stream")

        assert.isTrue(answer.reasoning.startsWith("Okay, let me try to figure out"))
        assert.isTrue(answer.text.endsWith("$\\boxed{3}$"))
        assert.deepStrictEqual(answer.usage?.output, { total: 1107, reasoning: 963, text: 144 })
      }))

    it.live("an error event with status_code 400 inside a 200 stream: an InvalidRequestError with the server's words", () =>
      Effect.gen(function*() {
        const error = yield* replayError("groq/tool-use-failed.sse")

        assert.strictEqual(error.reason._tag, "InvalidRequestError")
        assert.include(error.message, "Tool call validation failed")
      }))
  })

  describe("xAI", () => {
    it.live("reasoning tokens counted outside completion tokens: the output adds them", () =>
      Effect.gen(function*() {
        const answer = yield* replay("xai/tool-call.chunks.txt", "stream")

        assert.strictEqual(answer.reasoning, "First, the user is")
        assert.deepStrictEqual(answer.calls, [{ id: "call_55117580", name: "weather", params: { location: "San Francisco" } }])
        // 291 + 26 + 196 = 513, the total xAI reports
        assert.deepStrictEqual(answer.usage, {
          input: { total: 291, cacheRead: 290, uncached: 1 },
          output: { total: 222, reasoning: 196, text: 26 }
        })
      }))
  })

  describe("Alibaba Qwen", () => {
    it.live("argument deltas whose id is empty after the first stay one call", () =>
      Effect.gen(function*() {
        const answer = yield* replay("alibaba/tool-call.chunks.txt", "stream")

        assert.deepStrictEqual(answer.calls, [{
          id: "call_eee11723464a4b9eb8cee71d",
          name: "weather",
          params: { location: "San Francisco" }
        }])
      }))
  })

  describe("Gemini (OpenAI endpoint)", () => {
    it.live("a tool call with an empty id gets an id of its own; thinking tokens counted only in the total", () =>
      Effect.gen(function*() {
        const answer = yield* replay("gemini/tool-call-without-id.json", "generate")

        assert.strictEqual(answer.calls.length, 1)
        assert.notStrictEqual(answer.calls[0]!.id, "")
        assert.deepStrictEqual(callsOf(answer), [{ name: "get_current_time", params: {} }])
        // 35 + 12 = 47, but Gemini reports 109: 62 tokens of thinking it does not name
        assert.deepStrictEqual(answer.usage, { input: { total: 35 }, output: { total: 74, reasoning: 62, text: 12 } })
      }))
  })

  describe("OpenRouter", () => {
    it.live("keep-alive comments between chunks are skipped", () =>
      Effect.gen(function*() {
        const answer = yield* replay("openrouter/reasoning.sse", "stream")

        assert.isTrue(answer.text.startsWith("I’m ChatGPT, a large-language-model assistant created by OpenAI."))
        assert.strictEqual(answer.metadata.model, "openai/o3")
      }))

    it.live("an error event with code 400 inside a 200 stream: an InvalidRequestError with the server's words", () =>
      Effect.gen(function*() {
        const error = yield* replayError("openrouter/stream-error.sse")

        assert.strictEqual(error.reason._tag, "InvalidRequestError")
        assert.include(error.message, "Token limit reached")
      }))
  })
})
