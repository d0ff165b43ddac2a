/**
 * A second booking while the first runs (duplicate mode `confirm`, the default): the toolset turns
 * the model's second call away, the model asks the user, and only once the user confirms does it
 * call again with the confirmation flag, which starts a second run.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { Tool } from "effect/ai"
import { AiAgent, AsyncToolset } from "effect-async-toolset"
import { ScriptedModel } from "effect-async-toolset/testing"
import { agentLayer, bookFlight, transcript } from "../support/agent.ts"

const model = (request: ScriptedModel.Request): ScriptedModel.Reply => {
  const latest = request.resultsSinceUser.filter((r) => !r.id.endsWith("_running")).at(-1)
  if (latest !== undefined) {
    if (latest.isFailure && String(latest.result).includes("confirm_duplicate")) {
      return "You already have a booking in progress. Do you want a second one to Paris?"
    }
    return "Booking it."
  }
  if (request.lastUserText.includes("Tokyo")) return { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }] }
  if (request.lastUserText.includes("Paris")) return { toolCalls: [{ name: "book_flight", params: { to: "Paris" } }] }
  if (request.lastUserText.startsWith("Yes")) {
    return { toolCalls: [{ name: "book_flight", params: { to: "Paris", confirm_duplicate: true } }] }
  }
  return "Sorry?"
}

describe("scenario: confirming a duplicate call", () => {
  it.effect("the second booking runs only after the user confirms and the model sets the flag", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      const scripted = yield* ScriptedModel.ScriptedModel
      const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight()] })
      yield* agent.addToolset(toolset)

      yield* agent.send("Book me a flight to Tokyo")
      const asked = yield* agent.send("And one to Paris")
      assert.strictEqual(asked.text, "You already have a booking in progress. Do you want a second one to Paris?")
      assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.callId), ["call_1_1"])

      const confirmed = yield* agent.send("Yes, book it")
      assert.strictEqual(confirmed.text, "Booking it.")
      assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.callId), ["call_1_1", "call_5_1"])

      // the model saw the flag in the tool's schema, and the handler never did
      const seen = (yield* scripted.requests)[0]!.options.tools.find((t) => t.name === "book_flight")!
      assert.property(Tool.getJsonSchema(seen)["properties"], "confirm_duplicate")
      const chat = transcript(yield* agent.chat)
      assert.include(chat.find((line) => line.startsWith("output call_3_1"))!, "(error)")
      assert.include(chat.find((line) => line.startsWith("output call_5_1"))!, "Looking up flights to Paris")
    }).pipe(Effect.provide(agentLayer(model))))
})
