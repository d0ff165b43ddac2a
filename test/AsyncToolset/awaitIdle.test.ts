/**
 * Waiting for the toolset (`awaitIdle`, `drain`, `close`): a waiter wakes once no call runs and no
 * reply is pending, and not before; many waiters, interrupted waiters, waiters registered while a
 * waiter is being woken, and waiters that call `execute` as they wake; a second close waits as long
 * as the first; drain does not wait for a session that never answers.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, References, Scope, Stream } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute, settle, stillWaiting, thenLetToolsEnd } from "../support/lifetime.ts"
import { chatCallIds, chatProblems, faultySession, makeFiberCounter, namedCallIds, whileClockRuns } from "../support/reliability.ts"
import { promptlyLong, settleLong, yieldsFor } from "../support/schedules.ts"
import { forEachKind } from "../support/toolsets.ts"

/**
 * Scheduler settings the races run under: a yield after almost every step, up to the default
 * (2048). Below 3 a fiber that resumes yields again before its first step: it never progresses.
 */

/** Says "started", then one more update a second apart for each of `steps - 1`, then "done" a second later. */
const job = (name: string, steps = 2) =>
  FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("started")
      for (let i = 1; i < steps; i++) {
        yield* Effect.sleep("1 second")
        yield* AsyncRunContext.update(`step ${i}`)
      }
      yield* Effect.sleep("1 second")
      return "done"
    }))

/** Says "started" after `before` (a sleep, or nothing: inline), then "half way" after 1 s, then "done" after 1 s. */
const worker = (name: string, before: "inline" | "yield" | "sleep") =>
  FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      if (before === "yield") yield* Effect.yieldNow
      if (before === "sleep") yield* Effect.sleep("1 second")
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep("1 second")
      yield* AsyncRunContext.update("half way")
      yield* Effect.sleep("1 second")
      return "done"
    }))

