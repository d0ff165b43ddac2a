import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { call } from "./support/replies.ts"

const tool = FunctionTool.make("work", { description: "w" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("start")
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("mid")
    return "done"
  }))

describe("scratch", () => {
  it.effect("idle then busy at once", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const ts = yield* AsyncToolset.make({ id: "t", tools: [tool] })
      yield* session.setBusy
      yield* ts.execute(yield* call("c1", "work"))
      yield* TestClock.adjust("1 second")
      yield* session.setIdle
      yield* session.setBusy
      yield* TestClock.adjust("1 second")
      yield* session.setIdle
      yield* session.setBusy
      yield* TestClock.adjust("1 second")
      console.log(yield* session.replies)
      yield* session.setIdle
      yield* ts.awaitIdle
      console.log(yield* session.replies)
      assert.isTrue(true)
    }).pipe(Effect.provide(TestSession.layer)))
})
