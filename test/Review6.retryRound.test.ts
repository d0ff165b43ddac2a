/**
 * Review 6: `retryRound` (0163a04) prepares the whole round again per attempt. An attempt takes
 * what arrived meanwhile into the batch; if that attempt then fails before it asks (the idle wait
 * fails, or the chat read does not answer within replyTimeout), the retry ends with `giveUp`,
 * which reports `coordinator.request.ready`: the request decided by an EARLIER attempt. Items
 * taken by the later attempts are settled without a log line or a ReplySkipped event (lost
 * silently: "never loses queued items silently").
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, References, Schedule, Stream } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import type { ToolsetEvent } from "effect-async-toolset"
import { execute } from "./support/lifetime.ts"
import { captureLogs, whileClockRuns } from "./support/reliability.ts"
import { settleLong } from "./support/review2.ts"
import { sessionError, wrappedSession, yieldSettings } from "./support/review3.ts"

const job = FunctionTool.make("job", { description: "Reports, then ends in 1 s", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))
const quick = FunctionTool.make("quick", { description: "Reports, then ends in 0.5 s", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("500 millis")
    return "done"
  }))

const record = (toolset: AsyncToolset.AsyncToolset) => toolset.events.pipe(Stream.runCollect, Effect.forkChild({ startImmediately: true }))
const replyEvents = (events: ReadonlyArray<ToolsetEvent.ToolsetEvent>) =>
  events.flatMap((e) =>
    e._tag === "ReplyDelivered" ? [`delivered ${e.callIds.join(",")}`] : e._tag === "ReplySkipped" ? [`skipped ${e.callIds.join(",")} ${e.reason}`] : []
  )

describe("Review6: an item taken by a retry attempt that fails before it asks", () => {
  for (const how of ["the idle wait dies", "the chat read hangs past replyTimeout"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`a1_final's request fails; a2_final arrives during the retry pause; then ${how} in every attempt: a2_final is reported (ReplySkipped session-failed or an error line), not settled silently (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        const state = { broken: false, asks: 0 }
        const layer = wrappedSession((session) => ({
          awaitInactive: Effect.suspend(() =>
            state.broken && how === "the idle wait dies" ? Effect.die(new Error("injected idle-wait defect")) : session.awaitInactive
          ),
          items: Effect.suspend(() => state.broken && how === "the chat read hangs past replyTimeout" ? Effect.never : session.items),
          generateReply: (r) =>
            Effect.andThen(session.generateReply(r), Effect.suspend(() => ++state.asks === 1 ? Effect.fail(sessionError("first")) : Effect.void))
        }))
        return Effect.gen(function*() {
          const a = yield* AsyncToolset.make({
            id: "a",
            tools: [job, quick],
            sessionRetry: Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 2 })),
            replyTimeout: "1 minute"
          })
          const events = yield* record(a)
          yield* execute(a, "a1", "job")
          yield* TestClock.adjust("1 second") // a1_final; its request fails: the retry waits 1 s
          yield* settleLong
          assert.strictEqual(state.asks, 1)
          state.broken = true
          yield* execute(a, "a2", "quick")
          yield* TestClock.adjust("500 millis") // a2_final arrives while the retry pauses
          yield* settleLong
          yield* whileClockRuns(a.awaitIdle, { what: "awaitIdle", step: "1 second", steps: 400 })
          assert.strictEqual(state.asks, 1)
          yield* a.close
          const told = replyEvents(yield* Fiber.join(events))
          const errorsA2 = logs.find(["Error", "Warn"], "a2_final").map((l) => l.text)
          assert.deepStrictEqual(
            { a2Reported: told.some((e) => e.includes("a2_final")) || errorsA2.length > 0 },
            { a2Reported: true },
            `a2_final (taken by a retry attempt) was settled silently; events: ${JSON.stringify(told)}`
          )
        }).pipe(Effect.provide(layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})
