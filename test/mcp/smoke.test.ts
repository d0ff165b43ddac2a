import { assert, describe, it } from "@effect/vitest"
import { CallToolResultSchema, CreateTaskResultSchema } from "@modelcontextprotocol/sdk/types.js"
import { Effect, Schema } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { McpToolsetServer } from "effect-async-toolset/mcp"
import { sdkClient } from "../support/mcp.ts"

const book = FunctionTool.make("book_flight", {
  description: "Book a flight",
  parameters: Schema.Struct({ to: Schema.String })
}, ({ to }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Looking up flights to ${to}`)
    yield* Effect.sleep("1 minute")
    yield* AsyncRunContext.update("Found 3 flights")
    yield* Effect.sleep("1 minute")
    return `Booked FL-1 to ${to}`
  }))

const server = McpToolsetServer.layer({
  name: "travel",
  version: "1.0.0",
  toolset: AsyncToolset.make({ id: "travel", tools: [book], onDuplicateCall: "allow" })
})

describe("smoke", () => {
  it.effect("task", () =>
    Effect.gen(function*() {
      const { client, wire } = yield* sdkClient()
      const tools = yield* Effect.promise(() => client.listTools())
      console.log(JSON.stringify(tools))
      const created = yield* Effect.promise(() =>
        client.request({ method: "tools/call", params: { name: "book_flight", arguments: { to: "Tokyo" }, task: { ttl: 60000 } } }, CreateTaskResultSchema)
      )
      console.log(JSON.stringify(created))
      const taskId = created.task.taskId
      console.log(JSON.stringify(yield* Effect.promise(() => client.experimental.tasks.getTask(taskId))))
      yield* TestClock.adjust("1 minute")
      console.log(JSON.stringify(yield* Effect.promise(() => client.experimental.tasks.getTask(taskId))))
      yield* TestClock.adjust("1 minute")
      console.log(JSON.stringify(yield* Effect.promise(() => client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema))))
      console.log(JSON.stringify(yield* Effect.promise(() => client.experimental.tasks.listTasks())))
      const plain = client.callTool({ name: "book_flight", arguments: { to: "Paris" } })
      yield* TestClock.adjust("2 minutes")
      console.log(JSON.stringify(yield* Effect.promise(() => plain)))
      console.log(wire.fromServer.map((m) => JSON.stringify(m)).join("\n"))
      assert.ok(true)
    }).pipe(Effect.provide(server)))
})
