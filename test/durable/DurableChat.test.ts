/**
 * The durable chat: an agent's conversation kept in the store, each item once, back whole when the
 * process starts again; and `AiAgent` on it with a durable toolset, across a restart of the process
 * (here, in-process: the whole runtime is closed and built again on the same data folder).
 */
import { assert, describe, it, layer } from "@effect/vitest"
import { Context, Deferred, Effect, Layer, Schema } from "effect"
import { SqlClient } from "effect/sql"
import { dirname } from "node:path"
import { AiAgent, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset } from "effect-async-toolset/durable"
import { ScriptedModel } from "effect-async-toolset/testing"
import { transcript } from "../support/agent.ts"
import { newSessionId, storeLayer } from "../support/durable.ts"
import { freshDataDir } from "../support/pglite.ts"

/** Answers a user at once; words only. */
const chatty = ScriptedModel.layer(({ lastUserText }) => `You said: ${lastUserText}`)

const agentOn = (sessionId: string) =>
  DurableChat.agentLayer({ instructions: "Be brief." }).pipe(
    Layer.provideMerge(DurableChat.layer({ sessionId })),
    Layer.provide(chatty)
  )

const rowsOf = (sessionId: string) =>
  SqlClient.SqlClient.use((sql) => sql<{ item_id: string }>`SELECT item_id FROM async_toolset_item WHERE session_id = ${sessionId}`)

layer(storeLayer, { timeout: "120 seconds", excludeTestServices: true })("DurableChat", (it) => {
  it.effect("an agent's items are stored once each, and an agent opened on the session again starts with them", () =>
    Effect.gen(function*() {
      const sessionId = newSessionId()
      const before = yield* Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* agent.send("Hello")
        yield* agent.send("Book me a flight")
        return transcript(yield* agent.chat)
      }).pipe(Effect.provide(agentOn(sessionId)))
      assert.deepStrictEqual(before, ["user: Hello", "assistant: You said: Hello", "user: Book me a flight", "assistant: You said: Book me a flight"])
      const rows = yield* rowsOf(sessionId)
      assert.strictEqual(rows.length, 4)

      const after = yield* Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const resumed = transcript(yield* agent.chat)
        yield* agent.send("Thanks")
        return { resumed, now: transcript(yield* agent.chat) }
      }).pipe(Effect.provide(agentOn(sessionId)))
      assert.deepStrictEqual(after.resumed, before)
      assert.deepStrictEqual(after.now.slice(4), ["user: Thanks", "assistant: You said: Thanks"])
      assert.strictEqual((yield* rowsOf(sessionId)).length, 6)
    }))

  it.effect("saving an item again stores nothing new", () =>
    Effect.gen(function*() {
      const sessionId = newSessionId()
      yield* Effect.gen(function*() {
        const chat = yield* DurableChat.DurableChat
        const agent = yield* AiAgent.AiAgent
        yield* agent.send("Hello")
        const items = (yield* agent.chat).items
        yield* chat.save(items)
        yield* chat.save(items)
      }).pipe(Effect.provide(agentOn(sessionId)))
      assert.strictEqual((yield* rowsOf(sessionId)).length, 2)
      // a second session object on the same id sees them as stored too
      yield* Effect.gen(function*() {
        const chat = yield* DurableChat.DurableChat
        yield* chat.save(chat.history.items)
      }).pipe(Effect.provide(DurableChat.layer({ sessionId })))
      assert.strictEqual((yield* rowsOf(sessionId)).length, 2)
    }))

  it.effect("a session id must be plain", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(Effect.provide(Effect.void, DurableChat.layer({ sessionId: "a/b" })))
      assert.strictEqual(exit._tag, "Failure")
    }))
})

// --- AiAgent with a durable toolset, across a restart ----------------------------------------------

/** When the booking may go on past its first update (a service, so each "process" has its own). */
class Gate extends Context.Service<Gate, Deferred.Deferred<void>>()("test/Gate") {}

const charges: Array<string> = []

