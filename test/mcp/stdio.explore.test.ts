/**
 * The stdio transport in a real process, with the official SDK's stdio client: it starts
 * `examples/mcp-server.ts --serve` (a toolset served by `McpToolsetServer.serveStdio`), runs a tool
 * as a task to its result, and closes (the server exits when its standard input ends). Spawns a
 * process: explore tier.
 */
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import { Client } from "@modelcontextprotocol/sdk/client/index.js"
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js"
import { CallToolResultSchema, CreateTaskResultSchema } from "@modelcontextprotocol/sdk/types.js"
import { Effect } from "effect"

const root = fileURLToPath(new URL("../..", import.meta.url))

describe("McpToolsetServer.serveStdio in a process", () => {
  it.live("the SDK's stdio client: tools/list, a task to its result, tasks/list", () =>
    Effect.gen(function*() {
      const transport = new StdioClientTransport({
        command: process.execPath,
        args: ["--conditions=effect-async-toolset-source", "--import", "tsx", "examples/mcp-server.ts", "--serve"],
        cwd: root,
        stderr: "inherit"
      })
      const client = new Client({ name: "sdk-stdio-client", version: "1.0.0" })
      yield* Effect.acquireRelease(Effect.promise(() => client.connect(transport)), () => Effect.promise(() => client.close()))
      const { tools } = yield* Effect.promise(() => client.listTools())
      assert.deepStrictEqual(tools.map((t) => [t.name, t.execution?.taskSupport]), [["book_flight", "optional"]])
      const created = yield* Effect.promise(() =>
        client.request({ method: "tools/call", params: { name: "book_flight", arguments: { destination: "Lima" }, task: {} } }, CreateTaskResultSchema)
      )
      const result = yield* Effect.promise(() => client.experimental.tasks.getTaskResult(created.task.taskId, CallToolResultSchema))
      assert.deepStrictEqual(result.content, [{ type: "text", text: "Booked JL 5 to Lima, confirmation FL-847293" }])
      const list = yield* Effect.promise(() => client.experimental.tasks.listTasks())
      assert.deepStrictEqual(list.tasks.map((t) => t.status), ["completed"])
    }).pipe(Effect.scoped), { timeout: 60_000 })
})
