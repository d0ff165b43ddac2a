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
import { Cause, Clock, Context, Deferred, Duration, Effect, Fiber, FiberMap, Layer, Queue, Redacted, Schedule, Scope, Stream } from "effect"
import type { PlatformError } from "effect/PlatformError"
import * as Stdio from "effect/Stdio"
import type { HttpRouter } from "effect/http"
import { AgentSession } from "../AgentSession.ts"
import type * as AsyncToolset from "../AsyncToolset.ts"
import { ChatContext, functionCall } from "../ChatContext.ts"
import type { ChatItem, FunctionCallOutput } from "../ChatContext.ts"
import * as FunctionTool from "../FunctionTool.ts"
import type { ToolsetEvent } from "../ToolsetEvent.ts"
import * as Http from "./internal/http.ts"
import * as Runs from "./internal/runs.ts"
import type { Run } from "./internal/runs.ts"
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

interface State {
  readonly toolset: AsyncToolset.AsyncToolset
  readonly secret: Uint8Array
  readonly clock: Clock.Clock
  readonly pollInterval: number
  readonly defaultTtl: number
  readonly maxTtl: number
  readonly maxTasks: number
  readonly scope: Scope.Scope
  /** Task calls waiting for their first output. */
  readonly starting: Set<Fiber.Fiber<unknown>>
  readonly runs: Map<string, Run>
  /** How task calls with no run here ended (before a restart, or before anyone asked). */
  readonly recovered: Map<string, Runs.Ending>
  /** Task calls forgotten here (expired, their session ended): what they say later is dropped. */
  readonly forgotten: Set<string>
  readonly channels: Map<string, Array<Send>>
}

const now = (state: State): number => state.clock.currentTimeMillisUnsafe()

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

// --- the toolset's session -------------------------------------------------------------------------

/**
 * The `AgentSession` the served toolset runs on. There is no agent: the session is always idle, a
 * reply request is taken up at once and answers nothing, and of the items the toolset inserts only
 * the `_final` results are read (updates come from the toolset's events, as the tool gave them).
 */
const bridge = (state: Omit<State, "toolset">, clock: Clock.Clock) =>
  AgentSession.of({
    chatContext: Effect.succeed(ChatContext.empty),
    items: Effect.succeed(noItems),
    insert: (items) =>
      Effect.sync(() => {
        for (const item of items) remember(state, item, clock.currentTimeMillisUnsafe())
      }),
    awaitInactive: Effect.void,
    generateReply: () => Effect.void
  })

const noItems: ReadonlyArray<ChatItem> = []

/** A `<callId>_final` output: the result of its run, or kept for a task not asked about yet. */
const remember = (state: Omit<State, "toolset">, item: ChatItem, at: number): void => {
  if (item._tag !== "FunctionCallOutput") return
  const callId = Runs.finalOf(item.callId)
  if (callId === undefined) return
  const output = { output: item.output, isError: item.isError }
  const run = state.runs.get(callId)
  if (run !== undefined) {
    run.final = output
    if (Runs.settle(run, at)) tellStatus(state, run)
    return
  }
  if (Runs.taskIdIn(callId) !== undefined && !state.forgotten.has(callId)) state.recovered.set(callId, Runs.endingOf(output, at))
}

const onEvent = (state: State, event: ToolsetEvent): void => {
  switch (event._tag) {
    case "CallUpdated": {
      const run = state.runs.get(event.callId)
      if (run !== undefined && Runs.updated(run, event.message, now(state))) tellStatus(state, run)
      return
    }
    case "CallEnded": {
      const run = state.runs.get(event.callId)
      if (run !== undefined) {
        run.outcome = event.outcome
        if (Runs.settle(run, now(state))) tellStatus(state, run)
      } else if (
        Runs.taskIdIn(event.callId) !== undefined && !state.recovered.has(event.callId) && !state.forgotten.has(event.callId)
      ) {
        // a task call that ended with nothing more to say, before anyone asked about it here
        state.recovered.set(event.callId, Runs.endingOfOutcome(event.name, event.outcome, event.at))
      }
      return
    }
    default:
      return
  }
}

// --- notifications ---------------------------------------------------------------------------------

const attach = (state: State, owner: string, send: Send): Effect.Effect<void, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const list = state.channels.get(owner)
      if (list === undefined) state.channels.set(owner, [send])
      else list.push(send)
    }),
    () =>
      Effect.sync(() => {
        const list = state.channels.get(owner)
        if (list === undefined) return
        const i = list.lastIndexOf(send)
        if (i >= 0) list.splice(i, 1)
        if (list.length === 0) state.channels.delete(owner)
      })
  ).pipe(Effect.asVoid)

