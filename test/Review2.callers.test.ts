/**
 * Review 2 (57c1ac9: the first output is stored on the call when no caller waits yet, and taken at
 * once): callers interrupted at every point around `execute`, and `execute` called from inside a
 * lifecycle flush (a fiber resumed by `awaitIdle`, an event subscriber, a tool's inline run).
 *
 * Abandon semantics (CHANGELOG): "Interrupting the fiber that called `execute` before the tool's
 * first update abandons the call: it is stopped (as `abandoned`), nothing of it reaches the chat."
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, References, Scope, Stream } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { chatProblems, makeFiberCounter, whileClockRuns } from "./support/reliability.ts"
import { promptlyLong as promptly, settleLong, yieldSettings } from "./support/review2.ts"

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

describe("Review2: a caller interrupted at every point around execute", () => {
  for (const before of ["inline", "yield", "sleep"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`tool says its first update ${before}; caller interrupted after k turns (k = 0..40): abandoned or answered, never both, never a hang (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scope = yield* Scope.make()
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [worker("w", before)] }).pipe(Scope.provide(scope))
          const answered: Array<string> = []
          for (let k = 0; k <= 40; k++) {
            const id = `c${k}`
            // What execute ended with, as its caller sees it.
            const caller = yield* Effect.forkChild(
              Effect.onExit(execute(toolset, id, "w"), (exit) => Effect.sync(() => Exit.isSuccess(exit) && answered.push(id))),
              { startImmediately: true }
            )
            for (let i = 0; i < k; i++) yield* Effect.yieldNow
            if (k % 10 === 9) yield* TestClock.adjust("1 second")
            yield* promptly(Fiber.interrupt(caller), `interrupting caller ${id}`)
          }
          yield* TestClock.adjust("5 seconds")
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
          yield* promptly(Scope.close(scope, Exit.void), "close")
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
        })).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }

  /**
   * The caller's interruption is requested while the tool runs inline, before its first update
   * (here a barge-in fiber woken by the tool, inline, interrupts the turn that called `execute`).
   * The caller is inside `execute`'s uninterruptible region then; it ends interrupted without an
   * output. Per the CHANGELOG the call must then be abandoned, as it is when the tool is not
   * inline; instead the settled first output is taken and thrown away, and the call goes on: its
   * later updates and final result reach the chat, unasked for.
   */
  for (const maxOps of yieldSettings) {
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
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [barging] }).pipe(Scope.provide(scope))
        let turn: Fiber.Fiber<unknown> | undefined
        // The barge-in: interrupts the agent's turn (which is calling execute).
        yield* Effect.forkChild(Effect.andThen(Deferred.await(started), Effect.suspend(() => Fiber.interrupt(turn!))), { startImmediately: true })
        turn = yield* Effect.forkChild(execute(toolset, "c1", "w"), { startImmediately: false })
        const exit = yield* promptly(Fiber.await(turn), "the turn")
        yield* TestClock.adjust("5 seconds")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        const chat = yield* session.chat
        if (Exit.isSuccess(exit)) return // the caller got its answer: the call rightly goes on
        assert.isTrue(Exit.hasInterrupts(exit))
        assert.deepStrictEqual(
          chat.items.flatMap((i) => i._tag === "FunctionCall" ? [i.callId] : []),
          [],
          "the caller was interrupted before the first update and got no output, yet the call went on"
        )
        yield* promptly(Scope.close(scope, Exit.void), "close")
        assert.strictEqual(fibers.active, 0)
      })).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }

  for (const settledBy of ["cancel", "timeout", "close", "drain"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`the first output is settled by ${settledBy} while the caller is being interrupted: no hang, nothing left (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scope = yield* Scope.make()
          const toolset = yield* AsyncToolset.make({
            id: "t",
            tools: [worker("w", "sleep", settledBy === "timeout" ? { timeout: "500 millis" } : {})]
          }).pipe(Scope.provide(scope))
          for (let k = 0; k < 8; k++) {
            const id = `c${k}`
            const caller = yield* Effect.forkChild(execute(toolset, id, "w"), { startImmediately: true })
            yield* settleLong
            // The settling and the interruption in one synchronous run, in both orders.
            const settle = settledBy === "cancel"
              ? Effect.asVoid(toolset.cancel(id))
              : settledBy === "timeout"
              ? TestClock.adjust("500 millis")
              : settledBy === "close"
              ? Effect.asVoid(Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true }))
              : Effect.asVoid(Effect.forkChild(toolset.drain, { startImmediately: true }))
            if (k % 2 === 0) {
              caller.interruptUnsafe()
              yield* settle
            } else {
              yield* settle
              caller.interruptUnsafe()
            }
            yield* promptly(Fiber.await(caller), `caller ${id}`)
            if (settledBy === "close") break
          }
          yield* TestClock.adjust("5 seconds")
          yield* settleLong
          assert.deepStrictEqual(yield* toolset.runningTasks, [])
          assert.deepStrictEqual((yield* session.chat).items, [], "nothing of a stopped call reaches the chat")
          yield* promptly(Scope.close(scope, Exit.void), "close")
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
        })).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})

describe("Review2: execute from inside a lifecycle flush", () => {
  const ending = FunctionTool.make("quick", { description: "Ends at once", onDuplicateCall: "allow" }, () => Effect.succeed("quick done"))

  for (const before of ["inline", "yield", "sleep"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`a fiber resumed by awaitIdle (inline, in the flush of the last call's end) calls execute; its tool updates ${before} (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [ending, worker("w", before)] })
          const next = yield* Effect.forkChild(
            Effect.andThen(toolset.awaitIdle, execute(toolset, "c2", "w")),
            { startImmediately: true }
          )
          yield* execute(toolset, "c1", "quick") // ends at once: the toolset is idle again
          const out = yield* whileClockRuns(Fiber.join(next), { what: "execute from the awaitIdle resume", step: "100 millis" })
          assert.isTrue(AsyncToolset.isPending(out), out.output)
          assert.include(out.output, "started")
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        }).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

      it.effect(`a fiber resumed by awaitIdle inside the coordinator's settle (after a reply) calls execute twice; its tool updates ${before} (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [worker("w", before)] })
          yield* whileClockRuns(execute(toolset, "c1", "w"), { what: "c1", step: "100 millis" })
          const next = yield* Effect.forkChild(
            Effect.andThen(toolset.awaitIdle, Effect.all([execute(toolset, "c2", "w"), execute(toolset, "c3", "w")])),
            { startImmediately: true }
          )
          const outs = yield* whileClockRuns(Fiber.join(next), { what: "executes from the awaitIdle resume", step: "100 millis" })
          for (const out of outs) assert.isTrue(AsyncToolset.isPending(out), out.output)
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          const chat = yield* session.chat
          assert.deepStrictEqual(chatProblems(chat), [])
          const ids = chat.items.flatMap((i) => i._tag === "FunctionCall" ? [i.callId] : [])
          for (const c of ["c1", "c2", "c3"]) {
            assert.include(ids, `${c}_update_1`)
            assert.include(ids, `${c}_final`)
          }
          const named = (yield* session.replies).map((r) => r.instructions).join("\n")
          for (const c of ["c2", "c3"]) assert.include(named, `${c}_final`)
        }).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

      it.effect(`an event subscriber calls execute when a call ends (CallEnded); its tool updates ${before} (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [ending, worker("w", before)] })
          const outs: Array<string> = []
          const subscriber = yield* Effect.forkChild(
            toolset.events.pipe(
              Stream.filter((e) => e._tag === "CallEnded" && e.callId === "c1"),
              Stream.take(1),
              Stream.runForEach(() => Effect.map(execute(toolset, "c2", "w"), (o) => outs.push(o.output)))
            ),
            { startImmediately: true }
          )
          yield* settleLong
          yield* execute(toolset, "c1", "quick")
          yield* whileClockRuns(Fiber.join(subscriber), { what: "the subscriber's execute", step: "100 millis" })
          assert.strictEqual(outs.length, 1)
          assert.include(outs[0]!, "started")
        }).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }
  }

  for (const mode of ["replace", "reject", "allow"] as const) {
    for (const maxOps of yieldSettings) {
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
          toolset = yield* AsyncToolset.make({ id: "t", tools: [tool] }).pipe(Scope.provide(scope))
          const outer = yield* promptly(execute(toolset, "outer", "n"), "outer execute")
          if (mode === "replace") {
            // inner replaces outer, whose fiber (inner's caller) is interrupted: inner is abandoned
            assert.include(outer.output, "cancelled")
          } else {
            assert.include(outer.output, "started outer")
            assert.strictEqual(nested.length, 1, "the inner execute answered")
            assert.match(nested[0]!, mode === "reject" ? /not started/i : /started inner/)
          }
          yield* promptly(Scope.close(scope, Exit.void), "close")
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
        })).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})
