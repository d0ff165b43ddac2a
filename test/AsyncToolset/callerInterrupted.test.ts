/**
 * A caller interrupted while it waits (rule B9), and the calls it leaves stopping: interrupting the
 * fiber that called `execute` before the tool's first update either hands it that output or
 * withdraws the call (cancelled, nothing of it in the chat), at any step and any scheduler yield
 * budget; a call still stopping (abandoned, cancelled, timed out) keeps a replacing call waiting
 * (D4) and never removes a newer call of its id (E5). Concurrent callers at one instant (D5, B8)
 * and a tool that calls `execute` on its own toolset are here too.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, References, Scope } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute, promptly, settle, thenLetToolsEnd } from "../support/lifetime.ts"
import { chatCallIds, chatProblems, makeFiberCounter, whileClockRuns } from "../support/reliability.ts"
import { promptlyLong, settleLong, yieldsFor } from "../support/schedules.ts"
import { forEachKind } from "../support/toolsets.ts"

/**
 * Scheduler settings the races run under: a yield after almost every step, up to the default
 * (2048). Below 3 a fiber that resumes yields again before its first step: it never progresses.
 */

/** Says "started" after `before` (a sleep, or nothing: inline), then "half way" after 1 s, then "done" after 1 s. */
const worker = (name: string, before: "inline" | "yield" | "sleep", extra: FunctionTool.Options = {}) =>
  FunctionTool.make(name, { description: name, onDuplicateCall: "allow", ...extra }, () =>
    Effect.gen(function*() {
      if (before === "yield") yield* Effect.yieldNow
      if (before === "sleep") yield* Effect.sleep("1 second")
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep("1 second")
      yield* AsyncRunContext.update("half way")
      yield* Effect.sleep("1 second")
      return "done"
    }))

