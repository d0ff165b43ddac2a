/**
 * What a toolset reports as it works (`toolset.events`) and the metrics it keeps: calls started,
 * updated and ended with each outcome; replies scheduled, delivered and skipped.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Metric, Schedule, Schema, Stream, Tracer } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, ChatContext, FunctionTool, ToolError } from "effect-async-toolset"
import type { ToolsetEvent } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"

/** Says "started", works `seconds`, then ends as `ending` says. */
const job = FunctionTool.make("job", {
  description: "A background job",
  parameters: Schema.Struct({ seconds: Schema.Int, ending: Schema.Literals(["result", "failure"]) }),
  onDuplicateCall: "allow"
}, ({ ending, seconds }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep(`${seconds} seconds`)
    yield* AsyncRunContext.update("almost there")
    if (ending === "failure") return yield* new ToolError.ToolError({ message: "the job broke" })
    return "finished"
  }))

/** Like `job`, but stopped after 2 seconds. */
const limited = FunctionTool.make("limited", {
  description: "A job with a time limit",
  timeout: "2 seconds"
}, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 hour")
  }))

const start = (toolset: AsyncToolset.AsyncToolset, callId: string, name: string, args: object = {}) =>
  Effect.flatMap(ChatContext.functionCall({ callId, name, arguments: JSON.stringify(args) }), toolset.execute)

/** Subscribes to the toolset's events; the fiber yields them all once the toolset closes. */
const record = (toolset: AsyncToolset.AsyncToolset) =>
  toolset.events.pipe(Stream.runCollect, Effect.forkChild({ startImmediately: true }))

/** An event as a short line. */
const line = (event: ToolsetEvent.ToolsetEvent): string => {
  switch (event._tag) {
    case "CallStarted":
      return `started ${event.callId}`
    case "CallUpdated":
      return `updated ${event.callId} #${event.step}: ${event.message}`
    case "CallEnded":
      return `ended ${event.callId} ${event.outcome}`
    case "ReplyScheduled":
      return `scheduled ${event.callId}`
    case "ReplyDelivered":
      return `delivered ${event.callIds.join(" ")}`
    case "ReplySkipped":
      return `skipped ${event.callIds.join(" ")} (${event.reason})`
  }
}

