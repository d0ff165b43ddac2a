/**
 * C4b: an item whose insertion failed is retried by the reply coordinator, which reads the chat
 * first and inserts only what an insertion cut short did not put there (a port may insert item by
 * item and fail half way: half a pair in the chat). A provider refuses a chat holding a function
 * call without its output ("an assistant message with tool_calls must be followed by tool
 * messages"), so half a pair is completed even when its call was cancelled meanwhile; a cancelled
 * call's item of which nothing reached the chat is let go: never inserted again, never reported,
 * and never a reason for `awaitIdle` to wait for the session.
 */
import { assert, it } from "@effect/vitest"
import { Effect, Exit, References, Schedule, Scope } from "effect"
import { AgentSession } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { captureLogs, chatProblems, makeFiberCounter, namedCallIds, reported, whileClockRuns } from "../support/reliability.ts"
import { callIdsOf, chatty, sessionError, wrappedSession } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"
import { promptlyLong as promptly, settleLong, yieldsFor } from "../support/schedules.ts"

const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 5 }))

type Cut = "fail" | "die" | "interrupt"
const cutAnswer = (cut: Cut): Effect.Effect<never, AgentSession.SessionError> =>
  cut === "fail"
    ? Effect.fail(new AgentSession.SessionError({ operation: "insert", message: "injected fail after a partial insertion" }))
    : cut === "die"
    ? Effect.die(new Error("injected die after a partial insertion"))
    : Effect.interrupt

/**
 * The first insertion of `target` puts only its first item in the chat, then answers `cut`; the
 * next `readFailures` chat reads (after that cut) fail.
 */
const partialSession = (target: string, cut: Cut, readFailures: number) =>
  wrappedSession((session) => {
    let cutDone = false
    let reads = 0
    return {
      insert: (items) =>
        Effect.suspend(() => {
          if (cutDone || !callIdsOf(items).includes(target)) return session.insert(items)
          cutDone = true
          return Effect.andThen(session.insert(items.slice(0, 1)), cutAnswer(cut))
        }),
      items: Effect.suspend(() =>
        cutDone && reads++ < readFailures
          ? Effect.fail(new AgentSession.SessionError({ operation: "chatContext", message: "injected read failure" }))
          : session.items
      )
    }
  })

forEachKind("C4b a partial insertion is completed by the retry", (kind) => {
  for (const cut of ["fail", "die", "interrupt"] as const) {
    for (const readFailures of [0, 1, 3] as const) {
      for (const maxOps of yieldsFor(kind)) {
        it.effect(`insert puts only the call of c1_update_1 then answers '${cut}'; ${readFailures} chat reads fail: the pair is whole, once, and named in one reply (MaxOpsBeforeYield ${maxOps})`, () =>
          Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const toolset = yield* kind.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" })
            yield* execute(toolset, "c1", "chatty")
            yield* kind.advance("1 second")
            yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "500 millis" })
            const chat = yield* session.chat
            assert.deepStrictEqual(chatProblems(chat), [])
            const ids = chat.items.flatMap((i) => i._tag === "FunctionCall" ? [i.callId] : [])
            assert.deepStrictEqual(ids.filter((id) => id === "c1_update_1"), ["c1_update_1"])
            const named = (yield* session.replies).flatMap((r) => namedCallIds(r.instructions))
            assert.strictEqual(named.filter((id) => id === "c1_update_1").length, 1, JSON.stringify(named))
            assert.isFalse((yield* session.replies).some((r) => r.whileBusy))
          }).pipe(kind.provide(partialSession("c1_update_1", cut, readFailures)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
      }
    }
  }
})

forEachKind("C4b half a pair of a call cancelled before the retry is completed", (kind) => {
  for (const when of ["session busy", "chat read fails"] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`partial insertion of c1_update_1, then cancel before the retry (${when}): no function call without its output is left in the chat (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scope = yield* Scope.make()
          const toolset = yield* kind.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" }).pipe(Scope.provide(scope))
          yield* execute(toolset, "c1", "chatty")
          if (when === "session busy") yield* session.setBusy // the retry waits for the session to be inactive
          yield* kind.advance("1 second") // c1_update_1: only its call reaches the chat
          yield* settleLong
          const half = (yield* session.chat).items.filter((i) => "callId" in i && i.callId === "c1_update_1")
          assert.strictEqual(half.length, 1, "the port put half the pair in the chat")
          assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
          yield* session.setIdle
          yield* settleLong
          for (let i = 0; i < 10; i++) {
            yield* kind.advance("1 second")
            yield* settleLong
          }
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          const chat = yield* session.chat
          assert.deepStrictEqual(chatProblems(chat), [], "the chat holds a function call without its output")
          yield* Scope.close(scope, Exit.void)
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
        })).pipe(
          kind.provide(partialSession("c1_update_1", "fail", when === "chat read fails" ? 1 : 0)),
          Effect.provideService(References.MaxOpsBeforeYield, maxOps)
        )
      })
    }
  }
})

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

forEachKind("C4b a cancel that interrupts the call's own insertion lets its item go", (kind) => {
  for (const maxOps of yieldsFor(kind)) {
    it.effect(`cancel while c1_update_1's insertion hangs, session busy: awaitIdle returns without waiting for the session (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" })
        yield* execute(toolset, "c1", "chatty")
        yield* session.setBusy // the user speaks
        yield* kind.advance("1 second") // c1_update_1: its insertion hangs
        yield* settleLong
        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        yield* settleLong
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        // Nothing of c1 is in the chat, no reply is owed: the toolset is idle.
        yield* promptly(toolset.awaitIdle, "awaitIdle after the cancel (session busy)")
        yield* session.setIdle
      }).pipe(kind.provide(hangingInsert("c1_update_1")), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

    it.effect(`cancel while c1_update_1's insertion hangs: no warning that the coordinator will retry, nothing of c1_update_1 in the chat (MaxOpsBeforeYield ${maxOps})`, () => {
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" })
        yield* execute(toolset, "c1", "chatty")
        yield* kind.advance("1 second")
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
        kind.provide(hangingInsert("c1_update_1")),
        Effect.provide(logs.layer),
        Effect.provideService(References.MaxOpsBeforeYield, maxOps)
      )
    })
  }
})

