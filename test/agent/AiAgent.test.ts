/**
 * The agent loop on effect/ai: turns on a scripted `LanguageModel`, tool calls through the toolset,
 * one generation at a time, "inactive", reply requests, running-call placeholders and failures.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Effect, Exit, Fiber, Layer, Stream } from "effect"
import { AiError, LanguageModel, Tool } from "effect/ai"
import { TestClock, TestConsole } from "effect/testing"
import { AgentEvent, AgentSession, AiAgent, AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { ScriptedModel } from "effect-async-toolset/testing"
import { agentLayer, bookFlight, getWeather, promptLines, transcript } from "../support/agent.ts"

/** The travel toolset, registered with the agent. */
const travel = Effect.gen(function*() {
  const agent = yield* AiAgent.AiAgent
  const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight(), getWeather] })
  yield* agent.addToolset(toolset)
  return toolset
})

/** A service a tool needs. */
class Airline extends Context.Service<Airline, { readonly name: string }>()("test/Airline") {}

const airlineTool = FunctionTool.make("airline", { description: "The airline we book with" }, () =>
  Effect.gen(function*() {
    return (yield* Airline).name
  }))

/** Books when asked, acknowledges the first update, answers anything else plainly. */
const bookingRules = (request: ScriptedModel.Request): ScriptedModel.Reply => {
  const booked = request.resultsSinceUser.find((r) => r.name === "book_flight")
  if (request.lastUserText.includes("Book") && booked === undefined) {
    return { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }] }
  }
  if (booked !== undefined) return "On it: I am looking up flights to Tokyo."
  return "Happy to help."
}

/** Books on every "Book" message (a second booking runs beside the first), answers anything else plainly. */
const twoBookings = (request: ScriptedModel.Request): ScriptedModel.Reply => {
  if (request.lastUserText.includes("Book") && request.resultsSinceUser.length === 0) {
    return { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }] }
  }
  return request.resultsSinceUser.length > 0 ? "On it." : "Soon."
}

/** Books, then answers a weather question with a call whose id is the booking's note id. */
const weatherWithNoteId = (request: ScriptedModel.Request): ScriptedModel.Reply => {
  if (request.lastUserText.includes("Weather") && request.resultsSinceUser.length === 0) {
    return { toolCalls: [{ id: "call_1_1_running", name: "get_weather", params: { city: "Tokyo" } }] }
  }
  return bookingRules(request)
}

