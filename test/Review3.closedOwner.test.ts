/**
 * Review 3: a toolset that closes while the coordinator retries a failed reply request for its
 * items. Its close takes its items back and reports "no reply will be requested for a1_final
 * (they are in the chat)"; the coordinator (kept alive by another toolset of the session) asks
 * for that reply all the same, naming the closed toolset's call ids.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, References, Schedule, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { makeFiberCounter, namedCallIds } from "./support/reliability.ts"
import { settleLong } from "./support/review2.ts"
import { sessionError, wrappedSession, yieldSettings } from "./support/review3.ts"

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

/** The session's first `failures` reply requests fail (each is recorded by the in-memory session). */
const failingReplies = (failures: number) =>
  wrappedSession((session) => {
    let n = 0
    return {
      generateReply: (request) =>
        Effect.andThen(session.generateReply(request), Effect.suspend(() => ++n <= failures ? Effect.fail(sessionError(`injected fail ${n}`)) : Effect.void))
    }
  })

describe("Review3: a toolset closed while its reply request is retried", () => {
  for (const failures of [1, 3] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`retryRequest asks for a closed toolset's items: no reply names a1_final once A closed (${failures} failed requests, MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scopeA = yield* Scope.make()
          const scopeB = yield* Scope.make()
          const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 5 }))
          const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 hour" }).pipe(Scope.provide(scopeA))
          yield* AsyncToolset.make({ id: "b", tools: [job], sessionRetry: retry, replyTimeout: "1 hour" }).pipe(Scope.provide(scopeB))
          yield* execute(a, "a1", "job")
          yield* TestClock.adjust("1 second") // a1_final inserted; its reply request fails: retried in 1 s
          yield* settleLong
          const before = (yield* session.replies).length
          assert.isAtLeast(before, 1, "the first reply request was made")
          yield* Scope.close(scopeA, Exit.void) // "closing: no reply will be requested for a1_final"
          yield* settleLong
          for (let i = 0; i < 10; i++) {
            yield* TestClock.adjust("1 second")
            yield* settleLong
          }
          const after = (yield* session.replies).slice(before)
          const forA = after.filter((r) => namedCallIds(r.instructions).includes("a1_final"))
          assert.strictEqual(forA.length, 0, `reply requests after A closed: ${JSON.stringify(after.map((r) => r.instructions))}`)
          yield* Scope.close(scopeB, Exit.void)
        }).pipe(Effect.provide(failingReplies(failures)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }
  }

  for (const maxOps of yieldSettings) {
    it.effect(`A and B close in turn during the retry: close returns, no fiber left, nothing asked after the last close (MaxOpsBeforeYield ${maxOps})`, () => {
      const fibers = makeFiberCounter()
      return fibers.track(Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const scopeA = yield* Scope.make()
        const scopeB = yield* Scope.make()
        const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 5 }))
        const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 hour" }).pipe(Scope.provide(scopeA))
        const b = yield* AsyncToolset.make({ id: "b", tools: [job], sessionRetry: retry, replyTimeout: "1 hour" }).pipe(Scope.provide(scopeB))
        yield* execute(a, "a1", "job")
        yield* execute(b, "b1", "job")
        yield* TestClock.adjust("1 second")
        yield* settleLong
        yield* Scope.close(scopeB, Exit.void)
        yield* TestClock.adjust("1 second")
        yield* settleLong
        yield* Scope.close(scopeA, Exit.void)
        const count = (yield* session.replies).length
        yield* TestClock.adjust("10 seconds")
        yield* settleLong
        assert.strictEqual((yield* session.replies).length, count, "a reply was requested after every toolset closed")
        assert.strictEqual(fibers.active, 0, "a fiber outlived both closes")
      })).pipe(Effect.provide(failingReplies(100)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})
