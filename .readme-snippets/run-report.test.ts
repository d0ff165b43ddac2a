// file: run-report.test.ts
import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"

const runReport = FunctionTool.make("run_report", {
  description: "Build the sales report for a quarter",
  parameters: Schema.Struct({ quarter: Schema.String })
}, ({ quarter }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Collecting ${quarter} sales`)
    yield* Effect.sleep("1 minute")
    return `Report for ${quarter} is ready`
  }))

describe("run_report", () => {
  it.effect("answers at once, and reports the result once the agent is idle", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* AsyncToolset.make({ id: "reports", tools: [runReport] })
      const call = yield* ChatContext.functionCall({ callId: "c1", name: "run_report", arguments: `{"quarter":"Q3"}` })

      const first = yield* toolset.execute(call)
      assert.include(first.output, "Collecting Q3 sales")
      assert.isTrue(AsyncToolset.isPending(first))

      yield* session.setBusy // the agent is talking
      yield* TestClock.adjust("1 minute") // the report finishes meanwhile
      assert.strictEqual((yield* session.replies).length, 0) // nobody is interrupted

      yield* session.setIdle
      yield* toolset.awaitIdle
      const replies = yield* session.replies
      assert.strictEqual(replies.length, 1)
      assert.include(replies[0]!.instructions, "c1_final")
      assert.strictEqual(replies[0]!.toolChoice, "none")
    }).pipe(Effect.provide(TestSession.layer)))
})
