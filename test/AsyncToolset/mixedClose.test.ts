/**
 * a toolset of the test's kind and an in-memory one on one session; one closes while a
 * reply request covering both is in flight; replace chains across a stopping call.
 */
import { assert, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Scope, Stream } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { chatProblems, namedCallIds, whileClockRuns } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"

const job = (name: string) =>
  FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep("1 second")
      return "done"
    }))

const events = (toolset: AsyncToolset.AsyncToolset) =>
  toolset.events.pipe(
    Stream.filter((e) => e._tag === "ReplyDelivered" || e._tag === "ReplySkipped"),
    Stream.map((e) => `${e._tag} ${e.callIds.join(" ")}`),
    Stream.runCollect,
    Effect.forkChild({ startImmediately: true })
  )

forEachKind("a toolset closing while a reply covering another is taken up; replace chains", (kind) => {
  for (const closing of ["kind", "memory"] as const) {
    it.effect(`the ${closing} toolset closes while the reply covering both is being taken up: the other is told delivered, awaitIdle returns, one request`, () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const sa = yield* Scope.make()
        const sb = yield* Scope.make()
        const a = yield* kind.make({ id: "a", tools: [job("a_job")] }).pipe(Scope.provide(sa))
        const b = yield* AsyncToolset.make({ id: "b", tools: [job("b_job")] }).pipe(Scope.provide(sb))
        const aEv = yield* events(a)
        const bEv = yield* events(b)
        yield* execute(a, "a1", "a_job")
        yield* execute(b, "b1", "b_job")
        yield* kind.advance("1 second") // both results; the request goes out and takes 5 s to be taken up
        yield* kind.advance("2 seconds")
        const [closeScope, other] = closing === "kind" ? [sa, b] as const : [sb, a] as const
        yield* whileClockRuns(Scope.close(closeScope, Exit.void), { what: "close" })
        yield* kind.advance("5 seconds")
        yield* whileClockRuns(other.awaitIdle, { what: "awaitIdle" })
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1, JSON.stringify(replies.map((r) => namedCallIds(r.instructions))))
        yield* Scope.close(closing === "kind" ? sb : sa, Exit.void)
        const told = yield* Fiber.join(closing === "kind" ? bEv : aEv)
        assert.deepStrictEqual(told, [`ReplyDelivered ${closing === "kind" ? "b1_final" : "a1_final"}`])
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
      }).pipe(kind.provide(TestSession.layerWith({ onReply: () => Effect.sleep("5 seconds") }))))
  }

  it.effect("D4 replace chain: b replaces a (a stopping uninterruptibly), c replaces b while b waits: b answers at once, c runs only after a stopped, b never runs", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const log: Array<string> = []
      const tool = FunctionTool.make("r", { description: "r", onDuplicateCall: "replace" }, () =>
        Effect.gen(function*() {
          const { callId } = yield* AsyncRunContext.functionCall
          log.push(`start ${callId}`)
          yield* AsyncRunContext.update("started")
          yield* Effect.uninterruptible(Effect.sleep("3 seconds"))
          log.push(`stop ${callId}`)
          yield* Effect.sleep("1 second")
          log.push(`end ${callId}`)
          return "done"
        }).pipe(Effect.onInterrupt(() => Effect.sync(() => log.push("interrupted"))))
      )
      const toolset = yield* kind.make({ id: "t", tools: [tool] })
      yield* execute(toolset, "a", "r")
      yield* kind.advance("1 second")
      const b = yield* Effect.forkChild(execute(toolset, "b", "r"), { startImmediately: true })
      yield* kind.advance("1 second")
      const c = yield* Effect.forkChild(execute(toolset, "c", "r"), { startImmediately: true })
      yield* kind.settle
      const bOut = b.pollUnsafe()
      assert.isDefined(bOut, "b (replaced while waiting) answered at once")
      yield* kind.advance("20 seconds")
      const cOut = yield* whileClockRuns(Fiber.join(c), { what: "c" })
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
      assert.notInclude(log, "start b")
      assert.isBelow(log.indexOf("stop a"), log.indexOf("start c"), log.join(", "))
      assert.isTrue(AsyncToolset.isPending(cOut))
      assert.deepStrictEqual(chatProblems(yield* session.chat), [])
    }).pipe(kind.provide(TestSession.layer)))
})
