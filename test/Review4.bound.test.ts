/**
 * Review 4: `slowRequest`'s `joined` (000e376): the bound counts from `boundFrom`, re-armed with
 * what is left of it whenever a period ends. Probes: the idle wait ending exactly on a period
 * boundary (the session's wake registered before and after the coordinator's timer), a request
 * that then hangs (given up exactly `replyTimeout` after the wait ended: not earlier, not never),
 * a very small `replyTimeout` while the session is busy.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, References, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { captureLogs, makeFiberCounter, reported, whileClockRuns } from "./support/reliability.ts"
import { promptlyLong as promptly, settleLong } from "./support/review2.ts"
import { yieldSettings } from "./support/review3.ts"

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

describe("Review4: the idle wait ends exactly when a replyTimeout period ends", () => {
  for (const order of ["wake registered before the period's timer", "wake registered after the period's timer"] as const) {
    for (const periods of [1, 2] as const) {
      for (const maxOps of yieldSettings) {
        it.effect(`busy for exactly ${periods} period(s) (${order}), then the request hangs: given up at wait end + 1 minute, not before; close at once, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
          const logs = captureLogs()
          const fibers = makeFiberCounter()
          return fibers.track(Effect.gen(function*() {
            const test = yield* TestSession.TestSession
            const scope = yield* Scope.make()
            const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], replyTimeout: "1 minute" }).pipe(Scope.provide(scope))
            yield* execute(toolset, "c1", "job")
            yield* test.setBusy
            const idleAt = 1000 + periods * 60_000
            if (order === "wake registered before the period's timer") {
              // registered now (t = 0): wakes before the coordinator's timer of the same instant
              yield* Effect.forkDetach(Effect.andThen(Effect.sleep(idleAt), test.setIdle), { startImmediately: true })
            }
            yield* TestClock.adjust("1 second") // c1_final: the step waits for idle; the period runs to 61 s
            yield* settleLong
            if (order === "wake registered after the period's timer") {
              yield* Effect.forkDetach(Effect.andThen(Effect.sleep(idleAt - 1000), test.setIdle), { startImmediately: true })
              yield* settleLong
            }
            yield* TestClock.adjust(idleAt - 1000) // the wait ends exactly at a period's end; the request hangs
            yield* settleLong
            assert.strictEqual((yield* test.replies).length, 1, "the request was made once idle")
            yield* TestClock.adjust("59 seconds")
            yield* settleLong
            assert.deepStrictEqual(logs.find(reported, "could not be requested").map((l) => l.text), [], "given up before replyTimeout")
            yield* TestClock.adjust("2 seconds")
            yield* settleLong
            assert.strictEqual(logs.find(["Error"], "c1_final", "could not be requested").length, 1, "not given up replyTimeout after the wait ended")
            yield* promptly(Scope.close(scope, Exit.void), "close")
            yield* settleLong
            assert.strictEqual(fibers.active, 0)
          })).pipe(
            Effect.ensuring(TestClock.adjust("1 day")),
            Effect.provide(TestSession.layerWith({ onReply: () => Effect.never })),
            Effect.provide(logs.layer),
            Effect.provideService(References.MaxOpsBeforeYield, maxOps)
          )
        })
      }
    }
  }
})

describe("Review4: a replyTimeout shorter than the wait for idle", () => {
  for (const timeout of ["0 millis", "10 millis"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`replyTimeout ${timeout}, the session busy for 2 seconds, the request answers at once: the reply is requested once idle (the wait is not counted) (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], replyTimeout: timeout })
          yield* execute(toolset, "c1", "job")
          yield* session.setBusy
          yield* TestClock.adjust("1 second")
          yield* settleLong
          yield* TestClock.adjust("2 seconds")
          yield* settleLong
          yield* session.setIdle
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "10 millis" })
          assert.strictEqual((yield* session.replies).length, 1, "no reply was requested")
          assert.deepStrictEqual(logs.find(reported, "could not be requested").map((l) => l.text), [])
        }).pipe(Effect.provide(TestSession.layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})
