/**
 * A connection to an MCP server, as a client: `initialize` done, then requests with a time limit,
 * the server's notifications routed (progress to its request, task status to whoever listens).
 * Over a child process's standard input and output (`stdio`), Streamable HTTP (`http`), or any
 * pair of line streams (`lines`). Closing the scope closes the connection.
 *
 * Every failure is an `McpConnectionError`: the server answered an error (`Rpc`, with its code), did
 * not answer in time (`Timeout`), answered something that is not a JSON-RPC answer (`Invalid`), or
 * the connection is gone (`Closed`).
 *
 * @since 0.1.0
 */
import { spawn } from "node:child_process"
import { Cause, Deferred, Duration, Effect, Exit, Queue, Schema, Scope, Stream } from "effect"
import * as McpWire from "./McpWire.ts"

/**
 * @since 0.1.0
 * @category errors
 */
export class McpConnectionError extends Schema.TaggedError<McpConnectionError>()("McpConnectionError", {
  reason: Schema.Literals(["Rpc", "Timeout", "Invalid", "Closed"]),
  message: Schema.String,
  code: Schema.optionalKey(Schema.Number)
}) {}

/**
 * @since 0.1.0
 * @category models
 */
export interface Connection {
  /** The server's name and version, as `initialize` answered. */
  readonly serverInfo: { readonly name: string; readonly version: string }
  readonly protocolVersion: string
  readonly capabilities: Readonly<Record<string, unknown>>
  /** Whether the server runs `tools/call` as a task (the 2025-11-25 `tasks.requests.tools.call`). */
  readonly tasks: boolean
  /**
   * One request; fails if the server answers an error, does not answer within `timeout` (the
   * connection's by default; the request is then cancelled), or the connection is lost.
   */
  readonly request: (
    method: string,
    params: Record<string, unknown>,
    options?: {
      readonly timeout?: Duration.Input | undefined
      readonly onProgress?: ((params: Record<string, unknown>) => void) | undefined
    }
  ) => Effect.Effect<Record<string, unknown>, McpConnectionError>
  /** Calls `f` with each `notifications/tasks/status` while the scope lasts. */
  readonly onTaskStatus: (f: (task: McpWire.Task) => void) => Effect.Effect<void, never, Scope.Scope>
  /** Completed when the connection is lost (or closed). */
  readonly closed: Deferred.Deferred<void>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** This client's name and version, told at `initialize`. */
  readonly clientInfo?: { readonly name: string; readonly version: string } | undefined
  /** How long a request may wait for its answer (default 60 seconds). */
  readonly timeout?: Duration.Input | undefined
}

/** What a transport gives the connection: a way to send a message, the messages that come. */
interface Channel {
  readonly send: (message: McpWire.Request | McpWire.Notification | McpWire.Response) => Effect.Effect<void, McpConnectionError>
  readonly incoming: Stream.Stream<McpWire.Incoming, McpConnectionError>
}

const closedError = (why: string) => new McpConnectionError({ reason: "Closed", message: why })

/**
 * The connection over a channel: starts reading, sends `initialize` and `notifications/initialized`.
 */
