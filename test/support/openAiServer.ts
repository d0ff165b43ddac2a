/**
 * A stand-in for an OpenAI-compatible server, on 127.0.0.1 (port 0) for the length of a test's
 * scope. It checks every request the way OpenAI's Chat Completions endpoint does, answering a
 * request that breaks a rule with OpenAI's 400 and message, and answers the others from a script:
 * JSON, server-sent events, raw text, or nothing at all. Malformed answers are scripted on purpose.
 *
 * The rules it enforces: OpenAI's published request schema (test/support/chatCompletionsSchema.ts);
 * a bearer key; a model and non-empty messages of known roles; each tool
 * message directly after the assistant `tool_calls` it answers (or another tool message of the same
 * run), every call id answered before the next message; `tool_choice` only with tools, naming one
 * of them; function names matching `^[a-zA-Z0-9_-]{1,64}$`, unique; strict schemas (tools and a
 * `json_schema` response format) following the Structured Outputs rules; `stream_options` only with
 * `stream`.
 */
import { readFileSync } from "node:fs"
import { createServer } from "node:http"
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { Effect } from "effect"
import type { Scope } from "effect"
import { problems } from "./chatCompletionsSchema.ts"

// --- the script -------------------------------------------------------------------------------

/** One answer. */
export type Reply =
  | {
    readonly _tag: "Json"
    readonly status?: number
    readonly headers?: Readonly<Record<string, string>>
    readonly body: unknown
  }
  | {
    readonly _tag: "Text"
    readonly status?: number
    readonly headers?: Readonly<Record<string, string>>
    readonly text: string
  }
  | {
    readonly _tag: "Sse"
    /** Each is sent as `data: <JSON>`; a string is sent as it is (so it may be broken JSON). */
    readonly events: ReadonlyArray<unknown>
    /** Send `data: [DONE]` at the end (default true). */
    readonly done?: boolean
    /**
     * `end` (default) closes the response; `cut` destroys the connection mid-response; `hang`
     * keeps it open and sends nothing more.
     */
    readonly end?: "end" | "cut" | "hang"
  }
  | { readonly _tag: "Hang" }
  | {
    readonly _tag: "Recorded"
    /** A file of test/fixtures/openai-compat (its README says how each kind is replayed). */
    readonly file: string
    /** Send the body with CRLF line endings, as `sse-starlette`-based servers frame events. */
    readonly crlf?: boolean
  }

/** A request the server accepted (it passed every check). */
export interface Received {
  readonly index: number
  readonly body: ChatRequest
  readonly headers: IncomingHttpHeaders
}

/** The body of a Chat Completions request, as far as the tests read it. */
export interface ChatRequest {
  readonly model: string
  readonly messages: ReadonlyArray<WireMessage>
  readonly tools?: ReadonlyArray<{
    readonly type: "function"
    readonly function: {
      readonly name: string
      readonly description?: string
      readonly parameters?: JsonObject
      readonly strict?: boolean
    }
  }>
  readonly tool_choice?: unknown
  readonly stream?: boolean
  readonly stream_options?: { readonly include_usage?: boolean }
  readonly response_format?: unknown
  readonly [key: string]: unknown
}

export interface WireMessage {
  readonly role: string
  readonly content?: unknown
  readonly tool_calls?: ReadonlyArray<{
    readonly id: string
    readonly type: string
    readonly function: { readonly name: string; readonly arguments: string }
  }>
  readonly tool_call_id?: string
}

type JsonObject = { readonly [key: string]: unknown }

export type Script = ReadonlyArray<Reply> | ((request: Received) => Reply)

export interface FakeServer {
  /** `http://127.0.0.1:<port>/v1` */
  readonly baseUrl: string
  /** The key it accepts. */
  readonly apiKey: string
  /** Accepted requests, in order (a live view). */
  readonly requests: ReadonlyArray<Received>
  /** Requests it refused with a 4xx of its own, with OpenAI's message. */
  readonly rejected: ReadonlyArray<string>
}

/**
 * Starts the server for the current scope (closed with it). `script` answers accepted requests:
 * a list is used in order (its last entry repeats), a function decides per request.
 */
