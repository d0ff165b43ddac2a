/**
 * MCP both ways, offline: this file started with `--serve` is an MCP server (a toolset with a slow
 * `book_flight` tool, over stdio, with Tasks); started without, it runs that server as a child
 * process, takes its tools into a toolset of its own (`McpRemoteTools`), and calls `book_flight`:
 * the call answers at once, the server task's status messages arrive as updates, then its result.
 * Exits by itself. Run it with `npm run example examples/mcp-server.ts`.
 */
import { fileURLToPath } from "node:url"
import { NodeRuntime, NodeStdio } from "@effect/platform-node"
import { Console, Effect, Schema, Stream } from "effect"
import { AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { McpConnection, McpRemoteTools, McpToolsetServer } from "effect-async-toolset/mcp"
import { TestSession } from "effect-async-toolset/testing"

// --- the server: a toolset served over stdio ------------------------------------------------------

const bookFlight = FunctionTool.make("book_flight", {
  description: "Book the best flight to a city",
  parameters: Schema.Struct({ destination: Schema.String.annotate({ description: "City of arrival" }) })
}, ({ destination }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Looking up flights to ${destination}...`)
    yield* Effect.sleep("400 millis")
    yield* AsyncRunContext.update("Found 3 flights, booking the best one...")
    yield* Effect.sleep("400 millis")
    return `Booked JL 5 to ${destination}, confirmation FL-847293`
  }))

const serve = McpToolsetServer.serveStdio().pipe(
  Effect.provide(McpToolsetServer.layer({
    name: "travel",
    version: "1.0.0",
    toolset: AsyncToolset.make({ id: "travel", tools: [bookFlight], onDuplicateCall: "allow" })
  })),
  Effect.provide(NodeStdio.layer)
)

// --- the client: the server's tools in a toolset of our own ----------------------------------------

const client = Effect.gen(function*() {
  const connection = yield* McpConnection.stdio({
    command: process.execPath,
    args: [...process.execArgv, fileURLToPath(import.meta.url), "--serve"]
  })
  yield* Console.log(`connected to ${connection.serverInfo.name} (MCP ${connection.protocolVersion}, tasks: ${connection.tasks})`)
  const tools = yield* McpRemoteTools.make(connection)
  yield* Console.log(`its tools: ${tools.map((tool) => tool.name).join(", ")}`)

  const toolset = yield* AsyncToolset.make({ id: "remote", tools })
  yield* toolset.events.pipe(
    Stream.runForEach((event) => event._tag === "CallUpdated" ? Console.log(`  update: ${event.message}`) : Effect.void),
    Effect.forkScoped({ startImmediately: true })
  )
  const call = yield* ChatContext.functionCall({ callId: "c1", name: "book_flight", arguments: JSON.stringify({ destination: "Tokyo" }) })
  const first = yield* toolset.execute(call)
  yield* Console.log(`the model is told at once:\n  ${first.output}`)
  yield* toolset.awaitIdle
  const chat = yield* TestSession.TestSession.use((session) => session.chat)
  const final = chat.items.find((item) => item._tag === "FunctionCallOutput" && item.callId.startsWith("c1_final"))
  yield* Console.log(`and later, its result: ${final?._tag === "FunctionCallOutput" ? final.output : "(nothing)"}`)
}).pipe(Effect.scoped, Effect.provide(TestSession.layer))

if (process.argv.includes("--serve")) NodeRuntime.runMain(serve)
else NodeRuntime.runMain(client)