/** The session's channel, as it is when a message is sent (a client may reconnect meanwhile). */
const channelOf = (state: State, owner: string): Send => (message) => state.channels.get(owner)?.at(-1)?.(message)

/** `notifications/tasks/status` for a task's new state. */
const tellStatus = (state: Omit<State, "toolset">, run: Run): void => {
  if (run.taskId === undefined || !run.announced) return
  state.channels.get(run.owner)?.at(-1)?.(
    McpWire.notification("notifications/tasks/status", { ...Runs.wireTask(run, state.pollInterval) })
  )
}

// --- requests ----------------------------------------------------------------------------------------

interface Context {
  readonly state: State
  readonly options: Options<unknown, unknown>
  readonly tools: ReadonlyArray<McpWire.Tool>
  readonly byName: ReadonlyMap<string, FunctionTool.Any>
  readonly supportOf: (name: string) => McpWire.TaskSupport
}

/** The answer to a request: its result, or its error; an unexpected failure is logged and answered `-32603`. */
const answer = (
  id: McpWire.RequestId,
  effect: Effect.Effect<Record<string, unknown>, McpWire.RpcError>
): Effect.Effect<McpWire.Response> =>
  effect.pipe(
    Effect.map((result) => McpWire.success(id, result)),
    Effect.catchCause((cause) => {
      if (Cause.hasInterrupts(cause)) return Effect.failCause(cause as Cause.Cause<never>)
      const error = Cause.findErrorOption(cause)
      if (error._tag === "Some") return Effect.succeed(McpWire.failure(id, error.value.error))
      return Effect.as(
        Effect.logError("an MCP request failed unexpectedly", cause),
        McpWire.failure(id, { code: McpWire.ErrorCode.internalError, message: "Internal error" })
      )
    })
  )

const tasksOn = (session: Session): boolean => (session.protocolVersion ?? McpWire.latestProtocolVersion) === "2025-11-25"

const dispatch = (
  context: Context,
  session: Session,
  request: McpWire.Request,
  send: Send
): Effect.Effect<Record<string, unknown>, McpWire.RpcError> => {
  const params = request.params ?? {}
  switch (request.method) {
    case "initialize":
      return Effect.sync(() => initialize(context, session, params))
    case "ping":
      return Effect.succeed({})
    case "tools/list":
      return typeof params.cursor === "string" ? Effect.fail(McpWire.invalidParams("Invalid cursor")) : Effect.succeed({ tools: context.tools })
    case "tools/call":
      return callTool(context, session, params, send)
    case "tasks/get":
    case "tasks/result":
    case "tasks/cancel":
    case "tasks/list":
      if (!tasksOn(session)) return Effect.fail(methodNotFound(request.method))
      return taskMethod(context, session, request.method, params)
    default:
      return Effect.fail(methodNotFound(request.method))
  }
}

const methodNotFound = (method: string) => new McpWire.RpcError({ code: McpWire.ErrorCode.methodNotFound, message: `Method not found: ${method}` })

const initialize = (context: Context, session: Session, params: Record<string, unknown>): Record<string, unknown> => {
  const asked = params.protocolVersion
  const version = typeof asked === "string" && McpWire.supportedProtocolVersions.includes(asked) ? asked : McpWire.latestProtocolVersion
  session.protocolVersion = version
  return {
    protocolVersion: version,
    capabilities: {
      tools: { listChanged: false },
      ...(version === "2025-11-25" ? { tasks: { list: {}, cancel: {}, requests: { tools: { call: {} } } } } : {})
    },
    serverInfo: { name: context.options.name, version: context.options.version },
    ...(context.options.instructions === undefined ? {} : { instructions: context.options.instructions })
  }
}

// --- tools/call ------------------------------------------------------------------------------------

