/**
 * Review 5: cdfd735 made `insertFailed` (src/internal/callRun.ts) settle at once every failed
 * insertion of a cancelled call, whatever reached the chat. A cancel that interrupts an insertion
 * which had already put the function call in (a port inserting item by item) leaves a function
 * call without its output in the chat for good (a provider refuses the next request), and says
 * nothing about it. Before cdfd735 such a pair (two items) went to the coordinator, whose
 * `retryInsertions` reads the chat and completes half a pair; the control (nothing inserted
 * before the cancel) must stay clean and prompt.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, References, Schedule } from "effect"
import { TestClock } from "effect/testing"
import { AsyncToolset } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { captureLogs, chatProblems, whileClockRuns } from "./support/reliability.ts"
import { settleLong } from "./support/review2.ts"
import { callIdsOf, chatty, wrappedSession, yieldSettings } from "./support/review3.ts"

const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 5 }))

/** The insertion of `target` puts its items in one by one; after the first it never answers (interruptibly). */
const stuckAfterFirst = (target: string, first: boolean) =>
  wrappedSession((session) => ({
    insert: (items) =>
      callIdsOf(items).includes(target)
        ? Effect.andThen(first ? session.insert(items.slice(0, 1)) : Effect.void, Effect.never)
        : session.insert(items)
  }))

describe("Review5: a cancel that interrupts an insertion which put half the pair in the chat", () => {
  for (const half of [true, false] as const) {
    for (const maxOps of yieldSettings) {
      const name = half
        ? `c1_update_1's function call is in the chat, its insertion hangs, cancel c1: the pair is completed (or at least reported at error level), the chat holds no dangling call (MaxOpsBeforeYield ${maxOps})`
        : `control: nothing of c1_update_1 in the chat, its insertion hangs, cancel c1: nothing of it in the chat, nothing reported, awaitIdle finishes (MaxOpsBeforeYield ${maxOps})`
      it.effect(name, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" })
          yield* execute(toolset, "c1", "chatty")
          yield* TestClock.adjust("1 second") // c1_update_1: its insertion hangs (half of it in the chat, or nothing)
          yield* settleLong
          assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
          yield* settleLong
          // With half the pair in, the coordinator completes it; that insertion hangs too here (the
          // port never answers for c1_update_1) and is bounded by replyTimeout (1 hour).
          yield* whileClockRuns(toolset.awaitIdle, half ? { what: "awaitIdle", step: "1 minute", steps: 70 } : { what: "awaitIdle" })
          yield* TestClock.adjust("1 minute")
          yield* settleLong
          const problems = chatProblems(yield* session.chat)
          const errors = logs.find(["Error"], "c1_update_1").map((l) => l.text)
          if (half) {
            assert.deepStrictEqual(
              { problems, reported: problems.length === 0 || errors.length > 0 },
              { problems: [], reported: true },
              `a cancelled call's half-inserted pair was settled and left in the chat (errors logged: ${JSON.stringify(errors)})`
            )
          } else {
            assert.deepStrictEqual(problems, [])
            assert.deepStrictEqual(callIdsOf((yield* session.chat).items).filter((id) => id.startsWith("c1_update")), [])
            assert.deepStrictEqual(errors, [])
          }
        }).pipe(Effect.provide(stuckAfterFirst("c1_update_1", half)), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})
