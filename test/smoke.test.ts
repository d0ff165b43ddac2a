import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"

const book = FunctionTool.make("book_flight", {
  description: "Book",
  parameters: Schema.Struct({ to: Schema.String })
}, ({ to }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`looking up ${to}`)
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("found 3")
    yield* Effect.sleep("1 second")
    return { confirmation: "FL-1" }
  }))

describe("smoke", () => {
  it.effect("story", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const ts = yield* AsyncToolset.make({ id: "travel", tools: [book] })
      const call = yield* ChatContext.functionCall({ callId: "c1", name: "book_flight", arguments: `{"to":"NRT"}` })
      const out = yield* ts.execute(call)
      console.log(out.output, out.extra)
      yield* session.setBusy
      yield* TestClock.adjust("2 seconds")
      assert.strictEqual((yield* session.replies).length, 0)
      yield* session.setIdle
      yield* ts.awaitIdle
      const replies = yield* session.replies
      console.log(replies, (yield* session.chat).items.map((i) => i._tag + ":" + ("callId" in i ? i.callId : "") + ":" + ("output" in i ? i.output : "")))
      console.log(JSON.stringify(ts.tools.map(FunctionTool.toJsonSchema), null, 1))
    }).pipe(Effect.provide(TestSession.layer)))
})
