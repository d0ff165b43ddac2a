/**
 * Interleavings the rule tests do not reach: the engine's own fibers are made to yield every few
 * steps (`MaxOpsBeforeYield` 3 to 64), and an interruption or a cancel is sent at each of those
 * steps in turn. Whatever the step, nothing stays registered and `awaitIdle` completes.
 */
import { assert, it } from "@effect/vitest"
import { Context, Duration, Effect, Fiber, Layer, References } from "effect"
import { AgentSession, AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { forEachKind, settle as settleKind } from "../support/toolsets.ts"
import { yieldsFor } from "../support/schedules.ts"

/** Lets every fiber that can run, run (they yield every few steps here), and the store finish. */
const settle = Effect.gen(function*() {
  for (let i = 0; i < 50; i++) yield* Effect.yieldNow
  yield* settleKind
})

/** Whether `awaitIdle` completes once the fibers that can run have run. */
const idleNow = (toolset: AsyncToolset.AsyncToolset) =>
  Effect.gen(function*() {
    const waiter = yield* Effect.forkChild(toolset.awaitIdle, { startImmediately: true })
    for (let i = 0; i < 20; i++) yield* Effect.yieldNow
    yield* settleKind
    const done = waiter.pollUnsafe() !== undefined
    yield* Fiber.interrupt(waiter)
    return done
  })

const quick = (timeout: Duration.Input | undefined) =>
  FunctionTool.make("quick", {
    description: "A short job",
    onDuplicateCall: "reject",
    ...(timeout === undefined ? {} : { timeout })
  }, () => Effect.sleep("5 millis").pipe(Effect.as("ok")))

const chatty = FunctionTool.make("chatty", { description: "Talks a lot, never ends" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("first")
    for (let i = 0; i < 5; i++) yield* AsyncRunContext.update(`step ${i}`)
    return yield* Effect.never
  }))

/** Scheduler yield settings the step-by-step races run under. */

forEachKind("AsyncToolset races", (kind) => {
  for (const maxOps of yieldsFor(kind)) for (const timeout of [undefined, "1 second"] as const) {
    it.effect(`a caller interrupted at any step of execute leaves no call registered (timeout ${timeout ?? "none"}, MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        for (let step = 0; step < 60; step++) {
          const leftover = yield* Effect.gen(function*() {
            const toolset = yield* kind.make({ id: "t", tools: [quick(timeout)] })
            const call = yield* ChatContext.functionCall({ callId: "c1", name: "quick" })
            const caller = yield* Effect.forkChild(
              toolset.execute(call).pipe(Effect.provideService(References.MaxOpsBeforeYield, maxOps)),
              { startImmediately: true }
            )
            for (let i = 0; i < step; i++) yield* Effect.yieldNow
            yield* Fiber.interrupt(caller)
            yield* settle
            yield* kind.advance("2 seconds")
            yield* settle
            return { tasks: (yield* toolset.runningTasks).length, idle: yield* idleNow(toolset) }
          }).pipe(Effect.scoped, kind.provide(TestSession.layer))
          assert.deepStrictEqual(leftover, { tasks: 0, idle: true }, `interrupted after ${step} yields`)
        }
      }))
  }

  for (const maxOps of yieldsFor(kind)) it.effect(`a cancel at any step of a chatty call lets awaitIdle complete (MaxOpsBeforeYield ${maxOps})`, () =>
    Effect.gen(function*() {
      for (let step = 0; step < 150; step++) {
        const { cancelled, idle } = yield* Effect.gen(function*() {
          const toolset = yield* kind.make({ id: "t", tools: [chatty] })
          const call = yield* ChatContext.functionCall({ callId: "c1", name: "chatty" })
          yield* Effect.forkChild(
            toolset.execute(call).pipe(Effect.provideService(References.MaxOpsBeforeYield, maxOps)),
            { startImmediately: true }
          )
          for (let i = 0; i < step; i++) yield* Effect.yieldNow
          // Too early, the call is not registered yet and there is nothing to cancel.
          const cancelled = (yield* toolset.cancel("c1")) === "cancelled"
          yield* settle
          return { cancelled, idle: yield* idleNow(toolset) }
        }).pipe(Effect.scoped, kind.provide(TestSession.layer))
        if (cancelled) assert.isTrue(idle, `cancelled after ${step} yields`)
      }
    }))

  it.effect("a retried reply request waits until the session is inactive again", () => {
    let controls: TestSession.TestSession["Service"] | undefined
    let requests = 0
    // The first request fails because the user started speaking: the session turns busy.
    const session = Layer.effectContext(Effect.map(
      TestSession.make({
        onReply: () =>
          Effect.suspend(() =>
            requests++ > 0 ? Effect.void : Effect.andThen(
              controls!.setBusy,
              Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "the user spoke" }))
            )
          )
      }),
      ({ controls: c, session }) => {
        controls = c
        return Context.make(AgentSession.AgentSession, session).pipe(Context.add(TestSession.TestSession, c))
      }
    ))
    const work = FunctionTool.make("work", { description: "Works a second" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* Effect.sleep("1 second")
        return "done"
      }))
    return Effect.gen(function*() {
      const chat = yield* TestSession.TestSession
      const toolset = yield* kind.make({ id: "t", tools: [work] })
      yield* toolset.execute(yield* ChatContext.functionCall({ callId: "c1", name: "work" }))
      yield* kind.advance("1 second")
      yield* kind.advance("10 seconds")
      assert.deepStrictEqual((yield* chat.replies).map((r) => r.whileBusy), [false]) // the retry waits
      yield* chat.setIdle
      yield* toolset.awaitIdle
      assert.deepStrictEqual((yield* chat.replies).map((r) => r.whileBusy), [false, false])
    }).pipe(kind.provide(session))
  })

  it.effect("a result with no JSON form gets the generic error output, not a cancellation", () =>
    Effect.gen(function*() {
      const tool = FunctionTool.make("f", { description: "Returns a function" }, () => Effect.succeed(() => 1))
      const toolset = yield* kind.make({ id: "t", tools: [tool] })
      const out = yield* toolset.execute(yield* ChatContext.functionCall({ callId: "c1", name: "f" }))
      assert.isTrue(out.isError)
      assert.strictEqual(out.output, FunctionTool.internalError("f").output)
    }).pipe(kind.provide(TestSession.layer)))
})
