/**
 * What a served toolset answers to a client that writes raw JSON-RPC lines (no SDK to keep it
 * honest): malformed JSON, unknown methods, wrong param types, odd ids, a reused id, cancels of
 * unknown things, a notification flood. Each gets a clear answer (or none, for a notification) and
 * the session keeps serving.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Option, Queue, Stream } from "effect"
import type { Cause } from "effect"
import { TestClock } from "effect/testing"
import { McpToolsetServer } from "effect-async-toolset/mcp"
import { makeProbe, serverLayer } from "../support/mcp.ts"
import type { Probe } from "../support/mcp.ts"

const withServer = <A, E, R>(f: (probe: Probe) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(makeProbe, (probe) => f(probe).pipe(Effect.provide(serverLayer(probe))))

type Message = Record<string, any>

/** A raw session: `send` writes a line, `next` takes the server's next message. */
const rawSession = Effect.gen(function*() {
  const input = yield* Queue.unbounded<string, Cause.Done>()
  const output = yield* Queue.unbounded<Message>()
  yield* McpToolsetServer.serveLines({
    input: Stream.fromQueue(input),
    write: (line) => Queue.offer(output, JSON.parse(line) as Message).pipe(Effect.asVoid)
  }).pipe(Effect.forkScoped({ startImmediately: true }))
  const send = (message: unknown) => Queue.offer(input, typeof message === "string" ? message : JSON.stringify(message))
  const next = Queue.take(output)
  /** The answer to request `id`, skipping notifications. */
  const answerTo = (id: unknown) =>
    Effect.gen(function*() {
      while (true) {
        const m = yield* next
        if ("id" in m && m.id === id) return m
      }
    })
  const request = (id: unknown, method: string, params?: unknown) =>
    Effect.andThen(send({ jsonrpc: "2.0", id, method, ...(params === undefined ? {} : { params }) }), answerTo(id))
  yield* request(0, "initialize", { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "raw", version: "0" } })
  yield* send({ jsonrpc: "2.0", method: "notifications/initialized" })
  return { send, next, answerTo, request, output, close: Queue.end(input) } as const
})

const codeOf = (m: Message): number | undefined => m.error?.code

