/**
 * Review 5: the retried reply request of cdfd735 (`retryRequest`: idle wait, then the request in
 * a fiber of its own tracked as `coordinator.step`, bounded by `bounded`, raced against the
 * close of every owner). These pass: C2 holds in the retry's forked fiber (nothing yields or
 * suspends between the idle check and the request, probed by a session that turns busy at the
 * next microtask after each idle check), port answers of every shape are retried, a late retry
 * is reported once, and a retry in any state ends with the close of its toolsets, its request
 * stopped (or waited for when uninterruptible), no fiber left.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, References, Schedule, Scope, Stream } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import type { ToolsetEvent } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { captureLogs, makeFiberCounter, namedCallIds, whileClockRuns } from "./support/reliability.ts"
import { promptlyLong as promptly, settleLong } from "./support/review2.ts"
import { sessionError, wrappedSession, yieldSettings } from "./support/review3.ts"

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

const record = (toolset: AsyncToolset.AsyncToolset) => toolset.events.pipe(Stream.runCollect, Effect.forkChild({ startImmediately: true }))
const replyEvents = (events: ReadonlyArray<ToolsetEvent.ToolsetEvent>) =>
  events.flatMap((e) =>
    e._tag === "ReplyDelivered" ? [`delivered ${e.callIds.join(",")}`] : e._tag === "ReplySkipped" ? [`skipped ${e.callIds.join(",")} ${e.reason}`] : []
  )
const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 10 }))

describe("Review5: C2 in the retried request's fiber", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`the session turns busy at the microtask after every idle check; the first request fails: no request (first or retried) is made while busy (MaxOpsBeforeYield ${maxOps})`, () => {
      let controls: TestSession.TestSession["Service"] | undefined
      let n = 0
      const layer = wrappedSession((session) => ({
        awaitInactive: Effect.tap(session.awaitInactive, () => Effect.sync(() => queueMicrotask(() => Effect.runSync(controls!.setBusy)))),
        generateReply: (r) => Effect.andThen(session.generateReply(r), Effect.suspend(() => ++n === 1 ? Effect.fail(sessionError("first")) : Effect.void))
      }))
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        controls = session
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
        yield* execute(toolset, "c1", "job")
        for (let i = 0; i < 8; i++) {
          yield* session.setIdle
          yield* TestClock.adjust("1 second")
          yield* settleLong
        }
        const replies = yield* session.replies
        assert.deepStrictEqual(replies.map((r) => namedCallIds(r.instructions)), [["c1_final"], ["c1_final"]])
        assert.deepStrictEqual(replies.map((r) => r.whileBusy), [false, false])
        yield* session.setIdle
      }).pipe(Effect.provide(layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})

describe("Review5: port answers of every shape in the retry", () => {
  for (const op of ["awaitInactive", "generateReply"] as const) {
    for (const shape of ["typed failure", "defect", "interrupt cause"] as const) {
      for (const maxOps of yieldSettings) {
        // A defect of the session's idle wait (a broken adapter) is reported at error level; the
        // reply is still asked for again and made once.
        const reportsDefect = op === "awaitInactive" && shape === "defect"
        it.effect(`the first request fails, the retry's ${op} answers with a ${shape}: retried, one ReplyDelivered, ${reportsDefect ? "the defect reported once" : "nothing at error level"} (MaxOpsBeforeYield ${maxOps})`, () => {
          const logs = captureLogs()
          let waits = 0
          let asks = 0
          const fault = shape === "typed failure"
            ? Effect.fail(sessionError("injected"))
            : shape === "defect"
            ? Effect.die(new Error("boom"))
            : Effect.failCause(Cause.interrupt(123))
          const layer = wrappedSession((session) => ({
            // The port's type says the idle wait does not fail; a port may all the same (E9).
            awaitInactive: Effect.suspend(() => ++waits === 2 && op === "awaitInactive" ? (fault as Effect.Effect<never>) : session.awaitInactive),
            generateReply: (r) =>
              Effect.suspend(() => {
                const k = ++asks
                if (k === 1) return Effect.andThen(session.generateReply(r), Effect.fail(sessionError("first")))
                if (k === 2 && op === "generateReply") return Effect.andThen(session.generateReply(r), fault)
                return session.generateReply(r)
              })
          }))
          return Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
            const events = yield* record(a)
            yield* execute(a, "a1", "job")
            yield* TestClock.adjust("1 second")
            yield* settleLong
            yield* whileClockRuns(a.awaitIdle, { what: "awaitIdle" })
            const named = (yield* session.replies).map((r) => namedCallIds(r.instructions))
            assert.deepStrictEqual(named, op === "generateReply" ? [["a1_final"], ["a1_final"], ["a1_final"]] : [["a1_final"], ["a1_final"]])
            yield* a.close
            assert.deepStrictEqual(replyEvents(yield* Fiber.join(events)), ["delivered a1_final"])
            assert.deepStrictEqual(
              logs.find(["Error"], "a1_final").map((l) => l.text),
              reportsDefect ? ["the session failed while the reply for a1_final was prepared; trying again"] : []
            )
          }).pipe(Effect.provide(layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
        })
      }
    }
  }
})

/** The first request fails; the second hangs (`shape`) for 10 minutes, then succeeds; later ones answer at once. */
const secondHangs = (shape: "interruptible" | "uninterruptible", state: { n: number; interrupted: number; ended: number }) =>
  wrappedSession((session) => ({
    generateReply: (r) =>
      Effect.suspend(() => {
        const k = ++state.n
        if (k === 1) return Effect.andThen(session.generateReply(r), Effect.fail(sessionError("first")))
        if (k === 2) {
          const hang = Effect.andThen(session.generateReply(r), Effect.sleep("10 minutes")).pipe(
            Effect.onInterrupt(() => Effect.sync(() => void state.interrupted++)),
            Effect.ensuring(Effect.sync(() => void state.ended++))
          )
          return shape === "uninterruptible" ? Effect.uninterruptible(hang) : hang
        }
        return session.generateReply(r)
      })
  }))

