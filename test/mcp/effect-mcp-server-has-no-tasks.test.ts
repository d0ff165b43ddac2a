/**
 * Why `McpToolsetServer` has its own JSON-RPC handling instead of running on effect/ai's
 * `McpServer`: the bare dependency (effect 4.1.5), with one tool, speaking 2025-11-25 over its own
 * Streamable HTTP layer, knows nothing of Tasks. It announces no `tasks` capability, lists no
 * `execution.taskSupport`, answers a task-augmented `tools/call` with the plain result (the
 * `task` param dropped), and `tasks/get` is "method not found". Adding them needs a protocol
 * adapter, whose builder (`McpProtocol.make`, the core, the lifecycle) is in `effect/ai/internal/*`,
 * which effect's package.json does not export. When this test fails, effect has Tasks: move over.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Schema } from "effect"
import { McpProtocol, McpServer, Tool, Toolkit } from "effect/ai"
import { HttpRouter, HttpServer } from "effect/http"

const Echo = Tool.make("echo", { parameters: Schema.Struct({ text: Schema.String }), success: Schema.String })
const Tools = Toolkit.make(Echo)

const app = McpServer.layerHttp({
  name: "bare",
  version: "1.0.0",
  path: "/mcp",
  protocols: [McpProtocol.v2025_11_25],
  registrations: McpServer.toolkit(Tools).pipe(Layer.provide(Tools.toLayer({ echo: ({ text }) => Effect.succeed(text) })))
}).pipe(Layer.provide(HttpServer.layerServices))

describe("effect/ai McpServer (the bare dependency)", () => {
  it.live("has no Tasks: no tasks capability, no taskSupport, a task-augmented call answered plainly, tasks/get unknown", () =>
    Effect.acquireUseRelease(
      Effect.sync(() => HttpRouter.toWebHandler(app, { disableLogger: true })),
      ({ handler }) =>
        Effect.promise(async () => {
          let session: string | null = null
          const rpc = async (id: number, method: string, params: Record<string, unknown>) => {
            const response = await handler(
              new Request("http://localhost/mcp", {
                method: "POST",
                headers: {
                  "content-type": "application/json",
                  accept: "application/json, text/event-stream",
                  "mcp-protocol-version": "2025-11-25",
                  ...(session === null ? {} : { "mcp-session-id": session })
                },
                body: JSON.stringify({ jsonrpc: "2.0", id, method, params })
              })
            )
            session ??= response.headers.get("mcp-session-id")
            const text = await response.text()
            const data = text.startsWith("{") ? text : text.split("\n").find((line) => line.startsWith("data: "))!.slice(6)
            return JSON.parse(data) as { result?: Record<string, any>; error?: { code: number; message: string } }
          }
          const init = await rpc(1, "initialize", { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "t", version: "1" } })
          await handler(new Request("http://localhost/mcp", {
            method: "POST",
            headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-session-id": session!, "mcp-protocol-version": "2025-11-25" },
            body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" })
          }))
          const list = await rpc(2, "tools/list", {})
          const call = await rpc(3, "tools/call", { name: "echo", arguments: { text: "hi" }, task: { ttl: 60000 } })
          const get = await rpc(4, "tasks/get", { taskId: "x" })
          return { init, list, call, get }
        }),
      ({ dispose }) => Effect.promise(dispose)
    ).pipe(Effect.map(({ call, get, init, list }) => {
      assert.strictEqual(init.result?.protocolVersion, "2025-11-25")
      assert.isUndefined(init.result?.capabilities.tasks)
      assert.isUndefined(list.result?.tools[0].execution)
      assert.isUndefined(call.result?.task)
      assert.deepStrictEqual(call.result?.content, [{ type: "text", text: "hi" }])
      assert.strictEqual(get.error?.code, -32601)
    })))
})
