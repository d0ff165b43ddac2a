/**
 * Callers of `execute` stopped by the usual combinators (a timeout, a race) in the very instant the
 * first output is settled, and callers waiting their turn under `replace` while the calls before
 * them stop (E7, E8, B9).
 *
 * The rule: a caller that gets no first output abandons its call (nothing of it reaches the chat,
 * it stops); a caller that gets it leaves the call running. With yield budgets of 3 and 4 Effect
 * can drop a returned value at a frame boundary (a known limit), so the strict check is made from
 * 16 on.
 */
import { assert, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Exit, Fiber, Option, References, Scope } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { chatProblems, makeFiberCounter, whileClockRuns } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"
import { promptlyLong as promptly, settleLong, yieldsFor } from "../support/schedules.ts"

const strict = (maxOps: number) => maxOps >= 16

/** Sleeps `before`, says "started", then "half way" 1 s later, then ends 1 s after that. */
const worker = (before: Duration.Input) =>
  FunctionTool.make("w", { description: "w", onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* Effect.sleep(before)
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep("1 second")
      yield* AsyncRunContext.update("half way")
      yield* Effect.sleep("1 second")
      return "done"
    }))

/** Whether anything of call `id` (its later items) reached the chat. */
const spoke = (session: TestSession.TestSession["Service"], id: string) =>
  Effect.map(session.chat, (chat) => chat.items.some((i) => "callId" in i && i.callId.startsWith(`${id}_`)))

forEachKind("B9 a caller whose own timeout expires in the instant the first update comes", (kind) => {
  for (const deadline of ["999 millis", "1 second", "1001 millis"] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`Effect.timeout(${deadline}) around execute, first update at 1 s: answered and running, or abandoned and silent (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scope = yield* Scope.make()
          const toolset = yield* kind.make({ id: "t", tools: [worker("1 second")] }).pipe(Scope.provide(scope))
          const outcomes: Array<[string, boolean]> = []
          for (let k = 0; k < 6; k++) {
            const id = `c${k}`
            const caller = yield* Effect.forkChild(Effect.timeoutOption(execute(toolset, id, "w"), deadline), { startImmediately: true })
            for (let i = 0; i < k; i++) yield* Effect.yieldNow
            yield* kind.advance("1 second")
            const got = yield* promptly(Fiber.join(caller), `caller ${id}`)
            outcomes.push([id, Option.isSome(got)])
          }
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          for (const [id, answered] of outcomes) {
            const said = yield* spoke(session, id)
            if (strict(maxOps) || !answered) {
              // answered: it ran on and reported; abandoned: nothing of it reached the chat
              assert.strictEqual(said, answered, `${id}: answered ${answered}, later items in the chat ${said}`)
            }
          }
          assert.deepStrictEqual(chatProblems(yield* session.chat), [])
          yield* promptly(Scope.close(scope, Exit.void), "close")
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
        })).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})

forEachKind("B9 a caller that loses a race to a signal its own tool gives", (kind) => {
  for (const signalFirst of [true, false] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`the tool ${signalFirst ? "signals, then updates" : "updates, then signals"}; the race's other side wakes on the signal: the loser's call is abandoned or answered, never silent and running (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scope = yield* Scope.make()
          const signals = new Map<string, Deferred.Deferred<void>>()
          const tool = FunctionTool.make("s", { description: "s", onDuplicateCall: "allow" }, () =>
            Effect.gen(function*() {
              const { callId } = yield* AsyncRunContext.functionCall
              yield* Effect.sleep("1 second")
              const signal = signals.get(callId)!
              if (signalFirst) Deferred.doneUnsafe(signal, Exit.void)
              yield* AsyncRunContext.update("started")
              if (!signalFirst) Deferred.doneUnsafe(signal, Exit.void)
              yield* Effect.sleep("1 second")
              yield* AsyncRunContext.update("half way")
              return "done"
            }))
          const toolset = yield* kind.make({ id: "t", tools: [tool] }).pipe(Scope.provide(scope))
          const outcomes: Array<[string, boolean]> = []
          for (let k = 0; k < 4; k++) {
            const id = `r${k}`
            const signal = yield* Deferred.make<void>()
            signals.set(id, signal)
            const racer = yield* Effect.forkChild(
              Effect.raceFirst(Effect.map(execute(toolset, id, "s"), () => true), Effect.as(Deferred.await(signal), false)),
              { startImmediately: true }
            )
            // (A durable call's tool starts asynchronously: it is let reach its first sleep before the clock moves.)
            if (kind.durable) yield* settleLong
            for (let i = 0; i < k; i++) yield* Effect.yieldNow
            yield* kind.advance("1 second")
            outcomes.push([id, yield* promptly(Fiber.join(racer), `racer ${id}`)])
          }
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          for (const [id, answered] of outcomes) {
            const said = yield* spoke(session, id)
            if (strict(maxOps) || !answered) assert.strictEqual(said, answered, `${id}: answered ${answered}, later items in the chat ${said}`)
          }
          assert.deepStrictEqual(chatProblems(yield* session.chat), [])
          yield* promptly(Scope.close(scope, Exit.void), "close")
          yield* settleLong
          assert.strictEqual(fibers.active, 0)
        })).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})

