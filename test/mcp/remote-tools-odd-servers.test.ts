/**
 * A remote MCP server that answers in every shape, as the toolset of its tools sees it: a JSON-RPC
 * error, a result with `isError`, a malformed result, a line that is not JSON, a hang, a disconnect
 * mid-call, progress for a token nobody gave, tools with invalid schemas or odd names. The model is
 * told plain words each time, and the toolset keeps serving the other calls.
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Queue, Stream } from "effect"
import type { Cause } from "effect"
import { TestClock } from "effect/testing"
import { AsyncToolset, ChatContext } from "effect-async-toolset"
import { McpConnection, McpRemoteTools } from "effect-async-toolset/mcp"
import { TestSession } from "effect-async-toolset/testing"

type Message = Record<string, any>

/** What the fake server does with one request: lines to write back (none: it hangs), or `close`. */
type Behaviour = (request: Message, reply: (message: unknown) => void, close: () => void) => void

const okTool = (name: string, inputSchema: unknown = { type: "object", properties: {} }) => ({ name, description: `The ${name} tool`, inputSchema })

/**
 * A fake server over in-memory lines: answers `initialize` and `tools/list` (with `tools`), and
 * every `tools/call` by the tool's behaviour.
 */
const fakeServer = (tools: ReadonlyArray<unknown>, behaviours: Record<string, Behaviour>, methods: Record<string, Behaviour> = {}) =>
  Effect.gen(function*() {
    const toClient = yield* Queue.unbounded<string, Cause.Done>()
    const reply = (message: unknown) => Queue.offerUnsafe(toClient, typeof message === "string" ? message : JSON.stringify(message))
    const close = () => Queue.endUnsafe(toClient)
    const connection = yield* McpConnection.lines({
      input: Stream.fromQueue(toClient),
      write: (line) =>
        Effect.sync(() => {
          const m = JSON.parse(line) as Message
          if (!("id" in m)) return
          switch (m.method) {
            case "initialize":
              return reply({
                jsonrpc: "2.0",
                id: m.id,
                result: {
                  protocolVersion: "tasks/get" in methods ? "2025-11-25" : "2025-06-18",
                  capabilities: { tools: {}, ...("tasks/get" in methods ? { tasks: { requests: { tools: { call: {} } } } } : {}) },
                  serverInfo: { name: "odd-server", version: "1" }
                }
              })
            case "tools/list":
              return reply({ jsonrpc: "2.0", id: m.id, result: { tools } })
            case "tools/call":
              return behaviours[m.params.name]?.(m, reply, close)
            default:
              return methods[m.method]?.(m, reply, close)
          }
        })
    }, { timeout: "10 seconds" })
    return connection
  })

const text = (id: unknown, t: string, extra: object = {}) => ({ jsonrpc: "2.0", id, result: { content: [{ type: "text", text: t }], ...extra } })

const behaviours: Record<string, Behaviour> = {
  ok: (m, reply) => reply(text(m.id, "fine")),
  rpc_error: (m, reply) => reply({ jsonrpc: "2.0", id: m.id, error: { code: -32000, message: "quota exceeded" } }),
  is_error: (m, reply) => reply(text(m.id, "no such city", { isError: true })),
  empty_error: (m, reply) => reply({ jsonrpc: "2.0", id: m.id, result: { content: [], isError: true } }),
  odd_content: (m, reply) => reply({ jsonrpc: "2.0", id: m.id, result: { content: "a string, not blocks" } }),
  image: (m, reply) => reply({ jsonrpc: "2.0", id: m.id, result: { content: [{ type: "image", data: "AAAA", mimeType: "image/png" }] } }),
  null_result: (m, reply) => reply({ jsonrpc: "2.0", id: m.id, result: null }),
  not_json: (m, reply) => reply(`not json at all ${m.id}`),
  progress_unknown: (m, reply) => {
    reply({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: "nobody", progress: 1 } })
    reply({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 424242, progress: 1 } })
    reply({ jsonrpc: "2.0", method: "notifications/progress" })
    reply({ jsonrpc: "2.0", method: "notifications/tasks/status", params: { taskId: 5 } })
    reply(text(m.id, "after the noise"))
  },
  hang: () => {},
  disconnect: (_m, _reply, close) => close()
}

