/**
 * Serves a toolset's tools (in-memory or durable) as an MCP server, with the Tasks of MCP
 * 2025-11-25: a `tools/call` that asks for a task is answered at once with one, and the call runs
 * in the background; its updates are the task's status messages (and progress notifications, when
 * the client gave a progress token), its result or failure is the task's result; `tasks/cancel`
 * interrupts the call; `tasks/list` lists the session's tasks. A `tools/call` without a task is
 * answered with the result, as an ordinary tool call.
 *
 * The server is a service (`layer`) with its transports on top: `serveStdio` (newline-delimited
 * JSON-RPC on standard input and output), `layerHttp` (Streamable HTTP on an `HttpRouter`), and
 * `serveLines` (any pair of line streams). Several transports may share one server.
 *
 * The server is the toolset's agent: it makes the toolset on a session of its own (an
 * `AgentSession` whose chat it reads only for the calls' results), so the toolset needs nothing
 * else. A task's id is 128 random bits, and its call id binds it to the session that made it: a
 * request of another session finds nothing, as for an id that never existed. On a durable toolset
 * with a fixed `secret` a task survives a restart of the server under the same id (see `secret`).
 *
 * Why not effect/ai's `McpServer`: in effect 4.1.5 it has no Tasks (no `tasks` capability, no
 * `execution.taskSupport`, the `task` param of `tools/call` dropped, `tasks/*` unknown; pinned by
 * test/mcp/effect-mcp-server-has-no-tasks.test.ts), and what a protocol adapter with Tasks would be
 * built from (`McpProtocol.make`, its core and lifecycle) is in `effect/ai/internal/*`, which effect
 * does not export. The JSON-RPC this server needs (four methods besides `initialize`, `ping` and
 * the tools) is small; it is in `McpWire`.
 *
 * @since 0.1.0
 */
import { randomBytes } from "node:crypto"
import { Clock, Context, Duration, Effect, Fiber, Layer, Redacted, Schedule, Scope, Stream } from "effect"
import type { PlatformError } from "effect/PlatformError"
import * as Stdio from "effect/Stdio"
import type { HttpRouter } from "effect/http"
import { AgentSession } from "../AgentSession.ts"
import type * as AsyncToolset from "../AsyncToolset.ts"
import type { ChatItem } from "../ChatContext.ts"
import * as Http from "./internal/http.ts"
import * as Lines from "./internal/lines.ts"
import { answer, dispatch } from "./internal/requests.ts"
import * as Runs from "./internal/runs.ts"
import { attach, bridge, channelOf, endSession, onEvent, remember, sweep } from "./internal/state.ts"
import type { State } from "./internal/state.ts"
import * as McpWire from "./McpWire.ts"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<E, R> {
  /** The server's name and version, as `initialize` reports them. */
  readonly name: string
  readonly version: string
  /** Told to the client at `initialize`: how to use the server. */
  readonly instructions?: string | undefined
  /**
   * Makes the toolset to serve. It runs with the server's `AgentSession` (and a `Scope`: the
   * server's), e.g. `AsyncToolset.make({ id, tools, onDuplicateCall: "allow" })` or
   * `DurableToolset.make(definition)`. Its management tools (`get_running_tasks_<id>`,
   * `cancel_task_<id>`) are not offered: the client has `tasks/list` and `tasks/cancel`.
   *
   * One toolset serves every session, so its duplicate check spans sessions: make it with
   * `onDuplicateCall: "allow"` (duplicates are the client's business), or a refused call's text
   * names the running calls of other sessions.
   */
  readonly toolset: Effect.Effect<AsyncToolset.AsyncToolset, E, R>
  /**
   * Whether a tool may be called as a task (`optional`, the default), must be (`required`), or must
   * not be (`forbidden`); one value for all tools, or by tool name (the others `optional`).
   */
  readonly taskSupport?: McpWire.TaskSupport | Readonly<Record<string, McpWire.TaskSupport>> | undefined
  /** How long a task is kept when the client asks for no `ttl` (default 1 hour). */
  readonly ttl?: Duration.Input | undefined
  /** The longest `ttl` granted (default 24 hours); a longer request gets this. */
  readonly maxTtl?: Duration.Input | undefined
  /**
   * At close, how long task calls still waiting for their first output are given to have it
   * (default 5 seconds): a durable toolset keeps a call that has one for a restarted server, and
   * withdraws a call interrupted before it.
   */
  readonly closeTimeout?: Duration.Input | undefined
  /** The polling interval suggested to clients (default 1 second). */
  readonly pollInterval?: Duration.Input | undefined
  /** Tasks a session may have running at once (default 100); one more is refused with `-32000`. */
  readonly maxTasksPerSession?: number | undefined
  /**
   * The key that binds task ids and HTTP session ids to this server (HMAC-SHA-256). By default a
   * random one per process: nothing survives a restart. Give a fixed one (at least 32 characters,
   * kept secret) with a durable toolset, and a restarted server accepts the session ids it issued
   * before and finds their tasks again under the same ids.
   */
  readonly secret?: Redacted.Redacted<string> | undefined
  /**
   * The conversation the toolset's store kept (a durable toolset: `DurableChat`'s `history.items`):
   * the results of tasks that ended before a restart are read from it.
   */
  readonly history?: ReadonlyArray<ChatItem> | undefined
}

