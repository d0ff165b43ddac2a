/**
 * Durable calls across a restart (a new session layer on the same store).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Schedule } from "effect"
import * as WorkflowEngine from "effect/workflow/WorkflowEngine"
import { AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { eventually, newSessionId, sessionLayer, storeLayer } from "../support/durable.ts"
import { captureLogs, chatProblems, namedCallIds } from "../support/reliability.ts"
import { call } from "../support/replies.ts"

const slowStart = FunctionTool.make("slow_start", { description: "Says something after a while" }, () =>
  Effect.gen(function*() {
    yield* Effect.sleep("300 millis")
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("300 millis")
    return "done"
  }))

const def = DurableToolset.define({ id: "restart", tools: [slowStart] })

describe("DurableToolset across a restart", () => {
  it.live("B9: a call withdrawn because its caller was interrupted stays withdrawn after a restart (nothing of it in the chat, no reply)", () =>
    Effect.gen(function*() {
      const sessionId = newSessionId()
      // process 1: the caller gives up before the first update; the call is withdrawn
      yield* Effect.gen(function*() {
        const chat = yield* DurableChat.DurableChat
        const session = yield* TestSession.TestSession
        const toolset = yield* DurableToolset.make(def)
        const user = yield* ChatContext.message("user", "start it")
        yield* session.insert([user])
        yield* chat.save([user])
        const c = yield* call("w1", "slow_start")
        const fiber = yield* Effect.forkChild(toolset.execute(c), { startImmediately: true })
        yield* Effect.sleep("100 millis")
        yield* Fiber.interrupt(fiber)
        yield* toolset.awaitIdle
        assert.deepStrictEqual((yield* session.chat).items.filter((i) => i._tag !== "ChatMessage"), [], "nothing of w1 in the chat")
      }).pipe(Effect.scoped, Effect.provide(sessionLayer(def, { sessionId })))
      // process 2, same conversation
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* DurableToolset.make(def)
        yield* Effect.sleep("1 second")
        yield* toolset.awaitIdle
        const chat = yield* session.chat
        const ids = chat.items.flatMap((i) => "callId" in i ? [i.callId] : [])
        assert.deepStrictEqual(ids, [], `withdrawn call put back into the chat: ${JSON.stringify(chat.items.map((i) => i._tag === "FunctionCallOutput" ? i.output : i._tag))}`)
        assert.deepStrictEqual((yield* session.replies).map((r) => r.instructions), [])
        assert.deepStrictEqual(chatProblems(chat), [])
      }).pipe(Effect.scoped, Effect.provide(sessionLayer(def, { sessionId })))
    }).pipe(Effect.provide(storeLayer)), { timeout: 60_000 })
})

// --- a call recorded by a process that died before its first output ---------------------------------

import { DurableStore } from "effect-async-toolset/durable"
import { AgentSession } from "effect-async-toolset"
import { Context } from "effect"
import { claimCall } from "../../src/durable/internal/calls.ts"

const blocking = FunctionTool.make("blocking", { description: "Answers after a while, without updates" }, () =>
  Effect.as(Effect.sleep("200 millis"), "the answer"))
const def2 = DurableToolset.define({ id: "restart2", tools: [blocking] })

/** The test session, but every insertion never returns. */
const hangingInserts = Layer.effectContext(Effect.map(TestSession.make({}), ({ controls, session }) =>
  Context.make(AgentSession.AgentSession, AgentSession.AgentSession.of({ ...session, insert: () => Effect.never }))
    .pipe(Context.add(TestSession.TestSession, controls))))