export const make = (
  script: Script,
  options: { readonly apiKey?: string } = {}
): Effect.Effect<FakeServer, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(start(script, options.apiKey ?? "sk-test-0123456789abcdef"), (running) =>
      Effect.promise(running.close)),
    (running) => running.server
  )

const start = (script: Script, apiKey: string) =>
  Effect.callback<{ readonly server: FakeServer; readonly close: () => Promise<void> }>((resume) => {
    const requests: Array<Received> = []
    const rejected: Array<string> = []
    const http = createServer((req, res) => {
      readBody(req).then((text) => {
        const refusal = check(req, text, apiKey)
        if (refusal !== undefined) {
          rejected.push(refusal.message)
          return sendJson(res, refusal.status, refusal.body)
        }
        const received: Received = { index: requests.length, body: JSON.parse(text) as ChatRequest, headers: req.headers }
        requests.push(received)
        const reply = typeof script === "function" ? script(received) : script[Math.min(received.index, script.length - 1)]
        if (reply === undefined) return sendJson(res, 500, { error: { message: "the test script has no reply" } })
        send(res, reply)
      }, () => res.destroy())
    })
    http.listen(0, "127.0.0.1", () => {
      const { port } = http.address() as AddressInfo
      resume(Effect.succeed({
        server: { baseUrl: `http://127.0.0.1:${port}/v1`, apiKey, requests, rejected },
        close: () =>
          new Promise<void>((done) => {
            http.closeAllConnections() // a hanging request would keep `close` waiting
            http.close(() => done())
          })
      }))
    })
  })

const readBody = (req: IncomingMessage): Promise<string> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    req.on("data", (chunk: Buffer) => chunks.push(chunk))
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")))
    req.on("error", reject)
  })

const sendJson = (res: ServerResponse, status: number, body: unknown, headers: Readonly<Record<string, string>> = {}) => {
  res.writeHead(status, { "content-type": "application/json", ...headers })
  res.end(JSON.stringify(body))
}

const send = (res: ServerResponse, reply: Reply) => {
  switch (reply._tag) {
    case "Json":
      return sendJson(res, reply.status ?? 200, reply.body, reply.headers)
    case "Text":
      res.writeHead(reply.status ?? 200, { "content-type": "application/json", ...reply.headers })
      return res.end(reply.text)
    case "Sse": {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" })
      for (const event of reply.events) {
        res.write(`data: ${typeof event === "string" ? event : JSON.stringify(event)}\n\n`)
      }
      if (reply.end === "hang") return
      if (reply.end === "cut") {
        // Let the written events go out, then drop the connection without ending the response.
        return setTimeout(() => res.destroy(), 20)
      }
      if (reply.done !== false) res.write("data: [DONE]\n\n")
      return res.end()
    }
    case "Hang":
      return // never answered; the connection closes with the server
    case "Recorded": {
      const { body, contentType } = recorded(reply.file)
      res.writeHead(200, { "content-type": contentType })
      return res.end(reply.crlf === true ? Buffer.from(body.toString("utf8").replace(/\r?\n/g, "\r\n")) : body)
    }
  }
}

const fixtures = new URL("../fixtures/openai-compat/", import.meta.url)

/** A recorded answer's body, as the server sent it. */
export const recorded = (file: string): { readonly body: Buffer; readonly contentType: string } => {
  const bytes = readFileSync(new URL(file, fixtures))
  if (file.endsWith(".json")) return { body: bytes, contentType: "application/json" }
  if (file.endsWith(".sse")) return { body: bytes, contentType: "text/event-stream" }
  // one `data:` payload a line, each kept byte for byte; the recorder dropped the framing
  const lines = bytes.toString("utf8").split("\n").filter((line) => line.trim() !== "")
  const events = lines.map((line) => `data: ${line}\n\n`).join("")
  return { body: Buffer.from(`${events}data: [DONE]\n\n`), contentType: "text/event-stream" }
}

// --- OpenAI's checks --------------------------------------------------------------------------

interface Refusal {
  readonly status: number
  readonly message: string
  /** The answer's body: OpenAI's `{ error }`, or another shape. */
  readonly body: unknown
}