const bookFlight = FunctionTool.make("book_flight", {
  description: "Book a flight",
  parameters: Schema.Struct({ to: Schema.String }),
  success: Schema.Struct({ confirmation: Schema.String })
}, ({ to }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Looking up flights to ${to}`)
    yield* Deferred.await(yield* Gate)
    yield* AsyncRunContext.update(`Found 3 flights to ${to}`)
    const confirmation = yield* DurableToolset.activity("charge_card", ({ idempotencyKey }) =>
      Effect.sync(() => {
        charges.push(idempotencyKey)
        return "FL-847293"
      }), { success: Schema.String })
    return { confirmation }
  }))

const travel = DurableToolset.define({ id: "travel", tools: [bookFlight] })

/** Books on a user's request; answers a toolset's reply request with the results it names. */
const travelModel = ScriptedModel.layer(({ lastUserText, resultsSinceUser, systemText, toolChoice }) => {
  if (toolChoice === "none") return `Update (${/results: ([^.]+)\./.exec(systemText)?.[1] ?? "?"})`
  if (resultsSinceUser.length === 0 && lastUserText.includes("Book")) {
    return { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }] }
  }
  return "On it: looking up flights to Tokyo."
})

/** One "process": the embedded store on `dataDir`, the toolset registered, an agent on the session. */
const processLayer = (dataDir: string, gate: Deferred.Deferred<void>) =>
  DurableChat.agentLayer({ instructions: "You book flights." }).pipe(
    Layer.provideMerge(DurableChat.layer({ sessionId: "alice" })),
    Layer.provideMerge(DurableToolset.layer(travel)),
    Layer.provide([travelModel, Layer.succeed(Gate, gate)]),
    Layer.provideMerge(DurableStore.layerEmbedded({ dataDir }))
  )

describe("AiAgent on a durable chat, across a restart", () => {
  it.live("the booking goes on in the next process, its results are in the chat once each, and the agent tells them", () =>
    Effect.gen(function*() {
      const dataDir = dirname(yield* Effect.promise(() => freshDataDir()))
      const closed = yield* Deferred.make<void>()
      const first = yield* Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        yield* agent.addToolset(yield* DurableToolset.make(travel))
        const turn = yield* agent.send("Book me a flight to Tokyo")
        assert.strictEqual(turn.text, "On it: looking up flights to Tokyo.")
        return transcript(yield* agent.chat)
      }).pipe(Effect.scoped, Effect.provide(processLayer(dataDir, closed)))

      const open = yield* Deferred.make<void>()
      yield* Deferred.succeed(open, undefined)
      const second = yield* Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const resumed = transcript(yield* agent.chat)
        const toolset = yield* DurableToolset.make(travel)
        yield* agent.addToolset(toolset)
        yield* toolset.awaitIdle
        yield* agent.awaitInactive
        return { resumed, chat: transcript(yield* agent.chat), running: yield* toolset.runningTasks }
      }).pipe(Effect.scoped, Effect.provide(processLayer(dataDir, open)))

      assert.deepStrictEqual(second.resumed, first)
      assert.deepStrictEqual(second.chat.slice(0, first.length), first)
      const callId = /^call (\S+) book_flight/.exec(first[1]!)![1]!
      const later = second.chat.slice(first.length)
      // each result is in the chat once
      const once = (line: string) => assert.strictEqual(later.filter((l) => l === line).length, 1, line)
      once(`call ${callId}_update_1 book_flight {"to":"Tokyo"}`)
      once(`output ${callId}_update_1: book_flight (call ${callId}) reports progress: Found 3 flights to Tokyo\nIt is still running in the background. Tell the user only what this says; do not guess the result.`)
      once(`call ${callId}_final book_flight {"to":"Tokyo"}`)
      once(`output ${callId}_final: {"confirmation":"FL-847293"}`)
      // and the agent was asked to tell each once
      const told = later.filter((line) => line.startsWith("assistant: Update")).flatMap((line) => /\((.*)\)/.exec(line)![1]!.split(", "))
      assert.deepStrictEqual(told.sort(), [`${callId}_final`, `${callId}_update_1`])
      assert.strictEqual(later.length, 4 + later.filter((line) => line.startsWith("assistant: Update")).length)
      assert.deepStrictEqual(second.running, [])
      assert.strictEqual(charges.length, 1)
    }), { timeout: 120_000 })
})
