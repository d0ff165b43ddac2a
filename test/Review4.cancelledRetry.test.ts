/**
 * Review 4: a cancelled call's item whose insertion failed (000e376: `insertFailed` hands every
 * pair to the coordinator, `retryInsertions` reads the chat and completes half a pair).
 *
 * - A cancel that interrupts the call's own insertion now leaves an item the coordinator must look
 *   at, and it looks only once the session is inactive: `awaitIdle` waits for a busy session to
 *   go idle for a call that is gone, and the cancel's own interruption is logged as a warning
 *   ("the reply coordinator will retry") for an item that is never retried.
 * - When the completion of half a pair cannot be made (refused, or the chat cannot be read), the
 *   give-up is logged at debug level as "its call was cancelled before the insertion worked":
 *   a function call without its output stays in the chat, unreported.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, References, Schedule, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncToolset } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { captureLogs, chatProblems, makeFiberCounter, reported, whileClockRuns } from "./support/reliability.ts"
import { promptlyLong as promptly, settleLong } from "./support/review2.ts"
import { callIdsOf, chatty, wrappedSession, yieldSettings } from "./support/review3.ts"

const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 5 }))

/** The insertion of `target` never answers (interruptibly): only a cancel ends it. */
const hangingInsert = (target: string) =>
  wrappedSession((session) => ({
    insert: (items) => callIdsOf(items).includes(target) ? Effect.never : session.insert(items)
  }))

const insertFailure = () => new AgentSession.SessionError({ operation: "insert", message: "injected refusal" })

/**
 * The first insertion of `target` puts only its function call in the chat, then fails; every
 * later insertion of `target` is refused (`refuse`), and every chat read after the cut fails
 * (`readsFail`). `attempts` counts the insertions of `target`.
 */
const halfThenStuck = (target: string, options: { readonly refuse: boolean; readonly readsFail: boolean }) => {
  const state = { attempts: 0, cut: false }
  const layer = wrappedSession((session) => ({
    insert: (items) =>
      Effect.suspend(() => {
        if (!callIdsOf(items).includes(target)) return session.insert(items)
        state.attempts++
        if (!state.cut) {
          state.cut = true
          return Effect.andThen(session.insert(items.slice(0, 1)), Effect.fail(insertFailure()))
        }
        return options.refuse ? Effect.fail(insertFailure()) : session.insert(items)
      }),
    items: Effect.suspend(() =>
      state.cut && options.readsFail
        ? Effect.fail(new AgentSession.SessionError({ operation: "chatContext", message: "injected read failure" }))
        : session.items
    )
  }))
  return { layer, state }
}

/** Every insertion of `target` is refused, nothing of it reaches the chat. */
const alwaysRefused = (target: string) => {
  const state = { attempts: 0 }
  const layer = wrappedSession((session) => ({
    insert: (items) =>
      Effect.suspend(() => {
        if (!callIdsOf(items).includes(target)) return session.insert(items)
        state.attempts++
        return Effect.fail(insertFailure())
      })
  }))
  return { layer, state }
}

describe("Review4: a cancel that interrupts the call's own insertion", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`cancel while c1_update_1's insertion hangs, session busy: awaitIdle returns without waiting for the session (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" })
        yield* execute(toolset, "c1", "chatty")
        yield* session.setBusy // the user speaks
        yield* TestClock.adjust("1 second") // c1_update_1: its insertion hangs
        yield* settleLong
        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        yield* settleLong
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        // Nothing of c1 is in the chat, no reply is owed: the toolset is idle (it was before 000e376).
        yield* promptly(toolset.awaitIdle, "awaitIdle after the cancel (session busy)")
        yield* session.setIdle
      }).pipe(Effect.provide(hangingInsert("c1_update_1")), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

    it.effect(`cancel while c1_update_1's insertion hangs: no warning that the coordinator will retry, nothing of c1_update_1 in the chat (MaxOpsBeforeYield ${maxOps})`, () => {
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" })
        yield* execute(toolset, "c1", "chatty")
        yield* TestClock.adjust("1 second")
        yield* settleLong
        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        yield* settleLong
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        const chat = yield* session.chat
        assert.deepStrictEqual(callIdsOf(chat.items).filter((id) => id.startsWith("c1_")), [])
        assert.deepStrictEqual(chatProblems(chat), [])
        const noise = logs.find(reported, "c1_update_1")
        assert.deepStrictEqual(noise.map((l) => `${l.level}: ${l.text}`), [], "the cancel's own interruption was reported as a session fault")
      }).pipe(
        Effect.provide(hangingInsert("c1_update_1")),
        Effect.provide(logs.layer),
        Effect.provideService(References.MaxOpsBeforeYield, maxOps)
      )
    })
  }
})

describe("Review4: half a pair of a cancelled call that cannot be completed", () => {
  for (const how of ["completion refused", "chat read fails"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`partial insertion of c1_update_1, cancel, then ${how} for good: awaitIdle finishes, insertions bounded, and the dangling function call is reported (not a debug line) (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        const faulty = halfThenStuck("c1_update_1", { refuse: how === "completion refused", readsFail: how === "chat read fails" })
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" })
          yield* execute(toolset, "c1", "chatty")
          yield* session.setBusy // the retry waits for the session to be inactive
          yield* TestClock.adjust("1 second") // c1_update_1: only its call reaches the chat
          yield* settleLong
          assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
          yield* session.setIdle
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          assert.isAtMost(faulty.state.attempts, 10, "insertions of c1_update_1 were not bounded")
          const chat = yield* session.chat
          const dangling = chatProblems(chat)
          assert.deepStrictEqual(dangling, ["c1_update_1: 0 outputs (dangling call)"], "the port kept half the pair")
          const said = logs.find(["Error"], "c1_update_1")
          assert.isAbove(
            said.length,
            0,
            `a function call without its output is left in the chat, reported only as: ${JSON.stringify(logs.find(["Debug", "Info", "Warn", "Error"], "c1_update_1").map((l) => `${l.level}: ${l.text}`))}`
          )
        }).pipe(Effect.provide(faulty.layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }

  for (const maxOps of yieldSettings) {
    it.effect(`control: c1_update_1 refused every time (nothing in the chat), cancel while its retry waits: no insertion after the cancel, awaitIdle finishes, nothing reported, close leaves no fiber (MaxOpsBeforeYield ${maxOps})`, () => {
      const logs = captureLogs()
      const fibers = makeFiberCounter()
      const faulty = alwaysRefused("c1_update_1")
      return fibers.track(Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const scope = yield* Scope.make()
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" }).pipe(Scope.provide(scope))
        yield* execute(toolset, "c1", "chatty")
        yield* session.setBusy
        yield* TestClock.adjust("1 second")
        yield* settleLong
        const before = faulty.state.attempts
        assert.strictEqual(before, 1)
        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        yield* session.setIdle
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        assert.strictEqual(faulty.state.attempts, before, "a cancelled call's item was inserted again")
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
        assert.deepStrictEqual(logs.find(["Error"], "c1_update_1").map((l) => l.text), [])
        yield* promptly(Scope.close(scope, Exit.void), "close")
        yield* settleLong
        assert.strictEqual(fibers.active, 0)
      })).pipe(Effect.provide(faulty.layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})
