/**
 * The official TypeScript SDK's MCP server, for our client: `greet` (a plain tool), `build` (a
 * task tool, `taskSupport: "required"`, steered by the test through the task store), `hang` (a
 * plain tool that never answers). Connected to `McpConnection.lines` in this process.
 */
import { InMemoryTaskMessageQueue, InMemoryTaskStore } from "@modelcontextprotocol/sdk/experimental/tasks/index.js"
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js"
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js"
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js"
import { Deferred, Effect, Exit, Queue, Stream } from "effect"
import type { Cause } from "effect"
import { McpConnection } from "effect-async-toolset/mcp"
import * as z from "zod"

export interface SdkServer {
  readonly taskStore: InMemoryTaskStore
  /** The id of each task `build` made, in order. */
  readonly created: Queue.Queue<string>
  /** Whether the SDK transport was closed. */
  readonly closeTransport: () => Promise<void>
}

export const sdkServer = (options: { readonly tasks?: boolean } = {}) =>
  Effect.gen(function*() {
    const taskStore = new InMemoryTaskStore()
    const created = yield* Queue.unbounded<string>()
    const server = new McpServer(
      { name: "sdk-server", version: "1.0.0" },
      options.tasks === false
        ? {}
        : { capabilities: { tasks: { list: {}, cancel: {}, requests: { tools: { call: {} } } } }, taskStore, taskMessageQueue: new InMemoryTaskMessageQueue() }
    )
    server.registerTool("greet", {
      description: "Greets someone",
      inputSchema: { name: z.string().describe("who"), times: z.number().int().min(1).optional() }
    }, async ({ name }) => ({ content: [{ type: "text", text: `Hello, ${name}!` }] }))
    server.registerTool("hang", { description: "Never answers", inputSchema: {} }, () => new Promise(() => {}))
    if (options.tasks !== false) {
      server.experimental.tasks.registerToolTask("build", {
        description: "Builds a target",
        inputSchema: { target: z.string() },
        execution: { taskSupport: "required" }
      }, {
        createTask: async (_args, extra) => {
          const task = await extra.taskStore.createTask({ ttl: 60_000, pollInterval: 10 })
          Queue.offerUnsafe(created, task.taskId)
          return { task }
        },
        getTask: async (_args, extra) => (await extra.taskStore.getTask(extra.taskId))!,
        getTaskResult: async (_args, extra) => await extra.taskStore.getTaskResult(extra.taskId) as never
      })
    }
    const input = yield* Queue.unbounded<string, Cause.Done>()
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
    yield* Effect.promise(() => server.connect(transport))
    const connection = yield* McpConnection.lines({
      input: Stream.fromQueue(input),
      write: (line) => Effect.sync(() => transport.onmessage?.(JSON.parse(line) as JSONRPCMessage))
    }, { timeout: "2 seconds" })
    const closed = yield* Deferred.make<void>()
    yield* Effect.addFinalizer(() => Effect.promise(() => server.close()).pipe(Effect.andThen(Deferred.done(closed, Exit.void))))
    return { connection, server: { taskStore, created, closeTransport: () => transport.close() } satisfies SdkServer } as const
  })