describe("DurableToolset across a restart: the session port", () => {
 for (const hang of [false, true]) {
  it.live(`(insert hangs: ${hang}) E6/Session port: a call recorded before a crash (no first output), resumed by a toolset whose session's insert hangs: closing the toolset returns`, () =>
    Effect.gen(function*() {
      const sessionId = newSessionId()
      const store = yield* DurableStore.DurableStore
      const fc = yield* call("h1", "blocking")
      // what a process that died right after recording the call left
      yield* claimCall(store.sql, {
        sessionId, base: "h1", toolsetId: "restart2", call: fc, dupKey: "blocking", cancellable: true, status: "running",
        after: [], timeoutMs: undefined, deadline: undefined, startedAt: Date.now()
      } as never).pipe(Effect.orDie)
      const phase = { made: false, slept: false }
      const fiber = yield* Effect.gen(function*() {
        yield* DurableToolset.make(def2)
        phase.made = true
        yield* Effect.sleep("1500 millis") // the call ends; its answer is put back into the chat (the insertion hangs)
        phase.slept = true
      }).pipe(
        Effect.scoped,
        Effect.provide(Layer.mergeAll(DurableToolset.layer(def2), DurableChat.layer({ sessionId }), hang ? hangingInserts : TestSession.layer).pipe(
          Layer.provideMerge(WorkflowEngine.layerMemory)
        )),
        Effect.forkDetach
      )
      const closed = yield* Effect.timeoutOption(Fiber.await(fiber), "10 seconds")
      assert.isTrue(phase.made && phase.slept, JSON.stringify(phase))
      assert.isTrue(closed._tag === "Some", "the toolset's scope never closed (a hanging insertion holds the call's fiber uninterruptibly)")
    }).pipe(Effect.provide(storeLayer), Effect.provide(captureLogs().layer)), { timeout: 60_000 }) // what it logs (the call not delivered) is captured, not printed
 }
})

// --- B7 across a restart: the model's call ids before it still count -----------------------------

const reporting = FunctionTool.make("reporting", { description: "Reports, reports again, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("600 millis")
    yield* AsyncRunContext.update("half way")
    yield* Effect.sleep("300 millis")
    return "done"
  }))
const instant = FunctionTool.make("instant", { description: "Answers at once" }, () => Effect.succeed("ok"))
const def3 = DurableToolset.define({ id: "restart3", tools: [reporting, instant] })

describe("DurableToolset across a restart: call ids", () => {
  it.live("B7: a model call id equal to a running call's future _update_1 and _final, made before a restart, is not written again after it", () =>
    Effect.gen(function*() {
      const sessionId = newSessionId()
      // process 1: x runs; the model then uses x's future synthetic ids for calls of its own (the agent
      // loop puts each call and its output into the chat, and stores them); the process stops.
      yield* Effect.gen(function*() {
        const chat = yield* DurableChat.DurableChat
        const session = yield* TestSession.TestSession
        const toolset = yield* DurableToolset.make(def3)
        for (const [id, name] of [["x", "reporting"], ["x_update_1", "instant"], ["x_final", "instant"]] as const) {
          const c = yield* call(id, name)
          const out = yield* toolset.execute(c)
          yield* session.insert([c, out])
          yield* chat.save([c, out])
        }
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
      }).pipe(Effect.scoped, Effect.provide(sessionLayer(def3, { sessionId })))
      // process 2: the agent's chat is the stored conversation; x goes on and says the rest
      yield* Effect.gen(function*() {
        const chat = yield* DurableChat.DurableChat
        const session = yield* TestSession.TestSession
        yield* session.insert(chat.history.items)
        const toolset = yield* DurableToolset.make(def3)
        yield* Effect.sleep("1500 millis")
        yield* toolset.awaitIdle
        const after = yield* session.chat
        const ids = after.items.flatMap((i) => i._tag === "FunctionCall" ? [i.callId] : [])
        assert.deepStrictEqual(chatProblems(after), [], ids.join(" "))
        assert.strictEqual(ids.length, 5, ids.join(" "))
      }).pipe(Effect.scoped, Effect.provide(sessionLayer(def3, { sessionId })))
    }).pipe(Effect.provide(storeLayer)), { timeout: 60_000 })
})

describe("DurableToolset across a restart: call ids of pairs renamed before it", () => {
  it.live("B7: a later pair put into the chat under another call id (the model had taken its own) is stored under that id: the conversation after a restart has no two items with one call id", () =>
    Effect.gen(function*() {
      const sessionId = newSessionId()
      // process 1: the model uses x's future _update_1 for a call of its own; x's next update reaches
      // the chat as x_update_1_2; the process stops while x still runs
      yield* Effect.gen(function*() {
        const chat = yield* DurableChat.DurableChat
        const session = yield* TestSession.TestSession
        const toolset = yield* DurableToolset.make(def3)
        for (const [id, name] of [["x", "reporting"], ["x_update_1", "instant"]] as const) {
          const c = yield* call(id, name)
          const out = yield* toolset.execute(c)
          yield* session.insert([c, out])
          yield* chat.save([c, out])
        }
        yield* eventually(
          Effect.map(session.chat, (chat) => chat.items.some((i) => "callId" in i && i.callId === "x_update_1_2")),
          "x's second update in the chat under x_update_1_2"
        )
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
      }).pipe(Effect.scoped, Effect.provide(sessionLayer(def3, { sessionId })))
      // process 2: the stored conversation is what the agent's chat is made from
      yield* Effect.gen(function*() {
        const chat = yield* DurableChat.DurableChat
        const session = yield* TestSession.TestSession
        assert.deepStrictEqual(chatProblems(chat.history), [], "the stored conversation")
        yield* session.insert(chat.history.items)
        const toolset = yield* DurableToolset.make(def3)
        yield* eventually(
          Effect.map(session.chat, (chat) => chat.items.some((i) => "callId" in i && i.callId === "x_final")),
          "x's result in the chat"
        )
        yield* toolset.awaitIdle
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
      }).pipe(Effect.scoped, Effect.provide(sessionLayer(def3, { sessionId })))
    }).pipe(Effect.provide(storeLayer)), { timeout: 60_000 })
})