describe("Review5: a retried request in flight", () => {
  for (const shape of ["interruptible", "uninterruptible"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`A's retried request hangs (${shape}), A closes (D open): A's close at once, the request stopped, D answered, nothing reported for a1_final, D's close waits for it, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        const fibers = makeFiberCounter()
        const state = { n: 0, interrupted: 0, ended: 0 }
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scopeA = yield* Scope.make()
          const scopeD = yield* Scope.make()
          const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "5 minutes" }).pipe(Scope.provide(scopeA))
          const d = yield* AsyncToolset.make({ id: "d", tools: [job], sessionRetry: retry, replyTimeout: "5 minutes" }).pipe(Scope.provide(scopeD))
          const eventsD = yield* record(d)
          yield* execute(a, "a1", "job")
          yield* TestClock.adjust("1 second") // a1_final; its request fails
          yield* settleLong
          yield* TestClock.adjust("1 second") // the retry: hangs
          yield* settleLong
          assert.strictEqual(state.n, 2)
          yield* promptly(Scope.close(scopeA, Exit.void), "A's close")
          yield* settleLong
          if (shape === "interruptible") assert.strictEqual(state.interrupted, 1, "the retried request for closed A was not stopped")
          yield* execute(d, "d1", "job")
          yield* TestClock.adjust("1 second")
          yield* settleLong
          yield* TestClock.adjust("1 second")
          yield* settleLong
          assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["a1_final"], ["a1_final"], ["d1_final"]])
          yield* promptly(d.awaitIdle, "D's awaitIdle")
          assert.deepStrictEqual(logs.find(["Error", "Warn"], "a1_final").map((l) => l.text), [])
          const closeD = yield* Effect.forkDetach(Scope.close(scopeD, Exit.void), { startImmediately: true })
          yield* whileClockRuns(Fiber.join(closeD), { what: "D's close", step: "1 minute", steps: 20 })
          assert.deepStrictEqual(replyEvents(yield* Fiber.join(eventsD)), ["delivered d1_final"])
          assert.strictEqual(state.ended, 1)
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
        })).pipe(Effect.provide(secondHangs(shape, state)), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })

      it.effect(`A's retried request hangs (${shape}) past replyTimeout 1 minute: given up once (ReplySkipped session-failed), awaitIdle returns, no ReplyDelivered when it ends, no fiber left after close (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        const state = { n: 0, interrupted: 0, ended: 0 }
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scope = yield* Scope.make()
          const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" }).pipe(Scope.provide(scope))
          const events = yield* record(a)
          yield* execute(a, "a1", "job")
          yield* TestClock.adjust("1 second")
          yield* settleLong
          yield* whileClockRuns(a.awaitIdle, { what: "awaitIdle", steps: 120 })
          yield* TestClock.adjust("15 minutes")
          yield* settleLong
          assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["a1_final"], ["a1_final"]])
          assert.strictEqual(state.ended, 1)
          yield* promptly(Scope.close(scope, Exit.void), "close")
          assert.deepStrictEqual(replyEvents(yield* Fiber.join(events)), ["skipped a1_final session-failed"])
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
        })).pipe(Effect.provide(secondHangs(shape, state)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})

describe("Review5: the last toolset closes while its request is retried", () => {
  for (const where of ["in the retry's pause", "in the retry's wait for idle", "in the retried request (hanging)"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`close ${where}: at once, no fiber left, nothing asked afterwards, no reply event, nothing reported for a1_final (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        const logs = captureLogs()
        let n = 0
        const layer = wrappedSession((session) => ({
          generateReply: (r) =>
            Effect.suspend(() =>
              ++n === 1
                ? Effect.andThen(session.generateReply(r), Effect.fail(sessionError("first")))
                : Effect.andThen(session.generateReply(r), Effect.never)
            )
        }))
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scope = yield* Scope.make()
          const a = yield* AsyncToolset.make({
            id: "a",
            tools: [job],
            sessionRetry: Schedule.spaced("30 seconds").pipe(Schedule.upTo({ times: 3 })),
            replyTimeout: "5 minutes"
          }).pipe(Scope.provide(scope))
          const events = yield* record(a)
          yield* execute(a, "a1", "job")
          yield* TestClock.adjust("1 second") // a1_final; its request fails: retried in 30 s
          yield* settleLong
          if (where === "in the retry's wait for idle") yield* session.setBusy
          if (where !== "in the retry's pause") {
            yield* TestClock.adjust("30 seconds")
            yield* settleLong
          }
          assert.strictEqual(n, where === "in the retried request (hanging)" ? 2 : 1)
          yield* promptly(Scope.close(scope, Exit.void), "close")
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
          yield* session.setIdle
          yield* TestClock.adjust("10 minutes")
          yield* settleLong
          assert.strictEqual(n, where === "in the retried request (hanging)" ? 2 : 1)
          assert.deepStrictEqual(replyEvents(yield* Fiber.join(events)), [])
          assert.deepStrictEqual(logs.find(["Error", "Warn"], "a1_final").map((l) => l.text), [])
        })).pipe(Effect.provide(layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})