forEachKind("E8 callers waiting their turn under replace", (kind) => {
  for (const maxOps of yieldsFor(kind)) {
    it.effect(`three replacing calls, the middle caller interrupted after k turns while the first stops inside an uninterruptible region: no call runs unanswered, none left (MaxOpsBeforeYield ${maxOps})`, () => {
      const fibers = makeFiberCounter()
      return fibers.track(Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const started: Array<string> = []
        const tool = FunctionTool.make("r", { description: "r", onDuplicateCall: "replace" }, () =>
          Effect.gen(function*() {
            const { callId } = yield* AsyncRunContext.functionCall
            started.push(callId)
            yield* AsyncRunContext.update("started")
            // only the first call of each round stops slowly (close itself would wait for such a region)
            if (callId.startsWith("a")) yield* Effect.uninterruptible(Effect.sleep("1 second"))
            yield* Effect.sleep("1 second")
            yield* AsyncRunContext.update("half way")
            yield* Effect.sleep("10 seconds")
            return "done"
          }))
        for (let k = 0; k < 12; k++) {
          const scope = yield* Scope.make()
          const toolset = yield* kind.make({ id: `t${k}`, tools: [tool] }).pipe(Scope.provide(scope))
          const first = yield* execute(toolset, `a${k}`, "r")
          assert.isTrue(AsyncToolset.isPending(first))
          // b waits for a to stop (a is inside its uninterruptible second)
          const b = yield* Effect.forkChild(execute(toolset, `b${k}`, "r"), { startImmediately: true })
          for (let i = 0; i < k % 4; i++) yield* Effect.yieldNow
          if (k >= 4) yield* kind.advance(k >= 8 ? "1 second" : "500 millis")
          yield* promptly(Fiber.interrupt(b), `interrupting b${k}`)
          // c replaces whatever is left, and gets its own answer
          const c = yield* Effect.forkChild(execute(toolset, `c${k}`, "r"), { startImmediately: true })
          yield* kind.advance("2 seconds")
          const out = yield* promptly(Fiber.join(c), `c${k}`)
          assert.isTrue(AsyncToolset.isPending(out), `c${k}: ${out.output}`)
          const tasks = yield* toolset.runningTasks
          assert.deepStrictEqual(tasks.map((t) => t.callId), [`c${k}`], `k=${k}: running ${JSON.stringify(tasks)}`)
          yield* promptly(Scope.close(scope, Exit.void), "close")
        }
        yield* kind.advance("1 minute")
        yield* settleLong
        const chat = yield* session.chat
        assert.deepStrictEqual(chatProblems(chat), [])
        // an interrupted b never says anything in the chat
        assert.isFalse(chat.items.some((i) => "callId" in i && /^b\d+_/.test(i.callId)))
        assert.strictEqual(fibers.active, 0)
      })).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})
