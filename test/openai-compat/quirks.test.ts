/**
 * What real servers do that OpenAI does not, where no recording was found (each shape as a
 * server's users reported it), and the mistakes a newcomer makes: whole tool calls without index
 * or id (Gemini's OpenAI endpoint), an error event carrying a 401 inside a 200 stream, a prompt
 * with nothing to send, a base URL without `/v1`.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Redacted, Schema, Stream } from "effect"
import { AiError, Prompt, Tool, Toolkit } from "effect/ai"
import type { Response } from "effect/ai"
import { FetchHttpClient } from "effect/http"
import { OpenAiCompat } from "effect-async-toolset/openai-compat"
import * as OpenAiServer from "../support/openAiServer.ts"

const GetWeather = Tool.make("get_weather", {
  parameters: Schema.Struct({ city: Schema.String }),
  success: Schema.String
})
const Tools = Toolkit.make(GetWeather)
const ToolsLayer = Tools.toLayer({ get_weather: ({ city }) => Effect.succeed(`Sunny in ${city}`) })

const modelOn = (server: OpenAiServer.FakeServer, baseUrl = server.baseUrl) =>
  OpenAiCompat.make({ baseUrl, apiKey: Redacted.make(server.apiKey), model: "test-model" }).pipe(
    Effect.provide(FetchHttpClient.layer)
  )

const aiError = <A, E>(exit: Exit.Exit<A, E>): AiError.AiError => {
  assert.isTrue(Exit.isFailure(exit), "expected a failure")
  const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error : undefined
  assert.isTrue(AiError.isAiError(error), `expected an AiError, got ${String(error)}`)
  return error as AiError.AiError
}

/** A whole call as Gemini's OpenAI endpoint streams it: no index, an empty id. */
const geminiCall = (city: string) => ({
  function: { arguments: JSON.stringify({ city }), name: "get_weather" },
  id: "",
  index: null,
  type: "function"
})

const geminiChunk = (calls: ReadonlyArray<object>, finish: string | null) => ({
  choices: [{ delta: { role: "assistant", tool_calls: calls }, finish_reason: finish, index: 0 }],
  created: 1750838567,
  id: "SKpbaNfgG_7rkdUPhs3joQg",
  model: "gemini-2.0-flash",
  object: "chat.completion.chunk"
})

const calls = (parts: ReadonlyArray<Response.AnyPart>) =>
  parts.flatMap((part) => part.type === "tool-call" ? [{ id: part.id, params: part.params }] : [])

describe("OpenAiCompat with what real servers send", () => {
  describe("whole tool calls without index or id (Gemini)", () => {
    it.live("two in one chunk stay two calls, each with its own id and arguments", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([{
          _tag: "Sse",
          events: [geminiChunk([geminiCall("Paris"), geminiCall("Rome")], "tool_calls")]
        }])
        const model = yield* modelOn(server)

        const parts = [...yield* Stream.runCollect(model.streamText({ prompt: "Weather?", toolkit: Tools, disableToolCallResolution: true }))]

        const found = calls(parts)
        assert.deepStrictEqual(found.map((call) => call.params), [{ city: "Paris" }, { city: "Rome" }])
        assert.notStrictEqual(found[0]!.id, found[1]!.id)
        assert.notStrictEqual(found[0]!.id, "")
      }))

    it.live("two in two chunks stay two calls, and through a toolkit both handlers run", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([{
          _tag: "Sse",
          events: [geminiChunk([geminiCall("Paris")], null), geminiChunk([geminiCall("Rome")], "tool_calls")]
        }])
        const model = yield* modelOn(server)

        const parts = [...yield* Stream.runCollect(model.streamText({ prompt: "Weather?", toolkit: Tools }))]

        assert.deepStrictEqual(calls(parts).map((call) => call.params), [{ city: "Paris" }, { city: "Rome" }])
        const results = parts.flatMap((part) => part.type === "tool-result" ? [part.result] : [])
        assert.deepStrictEqual(results, ["Sunny in Paris", "Sunny in Rome"])
      }).pipe(Effect.provide(ToolsLayer)))
  })

  describe("errors inside a 200 stream are mapped as the same HTTP status would be", () => {
    it.live("an error event carrying a 401 is an AuthenticationError, as a 401 status is", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          {
            _tag: "Sse",
            events: [{ error: { message: "Invalid API key provided.", type: "authentication_error", code: 401 } }],
            done: false
          },
          OpenAiServer.error(401, "Invalid API key provided.", { code: "invalid_api_key" })
        ])
        const model = yield* modelOn(server)

        const inStream = aiError(yield* Effect.exit(Stream.runDrain(model.streamText({ prompt: "Hi" }))))
        const asStatus = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))

        assert.strictEqual(asStatus.reason._tag, "AuthenticationError")
        assert.strictEqual(inStream.reason._tag, "AuthenticationError")
        assert.include(inStream.message, "Invalid API key provided.")
      }))

    it.live("an error event with a status_code, or only an error code, maps by it (429, invalid_api_key)", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          { _tag: "Sse", events: [{ error: { message: "Slow down.", status_code: 429 } }], done: false },
          { _tag: "Sse", events: [{ error: { message: "Bad key.", code: "invalid_api_key" } }], done: false }
        ])
        const model = yield* modelOn(server)

        const limited = aiError(yield* Effect.exit(Stream.runDrain(model.streamText({ prompt: "Hi" }))))
        const badKey = aiError(yield* Effect.exit(Stream.runDrain(model.streamText({ prompt: "Hi" }))))

        assert.strictEqual(limited.reason._tag, "RateLimitError")
        assert.strictEqual(badKey.reason._tag, "AuthenticationError")
      }))
  })

  describe("prompts with nothing to send fail before any request", () => {
    it.live("an empty prompt, or one holding only reasoning: an InvalidUserInputError, no request", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("ok")])
        const model = yield* modelOn(server)
        const onlyReasoning = Prompt.make([{ role: "assistant", content: [{ type: "reasoning", text: "Let me think." }] }])

        const empty = aiError(yield* Effect.exit(model.generateText({ prompt: Prompt.empty })))
        const reasoning = aiError(yield* Effect.exit(Stream.runDrain(model.streamText({ prompt: onlyReasoning }))))

        assert.strictEqual(empty.reason._tag, "InvalidUserInputError")
        assert.include(empty.message, "no message")
        assert.strictEqual(reasoning.reason._tag, "InvalidUserInputError")
        assert.strictEqual(server.requests.length + server.rejected.length, 0)
      }))
  })

  describe("a base URL without /v1", () => {
    it.live("the 404 names the URL and says to check the base URL, /v1 included", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("ok")])
        const root = server.baseUrl.replace(/\/v1$/, "")
        const model = yield* modelOn(server, root)

        const error = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))

        assert.strictEqual(error.reason._tag, "InvalidRequestError")
        assert.include(error.message, `${root}/chat/completions`)
        assert.include(error.message, "/v1")
        assert.notInclude(error.message, "HTTP 404: {}")
      }))
  })
})
