/**
 * The agent's events as data: constructors, guards, match, and the JSON codec a UI reads them with
 * (chat items included).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Schema, Stream } from "effect"
import { AgentEvent, AiAgent, AsyncToolset, ChatContext } from "effect-async-toolset"
import { agentLayer, getWeather } from "../support/agent.ts"

const roundTrip = (event: AgentEvent.AgentEvent) =>
  Schema.decodeUnknownSync(AgentEvent.JsonString)(Schema.encodeSync(AgentEvent.JsonString)(event))

describe("AgentEvent", () => {
  it.effect("every event an agent publishes round-trips through the JSON codec, chat items as their classes", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      yield* agent.addToolset(yield* AsyncToolset.make({ id: "weather", tools: [getWeather] }))
      const events: Array<AgentEvent.AgentEvent> = []
      yield* agent.events.pipe(
        Stream.runForEach((event) => Effect.sync(() => events.push(event))),
        Effect.forkChild({ startImmediately: true })
      )
      yield* Effect.yieldNow

      yield* agent.send("Weather in Paris?")

      assert.deepStrictEqual([...new Set(events.map((e) => e._tag))], ["ItemAdded", "TurnStarted", "TextDelta", "TurnEnded"])
      for (const event of events) assert.deepStrictEqual(roundTrip(event), event)
      const items = events.filter(AgentEvent.AgentEvent.guards.ItemAdded).map((e) => roundTrip(e))
      assert.deepStrictEqual(items.map((e) => e._tag === "ItemAdded" && e.item.constructor.name), [
        "ChatMessage",
        "FunctionCall",
        "FunctionCallOutput",
        "ChatMessage"
      ])
      const text = Schema.encodeSync(AgentEvent.JsonString)(events.find(AgentEvent.AgentEvent.guards.TextDelta)!)
      assert.deepStrictEqual(Object.keys(JSON.parse(text)), ["_tag", "turn", "itemId", "delta", "at"])
    }).pipe(Effect.provide(agentLayer([
      { toolCalls: [{ name: "get_weather", params: { city: "Paris" } }] },
      { text: ["Sunny ", "in Paris."] }
    ]))))

  it("the constructors make plain objects; guards and match tell the kinds apart", () => {
    const item = new ChatContext.ChatMessage({ id: "msg_1", role: "assistant", content: "Hello", createdAt: 3 })
    const events: ReadonlyArray<AgentEvent.AgentEvent> = [
      AgentEvent.TurnStarted.make({ turn: 1, cause: "user", at: 1 }),
      AgentEvent.TextDelta.make({ turn: 1, itemId: "msg_1", delta: "Hel", at: 2 }),
      AgentEvent.ItemAdded.make({ item, at: 3 }),
      AgentEvent.TurnEnded.make({ turn: 1, outcome: "answered", text: "Hello", at: 4 })
    ]
    assert.strictEqual(Object.getPrototypeOf(events[1]), Object.prototype)
    assert.deepStrictEqual(events.map((e) => AgentEvent.AgentEvent.guards.TextDelta(e)), [false, true, false, false])
    assert.deepStrictEqual(
      events.map(AgentEvent.AgentEvent.match({
        TurnStarted: (e) => `turn ${e.turn} (${e.cause})`,
        TextDelta: (e) => `+ ${e.delta}`,
        ItemAdded: (e) => `${e.item._tag} ${e.item.id}`,
        TurnEnded: (e) => `turn ${e.turn} ${e.outcome}`
      })),
      ["turn 1 (user)", "+ Hel", "ChatMessage msg_1", "turn 1 answered"]
    )
    for (const event of events) assert.deepStrictEqual(roundTrip(event), event)
  })

  it("decoding rejects text that is not an event", () => {
    const decode = Schema.decodeUnknownExit(AgentEvent.JsonString)
    assert.isTrue(Exit.isFailure(decode(`{"_tag":"TextDelta","turn":1,"delta":"x","at":1}`))) // no itemId
    assert.isTrue(Exit.isFailure(decode(`{"_tag":"ItemAdded","item":{"_tag":"Nope"},"at":1}`)))
    assert.isTrue(Exit.isFailure(decode(`{"_tag":"Unknown"}`)))
  })
})
