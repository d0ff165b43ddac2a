/**
 * The durable toolset keeps the chat rules of the in-memory one for its calls: arguments and
 * outputs (A1, A2), the first-update hand-off and numbered pairs (B1–B8), and one idle-gated reply
 * for everything pending (C1–C5). Calls run on effect/workflow's in-memory engine, the store on
 * PGlite.
 */
import { assert, layer } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Layer, References, Schema } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import * as Workflow from "effect/workflow/Workflow"
import * as WorkflowEngine from "effect/workflow/WorkflowEngine"
import { AgentSession, AsyncRunContext, AsyncToolset, ChatContext, FunctionTool, Prompts, ToolError } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset, PgliteClient } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { eventually, newSessionId, sessionLayer, storeLayer } from "../support/durable.ts"
import { freshDataDir } from "../support/pglite.ts"
import { call, callIdsInChat, insertionsOf, namedCallIds, pairOf } from "../support/replies.ts"
import { captureLogs } from "../support/reliability.ts"
import { yieldSettings } from "../support/schedules.ts"

class SoldOut extends Schema.TaggedError<SoldOut>()("SoldOut", { flight: Schema.String }) {}

/** A booking tool that says where it looks, then waits for `go` between its later steps. */
const bookingTool = (go: Deferred.Deferred<void>, steps: ReadonlyArray<string> = ["found 3 flights"]) =>
  FunctionTool.make("book_flight", {
    description: "Book a flight",
    parameters: Schema.Struct({ to: Schema.String }),
    success: Schema.Struct({ confirmation: Schema.String })
  }, ({ to }) =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update(`looking up flights to ${to}`)
      yield* Deferred.await(go)
      for (const step of steps) yield* AsyncRunContext.update(step)
      return { confirmation: "FL-847293" }
    }))

const inChat = (callId: string) =>
  TestSession.TestSession.use((session) => Effect.map(session.chat, (chat) => callIdsInChat(chat).includes(callId)))