describe("ToolsetEvent", () => {
  it.effect("the events report each call's start, updates and end (done, error, cancelled, timed-out) and the replies", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* AsyncToolset.make({ id: "jobs", tools: [job, limited] })
      const events = yield* record(toolset)
      yield* session.setBusy

      yield* start(toolset, "ok", "job", { seconds: 1, ending: "result" })
      yield* start(toolset, "bad", "job", { seconds: 1, ending: "failure" })
      yield* start(toolset, "stop", "job", { seconds: 60, ending: "result" })
      yield* start(toolset, "late", "limited")
      yield* toolset.cancel("stop")
      yield* TestClock.adjust("2 seconds")
      yield* session.setIdle
      yield* toolset.awaitIdle
      yield* toolset.close

      assert.deepStrictEqual((yield* Fiber.join(events)).map(line), [
        "started ok",
        "updated ok #0: started",
        "started bad",
        "updated bad #0: started",
        "started stop",
        "updated stop #0: started",
        "started late",
        "updated late #0: started",
        "ended stop cancelled",
        "updated ok #1: almost there",
        "scheduled ok_update_1",
        "scheduled ok_final",
        "ended ok done",
        "updated bad #1: almost there",
        "scheduled bad_update_1",
        "scheduled bad_final",
        "ended bad error",
        // the timeout stops the call at once; its notice reaches the chat after
        "ended late timed-out",
        "scheduled late_final",
        "delivered ok_update_1 ok_final bad_update_1 bad_final late_final"
      ])
    }).pipe(Effect.provide(TestSession.layer)))

  it.effect("the events report skipped replies: the agent already answered, or the session failed", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const skipping = yield* AsyncToolset.make({ id: "skipping", tools: [job], whenAlreadyAnswered: "skip" })
      const failing = yield* AsyncToolset.make({ id: "failing", tools: [job], sessionRetry: Schedule.recurs(0) })
      const skipped = yield* record(skipping)
      const failed = yield* record(failing)
      yield* session.setBusy

      yield* start(skipping, "a", "job", { seconds: 1, ending: "result" })
      yield* TestClock.adjust("1 second")
      yield* session.say("assistant", "Job a is done.") // the agent covered it already
      yield* session.setIdle
      yield* skipping.awaitIdle

      yield* start(failing, "b", "job", { seconds: 1, ending: "result" })
      yield* TestClock.adjust("1 second")
      yield* failing.awaitIdle
      yield* skipping.close
      yield* failing.close

      assert.include((yield* Fiber.join(skipped)).map(line), "skipped a_update_1 a_final (already-answered)")
      assert.include((yield* Fiber.join(failed)).map(line), "skipped b_update_1 b_final (session-failed)")
    }).pipe(
      Effect.provide(TestSession.layerWith({
        onReply: (request) =>
          request.instructions.includes("b_final")
            ? Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "session down" }))
            : Effect.void
      }))
    ))

  it.effect("the metrics move: running calls go up and back down; ended calls are counted by tool and outcome", () =>
    Effect.gen(function*() {
      const toolset = yield* AsyncToolset.make({ id: "jobs", tools: [job, limited] })
      const running = Metric.withAttributes(AsyncToolset.runningCalls, { toolset: "jobs" })
      const ended = (tool: string, outcome: ToolsetEvent.Outcome) =>
        Metric.value(Metric.withAttributes(AsyncToolset.callsEnded, { toolset: "jobs", tool, outcome })).pipe(
          Effect.map((state) => state.count)
        )

      yield* start(toolset, "ok", "job", { seconds: 1, ending: "result" })
      yield* start(toolset, "bad", "job", { seconds: 1, ending: "failure" })
      yield* start(toolset, "stop", "job", { seconds: 60, ending: "result" })
      yield* start(toolset, "late", "limited")
      assert.strictEqual((yield* Metric.value(running)).value, 4)

      yield* toolset.cancel("stop")
      yield* TestClock.adjust("2 seconds")
      yield* toolset.awaitIdle

      assert.strictEqual((yield* Metric.value(running)).value, 0)
      assert.strictEqual(yield* ended("job", "done"), 1)
      assert.strictEqual(yield* ended("job", "error"), 1)
      assert.strictEqual(yield* ended("job", "cancelled"), 1)
      assert.strictEqual(yield* ended("limited", "timed-out"), 1)
    }).pipe(
      Effect.provide(TestSession.layer),
      Effect.provideService(Metric.MetricRegistry, new Map()) // this test's own metrics
    ))

  describe("spans", () => {
    /** A tracer that records the name and attributes of every span that ends. */
    const recording = () => {
      const ended: Array<{ readonly name: string; readonly callId: unknown }> = []
      const tracer = Tracer.make({
        span(options) {
          const span = Tracer.nativeTracer.span(options)
          const end = span.end.bind(span)
          span.end = (endTime, exit) => {
            ended.push({ name: span.name, callId: span.attributes.get("tool.call_id") })
            end(endTime, exit)
          }
          return span
        }
      })
      return { ended, tracer }
    }

    it.effect("each call runs in an AsyncToolset.call span that ends with it; spanPerCall false turns it off", () =>
      Effect.gen(function*() {
        const on = recording()
        const traced = yield* AsyncToolset.make({ id: "traced", tools: [job] }).pipe(Effect.withTracer(on.tracer))
        yield* start(traced, "c1", "job", { seconds: 1, ending: "result" }).pipe(Effect.withTracer(on.tracer))
        yield* TestClock.adjust("1 second")
        yield* traced.awaitIdle
        assert.deepStrictEqual(on.ended.filter((s) => s.name === "AsyncToolset.call"), [{ name: "AsyncToolset.call", callId: "c1" }])

        const off = recording()
        const quiet = yield* AsyncToolset.make({ id: "quiet", tools: [job], spanPerCall: false })
        yield* start(quiet, "c2", "job", { seconds: 1, ending: "result" }).pipe(Effect.withTracer(off.tracer))
        yield* TestClock.adjust("1 second")
        yield* quiet.awaitIdle
        assert.deepStrictEqual(off.ended.filter((s) => s.name === "AsyncToolset.call"), [])
      }).pipe(Effect.provide(TestSession.layer)))
  })
})