describe("AiAgent", () => {
  describe("turns", () => {
    it.effect("a user message starts a turn: tool calls run through the toolset until the model answers in words", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel
        yield* travel

        const turn = yield* agent.send("Book me a flight to Tokyo")

        assert.strictEqual(turn.text, "On it: I am looking up flights to Tokyo.")
        assert.deepStrictEqual(transcript(yield* agent.chat), [
          "user: Book me a flight to Tokyo",
          `call call_1_1 book_flight {"to":"Tokyo"}`,
          "output call_1_1: book_flight (call call_1_1) reports progress: Looking up flights to Tokyo\n" +
          "It is still running in the background. Tell the user only what this says; do not guess the result.",
          "assistant: On it: I am looking up flights to Tokyo."
        ])
        assert.deepStrictEqual(turn.items.map((item) => item._tag), ["FunctionCall", "FunctionCallOutput", "ChatMessage"])
        // the call returned at the first update: the booking goes on in the background
        const output = (yield* agent.chat).items[2]
        assert.isTrue(output?._tag === "FunctionCallOutput" && AsyncToolset.isPending(output))

        const requests = yield* model.requests
        assert.strictEqual(requests.length, 2)
        assert.deepStrictEqual(requests.map((r) => r.toolChoice), ["auto", "auto"])
        assert.deepStrictEqual(requests[1]!.resultsSinceUser.map((r) => r.id), ["call_1_1"])
      }).pipe(Effect.provide(agentLayer(bookingRules))))

    it.effect("the model sees every tool of the toolset, with its description and JSON Schema as is", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel
        const toolset = yield* travel

        yield* agent.send("Hello")

        const [request] = yield* model.requests
        assert.deepStrictEqual(request!.toolNames, toolset.tools.map((tool) => tool.name))
        for (const tool of toolset.tools) {
          const seen = request!.options.tools.find((t) => t.name === tool.name)!
          assert.strictEqual(Tool.getDescription(seen), tool.description)
          assert.deepStrictEqual(Tool.getJsonSchema(seen), tool.jsonSchema)
          assert.strictEqual(Tool.getStrictMode(seen), tool.strict)
        }
      }).pipe(Effect.provide(agentLayer(["Hi!"]))))

    it.effect("the standing instructions lead every prompt and are not stored", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel

        yield* agent.send("Hello")

        const [request] = yield* model.requests
        assert.deepStrictEqual(promptLines(request!.prompt), ["system: You book flights.", "user: Hello"])
        assert.deepStrictEqual(transcript(yield* agent.chat), ["user: Hello", "assistant: Hi!"])
      }).pipe(Effect.provide(agentLayer(["Hi!"], { instructions: "You book flights." }))))

    it.effect("the conversation so far (history) is in the first prompt", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel

        yield* agent.send("And tomorrow?")

        const [request] = yield* model.requests
        assert.deepStrictEqual(promptLines(request!.prompt), [
          "user: Weather in Paris?",
          "assistant: Sunny.",
          "user: And tomorrow?"
        ])
      }).pipe(Effect.provide(agentLayer(["Rain."], {
        history: ChatContext.ChatContext.fromItems([
          new ChatContext.ChatMessage({ id: "m1", role: "user", content: "Weather in Paris?", createdAt: 0 }),
          new ChatContext.ChatMessage({ id: "m2", role: "assistant", content: "Sunny.", createdAt: 0 })
        ])
      }))))

    it.effect("an empty answer stores nothing", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const turn = yield* agent.send("ok")
        assert.strictEqual(turn.text, "")
        assert.deepStrictEqual(turn.items, [])
        assert.deepStrictEqual(transcript(yield* agent.chat), ["user: ok"])
      }).pipe(Effect.provide(agentLayer(["", "  "]))))

    it.effect("the model's arguments reach execute as JSON text; each call is stored with its output as it returns", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* travel

        yield* agent.send("Weather in Paris and Rome?")

        assert.deepStrictEqual(transcript(yield* agent.chat), [
          "user: Weather in Paris and Rome?",
          `call call_1_1 get_weather {"city":"Paris"}`,
          "output call_1_1: Sunny in Paris",
          `call call_1_2 get_weather {"city":"Rome"}`,
          "output call_1_2: Sunny in Rome",
          "assistant: Sunny in both."
        ])
      }).pipe(Effect.provide(agentLayer([
        { toolCalls: [{ name: "get_weather", params: { city: "Paris" } }, { name: "get_weather", params: { city: "Rome" } }] },
        "Sunny in both."
      ]))))

    it.effect("a call of an unknown tool gets an error output naming the tools; the turn goes on", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* travel

        yield* agent.send("Hi")

        const chat = transcript(yield* agent.chat)
        assert.strictEqual(chat[1], "call call_1_1 rent_car {}")
        assert.match(chat[2]!, /^output call_1_1 \(error\): Unknown tool "rent_car"\. The available tools are: book_flight, get_weather, /)
        assert.strictEqual(chat[3], "assistant: Sorry, I cannot rent cars.")
      }).pipe(Effect.provide(agentLayer([{ toolCalls: [{ name: "rent_car" }] }, "Sorry, I cannot rent cars."]))))

    it.effect("bad arguments from the model get the toolset's error output, not a failed turn", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* travel

        const turn = yield* agent.send("Weather?")

        assert.strictEqual(turn.text, "Let me fix that.")
        const chat = transcript(yield* agent.chat)
        assert.match(chat[2]!, /^output call_1_1 \(error\): The call to get_weather did not run/)
      }).pipe(Effect.provide(agentLayer([
        { toolCalls: [{ name: "get_weather", params: { city: 42 } }] },
        "Let me fix that."
      ]))))

    it.effect("the last step of a turn allows no tools, so a turn always ends in words", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel
        yield* travel

        const turn = yield* agent.send("Weather?")

        const requests = yield* model.requests
        assert.deepStrictEqual(requests.map((r) => r.toolChoice), ["auto", "auto", "none"])
        // the calls the model still made on the last step were not run
        assert.deepStrictEqual(
          (yield* agent.chat).items.flatMap((i) => i._tag === "FunctionCall" ? [i.callId] : []),
          ["call_1_1", "call_2_1"]
        )
        assert.strictEqual(turn.text, "")
      }).pipe(Effect.provide(agentLayer(
        () => ({ toolCalls: [{ name: "get_weather", params: { city: "Paris" } }] }),
        { maxSteps: 3 }
      ))))
  })

  describe("one generation at a time", () => {
    it.effect("a second message waits for the first turn, and its model request sees the first answer", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel

        const first = yield* agent.send("one").pipe(Effect.forkChild({ startImmediately: true }))
        yield* Effect.yieldNow // the model is thinking about "one"
        const second = yield* agent.send("two").pipe(Effect.forkChild({ startImmediately: true }))
        yield* Effect.yieldNow
        assert.strictEqual((yield* model.requests).length, 1) // the second waits

        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Fiber.join(first)).text, "answer 1")
        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Fiber.join(second)).text, "answer 2")

        const requests = yield* model.requests
        // "two" was in the chat before answer 1 came, but answer 1 was made without it: it stands before "two"
        assert.deepStrictEqual(transcript(yield* agent.chat), [
          "user: one",
          "assistant: answer 1",
          "user: two",
          "assistant: answer 2"
        ])
        assert.deepStrictEqual(promptLines(requests[1]!.prompt), ["user: one", "assistant: answer 1", "user: two"])
      }).pipe(Effect.provide(agentLayer((r) => ({ text: `answer ${r.index + 1}`, delay: "1 second" })))))

    it.effect("a reply request queues behind a running turn and never overlaps it", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const session = yield* AgentSession.AgentSession
        const model = yield* ScriptedModel.ScriptedModel
        yield* travel

        const turn = yield* agent.send("hello").pipe(Effect.forkChild({ startImmediately: true }))
        const reply = yield* session.generateReply({ instructions: "Say more.", toolChoice: "none" }).pipe(
          Effect.forkChild({ startImmediately: true })
        )
        yield* Effect.yieldNow
        assert.strictEqual((yield* model.requests).length, 1)
        assert.isUndefined(reply.pollUnsafe(), "the request is taken up once the turn before it is over")
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(turn)
        yield* Fiber.join(reply) // taken up: its turn began
        yield* TestClock.adjust("1 second")
        yield* agent.awaitInactive
        assert.deepStrictEqual((yield* model.requests).map((r) => r.toolChoice), ["auto", "none"])
      }).pipe(Effect.provide(agentLayer((r) => ({ text: `answer ${r.index + 1}`, delay: "1 second" })))))
  })

  describe("reply requests (the session port)", () => {
    it.effect("generateReply runs a turn with tool choice none and its instructions last, not stored", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const session = yield* AgentSession.AgentSession
        const model = yield* ScriptedModel.ScriptedModel
        yield* agent.send("hello")

        yield* session.generateReply({ instructions: "Tell the user the weather changed.", toolChoice: "none" })
        yield* agent.awaitInactive // the reply is taken up at once, and made

        const request = (yield* model.requests)[1]!
        assert.strictEqual(request.toolChoice, "none")
        assert.deepStrictEqual(promptLines(request.prompt), [
          "system: Be brief.",
          "user: hello",
          "assistant: answer 1",
          "system: Tell the user the weather changed."
        ])
        assert.deepStrictEqual(transcript(yield* agent.chat), ["user: hello", "assistant: answer 1", "assistant: answer 2"])
      }).pipe(Effect.provide(agentLayer((r) => `answer ${r.index + 1}`, { instructions: "Be brief." }))))

    it.effect("a provider without system messages inside the history gets the instructions in the leading one", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const session = yield* AgentSession.AgentSession
        const model = yield* ScriptedModel.ScriptedModel

        yield* session.generateReply({ instructions: "Say hello.", toolChoice: "none" })
        yield* agent.awaitInactive

        const [request] = yield* model.requests
        assert.deepStrictEqual(promptLines(request!.prompt), ["system: Be brief.\n\nSay hello."])
      }).pipe(Effect.provide(agentLayer(["Hello!"], { instructions: "Be brief.", systemMessagesInHistory: false }))))

    it.effect("the session reads and inserts into the agent's chat", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const session = yield* AgentSession.AgentSession
        const note = yield* ChatContext.message("system", "note")

        yield* session.insert([note])

        assert.deepStrictEqual((yield* session.chatContext).items, [note])
        assert.deepStrictEqual((yield* agent.chat).items, [note])
      }).pipe(Effect.provide(agentLayer([]))))
  })

  describe("inactive", () => {
    it.effect("inactive means no turn queued or running and the user not typing", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        assert.isTrue(yield* agent.isInactive)

        yield* agent.setUserTyping(true)
        assert.isFalse(yield* agent.isInactive)
        const waiting = yield* agent.awaitInactive.pipe(Effect.forkChild({ startImmediately: true }))
        yield* agent.setUserTyping(false)
        yield* Fiber.join(waiting)

        const turn = yield* agent.send("hello").pipe(Effect.forkChild({ startImmediately: true }))
        assert.isFalse(yield* agent.isInactive)
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(turn)
        assert.isTrue(yield* agent.isInactive)
      }).pipe(Effect.provide(agentLayer([{ text: "hi", delay: "1 second" }]))))

    it.effect("awaitInactive completes only while inactive: a waiter woken after another queued a turn waits on", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* agent.setUserTyping(true)
        // the first waiter queues a turn as soon as it wakes (as a toolset's reply fiber does)
        const first = yield* agent.awaitInactive.pipe(
          Effect.andThen(agent.generateReply()),
          Effect.forkChild({ startImmediately: true })
        )
        const second = yield* agent.awaitInactive.pipe(Effect.forkChild({ startImmediately: true }))

        yield* agent.setUserTyping(false)
        yield* Effect.yieldNow
        assert.isFalse(yield* agent.isInactive)
        assert.isUndefined(second.pollUnsafe())

        yield* TestClock.adjust("1 second")
        yield* Fiber.join(first)
        yield* Fiber.join(second)
      }).pipe(Effect.provide(agentLayer([{ text: "hi", delay: "1 second" }]))))

    it.effect("a background result is not replied to while the user types", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel
        yield* travel
        yield* agent.send("Book me a flight to Tokyo")

        yield* agent.setUserTyping(true)
        yield* TestClock.adjust("1 minute")
        assert.strictEqual((yield* model.requests).length, 2) // the result is in, but nobody talks over the user
        assert.include(transcript(yield* agent.chat).at(-1)!, "call_1_1_final")

        yield* agent.setUserTyping(false)
        yield* agent.awaitIdle
        const requests = yield* model.requests
        assert.strictEqual(requests.length, 3)
        assert.strictEqual(requests[2]!.toolChoice, "none")
        assert.include(requests[2]!.systemText, "call_1_1_update_1, call_1_1_final")
      }).pipe(Effect.provide(agentLayer(bookingRules))))
  })

  describe("running-call notes (G1)", () => {
    const firstUpdate = "result call_1_1: book_flight (call call_1_1) reports progress: Looking up flights to Tokyo\n" +
      "It is still running in the background. Tell the user only what this says; do not guess the result."
    const note = "result call_1_1_running: book_flight (call call_1_1) is still running in the background. Its result " +
      "will be added to the conversation when it is ready. Do not call book_flight again for this; if the user asks, " +
      "say it is still in progress."

    it.effect("while a call runs, the request ends with the user's newest message; the note sits right after the call's first update", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel
        yield* travel
        yield* agent.send("Book me a flight to Tokyo")

        yield* agent.send("Is it a long flight?")

        const request = (yield* model.requests)[2]!
        assert.deepStrictEqual(promptLines(request.prompt), [
          "user: Book me a flight to Tokyo",
          "call call_1_1 book_flight",
          firstUpdate,
          "call call_1_1_running book_flight",
          note,
          "assistant: On it: I am looking up flights to Tokyo.",
          "user: Is it a long flight?"
        ])
        const chat = yield* agent.chat
        assert.isFalse(chat.items.some((item) => item._tag !== "ChatMessage" && item.callId.endsWith("_running")))
        // the turn in which the call was made reads its first update, not a note
        assert.isFalse(promptLines((yield* model.requests)[1]!.prompt).some((line) => line.includes("_running")))
      }).pipe(Effect.provide(agentLayer(bookingRules))))

    it.effect("with standing and turn instructions, the turn's instructions come last and the notes stay in their place", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel
        yield* travel
        yield* agent.send("Book me a flight to Tokyo")

        yield* agent.send("Is it a long flight?")
        yield* agent.generateReply({ instructions: "Greet the user." })

        const [userTurn, replyTurn] = (yield* model.requests).slice(2)
        const userLines = promptLines(userTurn!.prompt)
        assert.strictEqual(userLines[0], "system: You book flights.")
        assert.strictEqual(userLines.at(-1), "user: Is it a long flight?")
        const replyLines = promptLines(replyTurn!.prompt)
        assert.deepStrictEqual(replyLines.slice(-3), ["user: Is it a long flight?", "assistant: Happy to help.", "system: Greet the user."])
        assert.strictEqual(replyLines.indexOf("call call_1_1_running book_flight"), replyLines.indexOf(firstUpdate) + 1)
      }).pipe(Effect.provide(agentLayer(bookingRules, { instructions: "You book flights." }))))

    it.effect("two running calls: each note at its own call's place, by creation time", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel
        const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight()], onDuplicateCall: "allow" })
        yield* agent.addToolset(toolset)
        yield* agent.send("Book me a flight to Tokyo")
        yield* TestClock.adjust("1 second")
        yield* agent.send("Book me another one")

        yield* agent.send("How long will it take?")

        const lines = promptLines((yield* model.requests).at(-1)!.prompt)
        assert.strictEqual(lines.at(-1), "user: How long will it take?")
        const notes = lines.flatMap((line, i) => line.startsWith("call ") && line.includes("_running") ? [[i, line]] : [])
        assert.deepStrictEqual(notes.map(([, line]) => line), ["call call_1_1_running book_flight", "call call_3_1_running book_flight"])
        for (const [i, line] of notes) {
          const callId = String(line).split(" ")[1]!.replace(/_running$/, "")
          assert.isTrue(String(lines[Number(i) - 1]).startsWith(`result ${callId}: `), `${line} follows ${callId}'s first update`)
        }
      }).pipe(Effect.provide(agentLayer(twoBookings))))

    it.effect("no note for a call whose note id the chat already holds: call ids stay unique in the prompt", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel
        yield* travel
        yield* agent.send("Book me a flight to Tokyo")
        yield* agent.send("Weather there?") // the model calls get_weather with the id call_1_1_running

        yield* agent.send("Thanks")

        const lines = promptLines((yield* model.requests).at(-1)!.prompt)
        assert.strictEqual(lines.filter((line) => line.startsWith("call call_1_1_running")).length, 1)
        assert.strictEqual(lines.filter((line) => line.includes("is still running in the background. Its result")).length, 0)
        assert.strictEqual(lines.at(-1), "user: Thanks")
      }).pipe(Effect.provide(agentLayer(weatherWithNoteId))))

    it.effect("no note once the call has ended, and the note is an option", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel
        const toolset = yield* travel
        yield* agent.send("Book me a flight to Tokyo")

        yield* agent.send("Still there?")
        const during = promptLines((yield* model.requests)[2]!.prompt)
        assert.include(during, "result call_1_1_running: busy: book_flight call_1_1")
        assert.strictEqual(during.at(-1), "user: Still there?")

        yield* TestClock.adjust("1 minute")
        yield* toolset.awaitIdle
        yield* agent.send("Thanks")
        const last = (yield* model.requests).at(-1)!
        assert.isFalse(promptLines(last.prompt).some((line) => line.includes("_running")))
      }).pipe(Effect.provide(agentLayer(bookingRules, { runningCall: "busy: {functionName} {callId}" }))))
  })

  describe("streaming", () => {
    /** Records every event of the agent from now on. */
    const recordEvents = Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      const events: Array<AgentEvent.AgentEvent> = []
      yield* agent.events.pipe(
        Stream.runForEach((event) => Effect.sync(() => events.push(event))),
        Effect.forkChild({ startImmediately: true })
      )
      yield* Effect.yieldNow
      return events
    })
    const deltas = (events: ReadonlyArray<AgentEvent.AgentEvent>) => events.filter(AgentEvent.AgentEvent.guards.TextDelta)

    it.effect("the agent's words arrive as deltas, one event per delta, in order; the stored message is their concatenation", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const events = yield* recordEvents

        const turn = yield* agent.send("Weather in Paris?")

        const streamed = deltas(events)
        assert.deepStrictEqual(streamed.map((e) => e.delta), ["Sun", "ny in ", "Paris", "."])
        assert.deepStrictEqual(streamed.map((e) => e.turn), [1, 1, 1, 1])
        const stored = (yield* agent.chat).items.at(-1)!
        assert.isTrue(stored._tag === "ChatMessage" && stored.role === "assistant")
        assert.strictEqual(stored._tag === "ChatMessage" ? stored.content : "", streamed.map((e) => e.delta).join(""))
        assert.strictEqual(turn.text, "Sunny in Paris.")
        // every delta names the message it builds; that message is added once, after the last delta
        assert.isTrue(streamed.every((e) => e.itemId === stored.id))
        const added = events.findIndex((e) => e._tag === "ItemAdded" && e.item.id === stored.id)
        assert.isTrue(added > events.indexOf(streamed.at(-1)!))
        assert.strictEqual(events.filter((e) => e._tag === "ItemAdded" && e.item.id === stored.id).length, 1)
      }).pipe(Effect.provide(agentLayer([{ text: ["Sun", "ny in ", "Paris", "."] }]))))

    it.effect("the deltas reach the events while the model is still writing, before anything is stored", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const events = yield* recordEvents

        const turn = yield* agent.send("Hi").pipe(Effect.forkChild({ startImmediately: true }))
        yield* TestClock.adjust("100 millis")
        assert.deepStrictEqual(deltas(events).map((e) => e.delta), ["Hello "])
        assert.deepStrictEqual(transcript(yield* agent.chat), ["user: Hi"])

        yield* TestClock.adjust("200 millis")
        yield* Fiber.join(turn)
        assert.deepStrictEqual(deltas(events).map((e) => e.delta), ["Hello ", "there, ", "traveller."])
        assert.deepStrictEqual(transcript(yield* agent.chat), ["user: Hi", "assistant: Hello there, traveller."])
      }).pipe(Effect.provide(agentLayer(["Hello there, traveller."], { textDeltas: "words", deltaDelay: "100 millis" }))))

    it.effect("tool calls in a streamed answer still run; each message of the turn streams under its own id", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* travel
        const events = yield* recordEvents

        const turn = yield* agent.send("Weather in Paris?")

        assert.deepStrictEqual(transcript(yield* agent.chat), [
          "user: Weather in Paris?",
          "assistant: Let me check.",
          `call call_1_1 get_weather {"city":"Paris"}`,
          "output call_1_1: Sunny in Paris",
          "assistant: It is sunny."
        ])
        assert.strictEqual(turn.text, "Let me check.\nIt is sunny.")
        const streamed = deltas(events)
        assert.deepStrictEqual(streamed.map((e) => e.delta), ["Let me ", "check.", "It is ", "sunny."])
        const messages = (yield* agent.chat).items.filter((item) => item._tag === "ChatMessage" && item.role === "assistant")
        assert.deepStrictEqual(streamed.map((e) => e.itemId), [messages[0]!.id, messages[0]!.id, messages[1]!.id, messages[1]!.id])
      }).pipe(Effect.provide(agentLayer([
        { text: ["Let me ", "check."], toolCalls: [{ name: "get_weather", params: { city: "Paris" } }] },
        { text: ["It is ", "sunny."] }
      ]))))

    it.effect("a failure mid-stream fails the turn with the model's error: its words are not stored, its calls do not run, the agent goes on", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const toolset = yield* travel
        const events = yield* recordEvents

        const error = yield* Effect.flip(agent.send("Book me a flight to Tokyo"))

        assert.isTrue(AiError.isAiError(error))
        assert.include(error.message, "connection reset")
        assert.deepStrictEqual(deltas(events).map((e) => e.delta), ["Booking ", "your fl"])
        assert.deepStrictEqual(transcript(yield* agent.chat), ["user: Book me a flight to Tokyo"])
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        const ended = events.find(AgentEvent.AgentEvent.guards.TurnEnded)
        assert.deepStrictEqual([ended?.outcome, ended?.text], ["failed", ""])
        assert.include(yield* TestConsole.logLines, "the turn failed; the conversation goes on")

        const next = yield* agent.send("Are you there?")
        assert.strictEqual(next.text, "Yes, sorry about that.")
        assert.isTrue(yield* agent.isInactive)
      }).pipe(Effect.provide(agentLayer([
        {
          text: ["Booking ", "your fl"],
          toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }],
          fail: ScriptedModel.error("connection reset")
        },
        "Yes, sorry about that."
      ]))))

    it.effect("an error part in the stream fails the turn like a failed stream", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const error = yield* Effect.flip(agent.send("Hi"))
        assert.include(error.message, "overloaded")
        assert.deepStrictEqual(transcript(yield* agent.chat), ["user: Hi"])
      }).pipe(Effect.provide(AiAgent.layer().pipe(Layer.provide(Layer.effect(
        LanguageModel.LanguageModel,
        LanguageModel.make({
          generateText: () => Effect.die("not used"),
          streamText: () =>
            Stream.make(
              { type: "text-delta", id: "t", delta: "Hel" },
              { type: "error", error: new Error("overloaded") }
            )
        })
      ))))))

    it.effect("with stream: false the model is asked with generateText: no deltas, the same chat", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const events = yield* recordEvents
        yield* agent.send("Hi")
        assert.deepStrictEqual(deltas(events), [])
        assert.deepStrictEqual(transcript(yield* agent.chat), ["user: Hi", "assistant: Hello there."])
      }).pipe(Effect.provide(AiAgent.layer({ stream: false }).pipe(Layer.provide(Layer.effect(
        LanguageModel.LanguageModel,
        LanguageModel.make({
          generateText: () => Effect.succeed([{ type: "text", text: "Hello there." }]),
          streamText: () => Stream.die("streamText was called")
        })
      ))))))
  })

  describe("failures", () => {
    it.effect("a model failure fails the turn with the model's error, is logged, and the agent goes on", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent

        const failed = yield* Effect.exit(agent.send("hello"))
        assert.isTrue(Exit.isFailure(failed))
        const error = Exit.isFailure(failed) ? Cause.findErrorOption(failed.cause) : undefined
        assert.isTrue(error !== undefined && error._tag === "Some" && AiError.isAiError(error.value))

        assert.include(yield* TestConsole.logLines, "the turn failed; the conversation goes on")

        const turn = yield* agent.send("hello again")
        assert.strictEqual(turn.text, "I am back.")
        assert.isTrue(yield* agent.isInactive)
      }).pipe(Effect.provide(agentLayer((r) =>
        r.index === 0 ? Effect.fail(ScriptedModel.error("rate limited")) : "I am back."
      )))
    )

    it.effect("C4e a reply request is taken up when its turn begins; a model failure in that turn is the turn's (logged), not the request's", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const session = yield* AgentSession.AgentSession
        const events = yield* agent.events.pipe(Stream.take(2), Stream.runCollect, Effect.forkChild({ startImmediately: true }))
        yield* session.generateReply({ instructions: "x", toolChoice: "none" })
        yield* agent.awaitInactive
        const [started, ended] = yield* Fiber.join(events)
        assert.strictEqual(started?._tag, "TurnStarted")
        assert.isTrue(ended?._tag === "TurnEnded" && ended.outcome === "failed")
      }).pipe(Effect.provide(agentLayer(() => Effect.fail(ScriptedModel.error("down"))))))

    it.effect("C4e a reply that takes minutes to make is taken up at once: generateReply does not wait for it", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const session = yield* AgentSession.AgentSession
        yield* session.generateReply({ instructions: "Tell it all.", toolChoice: "none" })
        assert.isFalse(yield* agent.isInactive, "the agent is speaking")
        yield* TestClock.adjust("5 minutes")
        yield* agent.awaitInactive
        assert.deepStrictEqual(transcript(yield* agent.chat), ["assistant: a long story"])
      }).pipe(Effect.provide(agentLayer(() => ({ text: "a long story", delay: "5 minutes" })))))
  })

  describe("toolsets as layers", () => {
    /** Books when asked; tells the booking's result when a reply is requested. */
    const travelRules = (request: ScriptedModel.Request): ScriptedModel.Reply => {
      if (request.toolChoice === "none") {
        const final = request.resultsSinceUser.find((r) => r.id.endsWith("_final"))
        return final === undefined ? "" : `Booked: ${String(final.result)}`
      }
      if (request.resultsSinceUser.length > 0) return "On it."
      return { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }] }
    }

    it.effect("toolsets declared as layers are built on the agent's session and added to it; the app is its layers composed once", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel

        assert.deepStrictEqual((yield* agent.toolsets).map((t) => t.id), ["travel", "weather"])
        yield* agent.send("Book me a flight to Tokyo")
        assert.deepStrictEqual((yield* model.requests)[0]!.toolNames, [
          "book_flight",
          "get_running_tasks_travel",
          "cancel_task_travel",
          "get_weather",
          "get_running_tasks_weather",
          "cancel_task_weather"
        ])

        // the booking goes on in the background; its result reaches the chat and is told
        yield* TestClock.adjust("4 seconds")
        yield* agent.awaitIdle
        assert.deepStrictEqual(transcript(yield* agent.chat).at(-1), `assistant: Booked: {"confirmation":"FL-847293"}`)
      }).pipe(Effect.provide(
        Layer.mergeAll(
          AiAgent.toolset({ id: "travel", tools: [bookFlight()] }),
          AiAgent.toolset({ id: "weather", tools: [getWeather] })
        ).pipe(Layer.provideMerge(agentLayer(travelRules)))
      )))

    it.effect("a toolset layer's tools get the services the layer is given", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* agent.send("Which airline?")
        assert.deepStrictEqual(transcript(yield* agent.chat).slice(1, 3), [
          "call call_1_1 airline {}",
          "output call_1_1: Effect Air"
        ])
      }).pipe(Effect.provide(
        AiAgent.toolset({ id: "airline", tools: [airlineTool] }).pipe(
          Layer.provide(Layer.succeed(Airline, { name: "Effect Air" })),
          Layer.provideMerge(agentLayer([{ toolCalls: [{ name: "airline" }] }, "Effect Air it is."]))
        )
      )))

    it.effect("releasing the layers closes the toolsets: a call still running is interrupted", () =>
      Effect.gen(function*() {
        const interrupted: Array<string> = []
        const slow = FunctionTool.make("slow", { description: "Works for an hour" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("started")
            yield* Effect.sleep("1 hour")
          }).pipe(Effect.onInterrupt(() => Effect.sync(() => interrupted.push("slow")))))

        yield* Effect.gen(function*() {
          const agent = yield* AiAgent.AiAgent
          yield* agent.send("Start")
          const [toolset] = yield* agent.toolsets
          assert.deepStrictEqual((yield* toolset!.runningTasks).map((t) => t.name), ["slow"])
        }).pipe(Effect.provide(
          AiAgent.toolset({ id: "work", tools: [slow] }).pipe(
            Layer.provideMerge(agentLayer([{ toolCalls: [{ name: "slow" }] }, "Started."]))
          )
        ))

        assert.deepStrictEqual(interrupted, ["slow"])
      }))

    it.effect("awaitIdle waits until no call runs and every result is told", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* agent.send("Book me a flight to Tokyo")
        const idle = yield* agent.awaitIdle.pipe(Effect.forkChild({ startImmediately: true }))

        yield* TestClock.adjust("2 seconds") // "found 3 flights": in the chat, nothing to say yet
        assert.isUndefined(idle.pollUnsafe())
        yield* TestClock.adjust("2 seconds") // booked, and told
        yield* Fiber.join(idle)
        assert.deepStrictEqual(transcript(yield* agent.chat).at(-1), `assistant: Booked: {"confirmation":"FL-847293"}`)
        assert.deepStrictEqual(yield* (yield* agent.toolsets)[0]!.runningTasks, [])
      }).pipe(Effect.provide(
        AiAgent.toolset({ id: "travel", tools: [bookFlight()] }).pipe(Layer.provideMerge(agentLayer(travelRules)))
      )))
  })

  describe("toolsets and events", () => {
    it.effect("a toolset's tools leave the model's list when its scope closes", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const model = yield* ScriptedModel.ScriptedModel
        yield* travel.pipe(Effect.scoped)

        yield* agent.send("hello")

        assert.deepStrictEqual((yield* model.requests)[0]!.toolNames, [])
      }).pipe(Effect.provide(agentLayer(["hi"]))))

    it.effect("two toolsets with a tool of the same name are a defect", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* travel
        const other = yield* AsyncToolset.make({ id: "weather", tools: [getWeather] })
        const exit = yield* Effect.exit(agent.addToolset(other))
        assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause))
      }).pipe(Effect.provide(agentLayer([]))))

    it.effect("events report turns and chat items as they happen", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* travel
        const events = yield* agent.events.pipe(
          Stream.take(7),
          Stream.runCollect,
          Effect.forkChild({ startImmediately: true })
        )
        yield* Effect.yieldNow

        yield* agent.send("Weather in Paris?")

        const seen = (yield* Fiber.join(events)).map(AgentEvent.AgentEvent.match({
          TurnStarted: (e) => `started ${e.cause}`,
          TextDelta: (e) => `delta ${e.delta}`,
          ItemAdded: (e) => `item ${e.item._tag}`,
          TurnEnded: (e) => `ended ${e.outcome}`
        }))
        assert.deepStrictEqual(seen, [
          "item ChatMessage",
          "started user",
          "item FunctionCall",
          "item FunctionCallOutput",
          "delta Sunny.",
          "item ChatMessage",
          "ended answered"
        ])
      }).pipe(Effect.provide(agentLayer([{ toolCalls: [{ name: "get_weather", params: { city: "Paris" } }] }, "Sunny."]))))
  })

  it.effect("closing the agent's scope interrupts the turns still queued", () =>
    Effect.gen(function*() {
      const turns = yield* Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const first = yield* agent.send("one").pipe(Effect.forkDetach({ startImmediately: true }))
        const second = yield* agent.send("two").pipe(Effect.forkDetach({ startImmediately: true }))
        return [first, second] as const
      }).pipe(Effect.provide(agentLayer([{ text: "slow", delay: "1 hour" }])))
      for (const turn of turns) {
        const exit = yield* Fiber.await(turn)
        assert.isTrue(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause))
      }
    }))
})

