/**
 * The test kit's scripted LanguageModel: answers from a list or from rules, unique call ids, the
 * requests recorded, delays on the test clock, failures like a provider's.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import { AiError, LanguageModel, Prompt, Tool, Toolkit } from "effect/ai"
import { TestClock } from "effect/testing"
import { ScriptedModel } from "effect-async-toolset/testing"

const lookup = Tool.dynamic("lookup", { parameters: { type: "object", properties: {} } })
const toolkit: Toolkit.WithHandler<{ readonly lookup: typeof lookup }> = {
  tools: { lookup },
  handle: () => Effect.die("not used")
}

/** One request with the lookup tool, tool calls returned as they are. */
const ask = (prompt: Prompt.RawInput) =>
  LanguageModel.generateText({ prompt, toolkit, disableToolCallResolution: true })

describe("ScriptedModel", () => {
  it.effect("a list script answers one request after the other; a request past the end fails", () =>
    Effect.gen(function*() {
      assert.strictEqual((yield* ask("a")).text, "first")
      const second = yield* ask("b")
      assert.deepStrictEqual(second.toolCalls.map((c) => [c.id, c.name, c.params]), [["call_2_1", "lookup", { q: 1 }]])
      assert.strictEqual(second.finishReason, "tool-calls")
      const error = yield* Effect.flip(ask("c"))
      assert.isTrue(AiError.isAiError(error))
      assert.include(error.message, "no reply for request 3")
    }).pipe(Effect.provide(ScriptedModel.layer(["first", { toolCalls: [{ name: "lookup", params: { q: 1 } }] }]))))

  it.effect("a rule script reads the request: the user's words, the tools, the tool choice", () =>
    Effect.gen(function*() {
      assert.strictEqual((yield* ask("hello there")).text, "you said: hello there; tools: lookup; choice: auto")
      const none = yield* LanguageModel.generateText({ prompt: "x", toolkit, toolChoice: "none", disableToolCallResolution: true })
      assert.strictEqual(none.text, "you said: x; tools: lookup; choice: none")
    }).pipe(Effect.provide(ScriptedModel.layer((r) =>
      `you said: ${r.lastUserText}; tools: ${r.toolNames.join(",")}; choice: ${String(r.toolChoice)}`
    ))))

  it.effect("call ids are unique across requests, so two turns never reuse one", () =>
    Effect.gen(function*() {
      const ids = [...(yield* ask("a")).toolCalls, ...(yield* ask("b")).toolCalls].map((c) => c.id)
      assert.deepStrictEqual(ids, ["call_1_1", "call_1_2", "call_2_1", "call_2_2"])
    }).pipe(Effect.provide(ScriptedModel.layer(() => ({ toolCalls: [{ name: "lookup" }, { name: "lookup" }] })))))

  it.effect("every request is recorded with what the model saw, tool results included", () =>
    Effect.gen(function*() {
      const model = yield* ScriptedModel.ScriptedModel
      yield* ask([
        { role: "system", content: "Be brief." },
        { role: "user", content: "find x" },
        { role: "assistant", content: [{ type: "tool-call", id: "c1", name: "lookup", params: {} }] },
        { role: "tool", content: [{ type: "tool-result", id: "c1", name: "lookup", isFailure: false, result: "found" }] }
      ])
      const [request] = yield* model.requests
      assert.strictEqual(request!.index, 0)
      assert.strictEqual(request!.systemText, "Be brief.")
      assert.strictEqual(request!.lastUserText, "find x")
      assert.deepStrictEqual(request!.resultsSinceUser.map((r) => [r.id, r.result]), [["c1", "found"]])
      assert.deepStrictEqual(request!.toolResults.map((r) => r.id), ["c1"])
    }).pipe(Effect.provide(ScriptedModel.layer(["ok"]))))

  it.effect("a delayed reply comes when the test clock says so", () =>
    Effect.gen(function*() {
      const answer = yield* ask("a").pipe(Effect.forkChild({ startImmediately: true }))
      yield* TestClock.adjust("2 seconds")
      assert.isUndefined(answer.pollUnsafe())
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(answer)).text, "thought about it")
    }).pipe(Effect.provide(ScriptedModel.layer([{ text: "thought about it", delay: "3 seconds" }]))))

  it.effect("a script can fail like a provider", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(ask("a"))
      assert.include(error.message, "rate limited")
    }).pipe(Effect.provide(ScriptedModel.layer(() => Effect.fail(ScriptedModel.error("rate limited"))))))

  it.effect("streamText streams the same answer", () =>
    Effect.gen(function*() {
      const parts = yield* LanguageModel.streamText({ prompt: "a" }).pipe(Stream.runCollect)
      const text = parts.flatMap((p) => p.type === "text-delta" ? [p.delta] : []).join("")
      assert.strictEqual(text, "streamed")
      assert.strictEqual(parts.at(-1)?.type, "finish")
    }).pipe(Effect.provide(ScriptedModel.layer(["streamed"]))))

  const deltasOf = (parts: ReadonlyArray<{ readonly type: string; readonly delta?: string }>) =>
    parts.flatMap((p) => p.type === "text-delta" && p.delta !== undefined ? [p.delta] : [])

  it.effect("a reply given as deltas streams one delta per element; generateText gets them joined", () =>
    Effect.gen(function*() {
      const parts = yield* LanguageModel.streamText({ prompt: "a" }).pipe(Stream.runCollect)
      assert.deepStrictEqual(deltasOf(parts), ["Sun", "ny in ", "Paris."])
      assert.strictEqual((yield* LanguageModel.generateText({ prompt: "b" })).text, "Sunny in Paris.")
    }).pipe(Effect.provide(ScriptedModel.layer(() => ({ text: ["Sun", "ny in ", "Paris."] })))))

  it.effect("textDeltas words streams a string reply word by word, deltaDelay apart on the test clock", () =>
    Effect.gen(function*() {
      const seen: Array<string> = []
      const fiber = yield* LanguageModel.streamText({ prompt: "a" }).pipe(
        Stream.runForEach((p) => Effect.sync(() => p.type === "text-delta" && seen.push(p.delta))),
        Effect.forkChild({ startImmediately: true })
      )
      yield* TestClock.adjust("100 millis")
      assert.deepStrictEqual(seen, ["Hello "])
      yield* TestClock.adjust("200 millis")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual(seen, ["Hello ", "there, ", "traveller."])
    }).pipe(Effect.provide(ScriptedModel.layer(["Hello there, traveller."], { textDeltas: "words", deltaDelay: "100 millis" }))))

  it.effect("a reply with fail streams its words and calls, then fails instead of finishing; generateText fails", () =>
    Effect.gen(function*() {
      const parts: Array<{ readonly type: string }> = []
      const error = yield* LanguageModel.streamText({ prompt: "a", toolkit, disableToolCallResolution: true }).pipe(
        Stream.runForEach((p) => Effect.sync(() => parts.push(p))),
        Effect.flip
      )
      assert.include(error.message, "connection reset")
      assert.deepStrictEqual(deltasOf(parts), ["Let me ", "look"])
      assert.deepStrictEqual(parts.map((p) => p.type), ["text-start", "text-delta", "text-delta", "text-end", "tool-call"])
      assert.include((yield* Effect.flip(ask("b"))).message, "connection reset")
    }).pipe(Effect.provide(ScriptedModel.layer(() => ({
      text: ["Let me ", "look"],
      toolCalls: [{ name: "lookup" }],
      fail: ScriptedModel.error("connection reset")
    })))))
})
