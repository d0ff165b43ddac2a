/**
 * B7, the agent loop's half: whatever call ids the model sends (repeated in one answer, reused
 * from an ended call, empty, with odd characters, equal to a running call's future synthetic ids,
 * for a tool no toolset has), no two items of the chat share a call id, and each output answers
 * its own call.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { TestClock } from "effect/testing"
import { AiAgent, AsyncToolset, ChatContext as Chat } from "effect-async-toolset"
import type { ChatContext } from "effect-async-toolset"
import { ScriptedModel } from "effect-async-toolset/testing"
import { agentLayer, bookFlight, getWeather } from "../support/agent.ts"

/** The travel toolset, registered with the agent. */
const travel = Effect.gen(function*() {
  const agent = yield* AiAgent.AiAgent
  const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight(), getWeather], onDuplicateCall: "allow" })
  yield* agent.addToolset(toolset)
  return toolset
})

/** Every call id of the chat's function calls and outputs: each call once, each output once. */
const assertUniqueCallIds = (chat: ChatContext.ChatContext) => {
  const calls = chat.items.flatMap((item) => item._tag === "FunctionCall" ? [item.callId] : [])
  const outputs = chat.items.flatMap((item) => item._tag === "FunctionCallOutput" ? [item.callId] : [])
  assert.strictEqual(new Set(calls).size, calls.length, `call ids repeat: ${calls.join(", ")}`)
  assert.strictEqual(new Set(outputs).size, outputs.length, `output ids repeat: ${outputs.join(", ")}`)
  assert.deepStrictEqual([...outputs].sort(), [...calls].sort(), "each call has its one output")
}

/** The output of the call whose arguments are `args`. */
const outputFor = (chat: ChatContext.ChatContext, args: string) => {
  const call = chat.items.find((item) => item._tag === "FunctionCall" && item.arguments === args)
  assert.isDefined(call, `a call with ${args}`)
  const callId = call!._tag === "FunctionCall" ? call!.callId : ""
  const output = chat.items.find((item) => item._tag === "FunctionCallOutput" && item.callId === callId)
  return output?._tag === "FunctionCallOutput" ? output.output : undefined
}

/** Answers with `calls` to the first request of each user message, words after. */
const callsThenWords = (calls: (request: ScriptedModel.Request) => ReadonlyArray<ScriptedModel.ToolCall>) =>
(request: ScriptedModel.Request): ScriptedModel.Reply =>
  request.resultsSinceUser.length === 0 ? { toolCalls: calls(request) } : "Done."

