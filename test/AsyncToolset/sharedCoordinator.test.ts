/**
 * Several toolsets of one session share one reply coordinator (rules C2, C3, C4c across toolsets):
 * what is pending in any of them gets one reply, one toolset closing or failing never holds back or
 * drops another's items, and call ids stay unique in the one chat they all write to (B7), a
 * toolset made again on the session (an agent hand-off) included.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, References, Scope } from "effect"
import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { chatProblems, faultySession, makeFiberCounter, namedCallIds, whileClockRuns } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"
import { yieldsFor } from "../support/schedules.ts"

/**
 * Scheduler settings the races run under: a yield after almost every step, up to the default
 * (2048). Below 3 a fiber that resumes yields again before its first step: it never progresses.
 */

/** Says "started", works a second, returns "done". */
const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

forEachKind("AsyncToolset shared reply coordinator", (kind) => {
  describe("C2/C3 one reply for what is pending in several toolsets", () => {
    /** Says "started", "half way" a second later, and ends a second after that. */
    const halfWay = (name: string) =>
      FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("started")
          yield* Effect.sleep("1 second")
          yield* AsyncRunContext.update("half way")
          yield* Effect.sleep("1 second")
          return `${name} done`
        }))

    for (const maxOps of yieldsFor(kind)) {
      it.effect(`one toolset closes while the other goes on: one reply for what is pending, nothing of the closed one after close, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        return fibers.track(Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const scopeA = yield* Scope.make()
          const scopeB = yield* Scope.make()
          const a = yield* kind.make({ id: "a", tools: [halfWay("flights")] }).pipe(Scope.provide(scopeA))
          const b = yield* kind.make({ id: "b", tools: [halfWay("hotels")] }).pipe(Scope.provide(scopeB))
          yield* execute(a, "f1", "flights")
          yield* execute(b, "h1", "hotels")
          yield* execute(b, "h2", "hotels")
          yield* session.setBusy
          yield* kind.advance("1 second") // half way, while busy
          yield* Scope.close(scopeA, Exit.void)
          const closedAt = (yield* session.insertions).length
          yield* kind.advance("1 second")
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
        })).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  })

  describe("C4c one toolset's failing session operation never holds back another's replies", () => {
    it.effect("an insertion retry that never returns does not hold back the replies of another toolset of the session", () => {
      const faulty = faultySession({
        insert: (items, attempt) =>
          items.some((i) => "callId" in i && i.callId === "a1_final") ? (attempt === 1 ? "fail" : "hang") : "ok"
      })
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const a = yield* kind.make({ id: "a", tools: [job] })
        const b = yield* kind.make({ id: "b", tools: [job] })
        yield* execute(a, "a1", "job")
        yield* kind.advance("1 second") // a1_final fails; its retry hangs
        yield* execute(b, "b1", "job")
        yield* kind.advance("1 second") // b1_final is in the chat
        yield* whileClockRuns(b.awaitIdle, { what: "b.awaitIdle", step: "10 seconds", steps: 60 })
        assert.include((yield* session.replies).flatMap((r) => namedCallIds(r.instructions)), "b1_final")
      }).pipe(kind.provide(faulty.layer))
    })
  })

  describe("B7 call ids stay unique in the chat the toolsets share", () => {
    it.effect("a toolset made again on the same session (agent hand-off) never writes a pair the first one wrote", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const reporting = FunctionTool.make("job", { description: "Reports, then ends" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("started")
            yield* Effect.sleep("1 second")
            return "done"
          }))
        // The first agent's toolset.
        yield* Effect.gen(function*() {
          const first = yield* kind.make({ id: "t", tools: [reporting] })
          yield* execute(first, "c1", "job")
          yield* kind.advance("1 second")
          yield* first.awaitIdle
        }).pipe(Effect.scoped)
        // The next agent's toolset, on the same session and chat; the model reuses an ended call's id.
        const second = yield* kind.make({ id: "t", tools: [reporting] })
        yield* execute(second, "c1", "job")
        yield* kind.advance("1 second")
        yield* second.awaitIdle
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("calls c1, c1 again, then c1_run2: no call id appears twice in the chat", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const quick = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
          Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("1 second"), "done")))
        const toolset = yield* kind.make({ id: "t", tools: [quick] })
        // The second c1 writes c1_run2_final; a model copying ids it saw may then send "c1_run2".
        for (const id of ["c1", "c1", "c1_run2"]) {
          yield* execute(toolset, id, "job")
          yield* kind.advance("1 second")
          yield* toolset.awaitIdle
        }
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
      }).pipe(kind.provide(TestSession.layer)))
  })
})
