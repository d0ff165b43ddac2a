/**
 * What travels between an MCP client and server, as this package reads and writes it: JSON-RPC 2.0
 * messages, the protocol revisions it speaks, the error codes, and the tool and task shapes of the
 * 2025-11-25 revision (Tasks, SEP-1686). Both sides use it: `McpToolsetServer` and `McpConnection`.
 *
 * Messages are checked only as far as routing needs (an envelope, a method, an id); each method
 * checks its own params where it reads them, and answers a bad one with `-32602`.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * The revision this package speaks first: the one with Tasks.
 *
 * @since 0.1.0
 * @category constants
 */
export const latestProtocolVersion = "2025-11-25"

/**
 * Every revision a server of this package accepts, newest first. Tasks exist only in 2025-11-25:
 * a session of an older revision gets plain tool calls.
 *
 * @since 0.1.0
 * @category constants
 */
export const supportedProtocolVersions: ReadonlyArray<string> = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"]

/**
 * JSON-RPC and MCP error codes.
 *
 * @since 0.1.0
 * @category constants
 */
export const ErrorCode = {
  parseError: -32700,
  invalidRequest: -32600,
  methodNotFound: -32601,
  invalidParams: -32602,
  internalError: -32603,
  /** A server-defined error: this package's limits (too many tasks). */
  serverError: -32000
} as const

/**
 * `_meta` keys of the Tasks revision.
 *
 * @since 0.1.0
 * @category constants
 */
export const MetaKey = {
  /** On everything that belongs to a task; on `tasks/result` answers a MUST. */
  relatedTask: "io.modelcontextprotocol/related-task",
  /** On a `CreateTaskResult`: a text for the model while the task runs. */
  modelImmediateResponse: "io.modelcontextprotocol/model-immediate-response"
} as const

// --- JSON-RPC ------------------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category models
 */
export type RequestId = string | number

/**
 * @since 0.1.0
 * @category models
 */
