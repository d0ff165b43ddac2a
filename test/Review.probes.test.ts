/**
 * Adversarial review: attacks that did NOT break the engine (kept as regression probes). Each runs
 * under several scheduler yield settings. The attacks that found bugs are in
 * Review.adversarial.test.ts.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, References, Schedule, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute, promptly, settle, thenLetToolsEnd } from "./support/lifetime.ts"
import { chatCallIds, chatProblems, makeFiberCounter, namedCallIds, whileClockRuns } from "./support/reliability.ts"

const yieldSettings = [3, 4, 5, 8, 16, 32, 64, 2048] as const

describe("Review probes: D5 and B8", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`identical calls at the same instant under reject run exactly once (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        let runs = 0
        const tool = FunctionTool.make("book", { description: "Books", onDuplicateCall: "reject" }, () =>
          Effect.gen(function*() {
            runs++
            yield* AsyncRunContext.update("started")
            return yield* Effect.never
          }))
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [tool] })
        const outs = yield* Effect.all([1, 2, 3, 4].map((n) => execute(toolset, `c${n}`, "book")), { concurrency: "unbounded" })
        assert.strictEqual(runs, 1)
        assert.strictEqual(outs.filter((o) => AsyncToolset.isPending(o)).length, 1)
        assert.strictEqual((yield* toolset.runningTasks).length, 1)
      }).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

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
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [tool] })
        const out = yield* execute(toolset, "c1", "race")
        assert.isTrue(AsyncToolset.isPending(out))
        yield* settle
        yield* toolset.cancel("c1")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        const outputs = (yield* session.chat).items.flatMap((i) => i._tag === "FunctionCallOutput" ? [i.output] : [])
        const all = [out.output, ...outputs].map((o) => o.match(/: ([xyz])$|\b([xyz])\b/)?.[0]).join()
        assert.deepStrictEqual(chatCallIds(yield* session.chat).filter((id, i, a) => a.indexOf(id) === i), ["c1_update_1", "c1_update_2"], all)
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
      }).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
  }
})

describe("Review probes: callers, replace chains, drain, close", () => {
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

  for (const maxOps of yieldSettings) {
    it.effect(`replace chain with an interrupted caller, a cancel and a drain: every caller answers at once, no overlap, nothing left (MaxOpsBeforeYield ${maxOps})`, () => {
      const fibers = makeFiberCounter()
      return fibers.track(Effect.gen(function*() {
        yield* TestClock.adjust("0 millis")
        log.length = 0
        const scope = yield* Scope.make()
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [quiet] }).pipe(Scope.provide(scope))
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
        yield* TestClock.adjust("10 seconds")
        yield* promptly(Fiber.join(drained), "drain once a stopped")
        // (Which calls ran is not checked here: b, c and d starting while a still stops is the D4
        // bug documented in Review.adversarial.test.ts.)
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        yield* Scope.close(scope, Exit.void)
        assert.strictEqual(fibers.active, 0)
      })).pipe(thenLetToolsEnd, Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })

    it.effect(`a caller interrupted while waiting for a first update inside an uninterruptible region, then close (MaxOpsBeforeYield ${maxOps})`, () => {
      const fibers = makeFiberCounter()
      return fibers.track(Effect.gen(function*() {
        yield* TestClock.adjust("0 millis")
        log.length = 0
        const session = yield* TestSession.TestSession
        const scope = yield* Scope.make()
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [quiet] }).pipe(Scope.provide(scope))
        for (let step = 0; step < 12; step++) {
          const caller = yield* Effect.forkChild(execute(toolset, `a${step}`, "book"), { startImmediately: true })
          for (let i = 0; i < step; i++) yield* Effect.yieldNow
          yield* Fiber.interrupt(caller)
        }
        const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true })
        yield* TestClock.adjust("10 seconds")
        yield* promptly(Fiber.join(closing), "close")
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        assert.deepStrictEqual((yield* session.chat).items, [], "nothing of an abandoned call reaches the chat")
        assert.strictEqual(fibers.active, 0)
      })).pipe(thenLetToolsEnd, Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})

describe("Review probes: two toolsets on one session", () => {
  const job = (name: string) =>
    FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* Effect.sleep("1 second")
        yield* AsyncRunContext.update("half way")
        yield* Effect.sleep("1 second")
        return `${name} done`
      }))

  for (const maxOps of yieldSettings) {
    it.effect(`one toolset closes while the other goes on: one reply for what is pending, nothing of the closed one after close, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
      const fibers = makeFiberCounter()
      return fibers.track(Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const scopeA = yield* Scope.make()
        const scopeB = yield* Scope.make()
        const a = yield* AsyncToolset.make({ id: "a", tools: [job("flights")] }).pipe(Scope.provide(scopeA))
        const b = yield* AsyncToolset.make({ id: "b", tools: [job("hotels")] }).pipe(Scope.provide(scopeB))
        yield* execute(a, "f1", "flights")
        yield* execute(b, "h1", "hotels")
        yield* execute(b, "h2", "hotels")
        yield* session.setBusy
        yield* TestClock.adjust("1 second") // half way, while busy
        yield* Scope.close(scopeA, Exit.void)
        const closedAt = (yield* session.insertions).length
        yield* TestClock.adjust("1 second")
        yield* session.setIdle
        yield* whileClockRuns(b.awaitIdle, { what: "b.awaitIdle" })
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1, JSON.stringify(replies.map((r) => r.instructions)))
        assert.isFalse(replies[0]!.whileBusy)
        assert.deepStrictEqual(
          [...namedCallIds(replies[0]!.instructions)].sort(),
          ["h1_final", "h1_update_1", "h2_final", "h2_update_1"]
        )
        const late = (yield* session.insertions).slice(closedAt).flat().flatMap((i) => "callId" in i ? [i.callId] : [])
        assert.isFalse(late.some((id) => id.startsWith("f1")), late.join())
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
        yield* Scope.close(scopeB, Exit.void)
        assert.strictEqual(fibers.active, 0)
      })).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})

describe("Review probes: C2 on the retry path", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`a retried reply request after a failure never talks over a user who starts speaking after each idle check (MaxOpsBeforeYield ${maxOps})`, () => {
      let controls: TestSession.TestSession["Service"] | undefined
      let checks = 0
      let requests = 0
      const layer = Layer.effectContext(Effect.map(
        TestSession.make({
          onReply: () =>
            Effect.suspend(() =>
              requests++ < 2
                ? Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "not now" }))
                : Effect.void
            )
        }),
        ({ controls: c, session }) => {
          controls = c
          const eager = AgentSession.AgentSession.of({
            ...session,
            awaitInactive: Effect.tap(session.awaitInactive, () => checks++ < 12 ? Effect.asVoid(Effect.forkDetach(c.setBusy)) : Effect.void)
          })
          return Context.make(AgentSession.AgentSession, eager).pipe(Context.add(TestSession.TestSession, c))
        }
      ))
      const job = FunctionTool.make("job", { description: "Works a second" }, () =>
        Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("1 second"), "done")))
      return Effect.gen(function*() {
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], sessionRetry: Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 5 })) })
        yield* execute(toolset, "c1", "job")
        yield* TestClock.adjust("1 second")
        for (let i = 0; i < 40 && (yield* controls!.replies).filter((r) => !r.whileBusy).length < 3; i++) {
          yield* settle
          yield* controls!.setIdle
          yield* settle
          yield* TestClock.adjust("100 millis")
        }
        const replies = yield* controls!.replies
        assert.deepStrictEqual(replies.map((r) => r.whileBusy), [false, false, false])
      }).pipe(Effect.provide(layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})

describe("Review probes: E5 reused ids and timeouts", () => {
  it.effect("a timed-out call still stopping and a new call reusing its id (another tool): the old one's end leaves the new one listed", () =>
    Effect.gen(function*() {
      yield* TestClock.adjust("0 millis")
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
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [stubborn, other] })
      yield* execute(toolset, "c1", "stubborn")
      yield* Deferred.await(signal)
      yield* TestClock.adjust("1 second") // c1 times out; it stops in 9 s
      yield* execute(toolset, "c1", "other") // the id is reused
      yield* TestClock.adjust("9 seconds") // the old c1 ends
      const tasks = yield* toolset.runningTasks
      assert.deepStrictEqual(tasks.map((t) => [t.callId, t.name, t.status]), [["c1", "other", "running"]])
      assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
      assert.deepStrictEqual(chatProblems(yield* session.chat), [])
      assert.deepStrictEqual([...new Set(chatCallIds(yield* session.chat))], ["c1_final"], "only the timed-out notice")
    }).pipe(thenLetToolsEnd, Effect.provide(TestSession.layer)))
})
