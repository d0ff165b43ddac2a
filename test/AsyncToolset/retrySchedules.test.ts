/**
 * C4c: each toolset retries a failed reply request by its own schedule, also when it shares the reply with a toolset that retries faster.
 */
import { assert, it } from "@effect/vitest"
import { Clock, Effect, Schedule } from "effect"
import { AgentSession, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { namedCallIds } from "../support/replies.ts"
import { forEachKind } from "../support/toolsets.ts"

const job = (name: string, seconds = 1) =>
  FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep(`${seconds} seconds`)
      return "done"
    }))

/** The session refuses every reply request until the clock reaches `until` ms. */
const downUntil = (until: number) =>
  TestSession.layerWith({
    onReply: () =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        now < until
          ? Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "down" }))
          : Effect.void)
  })

forEachKind("C4c each toolset retries by its own schedule", (kind) => {
  it.effect("alone: a patient toolset (retry every 10 s, twice) survives a 5 s outage", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const a = yield* kind.make({ id: "a", tools: [job("a_job")], sessionRetry: Schedule.spaced("10 seconds").pipe(Schedule.upTo({ times: 2 })) })
      yield* execute(a, "a1", "a_job")
      yield* kind.advance("30 seconds")
      yield* a.awaitIdle
      const ok = (yield* session.replies).filter((r) => r.whileBusy === false)
      const named = ok.flatMap((r) => namedCallIds(r.instructions))
      assert.include(named, "a1_final")
      // the last request (at >= 5 s) succeeded and named a1_final
      assert.include(namedCallIds((yield* session.replies).at(-1)!.instructions), "a1_final")
    }).pipe(kind.provide(downUntil(5_000))))

  it.effect("shared with an impatient-but-fast toolset: the patient toolset's items must still survive a 5 s outage (its schedule is not consumed by another's retries)", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const a = yield* kind.make({ id: "a", tools: [job("a_job")], sessionRetry: Schedule.spaced("10 seconds").pipe(Schedule.upTo({ times: 2 })) })
      const b = yield* kind.make({ id: "b", tools: [job("b_job")], sessionRetry: Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 100 })) })
      yield* execute(a, "a1", "a_job")
      yield* execute(b, "b1", "b_job")
      yield* kind.advance("30 seconds")
      yield* a.awaitIdle
      yield* b.awaitIdle
      const replies = yield* session.replies
      const last = replies.at(-1)!
      // the successful (last) request should name a1_final (alone, it would have been told)
      assert.include(namedCallIds(last.instructions), "a1_final", `requests: ${replies.length}; last names ${namedCallIds(last.instructions).join(",")}`)
    }).pipe(kind.provide(downUntil(5_000))))
})