const callTool = (
  context: Context,
  session: Session,
  params: Record<string, unknown>,
  send: Send
): Effect.Effect<Record<string, unknown>, McpWire.RpcError> =>
  Effect.suspend(() => {
    const name = params.name
    if (typeof name !== "string") return Effect.fail(McpWire.invalidParams("tools/call needs the tool's name (params.name)"))
    const tool = context.byName.get(name)
    if (tool === undefined) return Effect.fail(McpWire.invalidParams(`Unknown tool: ${name}`))
    const args = params.arguments ?? {}
    if (!McpWire.isObject(args)) return Effect.fail(McpWire.invalidParams(`The arguments of ${name} must be an object`))
    const meta = McpWire.isObject(params._meta) ? params._meta : undefined
    const token = meta?.progressToken
    const progressToken = typeof token === "string" || (typeof token === "number" && Number.isFinite(token)) ? token : undefined
    const support = context.supportOf(name)
    const text = JSON.stringify(args)
    if (params.task !== undefined && tasksOn(session)) {
      if (support === "forbidden") {
        return Effect.fail(new McpWire.RpcError({ code: McpWire.ErrorCode.methodNotFound, message: `${name} cannot be called as a task` }))
      }
      const task = params.task
      const ttl = McpWire.isObject(task) ? task.ttl : undefined
      if (!McpWire.isObject(task) || (ttl !== undefined && ttl !== null && (typeof ttl !== "number" || !(ttl >= 0)))) {
        return Effect.fail(McpWire.invalidParams("params.task must be an object; its ttl, if any, a number of milliseconds"))
      }
      const decoded = FunctionTool.decodeArguments(tool, text)
      if (decoded._tag === "Failure") return Effect.fail(McpWire.invalidParams(decoded.failure.message))
      return createTask(context, session, tool, text, typeof ttl === "number" ? ttl : undefined, progressToken)
    }
    if (support === "required" && tasksOn(session)) {
      return Effect.fail(new McpWire.RpcError({ code: McpWire.ErrorCode.methodNotFound, message: `${name} must be called as a task (params.task)` }))
    }
    return callPlain(context, session, tool, text, progressToken, send)
  })

/**
 * A task-augmented call: the task is made, the call started in the server's scope, and the task
 * answered at once (`working`).
 */
const createTask = (
  context: Context,
  session: Session,
  tool: FunctionTool.Any,
  text: string,
  ttl: number | undefined,
  progressToken: McpWire.RequestId | undefined
): Effect.Effect<Record<string, unknown>, McpWire.RpcError> =>
  Effect.gen(function*() {
    const { state } = context
    let live = 0
    for (const run of state.runs.values()) if (run.owner === session.owner && run.taskId !== undefined && run.state._tag === "Working") live++
    if (live >= state.maxTasks) {
      return yield* new McpWire.RpcError({
        code: McpWire.ErrorCode.serverError,
        message: `This session has ${live} tasks running, the most it may: wait for one to end, or cancel one`
      })
    }
    const taskId = Runs.randomHex()
    const callId = Runs.callIdOf(state.secret, session.owner, taskId)
    const run = Runs.make({
      callId,
      taskId,
      owner: session.owner,
      name: tool.name,
      now: now(state),
      ttl: Math.min(ttl ?? state.defaultTtl, state.maxTtl),
      progress: progressToken === undefined ? undefined : { token: progressToken, count: 0, send: channelOf(state, session.owner) }
    })
    state.runs.set(callId, run)
    const created = Runs.wireTask(run, state.pollInterval)
    const call = yield* functionCall({ callId, name: tool.name, arguments: text })
    const fiber = yield* state.toolset.execute(call).pipe(
      Effect.flatMap((first) => Effect.sync(() => firstOutput(state, run, first))),
      Effect.forkIn(state.scope, { startImmediately: true })
    )
    if (run.first === undefined) {
      state.starting.add(fiber)
      fiber.addObserver(() => state.starting.delete(fiber))
    }
    // No `model-immediate-response`: the first output's text is written for this package's own
    // agent (it names the internal call id); the client reads the status message with tasks/get.
    run.announced = true
    return { task: created }
  })

const firstOutput = (state: Omit<State, "toolset">, run: Run, first: FunctionCallOutput): void => {
  run.first = first
  if (Runs.settle(run, state.clock.currentTimeMillisUnsafe())) tellStatus(state, run)
}

/**
 * A call without a task: answered with its result, once it has ended. Its updates are progress
 * notifications if the client gave a token. A client that gives up (cancels the request, or
 * closes the connection) cancels the call.
 */
