/**
 * Review 3: the request step (a detached fiber) is tracked as `coordinator.step` so that `release`
 * interrupts it and waits for it. When the step does not answer within `replyTimeout`,
 * `slowRequest` interrupts it without waiting, and the round is given up. A step inside an
 * uninterruptible port operation (an adapter that makes its reply request, or its chat read over
 * IPC, uninterruptible so that it is never half sent) is still running then. It was forgotten,
 * and outlived the toolset's close (E6: no fiber outlives the close). Now it is kept until it
 * ends, and close waits for it, as close waits for a tool inside an uninterruptible region.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, References, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { execute } from "./support/lifetime.ts"
import { makeFiberCounter } from "./support/reliability.ts"
import { promptlyLong as promptly, settleLong } from "./support/review2.ts"
import { wrappedSession, yieldSettings } from "./support/review3.ts"

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

type Op = "items" | "generateReply"

/** The first `op` the coordinator makes runs 10 minutes, uninterruptibly. */
const slowUninterruptible = (op: Op, uninterruptible = true) =>
  wrappedSession((session) => {
    let fired = false
    const once = <A, E>(ok: Effect.Effect<A, E>) =>
      Effect.suspend(() => {
        if (fired) return ok
        fired = true
        const slow = Effect.andThen(Effect.sleep("10 minutes"), ok)
        return uninterruptible ? Effect.uninterruptible(slow) : slow
      })
    return op === "items" ? { items: once(session.items) } : { generateReply: (r) => once(session.generateReply(r)) }
  })

describe("Review3: a request step timed out inside an uninterruptible port operation", () => {
  for (const op of ["items", "generateReply"] as const) {
    for (const maxOps of yieldSettings) {
      it.effect(`control: the same operation, interruptible: the timed-out step ends at once, nothing outlives close (${op}, MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          const scope = yield* Scope.make()
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], replyTimeout: "1 minute" }).pipe(Scope.provide(scope))
          yield* execute(toolset, "c1", "job")
          yield* TestClock.adjust("1 second")
          yield* settleLong
          yield* TestClock.adjust("61 seconds")
          yield* settleLong
          yield* promptly(Scope.close(scope, Exit.void), "close")
          yield* settleLong
          assert.strictEqual(fibers.active, 0, "a fiber outlived the toolset's close")
        })).pipe(Effect.provide(slowUninterruptible(op, false)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })

      it.effect(`the timed-out step is not forgotten: close waits for it, nothing outlives close (${op} uninterruptible for 10 minutes, replyTimeout 1 minute, MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          const scope = yield* Scope.make()
          const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], replyTimeout: "1 minute" }).pipe(Scope.provide(scope))
          yield* execute(toolset, "c1", "job")
          yield* TestClock.adjust("1 second") // c1_final: the step suspends in the slow operation
          yield* settleLong
          yield* TestClock.adjust("61 seconds") // past replyTimeout: the step is interrupted and the round given up
          yield* settleLong
          const closing = yield* Effect.forkDetach(Scope.close(scope, Exit.void), { startImmediately: true })
          yield* settleLong
          assert.isUndefined(closing.pollUnsafe(), "close waits for the port operation it cannot interrupt")
          yield* TestClock.adjust("10 minutes") // the port operation ends
          yield* promptly(Fiber.join(closing), "close")
          assert.strictEqual(fibers.active, 0, "a fiber outlived the toolset's close")
        })).pipe(Effect.provide(slowUninterruptible(op)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})