const call = (callId: string, name: string, args: object = {}) => ChatContext.functionCall({ callId, name, arguments: JSON.stringify(args) })

const setup = (tools: ReadonlyArray<unknown>) =>
  Effect.gen(function*() {
    const connection = yield* fakeServer(tools, behaviours)
    const remote = yield* McpRemoteTools.make(connection)
    const toolset = yield* AsyncToolset.make({ id: "remote", tools: remote })
    return { connection, remote, toolset } as const
  })

const allTools = Object.keys(behaviours).map((name) => okTool(name))

describe("McpRemoteTools against a server that answers in every shape", () => {
  it.effect("success, a JSON-RPC error, isError, an empty error, odd content, an image, progress for unknown tokens: each told in plain words", () =>
    Effect.gen(function*() {
      const { toolset } = yield* setup(allTools)
      const ok = yield* toolset.execute(yield* call("c1", "ok"))
      assert.deepStrictEqual([ok.output, ok.isError], ["fine", false])
      const refused = yield* toolset.execute(yield* call("c2", "rpc_error"))
      assert.isTrue(refused.isError)
      assert.include(refused.output, "odd-server refused rpc_error: quota exceeded")
      const isError = yield* toolset.execute(yield* call("c3", "is_error"))
      assert.isTrue(isError.isError)
      assert.include(isError.output, "no such city")
      const empty = yield* toolset.execute(yield* call("c4", "empty_error"))
      assert.isTrue(empty.isError)
      assert.include(empty.output, "empty_error failed")
      const odd = yield* toolset.execute(yield* call("c5", "odd_content"))
      assert.isFalse(odd.isError)
      assert.include(odd.output, "a string, not blocks")
      const image = yield* toolset.execute(yield* call("c6", "image"))
      assert.include(image.output, "[image content]")
      const noisy = yield* toolset.execute(yield* call("c7", "progress_unknown"))
      assert.deepStrictEqual([noisy.output, noisy.isError], ["after the noise", false])
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.effect("an answer whose result is not an object: the call fails at once saying the answer is not valid (not at the time limit), the rest go on", () =>
    Effect.gen(function*() {
      const { toolset } = yield* setup(allTools)
      const nullResult = yield* toolset.execute(yield* call("c1", "null_result")).pipe(Effect.forkChild({ startImmediately: true }))
      yield* TestClock.adjust("1 second")
      const told = nullResult.pollUnsafe()
      assert.isDefined(told, "the call should end without waiting for the time limit")
      const first = yield* Fiber.join(nullResult)
      assert.isTrue(first.isError)
      assert.include(first.output, "null_result on odd-server failed")
      assert.include(first.output, "not a valid")
      const ok = yield* toolset.execute(yield* call("c2", "ok"))
      assert.strictEqual(ok.output, "fine")
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.effect("a line that is not JSON is dropped (no request can be told of it): the call waits for its answer, then its time limit", () =>
    Effect.gen(function*() {
      const { toolset } = yield* setup(allTools)
      const waiting = yield* toolset.execute(yield* call("c1", "not_json")).pipe(Effect.forkChild({ startImmediately: true }))
      yield* TestClock.adjust("10 seconds")
      const first = yield* Fiber.join(waiting)
      assert.isTrue(first.isError)
      assert.include(first.output, "did not answer tools/call within 10s")
      assert.strictEqual((yield* toolset.execute(yield* call("c2", "ok"))).output, "fine")
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.effect("a hang: the call fails at the connection's time limit, saying that whether it did anything is not known; other calls meanwhile are answered", () =>
    Effect.gen(function*() {
      const { toolset } = yield* setup(allTools)
      const hanging = yield* toolset.execute(yield* call("c1", "hang")).pipe(Effect.forkChild({ startImmediately: true }))
      assert.strictEqual((yield* toolset.execute(yield* call("c2", "ok"))).output, "fine")
      yield* TestClock.adjust("10 seconds")
      const first = yield* Fiber.join(hanging)
      assert.isTrue(first.isError)
      assert.include(first.output, "Whether it did anything is not known")
      assert.deepStrictEqual(yield* toolset.runningTasks, [])
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.effect("a disconnect mid-call: the call fails at once naming the closed connection; later calls fail the same way, not hang", () =>
    Effect.gen(function*() {
      const { toolset } = yield* setup(allTools)
      const lost = yield* toolset.execute(yield* call("c1", "disconnect"))
      assert.isTrue(lost.isError)
      assert.include(lost.output, "closed the connection")
      const after = yield* toolset.execute(yield* call("c2", "ok"))
      assert.isTrue(after.isError)
      assert.include(after.output, "closed the connection")
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))
})

describe("McpRemoteTools: a server's odd tool list", () => {
  it.effect("invalid or unusual input schemas: each tool is still offered (its schema as written), its arguments checked to be an object", () =>
    Effect.gen(function*() {
      const { remote, toolset } = yield* setup([
        okTool("ok", { type: "object", properties: 5 }),
        okTool("is_error", { type: "string" }),
        okTool("image", { type: "object", properties: { x: { type: "nonsense" } } }),
        okTool("odd_content", { type: "object", properties: { a: { $ref: "#/$defs/missing" } } }),
        { name: "no_schema" },
        { name: 42, inputSchema: {} }
      ])
      assert.deepStrictEqual(remote.map((t) => t.name), ["ok", "is_error", "image", "odd_content"])
      const ok = yield* toolset.execute(yield* call("c1", "ok", { anything: 1 }))
      assert.strictEqual(ok.output, "fine")
      const notObject = yield* toolset.execute(ChatContext.functionCall({ callId: "c2", name: "ok", arguments: "[1]" }).pipe(Effect.runSync))
      assert.isTrue(notObject.isError)
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))

  it.effect("odd names: characters a provider refuses become _, an empty or colliding name is left out (with the others offered), a long one is cut to 64", () =>
    Effect.gen(function*() {
      const long = "t".repeat(100)
      const { remote, toolset } = yield* setup([
        okTool("weird.name/with spaces"),
        okTool(""),
        okTool("a.b"),
        okTool("a_b"),
        okTool(long),
        okTool("ok")
      ])
      const names = remote.map((t) => t.name)
      assert.includeMembers(names, ["weird_name_with_spaces", "a_b", "t".repeat(64), "ok"])
      assert.strictEqual(new Set(names).size, names.length)
      assert.strictEqual(names.length, 4)
      assert.strictEqual((yield* toolset.execute(yield* call("c1", "ok"))).output, "fine")
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))
})

/** A Streamable HTTP server on 127.0.0.1 whose `tools/call` of `error_page` is an HTTP 500 page, of `html` a 200 HTML page. */
const brokenHttpServer = Effect.acquireRelease(
  Effect.callback<{ readonly url: URL; readonly close: () => void }>((resume) => {
    const server = createServer((req, res) => {
      let body = ""
      req.on("data", (chunk) => body += chunk)
      req.on("end", () => {
        if (req.method !== "POST") return res.writeHead(405).end()
        const m = JSON.parse(body) as Message
        if (!("id" in m)) return res.writeHead(202).end()
        const json = (result: unknown) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ jsonrpc: "2.0", id: m.id, result }))
        if (m.method === "initialize") {
          return json({ protocolVersion: "2025-06-18", capabilities: { tools: {} }, serverInfo: { name: "broken-http", version: "1" } })
        }
        if (m.method === "tools/list") return json({ tools: [okTool("error_page"), okTool("html"), okTool("ok")] })
        if (m.params.name === "error_page") return res.writeHead(500, { "content-type": "text/plain" }).end("Internal Server Error")
        if (m.params.name === "html") return res.writeHead(200, { "content-type": "text/html" }).end("<html>maintenance</html>")
        return json({ content: [{ type: "text", text: "fine" }] })
      })
    })
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo
      resume(Effect.succeed({ url: new URL(`http://127.0.0.1:${port}/mcp`), close: () => server.close() }))
    })
  }),
  (s) => Effect.sync(() => s.close())
)

describe("McpRemoteTools over HTTP, a server answering a page instead of JSON-RPC", () => {
  it.live("an HTTP 500 page or a 200 HTML page: the call fails at once naming it (not at the time limit), the next call is answered", () =>
    Effect.gen(function*() {
      const { url } = yield* brokenHttpServer
      const connection = yield* McpConnection.http(url, { timeout: "30 seconds" })
      const toolset = yield* AsyncToolset.make({ id: "remote", tools: yield* McpRemoteTools.make(connection) })
      const page = yield* toolset.execute(yield* call("c1", "error_page"))
      assert.isTrue(page.isError)
      assert.include(page.output, "HTTP 500")
      assert.include(page.output, "Whether it did anything is not known")
      const html = yield* toolset.execute(yield* call("c2", "html"))
      assert.isTrue(html.isError)
      assert.include(html.output, "not JSON-RPC")
      assert.strictEqual((yield* toolset.execute(yield* call("c3", "ok"))).output, "fine")
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer)), { timeout: 10_000 })
})

describe("McpRemoteTools: a task server's odd task answers", () => {
  const taskTool = { ...okTool("build"), execution: { taskSupport: "required" } }
  const startTask: Behaviour = (m, reply) =>
    reply({ jsonrpc: "2.0", id: m.id, result: { task: { taskId: "t1", status: "working", ttl: 60000, createdAt: "", lastUpdatedAt: "" } } })

  const taskSetup = (methods: Record<string, Behaviour>) =>
    Effect.gen(function*() {
      const connection = yield* fakeServer([taskTool], { build: startTask }, methods)
      assert.isTrue(connection.tasks)
      const toolset = yield* AsyncToolset.make({ id: "remote", tools: yield* McpRemoteTools.make(connection) })
      return toolset
    })

  const finalOf = (callId: string) =>
    Effect.map(TestSession.TestSession.use((s) => s.chat), (chat) =>
      chat.items.flatMap((item) => item._tag === "FunctionCallOutput" && item.callId.startsWith(`${callId}_final`) ? [item] : []))

  for (
    const [what, getTask, expected] of [
      ["tasks/get answers something that is not a task", (m: Message, reply: (x: unknown) => void) => reply({ jsonrpc: "2.0", id: m.id, result: { status: 3 } }), "not a task"],
      [
        "tasks/get says the task is not found",
        (m: Message, reply: (x: unknown) => void) => reply({ jsonrpc: "2.0", id: m.id, error: { code: -32602, message: "Task not found" } }),
        "Task not found"
      ]
    ] as const
  ) {
    it.effect(`${what}: the call ends with an error result naming it, and nothing is left running`, () =>
      Effect.gen(function*() {
        const toolset = yield* taskSetup({ "tasks/get": getTask, "tasks/cancel": (m, reply) => reply({ jsonrpc: "2.0", id: m.id, result: {} }) })
        const first = yield* toolset.execute(yield* call("c1", "build"))
        assert.isFalse(first.isError)
        yield* TestClock.adjust("2 seconds")
        yield* toolset.awaitIdle
        const final = yield* finalOf("c1")
        assert.strictEqual(final.length, 1, JSON.stringify(final))
        assert.isTrue(final[0]!.isError)
        assert.include(final[0]!.output, expected)
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
      }).pipe(Effect.scoped, Effect.provide(TestSession.layer)))
  }
})
