/**
 * What a durable close means for calls it leaves behind (the calls go on; a toolset made again for
 * the session follows them and tells their results), and a durable toolset sharing its session's
 * reply coordinator with an in-memory one.
 */
import { assert, layer } from "@effect/vitest"
import { Deferred, Effect, Fiber, Schema } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import type { ChatContext } from "effect-async-toolset"
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { eventually, sessionLayer, storeLayer } from "../support/durable.ts"
import { call, callIdsInChat, namedCallIds } from "../support/replies.ts"

/** What the tools of a test did. */
interface Probe {
  readonly started: Array<string>
  readonly finished: Array<string>
}

const makeProbe = (): Probe => ({ started: [], finished: [] })

/** `report`: says nothing until `go`, then returns (its first output is its result). */
const quietTool = (probe: Probe, go: Deferred.Deferred<void>) =>
  FunctionTool.make("report", { description: "Makes a report" }, () =>
    Effect.gen(function*() {
      const { callId } = yield* AsyncRunContext.functionCall
      probe.started.push(callId)
      yield* Deferred.await(go)
      probe.finished.push(callId)
      return `report ${callId}`
    }))

/**
 * `book_flight` under `replace`: says it started, and returns once `go` is done. Call `c1` waits in
 * an uninterruptible region (a replacing call waits for it until `go`).
 */
const replacingTool = (probe: Probe, go: Deferred.Deferred<void>) =>
  FunctionTool.make("book_flight", {
    description: "Book a flight",
    parameters: Schema.Struct({ to: Schema.String }),
    onDuplicateCall: "replace"
  }, ({ to }) =>
    Effect.gen(function*() {
      const { callId } = yield* AsyncRunContext.functionCall
      probe.started.push(callId)
      yield* AsyncRunContext.update(`looking up flights to ${to}`)
      if (callId === "c1") yield* Effect.uninterruptible(Deferred.await(go))
      probe.finished.push(callId)
      return `booked ${to}`
    }))

const chatIds = TestSession.TestSession.use((session) => Effect.map(session.chat, callIdsInChat))
const repliesNamed = TestSession.TestSession.use((session) =>
  Effect.map(session.replies, (replies) => replies.map((r) => namedCallIds(r.instructions)))
)

/**
 * The toolset is made, `start` runs with it, and the toolset closes while the caller of `waiting`
 * still waits for its first output; then, as an agent on the durable chat does, the call and the
 * output its caller got go into the chat. Returns that output's text.
 */
const closeWhileWaiting = <Tools extends ReadonlyArray<FunctionTool.Any>>(
  definition: DurableToolset.DurableToolset<Tools>,
  start: (toolset: AsyncToolset.AsyncToolset) => Effect.Effect<void>,
  waiting: ChatContext.FunctionCall,
  until: (toolset: AsyncToolset.AsyncToolset) => Effect.Effect<boolean>
) =>
  Effect.gen(function*() {
    const session = yield* TestSession.TestSession
    const chat = yield* DurableChat.DurableChat
    const caller = yield* Effect.scoped(Effect.gen(function*() {
      const toolset = yield* DurableToolset.make(definition)
      yield* start(toolset)
      const caller = yield* Effect.forkDetach(toolset.execute(waiting))
      yield* eventually(until(toolset), "the call is under way")
      return caller
    }))
    const output = yield* Fiber.join(caller)
    yield* session.insert([waiting, output])
    yield* chat.save([waiting, output])
    return output.output
  })

