/**
 * Review 3: the request step's time bound. `slowRequest` waits for the step in periods of
 * `replyTimeout`, starting a new period whenever one ends while the step waits for the session to
 * be inactive (`coordinator.waiting`). The period does not restart when the wait ends: a request
 * made late in a period gets only what is left of it. A reply request that answers well within
 * `replyTimeout` is given up and reported as failed when the session was busy for a while before.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Layer, References } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { captureLogs, reported, whileClockRuns } from "./support/reliability.ts"
import { settleLong } from "./support/review2.ts"
import { yieldSettings } from "./support/review3.ts"

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

describe("Review3: a reply request made late in a replyTimeout period", () => {
  for (const busyFor of ["59500 millis", "119 seconds"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`the session is busy for ${busyFor}, then the request takes 5 s (replyTimeout 1 minute): the reply is not given up (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], replyTimeout: "1 minute" })
          yield* execute(toolset, "c1", "job")
          yield* session.setBusy
          yield* TestClock.adjust("1 second") // c1_final; the step waits for the session to be inactive
          yield* settleLong
          yield* TestClock.adjust(busyFor)
          yield* settleLong
          yield* session.setIdle // the request goes; it answers 5 s later
          yield* settleLong
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          assert.strictEqual((yield* session.replies).length, 1)
          const givenUp = logs.find(reported, "could not be requested")
          assert.deepStrictEqual(givenUp.map((l) => l.text), [], "a request answering in 5 s was given up (replyTimeout 1 minute)")
        }).pipe(
          Effect.provide(TestSession.layerWith({ onReply: () => Effect.sleep("5 seconds") })),
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

describe("Review3: a reply request made late in a replyTimeout period, after the step read the chat again", () => {
  for (const lateBy of ["500 millis", "4 seconds"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`busy, idle (the step reads again), busy again while it reads, idle ${lateBy} before the period ends; the request takes 5 s (replyTimeout 1 minute): the reply is not given up (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], replyTimeout: "1 minute" })
          yield* execute(toolset, "c1", "job")
          yield* session.setBusy
          yield* TestClock.adjust("1 second") // t=1 c1_final: the step reads the chat (100 ms), then waits for idle
          yield* settleLong
          yield* TestClock.adjust("29 seconds") // t=30
          yield* session.setIdle // the step reads the chat again (a new step, whose period starts now)
          yield* settleLong
          yield* TestClock.adjust("50 millis")
          yield* session.setBusy // the user speaks while it reads: it waits for idle again
          yield* settleLong
          yield* TestClock.adjust("50 millis")
          yield* settleLong
          yield* TestClock.adjust(Duration.subtract(Duration.seconds(60), Duration.sum(Duration.millis(100), Duration.fromInputUnsafe(lateBy))))
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
          Effect.provide(asyncReads),
          Effect.provide(logs.layer),
          Effect.provideService(References.MaxOpsBeforeYield, maxOps)
        )
      })
    }
  }
})
