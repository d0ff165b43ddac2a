/**
 * C4d: everything that becomes ready before the reply request goes out joins it, results that end
 * at the same clock instant included: five calls of equal length started in one model answer get
 * one reply, on the test clock (moved by hand or stepped by the harness) and on the real clock
 * (through the agent loop). Results that end at different instants still get a reply each.
 */
import { assert, it } from "@effect/vitest"
import { Duration, Effect, Layer, Schema } from "effect"
import { TestClock } from "effect/testing"
import { AiAgent, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import type { AsyncToolset } from "effect-async-toolset"
import { ScriptedModel, TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { namedCallIds } from "../support/replies.ts"
import { forEachKind } from "../support/toolsets.ts"

/** Says "started", then returns "done" after `millis`. */
const job = (millis: number) =>
  FunctionTool.make("job", { description: "A job", onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep(millis)
      return "done"
    }))

/** Says "started", then returns "done" after the number of seconds it is given. */
const timed = FunctionTool.make("timed", {
  description: "A job of a given length",
  parameters: Schema.Struct({ seconds: Schema.Int }),
  onDuplicateCall: "allow"
}, ({ seconds }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep(Duration.seconds(seconds))
    return "done"
  }))

const five = ["j1", "j2", "j3", "j4", "j5"]

const startFive = (toolset: AsyncToolset.AsyncToolset) => Effect.forEach(five, (id) => execute(toolset, id, "job"), { discard: true })

const repliesNamed = Effect.map(
  Effect.flatMap(TestSession.TestSession, (session) => session.replies),
  (replies) => replies.map((r) => namedCallIds(r.instructions).slice().sort())
)

forEachKind("C4d results ready together get one reply", (kind) => {
  it.effect("five calls of equal length, the session idle all along: one reply names all five results (the harness's clock)", () =>
    Effect.gen(function*() {
      const toolset = yield* kind.make({ id: "jobs", tools: [job(1000)] })
      yield* startFive(toolset)
      yield* kind.advance("1 second")
      yield* toolset.awaitIdle
      assert.deepStrictEqual(yield* repliesNamed, [five.map((id) => `${id}_final`)])
    }).pipe(kind.provide(TestSession.layer)))

  it.effect("the same with the test clock moved by hand past the instant (TestClock.adjust)", () =>
    Effect.gen(function*() {
      const toolset = yield* kind.make({ id: "jobs", tools: [job(1000)] })
      yield* startFive(toolset)
      yield* kind.settle
      yield* TestClock.adjust("5 seconds")
      yield* kind.settle
      yield* toolset.awaitIdle
      assert.deepStrictEqual(yield* repliesNamed, [five.map((id) => `${id}_final`)])
    }).pipe(kind.provide(TestSession.layer)))

  it.effect("results that end at different instants each get their reply, even inside one adjustment of the clock", () =>
    Effect.gen(function*() {
      const toolset = yield* kind.make({ id: "jobs", tools: [timed] })
      yield* execute(toolset, "a", "timed", { seconds: 1 })
      yield* execute(toolset, "b", "timed", { seconds: 2 })
      yield* kind.settle
      yield* TestClock.adjust("5 seconds")
      yield* kind.settle
      yield* toolset.awaitIdle
      assert.deepStrictEqual(yield* repliesNamed, [["a_final"], ["b_final"]])
    }).pipe(kind.provide(TestSession.layer)))

  /** The model starts five jobs in one answer, acknowledges them, and answers the follow-up. */
  const fiveJobs = (request: ScriptedModel.Request): ScriptedModel.Reply => {
    if (request.toolChoice === "none") return "All five are done."
    if (request.resultsSinceUser.length > 0) return "Started all five."
    return { toolCalls: five.map((id) => ({ id, name: "job", params: {} })) }
  }

  it.live("on the real clock, through the agent loop: five jobs of one length started in one answer get one follow-up reply", () =>
    Effect.gen(function*() {
      const agent = yield* AiAgent.AiAgent
      const model = yield* ScriptedModel.ScriptedModel
      const toolset = yield* kind.make({ id: "jobs", tools: [job(50)] })
      yield* agent.addToolset(toolset)
      yield* agent.send("Run the five jobs")
      yield* Effect.sleep("200 millis")
      yield* toolset.awaitIdle
      yield* agent.awaitIdle
      const followUps = (yield* model.requests).filter((r) => r.toolChoice === "none")
      assert.strictEqual(followUps.length, 1, `one follow-up reply: ${followUps.map((r) => r.systemText).join(" | ")}`)
      for (const id of five) assert.include(followUps[0]!.systemText, `${id}_final`)
    }).pipe(kind.provide(AiAgent.layer().pipe(Layer.provideMerge(ScriptedModel.layer(fiveJobs))))))
})
