/**
 * Review 4: `retryRequest` (000e376 asks only about the items of toolsets still open, nothing when
 * none is left).
 *
 * - Its time bound (`timeoutOption(replyTimeout)` around the retries) counts the waits for the
 *   session to be inactive, which the step's bound no longer counts (000e376, item 3): one failed
 *   request and a user who talks longer than `replyTimeout` lose the reply.
 * - When every toolset the request was for has closed (another toolset keeps the coordinator), the
 *   round does not end: it waits for the retry schedule and for idle to ask nothing, holding the
 *   other toolset's results, and, if that takes longer than `replyTimeout`, reports at error level
 *   that the closed toolset's reply "could not be requested".
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, References, Schedule, Scope, Stream } from "effect"
import type { Duration } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import type { ToolsetEvent } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { captureLogs, makeFiberCounter, namedCallIds, reported, whileClockRuns } from "./support/reliability.ts"
import { promptlyLong as promptly, settleLong } from "./support/review2.ts"
import { sessionError, wrappedSession, yieldSettings } from "./support/review3.ts"

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

/** Reply requests fail while `failing()` says so (each is recorded by the in-memory session first). */
const failingWhile = (failing: (n: number) => boolean) =>
  wrappedSession((session) => {
    let n = 0
    return {
      generateReply: (request) =>
        Effect.andThen(session.generateReply(request), Effect.suspend(() => failing(++n) ? Effect.fail(sessionError(`injected fail ${n}`)) : Effect.void))
    }
  })

const record = (toolset: AsyncToolset.AsyncToolset) => toolset.events.pipe(Stream.runCollect, Effect.forkChild({ startImmediately: true }))

const replyEvents = (events: ReadonlyArray<ToolsetEvent.ToolsetEvent>) =>
  events.flatMap((e) =>
    e._tag === "ReplyDelivered" ? [`delivered ${e.callIds.join(",")}`] : e._tag === "ReplySkipped" ? [`skipped ${e.callIds.join(",")} ${e.reason}`] : []
  )

const advance = (times: number, step: Duration.Input) =>
  Effect.gen(function*() {
    for (let i = 0; i < times; i++) {
      yield* TestClock.adjust(step)
      yield* settleLong
    }
  })

