/**
 * Review 3: two toolsets on one session; the request step suspends in a port operation with
 * both toolsets' results in the batch; A closes; then the port answers in each shape. B's result
 * is answered (or reported, when the round fails before the request); nothing names A's result
 * once A closed (its close said no reply would be requested for it); no reply while busy; close
 * returns; no fiber is left after both closed.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, References, Schedule, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { makeFiberCounter, namedCallIds } from "./support/reliability.ts"
import { promptlyLong as promptly, settleLong } from "./support/review2.ts"
import { sessionError, wrappedSession, yieldSettings } from "./support/review3.ts"

type Shape = "ok" | "fail" | "die" | "interrupt"

const answer = <A>(shape: Shape, ok: Effect.Effect<A, AgentSession.SessionError>): Effect.Effect<A, AgentSession.SessionError> =>
  shape === "ok" ? ok : shape === "fail" ? Effect.fail(sessionError("injected")) : shape === "die" ? Effect.die(new Error("injected")) : Effect.interrupt

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

describe("Review3: A closes while the step (for A's and B's results) is suspended, then the port answers", () => {
  for (const op of ["items", "awaitInactive", "generateReply"] as const) {
    for (const shape of ["ok", "fail", "die", "interrupt"] as const) {
      for (const maxOps of yieldSettings) {
        it.effect(`step suspended in ${op}, A closes, then '${shape}': nothing names a1_final after A closed; B answered; no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
          const fibers = makeFiberCounter()
          let gate: Deferred.Deferred<void> | undefined
          return fibers.track(Effect.gen(function*() {
            gate = yield* Deferred.make<void>()
            const session = yield* TestSession.TestSession
            const scopeA = yield* Scope.make()
            const scopeB = yield* Scope.make()
            const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 3 }))
            const a = yield* AsyncToolset.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 hour" }).pipe(Scope.provide(scopeA))
            const b = yield* AsyncToolset.make({ id: "b", tools: [job], sessionRetry: retry, replyTimeout: "1 hour" }).pipe(Scope.provide(scopeB))
            yield* execute(a, "a1", "job")
            yield* execute(b, "b1", "job")
            yield* TestClock.adjust("1 second") // a1_final, b1_final: one round; its step suspends in op
            yield* settleLong
            const before = (yield* session.replies).length
            yield* promptly(Scope.close(scopeA, Exit.void), "A's close")
            yield* Deferred.succeed(gate, void 0)
            yield* settleLong
            for (let i = 0; i < 6; i++) {
              yield* TestClock.adjust("1 second")
              yield* settleLong
            }
            const replies = yield* session.replies
            const after = replies.slice(before)
            assert.isFalse(
              after.some((r) => namedCallIds(r.instructions).includes("a1_final")),
              `asked about a1_final after A closed: ${JSON.stringify(after.map((r) => r.instructions))}`
            )
            assert.isFalse(replies.some((r) => r.whileBusy))
            // the round fails before the request only when the idle wait fails (reported, by design)
            if (!(op === "awaitInactive" && shape !== "ok")) {
              assert.isTrue(replies.some((r) => namedCallIds(r.instructions).includes("b1_final")), JSON.stringify(replies.map((r) => r.instructions)))
            }
            yield* promptly(Scope.close(scopeB, Exit.void), "B's close")
            yield* settleLong
            assert.strictEqual(fibers.active, 0, "a fiber outlived both closes")
          })).pipe(
            Effect.provide(wrappedSession((session) => {
              let fired = false
              const once = <A>(ok: Effect.Effect<A, AgentSession.SessionError>) =>
                Effect.suspend(() => {
                  if (fired) return ok
                  fired = true
                  return Effect.andThen(Deferred.await(gate!), answer(shape, ok))
                })
              return {
                items: op === "items" ? once(session.items) : session.items,
                awaitInactive: op === "awaitInactive" ? Effect.orDie(once(session.awaitInactive)) : session.awaitInactive,
                // the request is made (recorded) before it suspends; its answer comes after A closed
                generateReply: (r) => op === "generateReply" ? Effect.andThen(session.generateReply(r), once(Effect.void)) : session.generateReply(r)
              }
            })),
            Effect.provideService(References.MaxOpsBeforeYield, maxOps)
          )
        })
      }
    }
  }
})