/**
 * One MCP session, as a transport knows it: the identity its tasks are bound to, and the revision
 * it negotiated (`undefined` before `initialize`; taken as the latest).
 *
 * @since 0.1.0
 * @category models
 */
export interface Session {
  readonly owner: string
  protocolVersion: string | undefined
}

/**
 * Sends one message to the client, as a transport can (best effort: a channel that has closed
 * drops it).
 *
 * @since 0.1.0
 * @category models
 */
export type Send = (message: McpWire.Notification) => void

/**
 * @since 0.1.0
 * @category models
 */
export interface Server {
  readonly name: string
  readonly version: string
  /** The toolset served. */
  readonly toolset: AsyncToolset.AsyncToolset
  /** The tools as `tools/list` lists them. */
  readonly tools: ReadonlyArray<McpWire.Tool>
  /**
   * Answers one request of a session; never fails (a failure is an error answer). Interrupting
   * it abandons the request: a plain tool call is cancelled, a wait for a task's result ends.
   * `send` carries what belongs to this request (the progress of a plain call); by default the
   * session's channel.
   */
  readonly handle: (session: Session, request: McpWire.Request, send?: Send) => Effect.Effect<McpWire.Response>
  /** Routes the notifications of `owner`'s tasks to `send` while the scope lasts (the latest channel wins). */
  readonly attach: (owner: string, send: Send) => Effect.Effect<void, never, Scope.Scope>
  /** Ends a session: its running tasks are cancelled and its tasks forgotten. */
  readonly endSession: (owner: string) => Effect.Effect<void>
  /** A new HTTP session id (unguessable, signed with the server's secret). */
  readonly newSessionId: () => string
  /** Whether an HTTP session id was issued by a server with this secret. */
  readonly isSessionId: (id: string) => boolean
}

/**
 * @since 0.1.0
 * @category services
 */
export class McpToolsetServer extends Context.Service<McpToolsetServer, Server>()("effect-async-toolset/McpToolsetServer") {}

// --- making the server ---------------------------------------------------------------------------

