/**
 * Streamable HTTP (MCP 2025-11-25) for an `McpToolsetServer`, on one path of an `HttpRouter`:
 *
 * - `POST`: one JSON-RPC message. A request is answered as an SSE stream when the client accepts
 *   one (the request's own notifications, such as a plain call's progress, then its answer), else
 *   as JSON; a notification or a response gets `202`. `initialize` opens a session and names it in
 *   `Mcp-Session-Id`; every other message must carry that header (`400` without it, `404` for an id
 *   this server did not issue, or a session that was ended).
 * - `GET`: the session's own SSE stream, for what belongs to no request (`notifications/tasks/status`).
 * - `DELETE`: ends the session: its running tasks are cancelled.
 *
 * A request with an `Origin` header is refused (`403`) unless that origin is on this machine
 * (`localhost`, `127.0.0.1`, `[::1]`) or allowed (DNS rebinding). A client that disconnects abandons its request (a plain call is cancelled).
 */
import { Effect, Fiber, Queue, Stream } from "effect"
import type { Cause } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import type * as McpToolsetServer from "../McpToolsetServer.ts"
import * as McpWire from "../McpWire.ts"

export interface HttpOptions {
  readonly path: HttpRouter.PathInput
  /**
   * Origins (`scheme://host:port`) a browser may call from besides this machine's own; requests
   * without `Origin` (not from a browser) are accepted.
   */
  readonly allowedOrigins?: ReadonlyArray<string> | undefined
}

const maxEnded = 10_000

