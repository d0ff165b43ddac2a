/**
 * Races at the instant a handler returns, under every scheduler yield budget: cancel, timeout or close against the final; two updates racing for the first output.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, References, Scope } from "effect"
import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { chatCallIds, chatProblems, whileClockRuns } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"

const yields = (n: number): Effect.Effect<void> => {
  let e: Effect.Effect<void> = Effect.void
  for (let i = 0; i < n; i++) e = Effect.andThen(e, Effect.yieldNow)
  return e
}

const budgets = [1, 2, 3, 5, 16, 64, 2048] as const

const job = FunctionTool.make("job", { description: "job", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

/** Two fibers of the tool race to say the first update. */
const twins = FunctionTool.make("twins", { description: "twins", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* Effect.sleep("1 second")
    const a = yield* Effect.forkChild(AsyncRunContext.update("from a"), { startImmediately: false })
    const b = yield* Effect.forkChild(AsyncRunContext.update("from b"), { startImmediately: false })
    yield* Fiber.join(a)
    yield* Fiber.join(b)
    yield* Effect.sleep("1 second")
    return "done"
  }))

forEachKind("races at the instant a handler returns", (kind) => {
  for (const maxOps of budgets) {
    describe(`MaxOpsBeforeYield ${maxOps}`, () => {
      for (const k of [0, 1, 2, 3, 5, 8]) {
        it.effect(`E2 cancel at the instant the handler returns (after ${k} yields): cancelled xor told`, () =>
          Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const toolset = yield* kind.make({ id: "t", tools: [job] })
            yield* execute(toolset, "c1", "job")
            const canceller = yield* Effect.forkChild(
              Effect.andThen(Effect.sleep("1 second"), Effect.andThen(yields(k), Effect.suspend(() => toolset.cancel("c1")))),
              { startImmediately: true }
            )
            yield* kind.advance("1 second")
            const result = yield* whileClockRuns(Fiber.join(canceller), { what: "cancel" })
            yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
            const ids = chatCallIds(yield* session.chat)
            if (result === "cancelled") assert.notInclude(ids, "c1_final", "cancelled, yet its result reached the chat")
            else assert.include(ids, "c1_final", `cancel said ${result}, yet the result is not in the chat`)
            assert.deepStrictEqual(chatProblems(yield* session.chat), [])
          }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
      }

      it.effect("E7 timeout at the instant the handler returns: exactly one _final, the call ends", () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const timed = FunctionTool.make("timed", { description: "timed", timeout: "1 second" }, () =>
            Effect.gen(function*() {
              yield* AsyncRunContext.update("started")
              yield* Effect.sleep("1 second")
              return "done"
            }))
          const toolset = yield* kind.make({ id: "t", tools: [timed] })
          yield* execute(toolset, "c1", "timed")
          yield* kind.advance("1 second")
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          const ids = chatCallIds(yield* session.chat)
          assert.strictEqual(ids.filter((id) => id === "c1_final").length, 1, ids.join(","))
          assert.deepStrictEqual(chatProblems(yield* session.chat), [])
          assert.deepStrictEqual(yield* toolset.runningTasks, [])
        }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

      it.effect("B8 two updates racing for the first output: one is the output, the other _update_1", () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* kind.make({ id: "t", tools: [twins] })
          const out = yield* Effect.forkChild(execute(toolset, "c1", "twins"), { startImmediately: true })
          yield* kind.advance("1 second")
          const first = yield* whileClockRuns(Fiber.join(out), { what: "first output" })
          yield* kind.advance("2 seconds")
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          const chat = yield* session.chat
          const texts = chat.items.flatMap((i) => i._tag === "FunctionCallOutput" ? [i.output] : [])
          const said = [first.output, ...texts].filter((t) => t.includes("from a") || t.includes("from b"))
          assert.strictEqual(said.length, 2, JSON.stringify(said))
          assert.isTrue(said.some((t) => t.includes("from a")) && said.some((t) => t.includes("from b")))
          assert.include(chatCallIds(chat), "c1_update_1")
          assert.deepStrictEqual(chatProblems(chat), [])
        }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

      for (const k of [0, 1, 3]) {
        it.effect(`E6 close at the instant the handler returns (after ${k} yields): close returns, chat well formed`, () =>
          Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const scope = yield* Scope.make()
            const toolset = yield* kind.make({ id: "t", tools: [job] }).pipe(Scope.provide(scope))
            yield* execute(toolset, "c1", "job")
            yield* execute(toolset, "c2", "job")
            const closer = yield* Effect.forkChild(
              Effect.andThen(Effect.sleep("1 second"), Effect.andThen(yields(k), Scope.close(scope, Exit.void))),
              { startImmediately: true }
            )
            yield* kind.advance("1 second")
            yield* whileClockRuns(Fiber.join(closer), { what: "close" })
            yield* kind.settle
            assert.deepStrictEqual(chatProblems(yield* session.chat), [])
            const replies = yield* session.replies
            assert.isAtMost(replies.length, 1)
          }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
      }
    })
  }
})