const connect = Effect.fnUntraced(function*(channel: Channel, options: Options) {
  const pending = new Map<McpWire.RequestId, Deferred.Deferred<McpWire.Response>>()
  const progress = new Map<McpWire.RequestId, (params: Record<string, unknown>) => void>()
  const statusListeners = new Set<(task: McpWire.Task) => void>()
  const closed = yield* Deferred.make<void>()
  let lost: McpConnectionError | undefined
  let nextId = 1
  const defaultTimeout = Duration.fromInputUnsafe(options.timeout ?? "60 seconds")

  const loseAll = (error: McpConnectionError) =>
    Effect.sync(() => {
      lost ??= error
      for (const deferred of pending.values()) Deferred.doneUnsafe(deferred, Exit.fail(error) as never)
      pending.clear()
      Deferred.doneUnsafe(closed, Exit.void)
    })

  const onMessage = (incoming: McpWire.Incoming): Effect.Effect<void, McpConnectionError> => {
    switch (incoming._tag) {
      case "Response": {
        const id = incoming.message.id
        if (id === null) return Effect.void
        const deferred = pending.get(id)
        if (deferred !== undefined) {
          pending.delete(id)
          Deferred.doneUnsafe(deferred, Exit.succeed(incoming.message))
        }
        return Effect.void
      }
      case "Notification": {
        const { method, params } = incoming.message
        if (method === "notifications/progress" && params !== undefined) {
          const token = params.progressToken
          if (typeof token === "string" || typeof token === "number") progress.get(token)?.(params)
        } else if (method === "notifications/tasks/status") {
          const task = McpWire.readTask(params)
          if (task !== undefined) for (const f of statusListeners) f(task)
        }
        return Effect.void
      }
      case "Request": {
        // This client offers no capabilities: it answers pings, and nothing else.
        const request = incoming.message
        return channel.send(
          request.method === "ping"
            ? McpWire.success(request.id, {})
            : McpWire.failure(request.id, { code: McpWire.ErrorCode.methodNotFound, message: `Method not found: ${request.method}` })
        ).pipe(Effect.ignore)
      }
      case "Invalid": {
        // An answer to one of our requests that is not a JSON-RPC answer (a result that is not an
        // object): that request fails now, rather than at its time limit. One with no id is dropped.
        const id = incoming.id
        const deferred = id === null ? undefined : pending.get(id)
        if (id !== null && deferred !== undefined) {
          pending.delete(id)
          Deferred.doneUnsafe(
            deferred,
            Exit.fail(new McpConnectionError({ reason: "Invalid", message: "The MCP server's answer is not a valid JSON-RPC response" })) as never
          )
        }
        return Effect.void
      }
    }
  }

  yield* channel.incoming.pipe(
    Stream.runForEach(onMessage),
    Effect.matchCauseEffect({
      onFailure: (cause) =>
        loseAll(Cause.findErrorOption(cause).pipe((e) => e._tag === "Some" ? e.value : closedError("The connection to the MCP server failed"))),
      onSuccess: () => loseAll(closedError("The MCP server closed the connection"))
    }),
    Effect.forkScoped({ startImmediately: true })
  )
  yield* Effect.addFinalizer(() => loseAll(closedError("The connection to the MCP server was closed")))

  const request: Connection["request"] = (method, params, requestOptions) =>
    Effect.suspend(() => {
      if (lost !== undefined) return Effect.fail(lost)
      const id = nextId++
      const deferred = Deferred.makeUnsafe<McpWire.Response>()
      pending.set(id, deferred)
      const onProgress = requestOptions?.onProgress
      if (onProgress !== undefined) progress.set(id, onProgress)
      const withToken = onProgress === undefined ? params : { ...params, _meta: { ...(McpWire.isObject(params._meta) ? params._meta : {}), progressToken: id } }
      const timeout = requestOptions?.timeout === undefined ? defaultTimeout : Duration.fromInputUnsafe(requestOptions.timeout)
      const cancel = (reason: string) =>
        channel.send(McpWire.notification("notifications/cancelled", { requestId: id, reason })).pipe(Effect.ignore, Effect.forkDetach, Effect.asVoid)
      return channel.send({ jsonrpc: "2.0", id, method, params: withToken }).pipe(
        Effect.andThen(Deferred.await(deferred)),
        Effect.timeoutOrElse({
          duration: timeout,
          orElse: () =>
            Effect.andThen(
              cancel("timed out"),
              Effect.fail(new McpConnectionError({ reason: "Timeout", message: `The MCP server did not answer ${method} within ${Duration.format(timeout)}` }))
            )
        }),
        Effect.onInterrupt(() => cancel("the caller gave up")),
        Effect.flatMap((response) =>
          "error" in response
            ? Effect.fail(new McpConnectionError({ reason: "Rpc", message: response.error.message, code: response.error.code }))
            : Effect.succeed(response.result)
        ),
        Effect.ensuring(Effect.sync(() => {
          pending.delete(id)
          progress.delete(id)
        }))
      )
    })

  const init = yield* request("initialize", {
    protocolVersion: McpWire.latestProtocolVersion,
    capabilities: {},
    clientInfo: options.clientInfo ?? { name: "effect-async-toolset", version: "0.1.0" }
  })
  const protocolVersion = typeof init.protocolVersion === "string" ? init.protocolVersion : McpWire.latestProtocolVersion
  if (!McpWire.supportedProtocolVersions.includes(protocolVersion)) {
    return yield* closedError(`The MCP server speaks protocol ${protocolVersion}, which this client does not`)
  }
  yield* channel.send(McpWire.notification("notifications/initialized", {}))
  const capabilities = McpWire.isObject(init.capabilities) ? init.capabilities : {}
  const info = McpWire.isObject(init.serverInfo) ? init.serverInfo : {}
  const tasks = McpWire.isObject(capabilities.tasks) && McpWire.isObject(capabilities.tasks.requests) &&
    McpWire.isObject(capabilities.tasks.requests.tools) && McpWire.isObject(capabilities.tasks.requests.tools.call)
  const connection: Connection = {
    serverInfo: {
      name: typeof info.name === "string" ? info.name : "MCP server",
      version: typeof info.version === "string" ? info.version : ""
    },
    protocolVersion,
    capabilities,
    tasks: tasks && protocolVersion === "2025-11-25",
    request,
    onTaskStatus: (f) =>
      Effect.acquireRelease(Effect.sync(() => statusListeners.add(f)), () => Effect.sync(() => statusListeners.delete(f))).pipe(Effect.asVoid),
    closed
  }
  return connection
})

