/**
 * The calls an MCP server runs for its clients, each one `Run`: what the toolset said of it so far
 * (its first output, its `_final` item, how its fiber ended) and the state the client sees (a
 * task's status, status message and times). Every change is one synchronous function over that
 * data; waking a waiter (`ended`) comes last, once the run is consistent.
 *
 * A run is found by its call id. A task's call id is made from the task id and the session that
 * made it (`callIdOf`): a request of another session computes another call id and finds nothing,
 * and a restarted server with the same secret finds the call a durable toolset kept.
 */
import { createHmac, randomBytes } from "node:crypto"
import { Deferred, Exit } from "effect"
import { isPending } from "../../AsyncToolset.ts"
import type { FunctionCallOutput } from "../../ChatContext.ts"
import type * as FunctionTool from "../../FunctionTool.ts"
import type { Outcome } from "../../ToolsetEvent.ts"
import * as McpWire from "../McpWire.ts"

/** Where a call's progress goes: the request's own stream, or the session's channel. */
export interface Progress {
  readonly token: McpWire.RequestId
  count: number
  readonly send: (message: McpWire.Notification) => void
}

/** Still running: the client polls it. */
export interface Working {
  readonly _tag: "Working"
}

/** Ended, with the answer `tasks/result` (or the plain call) gives. */
export interface Ended {
  readonly _tag: "Ended"
  readonly status: "completed" | "failed" | "cancelled"
  readonly result: McpWire.CallToolResult
}

export interface Run {
  readonly callId: string
  /** Present for a task; a plain call has none (it is answered on its own request). */
  readonly taskId: string | undefined
  /** The session (or identity) the task is bound to. */
  readonly owner: string
  readonly name: string
  readonly createdAt: number
  /** Milliseconds from creation the task is kept; `null`: no limit. */
  readonly ttl: number | null
  lastUpdatedAt: number
  statusMessage: string | undefined
  state: Working | Ended
  /**
   * What `execute` answered: a first update (the call goes on) or the whole outcome;
   * `background` for a call found again after a restart (it went on, its answer is gone).
   */
  first: FunctionCallOutput | "background" | undefined
  /** The `<callId>_final` item the toolset delivered after a first update. */
  final: FunctionTool.Output | undefined
  /** How the call's fiber ended (`CallEnded`). */
  outcome: Outcome | undefined
  progress: Progress | undefined
  /** Whether the client has the task yet (no status notification before its `CreateTaskResult`). */
  announced: boolean
  /** Completed once the run has ended. */
  readonly ended: Deferred.Deferred<void>
}

export const make = (options: {
  readonly callId: string
  readonly taskId: string | undefined
  readonly owner: string
  readonly name: string
  readonly now: number
  readonly ttl: number | null
  readonly progress?: Progress | undefined
}): Run => ({
  callId: options.callId,
  taskId: options.taskId,
  owner: options.owner,
  name: options.name,
  createdAt: options.now,
  ttl: options.ttl,
  lastUpdatedAt: options.now,
  statusMessage: undefined,
  state: { _tag: "Working" },
  first: undefined,
  final: undefined,
  outcome: undefined,
  progress: options.progress,
  announced: options.taskId === undefined,
  ended: Deferred.makeUnsafe<void>()
})

// --- ids -----------------------------------------------------------------------------------------

/** 128 random bits, as 32 lowercase hex digits. */
export const randomHex = (): string => randomBytes(16).toString("hex")

const taskIdPattern = /^[0-9a-f]{32}$/

export const isTaskId = (taskId: unknown): taskId is string => typeof taskId === "string" && taskIdPattern.test(taskId)

/** The call id of a task: its id and a tag binding it to its owner (an HMAC under the server's secret). */
export const callIdOf = (secret: Uint8Array, owner: string, taskId: string): string =>
  `mcp-${taskId}-${tagOf(secret, owner, taskId)}`

const tagOf = (secret: Uint8Array, owner: string, taskId: string): string =>
  createHmac("sha256", secret).update(`${owner}\n${taskId}`).digest("hex").slice(0, 16)

/** The call id of a plain call: nobody looks it up. */
export const plainCallId = (): string => `mcp-${randomHex()}`

const taskCallIdPattern = /^mcp-([0-9a-f]{32})-([0-9a-f]{16})$/

/** The task id in a task's call id, if it is one. */
export const taskIdIn = (callId: string): string | undefined => taskCallIdPattern.exec(callId)?.[1]

/** Whether a task's call id belongs to `owner`. */
export const belongsTo = (secret: Uint8Array, callId: string, owner: string): boolean => {
  const taskId = taskIdIn(callId)
  return taskId !== undefined && callIdOf(secret, owner, taskId) === callId
}

const finalPattern = /^(mcp-[0-9a-f]{32}(?:-[0-9a-f]{16})?)_final(?:_\d+)?$/

/** The call id a `<callId>_final` item belongs to, if it is one of ours. */
export const finalOf = (itemCallId: string): string | undefined => finalPattern.exec(itemCallId)?.[1]

// --- transitions ---------------------------------------------------------------------------------

/** A tool output as a tool result. */
export const resultOf = (output: FunctionTool.Output): McpWire.CallToolResult => ({
  content: output.output === "" ? [] : [{ type: "text", text: output.output }],
  isError: output.isError
})

const cancelledResult = (text: string): McpWire.CallToolResult => ({ content: [{ type: "text", text }], isError: true })

const statusText = (text: string): string => text.length <= 500 ? text : `${text.slice(0, 500)}…`

/**
 * Ends a working run; false if it had ended already (a terminal status never changes). The waiters
 * are woken last.
 */
