/**
 * The OpenAI-compatible `LanguageModel` against a stand-in server on 127.0.0.1 that checks every
 * request the way OpenAI does (test/support/openAiServer.ts): requests, answers streamed and not,
 * malformed answers, errors, retries, the timeout, the key kept secret, and the `Config` layer.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, ConfigProvider, Duration, Effect, Exit, Fiber, Layer, Logger, References, Redacted, Schedule, Schema, Stream, Tracer } from "effect"
import { AiError, LanguageModel, Prompt, Tool, Toolkit } from "effect/ai"
import type { Response } from "effect/ai"
import { FetchHttpClient } from "effect/http"
import { createServer } from "node:net"
import { TestClock } from "effect/testing"
import { OpenAiCompat } from "effect-async-toolset/openai-compat"
import * as OpenAiServer from "../support/openAiServer.ts"

/** Retries without waiting, so the retry tests stay fast (the default waits from 500 ms). */
const quickRetry = Schedule.recurs(3)

/** The provider's `LanguageModel` on the stand-in server: one instance, used for every request of a test. */
const modelOn = (server: OpenAiServer.FakeServer, options: Partial<OpenAiCompat.Options> = {}) =>
  OpenAiCompat.make({
    baseUrl: server.baseUrl,
    apiKey: Redacted.make(server.apiKey),
    model: "test-model",
    retry: quickRetry,
    ...options
  }).pipe(Effect.provide(FetchHttpClient.layer))

const GetWeather = Tool.make("get_weather", {
  description: "Current weather in a city",
  parameters: Schema.Struct({ city: Schema.String }),
  success: Schema.String
})

const SearchFlights = Tool.make("search_flights", {
  description: "Flights between two airports",
  parameters: Schema.Struct({ from: Schema.String, to: Schema.String, cabin: Schema.optionalKey(Schema.Literals(["economy", "business"])) }),
  success: Schema.String
})

const Tools = Toolkit.make(GetWeather, SearchFlights)
const ToolsLayer = Tools.toLayer({
  get_weather: ({ city }) => Effect.succeed(`Sunny in ${city}`),
  search_flights: ({ from, to }) => Effect.succeed(`3 flights from ${from} to ${to}`)
})

const failure = <A, E>(exit: Exit.Exit<A, E>): E => {
  assert.isTrue(Exit.isFailure(exit), "expected a failure")
  const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail") : undefined
  assert.isDefined(error, "expected a typed failure")
  return (error as { readonly error: E }).error
}

const aiError = <A, E>(exit: Exit.Exit<A, E>): AiError.AiError => {
  const error = failure(exit)
  assert.isTrue(AiError.isAiError(error), `expected an AiError, got ${String(error)}`)
  return error as AiError.AiError
}

const streamParts = <A, E>(stream: Stream.Stream<A, E>) =>
  Stream.runCollect(stream).pipe(Effect.map((parts) => [...parts]))

/** Every log line of `effect`, at every level, as text. */
const captureLogs = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const lines: Array<string> = []
    const logger = Logger.make((entry) => {
      lines.push(`${entry.logLevel} ${JSON.stringify(entry.message)} ${Cause.pretty(entry.cause)}`)
    })
    const exit = yield* effect.pipe(
      Effect.provide(Logger.layer([logger])),
      Effect.provideService(References.MinimumLogLevel, "All"),
      Effect.exit
    )
    return { exit, lines }
  })

/** Text reply parts as one string. */
const textOf = (parts: ReadonlyArray<Response.StreamPart<{}>>) =>
  parts.flatMap((part) => part.type === "text-delta" ? [part.delta] : []).join("")

/** A port nothing listens on. */
const closedPort = Effect.promise(() =>
  new Promise<number>((resolve) => {
    const probe = createServer()
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      probe.close(() => resolve(port))
    })
  })
)

