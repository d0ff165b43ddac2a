/**
 * Answers as a real server's bytes may arrive: server-sent events split at any byte (inside
 * `data:`, inside a multi-byte character), bytes that are not UTF-8, tool-call deltas whose id
 * comes late or whose indexes come out of order, an answer cut by the token limit inside a call's
 * arguments, a stream ending after a usage-only chunk without `[DONE]`, and an error body sent
 * with HTTP 200. Served byte for byte from 127.0.0.1.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Redacted, Schedule, Stream } from "effect"
import type { Scope } from "effect"
import { AiError } from "effect/ai"
import type { Response } from "effect/ai"
import { FetchHttpClient } from "effect/http"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { OpenAiCompat } from "effect-async-toolset/openai-compat"

/** A server that answers every request with `pieces`, each written on its own, in order. */
const rawServer = (
  pieces: ReadonlyArray<Buffer>,
  contentType = "text/event-stream"
): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<{ readonly url: string; readonly close: () => Promise<void> }>((resume) => {
      const http = createServer((req, res) => {
        req.resume()
        req.on("end", () => {
          res.writeHead(200, { "content-type": contentType })
          let i = 0
          const next = () => {
            if (i === pieces.length) return res.end()
            res.write(pieces[i++], () => setImmediate(next))
          }
          next()
        })
      })
      http.listen(0, "127.0.0.1", () => {
        const { port } = http.address() as AddressInfo
        resume(Effect.succeed({
          url: `http://127.0.0.1:${port}/v1`,
          close: () => new Promise<void>((done) => {
            http.closeAllConnections()
            http.close(() => done())
          })
        }))
      })
    }),
    (s) => Effect.promise(s.close)
  ).pipe(Effect.map((s) => s.url))

const modelAt = (baseUrl: string) =>
  OpenAiCompat.make({ baseUrl, apiKey: Redacted.make("sk-test"), model: "m", retry: Schedule.recurs(0) })
    .pipe(Effect.provide(FetchHttpClient.layer))

const chunk = (delta: object, finish: string | null = null) =>
  ({ id: "c1", object: "chat.completion.chunk", created: 1, model: "m", choices: [{ index: 0, delta, finish_reason: finish }] })

const sse = (events: ReadonlyArray<object | string>, done = true): Buffer =>
  Buffer.from(
    events.map((e) => `data: ${typeof e === "string" ? e : JSON.stringify(e)}\n\n`).join("") + (done ? "data: [DONE]\n\n" : ""),
    "utf8"
  )

/** `bytes` cut every `size` bytes. */
const cut = (bytes: Buffer, size: number): Array<Buffer> => {
  const out: Array<Buffer> = []
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size))
  return out
}

const streamParts = (baseUrl: string) =>
  Effect.gen(function*() {
    const model = yield* modelAt(baseUrl)
    const parts = yield* Stream.runCollect(
      model.streamText({ prompt: "hi", disableToolCallResolution: true, toolCallValidation: "deferred" } as never)
    ).pipe(Effect.exit)
    return parts as Exit.Exit<ReadonlyArray<Response.StreamPart<{}>>, AiError.AiError>
  })

const textOf = (parts: ReadonlyArray<Response.StreamPart<{}>>) =>
  parts.flatMap((part) => part.type === "text-delta" ? [part.delta] : []).join("")

/** The tool calls (the toolkit is empty, so their type says they cannot be: read them as records). */
const toolCalls = (parts: ReadonlyArray<Response.StreamPart<{}>>) =>
  (parts as ReadonlyArray<{ readonly type: string; readonly id?: string; readonly name?: string; readonly params?: unknown }>)
    .flatMap((part) => part.type === "tool-call" ? [{ id: part.id, name: part.name, params: part.params }] : [])

const finish = (parts: ReadonlyArray<Response.StreamPart<{}>>) =>
  parts.find((part) => part.type === "finish")

const words = "Grüße 🦜 — ça va? 你好"

