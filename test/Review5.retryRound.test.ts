/**
 * Review 5: `retryRequest` (src/internal/replyCoordinator.ts) asks again, after each wait for
 * idle, with the request decided before the first attempt. The step's own path, after its wait
 * for idle, takes what arrived meanwhile (`decide`: `take`) and reads the chat again when it
 * waited (`reread`, C4); the retry does neither:
 * - results that arrive while the retry waits for the session (C3: arriving while the agent is
 *   busy) get a reply of their own right after the retried one: two back-to-back replies;
 * - when the agent spoke after the items while the retry waited, the retry still asks with the
 *   "at tail" wording, and a toolset with `whenAlreadyAnswered: "skip"` still gets a reply (C4).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, References, Schedule, Stream } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool, Prompts } from "effect-async-toolset"
import type { ToolsetEvent } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { namedCallIds, whileClockRuns } from "./support/reliability.ts"
import { settleLong } from "./support/review2.ts"
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

/** Reply requests fail while `failing()` says so (each is recorded by the in-memory session first). */
const failingWhile = (failing: (n: number) => boolean) =>
  wrappedSession((session) => {
    let n = 0
    return {
      generateReply: (request) =>
        Effect.andThen(session.generateReply(request), Effect.suspend(() => failing(++n) ? Effect.fail(sessionError(`injected fail ${n}`)) : Effect.void))
    }
  })

const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 10 }))

describe("Review5: results that arrive while a retried request waits for idle", () => {
  for (const where of ["another toolset", "the same toolset"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`a1_final's request fails, the user talks, ${where}'s result arrives meanwhile: once idle, one reply names both (not two back-to-back replies) (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
          const b = where === "another toolset" ? yield* AsyncToolset.make({ id: "b", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" }) : a
          yield* execute(a, "a1", "job")
          yield* TestClock.adjust("1 second") // a1_final; its request fails at once
          yield* settleLong
          yield* session.setBusy // the user talks before the retry
          yield* execute(b, "b1", "job")
          for (let i = 0; i < 3; i++) {
            yield* TestClock.adjust("1 second") // b1_final arrives; the retry waits for idle
            yield* settleLong
          }
          assert.strictEqual((yield* session.replies).length, 1)
          yield* session.setIdle
          yield* whileClockRuns(Effect.andThen(a.awaitIdle, b.awaitIdle), { what: "awaitIdle" })
          const after = (yield* session.replies).slice(1).map((r) => namedCallIds(r.instructions))
          assert.deepStrictEqual(after, [["a1_final", "b1_final"]], "the retry asked about a1_final alone, then b1_final got a second reply right after it")
        }).pipe(Effect.provide(failingWhile((n) => n === 1)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }
  }
})

describe("Review5: the agent speaks while a retried request waits for idle", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`whenAlreadyAnswered "skip": a1_final's request fails, the agent tells the user while the session is busy: no second request, the toolset is told "already-answered" (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute", whenAlreadyAnswered: "skip" })
        const events = yield* record(a)
        yield* execute(a, "a1", "job")
        yield* TestClock.adjust("1 second") // a1_final; its request fails
        yield* settleLong
        yield* session.setBusy
        yield* TestClock.adjust("500 millis")
        yield* session.say("assistant", "Your job is done.") // the agent covers a1_final meanwhile
        yield* TestClock.adjust("2 seconds")
        yield* settleLong
        yield* session.setIdle
        yield* whileClockRuns(a.awaitIdle, { what: "awaitIdle" })
        assert.deepStrictEqual((yield* session.replies).slice(1).map((r) => r.instructions), [], "the retry asked for a reply the agent had already given")
        yield* a.close
        assert.deepStrictEqual(replyEvents(yield* Fiber.join(events)), ["skipped a1_final already-answered"])
      }).pipe(Effect.provide(failingWhile((n) => n === 1)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

    it.effect(`default "ask": a1_final's request fails, the agent tells the user while the session is busy: the retry uses the "maybe covered" wording (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
        yield* execute(a, "a1", "job")
        yield* TestClock.adjust("1 second")
        yield* settleLong
        yield* session.setBusy
        yield* TestClock.adjust("500 millis")
        yield* session.say("assistant", "Your job is done.")
        yield* TestClock.adjust("2 seconds")
        yield* settleLong
        yield* session.setIdle
        yield* whileClockRuns(a.awaitIdle, { what: "awaitIdle" })
        const after = (yield* session.replies).slice(1).map((r) => r.instructions)
        const maybeCovered = Prompts.render(Prompts.defaults.replyMaybeCovered, { pendingCallIds: "a1_final" })
        assert.deepStrictEqual(after, [maybeCovered], "the retry worded the reply as if nothing had been said since the items")
      }).pipe(Effect.provide(failingWhile((n) => n === 1)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
  }
})