layer(storeLayer, { timeout: "120 seconds", excludeTestServices: true })("DurableToolset close", (it) => {
  for (const when of ["after", "before"] as const) {
    it.effect(`a caller still waiting at close is told the call goes on; its result, ready ${when} the toolset is made again, is told then`, () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const go = yield* Deferred.make<void>()
        const definition = DurableToolset.define({ id: "reports", tools: [quietTool(probe, go)] })
        yield* Effect.gen(function*() {
          const c1 = yield* call("c1", "report")
          const said = yield* closeWhileWaiting(definition, () => Effect.void, c1, () => Effect.sync(() => probe.started.length === 1))
          assert.include(said, "goes on in the background")
          if (when === "before") {
            yield* Deferred.succeed(go, undefined)
            yield* eventually(Effect.sync(() => probe.finished.length === 1), "c1 finished")
          }
          const again = yield* DurableToolset.make(definition)
          if (when === "after") yield* Deferred.succeed(go, undefined)
          yield* eventually(Effect.map(chatIds, (ids) => ids.includes("c1_final")), "c1's result is in the chat")
          yield* again.awaitIdle
          assert.deepStrictEqual(yield* chatIds, ["c1", "c1_final"])
          assert.deepStrictEqual(yield* repliesNamed, [["c1_final"]])
        }).pipe(Effect.provide(sessionLayer(definition)))
      }))
  }

  it.effect("a replacing call still waiting for its turn at close runs once the call it replaces stops; its results are told", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const definition = DurableToolset.define({ id: "travel", tools: [replacingTool(probe, go)] })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const chat = yield* DurableChat.DurableChat
        const c2 = yield* call("c2", "book_flight", { to: "KIX" })
        const said = yield* closeWhileWaiting(
          definition,
          (toolset) =>
            Effect.gen(function*() {
              const c1 = yield* call("c1", "book_flight", { to: "NRT" })
              const output = yield* toolset.execute(c1)
              yield* session.insert([c1, output])
              yield* chat.save([c1, output])
            }),
          c2,
          (toolset) => Effect.map(toolset.runningTasks, (tasks) => tasks.some((task) => task.callId === "c2"))
        )
        assert.include(said, "goes on in the background")
        assert.deepStrictEqual(probe.started, ["c1"], "c2 waits for c1, which is still stopping")
        yield* Deferred.succeed(go, undefined)
        yield* eventually(Effect.sync(() => probe.finished.includes("c2")), "c2 ran")
        const again = yield* DurableToolset.make(definition)
        yield* eventually(Effect.map(chatIds, (ids) => ids.includes("c2_final")), "c2's result is in the chat")
        yield* again.awaitIdle
        assert.deepStrictEqual(probe.started, ["c1", "c2"])
        assert.deepStrictEqual((yield* chatIds).slice().sort(), ["c1", "c2", "c2_final", "c2_update_1"])
        assert.deepStrictEqual((yield* repliesNamed).flat().sort(), ["c2_final", "c2_update_1"])
      }).pipe(Effect.provide(sessionLayer(definition)))
    }))

  it.effect("a durable and an in-memory toolset on one session: results that arrive while the agent is busy get one reply", () =>
    Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      const later = (name: string) =>
        FunctionTool.make(name, { description: `${name}, later` }, () =>
          Effect.andThen(AsyncRunContext.update("working on it"), Effect.as(Deferred.await(go), `${name} done`)))
      const definition = DurableToolset.define({ id: "reports", tools: [later("report")] })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const durable = yield* DurableToolset.make(definition)
        const memory = yield* AsyncToolset.make({ id: "weather", tools: [later("weather")] })
        yield* durable.execute(yield* call("r1", "report"))
        yield* memory.execute(yield* call("w1", "weather"))
        yield* session.setBusy
        yield* Deferred.succeed(go, undefined)
        yield* eventually(Effect.map(chatIds, (ids) => ids.includes("r1_final") && ids.includes("w1_final")), "both results are in the chat")
        yield* session.setIdle
        yield* memory.awaitIdle
        yield* durable.awaitIdle
        assert.deepStrictEqual((yield* repliesNamed).map((ids) => ids.slice().sort()), [["r1_final", "w1_final"]])
      }).pipe(Effect.provide(sessionLayer(definition)))
    }))
})