/**
 * Makes the server in the current scope: the toolset on the server's session, and the fiber that
 * follows its events. Closing the scope closes the toolset (and abandons the calls of plain
 * requests still open).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*<E, R>(options: Options<E, R>): Effect.fn.Return<
  Server,
  E,
  Exclude<R, AgentSession> | Scope.Scope
> {
  const scope = yield* Effect.scope
  const clock = yield* Clock.clockWith(Effect.succeed)
  const secret = options.secret === undefined
    ? new Uint8Array(randomBytes(32))
    : new TextEncoder().encode(Redacted.value(options.secret))
  const state: Omit<State, "toolset"> = {
    secret,
    clock,
    pollInterval: Duration.toMillis(Duration.fromInputUnsafe(options.pollInterval ?? "1 second")),
    defaultTtl: Duration.toMillis(Duration.fromInputUnsafe(options.ttl ?? "1 hour")),
    maxTtl: Duration.toMillis(Duration.fromInputUnsafe(options.maxTtl ?? "24 hours")),
    maxTasks: options.maxTasksPerSession ?? 100,
    scope,
    runs: new Map(),
    recovered: new Map(),
    forgotten: new Set(),
    starting: new Set(),
    channels: new Map()
  }
  for (const item of options.history ?? []) remember(state, item, item.createdAt)
  const session = bridge(state, clock)
  const toolset = yield* (options.toolset as Effect.Effect<AsyncToolset.AsyncToolset, E, R>).pipe(
    Effect.provideService(AgentSession, session)
  ) as Effect.Effect<AsyncToolset.AsyncToolset, E, Exclude<R, AgentSession> | Scope.Scope>
  // Task calls start in a scope of their own, closed before the toolset: at close, the calls still
  // waiting for their first output are given `closeTimeout` to have it (interrupted before it, a
  // durable toolset withdraws the call; after it, the call goes on and a restarted server finds it).
  const calls = yield* Scope.fork(scope)
  const closeTimeout = Duration.fromInputUnsafe(options.closeTimeout ?? "5 seconds")
  yield* Effect.addFinalizer(() =>
    state.starting.size === 0 ? Effect.void : Effect.ignore(Effect.timeout(Fiber.awaitAll([...state.starting]), closeTimeout))
  )
  const full: State = { ...state, toolset, scope: calls }
  // Subscribed before any call starts (the subscription is made as the fiber starts).
  yield* toolset.events.pipe(
    Stream.runForEach((event) => Effect.sync(() => onEvent(full, event))),
    Effect.forkIn(scope, { startImmediately: true })
  )
  yield* sweep(full).pipe(
    Effect.repeat(Schedule.spaced(Duration.millis(Math.max(1000, Math.min(60_000, full.defaultTtl))))),
    Effect.forkIn(scope, { startImmediately: true })
  )
  const management = new Set([`get_running_tasks_${toolset.id}`, `cancel_task_${toolset.id}`])
  const served = toolset.tools.filter((tool) => !management.has(tool.name))
  const byName = new Map(served.map((tool) => [tool.name, tool]))
  const supportOf = (name: string): McpWire.TaskSupport => {
    const option = options.taskSupport
    if (option === undefined) return "optional"
    if (typeof option === "string") return option
    return option[name] ?? "optional"
  }
  const tools: ReadonlyArray<McpWire.Tool> = served.map((tool) => ({
    name: tool.name,
    description: tool.description,
    inputSchema: tool.jsonSchema as Record<string, unknown>,
    execution: { taskSupport: supportOf(tool.name) }
  }))
  const server: Server = {
    name: options.name,
    version: options.version,
    toolset,
    tools,
    handle: (session, request, send) =>
      answer(request.id, dispatch({ state: full, options, tools, byName, supportOf }, session, request, send ?? channelOf(full, session.owner))),
    attach: (owner, send) => attach(full, owner, send),
    endSession: (owner) => endSession(full, owner),
    newSessionId: () => {
      const id = Runs.randomHex()
      return `${id}${sessionTag(secret, id)}`
    },
    isSessionId: (id) => /^[0-9a-f]{64}$/.test(id) && sessionTag(secret, id.slice(0, 32)) === id.slice(32)
  }
  return server
})

/**
 * The server as a layer: `McpToolsetServer`, for the transports.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { AsyncToolset } from "effect-async-toolset"
 * import { McpToolsetServer } from "effect-async-toolset/mcp"
 *
 * declare const tools: ReadonlyArray<any>
 * const Server = McpToolsetServer.layer({
 *   name: "travel",
 *   version: "1.0.0",
 *   toolset: AsyncToolset.make({ id: "travel", tools, onDuplicateCall: "allow" })
 * })
 * const Stdio = Layer.effectDiscard(McpToolsetServer.serveStdio()).pipe(Layer.provide(Server))
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = <E, R>(options: Options<E, R>): Layer.Layer<McpToolsetServer, E, Exclude<R, AgentSession | Scope.Scope>> =>
  Layer.effect(McpToolsetServer, make(options)) as Layer.Layer<McpToolsetServer, E, Exclude<R, AgentSession | Scope.Scope>>

const sessionTag = (secret: Uint8Array, id: string): string => Runs.callIdOf(secret, "session", id).slice(-16).padStart(32, "0")

// --- transports --------------------------------------------------------------------------------------

/**
 * Serves one session over a pair of line streams: each line of `input` is one JSON-RPC message,
 * each answer and notification is written with `write` (one line, without its newline). Requests
 * are answered concurrently (a `tasks/result` that waits holds nothing up); a
 * `notifications/cancelled` interrupts its request. Ends when `input` ends, abandoning the requests
 * still open. `owner` names the session for its tasks: by default a random one, so that nothing of
 * this session is found by another, and its tasks still running when `input` ends are cancelled
 * (nobody could reach them again); with a given `owner` they go on, for a later session of the
 * same owner (e.g. a client that restarts a stdio server of a durable toolset).
 *
 * @since 0.1.0
 * @category transports
 */