describe("AiAgent call ids (B7)", () => {
  it.effect("a model that repeats an id within one answer: each call stored under its own id, answered by its own output", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      yield* travel
      yield* agent.send("Weather in Paris, Rome and Oslo?")
      const chat = yield* agent.chat
      assertUniqueCallIds(chat)
      assert.strictEqual(outputFor(chat, `{"city":"Paris"}`), "Sunny in Paris")
      assert.strictEqual(outputFor(chat, `{"city":"Rome"}`), "Sunny in Rome")
      assert.strictEqual(outputFor(chat, `{"city":"Oslo"}`), "Sunny in Oslo")
    }).pipe(Effect.provide(agentLayer(callsThenWords(() => [
      { id: "same", name: "get_weather", params: { city: "Paris" } },
      { id: "same", name: "get_weather", params: { city: "Rome" } },
      { id: "same_2", name: "get_weather", params: { city: "Oslo" } }
    ])))))

  it.effect("empty ids, and an id equal to the one an empty id would get: every call stored under its own id", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      yield* travel
      yield* agent.send("Weather?")
      yield* agent.send("Again?")
      const chat = yield* agent.chat
      assertUniqueCallIds(chat)
      assert.isFalse(chat.items.some((item) => item._tag !== "ChatMessage" && item.callId === ""))
      assert.strictEqual(chat.items.filter((item) => item._tag === "FunctionCallOutput" && item.output.startsWith("Sunny")).length, 6)
    }).pipe(Effect.provide(agentLayer(callsThenWords(() => [
      { id: "", name: "get_weather", params: { city: "Paris" } },
      { id: "call_1", name: "get_weather", params: { city: "Rome" } },
      { id: "", name: "get_weather", params: { city: "Oslo" } }
    ])))))

  it.effect("ids with odd characters (spaces, newlines, quotes, emoji, 1000 characters) are kept as they are and stay unique", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      yield* travel
      yield* agent.send("Weather?")
      const chat = yield* agent.chat
      assertUniqueCallIds(chat)
      const ids = chat.items.flatMap((item) => item._tag === "FunctionCall" ? [item.callId] : [])
      assert.deepStrictEqual(ids.slice(0, 3), ["a b\n\"c\"", "🦜", "x".repeat(1000)])
    }).pipe(Effect.provide(agentLayer(callsThenWords(() => [
      { id: "a b\n\"c\"", name: "get_weather", params: { city: "Paris" } },
      { id: "🦜", name: "get_weather", params: { city: "Rome" } },
      { id: "x".repeat(1000), name: "get_weather", params: { city: "Oslo" } }
    ])))))

  it.effect("a later turn reusing an ended async call's id: a new call under a fresh id; its updates never repeat the old call's ids", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      const toolset = yield* travel
      yield* agent.send("Book me a flight to Tokyo")
      yield* TestClock.adjust("10 seconds")
      yield* agent.awaitIdle
      yield* agent.send("Book me a flight to Tokyo")
      yield* TestClock.adjust("10 seconds")
      yield* toolset.awaitIdle
      yield* agent.awaitIdle
      const chat = yield* agent.chat
      assertUniqueCallIds(chat)
      assert.strictEqual(chat.items.filter((item) => item._tag === "FunctionCall" && item.name === "book_flight").length, 6)
    }).pipe(Effect.provide(agentLayer(callsThenWords(() => [{ id: "b1", name: "book_flight", params: { to: "Tokyo" } }])))))

  it.effect("a call whose id is a running call's next update id: the update takes another id, no two items share one", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      const toolset = yield* travel
      yield* agent.send("Book me a flight to Tokyo")
      yield* agent.send("Weather in Tokyo?")
      yield* TestClock.adjust("10 seconds")
      yield* toolset.awaitIdle
      yield* agent.awaitIdle
      assertUniqueCallIds(yield* agent.chat)
    }).pipe(Effect.provide(agentLayer(callsThenWords((request) =>
      request.lastUserText.startsWith("Book")
        ? [{ id: "b1", name: "book_flight", params: { to: "Tokyo" } }]
        : [{ id: "b1_update_1", name: "get_weather", params: { city: "Tokyo" } }, {
          id: "b1_final",
          name: "get_weather",
          params: { city: "Kyoto" }
        }]
    )))))

  it.effect("a call of an unknown tool whose id is a running call's next update id: the update takes another id", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      const toolset = yield* travel
      yield* agent.send("Book me a flight to Tokyo")
      yield* agent.send("Rent a car")
      yield* TestClock.adjust("10 seconds")
      yield* toolset.awaitIdle
      yield* agent.awaitIdle
      const chat = yield* agent.chat
      assertUniqueCallIds(chat)
      assert.isTrue(chat.items.some((item) => item._tag === "FunctionCallOutput" && item.output.includes("FL-847293")))
    }).pipe(Effect.provide(agentLayer(callsThenWords((request) =>
      request.lastUserText.startsWith("Book")
        ? [{ id: "b1", name: "book_flight", params: { to: "Tokyo" } }]
        : [{ id: "b1_update_1", name: "rent_car", params: {} }, { id: "b1_final", name: "rent_car", params: {} }]
    )))))

  it.effect("a history call whose id is a new call's next update id: the update takes another id", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      const toolset = yield* travel
      yield* agent.send("Book me a flight to Tokyo")
      yield* TestClock.adjust("10 seconds")
      yield* toolset.awaitIdle
      yield* agent.awaitIdle
      const chat = yield* agent.chat
      assertUniqueCallIds(chat)
      assert.isTrue(chat.items.some((item) => item._tag === "FunctionCallOutput" && item.output.includes("FL-847293")))
    }).pipe(Effect.provide(Layer.unwrap(Effect.gen(function*() {
      const history = Chat.ChatContext.fromItems([
        yield* Chat.message("user", "Weather?"),
        yield* Chat.functionCall({ callId: "b1_update_1", name: "get_weather", arguments: `{"city":"Oslo"}` }),
        yield* Chat.functionCallOutput({ callId: "b1_update_1", name: "get_weather", output: "Sunny in Oslo", isError: false }),
        yield* Chat.message("assistant", "Sunny.")
      ])
      return agentLayer(callsThenWords(() => [{ id: "b1", name: "book_flight", params: { to: "Tokyo" } }]), { history })
    })))))
})
