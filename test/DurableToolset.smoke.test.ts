import { assert, layer } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { sessionLayer, storeLayer } from "./support/durable.ts"

const bookFlight = FunctionTool.make("book_flight", {
  description: "Book a flight",
  parameters: Schema.Struct({ to: Schema.String }),
  success: Schema.Struct({ confirmation: Schema.String })
}, ({ to }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`looking up flights to ${to}`)
    yield* Effect.sleep("50 millis")
    yield* AsyncRunContext.update("found 3 flights")
    yield* Effect.sleep("50 millis")
    return { confirmation: "FL-847293" }
  }))

const travel = DurableToolset.define({ id: "travel", tools: [bookFlight] })

layer(storeLayer, { timeout: "60 seconds", excludeTestServices: true })("smoke", (it) => {
  it.effect("a booking", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* DurableToolset.make(travel)
      const call = yield* ChatContext.functionCall({ callId: "c1", name: "book_flight", arguments: `{"to":"Tokyo"}` })
      const first = yield* toolset.execute(call)
      console.log("first", first.output, AsyncToolset.isPending(first))
      yield* toolset.awaitIdle
      const chat = yield* session.chat
      for (const item of chat.items) console.log(item._tag, "callId" in item ? item.callId : "", "output" in item ? item.output : "")
      console.log((yield* session.replies).map((r) => r.instructions))
      assert.isTrue(AsyncToolset.isPending(first))
    }).pipe(Effect.provide(sessionLayer(travel))))
})