describe("AiAgent store", () => {
  it.effect("with a store, every item the agent adds is saved once it is in the chat, and history is where it starts", () =>
    Effect.gen(function*() {
      const saved: Array<ReadonlyArray<string>> = []
      const store: AiAgent.ChatStore = {
        save: (items) => Effect.sync(() => void saved.push(items.map((item) => item._tag === "ChatMessage" ? `${item.role}: ${item.content}` : `${item._tag} ${item.callId}`)))
      }
      const earlier = yield* ChatContext.message("user", "Earlier question")
      const history = ChatContext.ChatContext.fromItems([earlier])
      yield* Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const session = yield* AgentSession.AgentSession
        yield* travel
        const turnFiber = yield* Effect.forkChild(agent.send("Book me a flight"))
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(turnFiber)
        const extra = yield* ChatContext.message("assistant", "inserted by a toolset")
        yield* session.insert([extra])
        assert.deepStrictEqual(transcript(yield* agent.chat)[0], "user: Earlier question")
      }).pipe(Effect.scoped, Effect.provide(agentLayer(bookingRules, { history, store })))
      assert.deepStrictEqual(saved.slice(0, 3), [
        ["user: Book me a flight"],
        ["FunctionCall call_1_1", "FunctionCallOutput call_1_1"],
        ["assistant: On it: I am looking up flights to Tokyo."]
      ])
      assert.deepStrictEqual(saved.at(-1), ["assistant: inserted by a toolset"])
      assert.isFalse(saved.flat().includes("user: Earlier question"))
    }))
})
