/**
 * The server `.ci/run` points the MCP conformance suite at: a toolset served over Streamable HTTP
 * on 127.0.0.1, with the tools the suite's tool scenarios call (`test_simple_text`,
 * `test_error_handling`, `test_tool_with_progress`). Runs until it is stopped.
 *
 * `npm run example examples/mcp-conformance-server.ts -- --port 3001` (default port 3001).
 */
import { createServer } from "node:http"
import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Effect, Layer, Schema } from "effect"
import { HttpRouter } from "effect/http"
import { AsyncRunContext, AsyncToolset, FunctionTool, ToolError } from "effect-async-toolset"
import { McpToolsetServer } from "effect-async-toolset/mcp"

const port = Number(process.argv[process.argv.indexOf("--port") + 1] ?? 3001) || 3001

const tools = [
  FunctionTool.make("test_simple_text", { description: "Returns a simple text" }, () =>
    Effect.succeed("This is a simple text response for testing.")),
  FunctionTool.make("test_error_handling", { description: "Always fails" }, () =>
    Effect.fail(new ToolError.ToolError({ message: "This tool intentionally returns an error for testing" }))),
  FunctionTool.make("test_tool_with_progress", { description: "Reports progress three times" }, () =>
    Effect.gen(function*() {
      for (const step of [0, 50, 100]) {
        yield* AsyncRunContext.update(JSON.stringify({ progress: step, total: 100, message: `${step}% done` }))
        yield* Effect.sleep("50 millis")
      }
      return "Progress test completed"
    })),
  FunctionTool.make("echo", { description: "Echoes its text", parameters: Schema.Struct({ text: Schema.String }) }, ({ text }) =>
    Effect.succeed(text))
]

const Server = McpToolsetServer.layer({
  name: "effect-async-toolset-conformance",
  version: "0.1.0",
  toolset: AsyncToolset.make({ id: "conformance", tools, onDuplicateCall: "allow" })
})

const Http = HttpRouter.serve(McpToolsetServer.layerHttp({ path: "/mcp" }), { disableLogger: true }).pipe(
  Layer.provide(Server),
  Layer.provide(NodeHttpServer.layer(() => createServer(), { port, host: "127.0.0.1" }))
)

NodeRuntime.runMain(Layer.launch(Http))
