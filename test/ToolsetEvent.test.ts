/**
 * What a toolset reports as it works (`toolset.events`) and the metrics it keeps: calls started,
 * updated and ended with each outcome; replies scheduled, delivered and skipped.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Metric, Schedule, Schema, Stream, Tracer } from "effect"
import { AgentSession, AsyncRunContext, AsyncToolset, ChatContext, FunctionTool, ToolError, ToolsetEvent } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { forEachKind } from "./support/toolsets.ts"

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

/** One event of each kind, made with the constructors. */
const oneOfEach: ReadonlyArray<ToolsetEvent.ToolsetEvent> = [
  ToolsetEvent.CallStarted.make({ toolsetId: "t", callId: "c1", name: "job", arguments: `{"seconds":1}`, at: 1 }),
  ToolsetEvent.CallUpdated.make({ toolsetId: "t", callId: "c1", name: "job", step: 0, message: "started", at: 2 }),
  ToolsetEvent.CallEnded.make({ toolsetId: "t", callId: "c1", name: "job", outcome: "timed-out", duration: 5, at: 6 }),
  ToolsetEvent.ReplyScheduled.make({ toolsetId: "t", callId: "c1_final", at: 6 }),
  ToolsetEvent.ReplyDelivered.make({ toolsetId: "t", callIds: ["c1_final"], instructions: "Tell the user", at: 7 }),
  ToolsetEvent.ReplySkipped.make({ toolsetId: "t", callIds: ["c2_final"], reason: "session-failed", at: 8 })
]
const roundTrip = (event: ToolsetEvent.ToolsetEvent) =>
  Schema.decodeUnknownSync(ToolsetEvent.JsonString)(Schema.encodeSync(ToolsetEvent.JsonString)(event))

forEachKind("ToolsetEvent", (kind) => {
  it.effect("the events report each call's start, updates and end (done, error, cancelled, timed-out) and the replies", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* kind.make({ id: "jobs", tools: [job, limited] })
      const events = yield* record(toolset)
      yield* session.setBusy

      yield* start(toolset, "ok", "job", { seconds: 1, ending: "result" })
      yield* start(toolset, "bad", "job", { seconds: 1, ending: "failure" })
      yield* start(toolset, "stop", "job", { seconds: 60, ending: "result" })
      yield* start(toolset, "late", "limited")
      yield* toolset.cancel("stop")
      yield* kind.advance("2 seconds")
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
        // The model is told of the timeout at expiry. In memory the call's fiber is interrupted at
        // once and ends before the notice reaches the chat; a durable call ends once its execution
        // (run by the workflow engine) has stopped, which it reports after the notice.
        ...(kind.durable
          ? ["scheduled late_final", "ended late timed-out"]
          : ["ended late timed-out", "scheduled late_final"]),
        "delivered ok_update_1 ok_final bad_update_1 bad_final late_final"
      ])
    }).pipe(kind.provide(TestSession.layer)))

  it.effect("the events report skipped replies: the agent already answered, or the session failed", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const skipping = yield* kind.make({ id: "skipping", tools: [job], whenAlreadyAnswered: "skip" })
      const failing = yield* kind.make({ id: "failing", tools: [job], sessionRetry: Schedule.recurs(0) })
      const skipped = yield* record(skipping)
      const failed = yield* record(failing)
      yield* session.setBusy

      yield* start(skipping, "a", "job", { seconds: 1, ending: "result" })
      yield* kind.advance("1 second")
      yield* session.say("assistant", "Job a is done.") // the agent covered it already
      yield* session.setIdle
      yield* skipping.awaitIdle

      yield* start(failing, "b", "job", { seconds: 1, ending: "result" })
      yield* kind.advance("1 second")
      yield* failing.awaitIdle
      yield* skipping.close
      yield* failing.close

      assert.include((yield* Fiber.join(skipped)).map(line), "skipped a_update_1 a_final (already-answered)")
      assert.include((yield* Fiber.join(failed)).map(line), "skipped b_update_1 b_final (session-failed)")
    }).pipe(
      kind.provide(TestSession.layerWith({
        onReply: (request) =>
          request.instructions.includes("b_final")
            ? Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "session down" }))
            : Effect.void
      }))
    ))

  it.effect("the metrics move: running calls go up and back down; ended calls are counted by tool and outcome", () =>
    Effect.gen(function*() {
      const toolset = yield* kind.make({ id: "jobs", tools: [job, limited] })
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
      yield* kind.advance("2 seconds")
      yield* toolset.awaitIdle

      assert.strictEqual((yield* Metric.value(running)).value, 0)
      assert.strictEqual(yield* ended("job", "done"), 1)
      assert.strictEqual(yield* ended("job", "error"), 1)
      assert.strictEqual(yield* ended("job", "cancelled"), 1)
      assert.strictEqual(yield* ended("limited", "timed-out"), 1)
    }).pipe(
      kind.provide(TestSession.layer),
      Effect.provideService(Metric.MetricRegistry, new Map()) // this test's own metrics
    ))

  describe("as data (for a UI)", () => {
    it.effect("every event a toolset publishes round-trips through the JSON codec", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [job, limited] })
        const events = yield* record(toolset)
        yield* session.setBusy
        yield* start(toolset, "ok", "job", { seconds: 1, ending: "result" })
        yield* start(toolset, "stop", "job", { seconds: 60, ending: "result" })
        yield* start(toolset, "late", "limited")
        yield* toolset.cancel("stop")
        yield* kind.advance("2 seconds")
        yield* session.setIdle
        yield* toolset.awaitIdle
        yield* toolset.close

        const published = yield* Fiber.join(events)
        assert.deepStrictEqual(new Set(published.map((e) => e._tag)).size, 5) // all but ReplySkipped
        for (const event of [...published, ...oneOfEach]) {
          const text = Schema.encodeSync(ToolsetEvent.JsonString)(event)
          assert.deepStrictEqual(JSON.parse(text), { ...event }) // plain JSON, the fields as they are
          assert.deepStrictEqual(roundTrip(event), event)
        }
      }).pipe(kind.provide(TestSession.layer)))

  })

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
        const traced = yield* kind.make({ id: "traced", tools: [job] }).pipe(Effect.withTracer(on.tracer))
        yield* start(traced, "c1", "job", { seconds: 1, ending: "result" }).pipe(Effect.withTracer(on.tracer))
        yield* kind.advance("1 second")
        yield* traced.awaitIdle
        assert.deepStrictEqual(on.ended.filter((s) => s.name === "AsyncToolset.call"), [{ name: "AsyncToolset.call", callId: "c1" }])

        const off = recording()
        const quiet = yield* kind.make({ id: "quiet", tools: [job], spanPerCall: false })
        yield* start(quiet, "c2", "job", { seconds: 1, ending: "result" }).pipe(Effect.withTracer(off.tracer))
        yield* kind.advance("1 second")
        yield* quiet.awaitIdle
        assert.deepStrictEqual(off.ended.filter((s) => s.name === "AsyncToolset.call"), [])
      }).pipe(kind.provide(TestSession.layer)))
  })
})