export const serveLines = Effect.fnUntraced(function*<E>(options: {
  readonly input: Stream.Stream<string, E>
  readonly write: (line: string) => Effect.Effect<void>
  readonly owner?: string | undefined
}): Effect.fn.Return<void, E, McpToolsetServer> {
  const server = yield* McpToolsetServer
  yield* Lines.serve(server, options)
})

/**
 * Serves one session on standard input and output (the `Stdio` service, e.g. `NodeStdio.layer`
 * from `@effect/platform-node`): newline-delimited JSON-RPC, as MCP's stdio transport. Ends when
 * standard input ends. Nothing else may write to standard output (log to standard error).
 *
 * @since 0.1.0
 * @category transports
 */
export const serveStdio = (options: {
  /**
   * The owner of the session's tasks (default `"stdio"`: a stdio server has one client, and a
   * server restarted by it finds the tasks of a durable toolset again). Tasks still running when
   * standard input ends go on.
   */
  readonly owner?: string | undefined
} = {}): Effect.Effect<void, PlatformError, McpToolsetServer | Stdio.Stdio> =>
  Effect.gen(function*() {
    const stdio = yield* Stdio.Stdio
    const stdout = stdio.stdout({ endOnDone: false })
    yield* serveLines({
      input: stdio.stdin.pipe(Stream.decodeText, Stream.splitLines),
      write: (line) => Stream.run(Stream.succeed(`${line}\n`), stdout).pipe(Effect.ignore),
      owner: options.owner ?? "stdio"
    })
  })

/**
 * Serves the server over Streamable HTTP at `path` of the `HttpRouter`: `POST` for messages
 * (answers as SSE when the client accepts it, else JSON), `GET` for the session's own stream (task
 * status notifications), `DELETE` to end a session (its running tasks are cancelled). Requests
 * with an `Origin` header are refused unless it is this machine's (`localhost`, `127.0.0.1`,
 * `[::1]`) or in `allowedOrigins`. Bind the HTTP server to
 * 127.0.0.1, or put authentication in front of it: anyone who can reach it can call the tools.
 *
 * @since 0.1.0
 * @category transports
 */
export const layerHttp = (options: {
  readonly path: HttpRouter.PathInput
  readonly allowedOrigins?: ReadonlyArray<string> | undefined
}): Layer.Layer<never, never, McpToolsetServer | HttpRouter.HttpRouter> =>
  Layer.effectDiscard(Effect.flatMap(McpToolsetServer, (server) => Http.routes(server, options)))