describe("Review4: the retry's time bound counts the waits for idle", () => {
  for (const busyFor of ["70 seconds", "3 minutes"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`the first request for c1_final fails, then the user talks for ${busyFor} (replyTimeout 1 minute, retry every second): the reply is requested once idle, not given up (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* AsyncToolset.make({
            id: "t",
            tools: [job],
            sessionRetry: Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 1000 })),
            replyTimeout: "1 minute"
          })
          yield* execute(toolset, "c1", "job")
          yield* TestClock.adjust("1 second") // c1_final; its request fails at once
          yield* settleLong
          assert.strictEqual((yield* session.replies).length, 1)
          yield* session.setBusy // the user starts talking before the retry
          yield* advance(busyFor === "70 seconds" ? 70 : 180, "1 second")
          assert.strictEqual((yield* session.replies).length, 1, "no request while the session is busy")
          yield* session.setIdle
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          const after = (yield* session.replies).slice(1)
          assert.deepStrictEqual(after.map((r) => namedCallIds(r.instructions)), [["c1_final"]], "c1_final was never asked about again")
          assert.isFalse(after.some((r) => r.whileBusy))
          assert.deepStrictEqual(logs.find(reported, "could not be requested").map((l) => l.text), [], "the reply was given up while the session was merely busy")
        }).pipe(Effect.provide(failingWhile((n) => n === 1)), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})

describe("Review4: a retried request whose every toolset closed, another toolset keeping the coordinator", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`A's request fails, A closes, the session stays busy past replyTimeout: nothing reports a1_final at error level after A's close (MaxOpsBeforeYield ${maxOps})`, () => {
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 1000 }))
        const scopeA = yield* Scope.make()
        const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" }).pipe(Scope.provide(scopeA))
        const d = yield* AsyncToolset.make({ id: "d", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
        const eventsD = yield* record(d)
        yield* execute(a, "a1", "job")
        yield* TestClock.adjust("1 second") // a1_final; its request fails
        yield* settleLong
        yield* session.setBusy
        yield* promptly(Scope.close(scopeA, Exit.void), "A's close")
        const mark = logs.lines.length
        yield* advance(90, "1 second")
        yield* session.setIdle
        yield* whileClockRuns(d.awaitIdle, { what: "D's awaitIdle" })
        yield* advance(5, "1 second")
        const late = logs.findSince(mark, ["Error"], "a1_final")
        assert.deepStrictEqual(late.map((l) => l.text), [], "A's close said no reply would be requested; the coordinator then reported it as failed")
        assert.deepStrictEqual((yield* session.replies).slice(1).map((r) => r.instructions), [])
        yield* d.close
        assert.deepStrictEqual(replyEvents(yield* Fiber.join(eventsD)), [])
      }).pipe(Effect.provide(failingWhile(() => true)), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })

    it.effect(`A's request fails (retry in 30 s), A closes, D's result arrives: D's reply is requested at once, not after A's retry period (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const retry = Schedule.spaced("30 seconds").pipe(Schedule.upTo({ times: 5 }))
        const scopeA = yield* Scope.make()
        const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "5 minutes" }).pipe(Scope.provide(scopeA))
        const d = yield* AsyncToolset.make({ id: "d", tools: [job], sessionRetry: retry, replyTimeout: "5 minutes" })
        yield* execute(a, "a1", "job")
        yield* TestClock.adjust("1 second") // a1_final; its request fails: retried in 30 s
        yield* settleLong
        yield* promptly(Scope.close(scopeA, Exit.void), "A's close") // nothing is left to retry
        yield* execute(d, "d1", "job")
        yield* advance(4, "1 second") // d1_final at 2 s
        const named = (yield* session.replies).flatMap((r) => namedCallIds(r.instructions))
        assert.include(named, "d1_final", "D's reply waits for the retry of a request nobody is left to ask about")
        yield* whileClockRuns(d.awaitIdle, { what: "D's awaitIdle" })
        yield* d.close
      }).pipe(Effect.provide(failingWhile((n) => n === 1)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

    it.effect(`A, B, C's request fails; A, then B close between retries: the retry names only c1_final, C is told so once, A's and B's counts and events stay quiet, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
      const fibers = makeFiberCounter()
      return fibers.track(Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 10 }))
        const scopes = [yield* Scope.make(), yield* Scope.make(), yield* Scope.make()] as const
        const [a, b, c] = yield* Effect.forEach(["a", "b", "c"] as const, (id, i) =>
          AsyncToolset.make({ id, tools: [job], sessionRetry: retry, replyTimeout: "1 hour" }).pipe(Scope.provide(scopes[i]!)))
        const events = yield* Effect.forEach([a!, b!, c!], record)
        yield* execute(a!, "a1", "job")
        yield* execute(b!, "b1", "job")
        yield* execute(c!, "c1", "job")
        yield* session.setBusy // the three finals join one request
        yield* TestClock.adjust("1 second")
        yield* settleLong
        yield* session.setIdle // one request, which fails (and the next one)
        yield* settleLong
        const first = (yield* session.replies).map((r) => namedCallIds(r.instructions))
        assert.deepStrictEqual(first, [["a1_final", "b1_final", "c1_final"]])
        yield* promptly(Scope.close(scopes[0], Exit.void), "A's close")
        yield* advance(1, "1 second") // a retry for b and c, which fails
        yield* promptly(Scope.close(scopes[1], Exit.void), "B's close")
        yield* advance(3, "1 second")
        yield* whileClockRuns(c!.awaitIdle, { what: "C's awaitIdle" })
        const all = (yield* session.replies).map((r) => namedCallIds(r.instructions))
        assert.deepStrictEqual(all, [["a1_final", "b1_final", "c1_final"], ["b1_final", "c1_final"], ["c1_final"]])
        yield* promptly(Scope.close(scopes[2], Exit.void), "C's close")
        const lines = yield* Effect.forEach(events, (e) => Effect.map(Fiber.join(e), replyEvents))
        assert.deepStrictEqual(lines, [[], [], ["delivered c1_final"]])
        yield* settleLong
        assert.strictEqual(fibers.active, 0)
      })).pipe(Effect.provide(failingWhile((n) => n <= 2)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})
