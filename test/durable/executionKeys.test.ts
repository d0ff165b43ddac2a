/**
 * A durable call's key in effect/workflow names its session and its call apart: no session id and
 * call id (which the model chooses) combine into another session's call.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { executionKey, makeWorkflow } from "../../src/durable/internal/body.ts"

describe("durable execution keys", () => {
  it.effect("session 's/1' with call 'x' and session 's' with call '1/x' are two executions", () =>
    Effect.gen(function*() {
      const workflow = makeWorkflow("jobs")
      const a = yield* workflow.executionId({ sessionId: "s/1", base: "x" })
      const b = yield* workflow.executionId({ sessionId: "s", base: "1/x" })
      assert.notStrictEqual(a, b)
      assert.notStrictEqual(executionKey("s%2F1", "x"), executionKey("s/1", "x"))
    }))

  it("a session id without '/' or '%' keeps the key it had (calls stored before go on)", () => {
    assert.strictEqual(executionKey("session-42", "call_1/a"), "session-42/call_1/a")
  })
})
