/**
 * Review 7 (found by test/Review7.system.test.ts, seeds 71054 at MaxOpsBeforeYield 64 and 10092 at
 * 3): an update's insertion is cut short after its function call went in (a half pair in the
 * chat); its call is cancelled; its toolset closes while the session is busy (so the coordinator
 * never got to complete the pair). The chat is left with a function call without its output, and
 * nothing says so: `letGo` counts a cancelled item as nothing to report, though part of it is in
 * the chat.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, References, Schedule, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { captureLogs, chatProblems, makeFiberCounter, modelCall } from "./support/reliability.ts"
import { promptlyLong as promptly, settleLong } from "./support/review2.ts"
import { wrappedSession, yieldSettings } from "./support/review3.ts"

const job = FunctionTool.make("job", { description: "Reports twice, then works on", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("step 1")
    return yield* Effect.never
  }))

describe("Review7: a cancelled call's half pair, when its toolset closes before the coordinator completes it", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`c1_update_1 half inserted, c1 cancelled, toolset closed while busy: no dangling call in the chat, or an error names it (MaxOpsBeforeYield ${maxOps})`, () => {
      const logs = captureLogs()
      const fibers = makeFiberCounter()
      return fibers.track(Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        yield* session.setBusy
        const scope = yield* Scope.make()
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], sessionRetry: Schedule.recurs(2), replyTimeout: "10 seconds" })
          .pipe(Scope.provide(scope))
        const first = yield* toolset.execute(yield* modelCall("c1", "job"))
        assert.include(first.output, "started")
        yield* TestClock.adjust("1 second") // c1_update_1: its call goes in, its output does not
        yield* settleLong
        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        yield* settleLong
        yield* promptly(Scope.close(scope, Exit.void), "close")
        yield* settleLong
        const chat = yield* session.chat
        const dangling = chatProblems(chat).filter((p) => logs.find(["Error"], p.slice(0, p.indexOf(":"))).length === 0)
        assert.deepStrictEqual(
          dangling,
          [],
          `a function call without its output is left in the chat, and no error names it; logs: ${
            JSON.stringify(logs.lines.map((l) => `${l.level} ${l.text}`))
          }`
        )
        assert.strictEqual(fibers.active, 0)
      })).pipe(
        Effect.provide(wrappedSession((session) => {
          let n = 0
          return {
            // the first synthetic insertion is cut short after its function call went in
            insert: (items) =>
              Effect.suspend(() =>
                n++ === 0
                  ? Effect.andThen(
                    session.insert(items.slice(0, 1)),
                    Effect.fail(new AgentSession.SessionError({ operation: "insert", message: "cut short" }))
                  )
                  : session.insert(items)
              )
          }
        })),
        Effect.provide(logs.layer),
        Effect.provideService(References.MaxOpsBeforeYield, maxOps)
      )
    })
  }
})
