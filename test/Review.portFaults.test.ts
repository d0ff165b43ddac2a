/**
 * Adversarial review: every port operation answers in every shape (ok, typed failure, defect,
 * interrupt cause, hang, slow). Whatever the fault on c1's way, a later call's result (c2) still gets
 * its reply, and every fault is logged. Failing cases are bugs (see the report).
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Schedule } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { captureLogs, namedCallIds, reported, whileClockRuns } from "./support/reliability.ts"

type Shape = "fail" | "die" | "interrupt" | "hang" | "slow"
type Op = "insert" | "insertRetry" | "items" | "awaitInactive" | "generateReply"

const shape = <A>(s: Shape, ok: Effect.Effect<A, AgentSession.SessionError>, op: string): Effect.Effect<A, AgentSession.SessionError> => {
  switch (s) {
    case "fail":
      return Effect.fail(new AgentSession.SessionError({ operation: "insert", message: `injected fail in ${op}` }))
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

/** The in-memory session; `op` answers in `s` while `faulty()` says so (for c1's items, or the first attempt). */
const sessionWith = (op: Op, s: Shape) => {
  let insertAttempts = 0
  let itemsReads = 0
  let idleWaits = 0
  return Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
    const isC1 = (items: ReadonlyArray<{ readonly _tag: string }>) => items.some((i) => "callId" in i && String(i.callId).startsWith("c1_"))
    const port = AgentSession.AgentSession.of({
      ...session,
      insert: (items) =>
        Effect.suspend(() => {
          if (!isC1(items)) return session.insert(items)
          const attempt = ++insertAttempts
          if (op === "insert") return shape(s, session.insert(items), "insert") // every attempt
          if (op === "insertRetry") return attempt === 1 ? shape("fail", session.insert(items), "insert") : shape(s, session.insert(items), "insert")
          return session.insert(items)
        }),
      items: Effect.suspend(() => op === "items" && ++itemsReads === 1 ? shape(s, session.items, "items") : session.items),
      awaitInactive: Effect.suspend(() =>
        op === "awaitInactive" && ++idleWaits === 1
          ? Effect.orDie(shape(s, Effect.andThen(session.awaitInactive, Effect.void), "awaitInactive"))
          : session.awaitInactive
      ),
      generateReply: (request) =>
        op === "generateReply" && request.instructions.includes("c1_") && !request.instructions.includes("c2_")
          ? shape(s, session.generateReply(request), "generateReply")
          : session.generateReply(request)
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

const ops: ReadonlyArray<Op> = ["insert", "insertRetry", "items", "awaitInactive", "generateReply"]
const shapes: ReadonlyArray<Shape> = ["fail", "die", "interrupt", "hang", "slow"]

describe("Review: port faults of every shape on every operation", () => {
  for (const op of ops) {
    for (const s of shapes) {
      // awaitInactive never completing is the session being busy forever: replies must wait.
      if (op === "awaitInactive" && s === "hang") continue
      it.effect(`${op} answers with ${s}: a later result still gets its reply; the fault is logged`, () => {
        const logs = captureLogs()
        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* AsyncToolset.make({
            id: "t",
            tools: [job],
            sessionRetry: Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 2 })),
            replyTimeout: "30 seconds"
          })
          yield* execute(toolset, "c1", "job")
          yield* TestClock.adjust("1 second") // c1_final meets the fault
          yield* TestClock.adjust("10 seconds")
          yield* execute(toolset, "c2", "job")
          yield* TestClock.adjust("1 second")
          const named = Effect.map(session.replies, (rs) => rs.flatMap((r) => namedCallIds(r.instructions)))
          yield* whileClockRuns(
            Effect.repeat(named, { until: (ids) => ids.includes("c2_final"), schedule: Schedule.spaced("1 second") }),
            { what: "a reply naming c2_final", step: "1 second", steps: 300 }
          )
          if (s !== "slow" && s !== "hang") assert.isAtLeast(logs.find(reported).length, 1, "the fault is logged")
        }).pipe(Effect.provide(sessionWith(op, s)), Effect.provide(logs.layer))
      })
    }
  }
})