describe("OpenAiCompat on the wire", () => {
  for (const size of [1, 2, 3, 7]) {
    it.live(`events cut every ${size} byte(s), inside data: and inside multi-byte characters: the text arrives whole`, () =>
      Effect.gen(function*() {
        const body = sse([chunk({ role: "assistant", content: "" }), chunk({ content: words }), chunk({ content: "!" }, "stop")])
        const exit = yield* streamParts(yield* rawServer(cut(body, size)))
        assert.isTrue(Exit.isSuccess(exit))
        if (Exit.isSuccess(exit)) {
          assert.strictEqual(textOf(exit.value), `${words}!`)
          assert.strictEqual(finish(exit.value)?.reason, "stop")
        }
      }))
  }

  it.live("bytes that are not UTF-8 become replacement characters; the answer is not lost", () =>
    Effect.gen(function*() {
      const body = Buffer.concat([
        Buffer.from(`data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"a`),
        Buffer.from([0xff, 0xfe, 0xc3]),
        Buffer.from(`b"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n`)
      ])
      const exit = yield* streamParts(yield* rawServer(cut(body, 5)))
      assert.isTrue(Exit.isSuccess(exit))
      if (Exit.isSuccess(exit)) assert.match(textOf(exit.value), /^a\uFFFD+b$/)
    }))

  it.live("a tool call whose id arrives after its name and first arguments, and indexes out of order: two calls, whole", () =>
    Effect.gen(function*() {
      const body = sse([
        chunk({ tool_calls: [{ index: 1, type: "function", function: { name: "b", arguments: "{\"y\":" } }] }),
        chunk({ tool_calls: [{ index: 0, type: "function", function: { name: "a", arguments: "" } }] }),
        chunk({ tool_calls: [{ index: 0, function: { arguments: "{\"x\":1}" } }] }),
        chunk({ tool_calls: [{ index: 1, id: "call_b", function: { arguments: "2}" } }] }),
        chunk({ tool_calls: [{ index: 0, id: "call_a" }] }),
        chunk({}, "tool_calls")
      ])
      const exit = yield* streamParts(yield* rawServer(cut(body, 11)))
      assert.isTrue(Exit.isSuccess(exit))
      if (Exit.isSuccess(exit)) {
        assert.deepStrictEqual(toolCalls(exit.value), [
          { id: "call_b", name: "b", params: { y: 2 } },
          { id: "call_a", name: "a", params: { x: 1 } }
        ])
        assert.strictEqual(finish(exit.value)?.reason, "tool-calls")
      }
    }))

  it.live("cut by the token limit inside a call's arguments: the call comes with its text as is, finishing with length", () =>
    Effect.gen(function*() {
      const body = sse([
        chunk({ tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "a", arguments: "{\"x\": \"lon" } }] }),
        chunk({}, "length")
      ])
      const exit = yield* streamParts(yield* rawServer([body]))
      assert.isTrue(Exit.isSuccess(exit))
      if (Exit.isSuccess(exit)) {
        assert.deepStrictEqual(toolCalls(exit.value), [{ id: "call_1", name: "a", params: "{\"x\": \"lon" }])
        assert.strictEqual(finish(exit.value)?.reason, "length")
      }
    }))

  it.live("a finish reason, then a usage-only chunk, then the end without [DONE]: a complete answer with its usage", () =>
    Effect.gen(function*() {
      const body = sse([
        chunk({ content: "Hi" }, "stop"),
        { id: "c1", model: "m", choices: [], usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 } }
      ], false)
      const exit = yield* streamParts(yield* rawServer([body]))
      assert.isTrue(Exit.isSuccess(exit))
      if (Exit.isSuccess(exit)) {
        assert.strictEqual(textOf(exit.value), "Hi")
        assert.strictEqual(finish(exit.value)?.usage.inputTokens.total, 3)
      }
    }))

  it.live("huge arguments (2 MB, in 4 KB deltas) arrive whole", () =>
    Effect.gen(function*() {
      const big = "x".repeat(2_000_000)
      const args = JSON.stringify({ text: big })
      const deltas = cut(Buffer.from(args), 4096).map((b) => chunk({ tool_calls: [{ index: 0, function: { arguments: b.toString() } }] }))
      const body = sse([
        chunk({ tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "a", arguments: "" } }] }),
        ...deltas,
        chunk({}, "tool_calls")
      ])
      const exit = yield* streamParts(yield* rawServer(cut(body, 65536)))
      assert.isTrue(Exit.isSuccess(exit))
      if (Exit.isSuccess(exit)) assert.strictEqual((toolCalls(exit.value)[0]?.params as { text: string }).text.length, big.length)
    }))

  it.live("HTTP 200 with an error body: a typed AiError with the server's words, streamed or not", () =>
    Effect.gen(function*() {
      const url = yield* rawServer([Buffer.from(JSON.stringify({ error: { message: "The model is overloaded", code: 503 } }))], "application/json")
      const model = yield* modelAt(url)
      const exits: ReadonlyArray<Exit.Exit<unknown, AiError.AiError>> = [
        yield* Effect.exit(model.generateText({ prompt: "hi" })),
        yield* Effect.exit(Stream.runCollect(model.streamText({ prompt: "hi" })))
      ]
      for (const exit of exits) {
        assert.isTrue(Exit.isFailure(exit))
        const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail") : undefined
        assert.isTrue(error !== undefined && AiError.isAiError(error.error))
        assert.include((error as { error: AiError.AiError }).error.message, "The model is overloaded")
      }
    }))
})