export const routes = (server: McpToolsetServer.Server, options: HttpOptions) =>
  Effect.gen(function*() {
    const router = yield* HttpRouter.HttpRouter
    const sessions = new Map<string, McpToolsetServer.Session>()
    const ended = new Set<string>()
    /** Requests being answered, by session and request id: `notifications/cancelled` interrupts them. */
    const open = new Map<string, Fiber.Fiber<unknown, unknown>>()
    const allowed = new Set(options.allowedOrigins ?? [])

    const refuse = (status: number, code: number, message: string, id: McpWire.RequestId | null = null) =>
      HttpServerResponse.jsonUnsafe(McpWire.failure(id, { code, message }), { status })

    const originRefused = (request: HttpServerRequest.HttpServerRequest) => {
      const origin = request.headers["origin"]
      return origin !== undefined && !allowed.has(origin) && !isLoopbackOrigin(origin)
    }

    /** The session a message names, or the answer refusing it. */
    const sessionOf = (
      request: HttpServerRequest.HttpServerRequest,
      id: McpWire.RequestId | null
    ): { readonly sid: string; readonly session: McpToolsetServer.Session } | HttpServerResponse.HttpServerResponse => {
      const sid = request.headers["mcp-session-id"]
      if (sid === undefined || sid === "") {
        return refuse(400, McpWire.ErrorCode.invalidRequest, "Bad Request: Mcp-Session-Id header is required", id)
      }
      if (ended.has(sid) || !server.isSessionId(sid)) {
        return refuse(404, McpWire.ErrorCode.invalidRequest, "Session not found", id)
      }
      let session = sessions.get(sid)
      if (session === undefined) {
        // A session this server's secret issued before a restart: taken up again.
        const version = request.headers["mcp-protocol-version"]
        session = {
          owner: ownerOf(sid),
          protocolVersion: version !== undefined && McpWire.supportedProtocolVersions.includes(version) ? version : undefined
        }
        sessions.set(sid, session)
      }
      return { sid, session }
    }

    const sse = (message: McpWire.Notification | McpWire.Response): string => `event: message\ndata: ${JSON.stringify(message)}\n\n`

    const answer = (
      request: HttpServerRequest.HttpServerRequest,
      sid: string,
      session: McpToolsetServer.Session,
      message: McpWire.Request,
      headers: Record<string, string>
    ): Effect.Effect<HttpServerResponse.HttpServerResponse> => {
      const key = `${sid}\n${typeof message.id}:${message.id}`
      const accept = request.headers["accept"] ?? ""
      if (!accept.includes("text/event-stream")) {
        return server.handle(session, message, () => {}).pipe(
          Effect.map((response) => HttpServerResponse.jsonUnsafe(response, { headers }))
        )
      }
      const body = Stream.callback<string>((queue: Queue.Queue<string, Cause.Done>) =>
        Effect.gen(function*() {
          const send = (m: McpWire.Notification) => {
            Queue.offerUnsafe(queue, sse(m))
          }
          const fiber = yield* server.handle(session, message, send).pipe(
            Effect.flatMap((response) =>
              Effect.sync(() => {
                Queue.offerUnsafe(queue, sse(response))
                Queue.endUnsafe(queue)
              })
            ),
            Effect.ensuring(Effect.sync(() => open.delete(key))),
            Effect.forkScoped({ startImmediately: true })
          )
          open.set(key, fiber)
        })
      )
      return Effect.succeed(HttpServerResponse.stream(Stream.encodeText(body), {
        contentType: "text/event-stream",
        headers: { "cache-control": "no-cache", ...headers }
      }))
    }

    const post = (request: HttpServerRequest.HttpServerRequest) =>
      Effect.gen(function*() {
        if (originRefused(request)) return refuse(403, McpWire.ErrorCode.invalidRequest, "Forbidden: origin not allowed")
        const text = yield* Effect.orElseSucceed(request.text, () => undefined)
        if (text === undefined) return refuse(400, McpWire.ErrorCode.parseError, "Parse error: the body could not be read")
        const incoming = McpWire.parse(text)
        switch (incoming._tag) {
          case "Invalid":
            return refuse(400, incoming.error.code, incoming.error.message, incoming.id)
          case "Response":
          case "Notification": {
            const found = sessionOf(request, null)
            if (HttpServerResponse.isHttpServerResponse(found)) return found
            if (incoming._tag === "Notification" && incoming.message.method === "notifications/cancelled") {
              const id = incoming.message.params?.requestId
              const fiber = typeof id === "string" || typeof id === "number" ? open.get(`${found.sid}\n${typeof id}:${id}`) : undefined
              if (fiber !== undefined) yield* Fiber.interrupt(fiber)
            }
            return HttpServerResponse.empty({ status: 202 })
          }
          case "Request": {
            const message = incoming.message
            if (message.method === "initialize") {
              const sid = server.newSessionId()
              const session: McpToolsetServer.Session = { owner: ownerOf(sid), protocolVersion: undefined }
              sessions.set(sid, session)
              return yield* answer(request, sid, session, message, { "mcp-session-id": sid })
            }
            const found = sessionOf(request, message.id)
            if (HttpServerResponse.isHttpServerResponse(found)) return found
            return yield* answer(request, found.sid, found.session, message, {})
          }
        }
      })

    const get = (request: HttpServerRequest.HttpServerRequest) =>
      Effect.sync(() => {
        if (originRefused(request)) return refuse(403, McpWire.ErrorCode.invalidRequest, "Forbidden: origin not allowed")
        if (!(request.headers["accept"] ?? "").includes("text/event-stream")) {
          return refuse(406, McpWire.ErrorCode.invalidRequest, "Not Acceptable: the client must accept text/event-stream")
        }
        const found = sessionOf(request, null)
        if (HttpServerResponse.isHttpServerResponse(found)) return found
        const body = Stream.callback<string>((queue) =>
          server.attach(found.session.owner, (m) => {
            Queue.offerUnsafe(queue, sse(m))
          })
        )
        return HttpServerResponse.stream(Stream.encodeText(body), {
          contentType: "text/event-stream",
          headers: { "cache-control": "no-cache" }
        })
      })

    const del = (request: HttpServerRequest.HttpServerRequest) =>
      Effect.gen(function*() {
        if (originRefused(request)) return refuse(403, McpWire.ErrorCode.invalidRequest, "Forbidden: origin not allowed")
        const found = sessionOf(request, null)
        if (HttpServerResponse.isHttpServerResponse(found)) return found
        sessions.delete(found.sid)
        ended.add(found.sid)
        if (ended.size > maxEnded) ended.delete(ended.values().next().value!)
        for (const [key, fiber] of open) if (key.startsWith(`${found.sid}\n`)) yield* Fiber.interrupt(fiber)
        yield* server.endSession(found.session.owner)
        return HttpServerResponse.empty({ status: 204 })
      })

    yield* router.add("POST", options.path, post)
    yield* router.add("GET", options.path, get)
    yield* router.add("DELETE", options.path, del)
  })

const ownerOf = (sid: string): string => `http:${sid}`

const loopbackHosts = new Set(["localhost", "127.0.0.1", "[::1]"])

/** A page served from this machine (`http://localhost:3000`, `http://127.0.0.1`, `http://[::1]:8080`). */
const isLoopbackOrigin = (origin: string): boolean => {
  try {
    const url = new URL(origin)
    return (url.protocol === "http:" || url.protocol === "https:") && loopbackHosts.has(url.hostname)
  } catch {
    return false
  }
}