export interface Request {
  readonly jsonrpc: "2.0"
  readonly id: RequestId
  readonly method: string
  readonly params?: Record<string, unknown> | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Notification {
  readonly jsonrpc: "2.0"
  readonly method: string
  readonly params?: Record<string, unknown> | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface ErrorObject {
  readonly code: number
  readonly message: string
  readonly data?: unknown
}

/**
 * @since 0.1.0
 * @category models
 */
export type Response =
  | { readonly jsonrpc: "2.0"; readonly id: RequestId; readonly result: Record<string, unknown> }
  | { readonly jsonrpc: "2.0"; readonly id: RequestId | null; readonly error: ErrorObject }

/**
 * A message as it arrived, sorted by what it is.
 *
 * @since 0.1.0
 * @category models
 */
export type Incoming =
  | { readonly _tag: "Request"; readonly message: Request }
  | { readonly _tag: "Notification"; readonly message: Notification }
  | { readonly _tag: "Response"; readonly message: Response }
  /** Not JSON, or not a JSON-RPC message: answered with `error` (its id, when it had one). */
  | { readonly _tag: "Invalid"; readonly id: RequestId | null; readonly error: ErrorObject }

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

const isId = (u: unknown): u is RequestId => typeof u === "string" || (typeof u === "number" && Number.isFinite(u))

/**
 * Reads one message from its JSON text.
 *
 * @since 0.1.0
 * @category decoding
 */
export const parse = (text: string): Incoming => {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (e) {
    return { _tag: "Invalid", id: null, error: { code: ErrorCode.parseError, message: `Parse error: ${e instanceof Error ? e.message : String(e)}` } }
  }
  return classify(value)
}

/**
 * Sorts a parsed JSON value: request, notification, response, or invalid.
 *
 * @since 0.1.0
 * @category decoding
 */
export const classify = (value: unknown): Incoming => {
  if (Array.isArray(value)) {
    return { _tag: "Invalid", id: null, error: { code: ErrorCode.invalidRequest, message: "Invalid request: JSON-RPC batches are not supported; send one message at a time" } }
  }
  if (!isRecord(value) || value.jsonrpc !== "2.0") {
    return { _tag: "Invalid", id: null, error: { code: ErrorCode.invalidRequest, message: "Invalid request: not a JSON-RPC 2.0 message" } }
  }
  const id = value.id
  if (typeof value.method === "string") {
    if (value.params !== undefined && !isRecord(value.params)) {
      return {
        _tag: "Invalid",
        id: isId(id) ? id : null,
        error: { code: ErrorCode.invalidRequest, message: "Invalid request: params must be an object" }
      }
    }
    const params = value.params as Record<string, unknown> | undefined
    if (id === undefined) return { _tag: "Notification", message: { jsonrpc: "2.0", method: value.method, params } }
    if (!isId(id)) return { _tag: "Invalid", id: null, error: { code: ErrorCode.invalidRequest, message: "Invalid request: id must be a string or a number" } }
    return { _tag: "Request", message: { jsonrpc: "2.0", id, method: value.method, params } }
  }
  if ("result" in value && isId(id) && isRecord(value.result)) {
    return { _tag: "Response", message: { jsonrpc: "2.0", id, result: value.result } }
  }
  if ("error" in value && isRecord(value.error) && typeof value.error.code === "number") {
    const error = value.error
    return {
      _tag: "Response",
      message: {
        jsonrpc: "2.0",
        id: isId(id) ? id : null,
        error: { code: error.code as number, message: typeof error.message === "string" ? error.message : "", data: error.data }
      }
    }
  }
  return { _tag: "Invalid", id: isId(id) ? id : null, error: { code: ErrorCode.invalidRequest, message: "Invalid request: neither a request, a notification nor a response" } }
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const success = (id: RequestId, result: Record<string, unknown>): Response => ({ jsonrpc: "2.0", id, result })

/**
 * @since 0.1.0
 * @category constructors
 */
export const failure = (id: RequestId | null, error: ErrorObject): Response => ({ jsonrpc: "2.0", id, error })

/**
 * @since 0.1.0
 * @category constructors
 */
export const notification = (method: string, params: Record<string, unknown>): Notification => ({ jsonrpc: "2.0", method, params })

/**
 * A JSON-RPC error answer, as a failure of an Effect: what a method handler fails with to answer
 * with an error, and what a client request fails with when the server answered one.
 *
 * @since 0.1.0
 * @category errors
 */
export class RpcError extends Schema.TaggedError<RpcError>()("McpRpcError", {
  code: Schema.Number,
  message: Schema.String,
  data: Schema.optionalKey(Schema.Unknown)
}) {
  /** The error object of the answer. */
  get error(): ErrorObject {
    return this.data === undefined ? { code: this.code, message: this.message } : { code: this.code, message: this.message, data: this.data }
  }
}

/**
 * `-32602`: the params do not fit.
 *
 * @since 0.1.0
 * @category errors
 */
export const invalidParams = (message: string): RpcError => new RpcError({ code: ErrorCode.invalidParams, message })

// --- tools and tasks (2025-11-25) -----------------------------------------------------------------

/**
 * Whether a tool may, must or must not be called as a task.
 *
 * @since 0.1.0
 * @category models
 */
export type TaskSupport = "forbidden" | "optional" | "required"

/**
 * A tool as `tools/list` describes it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Tool {
  readonly name: string
  readonly title?: string | undefined
  readonly description?: string | undefined
  readonly inputSchema: Record<string, unknown>
  readonly outputSchema?: Record<string, unknown> | undefined
  readonly execution?: { readonly taskSupport?: TaskSupport | undefined } | undefined
  readonly annotations?: Record<string, unknown> | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export type TaskStatus = "working" | "input_required" | "completed" | "failed" | "cancelled"

/**
 * Whether a status is final: `completed`, `failed`, `cancelled`.
 *
 * @since 0.1.0
 * @category guards
 */
export const isTerminal = (status: TaskStatus): boolean => status === "completed" || status === "failed" || status === "cancelled"

/**
 * A task as the wire carries it (`tasks/get`, `tasks/list`, `notifications/tasks/status`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Task {
  readonly taskId: string
  readonly status: TaskStatus
  readonly statusMessage?: string | undefined
  /** ISO 8601. */
  readonly createdAt: string
  /** ISO 8601. */
  readonly lastUpdatedAt: string
  /** Milliseconds from creation the receiver keeps the task; `null`: unlimited. */
  readonly ttl: number | null
  readonly pollInterval?: number | undefined
}

/**
 * One block of a tool result: this package writes text; a client reads the kinds it knows.
 *
 * @since 0.1.0
 * @category models
 */
export interface ContentBlock {
  readonly type: string
  readonly text?: string | undefined
  readonly [key: string]: unknown
}

/**
 * The result of `tools/call` (and of `tasks/result` for a tool call).
 *
 * @since 0.1.0
 * @category models
 */
export interface CallToolResult {
  readonly content: ReadonlyArray<ContentBlock>
  readonly structuredContent?: Record<string, unknown> | undefined
  readonly isError?: boolean | undefined
  readonly _meta?: Record<string, unknown> | undefined
}

const taskStatuses = new Set<unknown>(["working", "input_required", "completed", "failed", "cancelled"])

/**
 * Reads a task from a wire value, or `undefined` if it is not one.
 *
 * @since 0.1.0
 * @category decoding
 */
export const readTask = (u: unknown): Task | undefined => {
  if (!isRecord(u) || typeof u.taskId !== "string" || !taskStatuses.has(u.status)) return undefined
  return {
    taskId: u.taskId,
    status: u.status as TaskStatus,
    statusMessage: typeof u.statusMessage === "string" ? u.statusMessage : undefined,
    createdAt: typeof u.createdAt === "string" ? u.createdAt : "",
    lastUpdatedAt: typeof u.lastUpdatedAt === "string" ? u.lastUpdatedAt : "",
    ttl: typeof u.ttl === "number" ? u.ttl : null,
    pollInterval: typeof u.pollInterval === "number" ? u.pollInterval : undefined
  }
}

/**
 * Reads a tool result from a wire value, or `undefined` if it is not one.
 *
 * @since 0.1.0
 * @category decoding
 */
export const readCallToolResult = (u: unknown): CallToolResult | undefined => {
  if (!isRecord(u) || !Array.isArray(u.content)) return undefined
  const content = u.content.filter((block): block is ContentBlock => isRecord(block) && typeof block.type === "string")
  return {
    content,
    structuredContent: isRecord(u.structuredContent) ? u.structuredContent : undefined,
    isError: u.isError === true,
    _meta: isRecord(u._meta) ? u._meta : undefined
  }
}

/**
 * Reads a tool description from a wire value, or `undefined` if it is not one.
 *
 * @since 0.1.0
 * @category decoding
 */
export const readTool = (u: unknown): Tool | undefined => {
  if (!isRecord(u) || typeof u.name !== "string" || !isRecord(u.inputSchema)) return undefined
  const execution = isRecord(u.execution) ? u.execution : undefined
  const taskSupport = execution?.taskSupport
  return {
    name: u.name,
    title: typeof u.title === "string" ? u.title : undefined,
    description: typeof u.description === "string" ? u.description : undefined,
    inputSchema: u.inputSchema,
    outputSchema: isRecord(u.outputSchema) ? u.outputSchema : undefined,
    execution: taskSupport === "forbidden" || taskSupport === "optional" || taskSupport === "required" ? { taskSupport } : undefined,
    annotations: isRecord(u.annotations) ? u.annotations : undefined
  }
}

/**
 * The text of a tool result: its text blocks joined, other blocks named by their type.
 *
 * @since 0.1.0
 * @category converting
 */
export const resultText = (result: CallToolResult): string => {
  const parts = result.content.map((block) =>
    block.type === "text" && typeof block.text === "string" ? block.text : `[${block.type} content]`
  )
  if (parts.length === 0 && result.structuredContent !== undefined) return JSON.stringify(result.structuredContent)
  return parts.join("\n")
}

/** @internal */
export const isObject = isRecord
