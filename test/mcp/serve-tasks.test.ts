/**
 * A toolset served as an MCP server, with the official SDK's client: a task-augmented `tools/call`
 * is answered at once with a task; the call's updates are its status messages (and progress
 * notifications when asked); its result or failure is the task's result; `tasks/cancel`
 * interrupts the call; `tasks/list` lists the session's tasks; a call without a task is an
 * ordinary tool call.
 */
import { assert, describe, it } from "@effect/vitest"
import type { Client } from "@modelcontextprotocol/sdk/client/index.js"
import { CallToolResultSchema, CreateTaskResultSchema } from "@modelcontextprotocol/sdk/types.js"
import type { Progress } from "@modelcontextprotocol/sdk/types.js"
import { Deferred, Effect } from "effect"
import { TestClock } from "effect/testing"
import { makeProbe, sdkClient, serverLayer } from "../support/mcp.ts"
import type { Probe } from "../support/mcp.ts"

const withServer = <A, E, R>(f: (probe: Probe) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(makeProbe, (probe) => f(probe).pipe(Effect.provide(serverLayer(probe))))

const createTask = (client: Client, name: string, args: Record<string, unknown>, options: { onprogress?: (p: Progress) => void } = {}) =>
  Effect.promise(() =>
    client.request({ method: "tools/call", params: { name, arguments: args, task: { ttl: 60_000 } } }, CreateTaskResultSchema, options)
  )

describe("McpToolsetServer: tasks", () => {
  it.effect("initialize announces tasks for tools/call, and tools/list gives each tool's task support (management tools left out)", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        const capabilities = client.getServerCapabilities() as Record<string, unknown>
        assert.deepStrictEqual(capabilities.tasks, { list: {}, cancel: {}, requests: { tools: { call: {} } } })
        const { tools } = yield* Effect.promise(() => client.listTools())
        assert.deepStrictEqual(tools.map((tool) => [tool.name, tool.execution?.taskSupport]), [
          ["book_flight", "optional"],
          ["fail_booking", "optional"],
          ["watch", "optional"]
        ])
        assert.deepStrictEqual(tools[0]!.inputSchema.required, ["to"])
      })
    ))

  it.effect("a task-augmented call is answered at once with a working task; its updates are status messages; its result is the task's result", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client, wire } = yield* sdkClient()
        const created = yield* createTask(client, "book_flight", { to: "Tokyo" })
        const taskId = created.task.taskId
        assert.match(taskId, /^[0-9a-f]{32}$/)
        assert.strictEqual(created.task.status, "working")
        assert.strictEqual(created.task.ttl, 60_000)
        assert.strictEqual(created.task.pollInterval, 1000)

        const first = yield* Effect.promise(() => client.experimental.tasks.getTask(taskId))
        assert.strictEqual(first.status, "working")
        assert.strictEqual(first.statusMessage, "Looking up flights to Tokyo")

        yield* TestClock.adjust("1 minute")
        const second = yield* Effect.promise(() => client.experimental.tasks.getTask(taskId))
        assert.strictEqual(second.statusMessage, "Found 3 flights")

        yield* TestClock.adjust("1 minute")
        const result = yield* Effect.promise(() => client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema))
        assert.deepStrictEqual(result.content, [{ type: "text", text: "Booked FL-1 to Tokyo" }])
        assert.strictEqual(result.isError, false)
        assert.deepStrictEqual(result._meta?.["io.modelcontextprotocol/related-task"], { taskId })
        const done = yield* Effect.promise(() => client.experimental.tasks.getTask(taskId))
        assert.strictEqual(done.status, "completed")

        const statuses = wire.fromServer
          .filter((m) => m.method === "notifications/tasks/status")
          .map((m) => {
            const params = m.params as Record<string, unknown>
            return [params.taskId, params.status, params.statusMessage]
          })
        assert.deepStrictEqual(statuses, [[taskId, "working", "Found 3 flights"], [taskId, "completed", undefined]])
      })
    ))

  it.effect("a task call with a progress token gets each update as a progress notification", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client, wire } = yield* sdkClient()
        const seen: Array<Progress> = []
        const created = yield* createTask(client, "book_flight", { to: "Oslo" }, { onprogress: (p) => seen.push(p) })
        yield* TestClock.adjust("2 minutes")
        yield* Effect.promise(() => client.experimental.tasks.getTaskResult(created.task.taskId, CallToolResultSchema))
        const progress = wire.fromServer
          .filter((m) => m.method === "notifications/progress")
          .map((m) => {
            const params = m.params as Record<string, unknown>
            return [params.progress, params.message]
          })
        assert.deepStrictEqual(progress, [[1, "Looking up flights to Oslo"], [2, "Found 3 flights"]])
      })
    ))

  it.effect("a failing call makes a failed task whose result is an error result", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        const created = yield* createTask(client, "fail_booking", { to: "Rome" })
        yield* TestClock.adjust("1 minute")
        const result = yield* Effect.promise(() => client.experimental.tasks.getTaskResult(created.task.taskId, CallToolResultSchema))
        assert.strictEqual(result.isError, true)
        assert.include((result.content[0] as { text: string }).text, "No seats to Rome")
        const task = yield* Effect.promise(() => client.experimental.tasks.getTask(created.task.taskId))
        assert.strictEqual(task.status, "failed")
      })
    ))

  it.effect("tasks/cancel interrupts the call's fiber and the task is cancelled; a second cancel is an error", () =>
    withServer((probe) =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        const created = yield* createTask(client, "watch", {})
        yield* Deferred.await(probe.started)
        const cancelled = yield* Effect.promise(() => client.experimental.tasks.cancelTask(created.task.taskId))
        assert.strictEqual(cancelled.status, "cancelled")
        yield* Deferred.await(probe.interrupted)
        const again = yield* Effect.promise(() => client.experimental.tasks.cancelTask(created.task.taskId).then(() => "answered", (e: Error) => e.message))
        assert.include(again, "Cannot cancel task: already in terminal status 'cancelled'")
        const list = yield* Effect.promise(() => client.experimental.tasks.listTasks())
        assert.deepStrictEqual(list.tasks.map((t) => t.status), ["cancelled"])
      })
    ))

  it.effect("tasks/list lists the session's tasks, running and ended", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        const a = yield* createTask(client, "book_flight", { to: "A" })
        yield* TestClock.adjust("30 seconds")
        const b = yield* createTask(client, "watch", {})
        yield* TestClock.adjust("90 seconds")
        const list = yield* Effect.promise(() => client.experimental.tasks.listTasks())
        assert.deepStrictEqual(list.tasks.map((t) => [t.taskId, t.status]), [[a.task.taskId, "completed"], [b.task.taskId, "working"]])
      })
    ))

  it.effect("a call without a task is answered with its result; its updates are progress notifications when asked", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        const seen: Array<Progress> = []
        const call = client.callTool({ name: "book_flight", arguments: { to: "Paris" } }, CallToolResultSchema, { onprogress: (p) => seen.push(p) })
        yield* TestClock.adjust("2 minutes")
        const result = yield* Effect.promise(() => call)
        assert.deepStrictEqual(result.content, [{ type: "text", text: "Booked FL-1 to Paris" }])
        assert.deepStrictEqual(seen.map((p) => [p.progress, p.message]), [[1, "Looking up flights to Paris"], [2, "Found 3 flights"]])
        const list = yield* Effect.promise(() => client.experimental.tasks.listTasks())
        assert.deepStrictEqual(list.tasks, [])
      })
    ))

  it.effect("a plain call the client cancels (notifications/cancelled) interrupts the call", () =>
    withServer((probe) =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        const controller = new AbortController()
        const call = client.callTool({ name: "watch", arguments: {} }, CallToolResultSchema, { signal: controller.signal }).catch((e: Error) => e.message)
        yield* Deferred.await(probe.started)
        controller.abort("changed my mind")
        yield* Deferred.await(probe.interrupted)
        assert.include(String(yield* Effect.promise(() => call)), "changed my mind")
      })
    ))

  it.effect("an ended task is forgotten once its ttl has passed (since its creation and since its end): then it is not found", () =>
    withServer(() =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        const created = yield* Effect.promise(() =>
          client.request({ method: "tools/call", params: { name: "book_flight", arguments: { to: "Bern" }, task: { ttl: 30_000 } } }, CreateTaskResultSchema)
        )
        yield* TestClock.adjust("2 minutes")
        assert.strictEqual((yield* Effect.promise(() => client.experimental.tasks.getTask(created.task.taskId))).status, "completed")
        yield* TestClock.adjust("2 minutes")
        const error = yield* Effect.promise(() => client.experimental.tasks.getTask(created.task.taskId).then(() => "answered", (e: Error) => e.message))
        assert.include(error, "Task not found")
      })
    ))

  it.effect("a session may have maxTasksPerSession tasks running; one more is refused with -32000 in plain words", () =>
    Effect.flatMap(makeProbe, (probe) =>
      Effect.gen(function*() {
        const { client } = yield* sdkClient()
        yield* createTask(client, "watch", {})
        const refused = yield* Effect.promise(() =>
          client.request({ method: "tools/call", params: { name: "watch", arguments: {}, task: {} } }, CreateTaskResultSchema)
            .then(() => "answered", (e: { code: number; message: string }) => `${e.code}: ${e.message}`)
        )
        assert.strictEqual(refused, "-32000: MCP error -32000: This session has 1 tasks running, the most it may: wait for one to end, or cancel one")
      }).pipe(Effect.provide(serverLayer(probe, { maxTasksPerSession: 1 })))))
})