forEachKind("AsyncToolset waiters", (kind) => {
  describe("awaitIdle, drain and close waiters", () => {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`500 awaitIdle waiters, every other one interrupted: the rest wake once idle, the interrupted ones never (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const toolset = yield* kind.make({ id: "t", tools: [job("w")] })
          yield* execute(toolset, "c1", "w")
          const woke: Array<number> = []
          const waiters: Array<Fiber.Fiber<void>> = []
          for (let i = 0; i < 500; i++) {
            waiters.push(yield* Effect.forkChild(Effect.andThen(toolset.awaitIdle, Effect.sync(() => void woke.push(i))), { startImmediately: true }))
          }
          for (let i = 0; i < 500; i += 2) yield* Fiber.interrupt(waiters[i]!)
          yield* kind.advance("2 seconds")
          yield* whileClockRuns(Fiber.joinAll(waiters.filter((_, i) => i % 2 === 1)), { what: "the waiters" })
          assert.strictEqual(woke.length, 250)
          assert.isTrue(woke.every((i) => i % 2 === 1))
          // A second round on the same toolset: the forgotten waiters do not wake anything.
          yield* execute(toolset, "c2", "w")
          const late = yield* Effect.forkChild(toolset.awaitIdle, { startImmediately: true })
          yield* settleLong
          assert.isUndefined(late.pollUnsafe(), "awaitIdle completed while c2 runs")
          yield* kind.advance("2 seconds")
          yield* whileClockRuns(Fiber.join(late), { what: "the late waiter" })
        }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

      it.effect(`a waiter registered while a flush runs (by a fiber that awaitIdle resumed inline, after it starts a call) wakes when that call ends (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const toolset = yield* kind.make({ id: "t", tools: [job("w")] })
          yield* execute(toolset, "c1", "w")
          const chain = yield* Effect.forkChild(
            Effect.gen(function*() {
              yield* toolset.awaitIdle
              yield* execute(toolset, "c2", "w")
              yield* toolset.awaitIdle
              return yield* toolset.runningTasks
            }),
            { startImmediately: true }
          )
          const tasks = yield* whileClockRuns(Fiber.join(chain), { what: "the chain", step: "100 millis" })
          assert.deepStrictEqual(tasks, [])
        }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

      it.effect(`drain and close waiters interrupted, then drained and closed again: no hang, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        const stubborn = FunctionTool.make("s", { description: "s", cancellable: false, onDuplicateCall: "allow" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("started")
            yield* Effect.sleep("3 seconds")
            return "done"
          }))
        return fibers.track(Effect.gen(function*() {
          const scope = yield* Scope.make()
          const toolset = yield* kind.make({ id: "t", tools: [stubborn] }).pipe(Scope.provide(scope))
          yield* execute(toolset, "c1", "s")
          const drains = yield* Effect.forEach(Array.from({ length: 20 }), () => Effect.forkChild(toolset.drain, { startImmediately: true }))
          const idles = yield* Effect.forEach(Array.from({ length: 20 }), () => Effect.forkChild(toolset.awaitIdle, { startImmediately: true }))
          yield* settleLong
          yield* Fiber.interruptAll(drains)
          yield* Fiber.interruptAll(idles)
          yield* kind.advance("1 second")
          const drain = yield* Effect.forkChild(toolset.drain, { startImmediately: true })
          yield* kind.advance("2 seconds")
          yield* whileClockRuns(Fiber.join(drain), { what: "drain" })
          yield* promptlyLong(Scope.close(scope, Exit.void), "close")
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
        })).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  })

  describe("execute from a fiber woken by a waiter or an event", () => {
    const ending = FunctionTool.make("quick", { description: "Ends at once", onDuplicateCall: "allow" }, () => Effect.succeed("quick done"))

    for (const before of ["inline", "yield", "sleep"] as const) {
      for (const maxOps of yieldsFor(kind)) {
        it.effect(`a fiber resumed by awaitIdle (inline, in the flush of the last call's end) calls execute; its tool updates ${before} (MaxOpsBeforeYield ${maxOps})`, () =>
          Effect.gen(function*() {
            const toolset = yield* kind.make({ id: "t", tools: [ending, worker("w", before)] })
            const next = yield* Effect.forkChild(
              Effect.andThen(toolset.awaitIdle, execute(toolset, "c2", "w")),
              { startImmediately: true }
            )
            yield* execute(toolset, "c1", "quick") // ends at once: the toolset is idle again
            const out = yield* whileClockRuns(Fiber.join(next), { what: "execute from the awaitIdle resume", step: "100 millis" })
            assert.isTrue(AsyncToolset.isPending(out), out.output)
            assert.include(out.output, "started")
            yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

        it.effect(`a fiber resumed by awaitIdle inside the coordinator's settle (after a reply) calls execute twice; its tool updates ${before} (MaxOpsBeforeYield ${maxOps})`, () =>
          Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const toolset = yield* kind.make({ id: "t", tools: [worker("w", before)] })
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
          }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

        it.effect(`an event subscriber calls execute when a call ends (CallEnded); its tool updates ${before} (MaxOpsBeforeYield ${maxOps})`, () =>
          Effect.gen(function*() {
            const toolset = yield* kind.make({ id: "t", tools: [ending, worker("w", before)] })
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
          }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
      }
    }
  })

  describe("awaitIdle waits for a timed-out call's notice", () => {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`awaitIdle does not complete before a timed-out call's notice is in the chat and replied to (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const slow = FunctionTool.make("slow", { description: "Slow", timeout: "1 second" }, () =>
            Effect.andThen(AsyncRunContext.update("started"), Effect.never))
          const toolset = yield* kind.make({ id: "t", tools: [slow] })
          yield* execute(toolset, "c1", "slow")
          // Someone waits for the toolset to be idle (tests, shutdown) while the call runs.
          const idle = yield* Effect.forkChild(
            Effect.andThen(toolset.awaitIdle, Effect.zip(session.chat, session.replies)),
            { startImmediately: true }
          )
          yield* kind.advance("1 second") // the timeout fires
          const [chat, replies] = yield* Fiber.join(idle)
          // awaitIdle: "no running call and no pending reply". The timed-out notice is owed a reply.
          assert.deepStrictEqual(chatCallIds(chat), ["c1_final"], "the notice is in the chat when awaitIdle completes")
          assert.deepStrictEqual(replies.map((r) => namedCallIds(r.instructions)), [["c1_final"]], "and replied to")
        }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }
  })

  describe("E6 drain with a stalled session", () => {
    it.effect("drain returns when the only call left is one whose result's insertion never returns (runningTasks is empty)", () => {
      const faulty = faultySession({ insert: () => "hang" })
      const reporting = FunctionTool.make("job", { description: "Reports, then ends" }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("started")
          yield* Effect.sleep("1 second")
          return "done"
        }))
      return Effect.gen(function*() {
        const toolset = yield* kind.make({ id: "t", tools: [reporting] })
        yield* execute(toolset, "c1", "job")
        yield* kind.advance("1 second") // the handler returned; inserting c1_final never returns
        assert.deepStrictEqual(yield* toolset.runningTasks, [], "nothing is listed as running")
        // drain (agent hand-off): "cancels the cancellable calls and waits for the others"; there are none.
        yield* whileClockRuns(toolset.drain, { what: "drain", step: "10 seconds", steps: 60 })
      }).pipe(kind.provide(faulty.layer))
    })
  })

  describe("E6 close while a close is in progress", () => {
    /** Says "started", then works 10 s inside an uninterruptible region (signalled once inside). */
    const stubbornTool = (inside: Deferred.Deferred<void>) =>
      FunctionTool.make("stubborn", { description: "Finishes what it started" }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("started")
          yield* Effect.uninterruptible(Effect.andThen(Deferred.succeed(inside, undefined), Effect.sleep("10 seconds")))
        }))

    it.effect("a second toolset.close does not return while the first is still waiting for a call to stop", () =>
      Effect.gen(function*() {
        yield* kind.advance("0 millis")
        const inside = yield* Deferred.make<void>()
        const toolset = yield* kind.make({ id: "t", tools: [stubbornTool(inside)] })
        yield* execute(toolset, "c1", "stubborn")
        yield* Deferred.await(inside)
        yield* Effect.forkChild(toolset.close, { startImmediately: true }) // e.g. the agent's hand-off
        yield* settle
        const second = yield* Effect.forkChild(toolset.close, { startImmediately: true }) // e.g. shutdown
        // A durable close does not stop c1 (it goes on in the workflow engine), so it does not wait for it.
        if (kind.durable) assert.isFalse(yield* stillWaiting(second), "a durable close waits for a call it leaves running")
        else assert.isTrue(yield* stillWaiting(second), "close returned while c1 still runs")
        yield* kind.advance("10 seconds")
        yield* Fiber.join(second)
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))

    it.effect("the scope the toolset was made in does not finish closing while toolset.close still waits for a call", () =>
      Effect.gen(function*() {
        yield* kind.advance("0 millis")
        const inside = yield* Deferred.make<void>()
        const scope = yield* Scope.make()
        const toolset = yield* kind.make({ id: "t", tools: [stubbornTool(inside)] }).pipe(Scope.provide(scope))
        yield* execute(toolset, "c1", "stubborn")
        yield* Deferred.await(inside)
        yield* Effect.forkChild(toolset.close, { startImmediately: true })
        yield* settle
        const outer = yield* Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true })
        // Structured concurrency: nothing the toolset started outlives the scope it was made in.
        // A durable close does not stop c1 (it goes on in the workflow engine), so it does not wait for it.
        if (kind.durable) assert.isFalse(yield* stillWaiting(outer), "a durable toolset's scope waits for a call it leaves running")
        else assert.isTrue(yield* stillWaiting(outer), "the scope closed while c1's fiber still runs")
        yield* kind.advance("10 seconds")
        yield* Fiber.join(outer)
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))
  })
})
