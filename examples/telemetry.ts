/**
 * The toolset's spans and metrics, exported to an OpenTelemetry collector with effect's own OTLP
 * exporter (`Otlp` from `effect/observability`, over `FetchHttpClient`): no OpenTelemetry SDK, no
 * other package.
 *
 *   OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 npm run example examples/telemetry.ts
 *
 * The endpoint is the collector's OTLP/HTTP root (default http://localhost:4318); the exporter
 * posts JSON to `/v1/traces`, `/v1/metrics` and `/v1/logs` below it. A local collector or Jaeger
 * (`docker run -p 4318:4318 -p 16686:16686 jaegertracing/all-in-one`) receives them. What it sends:
 *
 * - spans: `AiAgent.turn` per turn, `AsyncToolset.call` per tool call (made because a tracer other
 *   than Effect's native one is installed), the model's own spans;
 * - metrics: `async_toolset_running_calls` (a gauge per toolset) and `async_toolset_calls_total`
 *   (a counter per toolset, tool and outcome);
 * - the logs of the app.
 *
 * Nothing runs on import (test/scenarios/telemetry.test.ts runs `program` against a stand-in
 * receiver on 127.0.0.1); the conversation runs only when this file is the program.
 */
import { realpathSync } from "node:fs"
import { pathToFileURL } from "node:url"
import { Console, Effect, Layer, Schema } from "effect"
import type { Duration } from "effect"
import { FetchHttpClient } from "effect/http"
import { Otlp } from "effect/observability"
import { AiAgent, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { ScriptedModel } from "effect-async-toolset/testing"

/**
 * Telemetry to the collector at `baseUrl`: traces, metrics and logs, exported every
 * `interval` and once more when the layer's scope closes.
 */
export const Telemetry = (baseUrl: string, interval: Duration.Input = "5 seconds") =>
  Otlp.layerJson({
    baseUrl,
    resource: { serviceName: "travel-agent", serviceVersion: "0.1.0" },
    tracerExportInterval: interval,
    metricsExportInterval: interval,
    loggerExportInterval: interval
  }).pipe(Layer.provide(FetchHttpClient.layer))

// --- the app: a background booking on a scripted model ------------------------------------------

const bookFlight = FunctionTool.make("book_flight", {
  description: "Book a flight to a city",
  parameters: Schema.Struct({ to: Schema.String })
}, ({ to }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Looking up flights to ${to}`)
    yield* Effect.sleep("300 millis")
    return `Booked FL-847293 to ${to}`
  }))

const model = ScriptedModel.layer(({ resultsSinceUser, toolChoice }) => {
  const result = resultsSinceUser.at(-1)
  if (result === undefined) return { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }] }
  return toolChoice === "none" ? `Done: ${String(result.result)}.` : "On it."
})

export const App = AiAgent.toolset({ id: "travel", tools: [bookFlight] }).pipe(
  Layer.provideMerge(AiAgent.layer({ instructions: "You book flights." })),
  Layer.provide(model)
)

/** A booking, told when done. */
export const program = Effect.gen(function*() {
  const agent = yield* AiAgent.AiAgent
  yield* agent.send("Book me a flight to Tokyo")
  yield* agent.awaitIdle
  yield* Effect.logInfo("the booking was told")
}).pipe(Effect.provide(App))

const isMain = (): boolean => {
  try {
    return process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href
  } catch {
    return false
  }
}

if (isMain()) {
  const endpoint = process.env.OTEL_EXPORTER_OTLP_ENDPOINT ?? "http://localhost:4318"
  // The telemetry layer goes outermost: it flushes what is left when the program is over.
  program.pipe(
    Effect.andThen(Console.log(`Exported the spans, metrics and logs to ${endpoint} (the exporter drops what it cannot send, without an error).`)),
    Effect.provide(Telemetry(endpoint)),
    Effect.runPromise
  )
}
