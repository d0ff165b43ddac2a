/**
 * What a served toolset answers to bad requests, with the official SDK's client: each a clear
 * protocol error, nothing of another session leaked, nothing left running.
 */
import { assert, describe, it } from "@effect/vitest"
import type { Client } from "@modelcontextprotocol/sdk/client/index.js"
import { CallToolResultSchema, CreateTaskResultSchema } from "@modelcontextprotocol/sdk/types.js"
import { Deferred, Effect, Fiber, Option } from "effect"
import { TestClock } from "effect/testing"
import { makeProbe, sdkClient, serverLayer } from "../support/mcp.ts"
import type { Probe } from "../support/mcp.ts"

const withServer = <A, E, R>(f: (probe: Probe) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(makeProbe, (probe) => f(probe).pipe(Effect.provide(serverLayer(probe))))

/** A request's error as `code: message`, or "answered". */
const errorOf = (promise: () => Promise<unknown>) =>
  Effect.promise(() => promise().then(() => "answered", (e: { code?: number; message: string }) => `${e.code}: ${e.message}`))

const createTask = (client: Client, name: string, args: Record<string, unknown>) =>
  Effect.promise(() => client.request({ method: "tools/call", params: { name, arguments: args, task: {} } }, CreateTaskResultSchema))

const unknownId = "0123456789abcdef0123456789abcdef"

describe("McpToolsetServer: bad input", () => {
  it.effect("an unknown or malformed task id: tasks/get, tasks/result and tasks/cancel answer -32602 Task not found", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        for (const taskId of [unknownId, "not-a-task-id", ""]) {
          assert.strictEqual(yield* errorOf(() => client.experimental.tasks.getTask(taskId)), "-32602: MCP error -32602: Failed to retrieve task: Task not found")
          assert.strictEqual(
            yield* errorOf(() => client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema)),
            "-32602: MCP error -32602: Failed to retrieve task: Task not found"
          )
          assert.strictEqual(yield* errorOf(() => client.experimental.tasks.cancelTask(taskId)), "-32602: MCP error -32602: Failed to retrieve task: Task not found")
        }
        assert.strictEqual(
          yield* errorOf(() => client.request({ method: "tasks/get", params: {} }, CallToolResultSchema)),
          "-32602: MCP error -32602: Failed to retrieve task: Task not found"
        )
      })
    ))

  it.effect("a task of another session is not found there (as an unknown id), not listed, and its cancel there stops nothing", () =>
    withServer((probe) =>
      Effect.gen(function*() {
        const mine = yield* sdkClient()
        const other = yield* sdkClient()
        const created = yield* createTask(mine.client, "watch", {})
        yield* Deferred.await(probe.started)
        const taskId = created.task.taskId
        const notFound = "-32602: MCP error -32602: Failed to retrieve task: Task not found"
        assert.strictEqual(yield* errorOf(() => other.client.experimental.tasks.getTask(taskId)), notFound)
        assert.strictEqual(yield* errorOf(() => other.client.experimental.tasks.cancelTask(taskId)), notFound)
        assert.strictEqual(yield* errorOf(() => other.client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema)), notFound)
        assert.deepStrictEqual((yield* Effect.promise(() => other.client.experimental.tasks.listTasks())).tasks, [])
        assert.isTrue(Option.isNone(yield* Deferred.poll(probe.interrupted)))
        const still = yield* Effect.promise(() => mine.client.experimental.tasks.getTask(taskId))
        assert.strictEqual(still.status, "working")
      })
    ))

  it.effect("tasks/result before completion waits for the end (as the spec asks); a client that gives up leaves the task running", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        const created = yield* createTask(client, "book_flight", { to: "Lima" })
        const taskId = created.task.taskId
        const controller = new AbortController()
        const abandoned = client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema, { signal: controller.signal }).catch(() => "gave up")
        controller.abort()
        assert.strictEqual(yield* Effect.promise(() => abandoned), "gave up")
        const waiting = yield* Effect.promise(() => client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema)).pipe(
          Effect.forkChild({ startImmediately: true })
        )
        yield* TestClock.adjust("1 minute")
        assert.isUndefined(waiting.pollUnsafe())
        assert.strictEqual((yield* Effect.promise(() => client.experimental.tasks.getTask(taskId))).status, "working")
        yield* TestClock.adjust("1 minute")
        const result = yield* Fiber.join(waiting)
        assert.deepStrictEqual(result.content, [{ type: "text", text: "Booked FL-1 to Lima" }])
      })
    ))

  it.effect("a cancel after completion is -32602 naming the terminal status, and the result stays", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        const created = yield* createTask(client, "book_flight", { to: "Nice" })
        yield* TestClock.adjust("2 minutes")
        yield* Effect.promise(() => client.experimental.tasks.getTaskResult(created.task.taskId, CallToolResultSchema))
        assert.strictEqual(
          yield* errorOf(() => client.experimental.tasks.cancelTask(created.task.taskId)),
          "-32602: MCP error -32602: Cannot cancel task: already in terminal status 'completed'"
        )
        const result = yield* Effect.promise(() => client.experimental.tasks.getTaskResult(created.task.taskId, CallToolResultSchema))
        assert.deepStrictEqual(result.content, [{ type: "text", text: "Booked FL-1 to Nice" }])
      })
    ))

  it.effect("malformed arguments: a task call is refused with -32602 naming the problem (no task made); a plain call answers an error result the model can act on", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        const refused = yield* errorOf(() =>
          client.request({ method: "tools/call", params: { name: "book_flight", arguments: { to: 5 }, task: {} } }, CreateTaskResultSchema)
        )
        assert.match(refused, /^-32602: .*book_flight/)
        assert.include(refused, "to")
        assert.deepStrictEqual((yield* Effect.promise(() => client.experimental.tasks.listTasks())).tasks, [])
        const plain = yield* Effect.promise(() => client.callTool({ name: "book_flight", arguments: { to: 5 } }))
        assert.strictEqual(plain.isError, true)
        assert.include((plain.content as Array<{ text: string }>)[0]!.text, "to")
        assert.strictEqual(
          yield* errorOf(() => client.callTool({ name: "no_such_tool", arguments: {} })),
          "-32602: MCP error -32602: Unknown tool: no_such_tool"
        )
        assert.strictEqual(
          yield* errorOf(() => client.request({ method: "tools/call", params: { name: "book_flight", arguments: { to: "X" }, task: { ttl: -1 } } }, CreateTaskResultSchema)),
          "-32602: MCP error -32602: params.task must be an object; its ttl, if any, a number of milliseconds"
        )
      })
    ))

  it.effect("a session whose connection ends has its running tasks cancelled (nobody could reach them again)", () =>
    withServer((probe) =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        yield* createTask(client, "watch", {})
        yield* Deferred.await(probe.started)
        yield* Effect.promise(() => client.close())
        yield* Deferred.await(probe.interrupted)
      })
    ))
})
