/**
 * A booking fails after its first update: the failure reaches the chat as an error result, and the
 * agent tells the user in one follow-up reply, instead of the failure being dropped.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { AiAgent, AsyncToolset } from "effect-async-toolset"
import { ScriptedModel } from "effect-async-toolset/testing"
import { agentLayer, bookFlight, transcript } from "../support/agent.ts"

const model = (request: ScriptedModel.Request): ScriptedModel.Reply => {
  if (request.toolChoice === "none") {
    const failure = request.resultsSinceUser.find((r) => r.id.endsWith("_final") && r.isFailure)
    return failure === undefined ? "" : `Sorry, that did not work: ${String(failure.result)}.`
  }
  return request.resultsSinceUser.length === 0
    ? { toolCalls: [{ name: "book_flight", params: { to: "Nowhere" } }] }
    : "Looking up flights to Nowhere."
}

describe("scenario: a tool fails after its first update", () => {
  it.effect("the failure reaches the user in one follow-up reply", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      const scripted = yield* ScriptedModel.ScriptedModel
      const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight()] })
      yield* agent.addToolset(toolset)

      const first = yield* agent.send("Book me a flight to Nowhere")
      assert.strictEqual(first.text, "Looking up flights to Nowhere.")

      yield* TestClock.adjust("2 seconds") // the search fails
      yield* toolset.awaitIdle // the follow-up reply is taken up
      yield* agent.awaitIdle // and made

      const reply = (yield* scripted.requests).at(-1)!
      assert.strictEqual(reply.toolChoice, "none")
      assert.deepStrictEqual(
        reply.resultsSinceUser.filter((r) => r.id === "call_1_1_final").map((r) => [r.isFailure, r.result]),
        [[true, "No airline flies to Nowhere"]]
      )
      assert.deepStrictEqual(transcript(yield* agent.chat).slice(-3), [
        `call call_1_1_final book_flight {"to":"Nowhere"}`,
        "output call_1_1_final (error): No airline flies to Nowhere",
        "assistant: Sorry, that did not work: No airline flies to Nowhere."
      ])
    }).pipe(Effect.provide(agentLayer(model))))
})
