/**
 * A stand-in OpenTelemetry collector on 127.0.0.1 (port 0) for the length of a test's scope: it
 * takes OTLP/HTTP JSON posts (`/v1/traces`, `/v1/metrics`, `/v1/logs`), answers 200, and keeps
 * them, so a test can check what an exporter sent.
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { Effect } from "effect"
import type { Scope } from "effect"

/** One post, its body parsed. */
export interface Post {
  readonly path: string
  readonly contentType: string | undefined
  readonly body: unknown
}

export interface Receiver {
  /** `http://127.0.0.1:<port>`: the collector's OTLP/HTTP root. */
  readonly baseUrl: string
  /** Every post, in order (a live view). */
  readonly posts: ReadonlyArray<Post>
}

/** Starts the receiver for the current scope (closed with it). */
export const make: Effect.Effect<Receiver, never, Scope.Scope> = Effect.acquireRelease(
  Effect.callback<{ readonly receiver: Receiver; readonly close: () => Promise<void> }>((resume) => {
    const posts: Array<Post> = []
    const http = createServer((req, res) => {
      const chunks: Array<Buffer> = []
      req.on("data", (chunk: Buffer) => chunks.push(chunk))
      req.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8")
        let body: unknown = text
        try {
          body = JSON.parse(text)
        } catch {
          // kept as text: the test says what it expected
        }
        posts.push({ path: req.url ?? "", contentType: req.headers["content-type"], body })
        res.writeHead(200, { "content-type": "application/json" })
        res.end("{}")
      })
    })
    http.listen(0, "127.0.0.1", () => {
      const { port } = http.address() as AddressInfo
      resume(Effect.succeed({
        receiver: { baseUrl: `http://127.0.0.1:${port}`, posts },
        close: () =>
          new Promise<void>((done) => {
            http.closeAllConnections()
            http.close(() => done())
          })
      }))
    })
  }),
  ({ close }) => Effect.promise(close)
).pipe(Effect.map(({ receiver }) => receiver))

/** The spans in the trace posts: name and attributes (OTLP's key/value list as an object). */
export const spans = (posts: ReadonlyArray<Post>) =>
  posts.filter((p) => p.path === "/v1/traces").flatMap((p) => {
    const body = p.body as { readonly resourceSpans?: ReadonlyArray<ResourceSpans> }
    return (body.resourceSpans ?? []).flatMap((r) =>
      r.scopeSpans.flatMap((s) =>
        s.spans.map((span) => ({
          name: span.name,
          service: attributes(r.resource.attributes)["service.name"],
          attributes: attributes(span.attributes)
        }))
      )
    )
  })

/** The metric names in the metric posts, each with its data points' attributes and values. */
export const metrics = (posts: ReadonlyArray<Post>) =>
  posts.filter((p) => p.path === "/v1/metrics").flatMap((p) => {
    const body = p.body as { readonly resourceMetrics?: ReadonlyArray<ResourceMetrics> }
    return (body.resourceMetrics ?? []).flatMap((r) =>
      r.scopeMetrics.flatMap((s) =>
        s.metrics.map((metric) => {
          const data = metric.gauge ?? metric.sum
          return {
            name: metric.name,
            points: (data?.dataPoints ?? []).map((point) => ({
              attributes: attributes(point.attributes),
              value: point.asDouble ?? Number(point.asInt ?? NaN)
            }))
          }
        })
      )
    )
  })

interface KeyValue {
  readonly key: string
  readonly value: { readonly stringValue?: string; readonly intValue?: number | string; readonly doubleValue?: number }
}

const attributes = (list: ReadonlyArray<KeyValue> | undefined): Record<string, unknown> =>
  Object.fromEntries((list ?? []).map(({ key, value }) => [key, value.stringValue ?? value.intValue ?? value.doubleValue]))

interface ResourceSpans {
  readonly resource: { readonly attributes?: ReadonlyArray<KeyValue> }
  readonly scopeSpans: ReadonlyArray<{ readonly spans: ReadonlyArray<{ readonly name: string; readonly attributes?: ReadonlyArray<KeyValue> }> }>
}

interface DataPoint {
  readonly attributes?: ReadonlyArray<KeyValue>
  readonly asDouble?: number
  readonly asInt?: number | string
}

interface ResourceMetrics {
  readonly scopeMetrics: ReadonlyArray<{
    readonly metrics: ReadonlyArray<{
      readonly name: string
      readonly gauge?: { readonly dataPoints: ReadonlyArray<DataPoint> }
      readonly sum?: { readonly dataPoints: ReadonlyArray<DataPoint> }
    }>
  }>
}
