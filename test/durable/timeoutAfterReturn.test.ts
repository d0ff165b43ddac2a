/**
 * E7 on the durable toolset: once the handler has returned, the timeout no longer applies, even
 * while the store is still recording the result. The durable counterpart of the in-memory test "a
 * result whose delivery is still under way when the timeout fires is told once, as the result"
 * (test/AsyncToolset/interleavings.test.ts): here the store refuses the result's record for a
 * while (the call's execution tries it again), and the call's deadline passes meanwhile.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, References, Scope, Stream } from "effect"
import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
import type { ToolsetEvent } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { captureLogs } from "../support/reliability.ts"
import { yieldsFor } from "../support/schedules.ts"
import { durable, refuseStatements } from "../support/toolsets.ts"

/** A call's end being recorded (`recordEnd` in src/durable/internal/calls.ts). */
const isEndRecord = (sql: string) => sql.includes("AS no_first")

describe("E7 durable: a result whose record is still under way when the timeout fires", () => {
  const kind = durable()
  for (const maxOps of yieldsFor(kind)) {
    it.effect(`the tool returns at 4 s (timeout 5 s), the store refuses its end's record until 7 s: told once, as the result (MaxOpsBeforeYield ${maxOps})`, () => {
      const logs = captureLogs() // (the refused statements are logged as warnings)
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const events: Array<ToolsetEvent.ToolsetEvent> = []
        const book = FunctionTool.make("book", { description: "Books in 4 s", timeout: "5 seconds" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("booking")
            yield* Effect.sleep("4 seconds")
            return "booked FL-1"
          }))
        const toolset = yield* kind.make({ id: "t", tools: [book] })
        yield* toolset.events.pipe(Stream.runForEach((e) => Effect.sync(() => events.push(e))), Effect.forkChild({ startImmediately: true }))
        const fault = { on: true }
        yield* refuseStatements((sql) => fault.on && isEndRecord(sql))
        const first = yield* execute(toolset, "c1", "book")
        assert.include(first.output, "booking")
        yield* kind.advance("4 seconds") // the tool returns; its end's record is refused (and tried again)
        yield* kind.advance("1 second") // the timeout's instant
        yield* kind.advance("2 seconds")
        fault.on = false
        yield* kind.advance("10 seconds")
        yield* toolset.awaitIdle
        const outputs = (yield* session.chat).items.flatMap((i) => i._tag === "FunctionCallOutput" ? [`${i.callId}: ${i.output}`] : [])
        assert.deepStrictEqual(outputs, ["c1_final: booked FL-1"])
        assert.deepStrictEqual(events.flatMap((e) => e._tag === "CallEnded" ? [e.outcome] : []), ["done"])
        assert.strictEqual((yield* session.replies).length, 1)
        assert.isAtLeast(logs.find(["Warn"], "the durable store failed").length, 1, "the refusal happened")
      }).pipe(
        Effect.scoped,
        kind.provide(TestSession.layer),
        Effect.provideService(References.MaxOpsBeforeYield, maxOps),
        Effect.provide(logs.layer)
      )
    })

    for (const how of ["cancel", "drain"] as const) {
      it.effect(`${how} after the tool returned, while the store refuses its end's record: the result stands and is told once (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const book = FunctionTool.make("book", { description: "Books in 4 s" }, () =>
            Effect.gen(function*() {
              yield* AsyncRunContext.update("booking")
              yield* Effect.sleep("4 seconds")
              return "booked FL-1"
            }))
          const toolset = yield* kind.make({ id: "t", tools: [book] })
          const fault = { on: true }
          yield* refuseStatements((sql) => fault.on && isEndRecord(sql))
          yield* execute(toolset, "c1", "book")
          yield* kind.advance("4 seconds") // the tool returns; its end's record is refused (and tried again)
          if (how === "cancel") {
            assert.notStrictEqual(yield* toolset.cancel("c1"), "cancelled", "the call had ended")
            assert.deepStrictEqual(yield* toolset.runningTasks, [])
          }
          const drained = yield* Effect.forkChild(how === "drain" ? toolset.drain : Effect.void, { startImmediately: true })
          yield* kind.advance("2 seconds")
          fault.on = false
          yield* kind.advance("10 seconds")
          yield* Fiber.join(drained)
          yield* toolset.awaitIdle
          const outputs = (yield* session.chat).items.flatMap((i) => i._tag === "FunctionCallOutput" ? [`${i.callId}: ${i.output}`] : [])
          assert.deepStrictEqual(outputs, ["c1_final: booked FL-1"])
        }).pipe(
          Effect.scoped,
          kind.provide(TestSession.layer),
          Effect.provideService(References.MaxOpsBeforeYield, maxOps),
          Effect.provide(logs.layer)
        )
      })
    }
    for (const closedAt of [4500, 6000]) {
      for (const withUpdate of [true, false]) {
        it.effect(`the tool returns at 4 s (timeout 5 s), the store refuses its end's record until 7 s, the toolset is closed at ${closedAt} ms and made again in this process${withUpdate ? "" : " (no update)"}: told as the result, the tool ran once (MaxOpsBeforeYield ${maxOps})`, () => {
          const logs = captureLogs()
          return Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            let runs = 0
            const book = FunctionTool.make("book", { description: "Books in 4 s", timeout: "5 seconds" }, () =>
              Effect.gen(function*() {
                runs++
                if (withUpdate) yield* AsyncRunContext.update("booking")
                yield* Effect.sleep("4 seconds")
                return "booked FL-1"
              }))
            const fault = { on: true }
            yield* refuseStatements((sql) => fault.on && isEndRecord(sql))
            const scope = yield* Scope.make()
            const toolset = yield* Scope.provide(kind.make({ id: "t", tools: [book] }), scope)
            yield* Effect.forkChild(execute(toolset, "c1", "book"), { startImmediately: true })
            yield* kind.advance("4 seconds") // the tool returns; its end's record is refused (and tried again)
            yield* kind.advance(`${closedAt - 4000} millis`)
            yield* Scope.close(scope, Exit.void) // its execution goes on in this process, still recording the end
            const again = yield* kind.make({ id: "t", tools: [book] })
            yield* kind.advance(`${7000 - closedAt} millis`)
            fault.on = false
            yield* kind.advance("10 seconds")
            yield* again.awaitIdle
            const outputs = (yield* session.chat).items.flatMap((i) => i._tag === "FunctionCallOutput" ? [`${i.callId}: ${i.output}`] : [])
            // (Without an update, its caller heard at the close that it goes on: the result is its `_final`.)
            assert.deepStrictEqual(outputs.filter((o) => o.startsWith("c1_")), ["c1_final: booked FL-1"], outputs.join("\n"))
            assert.strictEqual(runs, 1)
          }).pipe(
            Effect.scoped,
            kind.provide(TestSession.layer),
            Effect.provideService(References.MaxOpsBeforeYield, maxOps),
            Effect.provide(logs.layer)
          )
        })
      }
    }
  }
})
