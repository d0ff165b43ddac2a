/**
 * Review 2 (the hot-path changes of 57c1ac9, b84cc45, 59a8349): the reply coordinator's request
 * step, now a detached fiber (`Effect.runForkWith`) interrupted through `Effect.onInterrupt` only
 * once it is known to have suspended. Toolset close / session release while the step is in each
 * port operation, in each fault shape; no fiber may outlive close (E6) and close may not hang.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, References, Schedule, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { promptlyLong as promptly, settleLong, yieldSettings } from "./support/review2.ts"
import { makeFiberCounter, namedCallIds, whileClockRuns } from "./support/reliability.ts"


type Op = "items" | "awaitInactive" | "generateReply"
type Shape = "ok" | "fail" | "die" | "interrupt" | "hang" | "slow"

const ops: ReadonlyArray<Op> = ["items", "awaitInactive", "generateReply"]
const shapes: ReadonlyArray<Shape> = ["ok", "fail", "die", "interrupt", "hang", "slow"]

const answer = <A>(shape: Shape, ok: Effect.Effect<A, AgentSession.SessionError>, op: string) => {
  switch (shape) {
    case "ok":
      return ok
    case "fail":
      return Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: `injected fail in ${op}` }))
    case "die":
      return Effect.die(new Error(`injected die in ${op}`))
    case "interrupt":
      return Effect.interrupt
    case "hang":
      return Effect.never
    case "slow":
      return Effect.andThen(Effect.sleep("5 seconds"), ok)
  }
}

/**
 * The in-memory session whose `op`, the first time the coordinator calls it, first calls `hook`
 * (synchronously, before answering), then answers in `shape`.
 */
const hookedSession = (op: Op, shape: Shape, hook: () => void) => {
  let fired = false
  return Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
    const once = <A>(ok: Effect.Effect<A, AgentSession.SessionError>) =>
      Effect.suspend(() => {
        if (fired) return ok
        fired = true
        hook()
        return answer(shape, ok, op)
      })
    const port = AgentSession.AgentSession.of({
      ...session,
      items: op === "items" ? once(session.items) : session.items,
      awaitInactive: op === "awaitInactive" ? Effect.orDie(once(session.awaitInactive)) : session.awaitInactive,
      generateReply: (request) => op === "generateReply" ? once(session.generateReply(request)) : session.generateReply(request)
    })
    return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
  }))
}

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

describe("Review2: close requested while the request step runs inline leaves the step running (E6)", () => {
  /**
   * An agent runtime's port can wake another fiber synchronously (a Deferred, a Queue taker):
   * e.g. `generateReply` hands the request to the agent loop, which ends the session (the user
   * hung up, a hand-off) and closes the toolset, before the port answers asynchronously. The
   * close reaches `release` while the coordinator's fiber is still running the inline step: the
   * coordinator's interruption is deferred to its next run-loop step, which is the very step that
   * would install `Effect.onInterrupt(..., () => Fiber.interrupt(step))`. The detached step fiber
   * (not a child any more) is never interrupted: it outlives close.
   */
  for (const op of ops) {
    for (const shape of ["hang", "slow"] as const) {
      for (const maxOps of yieldSettings) {
        it.effect(`${op} wakes a fiber that closes the toolset, then answers '${shape}': no fiber outlives close (MaxOpsBeforeYield ${maxOps})`, () => {
          const fibers = makeFiberCounter()
          let trigger: Deferred.Deferred<void> | undefined
          return fibers.track(Effect.gen(function*() {
            trigger = yield* Deferred.make<void>()
            const scope = yield* Scope.make()
            const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scope))
            // The agent loop: wakes on the port's signal and closes the toolset.
            const closer = yield* Effect.forkChild(
              Effect.andThen(Deferred.await(trigger), Scope.close(scope, Exit.void)),
              { startImmediately: true }
            )
            yield* execute(toolset, "c1", "job")
            yield* TestClock.adjust("1 second") // c1_final: the coordinator's round begins
            yield* Effect.yieldNow
            yield* promptly(Fiber.join(closer), "close")
            yield* settleLong
            // E6: once close returned, no fiber of the toolset is left (the clock has not moved:
            // a 'slow' step would still call the port 5 s after close, a 'hang' one lives forever).
            assert.strictEqual(fibers.active, 0, "a fiber outlived the toolset's close")
          })).pipe(
            Effect.provide(hookedSession(op, shape, () => Deferred.doneUnsafe(trigger!, Effect.void))),
            Effect.provideService(References.MaxOpsBeforeYield, maxOps)
          )
        })
      }
    }
  }
})

