/**
 * C4e: `replyTimeout` bounds how long the session takes to take a reply request up (its chat
 * read and the request itself), counted from when the wait for the session to be inactive ends;
 * never the waits for idle, in the first attempt or in a retry. A request that answers well within
 * `replyTimeout` is never given up, however long the session was busy before; a request that hangs
 * is given up exactly `replyTimeout` after the wait ended, even inside an uninterruptible port
 * operation, and the other toolsets of the session are not held up by it.
 */
import { assert, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Fiber, Layer, References, Schedule, Scope } from "effect"
import { AgentSession } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { captureLogs, makeFiberCounter, namedCallIds, reported, whileClockRuns } from "../support/reliability.ts"
import { sessionError, wrappedSession } from "../support/reliability.ts"
import { failingWhile, recordEvents as record, replyEvents, reportingJob as job } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"
import { promptlyLong as promptly, settleLong, yieldsFor } from "../support/schedules.ts"

/** The reply names of the requests made so far. */
const named = (session: TestSession.TestSession["Service"]) =>
  Effect.map(session.replies, (replies) => replies.flatMap((r) => namedCallIds(r.instructions)))

forEachKind("C4e a reply request made late in a replyTimeout period", (kind) => {
  for (const busyFor of ["59500 millis", "119 seconds"] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`the session is busy for ${busyFor}, then the request takes 5 s (replyTimeout 1 minute): the reply is not given up (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* kind.make({ id: "t", tools: [job], replyTimeout: "1 minute" })
          yield* execute(toolset, "c1", "job")
          yield* session.setBusy
          yield* kind.advance("1 second") // c1_final; the step waits for the session to be inactive
          yield* settleLong
          yield* kind.advance(busyFor)
          yield* settleLong
          yield* session.setIdle // the request goes; it answers 5 s later
          yield* settleLong
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          assert.strictEqual((yield* session.replies).length, 1)
          const givenUp = logs.find(reported, "could not be requested")
          assert.deepStrictEqual(givenUp.map((l) => l.text), [], "a request answering in 5 s was given up (replyTimeout 1 minute)")
        }).pipe(
          kind.provide(TestSession.layerWith({ onReply: () => Effect.sleep("5 seconds") })),
          Effect.provide(logs.layer),
          Effect.provideService(References.MaxOpsBeforeYield, maxOps)
        )
      })
    }
  }
})

/**
 * A session that reads its chat asynchronously (100 ms) and records each reply request, which the
 * agent answers 5 s later.
 */
const asyncReads = Layer.effectContext(Effect.map(TestSession.make({ onReply: () => Effect.sleep("5 seconds") }), ({ controls, session }) =>
  Context.make(AgentSession.AgentSession, AgentSession.AgentSession.of({ ...session, items: Effect.andThen(Effect.sleep("100 millis"), session.items) }))
    .pipe(Context.add(TestSession.TestSession, controls))))

forEachKind("C4e a reply request made late in a replyTimeout period, after the step read the chat again", (kind) => {
  for (const lateBy of ["500 millis", "4 seconds"] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`busy, idle (the step reads again), busy again while it reads, idle ${lateBy} before the period ends; the request takes 5 s (replyTimeout 1 minute): the reply is not given up (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* kind.make({ id: "t", tools: [job], replyTimeout: "1 minute" })
          yield* execute(toolset, "c1", "job")
          yield* session.setBusy
          yield* kind.advance("1 second") // t=1 c1_final: the step reads the chat (100 ms), then waits for idle
          yield* settleLong
          yield* kind.advance("29 seconds") // t=30
          yield* session.setIdle // the step reads the chat again (a new step, whose period starts now)
          yield* settleLong
          yield* kind.advance("50 millis")
          yield* session.setBusy // the user speaks while it reads: it waits for idle again
          yield* settleLong
          yield* kind.advance("50 millis")
          yield* settleLong
          yield* kind.advance(Duration.subtract(Duration.seconds(60), Duration.sum(Duration.millis(100), Duration.fromInputUnsafe(lateBy))))
          yield* settleLong
          assert.strictEqual((yield* session.replies).length, 0, "no reply while busy")
          yield* session.setIdle // the request goes, late in the period; it answers in 5 s
          yield* settleLong
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
          const replies = yield* session.replies
          assert.strictEqual(replies.length, 1)
          assert.isFalse(replies[0]!.whileBusy)
          const givenUp = logs.find(reported, "could not be requested")
          assert.deepStrictEqual(givenUp.map((l) => l.text), [], "a request answering in 5 s was given up (replyTimeout 1 minute)")
        }).pipe(
          kind.provide(asyncReads),
          Effect.provide(logs.layer),
          Effect.provideService(References.MaxOpsBeforeYield, maxOps)
        )
      })
    }
  }
})