/** A path the server does not serve: a bare 404, as a router in front of many servers answers it. */
const notFound = { status: 404, message: "not found", body: {} } as const

const refuse = (message: string, param: string | null = null, code: string | null = null, status = 400): Refusal => ({
  status,
  message,
  body: { error: { message, type: "invalid_request_error", param, code } }
})

const isRecord = (u: unknown): u is JsonObject => typeof u === "object" && u !== null && !Array.isArray(u)

const check = (req: IncomingMessage, text: string, apiKey: string): Refusal | undefined => {
  if (req.method !== "POST" || req.url !== "/v1/chat/completions") return notFound
  const auth = req.headers.authorization
  if (auth !== `Bearer ${apiKey}`) {
    // OpenAI masks most of a wrong key; this server echoes it whole, to test that it never leaks.
    const given = auth?.replace(/^Bearer /, "") ?? ""
    return given === ""
      ? refuse("You didn't provide an API key.", null, null, 401)
      : refuse(`Incorrect API key provided: ${given}.`, null, "invalid_api_key", 401)
  }
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch {
    return refuse("We could not parse the JSON body of your request.")
  }
  if (!isRecord(body)) return refuse("We could not parse the JSON body of your request.")
  const refusal = checkBody(body)
  if (refusal !== undefined) return refusal
  // What OpenAI's published schema says a request must be (types, required fields, enums, sizes).
  const broken = problems(body)
  return broken.length === 0 ? undefined : refuse(`The request does not follow OpenAI's schema: ${broken.join("; ")}`)
}