layer(storeLayer, { timeout: "120 seconds", excludeTestServices: true })("DurableToolset hand-off", (it) => {
  // --- A: arguments and outputs ---------------------------------------------------------------

  it.effect("A1 bad arguments give an error output naming the problem, and the handler does not run", () => {
    let ran = 0
    const tool = FunctionTool.make("book_flight", {
      description: "Book",
      parameters: Schema.Struct({ to: Schema.String })
    }, () => Effect.sync(() => ran++))
    const toolset = DurableToolset.define({ id: "travel", tools: [tool] })
    return Effect.gen(function*() {
      const t = yield* DurableToolset.make(toolset)
      const badJson = yield* t.execute(yield* callWithText("c1", "book_flight", "{not json"))
      const wrongType = yield* t.execute(yield* call("c2", "book_flight", { to: 3 }))
      const extra = yield* t.execute(yield* call("c3", "book_flight", { to: "NRT", when: "now" }))
      const unknown = yield* t.execute(yield* call("c4", "fly", {}))
      assert.isTrue(badJson.isError && wrongType.isError && extra.isError && unknown.isError)
      assert.include(badJson.output, "not a valid JSON object")
      assert.include(wrongType.output, `["to"]`)
      assert.include(extra.output, "when")
      assert.include(unknown.output, `Unknown tool "fly"`)
      assert.strictEqual(ran, 0)
      assert.deepStrictEqual(yield* t.runningTasks, [])
    }).pipe(Effect.provide(sessionLayer(toolset)))
  })

  it.effect("A2 a typed failure carries its tag and fields, a ToolError its message, a defect nothing", () => {
    const failing = (name: string, fail: Effect.Effect<never, SoldOut | ToolError.ToolError>) =>
      FunctionTool.make(name, { description: name, failure: SoldOut }, () => fail)
    const toolset = DurableToolset.define({
      id: "failures",
      tools: [
        failing("typed", Effect.fail(new SoldOut({ flight: "JL 5" }))),
        failing("tool_error", Effect.fail(new ToolError.ToolError({ message: "No seats left." }))),
        failing("defect", Effect.die(new Error("secret database password")))
      ]
    })
    const logs = captureLogs()
    return Effect.gen(function*() {
      const t = yield* DurableToolset.make(toolset)
      const typed = yield* t.execute(yield* call("c1", "typed"))
      const toolError = yield* t.execute(yield* call("c2", "tool_error"))
      const defect = yield* t.execute(yield* call("c3", "defect"))
      assert.deepStrictEqual(JSON.parse(typed.output), { _tag: "SoldOut", flight: "JL 5" })
      assert.strictEqual(toolError.output, "No seats left.")
      assert.include(defect.output, "internal error")
      assert.notInclude(defect.output, "secret")
      assert.isTrue(typed.isError && toolError.isError && defect.isError)
      // the defect's full cause is logged (captured here, not printed)
      assert.strictEqual(logs.find(["Error"], "secret database password").length, 1)
    }).pipe(Effect.provide(sessionLayer(toolset)), Effect.provide(logs.layer))
  })

  it.effect("A1 a call id the store cannot key (NUL, over 200 characters) gets a clear error output; odd ones run", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      yield* Deferred.succeed(go, undefined)
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(go, [])], onDuplicateCall: "allow" })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        for (const id of ["a\u0000b", "c".repeat(201)]) {
          const output = yield* t.execute(yield* call(id, "book_flight", { to: "NRT" }))
          assert.isTrue(output.isError)
          assert.include(output.output, "at most 200 characters")
        }
        for (const id of ["call/123", "call 1 2 3", "call\n\"1\"", "call_✈️", "c".repeat(200), "call_1_final"]) {
          const output = yield* t.execute(yield* call(id, "book_flight", { to: "NRT" }))
          assert.isTrue(AsyncToolset.isPending(output), id)
        }
        yield* t.awaitIdle
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  // --- B: the first-update hand-off -----------------------------------------------------------

  it.effect("B1 a tool reads its own call and toolset from AsyncRunContext", () => {
    const whoAmI = FunctionTool.make("who_am_i", { description: "Reports its call" }, () =>
      Effect.gen(function*() {
        const functionCall = yield* AsyncRunContext.functionCall
        const context = yield* AsyncRunContext.AsyncRunContext
        return `${functionCall.callId} ${functionCall.name} ${functionCall.arguments} ${context.toolsetId}`
      }))
    const toolset = DurableToolset.define({ id: "travel", tools: [whoAmI] })
    return Effect.gen(function*() {
      const t = yield* DurableToolset.make(toolset)
      const output = yield* t.execute(yield* call("c1", "who_am_i"))
      assert.strictEqual(output.output, "c1 who_am_i {} travel")
    }).pipe(Effect.provide(sessionLayer(toolset)))
  })

  it.effect("B2 the first update is the call's output (through the template), marked pending, and the tool goes on", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(go)] })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        const first = yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        assert.strictEqual(
          first.output,
          Prompts.render(Prompts.defaults.update, { functionName: "book_flight", callId: "c1", message: "looking up flights to NRT" })
        )
        assert.isTrue(AsyncToolset.isPending(first))
        assert.isFalse(first.isError)
        assert.deepStrictEqual((yield* t.runningTasks).map((task) => [task.callId, task.status]), [["c1", "running"]])
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
        assert.deepStrictEqual(yield* t.runningTasks, [])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("B2 an update that is not a string reaches the model as its JSON", () => {
    const tool = FunctionTool.make("progress", { description: "Reports" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update({ percent: 10 })
        return "done"
      }))
    const toolset = DurableToolset.define({ id: "travel", tools: [tool] })
    return Effect.gen(function*() {
      const t = yield* DurableToolset.make(toolset)
      const first = yield* t.execute(yield* call("c1", "progress"))
      assert.strictEqual(first.output, `{"percent":10}`)
      yield* t.awaitIdle
    }).pipe(Effect.provide(sessionLayer(toolset)))
  })

  it.effect("B3 a tool that never updates behaves like a plain blocking tool", () => {
    const tool = FunctionTool.make("weather", {
      description: "Weather",
      parameters: Schema.Struct({ city: Schema.String })
    }, ({ city }) => Effect.as(Effect.sleep("20 millis"), `Sunny in ${city}`))
    const toolset = DurableToolset.define({ id: "travel", tools: [tool] })
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const t = yield* DurableToolset.make(toolset)
      const output = yield* t.execute(yield* call("c1", "weather", { city: "Paris" }))
      assert.strictEqual(output.output, "Sunny in Paris")
      assert.isFalse(AsyncToolset.isPending(output))
      yield* t.awaitIdle
      assert.deepStrictEqual(yield* session.insertions, [])
      assert.deepStrictEqual(yield* session.replies, [])
    }).pipe(Effect.provide(sessionLayer(toolset)))
  })

  it.effect("B4 B5 later updates and the result reach the chat as numbered pairs, each once, each answered", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(go, ["found 3 flights", "holding seat 12A"])] })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
        const chat = yield* session.chat
        assert.deepStrictEqual(callIdsInChat(chat), ["c1_update_1", "c1_update_2", "c1_final"])
        assert.include(pairOf(chat, "c1_update_1").output.output, "found 3 flights")
        assert.include(pairOf(chat, "c1_update_2").output.output, "holding seat 12A")
        assert.strictEqual(pairOf(chat, "c1_final").output.output, `{"confirmation":"FL-847293"}`)
        const insertions = yield* session.insertions
        for (const id of ["c1_update_1", "c1_update_2", "c1_final"]) assert.deepStrictEqual(insertionsOf(insertions, id), { calls: 1, outputs: 1 })
        const named = (yield* session.replies).flatMap((r) => namedCallIds(r.instructions))
        assert.deepStrictEqual([...named].sort(), ["c1_final", "c1_update_1", "c1_update_2"])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("B5 a void result after an update inserts nothing; a failure after an update is an error _final", () =>
    Effect.gen(function*() {
      const quiet = FunctionTool.make("quiet", { description: "Quiet" }, () =>
        Effect.asVoid(AsyncRunContext.update("started")))
      const failing = FunctionTool.make("failing", { description: "Fails" }, () =>
        Effect.andThen(AsyncRunContext.update("started"), Effect.fail(new ToolError.ToolError({ message: "The airline is down." }))))
      const toolset = DurableToolset.define({ id: "travel", tools: [quiet, failing] })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "quiet"))
        yield* t.execute(yield* call("c2", "failing"))
        yield* t.awaitIdle
        const chat = yield* session.chat
        assert.deepStrictEqual(callIdsInChat(chat), ["c2_final"])
        const final = pairOf(chat, "c2_final").output
        assert.isTrue(final.isError)
        assert.strictEqual(final.output, "The airline is down.")
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("B6 synthetic call ids add only [A-Za-z0-9_-] to the call id", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      yield* Deferred.succeed(go, undefined)
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(go)] })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("call/7.x", "book_flight", { to: "NRT" }))
        yield* t.awaitIdle
        for (const id of callIdsInChat(yield* session.chat)) {
          assert.isTrue(id.startsWith("call/7.x"))
          assert.match(id.slice("call/7.x".length), /^[A-Za-z0-9_-]+$/)
        }
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("B7 a model that reuses an ended call's id never makes the toolset write a second <id>_update_1", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      yield* Deferred.succeed(go, undefined)
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(go)], onDuplicateCall: "allow" })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        yield* t.awaitIdle
        const again = yield* t.execute(yield* call("c1", "book_flight", { to: "CDG" }))
        assert.include(again.output, "CDG")
        yield* t.awaitIdle
        assert.deepStrictEqual(callIdsInChat(yield* session.chat), ["c1_update_1", "c1_final", "c1_run2_update_1", "c1_run2_final"])
        const empty = yield* t.execute(yield* call("", "book_flight", { to: "CDG" }))
        assert.isTrue(empty.isError)
        assert.include(empty.output, "no call id")
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("B8 of two updates racing for the first output, one is it and the other is _update_1", () => {
    const racing = FunctionTool.make("racing", { description: "Races" }, () =>
      Effect.gen(function*() {
        yield* Effect.all([AsyncRunContext.update("a"), AsyncRunContext.update("b")], { concurrency: "unbounded" })
        return "done"
      }))
    const toolset = DurableToolset.define({ id: "travel", tools: [racing] })
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const t = yield* DurableToolset.make(toolset)
      const first = yield* t.execute(yield* call("c1", "racing"))
      yield* t.awaitIdle
      const chat = yield* session.chat
      const later = pairOf(chat, "c1_update_1").output.output
      const said = [first.output, later].map((text) => text.includes("progress: a") ? "a" : "b").sort()
      assert.deepStrictEqual(said, ["a", "b"])
    }).pipe(Effect.provide(sessionLayer(toolset)))
  })

  it.effect("the same model call started twice runs once, and both callers get its output", () =>
    Effect.gen(function*() {
      let runs = 0
      const go = yield* Deferred.make<void>()
      const tool = FunctionTool.make("book_flight", { description: "Book" }, () =>
        Effect.gen(function*() {
          runs++
          yield* AsyncRunContext.update("looking")
          yield* Deferred.await(go)
          return "booked"
        }))
      const toolset = DurableToolset.define({ id: "travel", tools: [tool] })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        const c = yield* call("c1", "book_flight")
        const [a, b] = yield* Effect.all([t.execute(c), t.execute(c)], { concurrency: "unbounded" })
        assert.strictEqual(a.output, b.output)
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
        const again = yield* t.execute(c)
        assert.strictEqual(again.output, a.output)
        assert.strictEqual(runs, 1)
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("many calls at once: each is listed once while it runs, each result reaches the chat once, and the toolset gets idle", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(go, [])], onDuplicateCall: "allow" })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* DurableToolset.make(toolset)
        const ids = Array.from({ length: 30 }, (_, i) => `c${i}`)
        const calls = yield* Effect.forEach(ids, (id) => call(id, "book_flight", { to: "NRT" }))
        yield* Effect.forEach(calls, (c) => t.execute(c), { concurrency: "unbounded", discard: true })
        assert.deepStrictEqual((yield* t.runningTasks).map((task) => task.callId).sort(), [...ids].sort())
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
        assert.deepStrictEqual(yield* t.runningTasks, [])
        const chat = yield* session.chat
        assert.deepStrictEqual([...callIdsInChat(chat)].sort(), ids.map((id) => `${id}_final`).sort())
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  // --- C: replies -----------------------------------------------------------------------------

  it.effect("C1 C2 an update is in the chat while the agent is busy; the reply waits for idle and names it, with tool choice none", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(go)] })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        yield* session.setBusy
        yield* Deferred.succeed(go, undefined)
        yield* eventually(inChat("c1_final"), "c1_final in the chat")
        assert.deepStrictEqual(yield* session.replies, [])
        yield* session.setIdle
        yield* t.awaitIdle
        const replies = yield* session.replies
        assert.isAtLeast(replies.length, 1)
        assert.isTrue(replies.every((r) => !r.whileBusy && r.toolChoice === "none"))
        assert.deepStrictEqual(replies.flatMap((r) => namedCallIds(r.instructions)).sort(), ["c1_final", "c1_update_1"])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("C3 results of several tools arriving while the agent is busy get one reply", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      const other = FunctionTool.make("rent_car", { description: "Rent" }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("looking for cars")
          yield* Deferred.await(go)
          return "car rented"
        }))
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(go), other] })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        yield* t.execute(yield* call("c2", "rent_car"))
        yield* session.setBusy
        yield* Deferred.succeed(go, undefined)
        yield* eventually(Effect.zipWith(inChat("c1_final"), inChat("c2_final"), (a, b) => a && b), "both finals in the chat")
        yield* session.setIdle
        yield* t.awaitIdle
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        assert.deepStrictEqual([...namedCallIds(replies[0]!.instructions)].sort(), ["c1_final", "c1_update_1", "c2_final"])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("C4 when the agent spoke after the results, it is asked with the maybe-covered text; skip asks nothing", () =>
    Effect.gen(function*() {
      for (const mode of ["ask", "skip"] as const) {
        const go = yield* Deferred.make<void>()
        const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(go, [])], whenAlreadyAnswered: mode })
        yield* Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const t = yield* DurableToolset.make(toolset)
          yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
          yield* session.setBusy
          yield* Deferred.succeed(go, undefined)
          yield* eventually(inChat("c1_final"), "c1_final in the chat")
          yield* Effect.sleep("5 millis")
          yield* session.say("assistant", "Your flight is booked: FL-847293.")
          yield* session.setIdle
          yield* t.awaitIdle
          const replies = yield* session.replies
          if (mode === "skip") assert.deepStrictEqual(replies, [])
          else {
            assert.strictEqual(replies.length, 1)
            assert.strictEqual(replies[0]!.instructions, Prompts.render(Prompts.defaults.replyMaybeCovered, { pendingCallIds: "c1_final" }))
          }
        }).pipe(Effect.provide(sessionLayer(toolset)))
      }
    }))

  it.effect("C5 prompt texts are options: a string with placeholders or a function", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      yield* Deferred.succeed(go, undefined)
      const toolset = DurableToolset.define({
        id: "travel",
        tools: [bookingTool(go, [])],
        prompts: { update: "[{callId}] {message}", replyAtTail: ({ pendingCallIds }) => `Tell them about ${pendingCallIds}.` }
      })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* DurableToolset.make(toolset)
        const first = yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        assert.strictEqual(first.output, "[c1] looking up flights to NRT")
        yield* t.awaitIdle
        assert.deepStrictEqual((yield* session.replies).map((r) => r.instructions), ["Tell them about c1_final."])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("a failing reply request is retried, and a session that keeps failing costs the reply, not the toolset", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      yield* Deferred.succeed(go, undefined)
      let failures = 0
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(go, [])] })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        yield* t.awaitIdle
        assert.strictEqual((yield* session.replies).length, 2) // one failure, then the retry
        const second = yield* t.execute(yield* call("c2", "book_flight", { to: "CDG" }))
        assert.isTrue(AsyncToolset.isPending(second))
        yield* t.awaitIdle
      }).pipe(Effect.provide(sessionLayer(toolset, {
        session: {
          onReply: () =>
            Effect.suspend(() =>
              failures++ === 0
                ? Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "the agent is down" }))
                : Effect.void
            )
        }
      })))
    }))
})

