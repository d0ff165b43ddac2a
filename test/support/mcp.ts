/**
 * MCP test kit: the official TypeScript SDK's client connected to our server over a pair of line
 * streams in this process (`McpToolsetServer.serveLines`), and a small toolset of background tools.
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js"
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js"
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js"
import { Cause, Effect, Queue, Stream } from "effect"
import type { Scope } from "effect"
import { McpToolsetServer } from "effect-async-toolset/mcp"

/** Every line the server wrote, parsed, in order (for asserting on notifications). */
export interface Wire {
  readonly fromServer: Array<Record<string, unknown>>
}

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