const checkBody = (body: JsonObject): Refusal | undefined => {
  if (typeof body.model !== "string" || body.model === "") return refuse("you must provide a model parameter", "model")
  if (!Array.isArray(body.messages) || body.messages.length === 0) {
    return refuse("Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages")
  }
  const toolNames = new Set<string>()
  if (body.tools !== undefined) {
    if (!Array.isArray(body.tools) || body.tools.length === 0) {
      return refuse("Invalid 'tools': empty array. Expected an array with minimum length 1.", "tools")
    }
    for (const [i, tool] of body.tools.entries()) {
      const refusal = checkTool(tool, i, toolNames)
      if (refusal !== undefined) return refusal
    }
  }
  if (body.tool_choice !== undefined) {
    if (body.tools === undefined) {
      return refuse("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.", "tool_choice")
    }
    const choice = body.tool_choice
    if (isRecord(choice)) {
      const name = isRecord(choice.function) ? choice.function.name : undefined
      if (choice.type !== "function" || typeof name !== "string" || !toolNames.has(name)) {
        return refuse(`Invalid value for 'tool_choice': no function named '${String(name)}' was specified in the 'tools' parameter.`, "tool_choice")
      }
    } else if (choice !== "auto" && choice !== "none" && choice !== "required") {
      return refuse(`Invalid value: '${String(choice)}'. Supported values are: 'none', 'auto', and 'required'.`, "tool_choice")
    }
  }
  if (body.stream_options !== undefined && body.stream !== true) {
    return refuse("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
  }
  if (isRecord(body.response_format) && body.response_format.type === "json_schema") {
    const format = body.response_format.json_schema
    if (!isRecord(format) || typeof format.name !== "string" || !/^[a-zA-Z0-9_-]{1,64}$/.test(format.name)) {
      return refuse("Invalid 'response_format.json_schema.name'.", "response_format.json_schema.name")
    }
    if (format.strict === true) {
      const problem = strictProblem(format.schema, [])
      if (problem !== undefined) {
        return refuse(`Invalid schema for response_format '${format.name}': ${problem}`, "response_format", "invalid_json_schema")
      }
    }
  }
  return checkMessages(body.messages)
}

const checkTool = (tool: unknown, i: number, names: Set<string>): Refusal | undefined => {
  if (!isRecord(tool) || tool.type !== "function" || !isRecord(tool.function)) {
    return refuse(`Missing required parameter: 'tools[${i}].function'.`, `tools[${i}].function`)
  }
  const { name, parameters, strict } = tool.function
  if (typeof name !== "string" || !/^[a-zA-Z0-9_-]{1,64}$/.test(name)) {
    return refuse(
      `Invalid 'tools[${i}].function.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.`,
      `tools[${i}].function.name`,
      "invalid_value"
    )
  }
  if (names.has(name)) return refuse(`Duplicate function name: '${name}'.`, `tools[${i}].function.name`)
  names.add(name)
  if (strict === true) {
    const problem = strictProblem(parameters, [])
    if (problem !== undefined) {
      return refuse(`Invalid schema for function '${name}': ${problem}`, `tools[${i}].function.parameters`, "invalid_function_parameters")
    }
  }
  return undefined
}

// Keywords Structured Outputs reject (as OpenAI's documentation lists them).
const unsupported = [
  "minLength",
  "maxLength",
  "patternProperties",
  "unevaluatedProperties",
  "propertyNames",
  "minProperties",
  "maxProperties",
  "unevaluatedItems",
  "contains",
  "minContains",
  "maxContains",
  "uniqueItems",
  "allOf",
  "not",
  "if",
  "then",
  "else",
  "dependentRequired",
  "dependentSchemas",
  "prefixItems"
]

const strictProblem = (schema: unknown, context: ReadonlyArray<string>): string | undefined => {
  const at = `In context=(${context.map((c) => `'${c}'`).join(", ")})`
  if (!isRecord(schema)) return `${at}, schema must be a JSON Schema of 'type: "object"', got 'type: "None"'.`
  if (context.length === 0 && (schema.type !== "object" || schema.anyOf !== undefined)) {
    return `${at}, schema must be a JSON Schema of 'type: "object"', got 'type: "${String(schema.type)}"'.`
  }
  for (const keyword of unsupported) {
    if (keyword in schema) return `${at}, '${keyword}' is not permitted.`
  }
  const isObject = schema.type === "object" || (Array.isArray(schema.type) && schema.type.includes("object"))
  if (isObject) {
    if (schema.additionalProperties !== false) {
      return `${at}, 'additionalProperties' is required to be supplied and to be false.`
    }
    const properties = isRecord(schema.properties) ? schema.properties : {}
    const required = Array.isArray(schema.required) ? schema.required : undefined
    const missing = Object.keys(properties).filter((key) => !required?.includes(key))
    if (required === undefined || missing.length > 0) {
      return `${at}, 'required' is required to be supplied and to be an array including every key in properties. Missing '${missing[0] ?? ""}'.`
    }
    for (const [key, child] of Object.entries(properties)) {
      const problem = strictProblem(child, [...context, "properties", key])
      if (problem !== undefined) return problem
    }
  }
  if (schema.items !== undefined) {
    const problem = strictProblem(schema.items, [...context, "items"])
    if (problem !== undefined) return problem
  }
  for (const [key, list] of [["anyOf", schema.anyOf]] as const) {
    if (!Array.isArray(list)) continue
    for (const [i, member] of list.entries()) {
      const problem = strictProblem(member, [...context, key, String(i)])
      if (problem !== undefined) return problem
    }
  }
  if (isRecord(schema.$defs)) {
    for (const [key, child] of Object.entries(schema.$defs)) {
      const problem = strictProblem(child, [...context, "$defs", key])
      if (problem !== undefined) return problem
    }
  }
  return undefined
}

const roles = ["system", "developer", "user", "assistant", "tool", "function"]

const checkMessages = (messages: ReadonlyArray<unknown>): Refusal | undefined => {
  /** Call ids of the latest assistant `tool_calls` not answered yet; undefined outside such a run. */
  let open: Set<string> | undefined
  let openAt = -1
  for (const [i, message] of messages.entries()) {
    if (!isRecord(message) || typeof message.role !== "string" || !roles.includes(message.role)) {
      const role = isRecord(message) ? String(message.role) : "None"
      return refuse(
        `Invalid value: '${role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.`,
        `messages[${i}].role`
      )
    }
    if (message.role !== "tool" && open !== undefined && open.size > 0) {
      return unanswered(open, openAt)
    }
    if (message.role !== "tool") open = undefined
    switch (message.role) {
      case "system":
      case "developer":
      case "user":
        if (typeof message.content !== "string" && !Array.isArray(message.content)) {
          return refuse(`Invalid type for 'messages[${i}].content': expected one of a string or array of objects.`, `messages[${i}].content`)
        }
        break
      case "assistant": {
        const calls = message.tool_calls
        if (calls !== undefined) {
          if (!Array.isArray(calls) || calls.length === 0) {
            return refuse(`Invalid 'messages[${i}].tool_calls': empty array. Expected an array with minimum length 1.`, `messages[${i}].tool_calls`)
          }
          open = new Set()
          openAt = i
          for (const [j, call] of calls.entries()) {
            if (
              !isRecord(call) || typeof call.id !== "string" || call.type !== "function" || !isRecord(call.function) ||
              typeof call.function.name !== "string" || typeof call.function.arguments !== "string"
            ) {
              return refuse(`Invalid 'messages[${i}].tool_calls[${j}]'.`, `messages[${i}].tool_calls[${j}]`)
            }
            open.add(call.id)
          }
        } else if (typeof message.content !== "string" && !Array.isArray(message.content)) {
          return refuse(`Invalid value for 'content': expected a string, got ${message.content === null ? "null" : "None"}.`, `messages[${i}].content`)
        }
        break
      }
      case "tool": {
        const id = message.tool_call_id
        if (open === undefined || typeof id !== "string" || !open.has(id)) {
          return refuse(
            "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
            `messages.[${i}].role`
          )
        }
        if (typeof message.content !== "string" && !Array.isArray(message.content)) {
          return refuse(`Invalid type for 'messages[${i}].content'.`, `messages[${i}].content`)
        }
        open.delete(id)
        break
      }
    }
  }
  if (open !== undefined && open.size > 0) return unanswered(open, openAt)
  return undefined
}

const unanswered = (open: ReadonlySet<string>, at: number): Refusal =>
  refuse(
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. " +
      `The following tool_call_ids did not have response messages: ${[...open].join(", ")}`,
    `messages.[${at}].role`
  )

// --- answers ----------------------------------------------------------------------------------

const usage = { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 }

/** A completion that answers in words. */
export const text = (content: string, extra: JsonObject = {}): Reply => ({
  _tag: "Json",
  body: {
    id: "chatcmpl-1",
    object: "chat.completion",
    created: 1_700_000_000,
    model: "test-model",
    choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
    usage,
    ...extra
  }
})

/** A completion that calls tools (`arguments` is the JSON text the model wrote). */
export const toolCalls = (
  calls: ReadonlyArray<{ readonly id: string; readonly name: string; readonly arguments: string }>
): Reply => ({
  _tag: "Json",
  body: {
    id: "chatcmpl-2",
    object: "chat.completion",
    created: 1_700_000_000,
    model: "test-model",
    choices: [{
      index: 0,
      message: {
        role: "assistant",
        content: null,
        tool_calls: calls.map((call) => ({
          id: call.id,
          type: "function",
          function: { name: call.name, arguments: call.arguments }
        }))
      },
      finish_reason: "tool_calls"
    }],
    usage
  }
})

/** An error body, OpenAI's shape. */
export const error = (
  status: number,
  message: string,
  more: { readonly code?: string; readonly type?: string; readonly headers?: Readonly<Record<string, string>> } = {}
): Reply => ({
  _tag: "Json",
  status,
  ...(more.headers === undefined ? {} : { headers: more.headers }),
  body: { error: { message, type: more.type ?? "invalid_request_error", param: null, code: more.code ?? null } }
})

/** A streamed chunk with a delta. */
export const chunk = (delta: JsonObject, finishReason: string | null = null): JsonObject => ({
  id: "chatcmpl-3",
  object: "chat.completion.chunk",
  created: 1_700_000_000,
  model: "test-model",
  choices: [{ index: 0, delta, finish_reason: finishReason }]
})

/** The last chunk of a stream with `include_usage`: no choices, the usage. */
export const usageChunk: JsonObject = {
  id: "chatcmpl-3",
  object: "chat.completion.chunk",
  created: 1_700_000_000,
  model: "test-model",
  choices: [],
  usage: { ...usage, prompt_tokens_details: { cached_tokens: 4 }, completion_tokens_details: { reasoning_tokens: 2 } }
}