describe("ToolsetEvent as data (for a UI)", () => {
  it("the constructors make the plain objects the engine publishes; guards and match tell the kinds apart", () => {
    assert.deepStrictEqual(
      oneOfEach.map((e) => e._tag),
      ["CallStarted", "CallUpdated", "CallEnded", "ReplyScheduled", "ReplyDelivered", "ReplySkipped"]
    )
    assert.strictEqual(Object.getPrototypeOf(oneOfEach[0]), Object.prototype)
    const { guards } = ToolsetEvent.ToolsetEvent
    assert.deepStrictEqual(oneOfEach.map((e) => guards.CallEnded(e)), [false, false, true, false, false, false])
    assert.isFalse(guards.CallStarted({ _tag: "CallStarted", callId: "c1" })) // fields missing
    const describe = ToolsetEvent.ToolsetEvent.match({
      CallStarted: (e) => `${e.name} started`,
      CallUpdated: (e) => `${e.name}: ${e.message}`,
      CallEnded: (e) => `${e.name} ${e.outcome} after ${e.duration} ms`,
      ReplyScheduled: (e) => `${e.callId} waits for a reply`,
      ReplyDelivered: (e) => `replied to ${e.callIds.join(", ")}`,
      ReplySkipped: (e) => `no reply for ${e.callIds.join(", ")} (${e.reason})`
    })
    assert.deepStrictEqual(oneOfEach.map(describe), [
      "job started",
      "job: started",
      "job timed-out after 5 ms",
      "c1_final waits for a reply",
      "replied to c1_final",
      "no reply for c2_final (session-failed)"
    ])
    assert.isTrue(ToolsetEvent.ToolsetEvent.isAnyOf(["ReplyDelivered", "ReplySkipped"])(oneOfEach[5]!))
  })

  it("decoding rejects text that is not an event: an unknown kind, a wrong field", () => {
    const decode = Schema.decodeUnknownExit(ToolsetEvent.JsonString)
    assert.isTrue(Exit.isFailure(decode(`{"_tag":"CallExploded","toolsetId":"t","at":1}`)))
    assert.isTrue(Exit.isFailure(decode(`{"_tag":"CallEnded","toolsetId":"t","callId":"c","name":"n","outcome":"exploded","duration":1,"at":1}`)))
    assert.isTrue(Exit.isFailure(decode("not json")))
  })
})
