/**
 * A remote MCP server's tools as `FunctionTool`s, for a toolset (`AsyncToolset.make({ tools })`):
 * one per tool of its `tools/list`, with its name, description and input schema (the model sees
 * the server's schema; the arguments are checked against it before anything is sent).
 *
 * A tool the server runs as a task (`execution.taskSupport` `optional` or `required`, on a server
 * with Tasks) is a background call: it starts the task, its first update is said at once, each
 * new status message of the task is an update, and the task's result is the call's result (a
 * `failed` or `cancelled` task an error). Cancelling the call (`cancel_task_<id>`) sends
 * `tasks/cancel`. Any other tool is a call that returns the server's result. A lost connection, or
 * a server that stops answering, is an error the model is told in plain words.
 *
 * @since 0.1.0
 */
import { Duration, Effect, JsonSchema, Queue, Result, Schema, SchemaAST, SchemaRepresentation } from "effect"
import * as AsyncRunContext from "../AsyncRunContext.ts"
import * as FunctionTool from "../FunctionTool.ts"
import { ToolError } from "../ToolError.ts"
import type { Connection, McpConnectionError } from "./McpConnection.ts"
import * as McpWire from "./McpWire.ts"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Put before each tool's name (e.g. `"weather_"`), to keep the names of several servers apart. */
  readonly prefix?: string | undefined
  /** Only these tools (by the server's names). */
  readonly only?: ReadonlyArray<string> | undefined
  /** The `ttl` asked for each task (default: the server's). */
  readonly taskTtl?: Duration.Input | undefined
  /** How often a task's status is read at least (default: the interval the server suggests, else 1 second). */
  readonly pollInterval?: Duration.Input | undefined
  /** Whether tools that support tasks are called as tasks (default true). */
  readonly useTasks?: boolean | undefined
}

/**
 * A remote tool: its handler needs only what a toolset gives every call.
 *
 * @since 0.1.0
 * @category models
 */
export type RemoteTool = FunctionTool.FunctionTool<string, any, string, never, AsyncRunContext.AsyncRunContext>

/**
 * The server's tools, read once (all pages of `tools/list`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (connection: Connection, options: Options = {}): Effect.Effect<ReadonlyArray<RemoteTool>, McpConnectionError> =>
  Effect.gen(function*() {
    const listed: Array<McpWire.Tool> = []
    let cursor: string | undefined
    for (let page = 0; page < 100; page++) {
      const result = yield* connection.request("tools/list", cursor === undefined ? {} : { cursor })
      const tools = Array.isArray(result.tools) ? result.tools : []
      for (const tool of tools) {
        const read = McpWire.readTool(tool)
        if (read !== undefined) listed.push(read)
      }
      cursor = typeof result.nextCursor === "string" && result.nextCursor !== "" ? result.nextCursor : undefined
      if (cursor === undefined) break
    }
    const out: Array<RemoteTool> = []
    const names = new Set<string>()
    for (const tool of listed) {
      if (options.only !== undefined && !options.only.includes(tool.name)) continue
      const name = `${options.prefix ?? ""}${tool.name}`.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 64)
      if (name === "" || names.has(name)) {
        yield* Effect.logWarning(
          `MCP tool ${JSON.stringify(tool.name)} of ${connection.serverInfo.name} is left out: ${name === "" ? "it has no name" : `its name as a tool, ${name}, is taken by another of its tools`}`
        )
        continue
      }
      const support = tool.execution?.taskSupport ?? "forbidden"
      const asTask = connection.tasks && (options.useTasks ?? true) && support !== "forbidden"
      if (support === "required" && !asTask) {
        yield* Effect.logWarning(`MCP tool ${tool.name} of ${connection.serverInfo.name} must be called as a task, which is off here: left out`)
        continue
      }
      names.add(name)
      out.push(remoteTool(connection, tool, name, asTask, options))
    }
    return out
  })

const remoteTool = (connection: Connection, tool: McpWire.Tool, name: string, asTask: boolean, options: Options): RemoteTool => {
  const server = connection.serverInfo.name
  const lost = (error: McpConnectionError) =>
    new ToolError({
      message: error.reason === "Rpc"
        ? `${server} refused ${tool.name}: ${error.message}`
        : `${tool.name} on ${server} failed: ${error.message}. Whether it did anything is not known; check before trying again.`
    })
  const handler = (args: unknown) =>
    (asTask ? runTask(connection, tool, args, options) : runPlain(connection, tool, args)).pipe(
      Effect.catchTag("McpConnectionError", (error) => Effect.fail(lost(error)))
    )
  const description = tool.description ?? tool.title ?? tool.name
  const parameters = parametersOf(tool.inputSchema)
  if (parameters !== undefined) {
    try {
      return FunctionTool.make(name as "remote", { description, parameters }, handler as never) as unknown as RemoteTool
    } catch {
      // falls through: the schema as the server wrote it
    }
  }
  // A schema that is not a plain object of properties: the model sees it as the server wrote it, the
  // arguments are checked only to be an object (the server checks them again), and the tool takes no
  // confirmation flag (duplicates allowed: the flag would need the properties).
  const base = FunctionTool.make(name as "remote", { description, onDuplicateCall: "allow" }, handler as never)
  const decode = Schema.decodeUnknownResult(Schema.Record(Schema.String, Schema.Unknown))
  return {
    ...base,
    jsonSchema: tool.inputSchema as JsonSchema.JsonSchema,
    strict: false,
    decodeArgs: (input: unknown) => Result.map(decode(input), () => input),
    canonicalArgs: (args: unknown) => JSON.stringify(args)
  } as unknown as RemoteTool
}

/**
 * A tool's input schema (JSON Schema 2020-12) as the parameters of a function tool, when Effect
 * reads it as an object of properties (patterns are not applied): the arguments are checked
 * against it before anything is sent.
 */
