/**
 * The LanguageModel port failing in every shape (a typed error, a defect, an interrupt cause of
 * its own, mid-answer or before it), in a user's turn and in a toolset's follow-up reply: the
 * agent keeps serving, the failure is reported once (logged, `TurnEnded` "failed"), and nothing
 * of the failed answer is stored or told.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Layer, Schema, Stream } from "effect"
import type { Scope } from "effect"
import { AiError, LanguageModel } from "effect/ai"
import type { Response } from "effect/ai"
import { TestClock, TestConsole } from "effect/testing"
import { AiAgent, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import type { AgentEvent } from "effect-async-toolset"
import { transcript } from "../support/agent.ts"

/** Says it is looking at once, books after 5 seconds. */
const bookFlight = FunctionTool.make("book_flight", {
  description: "Book a flight",
  parameters: Schema.Struct({ to: Schema.String })
}, ({ to }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Looking up flights to ${to}`)
    yield* Effect.sleep("5 seconds")
    return "FL-847293"
  }))

type Shape = "error" | "defect" | "interrupt"

const causeOf = (shape: Shape): Cause.Cause<AiError.AiError> =>
  shape === "error"
    ? Cause.fail(AiError.make({ module: "Test", method: "streamText", reason: new AiError.UnknownError({ description: "down" }) }))
    : shape === "defect"
    ? Cause.die(new Error("the provider broke"))
    : Cause.interrupt(12345)

const usage = { inputTokens: {}, outputTokens: {} }

/**
 * A model whose answers come from `answer` (per request, from 0): words, a tool call, or a failure
 * of the given shape, before the answer or after its first words.
 */
type Answer =
  | { readonly _tag: "Words"; readonly text: string }
  | { readonly _tag: "Book" }
  | { readonly _tag: "Fail"; readonly shape: Shape; readonly after?: string }

const modelLayer = (answer: (index: number) => Answer) =>
  Layer.effect(
    LanguageModel.LanguageModel,
    Effect.gen(function*() {
      let n = 0
      const parts = (a: Answer): Stream.Stream<Response.StreamPartEncoded, AiError.AiError> => {
        switch (a._tag) {
          case "Words":
            return Stream.make(
              { type: "text-start", id: "t" },
              { type: "text-delta", id: "t", delta: a.text },
              { type: "text-end", id: "t" },
              { type: "finish", reason: "stop", usage }
            )
          case "Book":
            return Stream.make(
              { type: "tool-call", id: `book_${n}`, name: "book_flight", params: { to: "Tokyo" } },
              { type: "finish", reason: "tool-calls", usage }
            )
          case "Fail":
            return Stream.concat(
              a.after === undefined ? Stream.empty : Stream.make(
                { type: "text-start", id: "t" },
                { type: "text-delta", id: "t", delta: a.after }
              ),
              Stream.failCause(causeOf(a.shape))
            )
        }
      }
      /** The answer whole: its deltas as text parts. */
      const collect = (a: Answer) =>
        Effect.map(Stream.runCollect(parts(a)), (all) =>
          all.filter((p) => p.type !== "text-start" && p.type !== "text-end").map((p): Response.PartEncoded =>
            p.type === "text-delta" ? { type: "text", text: p.delta } : p as Response.PartEncoded
          ))
      return yield* LanguageModel.make({
        generateText: () => Effect.suspend(() => collect(answer(n++))),
        streamText: () => Stream.suspend(() => parts(answer(n++)))
      })
    })
  )

const agentOn = (answer: (index: number) => Answer, stream: boolean) =>
  AiAgent.layer({ stream }).pipe(Layer.provideMerge(modelLayer(answer)))

/** Every agent event from now on, in a live array. */
const recordEvents = (agent: AiAgent.AiAgent["Service"]): Effect.Effect<ReadonlyArray<AgentEvent.AgentEvent>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const seen: Array<AgentEvent.AgentEvent> = []
    yield* Stream.runForEach(agent.events, (event) => Effect.sync(() => seen.push(event))).pipe(
      Effect.forkScoped({ startImmediately: true })
    )
    yield* Effect.yieldNow
    return seen
  })

const failedTurns = (events: ReadonlyArray<AgentEvent.AgentEvent>) =>
  events.filter((e) => e._tag === "TurnEnded" && e.outcome === "failed").length

const failureLogs = Effect.map(TestConsole.logLines, (lines) =>
  lines.filter((line) => String(line).includes("the turn failed; the conversation goes on")).length)

describe("AiAgent when its model fails", () => {
  for (const stream of [true, false]) {
    for (const shape of ["error", "defect", "interrupt"] as const) {
      for (const after of stream ? [undefined, "Let me"] : [undefined]) {
        const where = after === undefined ? "before its answer" : "after its first words"
        it.effect(`${stream ? "streamed" : "whole"}, ${shape} ${where}: the user's turn fails, reported once, nothing stored, the agent goes on`, () =>
          Effect.gen(function*() {
            const agent = yield* AiAgent.AiAgent
            const events = yield* recordEvents(agent)

            const exit = yield* Effect.exit(agent.send("hello"))

            assert.isTrue(Exit.isFailure(exit), "the send fails")
            if (Exit.isFailure(exit)) {
              assert.isFalse(Cause.hasInterruptsOnly(exit.cause), "a model's own interrupt is a failure, not the caller's interruption")
              if (shape !== "defect") {
                const error = Cause.findErrorOption(exit.cause)
                assert.isTrue(error._tag === "Some" && AiError.isAiError(error.value), "a typed AiError")
              }
            }
            assert.strictEqual(failedTurns(events), 1, "TurnEnded failed, once")
            assert.strictEqual(yield* failureLogs, 1, "logged once")
            assert.deepStrictEqual(transcript(yield* agent.chat), ["user: hello"], "nothing of the failed answer is stored")

            const turn = yield* agent.send("hello again")
            assert.strictEqual(turn.text, "I am back.")
            assert.isTrue(yield* agent.isInactive)
          }).pipe(Effect.provide(agentOn((i) => i === 0 ? { _tag: "Fail", shape, ...(after === undefined ? {} : { after }) } : { _tag: "Words", text: "I am back." }, stream))))
      }
    }
  }

  for (const shape of ["error", "defect", "interrupt"] as const) {
    it.effect(`${shape} in a toolset's follow-up reply: the turn fails, reported once; the result stays in the chat, told once, at the next turn`, () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight] })
        yield* agent.addToolset(toolset)
        const events = yield* recordEvents(agent)

        const turn = yield* agent.send("Book me a flight to Tokyo")
        assert.strictEqual(turn.text, "On it.")
        yield* TestClock.adjust("10 seconds")
        yield* toolset.awaitIdle
        yield* agent.awaitInactive
        assert.strictEqual(failedTurns(events), 1, "the follow-up reply failed, reported once")
        assert.isAtLeast(yield* failureLogs, 1)

        const next = yield* agent.send("And?")
        assert.strictEqual(next.text, "Booked: FL-847293.")
        yield* agent.awaitIdle
        const lines = transcript(yield* agent.chat)
        assert.strictEqual(lines.filter((line) => line.includes("FL-847293") && line.startsWith("output ")).length, 1, "the result is in the chat once")
        assert.strictEqual(lines.filter((line) => line === "assistant: Booked: FL-847293.").length, 1, "told once")
        assert.strictEqual(failedTurns(events), 1)
      }).pipe(Effect.provide(agentOn((i) => {
        switch (i) {
          case 0:
            return { _tag: "Book" }
          case 1:
            return { _tag: "Words", text: "On it." }
          default:
            // the follow-up reply for the result fails; the next turn tells it
            return i === 2 ? { _tag: "Fail", shape } : { _tag: "Words", text: i === 3 ? "Booked: FL-847293." : "Anything else?" }
        }
      }, true))))
  }
})