const callWithText = (callId: string, name: string, text: string) => ChatContext.functionCall({ callId, name, arguments: text })

/** A store that never looks for other processes' changes during a test (so every read is the call's own). */
const quietStoreLayer = Layer.unwrap(
  Effect.map(Effect.promise(() => freshDataDir()), (dataDir) =>
    DurableStore.layer({ pollInterval: "1 hour" }).pipe(Layer.provideMerge(PgliteClient.layer({ dataDir }))))
)

/** The statements sent to the store's PGlite from now on (a statement in one exchange: its Parse's text). */
const statementsSent = (pglite: PgliteClient.Pglite): Array<string> => {
  const sent: Array<string> = []
  const target = pglite as unknown as Record<string, (...args: Array<any>) => Promise<unknown>>
  const query = target["query"]!.bind(pglite)
  const execProtocol = target["execProtocol"]!.bind(pglite)
  target["query"] = (text: string, ...rest) => (sent.push(text), query(text, ...rest))
  target["execProtocol"] = (message: Uint8Array, ...rest) => {
    if (message[0] === 0x50) {
      const name = message.indexOf(0, 5)
      sent.push(new TextDecoder().decode(message.subarray(name + 1, message.indexOf(0, name + 1))))
    }
    return execProtocol(message, ...rest)
  }
  return sent
}