describe("Review2: close while the request step is suspended in a port operation", () => {
  /**
   * The step suspends in `op` (answering `shape` only later, or never); the toolset closes then.
   * Close must return promptly, and no fiber (the call's, the coordinator's, the step's) may be
   * left.
   */
  for (const op of ops) {
    for (const shape of shapes) {
      for (const maxOps of yieldSettings) {
        it.effect(`step suspended in ${op} (then '${shape}'), close: close returns, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
          const fibers = makeFiberCounter()
          let gate: Deferred.Deferred<void> | undefined
          return fibers.track(Effect.gen(function*() {
            gate = yield* Deferred.make<void>()
            const scope = yield* Scope.make()
            const toolset = yield* AsyncToolset.make({
              id: "t",
              tools: [job],
              replyTimeout: "1 hour",
              sessionRetry: Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 2 }))
            }).pipe(Scope.provide(scope))
            yield* execute(toolset, "c1", "job")
            yield* TestClock.adjust("1 second")
            yield* settleLong
            const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true })
            yield* promptly(Fiber.join(closing), "close")
            yield* TestClock.adjust("10 seconds")
            yield* settleLong
            assert.strictEqual(fibers.active, 0, "a fiber outlived the toolset's close")
          })).pipe(
            Effect.provide(
              Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
                let fired = false
                const once = <A>(ok: Effect.Effect<A, AgentSession.SessionError>) =>
                  Effect.suspend(() => {
                    if (fired) return ok
                    fired = true
                    return Effect.andThen(Deferred.await(gate!), answer(shape, ok, op))
                  })
                const port = AgentSession.AgentSession.of({
                  ...session,
                  items: op === "items" ? once(session.items) : session.items,
                  awaitInactive: op === "awaitInactive" ? Effect.orDie(once(session.awaitInactive)) : session.awaitInactive,
                  generateReply: (r) => op === "generateReply" ? once(session.generateReply(r)) : session.generateReply(r)
                })
                return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
              }))
            ),
            Effect.provideService(References.MaxOpsBeforeYield, maxOps)
          )
        })
      }
    }
  }
})

describe("Review2: two toolsets on one session close in either order while the step is suspended", () => {
  for (const op of ops) {
    for (const order of ["a-then-b", "b-then-a"] as const) {
      for (const maxOps of yieldSettings) {
        it.effect(`step suspended in ${op}; ${order}: the other toolset's results still get one reply; no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
          const fibers = makeFiberCounter()
          let gate: Deferred.Deferred<void> | undefined
          return fibers.track(Effect.gen(function*() {
            gate = yield* Deferred.make<void>()
            const session = yield* TestSession.TestSession
            const scopeA = yield* Scope.make()
            const scopeB = yield* Scope.make()
            const a = yield* AsyncToolset.make({ id: "a", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeA))
            const b = yield* AsyncToolset.make({ id: "b", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeB))
            yield* execute(a, "a1", "job")
            yield* execute(b, "b1", "job")
            yield* TestClock.adjust("1 second") // a1_final and b1_final: the step suspends in op
            yield* settleLong
            const [first, second, firstScope, secondScope] = order === "a-then-b" ? [a, b, scopeA, scopeB] as const : [b, a, scopeB, scopeA] as const
            yield* promptly(Scope.close(firstScope, Exit.void), "first close")
            yield* Deferred.succeed(gate, void 0) // the port answers
            yield* whileClockRuns(second.awaitIdle, { what: "the other toolset's awaitIdle" })
            const replies = yield* session.replies
            const named = replies.flatMap((r) => namedCallIds(r.instructions))
            const survivor = second === a ? "a1_final" : "b1_final"
            assert.include(named, survivor, JSON.stringify(replies.map((r) => r.instructions)))
            assert.isFalse(replies.some((r) => r.whileBusy))
            void first
            yield* promptly(Scope.close(secondScope, Exit.void), "second close")
            yield* settleLong
            assert.strictEqual(fibers.active, 0, "a fiber outlived both closes")
          })).pipe(
            Effect.provide(
              Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
                let fired = false
                const once = <A>(ok: Effect.Effect<A, AgentSession.SessionError>) =>
                  Effect.suspend(() => {
                    if (fired) return ok
                    fired = true
                    return Effect.andThen(Deferred.await(gate!), ok)
                  })
                const port = AgentSession.AgentSession.of({
                  ...session,
                  items: op === "items" ? once(session.items) : session.items,
                  awaitInactive: op === "awaitInactive" ? Effect.orDie(once(session.awaitInactive)) : session.awaitInactive,
                  generateReply: (r) => op === "generateReply" ? once(session.generateReply(r)) : session.generateReply(r)
                })
                return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
              }))
            ),
            Effect.provideService(References.MaxOpsBeforeYield, maxOps)
          )
        })
      }
    }
  }
})

describe("Review2: close while the coordinator retries (an insertion, or a failed reply request)", () => {
  type Where = "insert-retry" | "reply-retry"
  for (const where of ["insert-retry", "reply-retry"] as const satisfies ReadonlyArray<Where>) {
    for (const shape of ["fail", "die", "interrupt", "hang"] as const) {
      for (const maxOps of yieldSettings) {
        it.effect(`${where}: the port answers '${shape}' and the toolset closes during the retries: close returns, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
          const fibers = makeFiberCounter()
          return fibers.track(Effect.gen(function*() {
            const scope = yield* Scope.make()
            const toolset = yield* AsyncToolset.make({
              id: "t",
              tools: [job],
              replyTimeout: "1 hour",
              sessionRetry: Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 100 }))
            }).pipe(Scope.provide(scope))
            yield* execute(toolset, "c1", "job")
            yield* TestClock.adjust("1 second")
            yield* settleLong
            yield* TestClock.adjust("2500 millis") // in the middle of the retries
            yield* settleLong
            yield* promptly(Scope.close(scope, Exit.void), "close")
            yield* settleLong
            assert.strictEqual(fibers.active, 0, "a fiber outlived the toolset's close")
          })).pipe(
            Effect.provide(Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
              const port = AgentSession.AgentSession.of({
                ...session,
                insert: (items) => where === "insert-retry" && items.some((i) => "callId" in i && i.callId === "c1_final") ? answer(shape, session.insert(items), "insert") : session.insert(items),
                generateReply: (r) => where === "reply-retry" ? answer(shape, session.generateReply(r), "generateReply") : session.generateReply(r)
              })
              return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
            }))),
            Effect.provideService(References.MaxOpsBeforeYield, maxOps)
          )
        })
      }
    }
  }
})
