/**
 * Review 2: C3 under insertion failures. An insertion cut short (the port inserted the items, then
 * answered with a failure, a defect or an interrupt cause) is retried by the coordinator, which
 * first reads the chat to see whether it happened after all. When that read fails too, the retry
 * inserts again: the item is in the chat twice.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, References, Schedule } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { chatProblems, namedCallIds, whileClockRuns } from "./support/reliability.ts"
import { yieldSettings } from "./support/review2.ts"

type Shape = "fail" | "die" | "interrupt"

const answer = (shape: Shape, op: string): Effect.Effect<never, AgentSession.SessionError> =>
  shape === "fail"
    ? Effect.fail(new AgentSession.SessionError({ operation: "insert", message: `injected fail in ${op}` }))
    : shape === "die"
    ? Effect.die(new Error(`injected die in ${op}`))
    : Effect.interrupt

/** c1_update_1's first insertion happens but answers `cut`; the chat read after it answers `read`. */
const sessionWith = (cut: Shape, read: Shape) =>
  Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
    let cutDone = false
    let readFailed = false
    const port = AgentSession.AgentSession.of({
      ...session,
      insert: (items) =>
        Effect.suspend(() => {
          const isTarget = items.some((i) => "callId" in i && i.callId === "c1_update_1")
          if (!isTarget || cutDone) return session.insert(items)
          cutDone = true
          return Effect.andThen(session.insert(items), answer(cut, "insert"))
        }),
      items: Effect.suspend(() => {
        if (!cutDone || readFailed) return session.items
        readFailed = true
        return answer(read, "items")
      })
    })
    return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
  }))

const chatty = FunctionTool.make("chatty", { description: "Updates twice, then ends" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("half way")
    yield* Effect.sleep("1 second")
    return "done"
  }))

describe("Review2: C3 an insertion cut short, then a failed chat read: the retry inserts again", () => {
  for (const cut of ["fail", "die", "interrupt"] as const) {
    for (const read of ["fail", "die", "interrupt"] as const) {
      for (const maxOps of yieldSettings) {
        it.effect(`insert answers '${cut}' after inserting; the retry's chat read answers '${read}': c1_update_1 is in the chat once (MaxOpsBeforeYield ${maxOps})`, () =>
          Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const toolset = yield* AsyncToolset.make({
              id: "t",
              tools: [chatty],
              sessionRetry: Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 3 }))
            })
            yield* execute(toolset, "c1", "chatty")
            yield* TestClock.adjust("1 second")
            yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
            const chat = yield* session.chat
            assert.deepStrictEqual(chatProblems(chat), [], "an item is in the chat twice")
            const named = (yield* session.replies).flatMap((r) => namedCallIds(r.instructions))
            assert.strictEqual(named.filter((id) => id === "c1_update_1").length, 1)
          }).pipe(Effect.provide(sessionWith(cut, read)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
      }
    }
  }
})
