/**
 * Metrics: a user reads the exported metrics (`AsyncToolset.runningCalls`, `callsEnded`) with the
 * attributes the docs name (`toolset`, `tool`, `outcome`), and gets the series of that toolset's
 * calls.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Metric, References, Scope } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { whileClockRuns } from "../support/reliability.ts"
import { yieldsFor } from "../support/schedules.ts"
import { forEachKind } from "../support/toolsets.ts"

const job = FunctionTool.make("job", { description: "job", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

forEachKind("AsyncToolset metrics", (kind) => {
  describe("metrics read through the exported metrics", () => {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`runningCalls and callsEnded with the documented attributes count this toolset's calls (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const scope = yield* Scope.make()
          const toolset = yield* kind.make({ id: "metrics_t", tools: [job] }).pipe(Scope.provide(scope))
          const running = Metric.withAttributes(AsyncToolset.runningCalls, { toolset: "metrics_t" })
          const ended = Metric.withAttributes(AsyncToolset.callsEnded, { toolset: "metrics_t", tool: "job", outcome: "done" })
          const cancelled = Metric.withAttributes(AsyncToolset.callsEnded, { toolset: "metrics_t", tool: "job", outcome: "cancelled" })
          const endedBefore = (yield* Metric.value(ended)).count
          const cancelledBefore = (yield* Metric.value(cancelled)).count
          yield* execute(toolset, "c1", "job")
          yield* execute(toolset, "c2", "job")
          yield* execute(toolset, "c3", "job")
          assert.strictEqual((yield* Metric.value(running)).value, 3)
          yield* toolset.cancel("c3")
          yield* kind.advance("1 second")
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          assert.strictEqual((yield* Metric.value(running)).value, 0)
          assert.strictEqual((yield* Metric.value(ended)).count - endedBefore, 2)
          assert.strictEqual((yield* Metric.value(cancelled)).count - cancelledBefore, 1)
          yield* Scope.close(scope, Exit.void)
        }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }
  })
})