/** effect/workflow's in-memory engine whose executions begin only once `gate` is open. */
const gatedEngine = (gate: Deferred.Deferred<void>) =>
  Layer.effect(WorkflowEngine.WorkflowEngine)(Effect.gen(function*() {
    const engine = yield* WorkflowEngine.WorkflowEngine
    const register: typeof engine.register = (workflow, execute) =>
      engine.register(workflow, (payload, executionId) => Effect.andThen(Deferred.await(gate), execute(payload, executionId)))
    return WorkflowEngine.WorkflowEngine.of({ ...engine, register })
  })).pipe(Layer.provide(WorkflowEngine.layerMemory))

/**
 * The in-memory engine, except that the first activity it runs ends interrupted, as effect/cluster's
 * engine ends one whose shard moved or whose runner shuts down; `ended` gets each execution's exit.
 */
const interruptingEngine = (ended: Deferred.Deferred<Exit.Exit<unknown, unknown>>) =>
  Layer.effect(WorkflowEngine.WorkflowEngine)(Effect.gen(function*() {
    const engine = yield* WorkflowEngine.WorkflowEngine
    let interrupted = false
    const activityExecute: typeof engine.activityExecute = (activity, attempt) =>
      interrupted
        ? engine.activityExecute(activity, attempt)
        : Effect.sync(() => {
          interrupted = true
          return new Workflow.Complete({ exit: Exit.interrupt() }) as never
        })
    const register: typeof engine.register = (workflow, execute) =>
      engine.register(workflow, (payload, executionId) => Effect.onExit(execute(payload, executionId), (exit) => Deferred.succeed(ended, exit)))
    return WorkflowEngine.WorkflowEngine.of({ ...engine, activityExecute, register })
  })).pipe(Layer.provide(WorkflowEngine.layerMemory))

