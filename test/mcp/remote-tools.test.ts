/**
 * A remote MCP server's tools as tools of a toolset, against the official SDK's server: a task
 * tool is a background call (status messages are its updates, its result the final, our cancel
 * sends tasks/cancel, a lost connection a failure told to the model); a plain tool returns its
 * result; arguments are checked against the input schema; a server that never answers is a
 * failure, and nothing is left running.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Queue, Stream } from "effect"
import { AsyncToolset, ChatContext } from "effect-async-toolset"
import type { ToolsetEvent } from "effect-async-toolset"
import { McpConnection, McpRemoteTools } from "effect-async-toolset/mcp"
import { TestSession } from "effect-async-toolset/testing"
import { httpServer, makeProbe, serverLayer } from "../support/mcp.ts"
import { sdkServer } from "../support/sdkServer.ts"

const call = (callId: string, name: string, args: object) => ChatContext.functionCall({ callId, name, arguments: JSON.stringify(args) })

/** The outputs the chat holds for `callId` (its first output and its `_final`), as text. */
const outputsOf = (callId: string) =>
  Effect.map(TestSession.TestSession.use((s) => s.chat), (chat) =>
    chat.items.flatMap((item) => item._tag === "FunctionCallOutput" && item.callId.startsWith(callId) ? [`${item.isError ? "error: " : ""}${item.output}`] : []))

/** The toolset of the SDK server's tools, and its events as they come. */
const setup = (options: { readonly tasks?: boolean } = {}) =>
  Effect.gen(function*() {
    const { connection, server } = yield* sdkServer(options)
    const tools = yield* McpRemoteTools.make(connection, { pollInterval: "10 millis" })
    const toolset = yield* AsyncToolset.make({ id: "remote", tools })
    const events = yield* Queue.unbounded<ToolsetEvent.ToolsetEvent>()
    yield* toolset.events.pipe(Stream.runForEach((e) => Queue.offer(events, e)), Effect.forkScoped({ startImmediately: true }))
    const next = (tag: ToolsetEvent.ToolsetEvent["_tag"]) =>
      Effect.gen(function*() {
        while (true) {
          const e = yield* Queue.take(events)
          if (e._tag === tag) return e
        }
      })
    return { connection, server, tools, toolset, next } as const
  })