const callPlain = (
  context: Context,
  session: Session,
  tool: FunctionTool.Any,
  text: string,
  progressToken: McpWire.RequestId | undefined,
  send: Send
): Effect.Effect<Record<string, unknown>> => {
  const { state } = context
  const callId = Runs.plainCallId()
  return Effect.gen(function*() {
    const run = Runs.make({
      callId,
      taskId: undefined,
      owner: session.owner,
      name: tool.name,
      now: now(state),
      ttl: null,
      progress: progressToken === undefined ? undefined : { token: progressToken, count: 0, send }
    })
    state.runs.set(callId, run)
    const call = yield* functionCall({ callId, name: tool.name, arguments: text })
    // Interrupted while waiting for its first output, the toolset cancels the call itself.
    firstOutput(state, run, yield* state.toolset.execute(call))
    yield* Deferred.await(run.ended).pipe(
      Effect.onInterrupt(() => Effect.asVoid(state.toolset.cancel(callId)))
    )
    return { ...Runs.resultOfRun(run)! }
  }).pipe(Effect.ensuring(Effect.sync(() => state.runs.delete(callId))))
}

// --- tasks/* ---------------------------------------------------------------------------------------

const notFound = () => McpWire.invalidParams("Failed to retrieve task: Task not found")

const taskMethod = (
  context: Context,
  session: Session,
  method: "tasks/get" | "tasks/result" | "tasks/cancel" | "tasks/list",
  params: Record<string, unknown>
): Effect.Effect<Record<string, unknown>, McpWire.RpcError> => {
  const { state } = context
  if (method === "tasks/list") return listTasks(state, session.owner, params.cursor)
  return Effect.gen(function*() {
    const run = yield* lookup(state, session.owner, params.taskId)
    if (run === undefined) return yield* notFound()
    switch (method) {
      case "tasks/get":
        return { ...Runs.wireTask(run, state.pollInterval) }
      case "tasks/result": {
        // Blocks until the task ends, as the spec asks; a client that gives up just stops waiting.
        yield* Deferred.await(run.ended)
        const result = Runs.resultOfRun(run)!
        return { ...result, _meta: { ...result._meta, [McpWire.MetaKey.relatedTask]: { taskId: run.taskId } } }
      }
      case "tasks/cancel": {
        if (run.state._tag === "Ended") {
          return yield* McpWire.invalidParams(`Cannot cancel task: already in terminal status '${run.state.status}'`)
        }
        Runs.cancel(run, now(state), "The task was cancelled by request.")
        tellStatus(state, run)
        // Returns at once; a tool in an uninterruptible region stops when the region ends.
        const cancelled = yield* state.toolset.cancel(run.callId)
        if (cancelled === "not-cancellable") {
          yield* Effect.logWarning(`task ${run.taskId} was cancelled, but ${run.name} cannot be stopped: it runs to its end, and its result is dropped`)
        }
        return { ...Runs.wireTask(run, state.pollInterval) }
      }
    }
  })
}

/**
 * The owner's run of a task id: a run here, or one found again (after a restart) from the
 * toolset's running calls or the results kept for tasks nobody asked about yet.
 */
const lookup = (state: State, owner: string, taskId: unknown): Effect.Effect<Run | undefined> =>
  Effect.suspend(() => {
    if (!Runs.isTaskId(taskId)) return Effect.succeed(undefined)
    const callId = Runs.callIdOf(state.secret, owner, taskId)
    const run = state.runs.get(callId)
    if (run !== undefined) return Effect.succeed(run)
    return Effect.map(state.toolset.runningTasks, (running) => recover(state, owner, callId, running))
  })

const recover = (
  state: State,
  owner: string,
  callId: string,
  running: ReadonlyArray<AsyncToolset.RunningTask>
): Run | undefined => {
  const taskId = Runs.taskIdIn(callId)
  if (taskId === undefined) return undefined
  const ending = state.recovered.get(callId)
  if (ending !== undefined) {
    const run = Runs.recovered({ callId, taskId, owner, ttl: state.defaultTtl, ending })
    state.recovered.delete(callId)
    state.runs.set(callId, run)
    return run
  }
  const live = running.find((task) => task.callId === callId)
  if (live === undefined) return undefined
  const run = Runs.make({ callId, taskId, owner, name: live.name, now: live.startedAt, ttl: state.defaultTtl })
  run.first = "background"
  run.announced = true
  state.runs.set(callId, run)
  return run
}

const pageSize = 50

