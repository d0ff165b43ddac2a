/**
 * A durable toolset served over MCP: a task survives a restart of the server (a new server on the
 * same store, with the same secret) under the same task id, for the same owner only.
 */
import { assert, describe, it } from "@effect/vitest"
import { CallToolResultSchema, CreateTaskResultSchema } from "@modelcontextprotocol/sdk/types.js"
import { Effect, Layer, Redacted, Schema } from "effect"
import * as WorkflowEngine from "effect/workflow/WorkflowEngine"
import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { McpToolsetServer } from "effect-async-toolset/mcp"
import { newSessionId, storeLayer } from "../support/durable.ts"
import { httpServer, sdkClient, sdkHttpClient } from "../support/mcp.ts"

const book = FunctionTool.make("book_hotel", {
  description: "Book a hotel",
  parameters: Schema.Struct({ city: Schema.String })
}, ({ city }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Looking for rooms in ${city}`)
    yield* Effect.sleep("1500 millis")
    return `Booked HT-7 in ${city}`
  }))

const def = DurableToolset.define({ id: "hotels", tools: [book] })

const secret = Redacted.make("a test secret of at least thirty-two characters")

/** One run of the server process: the durable toolset of chat `sessionId`, served (with the stored chat as its `history`). */
const serverProcess = (sessionId: string) =>
  Layer.unwrap(Effect.gen(function*() {
    const chat = yield* DurableChat.DurableChat
    return McpToolsetServer.layer({
      name: "hotels",
      version: "1.0.0",
      secret,
      history: chat.history.items,
      toolset: Effect.gen(function*() {
        return yield* DurableToolset.make(def)
      })
    })
  })).pipe(
    Layer.provide(Layer.mergeAll(DurableToolset.layer(def), DurableChat.layer({ sessionId }))),
    Layer.provide(WorkflowEngine.layerMemory)
  )

describe("McpToolsetServer on a durable toolset", () => {
  it.live("a task survives a restart of the server under the same id: still running, then its result; another owner finds nothing", () =>
    Effect.gen(function*() {
      const sessionId = newSessionId()
      // process 1: a task is made, and the process ends while it runs
      const taskId = yield* Effect.gen(function*() {
        const { client } = yield* sdkClient({ owner: "client-1" })
        const created = yield* Effect.promise(() =>
          client.request({ method: "tools/call", params: { name: "book_hotel", arguments: { city: "Kyoto" }, task: {} } }, CreateTaskResultSchema)
        )
        return created.task.taskId
      }).pipe(Effect.scoped, Effect.provide(serverProcess(sessionId)))

      // process 2: the same owner finds the task by its id, and gets its result
      yield* Effect.gen(function*() {
        const { client } = yield* sdkClient({ owner: "client-1" })
        const task = yield* Effect.promise(() => client.experimental.tasks.getTask(taskId))
        assert.strictEqual(task.taskId, taskId)
        const listed = yield* Effect.promise(() => client.experimental.tasks.listTasks())
        assert.deepStrictEqual(listed.tasks.map((t) => t.taskId), [taskId])
        const result = yield* Effect.promise(() => client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema))
        assert.deepStrictEqual(result.content, [{ type: "text", text: "Booked HT-7 in Kyoto" }])
        const other = yield* sdkClient({ owner: "client-2" })
        const error = yield* Effect.promise(() => other.client.experimental.tasks.getTask(taskId).then(() => "answered", (e: Error) => e.message))
        assert.include(error, "Task not found")
      }).pipe(Effect.scoped, Effect.provide(serverProcess(sessionId)))
    }).pipe(Effect.provide(storeLayer)), { timeout: 60_000 })

  it.live("over HTTP: a restarted server with the same secret takes up the session id it issued, and its task is found there", () =>
    Effect.gen(function*() {
      const sessionId = newSessionId()
      const first = yield* Effect.gen(function*() {
        const url = yield* httpServer()
        const { client, transport } = yield* sdkHttpClient(url)
        const created = yield* Effect.promise(() =>
          client.request({ method: "tools/call", params: { name: "book_hotel", arguments: { city: "Oslo" }, task: {} } }, CreateTaskResultSchema)
        )
        return { taskId: created.task.taskId, session: transport.sessionId! }
      }).pipe(Effect.scoped, Effect.provide(serverProcess(sessionId)))

      yield* Effect.gen(function*() {
        const url = yield* httpServer()
        const { client } = yield* sdkHttpClient(url, { sessionId: first.session })
        const result = yield* Effect.promise(() => client.experimental.tasks.getTaskResult(first.taskId, CallToolResultSchema))
        assert.deepStrictEqual(result.content, [{ type: "text", text: "Booked HT-7 in Oslo" }])
      }).pipe(Effect.scoped, Effect.provide(serverProcess(sessionId)))
    }).pipe(Effect.provide(storeLayer)), { timeout: 60_000 })

  it.live("a task whose tool returned before a restart: listed after it as completed, its cancel refused naming that status, its result unchanged", () =>
    Effect.gen(function*() {
      const sessionId = newSessionId()
      const notCancellable = "Cannot cancel task: already in terminal status 'completed'"
      const taskId = yield* Effect.gen(function*() {
        const { client } = yield* sdkClient({ owner: "client-1" })
        const created = yield* Effect.promise(() =>
          client.request({ method: "tools/call", params: { name: "book_hotel", arguments: { city: "Bergen" }, task: {} } }, CreateTaskResultSchema)
        )
        const result = yield* Effect.promise(() => client.experimental.tasks.getTaskResult(created.task.taskId, CallToolResultSchema))
        assert.deepStrictEqual(result.content, [{ type: "text", text: "Booked HT-7 in Bergen" }])
        const refused = yield* Effect.promise(() => client.experimental.tasks.cancelTask(created.task.taskId).then(() => "cancelled", (e: Error) => e.message))
        assert.include(refused, notCancellable)
        return created.task.taskId
      }).pipe(Effect.scoped, Effect.provide(serverProcess(sessionId)))

      yield* Effect.gen(function*() {
        const { client } = yield* sdkClient({ owner: "client-1" })
        const listed = yield* Effect.promise(() => client.experimental.tasks.listTasks())
        assert.deepStrictEqual(listed.tasks.map((t) => [t.taskId, t.status]), [[taskId, "completed"]])
        const refused = yield* Effect.promise(() => client.experimental.tasks.cancelTask(taskId).then(() => "cancelled", (e: Error) => e.message))
        assert.include(refused, notCancellable)
        const result = yield* Effect.promise(() => client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema))
        assert.deepStrictEqual(result.content, [{ type: "text", text: "Booked HT-7 in Bergen" }])
        assert.strictEqual((yield* Effect.promise(() => client.experimental.tasks.getTask(taskId))).status, "completed")
      }).pipe(Effect.scoped, Effect.provide(serverProcess(sessionId)))
    }).pipe(Effect.provide(storeLayer)), { timeout: 60_000 })
})
