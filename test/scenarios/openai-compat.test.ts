/**
 * The booking story on the OpenAI-compatible provider: `AiAgent` with a background tool, the model
 * played by the stand-in server on 127.0.0.1, which checks every request as OpenAI does. The
 * agent's prompts (the call, its first update, the later `_update_<n>` / `_final` pairs, the reply
 * instructions) all reach the server in a shape it accepts.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Redacted, Stream } from "effect"
import { FetchHttpClient } from "effect/http"
import { AgentEvent, AiAgent, AsyncToolset } from "effect-async-toolset"
import { OpenAiCompat } from "effect-async-toolset/openai-compat"
import { bookFlight, transcript } from "../support/agent.ts"
import * as OpenAiServer from "../support/openAiServer.ts"

/** The model's side, as rules over what the server received. */
const model = (request: OpenAiServer.Received): OpenAiServer.Reply => {
  const { messages, tool_choice } = request.body
  if (tool_choice === "none") {
    const final = messages.find((m) => m.role === "tool" && m.tool_call_id?.endsWith("_final"))
    if (final === undefined) return OpenAiServer.text("") // an update only: nothing worth saying
    const { confirmation } = JSON.parse(String(final.content)) as { readonly confirmation: string }
    return OpenAiServer.text(`All set! Your confirmation number is ${confirmation}.`)
  }
  if (messages.at(-1)?.role === "tool") return OpenAiServer.text("On it: I am looking up flights to Tokyo.")
  return OpenAiServer.toolCalls([{ id: "call_abc", name: "book_flight", arguments: `{"to":"Tokyo"}` }])
}

