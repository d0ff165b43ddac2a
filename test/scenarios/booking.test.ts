/**
 * The whole story on the real agent loop with a scripted model: the user asks for a booking, the
 * agent acknowledges from the tool's first update, the user asks something else while it runs and
 * gets an answer, the result arrives while the agent is answering, and exactly one follow-up reply
 * comes after it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import { TestClock } from "effect/testing"
import { AiAgent, AsyncToolset } from "effect-async-toolset"
import { ScriptedModel } from "effect-async-toolset/testing"
import { agentLayer, bookFlight, promptLines, transcript } from "../support/agent.ts"

/** The model's side of the story, as rules. */
const model = (request: ScriptedModel.Request): ScriptedModel.Reply => {
  if (request.toolChoice === "none") {
    const final = request.resultsSinceUser.find((r) => r.id.endsWith("_final"))
    return final === undefined ? "" : `All set! Your confirmation number is ${JSON.parse(String(final.result)).confirmation}.`
  }
  if (request.lastUserText.startsWith("Book")) {
    const first = request.resultsSinceUser.find((r) => r.name === "book_flight")
    if (first === undefined) return { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }] }
    // the acknowledgement comes from what the tool said first
    return String(first.result).includes("Looking up flights to Tokyo") ? "Sure! I am looking up flights to Tokyo now." : "Hm."
  }
  return { text: "About 14 hours nonstop.", delay: "5 seconds" } // the agent takes its time answering
}

describe("scenario: booking a flight while the conversation goes on", () => {
  it.effect("acknowledged at once, another question answered meanwhile, one follow-up reply after the result", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      const scripted = yield* ScriptedModel.ScriptedModel
      const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight({ search: "2 seconds", book: "2 seconds" })] })
      yield* agent.addToolset(toolset)
      const events = yield* toolset.events.pipe(Stream.runCollect, Effect.forkChild({ startImmediately: true }))

      // the user asks for a booking; the agent answers from the tool's first update, at once
      const booking = yield* agent.send("Book me a flight to Tokyo")
      assert.strictEqual(booking.text, "Sure! I am looking up flights to Tokyo now.")
      assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.callId), ["call_1_1"])

      // the user asks something else while the booking runs; the model takes 5 seconds to answer,
      // and the booking finishes (update at 2 s, result at 4 s) while it is answering
      const question = yield* agent.send("Is it a long flight?").pipe(Effect.forkChild({ startImmediately: true }))
      yield* TestClock.adjust("4 seconds")
      assert.strictEqual((yield* scripted.requests).length, 3) // nobody talked over the answer in progress
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(question)).text, "About 14 hours nonstop.")
      yield* toolset.awaitIdle

      // while the question was answered, the model was told the booking was still running, at the
      // booking's place in the history: the request still ends with the question (G1)
      const requests = yield* scripted.requests
      const asked = promptLines(requests[2]!.prompt)
      assert.include(asked, "call call_1_1_running book_flight")
      assert.strictEqual(asked.at(-1), "user: Is it a long flight?")
      // exactly one follow-up reply, after the answer, with no tools, covering the update and the result
      assert.deepStrictEqual(requests.map((r) => r.toolChoice), ["auto", "auto", "auto", "none"])
      assert.include(requests[3]!.systemText, "call_1_1_update_1, call_1_1_final")
      assert.notInclude(requests[3]!.systemText, "you may have told the user already")

      assert.deepStrictEqual(transcript(yield* agent.chat).map((line) => line.split("\n")[0]), [
        "user: Book me a flight to Tokyo",
        `call call_1_1 book_flight {"to":"Tokyo"}`,
        "output call_1_1: book_flight (call call_1_1) reports progress: Looking up flights to Tokyo",
        "assistant: Sure! I am looking up flights to Tokyo now.",
        "user: Is it a long flight?",
        // the answer stands before the results that arrived while it was made: it did not cover them
        "assistant: About 14 hours nonstop.",
        `call call_1_1_update_1 book_flight {"to":"Tokyo"}`,
        "output call_1_1_update_1: book_flight (call call_1_1) reports progress: Found 3 flights to Tokyo",
        `call call_1_1_final book_flight {"to":"Tokyo"}`,
        `output call_1_1_final: {"confirmation":"FL-847293"}`,
        "assistant: All set! Your confirmation number is FL-847293."
      ])

      yield* toolset.close
      const delivered = (yield* Fiber.join(events)).filter((e) => e._tag === "ReplyDelivered")
      assert.strictEqual(delivered.length, 1)
      assert.deepStrictEqual(delivered[0]!._tag === "ReplyDelivered" && delivered[0]!.callIds, [
        "call_1_1_update_1",
        "call_1_1_final"
      ])
    }).pipe(Effect.provide(agentLayer(model))))
})