forEachKind("AsyncToolset interrupted callers", (kind) => {
  describe("B9 a caller interrupted while it waits: answered or withdrawn", () => {
    for (const before of ["inline", "yield", "sleep"] as const) {
      for (const maxOps of yieldsFor(kind)) {
        it.effect(`tool says its first update ${before}; caller interrupted after k turns (k = 0..40): abandoned or answered, never both, never a hang (MaxOpsBeforeYield ${maxOps})`, () => {
          const fibers = makeFiberCounter()
          return fibers.track(Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const scope = yield* Scope.make()
            const toolset = yield* kind.make({ id: "t", tools: [worker("w", before)] }).pipe(Scope.provide(scope))
            const answered: Array<string> = []
            for (let k = 0; k <= 40; k++) {
              const id = `c${k}`
              // What execute ended with, as its caller sees it.
              const caller = yield* Effect.forkChild(
                Effect.onExit(execute(toolset, id, "w"), (exit) => Effect.sync(() => Exit.isSuccess(exit) && answered.push(id))),
                { startImmediately: true }
              )
              for (let i = 0; i < k; i++) yield* Effect.yieldNow
              if (k % 10 === 9) yield* kind.advance("1 second")
              yield* promptlyLong(Fiber.interrupt(caller), `interrupting caller ${id}`)
            }
            yield* kind.advance("5 seconds")
            yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
            const chat = yield* session.chat
            const inChat = new Set(chat.items.flatMap((i) => i._tag === "FunctionCall" ? [i.callId.replace(/_(update_\d+|final)$/, "")] : []))
            // An abandoned call says nothing in the chat; a call whose caller got its answer goes on.
            // With a yield budget of a few operations, an interruption can also land in the frame
            // boundary right after execute returned (Effect 4 checks for interruption, and yields,
            // between any two operations of an interruptible fiber): the caller then loses an output
            // execute had handed over, and the call goes on as answered. No code inside execute can
            // see that boundary, so the strict check is made where it cannot happen in this test.
            if (maxOps >= 16) {
              for (let k = 0; k <= 40; k++) {
                const id = `c${k}`
                if (!answered.includes(id)) assert.isFalse(inChat.has(id), `${id}: execute ended interrupted (no output), yet the call went on`)
              }
            }
            assert.deepStrictEqual(chatProblems(chat), [])
            yield* promptlyLong(Scope.close(scope, Exit.void), "close")
            yield* settleLong
            assert.strictEqual(fibers.active, 0)
          })).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
        }, 30_000) // 41 durable calls, each recorded in the store: a few seconds
      }
    }

    /**
     * The caller's interruption is requested while the tool runs inline, before its first update
     * (here a barge-in fiber woken by the tool, inline, interrupts the turn that called `execute`).
     * The caller ends interrupted without an output, so the call must be abandoned, as it is when
     * the tool is not inline: its later updates and final result must not reach the chat, unasked
     * for.
     */
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`a caller interrupted during the tool's inline run, before its first update: the call is abandoned (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        let started: Deferred.Deferred<void> | undefined
        const barging = FunctionTool.make("w", { description: "w", onDuplicateCall: "allow" }, () =>
          Effect.gen(function*() {
            Deferred.doneUnsafe(started!, Effect.void) // the user starts speaking, seen inline
            yield* AsyncRunContext.update("started")
            yield* Effect.sleep("1 second")
            yield* AsyncRunContext.update("half way")
            return "done"
          }))
        return fibers.track(Effect.gen(function*() {
          started = yield* Deferred.make<void>()
          const session = yield* TestSession.TestSession
          const scope = yield* Scope.make()
          const toolset = yield* kind.make({ id: "t", tools: [barging] }).pipe(Scope.provide(scope))
          let turn: Fiber.Fiber<unknown> | undefined
          // The barge-in: interrupts the agent's turn (which is calling execute).
          yield* Effect.forkChild(Effect.andThen(Deferred.await(started), Effect.suspend(() => Fiber.interrupt(turn!))), { startImmediately: true })
          turn = yield* Effect.forkChild(execute(toolset, "c1", "w"), { startImmediately: false })
          const exit = yield* promptlyLong(Fiber.await(turn), "the turn")
          yield* kind.advance("5 seconds")
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          const chat = yield* session.chat
          if (Exit.isSuccess(exit)) return // the caller got its answer: the call rightly goes on
          assert.isTrue(Exit.hasInterrupts(exit))
          assert.deepStrictEqual(
            chat.items.flatMap((i) => i._tag === "FunctionCall" ? [i.callId] : []),
            [],
            "the caller was interrupted before the first update and got no output, yet the call went on"
          )
          yield* promptlyLong(Scope.close(scope, Exit.void), "close")
          assert.strictEqual(fibers.active, 0)
        })).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }

    for (const settledBy of ["cancel", "timeout", "close", "drain"] as const) {
      for (const maxOps of yieldsFor(kind)) {
        it.effect(`the first output is settled by ${settledBy} while the caller is being interrupted: no hang, nothing left (MaxOpsBeforeYield ${maxOps})`, () => {
          const fibers = makeFiberCounter()
          return fibers.track(Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const scope = yield* Scope.make()
            const toolset = yield* kind.make({
              id: "t",
              tools: [worker("w", "sleep", settledBy === "timeout" ? { timeout: "500 millis" } : {})]
            }).pipe(Scope.provide(scope))
            for (let k = 0; k < 8; k++) {
              const id = `c${k}`
              const caller = yield* Effect.forkChild(execute(toolset, id, "w"), { startImmediately: true })
              yield* settleLong
              // The settling and the interruption in one synchronous run, in both orders.
              const settleFirst = settledBy === "cancel"
                ? Effect.asVoid(toolset.cancel(id))
                : settledBy === "timeout"
                ? kind.advance("500 millis")
                : settledBy === "close"
                ? Effect.asVoid(Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true }))
                : Effect.asVoid(Effect.forkChild(toolset.drain, { startImmediately: true }))
              if (k % 2 === 0) {
                caller.interruptUnsafe()
                yield* settleFirst
              } else {
                yield* settleFirst
                caller.interruptUnsafe()
              }
              yield* promptlyLong(Fiber.await(caller), `caller ${id}`)
              if (settledBy === "close") break
            }
            yield* kind.advance("5 seconds")
            yield* settleLong
            assert.deepStrictEqual(yield* toolset.runningTasks, [])
            assert.deepStrictEqual((yield* session.chat).items, [], "nothing of a stopped call reaches the chat")
            yield* promptlyLong(Scope.close(scope, Exit.void), "close")
            yield* settleLong
            assert.strictEqual(fibers.active, 0)
          })).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
        })
      }
    }

    for (const mode of ["replace", "reject", "allow"] as const) {
      for (const maxOps of yieldsFor(kind)) {
        it.effect(`a tool calls execute on its own toolset inline, before its first update (mode ${mode}): no hang, each caller answered (MaxOpsBeforeYield ${maxOps})`, () => {
          const fibers = makeFiberCounter()
          let toolset: AsyncToolset.AsyncToolset | undefined
          const nested: Array<string> = []
          const tool = FunctionTool.make("n", { description: "n", onDuplicateCall: mode }, () =>
            Effect.gen(function*() {
              const { callId } = yield* AsyncRunContext.functionCall
              if (callId === "outer") {
                const out = yield* execute(toolset!, "inner", "n")
                nested.push(out.output)
              }
              yield* AsyncRunContext.update(`started ${callId}`)
              return yield* Effect.never
            }))
          return fibers.track(Effect.gen(function*() {
            const scope = yield* Scope.make()
            toolset = yield* kind.make({ id: "t", tools: [tool] }).pipe(Scope.provide(scope))
            const outer = yield* promptlyLong(execute(toolset, "outer", "n"), "outer execute")
            if (mode === "replace") {
              // inner replaces outer, whose fiber (inner's caller) is interrupted: inner is abandoned
              assert.include(outer.output, "cancelled")
            } else {
              assert.include(outer.output, "started outer")
              assert.strictEqual(nested.length, 1, "the inner execute answered")
              assert.match(nested[0]!, mode === "reject" ? /not started/i : /started inner/)
            }
            yield* promptlyLong(Scope.close(scope, Exit.void), "close")
            yield* settleLong
            // Closed, a durable toolset's calls (which never end here) go on in the workflow engine:
            // their executions' fibers live on.
            if (!kind.durable) assert.strictEqual(fibers.active, 0)
          })).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
        })
      }
    }
  })

  describe("B9 abandoned callers among replace chains, drain and close", () => {
    const log: Array<string> = []
    /** replace mode; charges the card for 10 s uninterruptibly before its first update. */
    const quiet = FunctionTool.make("book", { description: "Charges first", onDuplicateCall: "replace" }, () =>
      Effect.gen(function*() {
        const { callId } = yield* AsyncRunContext.functionCall
        log.push(`start ${callId}`)
        yield* Effect.uninterruptible(Effect.sleep("10 seconds"))
        yield* AsyncRunContext.update(`charged ${callId}`)
        return yield* Effect.never
      }).pipe(Effect.ensuring(Effect.flatMap(AsyncRunContext.functionCall, ({ callId }) => Effect.sync(() => log.push(`stop ${callId}`))))))

    for (const maxOps of yieldsFor(kind)) {
      it.effect(`replace chain with an interrupted caller, a cancel and a drain: every caller answers at once, no overlap, nothing left (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          yield* kind.advance("0 millis")
          log.length = 0
          const scope = yield* Scope.make()
          const toolset = yield* kind.make({ id: "t", tools: [quiet] }).pipe(Scope.provide(scope))
          const a = yield* Effect.forkChild(execute(toolset, "a", "book"), { startImmediately: true })
          yield* settle
          const b = yield* Effect.forkChild(execute(toolset, "b", "book"), { startImmediately: true })
          assert.include((yield* promptly(Fiber.join(a), "a, replaced by b")).output, "cancelled")
          yield* Fiber.interrupt(b) // b's caller gives up while b waits for a
          const c = yield* Effect.forkChild(execute(toolset, "c", "book"), { startImmediately: true })
          yield* settle
          assert.strictEqual(yield* toolset.cancel("c"), "cancelled")
          assert.include((yield* promptly(Fiber.join(c), "c, cancelled while waiting")).output, "cancelled")
          const d = yield* Effect.forkChild(execute(toolset, "d", "book"), { startImmediately: true })
          yield* settle
          const drained = yield* Effect.forkChild(toolset.drain, { startImmediately: true })
          assert.include((yield* promptly(Fiber.join(d), "d, drained while waiting")).output, "cancelled")
          yield* kind.advance("10 seconds")
          yield* promptly(Fiber.join(drained), "drain once a stopped")
          // (Which calls ran is not checked here: that b, c and d never start while a still stops
          // is checked by the D4 tests below.)
          assert.deepStrictEqual(yield* toolset.runningTasks, [])
          yield* Scope.close(scope, Exit.void)
          assert.strictEqual(fibers.active, 0)
        })).pipe(thenLetToolsEnd, kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })

      it.effect(`a caller interrupted while waiting for a first update inside an uninterruptible region, then close (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          yield* kind.advance("0 millis")
          log.length = 0
          const session = yield* TestSession.TestSession
          const scope = yield* Scope.make()
          const toolset = yield* kind.make({ id: "t", tools: [quiet] }).pipe(Scope.provide(scope))
          for (let step = 0; step < 12; step++) {
            const caller = yield* Effect.forkChild(execute(toolset, `a${step}`, "book"), { startImmediately: true })
            for (let i = 0; i < step; i++) yield* Effect.yieldNow
            yield* Fiber.interrupt(caller)
          }
          const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true })
          yield* kind.advance("10 seconds")
          yield* promptly(Fiber.join(closing), "close")
          assert.deepStrictEqual(yield* toolset.runningTasks, [])
          assert.deepStrictEqual((yield* session.chat).items, [], "nothing of an abandoned call reaches the chat")
          assert.strictEqual(fibers.active, 0)
        })).pipe(thenLetToolsEnd, kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  })

  describe("D4 a replacing call waits for a call still stopping, however it was stopped", () => {
    /**
     * A replace-mode tool: logs start/stop, says "started" at once, then charges the card for 10 s
     * inside an uninterruptible region, then works until stopped.
     */
    const booking = (log: Array<string>, charging?: Deferred.Deferred<void>) =>
      FunctionTool.make("book", { description: "Books", onDuplicateCall: "replace" }, () =>
        Effect.gen(function*() {
          const { callId } = yield* AsyncRunContext.functionCall
          log.push(`start ${callId}`)
          yield* AsyncRunContext.update(`started ${callId}`)
          yield* Effect.uninterruptible(Effect.andThen(
            Effect.sync(() => {
              if (callId === "a" && charging !== undefined) Deferred.doneUnsafe(charging, Effect.void)
            }),
            Effect.sleep("10 seconds")
          ))
          return yield* Effect.never
        }).pipe(Effect.ensuring(Effect.flatMap(AsyncRunContext.functionCall, ({ callId }) =>
          Effect.sync(() => log.push(`stop ${callId}`))))))

    for (const maxOps of yieldsFor(kind)) {
      it.effect(`a replace call after a cancel of a call still stopping waits for it (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          yield* kind.advance("0 millis")
          const log: Array<string> = []
          const charging = yield* Deferred.make<void>()
          const toolset = yield* kind.make({ id: "t", tools: [booking(log, charging)] })
          yield* execute(toolset, "a", "book")
          yield* Deferred.await(charging) // a charges the card for 10 s (uninterruptible)
          assert.strictEqual(yield* toolset.cancel("a"), "cancelled") // a is stopping
          const b = yield* Effect.forkChild(execute(toolset, "b", "book"), { startImmediately: true })
          yield* settle
          // SPEC D4: "The new call starts only once every call of that key has stopped, those still
          // stopping from earlier cancels included: two calls of one key never run at once."
          assert.deepStrictEqual(log, ["start a"], "b must not start while a is still stopping")
          yield* kind.advance("10 seconds")
          yield* Fiber.join(b)
          assert.deepStrictEqual(log, ["start a", "stop a", "start b"])
        }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }

    for (const maxOps of yieldsFor(kind)) {
      it.effect(`a replace call after a call abandoned by its caller, still stopping, waits for it (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          yield* kind.advance("0 millis")
          const log: Array<string> = []
          // Charges the card for 10 s (uninterruptible) before it says anything.
          const quiet = FunctionTool.make("book", { description: "Books", onDuplicateCall: "replace" }, () =>
            Effect.gen(function*() {
              const { callId } = yield* AsyncRunContext.functionCall
              log.push(`start ${callId}`)
              yield* Effect.uninterruptible(Effect.sleep("10 seconds"))
              yield* AsyncRunContext.update(`charged ${callId}`)
              return yield* Effect.never
            }).pipe(Effect.ensuring(Effect.flatMap(AsyncRunContext.functionCall, ({ callId }) =>
              Effect.sync(() => log.push(`stop ${callId}`))))))
          const toolset = yield* kind.make({ id: "t", tools: [quiet] })
          const a = yield* Effect.forkChild(execute(toolset, "a", "book"), { startImmediately: true })
          yield* settle
          yield* Fiber.interrupt(a) // the caller gives up: a is abandoned, and stops in 10 s
          const b = yield* Effect.forkChild(execute(toolset, "b", "book"), { startImmediately: true })
          yield* settle
          assert.deepStrictEqual(log, ["start a"], "b must not start while a is still stopping")
          yield* kind.advance("20 seconds")
          yield* Fiber.join(b)
        }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }

    it.effect("a replace call after a timed-out call still stopping waits for it", () =>
      Effect.gen(function*() {
        yield* kind.advance("0 millis")
        const log: Array<string> = []
        const timed = FunctionTool.make("book", { description: "Books", onDuplicateCall: "replace", timeout: "1 second" }, () =>
          Effect.gen(function*() {
            const { callId } = yield* AsyncRunContext.functionCall
            log.push(`start ${callId}`)
            yield* AsyncRunContext.update(`started ${callId}`)
            yield* Effect.uninterruptible(Effect.sleep("10 seconds"))
            return yield* Effect.never
          }).pipe(Effect.ensuring(Effect.flatMap(AsyncRunContext.functionCall, ({ callId }) =>
            Effect.sync(() => log.push(`stop ${callId}`))))))
        const toolset = yield* kind.make({ id: "t", tools: [timed] })
        yield* execute(toolset, "a", "book")
        yield* kind.advance("1 second") // a times out, still inside its region for 9 s
        const b = yield* Effect.forkChild(execute(toolset, "b", "book"), { startImmediately: true })
        yield* settle
        assert.deepStrictEqual(log, ["start a"], "b must not start while a is still stopping")
        yield* kind.advance("9 seconds")
        yield* Fiber.join(b)
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))
  })

  describe("E5 a call still stopping never removes a newer call of its id", () => {
    it.effect("a timed-out call still stopping and a new call reusing its id (another tool): the old one's end leaves the new one listed", () =>
      Effect.gen(function*() {
        yield* kind.advance("0 millis")
        const session = yield* TestSession.TestSession
        const signal = yield* Deferred.make<void>()
        const stubborn = FunctionTool.make("stubborn", { description: "Stubborn", timeout: "1 second" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("started")
            yield* Effect.uninterruptible(Effect.andThen(Deferred.succeed(signal, undefined), Effect.sleep("10 seconds")))
            yield* AsyncRunContext.update("late")
            return "late result"
          }))
        const other = FunctionTool.make("other", { description: "Other" }, () =>
          Effect.andThen(AsyncRunContext.update("other started"), Effect.as(Effect.sleep("20 seconds"), "other done")))
        const toolset = yield* kind.make({ id: "t", tools: [stubborn, other] })
        yield* execute(toolset, "c1", "stubborn")
        yield* Deferred.await(signal)
        yield* kind.advance("1 second") // c1 times out; it stops in 9 s
        yield* execute(toolset, "c1", "other") // the id is reused
        yield* kind.advance("9 seconds") // the old c1 ends
        const tasks = yield* toolset.runningTasks
        assert.deepStrictEqual(tasks.map((t) => [t.callId, t.name, t.status]), [["c1", "other", "running"]])
        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
        assert.deepStrictEqual([...new Set(chatCallIds(yield* session.chat))], ["c1_final"], "only the timed-out notice")
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))
  })

  describe("D5 and B8 callers at the same instant", () => {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`identical calls at the same instant under reject run exactly once (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          let runs = 0
          const tool = FunctionTool.make("book", { description: "Books", onDuplicateCall: "reject" }, () =>
            Effect.gen(function*() {
              runs++
              yield* AsyncRunContext.update("started")
              return yield* Effect.never
            }))
          const toolset = yield* kind.make({ id: "t", tools: [tool] })
          const outs = yield* Effect.all([1, 2, 3, 4].map((n) => execute(toolset, `c${n}`, "book")), { concurrency: "unbounded" })
          assert.strictEqual(runs, 1)
          assert.strictEqual(outs.filter((o) => AsyncToolset.isPending(o)).length, 1)
          assert.strictEqual((yield* toolset.runningTasks).length, 1)
        }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

      it.effect(`two updates racing for the first output: one is it, the other _update_1, none lost (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const tool = FunctionTool.make("race", { description: "Races" }, () =>
            Effect.gen(function*() {
              yield* Effect.all([AsyncRunContext.update("x"), AsyncRunContext.update("y"), AsyncRunContext.update("z")], {
                concurrency: "unbounded"
              })
              return yield* Effect.never
            }))
          const toolset = yield* kind.make({ id: "t", tools: [tool] })
          const out = yield* execute(toolset, "c1", "race")
          assert.isTrue(AsyncToolset.isPending(out))
          yield* settle
          yield* toolset.cancel("c1")
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          const outputs = (yield* session.chat).items.flatMap((i) => i._tag === "FunctionCallOutput" ? [i.output] : [])
          const all = [out.output, ...outputs].map((o) => o.match(/: ([xyz])$|\b([xyz])\b/)?.[0]).join()
          assert.deepStrictEqual(chatCallIds(yield* session.chat).filter((id, i, a) => a.indexOf(id) === i), ["c1_update_1", "c1_update_2"], all)
          assert.deepStrictEqual(chatProblems(yield* session.chat), [])
        }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }
  })
})
