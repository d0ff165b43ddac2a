/**
 * C4c under every fault shape: two toolsets with different `sessionRetry` schedules share a
 * session whose reply requests (or insertions) fail the first times in one shape (a typed
 * failure, a defect, an interrupt cause), under every yield budget. Each result is told once, in
 * a reply the session made; none is lost or told twice, and the chat has every call's output once.
 */
import { assert, it } from "@effect/vitest"
import { Effect, References, Schedule } from "effect"
import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { chatProblems, faultySession, namedCallIds, whileClockRuns } from "../support/reliability.ts"
import type { Fault } from "../support/reliability.ts"
import { yieldSettings } from "../support/schedules.ts"
import { forEachKind } from "../support/toolsets.ts"

const job = (name: string, seconds: number) =>
  FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep(`${seconds} seconds`)
      return "done"
    }))

const shapes: ReadonlyArray<Exclude<Fault, "ok" | "hang">> = ["fail", "die", "interrupt"]

forEachKind("C4c retries paced per toolset, every fault shape", (kind) => {
  for (const operation of ["generateReply", "insert"] as const) {
    for (const shape of shapes) {
      for (const maxOps of yieldSettings) {
        it.effect(`${operation} ${shape}s its first 3 attempts: every result told once (MaxOpsBeforeYield ${maxOps})`, () => {
          const plan = operation === "generateReply"
            ? { generateReply: (_: unknown, attempt: number): Fault => attempt <= 3 ? shape : "ok" }
            : { insert: (_: unknown, attempt: number): Fault => attempt <= 3 ? shape : "ok" }
          const faulty = faultySession(plan)
          return Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const a = yield* kind.make({ id: "a", tools: [job("a_job", 1)], sessionRetry: Schedule.spaced("3 seconds").pipe(Schedule.upTo({ times: 6 })) })
            const b = yield* kind.make({ id: "b", tools: [job("b_job", 1), job("b_late", 4)], sessionRetry: Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 60 })) })
            yield* execute(a, "a1", "a_job")
            yield* execute(b, "b1", "b_job")
            yield* execute(b, "b2", "b_late")
            yield* kind.advance("40 seconds")
            yield* whileClockRuns(Effect.andThen(a.awaitIdle, b.awaitIdle), { what: "awaitIdle" })
            const named = (yield* session.replies).flatMap((r) => namedCallIds(r.instructions))
            for (const id of ["a1_final", "b1_final", "b2_final"]) {
              assert.strictEqual(named.filter((n) => n === id).length, 1, `${id} told ${named.filter((n) => n === id).length} times: ${named.join(",")}`)
            }
            assert.deepStrictEqual(chatProblems(yield* session.chat), [])
          }).pipe(kind.provide(faulty.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
        })
      }
    }
  }
})