forEachKind("C4e the idle wait ends exactly when a replyTimeout period ends", (kind) => {
  for (const order of ["wake registered before the period's timer", "wake registered after the period's timer"] as const) {
    for (const periods of [1, 2] as const) {
      for (const maxOps of yieldsFor(kind)) {
        it.effect(`busy for exactly ${periods} period(s) (${order}), then the request hangs: given up at wait end + 1 minute, not before; close at once, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
          const logs = captureLogs()
          const fibers = makeFiberCounter()
          return fibers.track(Effect.gen(function*() {
            const test = yield* TestSession.TestSession
            const scope = yield* Scope.make()
            const toolset = yield* kind.make({ id: "t", tools: [job], replyTimeout: "1 minute" }).pipe(Scope.provide(scope))
            yield* execute(toolset, "c1", "job")
            yield* test.setBusy
            const idleAt = 1000 + periods * 60_000
            if (order === "wake registered before the period's timer") {
              // registered now (t = 0): wakes before the coordinator's timer of the same instant
              yield* Effect.forkDetach(Effect.andThen(Effect.sleep(idleAt), test.setIdle), { startImmediately: true })
            }
            yield* kind.advance("1 second") // c1_final: the step waits for idle; the period runs to 61 s
            yield* settleLong
            if (order === "wake registered after the period's timer") {
              yield* Effect.forkDetach(Effect.andThen(Effect.sleep(idleAt - 1000), test.setIdle), { startImmediately: true })
              yield* settleLong
            }
            yield* kind.advance(idleAt - 1000) // the wait ends exactly at a period's end; the request hangs
            yield* settleLong
            assert.strictEqual((yield* test.replies).length, 1, "the request was made once idle")
            yield* kind.advance("59 seconds")
            yield* settleLong
            assert.deepStrictEqual(logs.find(reported, "could not be requested").map((l) => l.text), [], "given up before replyTimeout")
            yield* kind.advance("2 seconds")
            yield* settleLong
            assert.strictEqual(logs.find(["Error"], "c1_final", "could not be requested").length, 1, "not given up replyTimeout after the wait ended")
            yield* promptly(Scope.close(scope, Exit.void), "close")
            yield* settleLong
            assert.strictEqual(fibers.active, 0)
          })).pipe(
            Effect.ensuring(kind.advance("1 day")),
            kind.provide(TestSession.layerWith({ onReply: () => Effect.never })),
            Effect.provide(logs.layer),
            Effect.provideService(References.MaxOpsBeforeYield, maxOps)
          )
        })
      }
    }
  }
})

forEachKind("C4e a replyTimeout shorter than the wait for idle", (kind) => {
  for (const timeout of ["0 millis", "10 millis"] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`replyTimeout ${timeout}, the session busy for 2 seconds, the request answers at once: the reply is requested once idle (the wait is not counted) (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* kind.make({ id: "t", tools: [job], replyTimeout: timeout })
          yield* execute(toolset, "c1", "job")
          yield* session.setBusy
          yield* kind.advance("1 second")
          yield* settleLong
          yield* kind.advance("2 seconds")
          yield* settleLong
          yield* session.setIdle
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "10 millis" })
          assert.strictEqual((yield* session.replies).length, 1, "no reply was requested")
          assert.deepStrictEqual(logs.find(reported, "could not be requested").map((l) => l.text), [])
        }).pipe(kind.provide(TestSession.layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})

forEachKind("C4e a retried request's waits for idle are not counted", (kind) => {
  /** Moves the clock `times` steps of `step`, letting everything run after each. */
  const advanceBy = (times: number, step: Duration.Input) =>
    Effect.gen(function*() {
      for (let i = 0; i < times; i++) {
        yield* kind.advance(step)
        yield* settleLong
      }
    })

  for (const busyFor of ["70 seconds", "3 minutes"] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`the first request for c1_final fails, then the user talks for ${busyFor} (replyTimeout 1 minute, retry every second): the reply is requested once idle, not given up (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* kind.make({
            id: "t",
            tools: [job],
            sessionRetry: Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 1000 })),
            replyTimeout: "1 minute"
          })
          yield* execute(toolset, "c1", "job")
          yield* kind.advance("1 second") // c1_final; its request fails at once
          yield* settleLong
          assert.strictEqual((yield* session.replies).length, 1)
          yield* session.setBusy // the user starts talking before the retry
          yield* advanceBy(busyFor === "70 seconds" ? 70 : 180, "1 second")
          assert.strictEqual((yield* session.replies).length, 1, "no request while the session is busy")
          yield* session.setIdle
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          const after = (yield* session.replies).slice(1)
          assert.deepStrictEqual(after.map((r) => namedCallIds(r.instructions)), [["c1_final"]], "c1_final was never asked about again")
          assert.isFalse(after.some((r) => r.whileBusy))
          assert.deepStrictEqual(logs.find(reported, "could not be requested").map((l) => l.text), [], "the reply was given up while the session was merely busy")
        }).pipe(kind.provide(failingWhile((n) => n === 1)), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
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

forEachKind("C4e a retried reply request stuck inside an uninterruptible port operation", (kind) => {
  for (const maxOps of yieldsFor(kind)) {
    it.effect(`A's request fails, its retry is stuck for 10 minutes (replyTimeout 1 minute): given up in time, B's result answered before the 10 minutes end (MaxOpsBeforeYield ${maxOps})`, () => {
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 5 }))
        const a = yield* kind.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
        const b = yield* kind.make({ id: "b", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
        yield* execute(a, "a1", "job")
        yield* kind.advance("1 second") // a1_final; its request fails
        yield* settleLong
        yield* kind.advance("1 second") // the retry: stuck
        yield* settleLong
        yield* execute(b, "b1", "job")
        for (let i = 0; i < 90; i++) {
          yield* kind.advance("1 second")
          yield* settleLong
        }
        const givenUp = logs.find(["Error"], "a1_final", "could not be requested").length > 0
        const answeredB = (yield* named(session)).includes("b1_final")
        assert.deepStrictEqual(
          { givenUp, answeredB },
          { givenUp: true, answeredB: true },
          "92 s in: A's retry stuck in an uninterruptible request (10 minutes) holds the coordinator far past replyTimeout 1 minute"
        )
      }).pipe(Effect.ensuring(kind.advance("1 hour")), kind.provide(retryStuck), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
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

forEachKind("C4e a retried request that hangs past replyTimeout", (kind) => {
  const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 10 }))
  for (const shape of ["interruptible", "uninterruptible"] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`A's retried request hangs (${shape}) past replyTimeout 1 minute: given up once (ReplySkipped session-failed), awaitIdle returns, no ReplyDelivered when it ends, no fiber left after close (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        const state = { n: 0, interrupted: 0, ended: 0 }
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scope = yield* Scope.make()
          const a = yield* kind.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" }).pipe(Scope.provide(scope))
          const events = yield* record(a)
          yield* execute(a, "a1", "job")
          yield* kind.advance("1 second")
          yield* settleLong
          yield* whileClockRuns(a.awaitIdle, { what: "awaitIdle", steps: 120 })
          yield* kind.advance("15 minutes")
          yield* settleLong
          assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["a1_final"], ["a1_final"]])
          assert.strictEqual(state.ended, 1)
          yield* promptly(Scope.close(scope, Exit.void), "close")
          assert.deepStrictEqual(replyEvents(yield* Fiber.join(events)), ["skipped a1_final session-failed"])
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
        })).pipe(kind.provide(secondHangs(shape, state)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})
