/**
 * Telemetry through effect's own OTLP exporter (examples/telemetry.ts): the spans and metrics of a
 * background booking reach a stand-in collector on 127.0.0.1 as OTLP/HTTP JSON.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Metric } from "effect"
import { program, Telemetry } from "../../examples/telemetry.ts"
import * as OtlpReceiver from "../support/otlpReceiver.ts"

describe("scenario: telemetry to an OpenTelemetry collector", () => {
  it.live("a call's AsyncToolset.call span and the toolset's metrics reach the collector", () =>
    Effect.gen(function*() {
      const receiver = yield* OtlpReceiver.make

      // the telemetry layer outermost: closing it exports what is left
      yield* program.pipe(Effect.provide(Telemetry(receiver.baseUrl, "100 millis")))

      assert.isTrue(receiver.posts.every((p) => p.contentType === "application/json"))
      const spans = OtlpReceiver.spans(receiver.posts)
      const calls = spans.filter((s) => s.name === "AsyncToolset.call")
      assert.strictEqual(calls.length, 1, JSON.stringify(spans.map((s) => s.name)))
      assert.deepInclude(calls[0]!.attributes, { "toolset.id": "travel", "tool.name": "book_flight", "tool.call_id": "call_1_1" })
      assert.strictEqual(calls[0]!.service, "travel-agent")
      assert.isTrue(spans.some((s) => s.name === "AiAgent.turn"))

      const metrics = OtlpReceiver.metrics(receiver.posts)
      const last = (name: string) => metrics.filter((m) => m.name === name).at(-1)
      const running = last("async_toolset_running_calls")
      const total = last("async_toolset_calls_total")
      assert.isDefined(running, JSON.stringify(metrics.map((m) => m.name)))
      assert.deepInclude(running!.points, { attributes: { toolset: "travel" }, value: 0 })
      assert.deepInclude(total!.points, { attributes: { toolset: "travel", tool: "book_flight", outcome: "done" }, value: 1 })
    }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))) // this test's own metrics
})