describe("McpToolsetServer: a raw client's bad lines", () => {
  it.effect("malformed JSON, a batch, a non-JSON-RPC value: each answered with its error (id null), and the session keeps serving", () =>
    withServer(() =>
      Effect.gen(function*() {
        const s = yield* rawSession
        yield* s.send("{not json")
        const parse = yield* s.next
        assert.strictEqual(codeOf(parse), -32700)
        assert.strictEqual(parse.id, null)
        yield* s.send([{ jsonrpc: "2.0", id: 1, method: "ping" }])
        assert.strictEqual(codeOf(yield* s.next), -32600)
        yield* s.send({ id: 2, method: "ping" })
        assert.strictEqual(codeOf(yield* s.next), -32600)
        yield* s.send("42")
        assert.strictEqual(codeOf(yield* s.next), -32600)
        assert.deepStrictEqual((yield* s.request(3, "ping")).result, {})
      }).pipe(Effect.scoped)
    ))

  it.effect("an unknown method is -32601 naming it; a notification of an unknown method is not answered", () =>
    withServer(() =>
      Effect.gen(function*() {
        const s = yield* rawSession
        const unknown = yield* s.request(1, "resources/list")
        assert.strictEqual(codeOf(unknown), -32601)
        assert.include(unknown.error.message, "resources/list")
        yield* s.send({ jsonrpc: "2.0", method: "notifications/whatever", params: { x: 1 } })
        const pong = yield* s.request(2, "ping")
        assert.deepStrictEqual(pong, { jsonrpc: "2.0", id: 2, result: {} })
      }).pipe(Effect.scoped)
    ))

  it.effect("ids: a string and a number id are answered with their own id (1 and \"1\" apart); a null or object id is -32600 with id null", () =>
    withServer(() =>
      Effect.gen(function*() {
        const s = yield* rawSession
        yield* s.send({ jsonrpc: "2.0", id: "1", method: "ping" })
        yield* s.send({ jsonrpc: "2.0", id: 1, method: "ping" })
        const answers = [yield* s.next, yield* s.next]
        assert.sameDeepMembers(answers, [{ jsonrpc: "2.0", id: "1", result: {} }, { jsonrpc: "2.0", id: 1, result: {} }])
        for (const id of [null, { a: 1 }, [1], true]) {
          yield* s.send({ jsonrpc: "2.0", id, method: "ping" })
          const m = yield* s.next
          assert.strictEqual(codeOf(m), -32600, JSON.stringify(id))
          assert.strictEqual(m.id, null)
        }
      }).pipe(Effect.scoped)
    ))

  it.effect("wrong param types: params not an object, tools/call without a name or with array arguments, tasks/get with a numeric taskId, tasks/list with a numeric cursor", () =>
    withServer(() =>
      Effect.gen(function*() {
        const s = yield* rawSession
        yield* s.send({ jsonrpc: "2.0", id: 1, method: "tools/list", params: [1, 2] })
        const notObject = yield* s.answerTo(1)
        assert.strictEqual(codeOf(notObject), -32600)
        assert.include(notObject.error.message, "params")
        assert.strictEqual(codeOf(yield* s.request(2, "tools/call", { arguments: {} })), -32602)
        assert.strictEqual(codeOf(yield* s.request(3, "tools/call", { name: 7 })), -32602)
        const array = yield* s.request(4, "tools/call", { name: "book_flight", arguments: ["Lima"] })
        assert.strictEqual(codeOf(array), -32602)
        assert.include(array.error.message, "must be an object")
        assert.strictEqual(codeOf(yield* s.request(5, "tasks/get", { taskId: 12345 })), -32602)
        assert.strictEqual(codeOf(yield* s.request(6, "tasks/list", { cursor: 50 })), -32602)
        assert.strictEqual(codeOf(yield* s.request(7, "tasks/list", { cursor: "-1" })), -32602)
        assert.strictEqual(codeOf(yield* s.request(8, "tasks/list", { cursor: "9999" })), -32602)
        assert.deepStrictEqual((yield* s.request(9, "tasks/list", {})).result, { tasks: [] })
      }).pipe(Effect.scoped)
    ))

  it.effect("huge arguments (over 1 MB): a task call is refused with -32602 naming the limit (no task made), a plain call answers an error result saying so; the session keeps serving", () =>
    withServer(() =>
      Effect.gen(function*() {
        const s = yield* rawSession
        const to = "x".repeat(1_000_000)
        const refused = yield* s.request(1, "tools/call", { name: "book_flight", arguments: { to }, task: {} })
        assert.strictEqual(codeOf(refused), -32602)
        assert.include(refused.error.message, "too large")
        assert.deepStrictEqual((yield* s.request(2, "tasks/list", {})).result, { tasks: [] })
        const plain = yield* s.request(3, "tools/call", { name: "book_flight", arguments: { to } })
        const text = JSON.stringify(plain)
        assert.include(text, "too large")
        assert.isBelow(text.length, 2000)
        assert.deepStrictEqual((yield* s.request(4, "ping")).result, {})
      }).pipe(Effect.scoped)
    ))

  it.effect("a cancel (notifications/cancelled or tasks/cancel) for an unknown request or task: nothing stops, the running task goes on", () =>
    withServer((probe) =>
      Effect.gen(function*() {
        const s = yield* rawSession
        const created = yield* s.request(1, "tools/call", { name: "watch", arguments: {}, task: {} })
        yield* Deferred.await(probe.started)
        yield* s.send({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: 99 } })
        yield* s.send({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: 1 } })
        yield* s.send({ jsonrpc: "2.0", method: "notifications/cancelled", params: {} })
        const unknown = yield* s.request(2, "tasks/cancel", { taskId: "0123456789abcdef0123456789abcdef" })
        assert.strictEqual(codeOf(unknown), -32602)
        assert.strictEqual((yield* s.request(3, "tasks/get", { taskId: created.result.task.taskId })).result.status, "working")
        assert.isTrue(Option.isNone(yield* Deferred.poll(probe.interrupted)))
      }).pipe(Effect.scoped)
    ))

  it.effect("a notification flood (10 000 unknown notifications and cancels) is taken without answers, and the session still answers", () =>
    withServer(() =>
      Effect.gen(function*() {
        const s = yield* rawSession
        for (let i = 0; i < 5_000; i++) {
          yield* s.send({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: i, progress: i } })
          yield* s.send({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: i } })
        }
        const pong = yield* s.request("after", "ping")
        assert.deepStrictEqual(pong.result, {})
        assert.strictEqual(yield* Queue.size(s.output), 0)
      }).pipe(Effect.scoped)
    ))

  it.effect("a reused request id while the first is still open is refused (-32600); the first request is not disturbed and gets its answer", () =>
    withServer(() =>
      Effect.gen(function*() {
        const s = yield* rawSession
        yield* s.send({ jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "book_flight", arguments: { to: "Quito" } } })
        // the first answers with its first update only after the call is under way; let it start
        yield* TestClock.adjust("1 second")
        yield* s.send({ jsonrpc: "2.0", id: 7, method: "ping" })
        const refused = yield* s.next
        assert.strictEqual(refused.id, 7, JSON.stringify(refused))
        assert.strictEqual(codeOf(refused), -32600)
        assert.include(refused.error.message, "7")
        yield* TestClock.adjust("2 minutes")
        const answer = yield* s.answerTo(7)
        assert.deepStrictEqual(answer.result.content, [{ type: "text", text: "Booked FL-1 to Quito" }])
        // once answered, the id may be used again
        assert.deepStrictEqual((yield* s.request(7, "ping")).result, {})
      }).pipe(Effect.scoped)
    ))

  it.effect("a response from the client (this server asks nothing) is ignored: no answer to it, the session keeps serving", () =>
    withServer(() =>
      Effect.gen(function*() {
        const s = yield* rawSession
        yield* s.send({ jsonrpc: "2.0", id: 5, result: {} })
        yield* s.send({ jsonrpc: "2.0", id: 6, error: { code: -1, message: "no" } })
        assert.deepStrictEqual((yield* s.request(8, "ping")).result, {})
      }).pipe(Effect.scoped)
    ))
})