forEachKind("C4b half a pair of a cancelled call that cannot be completed is reported", (kind) => {
  for (const how of ["completion refused", "chat read fails"] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`partial insertion of c1_update_1, cancel, then ${how} for good: awaitIdle finishes, insertions bounded, and the dangling function call is reported (not a debug line) (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        const faulty = halfThenStuck("c1_update_1", { refuse: how === "completion refused", readsFail: how === "chat read fails" })
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* kind.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" })
          yield* execute(toolset, "c1", "chatty")
          yield* session.setBusy // the retry waits for the session to be inactive
          yield* kind.advance("1 second") // c1_update_1: only its call reaches the chat
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
        }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }

  for (const maxOps of yieldsFor(kind)) {
    it.effect(`control: c1_update_1 refused every time (nothing in the chat), cancel while its retry waits: no insertion after the cancel, awaitIdle finishes, nothing reported, close leaves no fiber (MaxOpsBeforeYield ${maxOps})`, () => {
      const logs = captureLogs()
      const fibers = makeFiberCounter()
      const faulty = alwaysRefused("c1_update_1")
      return fibers.track(Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const scope = yield* Scope.make()
        const toolset = yield* kind.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" }).pipe(Scope.provide(scope))
        yield* execute(toolset, "c1", "chatty")
        yield* session.setBusy
        yield* kind.advance("1 second")
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
      })).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})

/** The insertion of `target` puts its items in one by one; after the first it never answers (interruptibly). */
const stuckAfterFirst = (target: string, first: boolean) =>
  wrappedSession((session) => ({
    insert: (items) =>
      callIdsOf(items).includes(target)
        ? Effect.andThen(first ? session.insert(items.slice(0, 1)) : Effect.void, Effect.never)
        : session.insert(items)
  }))

forEachKind("C4b a cancel that interrupts an insertion which put half the pair in the chat", (kind) => {
  for (const half of [true, false] as const) {
    for (const maxOps of yieldsFor(kind)) {
      const name = half
        ? `c1_update_1's function call is in the chat, its insertion hangs, cancel c1: the pair is completed (or at least reported at error level), the chat holds no dangling call (MaxOpsBeforeYield ${maxOps})`
        : `control: nothing of c1_update_1 in the chat, its insertion hangs, cancel c1: nothing of it in the chat, nothing reported, awaitIdle finishes (MaxOpsBeforeYield ${maxOps})`
      it.effect(name, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* kind.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 hour" })
          yield* execute(toolset, "c1", "chatty")
          yield* kind.advance("1 second") // c1_update_1: its insertion hangs (half of it in the chat, or nothing)
          yield* settleLong
          assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
          yield* settleLong
          // With half the pair in, the coordinator completes it; that insertion hangs too here (the
          // port never answers for c1_update_1) and is bounded by replyTimeout (1 hour).
          yield* whileClockRuns(toolset.awaitIdle, half ? { what: "awaitIdle", step: "1 minute", steps: 70 } : { what: "awaitIdle" })
          yield* kind.advance("1 minute")
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
        }).pipe(kind.provide(stuckAfterFirst("c1_update_1", half)), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})

/** c1_update_1's insertion never answers (nothing inserted); once `state.armed`, the next chat read answers with `read`. */
const letGoSession = (read: "hang" | "fail", state: { armed: boolean; reads: number }) =>
  wrappedSession((session) => ({
    insert: (items) => callIdsOf(items).includes("c1_update_1") ? Effect.never : session.insert(items),
    items: Effect.suspend(() => {
      if (!state.armed) return session.items
      state.armed = false
      state.reads++
      return read === "hang" ? Effect.never : Effect.fail(sessionError("injected read failure"))
    })
  }))

forEachKind("C4b a cancelled call's item let go after a failed chat read", (kind) => {
  const retryThrice = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 3 }))
  for (const maxOps of yieldsFor(kind)) {
    it.effect(`cancel c1 while c1_update_1's insertion hangs and the session is busy for good; the coordinator's chat read for it fails: awaitIdle returns (nothing of c1 is owed) without waiting for the session (MaxOpsBeforeYield ${maxOps})`, () => {
      const state = { armed: false, reads: 0 }
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* kind.make({ id: "t", tools: [chatty], sessionRetry: retryThrice, replyTimeout: "1 minute" })
        yield* execute(t, "c1", "chatty")
        yield* session.setBusy
        yield* kind.advance("1 second")
        yield* settleLong
        state.armed = true
        assert.strictEqual(yield* t.cancel("c1"), "cancelled")
        yield* settleLong
        assert.strictEqual(state.reads, 1)
        yield* whileClockRuns(t.awaitIdle, { what: "awaitIdle (waits for the busy session)", step: "1 second", steps: 300 })
        assert.deepStrictEqual(callIdsOf((yield* session.chat).items).filter((id) => id.startsWith("c1_update")), [])
        yield* session.setIdle
      }).pipe(kind.provide(letGoSession("fail", state)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})
