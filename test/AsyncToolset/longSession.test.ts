/**
 * B7 in a long session: a model that reuses an early call's id after 20,000 calls.
 */
import { assert, it } from "@effect/vitest"
import { Effect } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { chatProblems } from "../support/reliability.ts"

const quick = FunctionTool.make("quick", { description: "says started, then done", onDuplicateCall: "allow" }, () =>
  Effect.andThen(AsyncRunContext.update("started"), Effect.succeed("done")))

it.effect("B7 a model reusing the first call's id after 20,001 calls: no second c0_final in the chat", () =>
  Effect.gen(function*() {
    const session = yield* TestSession.TestSession
    const toolset = yield* AsyncToolset.make({ id: "t", tools: [quick] })
    yield* execute(toolset, "c0", "quick")
    yield* toolset.awaitIdle
    for (let i = 1; i <= 20_001; i++) {
      yield* execute(toolset, `c${i}`, "quick")
      if (i % 1000 === 0) yield* toolset.awaitIdle
    }
    yield* toolset.awaitIdle
    yield* execute(toolset, "c0", "quick") // the model reuses the first call's id
    yield* toolset.awaitIdle
    const problems = chatProblems(yield* session.chat)
    assert.deepStrictEqual(problems, [])
  }).pipe(Effect.provide(TestSession.layer)), 120_000)
