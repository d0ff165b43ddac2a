/**
 * A toolset served over Streamable HTTP on 127.0.0.1, with the official SDK's HTTP client: tasks
 * and plain calls as over stdio; sessions named by `Mcp-Session-Id`, scoped, ended by `DELETE`;
 * requests without a session, with an unknown one, or from a foreign origin refused.
 */
import { assert, describe, it } from "@effect/vitest"
import { CallToolResultSchema, CreateTaskResultSchema } from "@modelcontextprotocol/sdk/types.js"
import type { Progress } from "@modelcontextprotocol/sdk/types.js"
import { Deferred, Effect, Exit } from "effect"
import { TestClock } from "effect/testing"
import { httpServer, makeProbe, sdkHttpClient, serverLayer } from "../support/mcp.ts"
import type { Probe } from "../support/mcp.ts"

const withServer = <A, E, R>(f: (probe: Probe) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(makeProbe, (probe) => f(probe).pipe(Effect.provide(serverLayer(probe))))

const post = (url: URL, body: unknown, headers: Record<string, string> = {}) =>
  Effect.promise(async () => {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers },
      body: JSON.stringify(body)
    })
    return { status: response.status, body: await response.text(), sessionId: response.headers.get("mcp-session-id") }
  })

const initialize = {
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "raw", version: "1" } }
}

describe("McpToolsetServer over Streamable HTTP", () => {
  it.live("a task-augmented call over HTTP: its status message, the session's list, a cancel, the cancelled result", () =>
    withServer(() =>
      Effect.gen(function*() {
        const url = yield* httpServer()
        const { client } = yield* sdkHttpClient(url)
        const created = yield* Effect.promise(() =>
          client.request({ method: "tools/call", params: { name: "book_flight", arguments: { to: "Tokyo" }, task: {} } }, CreateTaskResultSchema)
        )
        const taskId = created.task.taskId
        const first = yield* Effect.promise(() => client.experimental.tasks.getTask(taskId))
        assert.strictEqual(first.statusMessage, "Looking up flights to Tokyo")
        const list = yield* Effect.promise(() => client.experimental.tasks.listTasks())
        assert.deepStrictEqual(list.tasks.map((t) => t.taskId), [taskId])
        yield* Effect.promise(() => client.experimental.tasks.cancelTask(taskId))
        const cancelled = yield* Effect.promise(() => client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema))
        assert.strictEqual(cancelled.isError, true)
      }).pipe(Effect.scoped)
    ))

  it.effect("a plain call over HTTP answers its result, its updates as progress on the request's SSE stream", () =>
    withServer(() =>
      Effect.gen(function*() {
        const url = yield* httpServer()
        const { client } = yield* sdkHttpClient(url)
        const seen: Array<Progress> = []
        const started = yield* Deferred.make<void>()
        const call = client.callTool({ name: "book_flight", arguments: { to: "Paris" } }, CallToolResultSchema, {
          onprogress: (p) => {
            seen.push(p)
            Deferred.doneUnsafe(started, Exit.void)
          }
        })
        // the call has started once its first update came
        yield* Deferred.await(started)
        yield* TestClock.adjust("2 minutes")
        const result = yield* Effect.promise(() => call)
        assert.deepStrictEqual(result.content, [{ type: "text", text: "Booked FL-1 to Paris" }])
        assert.deepStrictEqual(seen.map((p) => p.message), ["Looking up flights to Paris", "Found 3 flights"])
      })
    ))

  it.live("a task of another HTTP session is not found there", () =>
    withServer((probe) =>
      Effect.gen(function*() {
        const url = yield* httpServer()
        const mine = yield* sdkHttpClient(url)
        const other = yield* sdkHttpClient(url)
        const created = yield* Effect.promise(() =>
          mine.client.request({ method: "tools/call", params: { name: "watch", arguments: {}, task: {} } }, CreateTaskResultSchema)
        )
        yield* Deferred.await(probe.started)
        const error = yield* Effect.promise(() => other.client.experimental.tasks.getTask(created.task.taskId).then(() => "answered", (e: Error) => e.message))
        assert.include(error, "Task not found")
        assert.deepStrictEqual((yield* Effect.promise(() => other.client.experimental.tasks.listTasks())).tasks, [])
      }).pipe(Effect.scoped)
    ))

  it.live("DELETE ends the session: its running tasks are cancelled, and the session id is refused afterwards (404)", () =>
    withServer((probe) =>
      Effect.gen(function*() {
        const url = yield* httpServer()
        const { client, transport } = yield* sdkHttpClient(url)
        yield* Effect.promise(() =>
          client.request({ method: "tools/call", params: { name: "watch", arguments: {}, task: {} } }, CreateTaskResultSchema)
        )
        yield* Deferred.await(probe.started)
        const sessionId = transport.sessionId!
        yield* Effect.promise(() => transport.terminateSession())
        yield* Deferred.await(probe.interrupted)
        const after = yield* post(url, { jsonrpc: "2.0", id: 9, method: "tasks/list", params: {} }, {
          "mcp-session-id": sessionId,
          "mcp-protocol-version": "2025-11-25"
        })
        assert.strictEqual(after.status, 404)
      }).pipe(Effect.scoped)
    ))

  it.live("without Mcp-Session-Id: 400; an id this server did not issue: 404; a foreign Origin: 403 (this machine's and allowed ones accepted); not JSON: 400 parse error", () =>
    withServer(() =>
      Effect.gen(function*() {
        const url = yield* httpServer({ allowedOrigins: ["http://localhost:3000"] })
        const list = { jsonrpc: "2.0", id: 2, method: "tools/list", params: {} }
        const missing = yield* post(url, list)
        assert.strictEqual(missing.status, 400)
        assert.include(missing.body, "Mcp-Session-Id header is required")
        const forged = yield* post(url, list, { "mcp-session-id": "f".repeat(64) })
        assert.strictEqual(forged.status, 404)
        assert.include(forged.body, "Session not found")
        const foreign = yield* post(url, initialize, { origin: "http://evil.example" })
        assert.strictEqual(foreign.status, 403)
        const local = yield* post(url, initialize, { origin: "http://127.0.0.1:5173" })
        assert.strictEqual(local.status, 200)
        assert.strictEqual(foreign.status, 403)
        const allowed = yield* post(url, initialize, { origin: "http://localhost:3000" })
        assert.strictEqual(allowed.status, 200)
        assert.match(allowed.sessionId ?? "", /^[0-9a-f]{64}$/)
        const garbage = yield* Effect.promise(async () => {
          const response = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: "{not json" })
          return { status: response.status, body: await response.json() as { error: { code: number } } }
        })
        assert.strictEqual(garbage.status, 400)
        assert.strictEqual(garbage.body.error.code, -32700)
      }).pipe(Effect.scoped)
    ))
})