// --- a result owed from before a restart, whose insertion into the agent's chat fails at first ---

const quickReport = FunctionTool.make("quick_report", { description: "Says it started, then ends" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("200 millis")
    return "report ready"
  }))
// (process 1 gives up on the insertion at once)
const def4 = DurableToolset.define({ id: "restart4", tools: [quickReport], sessionRetry: Schedule.recurs(0) })

const refused = (what: string) => new AgentSession.SessionError({ operation: "insert", message: `insert refused (${what})` })
const isFinalOfX = (items: ReadonlyArray<ChatContext.ChatItem>) => items.some((i) => "callId" in i && i.callId === "x_final")

describe("DurableToolset across a restart: putting owed results into the chat", () => {
  for (const fault of ["fails", "throws"] as const) {
    it.live(`C4b/E9: a result owed from before a restart whose insertion ${fault} at first reaches the chat, and the reply asked for it names it once it is there`, () =>
      Effect.gen(function*() {
        const sessionId = newSessionId()
        // process 1: x says it started; its result never gets into the agent's chat (its insertion fails)
        yield* Effect.gen(function*() {
          const chat = yield* DurableChat.DurableChat
          const session = yield* TestSession.TestSession
          const toolset = yield* DurableToolset.make(def4)
          const c = yield* call("x", "quick_report")
          const out = yield* toolset.execute(c)
          yield* session.insert([c, out])
          yield* chat.save([c, out])
          yield* Effect.sleep("1 second")
          yield* toolset.awaitIdle
          assert.deepStrictEqual((yield* session.chat).items.map((i) => "callId" in i ? i.callId : i._tag), ["x", "x"])
        }).pipe(
          Effect.scoped,
          Effect.provide(sessionLayer(def4, { sessionId, session: { beforeInsert: (items) => isFinalOfX(items) ? Effect.fail(refused("process 1")) : Effect.void } }))
        )
        // process 2: an agent whose chat lacks x's result (it keeps its own chat, not the stored
        // one); the toolset puts the result there, and its first insertion fails (or throws)
        let attempts = 0
        yield* Effect.gen(function*() {
          const chat = yield* DurableChat.DurableChat
          const session = yield* TestSession.TestSession
          assert.isTrue(chat.history.items.some((i) => i.id === "fco:x:final"), "the result was recorded")
          yield* session.insert(chat.history.items.filter((i) => !("callId" in i && i.callId === "x_final")))
          const toolset = yield* DurableToolset.make(def4)
          yield* Effect.sleep("2 seconds")
          yield* toolset.awaitIdle
          const after = yield* session.chat
          const ids = after.items.flatMap((i) => i._tag === "FunctionCall" ? [i.callId] : [])
          const named = (yield* session.replies).map((r) => namedCallIds(r.instructions))
          assert.include(ids, "x_final", `the result never reached the chat; replies named ${JSON.stringify(named)}`)
          assert.deepStrictEqual(named, [["x_final"]])
          assert.deepStrictEqual(chatProblems(after), [])
        }).pipe(
          Effect.scoped,
          Effect.provide(sessionLayer(def4, {
            sessionId,
            session: {
              beforeInsert: (items) => {
                if (!isFinalOfX(items) || attempts++ > 0) return Effect.void
                if (fault === "throws") throw new Error("the port threw in insert")
                return Effect.fail(refused("process 2, once"))
              }
            }
          }))
        )
      }).pipe(Effect.provide(storeLayer), Effect.provide(captureLogs().layer)), { timeout: 60_000 })
  }
})
