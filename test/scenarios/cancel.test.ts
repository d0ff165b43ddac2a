/**
 * The user changes their mind: the model cancels the running booking through `cancel_task`, and
 * nothing of that call reaches the chat afterwards.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { AiAgent, AsyncToolset } from "effect-async-toolset"
import { ScriptedModel } from "effect-async-toolset/testing"
import { agentLayer, bookFlight, transcript } from "../support/agent.ts"

const model = (request: ScriptedModel.Request): ScriptedModel.Reply => {
  const latest = request.resultsSinceUser.at(-1)
  if (request.lastUserText.startsWith("Book")) {
    return latest === undefined
      ? { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }] }
      : "Looking up flights to Tokyo."
  }
  if (latest === undefined || latest.id.endsWith("_running")) {
    // the booking's call id is in the conversation: cancel it
    const booking = request.toolResults.find((r) => r.name === "book_flight")!
    return { toolCalls: [{ name: "cancel_task_travel", params: { call_id: booking.id } }] }
  }
  return `Done: ${String(latest.result)}`
}

describe("scenario: cancelling a running call", () => {
  it.effect("the model cancels the booking through cancel_task; its later updates and result never reach the chat", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      const scripted = yield* ScriptedModel.ScriptedModel
      const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight()] })
      yield* agent.addToolset(toolset)

      yield* agent.send("Book me a flight to Tokyo")
      const cancel = yield* agent.send("Actually, cancel that, please")

      assert.strictEqual(cancel.text, "Done: Call call_1_1 was cancelled.")
      assert.deepStrictEqual(yield* toolset.runningTasks, [])

      yield* TestClock.adjust("1 minute")
      yield* toolset.awaitIdle
      const chat = transcript(yield* agent.chat)
      assert.isFalse(chat.some((line) => line.includes("call_1_1_update") || line.includes("call_1_1_final")))
      assert.deepStrictEqual(chat.slice(4), [
        "user: Actually, cancel that, please",
        `call call_3_1 cancel_task_travel {"call_id":"call_1_1"}`,
        "output call_3_1: Call call_1_1 was cancelled.",
        "assistant: Done: Call call_1_1 was cancelled."
      ])
      assert.strictEqual((yield* scripted.requests).length, 4) // no follow-up reply for a cancelled call
    }).pipe(Effect.provide(agentLayer(model))))
})