const listTasks = (state: State, owner: string, cursor: unknown): Effect.Effect<Record<string, unknown>, McpWire.RpcError> =>
  Effect.gen(function*() {
    let offset = 0
    if (cursor !== undefined) {
      if (typeof cursor !== "string" || !/^[0-9]{1,9}$/.test(cursor)) return yield* McpWire.invalidParams("Invalid cursor")
      offset = Number(cursor)
    }
    // Tasks of this owner that a restart left with no run here yet.
    const running = yield* state.toolset.runningTasks
    for (const callId of [...state.recovered.keys(), ...running.map((task) => task.callId)]) {
      if (!state.runs.has(callId) && Runs.belongsTo(state.secret, callId, owner)) recover(state, owner, callId, running)
    }
    const tasks = [...state.runs.values()]
      .filter((run) => run.owner === owner && run.taskId !== undefined)
      .sort((a, b) => a.createdAt - b.createdAt)
    if (offset > tasks.length) return yield* McpWire.invalidParams("Invalid cursor")
    const page = tasks.slice(offset, offset + pageSize).map((run) => Runs.wireTask(run, state.pollInterval))
    return {
      tasks: page,
      ...(offset + pageSize < tasks.length ? { nextCursor: String(offset + pageSize) } : {})
    }
  })

// --- ending ----------------------------------------------------------------------------------------

/** Forgets ended tasks whose time is up, and endings kept too long for tasks nobody asked about. */
const sweep = (state: State): Effect.Effect<void> =>
  Effect.sync(() => {
    const at = now(state)
    for (const [callId, run] of state.runs) {
      if (run.taskId !== undefined && Runs.expired(run, at)) forget(state, callId)
    }
    for (const [callId, ending] of state.recovered) if (at >= ending.at + state.defaultTtl) state.recovered.delete(callId)
  })

/** A task forgotten: what its call says from now on is dropped (kept for a while, bounded). */
const forget = (state: State, callId: string): void => {
  state.runs.delete(callId)
  state.forgotten.add(callId)
  if (state.forgotten.size > maxForgotten) state.forgotten.delete(state.forgotten.values().next().value!)
}

const maxForgotten = 10_000

const endSession = (state: State, owner: string): Effect.Effect<void> =>
  Effect.suspend(() => {
    const at = now(state)
    const stop: Array<string> = []
    for (const [callId, run] of state.runs) {
      if (run.owner !== owner || run.taskId === undefined) continue
      if (Runs.cancel(run, at, "The session ended.")) stop.push(callId)
      forget(state, callId)
    }
    return Effect.forEach(stop, (callId) => state.toolset.cancel(callId), { discard: true })
  })

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
  const owner = options.owner ?? `lines:${Runs.randomHex()}`
  const session: Session = { owner, protocolVersion: undefined }
  yield* Effect.scoped(Effect.gen(function*() {
    // One writer: messages leave in the order they were made.
    const output = yield* Queue.unbounded<string, Cause.Done>()
    const writer = yield* Stream.fromQueue(output).pipe(
      Stream.runForEach(options.write),
      Effect.forkChild({ startImmediately: true })
    )
    const out = (message: McpWire.Notification | McpWire.Response): void => {
      Queue.offerUnsafe(output, JSON.stringify(message))
    }
    yield* server.attach(owner, out)
    const open = yield* FiberMap.make<string>()
    yield* options.input.pipe(
      Stream.runForEach((line) => {
        if (line.trim() === "") return Effect.void
        const incoming = McpWire.parse(line)
        switch (incoming._tag) {
          case "Invalid":
            return Effect.sync(() => out(McpWire.failure(incoming.id, incoming.error)))
          case "Response":
            return Effect.void // this server sends no requests
          case "Notification": {
            const { method, params } = incoming.message
            const id = params?.requestId
            if (method !== "notifications/cancelled" || (typeof id !== "string" && typeof id !== "number")) return Effect.void
            return Effect.map(FiberMap.get(open, keyOf(id)), (fiber) => {
              if (fiber._tag === "Some") fiber.value.interruptUnsafe()
            })
          }
          case "Request": {
            const request = incoming.message
            return Effect.asVoid(FiberMap.run(
              open,
              keyOf(request.id),
              Effect.flatMap(server.handle(session, request, out), (response) => Effect.sync(() => out(response)))
            ))
          }
        }
      })
    )
    // The client closed its side: what is still open is abandoned; what was answered is written.
    yield* FiberMap.clear(open)
    if (options.owner === undefined) yield* server.endSession(owner)
    yield* Queue.end(output)
    yield* Fiber.join(writer)
  }))
})

const keyOf = (id: McpWire.RequestId): string => `${typeof id}:${id}`

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
