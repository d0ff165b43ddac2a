/**
 * Review 2: a toolset that closes while the coordinator's request step runs inline (its port
 * operation woke a fiber that closed it) takes its items back out of the batch; when the step then
 * suspends, `slowRequest` is built with `newestPolicy(coordinator)`, which reads the last item of
 * an empty batch and throws a TypeError. The round dies with that defect (reported as a session
 * failure), and the request step, now a detached fiber, is neither awaited nor interrupted: it
 * runs on beside the coordinator's later rounds, sharing their batch.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, References, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { makeFiberCounter, namedCallIds, whileClockRuns } from "./support/reliability.ts"
import { settleLong } from "./support/review2.ts"

/** Yield settings at which the closing fiber reaches the toolset's close within its budget (inline). */
const inlineSettings = [16, 2048] as const

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

/**
 * The in-memory session whose first chat read (the request step's) wakes the agent loop, which
 * closes toolset A, and answers `then` (5 s late, or never); later reads answer asynchronously;
 * a reply request is recorded at once and answered 10 s later.
 */
const sessionWhoseFirstReadClosesA = (trigger: () => void, then: "slow" | "hang") =>
  Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
    let reads = 0
    const port = AgentSession.AgentSession.of({
      ...session,
      items: Effect.suspend(() => {
        // Later reads answer asynchronously (a session that reads its chat over IPC).
        if (++reads !== 1) return Effect.andThen(Effect.yieldNow, session.items)
        trigger()
        return then === "slow" ? Effect.andThen(Effect.sleep("5 seconds"), session.items) : Effect.never
      }),
      // A reply request is recorded at once and answered 10 s later (the agent speaks).
      generateReply: (request) => Effect.andThen(session.generateReply(request), Effect.sleep("10 seconds"))
    })
    return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
  }))

describe("Review2: a toolset closed during the request step's inline run (two toolsets on one session)", () => {
  for (const maxOps of inlineSettings) {
    it.effect(`B's result gets exactly one reply: the orphaned step does not ask a second time (MaxOpsBeforeYield ${maxOps})`, () => {
      let trigger: Deferred.Deferred<void> | undefined
      return Effect.gen(function*() {
        trigger = yield* Deferred.make<void>()
        const session = yield* TestSession.TestSession
        const scopeA = yield* Scope.make()
        const scopeB = yield* Scope.make()
        const a = yield* AsyncToolset.make({ id: "a", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeA))
        const b = yield* AsyncToolset.make({ id: "b", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeB))
        // The agent loop: woken by the port, it closes A (a hand-off away from A's agent).
        yield* Effect.forkChild(Effect.andThen(Deferred.await(trigger), Scope.close(scopeA, Exit.void)), { startImmediately: true })
        yield* execute(a, "a1", "job")
        yield* TestClock.adjust("1 second") // t=1 a1_final: the step reads the chat (answers at t=6); A closes inline
        yield* settleLong
        yield* execute(b, "b1", "job")
        yield* TestClock.adjust("1 second") // t=2 b1_final: its reply is requested (the request takes 10 s)
        yield* settleLong
        yield* TestClock.adjust("5 seconds") // t=7: the first step's read answered
        yield* settleLong
        yield* whileClockRuns(b.awaitIdle, { what: "b.awaitIdle" })
        const replies = yield* session.replies
        const forB1 = replies.filter((r) => namedCallIds(r.instructions).includes("b1_final"))
        // C2: exactly one reply for what is pending; C3: no item delivered twice.
        assert.strictEqual(forB1.length, 1, `replies: ${JSON.stringify(replies.map((r) => r.instructions))}`)
        yield* Scope.close(scopeB, Exit.void)
      }).pipe(
        Effect.provide(sessionWhoseFirstReadClosesA(() => Deferred.doneUnsafe(trigger!, Effect.void), "slow")),
        Effect.provideService(References.MaxOpsBeforeYield, maxOps)
      )
    })

    it.effect(`the first step is not left running: after both toolsets close no fiber is left (MaxOpsBeforeYield ${maxOps})`, () => {
      const fibers = makeFiberCounter()
      let trigger: Deferred.Deferred<void> | undefined
      return fibers.track(Effect.gen(function*() {
        trigger = yield* Deferred.make<void>()
        const scopeA = yield* Scope.make()
        const scopeB = yield* Scope.make()
        const a = yield* AsyncToolset.make({ id: "a", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeA))
        yield* AsyncToolset.make({ id: "b", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeB))
        const closer = yield* Effect.forkChild(Effect.andThen(Deferred.await(trigger), Scope.close(scopeA, Exit.void)), { startImmediately: true })
        yield* execute(a, "a1", "job")
        yield* TestClock.adjust("1 second")
        yield* settleLong
        yield* Fiber.join(closer)
        yield* Scope.close(scopeB, Exit.void)
        yield* settleLong
        assert.strictEqual(fibers.active, 0, "a fiber outlived both toolsets")
      })).pipe(
        Effect.provide(sessionWhoseFirstReadClosesA(() => Deferred.doneUnsafe(trigger!, Effect.void), "hang")),
        Effect.provideService(References.MaxOpsBeforeYield, maxOps)
      )
    })
  }
})
