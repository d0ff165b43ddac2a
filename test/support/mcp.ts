/**
 * MCP test kit: the official TypeScript SDK's client connected to our server, over a pair of line
 * streams in this process (`McpToolsetServer.serveLines`) or over Streamable HTTP on 127.0.0.1;
 * and a small toolset of background tools whose runs the test can watch.
 */
import { createServer } from "node:http"
import { NodeHttpServer } from "@effect/platform-node"
import { Client } from "@modelcontextprotocol/sdk/client/index.js"
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js"
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js"
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js"
import { Deferred, Effect, Layer, Queue, Schema, Stream } from "effect"
import type { Cause, Scope } from "effect"
import { HttpRouter, HttpServer } from "effect/http"
import { AsyncRunContext, AsyncToolset, FunctionTool, ToolError } from "effect-async-toolset"
import { McpToolsetServer } from "effect-async-toolset/mcp"

/** Every message the server wrote, parsed, in order (for asserting on notifications). */
export interface Wire {
  readonly fromServer: Array<Record<string, unknown>>
}

/** What the tools let a test see and steer. */
export interface Probe {
  /** Completed when `watch` is interrupted. */
  readonly interrupted: Deferred.Deferred<void>
  /** Completed when `watch` has started. */
  readonly started: Deferred.Deferred<void>
}

export const makeProbe = Effect.gen(function*() {
  return { interrupted: yield* Deferred.make<void>(), started: yield* Deferred.make<void>() } satisfies Probe
})

/**
 * `book_flight` (two updates a minute apart, then its result), `fail_booking` (an update, then a
 * failure), `watch` (runs until interrupted, telling the probe).
 */
export const tools = (probe: Probe) => [
  FunctionTool.make("book_flight", {
    description: "Book a flight",
    parameters: Schema.Struct({ to: Schema.String })
  }, ({ to }) =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update(`Looking up flights to ${to}`)
      yield* Effect.sleep("1 minute")
      yield* AsyncRunContext.update("Found 3 flights")
      yield* Effect.sleep("1 minute")
      return `Booked FL-1 to ${to}`
    })),
  FunctionTool.make("fail_booking", {
    description: "A booking that fails",
    parameters: Schema.Struct({ to: Schema.String })
  }, ({ to }) =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update(`Trying ${to}`)
      yield* Effect.sleep("1 minute")
      return yield* new ToolError.ToolError({ message: `No seats to ${to}` })
    })),
  FunctionTool.make("watch", {
    description: "Watches until stopped",
    parameters: Schema.Struct({})
  }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("Watching")
      yield* Deferred.succeed(probe.started, undefined)
      return yield* Effect.never
    }).pipe(Effect.onInterrupt(() => Deferred.succeed(probe.interrupted, undefined))))
]

/** The server of `tools(probe)` on an in-memory toolset. */
export const serverLayer = (probe: Probe, options: Partial<McpToolsetServer.Options<never, never>> = {}) =>
  McpToolsetServer.layer({
    name: "travel",
    version: "1.0.0",
    toolset: AsyncToolset.make({ id: "travel", tools: tools(probe), onDuplicateCall: "allow" }),
    ...options
  })

/**
 * An SDK client connected to the server of the context over in-memory lines; closed with the
 * scope. `owner` names the session (default: a random one).
 */
export const sdkClient = (options: { readonly owner?: string; readonly capabilities?: Record<string, unknown> } = {}) =>
  Effect.gen(function*() {
    const input = yield* Queue.unbounded<string, Cause.Done>()
    const wire: Wire = { fromServer: [] }
    const transport: Transport = {
      start: async () => {},
      send: async (message: JSONRPCMessage) => {
        Queue.offerUnsafe(input, JSON.stringify(message))
      },
      close: async () => {
        Queue.endUnsafe(input)
        transport.onclose?.()
      }
    }
    yield* McpToolsetServer.serveLines({
      input: Stream.fromQueue(input),
      write: (line) =>
        Effect.sync(() => {
          const message = JSON.parse(line) as Record<string, unknown>
          wire.fromServer.push(message)
          transport.onmessage?.(message as JSONRPCMessage)
        }),
      ...(options.owner === undefined ? {} : { owner: options.owner })
    }).pipe(Effect.forkScoped({ startImmediately: true }))
    const client = new Client({ name: "sdk-test-client", version: "1.0.0" }, { capabilities: options.capabilities ?? {} })
    yield* Effect.promise(() => client.connect(transport))
    yield* Effect.addFinalizer(() => Effect.promise(() => client.close()))
    return { client, wire } as const
  }) satisfies Effect.Effect<unknown, never, Scope.Scope | McpToolsetServer.McpToolsetServer>

/** The server of the context over Streamable HTTP at `http://127.0.0.1:<port>/mcp`, for the scope. */
export const httpServer = (options: { readonly allowedOrigins?: ReadonlyArray<string> } = {}) =>
  Effect.gen(function*() {
    const server = yield* McpToolsetServer.McpToolsetServer
    const context = yield* Layer.build(
      HttpRouter.serve(McpToolsetServer.layerHttp({ path: "/mcp", ...options }), { disableLogger: true, disableListenLog: true }).pipe(
        Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
        Layer.provide(Layer.succeed(McpToolsetServer.McpToolsetServer, server))
      )
    )
    const address = (context.mapUnsafe.get(HttpServer.HttpServer.key) as HttpServer.HttpServer["Service"]).address
    if (address._tag !== "InetAddressV4") return yield* Effect.die("not an IPv4 address")
    return new URL(`http://127.0.0.1:${address.port}/mcp`)
  })

/** An SDK client on the HTTP server at `url`; closed with the scope. */
export const sdkHttpClient = (url: URL, options: { readonly sessionId?: string; readonly capabilities?: Record<string, unknown> } = {}) =>
  Effect.gen(function*() {
    const transport = new StreamableHTTPClientTransport(url, options.sessionId === undefined ? {} : { sessionId: options.sessionId })
    const client = new Client({ name: "sdk-test-client", version: "1.0.0" }, { capabilities: options.capabilities ?? {} })
    yield* Effect.promise(() => client.connect(transport as Transport))
    yield* Effect.addFinalizer(() => Effect.promise(() => client.close()))
    return { client, transport } as const
  })
