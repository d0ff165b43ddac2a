/**
 * Review 4: request steps given up inside an uninterruptible port operation are kept in
 * `coordinator.stopping` until they end (000e376); `release` of the last toolset and the
 * coordinator's `ensuring` wait for them. Other toolsets of the session must not be held up by
 * such a step, and a toolset made again on the session while the last close waits must work.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, References, Schedule, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { captureLogs, makeFiberCounter, namedCallIds } from "./support/reliability.ts"
import { promptlyLong as promptly, settleLong } from "./support/review2.ts"
import { wrappedSession, yieldSettings } from "./support/review3.ts"

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

type Op = "items" | "generateReply"

/** The first `op` the coordinator makes runs 10 minutes, uninterruptibly; the others answer at once. */
const firstSlow = (op: Op) =>
  wrappedSession((session) => {
    let fired = false
    const once = <A, E>(ok: Effect.Effect<A, E>) =>
      Effect.suspend(() => {
        if (fired) return ok
        fired = true
        return Effect.uninterruptible(Effect.andThen(Effect.sleep("10 minutes"), ok))
      })
    return op === "items" ? { items: Effect.suspend(() => once(session.items)) } : { generateReply: (r) => once(session.generateReply(r)) }
  })

const named = (session: TestSession.TestSession["Service"]) =>
  Effect.map(session.replies, (replies) => replies.flatMap((r) => namedCallIds(r.instructions)))

describe("Review4: a timed-out request step still inside an uninterruptible port operation", () => {
  for (const op of ["items", "generateReply"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`A's step is stuck (${op}, 10 minutes) and given up: A's close (B open) returns at once, B's result is answered meanwhile, B's close waits for the step, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scopeA = yield* Scope.make()
          const scopeB = yield* Scope.make()
          const a = yield* AsyncToolset.make({ id: "a", tools: [job], replyTimeout: "1 minute" }).pipe(Scope.provide(scopeA))
          const b = yield* AsyncToolset.make({ id: "b", tools: [job], replyTimeout: "1 minute" }).pipe(Scope.provide(scopeB))
          yield* execute(a, "a1", "job")
          yield* TestClock.adjust("1 second") // a1_final: the step enters the slow operation
          yield* settleLong
          yield* TestClock.adjust("61 seconds") // given up; the step is kept in `stopping`
          yield* settleLong
          yield* promptly(Scope.close(scopeA, Exit.void), "A's close (B still open)")
          yield* execute(b, "b1", "job")
          yield* TestClock.adjust("1 second")
          yield* settleLong
          assert.include(yield* named(session), "b1_final", "B's result waits for A's stuck step")
          yield* promptly(b.awaitIdle, "B's awaitIdle")
          const closing = yield* Effect.forkDetach(Scope.close(scopeB, Exit.void), { startImmediately: true })
          yield* settleLong
          assert.isUndefined(closing.pollUnsafe(), "the last close waits for the step it cannot interrupt")
          yield* TestClock.adjust("10 minutes")
          yield* promptly(Fiber.join(closing), "B's close once the step ended")
          yield* settleLong
          assert.strictEqual(fibers.active, 0, "a fiber outlived the last close")
        })).pipe(Effect.provide(firstSlow(op)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })

      it.effect(`the last toolset's close waits for a stuck step (${op}); a toolset made again on the session meanwhile is answered at once, closes at once, and the first close ends with the step (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scopeA = yield* Scope.make()
          const a = yield* AsyncToolset.make({ id: "a", tools: [job], replyTimeout: "1 minute" }).pipe(Scope.provide(scopeA))
          yield* execute(a, "a1", "job")
          yield* TestClock.adjust("1 second")
          yield* settleLong
          yield* TestClock.adjust("61 seconds")
          yield* settleLong
          const closingA = yield* Effect.forkDetach(Scope.close(scopeA, Exit.void), { startImmediately: true })
          yield* settleLong
          assert.isUndefined(closingA.pollUnsafe(), "A's close waits for the step it cannot interrupt")
          const scopeC = yield* Scope.make()
          const c = yield* AsyncToolset.make({ id: "c", tools: [job], replyTimeout: "1 minute" }).pipe(Scope.provide(scopeC))
          yield* execute(c, "c1", "job")
          yield* TestClock.adjust("1 second")
          yield* settleLong
          assert.include(yield* named(session), "c1_final", "the new toolset's result was not answered")
          yield* promptly(c.awaitIdle, "C's awaitIdle")
          yield* promptly(Scope.close(scopeC, Exit.void), "C's close (its own coordinator has no stuck step)")
          assert.isUndefined(closingA.pollUnsafe())
          yield* TestClock.adjust("10 minutes")
          yield* promptly(Fiber.join(closingA), "A's close once the step ended")
          yield* settleLong
          assert.strictEqual(fibers.active, 0, "a fiber outlived the closes")
          assert.isFalse((yield* session.replies).some((r) => r.whileBusy))
        })).pipe(Effect.provide(firstSlow(op)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})

/** The first reply request fails; the second (the retry) runs 10 minutes, uninterruptibly. */
const retryStuck = wrappedSession((session) => {
  let n = 0
  return {
    generateReply: (r) =>
      Effect.suspend(() => {
        n++
        if (n === 1) return Effect.andThen(session.generateReply(r), Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "injected" })))
        if (n === 2) return Effect.uninterruptible(Effect.andThen(Effect.sleep("10 minutes"), session.generateReply(r)))
        return session.generateReply(r)
      })
  }
})

describe("Review4: a retried reply request stuck inside an uninterruptible port operation", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`A's request fails, its retry is stuck for 10 minutes (replyTimeout 1 minute): given up in time, B's result answered before the 10 minutes end (MaxOpsBeforeYield ${maxOps})`, () => {
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 5 }))
        const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
        const b = yield* AsyncToolset.make({ id: "b", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
        yield* execute(a, "a1", "job")
        yield* TestClock.adjust("1 second") // a1_final; its request fails
        yield* settleLong
        yield* TestClock.adjust("1 second") // the retry: stuck
        yield* settleLong
        yield* execute(b, "b1", "job")
        for (let i = 0; i < 90; i++) {
          yield* TestClock.adjust("1 second")
          yield* settleLong
        }
        const givenUp = logs.find(["Error"], "a1_final", "could not be requested").length > 0
        const answeredB = (yield* named(session)).includes("b1_final")
        assert.deepStrictEqual(
          { givenUp, answeredB },
          { givenUp: true, answeredB: true },
          "92 s in: A's retry stuck in an uninterruptible request (10 minutes) holds the coordinator far past replyTimeout 1 minute"
        )
      }).pipe(Effect.ensuring(TestClock.adjust("1 hour")), Effect.provide(retryStuck), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})