layer(quietStoreLayer, { timeout: "120 seconds", excludeTestServices: true })("DurableToolset execution start", (it) => {
  it.effect("a call stopped before its execution begins never runs: the execution starts from the stop, not from the row recorded before it", () =>
    Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      let ran = 0
      const tool = FunctionTool.make("book_flight", {
        description: "Book a flight",
        parameters: Schema.Struct({ to: Schema.String })
      }, () => Effect.sync(() => ++ran))
      const toolset = DurableToolset.define({ id: "travel", tools: [tool] })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        const waiting = yield* Effect.forkChild(t.execute(yield* call("c1", "book_flight", { to: "NRT" })))
        yield* eventually(Effect.map(t.runningTasks, (tasks) => tasks.length === 1), "c1 running")
        assert.strictEqual(yield* t.cancel("c1"), "cancelled")
        const output = yield* Fiber.join(waiting)
        assert.isTrue(output.isError)
        // the stop is recorded: now the execution begins
        yield* Deferred.succeed(gate, undefined)
        yield* t.awaitIdle
        yield* eventually(Effect.map(t.runningTasks, (tasks) => tasks.length === 0), "c1 ended")
      }).pipe(Effect.provide(
        Layer.mergeAll(DurableToolset.layer(toolset), DurableChat.layer({ sessionId: newSessionId() }), TestSession.layerWith({}))
          .pipe(Layer.provideMerge(gatedEngine(gate)))
      ))
      assert.strictEqual(ran, 0)
    }))

  for (const maxOps of yieldSettings) {
    it.effect(`a call timed out before its execution begins never runs: the execution starts from the timeout, not from the row recorded before it (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const gate = yield* Deferred.make<void>()
        let ran = 0
        const tool = FunctionTool.make("book_flight", {
          description: "Book a flight",
          parameters: Schema.Struct({ to: Schema.String }),
          timeout: "20 millis"
        }, () => Effect.sync(() => ++ran))
        const toolset = DurableToolset.define({ id: "travel", tools: [tool] })
        yield* Effect.gen(function*() {
          const t = yield* DurableToolset.make(toolset)
          // the caller is answered once the timeout is recorded
          const output = yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
          assert.isTrue(output.isError)
          assert.include(output.output, "took longer than 20ms")
          // now the execution begins
          yield* Deferred.succeed(gate, undefined)
          yield* t.awaitIdle
          yield* eventually(Effect.map(t.runningTasks, (tasks) => tasks.length === 0), "c1 ended")
        }).pipe(
          Effect.provide(
            Layer.mergeAll(DurableToolset.layer(toolset), DurableChat.layer({ sessionId: newSessionId() }), TestSession.layerWith({}))
              .pipe(Layer.provideMerge(gatedEngine(gate)))
          ),
          Effect.provideService(References.MaxOpsBeforeYield, maxOps)
        )
        assert.strictEqual(ran, 0)
      }))
  }

  it.effect("a call's execution in the process that recorded it starts from that record: its row is not read again", () =>
    Effect.gen(function*() {
      const { pglite } = yield* PgliteClient.PgliteClient
      const sent = statementsSent(pglite)
      let readsBeforeTheTool = -1
      const tool = FunctionTool.make("book_flight", {
        description: "Book a flight",
        parameters: Schema.Struct({ to: Schema.String })
      }, () =>
        Effect.sync(() => {
          readsBeforeTheTool = sent.filter((text) => /^SELECT \* FROM async_toolset_call WHERE session_id = \$1 AND base = \$2$/.test(text)).length
          return "booked"
        }))
      const toolset = DurableToolset.define({ id: "travel", tools: [tool] })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        const output = yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        assert.strictEqual(output.output, "booked")
      }).pipe(Effect.provide(sessionLayer(toolset)))
      assert.isTrue(sent.some((text) => text.includes("INSERT INTO async_toolset_call")))
      assert.strictEqual(readsBeforeTheTool, 0)
    }))

  it.effect("an activity the engine interrupted is not the tool's failure: the engine runs the execution again, and the call ends with the tool's result", () =>
    Effect.gen(function*() {
      const ended = yield* Deferred.make<Exit.Exit<unknown, unknown>>()
      const tool = FunctionTool.make("book_flight", {
        description: "Book a flight",
        parameters: Schema.Struct({ to: Schema.String })
      }, () => DurableToolset.activity("book", Effect.succeed("booked"), { success: Schema.String }))
      const toolset = DurableToolset.define({ id: "travel", tools: [tool] })
      const sessionId = newSessionId()
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        const output = yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        assert.isFalse(output.isError)
        assert.strictEqual(output.output, "booked")
        // the first execution ended suspended by the interruption, not with the call's end
        yield* Deferred.await(ended)
        const sql = yield* SqlClient
        const rows = yield* sql<{ status: string }>`SELECT status FROM async_toolset_call WHERE session_id = ${sessionId}`
        assert.deepStrictEqual(rows.map((row) => row.status), ["done"])
        const chat = yield* TestSession.TestSession.use((session) => session.chat)
        assert.notInclude(JSON.stringify(chat.items), "internal error")
      }).pipe(Effect.provide(
        Layer.mergeAll(DurableToolset.layer(toolset), DurableChat.layer({ sessionId }), TestSession.layerWith({}))
          .pipe(Layer.provideMerge(interruptingEngine(ended)))
      ))
    }))
})
