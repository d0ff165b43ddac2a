/**
 * Review 2: `waitFor` (awaitIdle, drain, close) is now an `Effect.callback` resumed from a
 * lifecycle flush; the coordinator waits for work with a callback resumed after a microtask. Many
 * waiters, interrupted waiters, waiters registered while a flush runs; C2 with sessions whose
 * chat read answers synchronously or asynchronously, with the user starting to speak at every
 * point.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, References, Schedule, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { chatProblems, makeFiberCounter, namedCallIds, whileClockRuns } from "./support/reliability.ts"
import { promptlyLong as promptly, settleLong, yieldSettings } from "./support/review2.ts"

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

describe("Review2: awaitIdle / drain / close waiters", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`500 awaitIdle waiters, every other one interrupted: the rest wake once idle, the interrupted ones never (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [job("w")] })
        yield* execute(toolset, "c1", "w")
        const woke: Array<number> = []
        const waiters: Array<Fiber.Fiber<void>> = []
        for (let i = 0; i < 500; i++) {
          waiters.push(yield* Effect.forkChild(Effect.andThen(toolset.awaitIdle, Effect.sync(() => void woke.push(i))), { startImmediately: true }))
        }
        for (let i = 0; i < 500; i += 2) yield* Fiber.interrupt(waiters[i]!)
        yield* TestClock.adjust("2 seconds")
        yield* whileClockRuns(Fiber.joinAll(waiters.filter((_, i) => i % 2 === 1)), { what: "the waiters" })
        assert.strictEqual(woke.length, 250)
        assert.isTrue(woke.every((i) => i % 2 === 1))
        // A second round on the same toolset: the forgotten waiters do not wake anything.
        yield* execute(toolset, "c2", "w")
        const late = yield* Effect.forkChild(toolset.awaitIdle, { startImmediately: true })
        yield* settleLong
        assert.isUndefined(late.pollUnsafe(), "awaitIdle completed while c2 runs")
        yield* TestClock.adjust("2 seconds")
        yield* whileClockRuns(Fiber.join(late), { what: "the late waiter" })
      }).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

    it.effect(`a waiter registered while a flush runs (by a fiber that awaitIdle resumed inline, after it starts a call) wakes when that call ends (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [job("w")] })
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
      }).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

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
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [stubborn] }).pipe(Scope.provide(scope))
        yield* execute(toolset, "c1", "s")
        const drains = yield* Effect.forEach(Array.from({ length: 20 }), () => Effect.forkChild(toolset.drain, { startImmediately: true }))
        const idles = yield* Effect.forEach(Array.from({ length: 20 }), () => Effect.forkChild(toolset.awaitIdle, { startImmediately: true }))
        yield* settleLong
        yield* Fiber.interruptAll(drains)
        yield* Fiber.interruptAll(idles)
        yield* TestClock.adjust("1 second")
        const drain = yield* Effect.forkChild(toolset.drain, { startImmediately: true })
        yield* TestClock.adjust("2 seconds")
        yield* whileClockRuns(Fiber.join(drain), { what: "drain" })
        yield* promptly(Scope.close(scope, Exit.void), "close")
        yield* settleLong
        assert.strictEqual(fibers.active, 0)
      })).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})

describe("Review2: C2 a reply is never requested while the session is busy", () => {
  /** The in-memory session whose chat read answers after `hops` scheduler turns (0: at once). */
  const withReadHops = (hops: number, retryFirst: boolean) =>
    Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
      let replies = 0
      const port = AgentSession.AgentSession.of({
        ...session,
        items: hops === 0 ? session.items : Effect.andThen(Effect.forEach(Array.from({ length: hops }), () => Effect.yieldNow), session.items),
        generateReply: (request) =>
          Effect.suspend(() =>
            retryFirst && replies++ === 0
              ? Effect.andThen(session.generateReply(request), Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "injected" })))
              : session.generateReply(request)
          )
      })
      return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
    }))

  for (const hops of [0, 1, 3]) {
    for (const retryFirst of [false, true]) {
      for (const maxOps of yieldSettings) {
        it.effect(`chat read after ${hops} turns${retryFirst ? ", first request fails" : ""}; the user speaks at every point: no reply while busy, every result named (MaxOpsBeforeYield ${maxOps})`, () =>
          Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const toolset = yield* AsyncToolset.make({
              id: "t",
              tools: [job("w", 3)],
              sessionRetry: Schedule.spaced("10 millis").pipe(Schedule.upTo({ times: 5 }))
            })
            let seed = 7
            const next = () => (seed = (seed * 48271) % 2147483647)
            for (let c = 0; c < 6; c++) yield* execute(toolset, `c${c}`, "w")
            for (let round = 0; round < 60; round++) {
              yield* (next() % 2 === 0 ? session.setBusy : session.setIdle)
              for (let i = 0, n = next() % 7; i < n; i++) yield* Effect.yieldNow
              if (round % 5 === 0) yield* TestClock.adjust("250 millis")
            }
            yield* session.setIdle
            yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
            const replies = yield* session.replies
            assert.deepStrictEqual(replies.filter((r) => r.whileBusy).map((r) => r.instructions), [], "a reply was requested while busy")
            const named = new Set(replies.flatMap((r) => namedCallIds(r.instructions)))
            for (let c = 0; c < 6; c++) assert.isTrue(named.has(`c${c}_final`), `c${c}_final named`)
            assert.deepStrictEqual(chatProblems(yield* session.chat), [])
          }).pipe(Effect.provide(withReadHops(hops, retryFirst)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
      }
    }
  }
})
