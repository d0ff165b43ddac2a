/**
 * How an `McpToolsetServer` answers one JSON-RPC request: `initialize`, `ping`, `tools/list`,
 * `tools/call` (a plain call, or one that makes a task) and `tasks/*`.
 */
import { Cause, Deferred, Effect } from "effect"
import type * as AsyncToolset from "../../AsyncToolset.ts"
import { functionCall } from "../../ChatContext.ts"
import type { FunctionCallOutput } from "../../ChatContext.ts"
import * as FunctionTool from "../../FunctionTool.ts"
import type { Options, Send, Session } from "../McpToolsetServer.ts"
import * as McpWire from "../McpWire.ts"
import * as Runs from "./runs.ts"
import type { Run } from "./runs.ts"
import { channelOf, now, tellStatus } from "./state.ts"
import type { State } from "./state.ts"

export interface Context {
  readonly state: State
  readonly options: Options<unknown, unknown>
  readonly tools: ReadonlyArray<McpWire.Tool>
  readonly byName: ReadonlyMap<string, FunctionTool.Any>
  readonly supportOf: (name: string) => McpWire.TaskSupport
}

/** The answer to a request: its result, or its error; an unexpected failure is logged and answered `-32603`. */
export const answer = (
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

export const dispatch = (
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