describe("scenario: the agent on an OpenAI-compatible server", () => {
  it.live("a turn with a background tool call, then the follow-up reply, every request accepted by the server", () =>
    Effect.gen(function*() {
      const server = yield* OpenAiServer.make(model)
      const provider = OpenAiCompat.layer({
        baseUrl: server.baseUrl,
        apiKey: Redacted.make(server.apiKey),
        model: "test-model"
      }).pipe(Layer.provide(FetchHttpClient.layer))

      yield* Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight({ search: "20 millis", book: "20 millis" })] })
        yield* agent.addToolset(toolset)

        const turn = yield* agent.send("Book me a flight to Tokyo")
        assert.strictEqual(turn.text, "On it: I am looking up flights to Tokyo.")

        yield* agent.awaitIdle // the booking ended and the agent told the user
        const lines = transcript(yield* agent.chat)
        assert.strictEqual(lines[0], "user: Book me a flight to Tokyo")
        assert.strictEqual(lines[1], `call call_abc book_flight {"to":"Tokyo"}`)
        assert.include(lines[2], "Looking up flights to Tokyo")
        assert.strictEqual(lines.at(-1), "assistant: All set! Your confirmation number is FL-847293.")
      }).pipe(Effect.provide(AiAgent.layer({ instructions: "You book flights." }).pipe(Layer.provide(provider))))

      assert.deepStrictEqual(server.rejected, [])
      const [first, second] = server.requests
      assert.deepStrictEqual(first!.body.messages.map((m) => m.role), ["system", "user"])
      assert.strictEqual(first!.body.tool_choice, "auto")
      const tools = first!.body.tools!.map((tool) => [tool.function.name, tool.function.strict])
      assert.deepInclude(tools, ["book_flight", true])
      assert.deepStrictEqual(second!.body.messages.map((m) => m.role), ["system", "user", "assistant", "tool"])
      // the follow-up: the final result right after its own call, then the reply instructions
      const last = server.requests.at(-1)!.body
      assert.strictEqual(last.tool_choice, "none")
      const at = last.messages.findIndex((m) => m.tool_calls?.some((call) => call.id === "call_abc_final"))
      assert.isAbove(at, 0)
      assert.strictEqual(last.messages[at + 1]!.tool_call_id, "call_abc_final")
      assert.include(String(last.messages[at + 1]!.content), "FL-847293")
      assert.strictEqual(last.messages.at(-1)!.role, "system")
    }))

  it.live("a question while the booking runs: the request ends with it, the running note sits after the call's first update (G1)", () =>
    Effect.gen(function*() {
      const server = yield* OpenAiServer.make((request) => {
        const last = request.body.messages.at(-1)
        if (last?.role === "user" && last.content === "How long is the flight?") return OpenAiServer.text("About 14 hours.")
        return model(request)
      })
      const provider = OpenAiCompat.layer({ baseUrl: server.baseUrl, apiKey: Redacted.make(server.apiKey), model: "test-model" })
        .pipe(Layer.provide(FetchHttpClient.layer))

      yield* Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight({ search: "1 hour", book: "1 hour" })] })
        yield* agent.addToolset(toolset)
        yield* agent.send("Book me a flight to Tokyo")

        const turn = yield* agent.send("How long is the flight?")

        assert.strictEqual(turn.text, "About 14 hours.")
      }).pipe(Effect.provide(AiAgent.layer({ instructions: "You book flights." }).pipe(Layer.provide(provider))))

      assert.deepStrictEqual(server.rejected, [])
      const messages = server.requests.at(-1)!.body.messages
      assert.deepStrictEqual(messages.map((m) => m.role), ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "user"])
      assert.deepStrictEqual(messages.at(-1), { role: "user", content: "How long is the flight?" })
      assert.strictEqual(messages[3]!.tool_call_id, "call_abc")
      assert.strictEqual(messages[5]!.tool_call_id, "call_abc_running")
      assert.include(String(messages[5]!.content), "still running")
    }))

  it.live("streamed over server-sent events: the agent's words arrive as deltas, a call assembled from argument deltas runs", () =>
    Effect.gen(function*() {
      const words = (...pieces: ReadonlyArray<string>): OpenAiServer.Reply => ({
        _tag: "Sse",
        events: [
          ...pieces.map((content, i) => OpenAiServer.chunk(i === 0 ? { role: "assistant", content } : { content })),
          OpenAiServer.chunk({}, "stop"),
          OpenAiServer.usageChunk
        ]
      })
      const call = (delta: object) => OpenAiServer.chunk({ tool_calls: [delta] })
      const server = yield* OpenAiServer.make((request) => {
        const { messages, tool_choice } = request.body
        if (tool_choice === "none") {
          // a reply names what it is for (its instructions come last): the "found 3 flights" update
          // alone is not worth saying; the final result is the booking
          const named = String(messages.at(-1)?.content ?? "")
          return named.includes("call_abc_final") ? words("All set! ", "Your confirmation ", "number is FL-847293.") : words()
        }
        if (messages.at(-1)?.role === "tool") return words("On it: ", "looking up ", "flights.")
        return {
          _tag: "Sse",
          events: [
            call({ index: 0, id: "call_abc", type: "function", function: { name: "book_flight", arguments: "" } }),
            call({ index: 0, function: { arguments: `{"to":` } }),
            call({ index: 0, function: { arguments: `"Tokyo"}` } }),
            OpenAiServer.chunk({}, "tool_calls"),
            OpenAiServer.usageChunk
          ]
        }
      })
      const provider = OpenAiCompat.layer({ baseUrl: server.baseUrl, apiKey: Redacted.make(server.apiKey), model: "test-model" })
        .pipe(Layer.provide(FetchHttpClient.layer))

      yield* Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight({ search: "20 millis", book: "20 millis" })] })
        yield* agent.addToolset(toolset)
        const deltas: Array<AgentEvent.TextDelta> = []
        yield* agent.events.pipe(
          Stream.filter(AgentEvent.AgentEvent.guards.TextDelta),
          Stream.runForEach((event) => Effect.sync(() => deltas.push(event))),
          Effect.forkChild({ startImmediately: true })
        )
        yield* Effect.yieldNow

        const turn = yield* agent.send("Book me a flight to Tokyo")
        assert.strictEqual(turn.text, "On it: looking up flights.")
        yield* agent.awaitIdle

        const lines = transcript(yield* agent.chat)
        assert.strictEqual(lines[1], `call call_abc book_flight {"to":"Tokyo"}`)
        assert.strictEqual(lines.at(-1), "assistant: All set! Your confirmation number is FL-847293.")
        assert.deepStrictEqual(deltas.map((d) => d.delta), [
          "On it: ",
          "looking up ",
          "flights.",
          "All set! ",
          "Your confirmation ",
          "number is FL-847293."
        ])
      }).pipe(Effect.provide(AiAgent.layer({ instructions: "You book flights." }).pipe(Layer.provide(provider))))

      assert.deepStrictEqual(server.rejected, [])
      assert.isTrue(server.requests.every((r) => r.body.stream === true), "every request asked for a stream")
    }))
})