describe("OpenAiCompat", () => {
  describe("generateText", () => {
    it.live("answers in words: text, finish reason, usage and response metadata", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("Hello there!")])
        const model = yield* modelOn(server)

        const response = yield* model.generateText({ prompt: "Hi" })

        assert.strictEqual(response.text, "Hello there!")
        assert.strictEqual(response.finishReason, "stop")
        assert.strictEqual(response.usage.inputTokens.total, 12)
        assert.strictEqual(response.usage.outputTokens.total, 5)
        const metadata = response.content.find((part) => part.type === "response-metadata")
        assert.strictEqual(metadata?.id, "chatcmpl-1")
        assert.strictEqual(metadata?.modelId, "test-model")
        const [request] = server.requests
        assert.strictEqual(request!.headers.authorization, `Bearer ${server.apiKey}`)
        assert.deepStrictEqual(request!.body.messages, [{ role: "user", content: "Hi" }])
        assert.strictEqual(request!.body.model, "test-model")
        assert.isUndefined(request!.body.tools)
        assert.isUndefined(request!.body.tool_choice)
        assert.isUndefined(request!.body.stream)
      }))

    it.live("extra body fields and headers go with every request; the module's own fields win", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("ok")])
        const model = yield* modelOn(server, {
          body: { temperature: 0.2, max_completion_tokens: 100, model: "not-this-one" },
          headers: { "x-title": "travel demo" }
        })

        yield* model.generateText({ prompt: "Hi" })

        const [request] = server.requests
        assert.strictEqual(request!.body.temperature, 0.2)
        assert.strictEqual(request!.body.max_completion_tokens, 100)
        assert.strictEqual(request!.body.model, "test-model")
        assert.strictEqual(request!.headers["x-title"], "travel demo")
      }))

    it.live("tools go out as function definitions, strict where the schema allows", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("ok")])
        const model = yield* modelOn(server)
        const TakeNote = Tool.make("take_note", { parameters: Schema.Struct({ text: Schema.String }) })
          .annotate(Tool.Strict, false)

        yield* model.generateText({
          prompt: "Hi",
          toolkit: Toolkit.make(GetWeather, SearchFlights, TakeNote),
          disableToolCallResolution: true
        })

        const [request] = server.requests
        assert.deepStrictEqual(server.rejected, [])
        const [weather, flights, note] = request!.body.tools!
        assert.deepStrictEqual(weather, {
          type: "function",
          function: {
            name: "get_weather",
            description: "Current weather in a city",
            parameters: {
              type: "object",
              properties: { city: { type: "string" } },
              required: ["city"],
              additionalProperties: false
            },
            strict: true
          }
        })
        // an optional parameter has no strict form: the schema goes as it is
        assert.isUndefined(flights!.function.strict)
        assert.deepStrictEqual(flights!.function.parameters?.required, ["from", "to"])
        // a tool may opt out
        assert.isUndefined(note!.function.strict)
        assert.strictEqual(request!.body.tool_choice, "auto")
      }))

    it.live("a tool call comes back decoded, its handler runs, and its result goes back right after it", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.toolCalls([{ id: "call_1", name: "get_weather", arguments: `{"city":"Paris"}` }]),
          OpenAiServer.text("It is sunny in Paris.")
        ])
        const model = yield* modelOn(server)

        const first = yield* model.generateText({ prompt: "Weather in Paris?", toolkit: Tools })
        assert.strictEqual(first.finishReason, "tool-calls")
        assert.deepStrictEqual(first.toolCalls.map((call) => [call.id, call.name, call.params]), [
          ["call_1", "get_weather", { city: "Paris" }]
        ])
        assert.deepStrictEqual(first.toolResults.map((result) => result.result), ["Sunny in Paris"])

        const prompt = Prompt.concat(Prompt.make("Weather in Paris?"), Prompt.fromResponseParts(first.content))
        const second = yield* model.generateText({ prompt, toolkit: Tools })

        assert.strictEqual(second.text, "It is sunny in Paris.")
        assert.deepStrictEqual(server.rejected, [])
        assert.deepStrictEqual(server.requests[1]!.body.messages, [
          { role: "user", content: "Weather in Paris?" },
          {
            role: "assistant",
            content: null,
            tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: `{"city":"Paris"}` } }]
          },
          { role: "tool", tool_call_id: "call_1", content: "Sunny in Paris" }
        ])
      }).pipe(Effect.provide(ToolsLayer)))

    it.live("with disableToolCallResolution the calls come back as they are and no handler runs", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.toolCalls([
            { id: "call_1", name: "get_weather", arguments: `{"city":"Oslo"}` },
            { id: "call_2", name: "search_flights", arguments: `{"from":"OSL","to":"ROM"}` }
          ])
        ])
        const model = yield* modelOn(server)

        const response = yield* model.generateText({ prompt: "Go", toolkit: Tools, disableToolCallResolution: true })

        assert.deepStrictEqual(response.toolCalls.map((call) => call.params), [{ city: "Oslo" }, { from: "OSL", to: "ROM" }])
        assert.deepStrictEqual(response.toolResults, [])
      }))

    it.live("tool choices map to tool_choice: none, required, one tool, and a subset", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("ok")])
        const model = yield* modelOn(server)
        const ask = (toolChoice: LanguageModel.ToolChoice<"get_weather" | "search_flights">) =>
          model.generateText({ prompt: "Hi", toolkit: Tools, toolChoice, disableToolCallResolution: true })

        yield* ask("none")
        yield* ask("required")
        yield* ask({ tool: "search_flights" })
        yield* ask({ oneOf: ["get_weather"], mode: "required" })

        assert.deepStrictEqual(server.rejected, [])
        const [none, required, one, subset] = server.requests
        assert.strictEqual(none!.body.tool_choice, "none")
        assert.strictEqual(none!.body.tools!.length, 2) // still described: the model knows them, prompt caches stay warm
        assert.strictEqual(required!.body.tool_choice, "required")
        assert.deepStrictEqual(one!.body.tool_choice, { type: "function", function: { name: "search_flights" } })
        assert.strictEqual(subset!.body.tool_choice, "required")
        assert.deepStrictEqual(subset!.body.tools!.map((tool) => tool.function.name), ["get_weather"])
      }))

    it.live("each assistant tool_calls is followed at once by one tool message per call, wherever the prompt kept the results", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("You are welcome.")])
        const model = yield* modelOn(server)
        const call = (id: string, name: string, params: object) =>
          Prompt.makePart("tool-call", { id, name, params, providerExecuted: false })
        const result = (id: string, name: string, value: string) =>
          Prompt.makePart("tool-result", { id, name, isFailure: false, result: value, providerExecuted: false })
        const prompt = Prompt.make([
          { role: "system", content: "You are terse." },
          { role: "user", content: "Weather in Paris, and flights to Rome?" },
          {
            role: "assistant",
            content: [
              { type: "text", text: "Checking both." },
              call("c1", "get_weather", { city: "Paris" }),
              call("c2", "search_flights", { from: "CDG", to: "FCO" })
            ]
          },
          { role: "system", content: "A note that came between the calls and their results." },
          { role: "assistant", content: [{ type: "text", text: "One moment." }] },
          // results in one later message, in the other order
          { role: "tool", content: [result("c2", "search_flights", "2 flights"), result("c1", "get_weather", "Sunny")] },
          { role: "user", content: "Thanks" }
        ])

        yield* model.generateText({ prompt })

        assert.deepStrictEqual(server.rejected, [])
        const messages = server.requests[0]!.body.messages
        assert.deepStrictEqual(messages.map((m) => m.role === "tool" ? `tool ${m.tool_call_id}: ${String(m.content)}` : m.role), [
          "system",
          "user",
          "assistant",
          "tool c1: Sunny",
          "tool c2: 2 flights",
          "system",
          "assistant",
          "user"
        ])
        assert.strictEqual(messages[2]!.content, "Checking both.")
        assert.deepStrictEqual(messages[2]!.tool_calls!.map((c) => c.function.arguments), [
          `{"city":"Paris"}`,
          `{"from":"CDG","to":"FCO"}`
        ])
      }))

    it.live("a call id reused in a later turn gets the result that followed it", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("ok")])
        const model = yield* modelOn(server)
        const turn = (city: string, weather: string): ReadonlyArray<Prompt.MessageEncoded> => [
          { role: "user", content: `Weather in ${city}?` },
          { role: "assistant", content: [{ type: "tool-call", id: "call_0", name: "get_weather", params: { city } }] },
          { role: "tool", content: [{ type: "tool-result", id: "call_0", name: "get_weather", isFailure: false, result: weather }] }
        ]

        yield* model.generateText({ prompt: Prompt.make([...turn("Paris", "Sunny"), ...turn("Rome", "Rainy")]) })

        assert.deepStrictEqual(server.rejected, [])
        const tools = server.requests[0]!.body.messages.filter((m) => m.role === "tool").map((m) => m.content)
        assert.deepStrictEqual(tools, ["Sunny", "Rainy"])
      }))

    it.live("a call without a result gets a note, a result without its call is left out; both are logged", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("ok")])
        const model = yield* modelOn(server)
        const prompt = Prompt.make([
          { role: "user", content: "Weather in Paris?" },
          { role: "assistant", content: [{ type: "tool-call", id: "c1", name: "get_weather", params: { city: "Paris" } }] },
          { role: "user", content: "Never mind." },
          { role: "tool", content: [{ type: "tool-result", id: "c9", name: "get_weather", isFailure: false, result: "Rainy" }] },
          { role: "user", content: "Hello?" }
        ])

        const { exit, lines } = yield* captureLogs(model.generateText({ prompt }))

        assert.isTrue(Exit.isSuccess(exit))
        assert.deepStrictEqual(server.rejected, [])
        assert.deepStrictEqual(server.requests[0]!.body.messages.map((m) => m.role), ["user", "assistant", "tool", "user", "user"])
        assert.strictEqual(server.requests[0]!.body.messages[2]!.content, "No result was recorded for this tool call.")
        assert.isTrue(lines.some((line) => line.includes("without a result") && line.includes("c1")))
        assert.isTrue(lines.some((line) => line.includes("without their call") && line.includes("c9")))
      }))

    it.live("images and PDFs in a user message go as content parts; another file type fails before any request", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("A cat.")])
        const model = yield* modelOn(server)
        const ask = (file: Prompt.FilePartEncoded) =>
          model.generateText({ prompt: [{ role: "user", content: [{ type: "text", text: "What is this?" }, file] }] })

        yield* ask({ type: "file", mediaType: "image/png", data: new Uint8Array([1, 2, 3]) })
        yield* ask({ type: "file", mediaType: "application/pdf", fileName: "a.pdf", data: "JVBERi0=" })
        yield* ask({ type: "file", mediaType: "image/jpeg", data: new URL("https://example.com/cat.jpg") })
        const video = aiError(yield* Effect.exit(ask({ type: "file", mediaType: "video/mp4", data: "AAAA" })))

        assert.deepStrictEqual(server.requests[0]!.body.messages[0]!.content, [
          { type: "text", text: "What is this?" },
          { type: "image_url", image_url: { url: "data:image/png;base64,AQID" } }
        ])
        assert.deepStrictEqual((server.requests[1]!.body.messages[0]!.content as ReadonlyArray<unknown>)[1], {
          type: "file",
          file: { filename: "a.pdf", file_data: "data:application/pdf;base64,JVBERi0=" }
        })
        assert.deepStrictEqual((server.requests[2]!.body.messages[0]!.content as ReadonlyArray<unknown>)[1], {
          type: "image_url",
          image_url: { url: "https://example.com/cat.jpg" }
        })
        assert.strictEqual(video.reason._tag, "InvalidUserInputError")
        assert.include(video.message, "video/mp4")
        assert.strictEqual(server.requests.length, 3)
      }))

    it.live("generateObject sends a strict json_schema response format and decodes the answer", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text(`{"city":"Paris","celsius":21}`)])
        const model = yield* modelOn(server)
        const Weather = Schema.Struct({ city: Schema.String, celsius: Schema.Number })

        const response = yield* model.generateObject({ prompt: "Weather in Paris?", schema: Weather, objectName: "weather" })

        assert.deepStrictEqual(response.value, { city: "Paris", celsius: 21 })
        assert.deepStrictEqual(server.rejected, [])
        const format = server.requests[0]!.body.response_format as { readonly type: string; readonly json_schema: { readonly name: string; readonly strict: boolean } }
        assert.strictEqual(format.type, "json_schema")
        assert.strictEqual(format.json_schema.name, "weather")
        assert.strictEqual(format.json_schema.strict, true)
      }))

    it.live("generateObject with a schema that has no Structured Outputs form (a union at the root) fails before any request", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text(`{"city":"Paris"}`)])
        const model = yield* modelOn(server)

        const Place = Schema.Union([Schema.Struct({ city: Schema.String }), Schema.Struct({ country: Schema.String })])

        const error = aiError(yield* Effect.exit(model.generateObject({ prompt: "A place?", schema: Place })))

        assert.strictEqual(error.reason._tag, "UnsupportedSchemaError")
        assert.strictEqual(server.requests.length, 0)
      }))

    it.live("arguments that are not JSON: passed on as text with deferred validation, a clear AiError through a toolkit", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.toolCalls([{ id: "call_1", name: "get_weather", arguments: `{"city": "Par` }]),
          OpenAiServer.toolCalls([{ id: "call_2", name: "get_weather", arguments: `{"city": "Par` }]),
          OpenAiServer.text("Which city?")
        ])
        const model = yield* modelOn(server)

        const deferred = yield* model.generateText({
          prompt: "Weather?",
          toolkit: Tools,
          disableToolCallResolution: true,
          toolCallValidation: "deferred"
        })
        assert.deepStrictEqual(deferred.toolCalls.map((call) => call.params), [`{"city": "Par`])

        const resolved = yield* Effect.exit(model.generateText({ prompt: "Weather?", toolkit: Tools }))
        const error = aiError(resolved)
        assert.include(error.message, "get_weather")

        const next = yield* model.generateText({ prompt: "Weather?" })
        assert.strictEqual(next.text, "Which city?")
      }).pipe(Effect.provide(ToolsLayer)))
  })

  describe("streamText", () => {
    it.live("text streams as deltas, with the finish reason and the usage asked for with stream_options", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([{
          _tag: "Sse",
          events: [
            OpenAiServer.chunk({ role: "assistant", content: "" }),
            OpenAiServer.chunk({ content: "Hel" }),
            OpenAiServer.chunk({ content: "lo!" }),
            OpenAiServer.chunk({}, "stop"),
            OpenAiServer.usageChunk
          ]
        }])
        const model = yield* modelOn(server)

        const parts = yield* streamParts(model.streamText({ prompt: "Hi" }))

        assert.deepStrictEqual(parts.flatMap((part) => part.type === "text-delta" ? [part.delta] : []), ["Hel", "lo!"])
        assert.deepStrictEqual(parts.map((part) => part.type), [
          "response-metadata",
          "text-start",
          "text-delta",
          "text-delta",
          "text-end",
          "finish"
        ])
        const finish = parts.at(-1)
        assert.isTrue(finish?.type === "finish")
        if (finish?.type === "finish") {
          assert.strictEqual(finish.reason, "stop")
          assert.deepStrictEqual(finish.usage.inputTokens, { total: 12, cacheRead: 4, uncached: 8 })
          assert.deepStrictEqual(finish.usage.outputTokens, { total: 5, reasoning: 2, text: 3 })
        }
        const [request] = server.requests
        assert.strictEqual(request!.body.stream, true)
        assert.deepStrictEqual(request!.body.stream_options, { include_usage: true })
      }))

    it.live("reasoning deltas (reasoning_content or reasoning) stream as reasoning parts before the text", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([{
          _tag: "Sse",
          events: [
            OpenAiServer.chunk({ reasoning_content: "The user " }),
            OpenAiServer.chunk({ reasoning: "greets me." }),
            OpenAiServer.chunk({ content: "Hello!" }, "stop")
          ]
        }])
        const model = yield* modelOn(server)

        const parts = yield* streamParts(model.streamText({ prompt: "Hi" }))

        assert.deepStrictEqual(parts.flatMap((part) => part.type === "reasoning-delta" ? [part.delta] : []), ["The user ", "greets me."])
        assert.deepStrictEqual(parts.map((part) => part.type), [
          "response-metadata",
          "reasoning-start",
          "reasoning-delta",
          "reasoning-delta",
          "reasoning-end",
          "text-start",
          "text-delta",
          "text-end",
          "finish"
        ])
      }))

    it.live("tool-call argument deltas are assembled by index, two calls interleaved, and the handlers run", () =>
      Effect.gen(function*() {
        const delta = (call: object) => OpenAiServer.chunk({ tool_calls: [call] })
        const server = yield* OpenAiServer.make([{
          _tag: "Sse",
          events: [
            delta({ index: 0, id: "call_a", type: "function", function: { name: "get_weather", arguments: "" } }),
            delta({ index: 1, id: "call_b", type: "function", function: { name: "search_flights", arguments: `{"from":` } }),
            delta({ index: 0, function: { arguments: `{"city":` } }),
            delta({ index: 1, function: { arguments: `"JFK","to":"NRT"}` } }),
            delta({ index: 0, function: { arguments: `"Paris"}` } }),
            OpenAiServer.chunk({}, "tool_calls"),
            OpenAiServer.usageChunk
          ]
        }])
        const model = yield* modelOn(server)

        const parts = yield* Stream.runCollect(model.streamText({ prompt: "Go", toolkit: Tools }))

        const calls = [...parts].flatMap((part) => part.type === "tool-call" ? [[part.id, part.name, part.params]] : [])
        assert.deepStrictEqual(calls, [
          ["call_a", "get_weather", { city: "Paris" }],
          ["call_b", "search_flights", { from: "JFK", to: "NRT" }]
        ])
        const argumentsOf = (id: string) =>
          [...parts].flatMap((part) => part.type === "tool-params-delta" && part.id === id ? [part.delta] : []).join("")
        assert.strictEqual(argumentsOf("call_a"), `{"city":"Paris"}`)
        assert.strictEqual(argumentsOf("call_b"), `{"from":"JFK","to":"NRT"}`)
        const results = [...parts].flatMap((part) => part.type === "tool-result" && !part.preliminary ? [part.result] : [])
        assert.sameMembers(results as Array<unknown>, ["Sunny in Paris", "3 flights from JFK to NRT"])
        const finish = [...parts].find((part) => part.type === "finish")
        assert.strictEqual(finish?.type === "finish" ? finish.reason : undefined, "tool-calls")
      }).pipe(Effect.provide(ToolsLayer)))

    it.live("calls sent whole without an index (as some servers do), ending in \"stop\", come back as tool calls", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([{
          _tag: "Sse",
          events: [
            OpenAiServer.chunk({ tool_calls: [{ id: "call_x", type: "function", function: { name: "get_weather", arguments: `{"city":"Oslo"}` } }] }),
            OpenAiServer.chunk({ tool_calls: [{ id: "call_y", type: "function", function: { name: "get_weather", arguments: `{"city":"Rome"}` } }] }),
            OpenAiServer.chunk({}, "stop")
          ]
        }])
        const model = yield* modelOn(server)

        const parts = yield* streamParts(model.streamText({ prompt: "Go", toolkit: Tools, disableToolCallResolution: true }))

        const calls = parts.flatMap((part) => part.type === "tool-call" ? [[part.id, part.params]] : [])
        assert.deepStrictEqual(calls, [["call_x", { city: "Oslo" }], ["call_y", { city: "Rome" }]])
        const finish = parts.at(-1)
        assert.strictEqual(finish?.type === "finish" ? finish.reason : undefined, "tool-calls")
      }))

    it.live("a server that answers a stream request with one JSON body is read as a stream", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("All at once.")])
        const model = yield* modelOn(server)

        const parts = yield* streamParts(model.streamText({ prompt: "Hi" }))

        assert.strictEqual(textOf(parts), "All at once.")
        assert.strictEqual(parts.at(-1)?.type, "finish")
      }))
  })

  describe("malformed answers and errors", () => {
    it.live("HTTP 400 with an OpenAI error body: an InvalidRequestError with the server's message; the next request works", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.error(400, "This model's maximum context length is 8192 tokens.", { code: "context_length_exceeded" }),
          OpenAiServer.text("ok")
        ])
        const model = yield* modelOn(server)

        const error = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))
        assert.strictEqual(error.reason._tag, "InvalidRequestError")
        assert.include(error.message, "maximum context length is 8192 tokens")
        assert.strictEqual(server.requests.length, 1) // not retried

        assert.strictEqual((yield* model.generateText({ prompt: "Hi" })).text, "ok")
      }))

    it.live("a request the server refuses by its rules (a function name with a space) fails with the server's message", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("ok")])
        const model = yield* modelOn(server)
        const Bad = Tool.make("get weather", { parameters: Schema.Struct({ city: Schema.String }) })

        const error = aiError(yield* Effect.exit(model.generateText({
          prompt: "Hi",
          toolkit: Toolkit.make(Bad),
          disableToolCallResolution: true
        })))

        assert.strictEqual(error.reason._tag, "InvalidRequestError")
        assert.include(error.message, "does not match pattern")
        assert.strictEqual(server.rejected.length, 1)
      }))

    it.live("the API key is in no error, log or span, even when the server echoes it back", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.error(500, "upstream failed for key sk-test-0123456789abcdef"),
          OpenAiServer.error(500, "upstream failed for key sk-test-0123456789abcdef")
        ])
        const wrongKey = "sk-wrong-secret-987654321"
        const spans: Array<Tracer.Span> = []
        const tracer = Tracer.make({
          span: (options) => {
            const span = Tracer.nativeTracer.span(options)
            spans.push(span)
            return span
          }
        })
        const run = Effect.gen(function*() {
          const wrong = yield* modelOn(server, { apiKey: Redacted.make(wrongKey) })
          const right = yield* modelOn(server, { retry: Schedule.recurs(1) })
          return [
            yield* Effect.exit(wrong.generateText({ prompt: "Hi" })),
            yield* Effect.exit(right.generateText({ prompt: "Hi" }))
          ] as const
        }).pipe(Effect.withTracer(tracer))

        const { exit, lines } = yield* captureLogs(run)

        assert.isTrue(Exit.isSuccess(exit))
        const [unauthorized, serverError] = Exit.isSuccess(exit) ? exit.value : []
        const auth = aiError(unauthorized!)
        assert.strictEqual(auth.reason._tag, "AuthenticationError")
        assert.include(auth.message, "Incorrect API key provided: <redacted>")
        assert.strictEqual(aiError(serverError!).reason._tag, "InternalProviderError")
        assert.isTrue(lines.some((line) => line.includes("retrying")), "the retry was logged")
        const seen = [
          auth.message,
          String(auth),
          JSON.stringify(auth),
          Cause.pretty(Exit.isFailure(unauthorized!) ? unauthorized.cause : Cause.empty),
          aiError(serverError!).message,
          JSON.stringify(aiError(serverError!)),
          ...lines,
          ...spans.map((span) =>
            JSON.stringify({ name: span.name, attributes: [...span.attributes], events: (span as Tracer.NativeSpan).events }, (_, v) =>
              typeof v === "bigint" ? String(v) : v)
          )
        ].join("\n")
        assert.notInclude(seen, wrongKey)
        assert.notInclude(seen, server.apiKey)
        assert.isAbove(spans.length, 0)
      }))

    it.live("429 for an exhausted quota: a QuotaExhaustedError, not retried, the server's message kept in metadata", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.error(429, "You exceeded your current quota.", { code: "insufficient_quota", type: "insufficient_quota" })
        ])
        const model = yield* modelOn(server)

        const error = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))

        assert.strictEqual(error.reason._tag, "QuotaExhaustedError")
        assert.strictEqual(server.requests.length, 1)
        const metadata = error.reason._tag === "QuotaExhaustedError" ? error.reason.metadata[OpenAiCompat.metadataKey] : undefined
        assert.deepInclude(metadata as object, { message: "You exceeded your current quota.", code: "insufficient_quota" })
      }))

    it.live("a body that is not JSON: an InvalidResponseError quoting it; the next request works", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          { _tag: "Text", text: `{"id":"chatcmpl-1","choices":[{"message":` },
          OpenAiServer.text("ok")
        ])
        const model = yield* modelOn(server)

        const error = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))
        assert.strictEqual(error.reason._tag, "InvalidResponseError")
        assert.include(error.message, "not JSON")
        assert.include(error.message, `{"id":"chatcmpl-1"`)

        assert.strictEqual((yield* model.generateText({ prompt: "Hi" })).text, "ok")
      }))

    it.live("a completion with missing fields or no choice: an InvalidResponseError naming what is wrong; the next request works", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          { _tag: "Json", body: { id: "chatcmpl-1", object: "chat.completion" } },
          { _tag: "Json", body: { id: "chatcmpl-1", choices: [] } },
          { _tag: "Json", body: { choices: [{ message: { tool_calls: [{ id: "c1", function: { arguments: "{}" } }] } }] } },
          OpenAiServer.text("ok")
        ])
        const model = yield* modelOn(server)

        const missing = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))
        const empty = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))
        const nameless = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))

        assert.strictEqual(missing.reason._tag, "InvalidResponseError")
        assert.include(missing.message, "choices")
        assert.include(empty.message, "no choices")
        assert.include(nameless.message, "name")
        assert.strictEqual((yield* model.generateText({ prompt: "Hi" })).text, "ok")
      }))

    it.live("a stream cut mid-way, or ended with no finish and no [DONE]: an AiError; the next request works", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          { _tag: "Sse", events: [OpenAiServer.chunk({ content: "Hel" })], end: "cut" },
          { _tag: "Sse", events: [OpenAiServer.chunk({ content: "Hel" })], done: false },
          { _tag: "Sse", events: [OpenAiServer.chunk({ content: "Hello" }, "stop")] }
        ])
        const model = yield* modelOn(server)

        const cut = aiError(yield* Effect.exit(streamParts(model.streamText({ prompt: "Hi" }))))
        const unfinished = aiError(yield* Effect.exit(streamParts(model.streamText({ prompt: "Hi" }))))

        assert.oneOf(cut.reason._tag, ["InvalidResponseError", "NetworkError"])
        assert.strictEqual(unfinished.reason._tag, "InvalidResponseError")
        assert.include(unfinished.message, "ended before the answer was complete")
        assert.strictEqual(textOf(yield* streamParts(model.streamText({ prompt: "Hi" }))), "Hello")
      }))

    it.live("a stream event that is not JSON, or an error event, fails the stream with what the server sent", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          { _tag: "Sse", events: [OpenAiServer.chunk({ content: "Hi" }), `{"choices":[{"delta":{"content":"th`] },
          {
            _tag: "Sse",
            events: [
              OpenAiServer.chunk({ content: "Hi" }),
              { error: { message: "The model is overloaded.", type: "server_error", code: 503 } }
            ]
          },
          OpenAiServer.text("ok")
        ])
        const model = yield* modelOn(server)

        const broken = aiError(yield* Effect.exit(streamParts(model.streamText({ prompt: "Hi" }))))
        const reported = aiError(yield* Effect.exit(streamParts(model.streamText({ prompt: "Hi" }))))

        assert.strictEqual(broken.reason._tag, "InvalidResponseError")
        assert.include(broken.message, "not JSON")
        assert.strictEqual(reported.reason._tag, "InternalProviderError")
        assert.include(reported.message, "The model is overloaded.")
        assert.strictEqual((yield* model.generateText({ prompt: "Hi" })).text, "ok")
      }))

    it.live("a refused connection: a NetworkError saying so", () =>
      Effect.gen(function*() {
        const port = yield* closedPort
        const model = yield* OpenAiCompat.make({ baseUrl: `http://127.0.0.1:${port}/v1`, model: "m" }).pipe(
          Effect.provide(FetchHttpClient.layer)
        )

        const error = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))

        assert.strictEqual(error.reason._tag, "NetworkError")
        assert.include(error.message, "ECONNREFUSED")
      }))

    it.live("a server that does not answer: the request times out with an AiError; the next request works", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([{ _tag: "Hang" }, { _tag: "Hang" }, OpenAiServer.text("ok")])
        const model = yield* modelOn(server, { timeout: "100 millis" })

        const error = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))
        const streamError = aiError(yield* Effect.exit(streamParts(model.streamText({ prompt: "Hi" }))))

        assert.strictEqual(error.reason._tag, "NetworkError")
        assert.include(error.message, "request timeout")
        assert.include(streamError.message, "request timeout")
        assert.strictEqual((yield* model.generateText({ prompt: "Hi" })).text, "ok")
      }))

    it.live("a stream that goes silent mid-way times out after what it said; the next request works", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          { _tag: "Sse", events: [OpenAiServer.chunk({ content: "Let me think" })], end: "hang" },
          OpenAiServer.text("ok")
        ])
        const model = yield* modelOn(server, { timeout: "100 millis" })
        const said: Array<string> = []

        const exit = yield* Effect.exit(Stream.runForEach(model.streamText({ prompt: "Hi" }), (part) =>
          Effect.sync(() => {
            if (part.type === "text-delta") said.push(part.delta)
          })))

        assert.deepStrictEqual(said, ["Let me think"])
        assert.include(aiError(exit).message, "request timeout")
        assert.strictEqual((yield* model.generateText({ prompt: "Hi" })).text, "ok")
      }))
  })

  describe("retries", () => {
    it.effect("429 with Retry-After, then success: the retry waits at least what the server asked", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.error(429, "Rate limit reached.", { code: "rate_limit_exceeded", headers: { "retry-after": "5" } }),
          OpenAiServer.text("ok")
        ])
        const model = yield* modelOn(server) // its schedule alone would retry at once

        const fiber = yield* Effect.forkChild(model.generateText({ prompt: "Hi" }), { startImmediately: true })
        // Move the test clock a second at a time until the retry arrives.
        let waited = 0
        while (server.requests.length < 2 && waited < 60) {
          yield* TestClock.withLive(Effect.sleep("10 millis"))
          if (server.requests.length === 1) {
            yield* TestClock.adjust("1 second")
            waited++
          }
        }
        const response = yield* Fiber.await(fiber)

        assert.isAtLeast(waited, 5)
        assert.isTrue(Exit.isSuccess(response))
        assert.strictEqual(server.requests.length, 2)
      }))

    it.live("5xx, then success: retried by the schedule given in the options", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.error(500, "The server had an error while processing your request."),
          OpenAiServer.error(503, "The engine is currently overloaded."),
          OpenAiServer.text("ok")
        ])
        const model = yield* modelOn(server, { retry: Schedule.recurs(2) })

        assert.strictEqual((yield* model.generateText({ prompt: "Hi" })).text, "ok")
        assert.strictEqual(server.requests.length, 3)
      }))

    it.live("when the schedule ends, the last error is returned", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.error(500, "first"),
          OpenAiServer.error(502, "second"),
          OpenAiServer.text("ok")
        ])
        const model = yield* modelOn(server, { retry: Schedule.recurs(1) })

        const error = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))

        assert.strictEqual(error.reason._tag, "InternalProviderError")
        assert.include(error.message, "second")
        assert.strictEqual(server.requests.length, 2)
      }))

    it.live("a Retry-After longer than maxRetryAfter ends the retries at once, the error carrying retryAfter", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.error(429, "Slow down.", { headers: { "retry-after": "3600" } }),
          OpenAiServer.text("ok")
        ])
        const model = yield* modelOn(server)

        const error = aiError(yield* Effect.exit(model.generateText({ prompt: "Hi" })))

        assert.strictEqual(error.reason._tag, "RateLimitError")
        assert.isTrue(error.retryAfter !== undefined && Duration.toSeconds(error.retryAfter) === 3600)
        assert.strictEqual(server.requests.length, 1)
      }))

    it.live("streamText retries before the answer starts", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([
          OpenAiServer.error(503, "The engine is currently overloaded."),
          { _tag: "Sse", events: [OpenAiServer.chunk({ content: "Hi!" }, "stop")] }
        ])
        const model = yield* modelOn(server)

        assert.strictEqual(textOf(yield* streamParts(model.streamText({ prompt: "Hi" }))), "Hi!")
        assert.strictEqual(server.requests.length, 2)
      }))

    it("retryAfter reads a Retry-After in seconds or as an HTTP date, and ignores one it cannot read", () => {
      const rateLimited = (header: string) =>
        AiError.make({
          module: "OpenAiCompat",
          method: "generateText",
          reason: new AiError.RateLimitError({ http: { response: { status: 429, headers: { "retry-after": header } } } })
        })
      const now = Date.parse("2025-01-01T00:00:00Z")
      assert.strictEqual(Duration.toSeconds(OpenAiCompat.retryAfter(rateLimited("7"), now)!), 7)
      assert.strictEqual(Duration.toSeconds(OpenAiCompat.retryAfter(rateLimited("Wed, 01 Jan 2025 00:00:30 GMT"), now)!), 30)
      assert.isUndefined(OpenAiCompat.retryAfter(rateLimited("soon"), now))
    })
  })

  describe("layerConfig", () => {
    it.live("reads OPENAI_BASE_URL, OPENAI_API_KEY (as Redacted) and OPENAI_MODEL", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("ok")])
        const env = ConfigProvider.fromEnv({
          env: { OPENAI_BASE_URL: server.baseUrl, OPENAI_API_KEY: server.apiKey, OPENAI_MODEL: "env-model" }
        })
        const model = OpenAiCompat.layerConfig({ model: "fallback-model" }).pipe(
          Layer.provide([FetchHttpClient.layer, ConfigProvider.layer(env)])
        )

        const response = yield* LanguageModel.generateText({ prompt: "Hi" }).pipe(Effect.provide(model))

        assert.strictEqual(response.text, "ok")
        assert.strictEqual(server.requests[0]!.body.model, "env-model")
        assert.strictEqual(server.requests[0]!.headers.authorization, `Bearer ${server.apiKey}`)
      }))

    it.live("takes the model from the options when OPENAI_MODEL is not set, and fails with a ConfigError without either", () =>
      Effect.gen(function*() {
        const server = yield* OpenAiServer.make([OpenAiServer.text("ok")])
        const env = ConfigProvider.fromEnv({ env: { OPENAI_BASE_URL: server.baseUrl, OPENAI_API_KEY: server.apiKey } })
        const withEnv = <A, E, R>(layer: Layer.Layer<A, E, R>) =>
          layer.pipe(Layer.provide([FetchHttpClient.layer, ConfigProvider.layer(env)]))

        yield* LanguageModel.generateText({ prompt: "Hi" }).pipe(
          Effect.provide(withEnv(OpenAiCompat.layerConfig({ model: "fallback-model" })))
        )
        const missing = yield* Effect.exit(
          LanguageModel.generateText({ prompt: "Hi" }).pipe(Effect.provide(withEnv(OpenAiCompat.layerConfig())))
        )

        assert.strictEqual(server.requests[0]!.body.model, "fallback-model")
        const error = failure(missing)
        assert.strictEqual((error as { readonly _tag: string })._tag, "ConfigError")
        assert.include(String(error), "OPENAI_MODEL")
      }))
  })
})