export const end = (run: Run, status: Ended["status"], result: McpWire.CallToolResult, now: number, message?: string): boolean => {
  if (run.state._tag === "Ended") return false
  run.state = { _tag: "Ended", status, result }
  run.statusMessage = message
  run.lastUpdatedAt = now
  run.progress = undefined
  Deferred.doneUnsafe(run.ended, Exit.void)
  return true
}

/**
 * Ends the run if what the toolset said so far decides how: `execute` answered with the whole
 * outcome; or, after a first update, the `_final` item came; or the fiber ended with nothing more
 * to say (a `void` result, a cancel by the toolset). Called after each of those facts, in any order.
 */
export const settle = (run: Run, now: number): boolean => {
  if (run.state._tag === "Ended") return false
  const first = run.first
  const told = first !== undefined && first !== "background" && !isPending(first) ? first : run.final
  if (told !== undefined) {
    const ending = endingOf(told, now)
    return end(run, ending.status, ending.result, now, ending.message)
  }
  // Ended before `execute` answered: its answer (the whole outcome) is what counts.
  if (first === undefined || run.outcome === undefined) return false
  const ending = endingOfOutcome(run.name, run.outcome, now)
  return end(run, ending.status, ending.result, now, ending.message)
}

/** A task the client cancelled: `cancelled` at once, whatever the call does next. */
export const cancel = (run: Run, now: number, message: string): boolean => end(run, "cancelled", cancelledResult(message), now, message)

/** An update of the call: the task's status message, and a progress notification if one was asked for. */
export const updated = (run: Run, message: string, now: number): boolean => {
  if (run.state._tag === "Ended") return false
  run.statusMessage = statusText(message)
  run.lastUpdatedAt = now
  const progress = run.progress
  if (progress !== undefined) {
    progress.count++
    progress.send(McpWire.notification("notifications/progress", progressParams(progress, message)))
  }
  return true
}

/**
 * An update as MCP progress: a value `{ progress, total?, message? }` is sent as it is (the tool
 * chose its numbers); any other update counts one step, with its text as the message.
 */
const progressParams = (progress: Progress, message: string): Record<string, unknown> => {
  const value = parseObject(message)
  if (value !== undefined && typeof value.progress === "number" && Number.isFinite(value.progress)) {
    return {
      progressToken: progress.token,
      progress: value.progress,
      ...(typeof value.total === "number" ? { total: value.total } : {}),
      ...(typeof value.message === "string" ? { message: value.message } : {})
    }
  }
  return { progressToken: progress.token, progress: progress.count, message }
}

const parseObject = (text: string): Record<string, unknown> | undefined => {
  if (!text.startsWith("{")) return undefined
  try {
    const value: unknown = JSON.parse(text)
    return McpWire.isObject(value) ? value : undefined
  } catch {
    return undefined
  }
}

// --- what the client sees ------------------------------------------------------------------------

export const statusOf = (run: Run): McpWire.TaskStatus => run.state._tag === "Working" ? "working" : run.state.status

export const wireTask = (run: Run, pollInterval: number): McpWire.Task => {
  const status = statusOf(run)
  return {
    taskId: run.taskId ?? "",
    status,
    ...(run.statusMessage === undefined ? {} : { statusMessage: run.statusMessage }),
    createdAt: new Date(run.createdAt).toISOString(),
    lastUpdatedAt: new Date(run.lastUpdatedAt).toISOString(),
    ttl: run.ttl,
    ...(McpWire.isTerminal(status) ? {} : { pollInterval })
  }
}

/** The result of an ended run; a working one has none yet. */
export const resultOfRun = (run: Run): McpWire.CallToolResult | undefined => run.state._tag === "Ended" ? run.state.result : undefined

/**
 * Whether a task may be forgotten: it has ended, its `ttl` from creation has passed, and so has as
 * long again since it ended (a task that ran longer than its `ttl` keeps its result for the client
 * to fetch). A running task is never forgotten: it would go on with nobody able to see or stop it.
 */
export const expired = (run: Run, now: number): boolean =>
  run.state._tag === "Ended" && run.ttl !== null && now >= run.createdAt + run.ttl && now >= run.lastUpdatedAt + run.ttl

/** A recovered run: a task call that ended here with no run (before a restart, or before anyone asked). */
export const recovered = (options: {
  readonly callId: string
  readonly taskId: string
  readonly owner: string
  readonly ttl: number
  readonly ending: Ending
}): Run => {
  const run = make({ callId: options.callId, taskId: options.taskId, owner: options.owner, name: "", now: options.ending.at, ttl: options.ttl })
  run.announced = true
  end(run, options.ending.status, options.ending.result, options.ending.at, options.ending.message)
  return run
}

/** How a task call ended, kept for a task nobody asked about yet. */
export interface Ending {
  readonly status: Ended["status"]
  readonly result: McpWire.CallToolResult
  readonly message: string | undefined
  readonly at: number
}

/** A `_final` output as an ending. */
export const endingOf = (output: FunctionTool.Output, at: number): Ending => ({
  status: output.isError ? "failed" : "completed",
  result: resultOf(output),
  message: output.isError ? statusText(output.output) : undefined,
  at
})

/** A call's end with nothing more said (`CallEnded`), as an ending. */
export const endingOfOutcome = (name: string, outcome: Outcome, at: number): Ending => {
  switch (outcome) {
    case "done":
      return { status: "completed", result: { content: [], isError: false }, message: undefined, at }
    case "cancelled":
      return { status: "cancelled", result: cancelledResult(`${name} was cancelled.`), message: `${name} was cancelled.`, at }
    case "error":
      return { status: "failed", result: cancelledResult(`${name} failed.`), message: `${name} failed.`, at }
    case "timed-out":
      return { status: "failed", result: cancelledResult(`${name} took too long and was stopped.`), message: `${name} took too long and was stopped.`, at }
  }
}
