/**
 * The requests we send, against OpenAI's published schema of a Chat Completions request
 * (`CreateChatCompletionRequest`, vendored from openai/openai-openapi). The stand-in server checks
 * every request it gets with it, so every test on it covers this too; here the check is shown to
 * bite, and each shape of request the provider makes is sent once.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted, Schema, Stream } from "effect"
import { Prompt, Tool, Toolkit } from "effect/ai"
import { FetchHttpClient } from "effect/http"
import { OpenAiCompat } from "effect-async-toolset/openai-compat"
import { problems } from "../support/chatCompletionsSchema.ts"
import * as OpenAiServer from "../support/openAiServer.ts"
import { captureLogs } from "../support/reliability.ts"

describe("OpenAiCompat requests against OpenAI's published request schema", () => {
  it("the schema refuses what OpenAI refuses: no messages, a number as content, an unknown role, a bad tool choice", () => {
    const ok = { model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }] }
    assert.deepStrictEqual(problems(ok), [])
    assert.include(problems({ ...ok, messages: [] }).join("; "), "/messages must NOT have fewer than 1 items")
    assert.isNotEmpty(problems({ ...ok, messages: [{ role: "user", content: 5 }] }))
    assert.isNotEmpty(problems({ ...ok, messages: [{ role: "robot", content: "Hi" }] }))
    assert.isNotEmpty(problems({ ...ok, tool_choice: "sometimes" }))
    assert.isNotEmpty(problems({ ...ok, tools: [{ type: "function", function: { parameters: {} } }] }))
  })

  it.live("every shape of request the provider sends follows it", () => {
    const logs = captureLogs()
    return Effect.gen(function*() {
      const server = yield* OpenAiServer.make((request) =>
        request.body.stream === true
          ? { _tag: "Sse", events: [OpenAiServer.chunk({ content: "ok" }, "stop"), OpenAiServer.usageChunk] }
          : request.body.response_format !== undefined
          ? OpenAiServer.text(`{"city":"Paris"}`)
          : OpenAiServer.text("ok")
      )
      const model = yield* OpenAiCompat.make({
        baseUrl: server.baseUrl,
        apiKey: Redacted.make(server.apiKey),
        model: "gpt-4o-mini",
        body: { temperature: 0.2, max_completion_tokens: 100 }
      }).pipe(Effect.provide(FetchHttpClient.layer))
      const Weather = Tool.make("get_weather", { description: "Weather", parameters: Schema.Struct({ city: Schema.String }) })
      const Flights = Tool.make("search_flights", {
        parameters: Schema.Struct({ to: Schema.String, cabin: Schema.optionalKey(Schema.Literals(["economy", "business"])) })
      })
      const tools = Toolkit.make(Weather, Flights)
      const conversation = Prompt.make([
        { role: "system", content: "You are terse." },
        {
          role: "user",
          content: [
            { type: "text", text: "What is this, and the weather?" },
            { type: "file", mediaType: "image/png", data: new Uint8Array([1, 2, 3]) },
            { type: "file", mediaType: "application/pdf", fileName: "a.pdf", data: "JVBERi0=" },
            { type: "file", mediaType: "audio/wav", data: new Uint8Array([4, 5]) }
          ]
        },
        {
          role: "assistant",
          content: [
            { type: "reasoning", text: "Two calls." },
            { type: "text", text: "Checking." },
            { type: "tool-call", id: "c1", name: "get_weather", params: { city: "Paris" } },
            { type: "tool-call", id: "c2", name: "search_flights", params: `{"to": "FCO"` }
          ]
        },
        { role: "tool", content: [{ type: "tool-result", id: "c1", name: "get_weather", isFailure: false, result: { sunny: true } }] },
        { role: "user", content: "Thanks" }
      ])

      yield* model.generateText({ prompt: conversation })
      yield* model.generateText({ prompt: conversation, toolkit: tools, disableToolCallResolution: true })
      yield* model.generateText({ prompt: "Hi", toolkit: tools, toolChoice: { tool: "get_weather" }, disableToolCallResolution: true })
      yield* model.generateText({ prompt: "Hi", toolkit: tools, toolChoice: { oneOf: ["search_flights"], mode: "required" }, disableToolCallResolution: true })
      yield* model.generateObject({ prompt: "Where?", schema: Schema.Struct({ city: Schema.String }), objectName: "place" })
      yield* Stream.runDrain(model.streamText({ prompt: conversation, toolkit: tools, toolChoice: "none", disableToolCallResolution: true }))

      assert.deepStrictEqual(server.rejected, [])
      assert.strictEqual(server.requests.length, 6)
      for (const request of server.requests) assert.deepStrictEqual(problems(request.body), [])
      // c2 has no result in the conversation: said in a warning for each of the three requests that send it
      assert.lengthOf(logs.find(["Warn"], "tool calls without a result", "c2"), 3)
    }).pipe(Effect.provide(logs.layer))
  })
})