describe("McpRemoteTools against the SDK's server", () => {
  it.live("the server's tools become function tools with its names, descriptions and input schemas", () =>
    Effect.gen(function*() {
      const { tools } = yield* setup()
      assert.deepStrictEqual(tools.map((t) => t.name), ["greet", "hang", "build"])
      assert.strictEqual(tools[0]!.description, "Greets someone")
      const schema = tools[0]!.jsonSchema as { properties: Record<string, { description?: string }> }
      assert.deepStrictEqual(Object.keys(schema.properties), ["name", "times"])
      assert.strictEqual(schema.properties.name!.description, "who")
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.live("a plain tool is a call that returns the server's result", () =>
    Effect.gen(function*() {
      const { toolset } = yield* setup()
      const first = yield* toolset.execute(yield* call("c1", "greet", { name: "Ada" }))
      assert.strictEqual(first.output, "Hello, Ada!")
      assert.isFalse(first.isError)
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.live("arguments are checked against the input schema before anything is sent: the model is told what is wrong", () =>
    Effect.gen(function*() {
      const { toolset } = yield* setup()
      const bad = yield* toolset.execute(yield* call("c1", "greet", { name: 5, times: 0 }))
      assert.isTrue(bad.isError)
      assert.include(bad.output, "name")
      assert.include(bad.output, "times")
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.live("a task tool runs as a background call: started at once, each status message an update, the task's result the final", () =>
    Effect.gen(function*() {
      const { next, server, toolset } = yield* setup()
      const first = yield* toolset.execute(yield* call("c1", "build", { target: "app" }))
      assert.include(first.output, "build has started on sdk-server")
      const taskId = yield* Queue.take(server.created)
      yield* Effect.promise(() => server.taskStore.updateTaskStatus(taskId, "working", "compiling"))
      // the first update was the start; the status message comes as the next
      const updated = yield* next("CallUpdated")
      assert.strictEqual(updated._tag === "CallUpdated" && updated.message, "build has started on sdk-server.")
      const compiling = yield* next("CallUpdated")
      assert.strictEqual(compiling._tag === "CallUpdated" && compiling.message, "compiling")
      yield* Effect.promise(() => server.taskStore.storeTaskResult(taskId, "completed", { content: [{ type: "text", text: "built app" }] }))
      yield* next("CallEnded")
      yield* toolset.awaitIdle
      const outputs = yield* outputsOf("c1")
      assert.isTrue(outputs.some((o) => o.includes("built app")), JSON.stringify(outputs))
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.live("a failed task is an error result", () =>
    Effect.gen(function*() {
      const { next, server, toolset } = yield* setup()
      yield* toolset.execute(yield* call("c1", "build", { target: "app" }))
      const taskId = yield* Queue.take(server.created)
      yield* Effect.promise(() => server.taskStore.storeTaskResult(taskId, "failed", { content: [{ type: "text", text: "linker error" }], isError: true }))
      yield* next("CallEnded")
      yield* toolset.awaitIdle
      const outputs = yield* outputsOf("c1")
      assert.isTrue(outputs.some((o) => o.startsWith("error: ") && o.includes("linker error")), JSON.stringify(outputs))
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.live("cancelling the call on our side sends tasks/cancel: the server's task is cancelled", () =>
    Effect.gen(function*() {
      const { next, server, toolset } = yield* setup()
      yield* toolset.execute(yield* call("c1", "build", { target: "app" }))
      const taskId = yield* Queue.take(server.created)
      assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
      yield* next("CallEnded")
      const task = yield* Effect.promise(() => server.taskStore.getTask(taskId))
      assert.strictEqual(task?.status, "cancelled")
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.live("a lost connection fails the running task call, and the model is told in plain words", () =>
    Effect.gen(function*() {
      const { next, server, toolset } = yield* setup()
      yield* toolset.execute(yield* call("c1", "build", { target: "app" }))
      yield* Queue.take(server.created)
      yield* Effect.promise(() => server.closeTransport())
      yield* next("CallEnded")
      yield* toolset.awaitIdle
      const outputs = yield* outputsOf("c1")
      assert.isTrue(outputs.some((o) => o.startsWith("error: ") && o.includes("closed the connection")), JSON.stringify(outputs))
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.live("a server that never answers: the call fails after the connection's time limit, and nothing is left running", () =>
    Effect.gen(function*() {
      const { toolset } = yield* setup()
      const first = yield* toolset.execute(yield* call("c1", "hang", {}))
      assert.isTrue(first.isError)
      assert.include(first.output, "did not answer tools/call within 2s")
      assert.deepStrictEqual(yield* toolset.runningTasks, [])
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.live("a server without Tasks: a required-task tool is left out, the rest are plain calls", () =>
    Effect.gen(function*() {
      const { tools } = yield* setup({ tasks: false })
      assert.deepStrictEqual(tools.map((t) => t.name), ["greet", "hang"])
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))
})

describe("McpRemoteTools over Streamable HTTP, against this package's server", () => {
  it.live("the served toolset's task tool is a background call of the client's toolset: its updates, then its result", () =>
    Effect.flatMap(makeProbe, (probe) => Effect.gen(function*() {
      const url = yield* httpServer()
      const connection = yield* McpConnection.http(url)
      assert.isTrue(connection.tasks)
      const tools = yield* McpRemoteTools.make(connection)
      assert.deepStrictEqual(tools.map((t) => t.name), ["book_flight", "fail_booking", "watch"])
      const toolset = yield* AsyncToolset.make({ id: "client", tools, onDuplicateCall: "allow" })
      const first = yield* toolset.execute(yield* call("c1", "watch", {}))
      assert.include(first.output, "watch has started on travel")
      yield* Deferred.await(probe.started)
      assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
      yield* Deferred.await(probe.interrupted)
    }).pipe(Effect.scoped, Effect.provide(serverLayer(probe, { pollInterval: "10 millis" })))).pipe(Effect.provide(TestSession.layer)))
})