/**
 * Over a pair of line streams: each line is one JSON-RPC message.
 *
 * @since 0.1.0
 * @category constructors
 */
export const lines = (
  transport: {
    readonly input: Stream.Stream<string, unknown>
    readonly write: (line: string) => Effect.Effect<void, unknown>
  },
  options: Options = {}
): Effect.Effect<Connection, McpConnectionError, Scope.Scope> =>
  connect({
    send: (message) => transport.write(JSON.stringify(message)).pipe(Effect.mapError(() => closedError("The MCP server's input is closed"))),
    incoming: transport.input.pipe(
      Stream.filter((line) => line.trim() !== ""),
      Stream.map(McpWire.parse),
      Stream.mapError(() => closedError("The MCP server's output failed"))
    )
  }, options)

/**
 * Starts `command` as a child process and speaks MCP on its standard input and output (its
 * standard error is passed through). The process is stopped when the scope closes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const stdio = (
  command: {
    readonly command: string
    readonly args?: ReadonlyArray<string> | undefined
    readonly env?: Readonly<Record<string, string>> | undefined
    readonly cwd?: string | undefined
  },
  options: Options = {}
): Effect.Effect<Connection, McpConnectionError, Scope.Scope> =>
  Effect.gen(function*() {
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        spawn(command.command, [...(command.args ?? [])], {
          stdio: ["pipe", "pipe", "inherit"],
          ...(command.env === undefined ? {} : { env: { ...process.env, ...command.env } }),
          ...(command.cwd === undefined ? {} : { cwd: command.cwd })
        })
      ),
      (child) =>
        Effect.callback<void>((resume) => {
          if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
          child.once("exit", () => resume(Effect.void))
          child.stdin.end()
          const timer = setTimeout(() => child.kill("SIGTERM"), 2000)
          child.once("exit", () => clearTimeout(timer))
        })
    )
    const input = Stream.callback<string, McpConnectionError>((queue) =>
      Effect.sync(() => {
        let buffer = ""
        child.stdout.setEncoding("utf8")
        child.stdout.on("data", (chunk: string) => {
          buffer += chunk
          let newline = buffer.indexOf("\n")
          while (newline >= 0) {
            Queue.offerUnsafe(queue, buffer.slice(0, newline))
            buffer = buffer.slice(newline + 1)
            newline = buffer.indexOf("\n")
          }
        })
        child.once("error", (error) => Queue.failCauseUnsafe(queue, Cause.fail(closedError(`The MCP server could not be started: ${error.message}`))))
        child.once("exit", (code, signal) =>
          Queue.failCauseUnsafe(queue, Cause.fail(closedError(`The MCP server exited (${signal ?? `code ${code}`})`)))
        )
      })
    )
    return yield* lines({
      input,
      write: (line) =>
        Effect.callback<void, McpConnectionError>((resume) => {
          if (!child.stdin.writable) return resume(Effect.fail(closedError("The MCP server's input is closed")))
          child.stdin.write(`${line}\n`, (error) => resume(error ? Effect.fail(closedError(error.message)) : Effect.void))
        })
    }, options)
  })

/**
 * Over Streamable HTTP at `url`: each message is a `POST`, answered as JSON or an SSE stream;
 * the session id the server gives at `initialize` is sent with every later message, and the
 * session is ended (`DELETE`) when the scope closes. Task status is polled (no `GET` stream).
 *
 * @since 0.1.0
 * @category constructors
 */