const parametersOf = (inputSchema: Record<string, unknown>): FunctionTool.Parameters | undefined => {
  try {
    const schema = SchemaRepresentation.fromJsonSchemaDocument(JsonSchema.fromSchemaDraft2020_12(inputSchema as never), { patterns: "ignore" })
    const ast = schema.ast
    if (!SchemaAST.isObjects(ast) || ast.indexSignatures.length > 0) return undefined
    const fields: Record<string, Schema.Top> = {}
    for (const property of ast.propertySignatures) {
      if (typeof property.name !== "string") return undefined
      fields[property.name] = Schema.make(property.type)
    }
    return Schema.Struct(fields) as unknown as FunctionTool.Parameters
  } catch {
    return undefined
  }
}

const textOf = (result: Record<string, unknown>): McpWire.CallToolResult =>
  McpWire.readCallToolResult(result) ?? { content: [{ type: "text", text: JSON.stringify(result) }] }

const outcome = (tool: McpWire.Tool, result: McpWire.CallToolResult) => {
  const text = McpWire.resultText(result)
  return result.isError === true ? Effect.fail(new ToolError({ message: text === "" ? `${tool.name} failed` : text })) : Effect.succeed(text)
}

const runPlain = (connection: Connection, tool: McpWire.Tool, args: unknown) =>
  connection.request("tools/call", { name: tool.name, arguments: args }).pipe(
    Effect.flatMap((result) => outcome(tool, textOf(result)))
  )

const runTask = (connection: Connection, tool: McpWire.Tool, args: unknown, options: Options) =>
  Effect.gen(function*() {
    const ttl = options.taskTtl === undefined ? {} : { ttl: Duration.toMillis(Duration.fromInputUnsafe(options.taskTtl)) }
    const created = yield* connection.request("tools/call", { name: tool.name, arguments: args, task: ttl })
    const task = McpWire.readTask(created.task)
    // A server may answer a task-augmented call plainly: that is the result.
    if (task === undefined) return yield* outcome(tool, textOf(created))
    const taskId = task.taskId
    return yield* Effect.gen(function*() {
      // Status notifications wake the poll early; polling alone is enough.
      const wake = yield* Queue.sliding<void>(1)
      yield* connection.onTaskStatus((t) => {
        if (t.taskId === taskId) Queue.offerUnsafe(wake, undefined)
      })
      const immediate = McpWire.isObject(created._meta) ? created._meta[McpWire.MetaKey.modelImmediateResponse] : undefined
      yield* AsyncRunContext.update(task.statusMessage ?? (typeof immediate === "string" ? immediate : `${tool.name} has started on ${connection.serverInfo.name}.`))
      let said = task.statusMessage
      let current = task
      while (!McpWire.isTerminal(current.status)) {
        const every = Duration.toMillis(Duration.fromInputUnsafe(options.pollInterval ?? current.pollInterval ?? 1000))
        yield* Effect.raceFirst(Effect.sleep(Math.min(Math.max(every, 50), 60_000)), Queue.take(wake))
        const read = McpWire.readTask(yield* connection.request("tasks/get", { taskId }))
        if (read === undefined) return yield* new ToolError({ message: `${connection.serverInfo.name} answered tasks/get with something that is not a task` })
        current = read
        if (current.statusMessage !== undefined && current.statusMessage !== said && !McpWire.isTerminal(current.status)) {
          said = current.statusMessage
          yield* AsyncRunContext.update(current.statusMessage)
        }
      }
      if (current.status === "cancelled") {
        return yield* new ToolError({ message: `${tool.name} was cancelled by ${connection.serverInfo.name}${current.statusMessage ? `: ${current.statusMessage}` : ""}` })
      }
      const result = textOf(yield* connection.request("tasks/result", { taskId }))
      return yield* outcome(tool, current.status === "failed" ? { ...result, isError: true } : result)
    }).pipe(
      Effect.scoped,
      // Our side stopped the call (cancel_task, the toolset's timeout or close): the server's task is cancelled too.
      Effect.onInterrupt(() => connection.request("tasks/cancel", { taskId }, { timeout: "5 seconds" }).pipe(Effect.ignore))
    )
  })