export const http = (
  url: string | URL,
  options: Options & { readonly headers?: Readonly<Record<string, string>> | undefined } = {}
): Effect.Effect<Connection, McpConnectionError, Scope.Scope> =>
  Effect.gen(function*() {
    const target = new URL(url)
    const session: { id: string | undefined; version: string | undefined } = { id: undefined, version: undefined }
    const inbox = yield* Queue.unbounded<McpWire.Incoming, McpConnectionError | Cause.Done>()
    const controller = new AbortController()
    yield* Effect.addFinalizer(() => Effect.sync(() => controller.abort()))
    const headers = () => ({
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      ...options.headers,
      ...(session.id === undefined ? {} : { "mcp-session-id": session.id }),
      ...(session.version === undefined ? {} : { "mcp-protocol-version": session.version })
    })
    const send: Channel["send"] = (message) =>
      Effect.tryPromise({
        try: async () => {
          const response = await fetch(target, { method: "POST", headers: headers(), body: JSON.stringify(message), signal: controller.signal })
          const sid = response.headers.get("mcp-session-id")
          if (sid !== null) session.id = sid
          if (response.status === 202) return
          if (response.status === 404 && session.id !== undefined) throw new Error("the MCP server ended the session")
          const type = response.headers.get("content-type") ?? ""
          if (type.includes("text/event-stream") && response.body !== null) {
            // Read the stream to its end in the background: the request's notifications, then its answer.
            void readSse(response.body, (data) => Queue.offerUnsafe(inbox, McpWire.parse(data))).catch(() => {})
            return
          }
          const text = await response.text()
          const incoming = text.trim() === "" ? undefined : McpWire.parse(text)
          if (incoming !== undefined && (incoming._tag !== "Invalid" || incoming.id !== null)) Queue.offerUnsafe(inbox, incoming)
          // An error page, or a body that is no JSON-RPC: the message failed (a request at once, not at its time limit).
          else if (!response.ok) throw new Error(`HTTP ${response.status}`)
          else if (incoming !== undefined) throw new Error("its answer is not JSON-RPC")
        },
        catch: (error) => closedError(`The MCP server at ${target.origin} cannot be reached: ${error instanceof Error ? error.message : String(error)}`)
      })
    const connection = yield* connect({ send, incoming: Stream.fromQueue(inbox) }, options)
    session.version = connection.protocolVersion
    yield* Effect.addFinalizer(() =>
      session.id === undefined ? Effect.void : Effect.promise(() =>
        fetch(target, { method: "DELETE", headers: headers() }).then(() => {}, () => {})
      ).pipe(Effect.timeout("2 seconds"), Effect.ignore)
    )
    return connection
  })

const readSse = async (body: ReadableStream<Uint8Array>, onData: (data: string) => void): Promise<void> => {
  const decoder = new TextDecoder()
  let buffer = ""
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true })
    let end = buffer.indexOf("\n\n")
    while (end >= 0) {
      const event = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart()).join("\n")
      if (data !== "") onData(data)
      end = buffer.indexOf("\n\n")
    }
  }
}
