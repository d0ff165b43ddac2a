/**
 * What an `McpToolsetServer` keeps: its runs of calls by call id, the endings of task calls nobody
 * asked about yet, the sessions' notification channels; the `AgentSession` its toolset runs on, and
 * how the toolset's events, the passing of time and the end of a session change that state.
 */
import type { Clock, Fiber, Scope } from "effect"
import { Effect } from "effect"
import { AgentSession } from "../../AgentSession.ts"
import type * as AsyncToolset from "../../AsyncToolset.ts"
import { ChatContext } from "../../ChatContext.ts"
import type { ChatItem } from "../../ChatContext.ts"
import type { ToolsetEvent } from "../../ToolsetEvent.ts"
import type { Send } from "../McpToolsetServer.ts"
import * as McpWire from "../McpWire.ts"
import * as Runs from "./runs.ts"
import type { Run } from "./runs.ts"

export interface State {
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

export const now = (state: State): number => state.clock.currentTimeMillisUnsafe()

// --- the toolset's session -------------------------------------------------------------------------

/**
 * The `AgentSession` the served toolset runs on. There is no agent: the session is always idle, a
 * reply request is taken up at once and answers nothing, and of the items the toolset inserts only
 * the `_final` results are read (updates come from the toolset's events, as the tool gave them).
 */
export const bridge = (state: Omit<State, "toolset">, clock: Clock.Clock) =>
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
export const remember = (state: Omit<State, "toolset">, item: ChatItem, at: number): void => {
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

export const onEvent = (state: State, event: ToolsetEvent): void => {
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

export const attach = (state: State, owner: string, send: Send): Effect.Effect<void, never, Scope.Scope> =>
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
export const channelOf = (state: State, owner: string): Send => (message) => state.channels.get(owner)?.at(-1)?.(message)

/** `notifications/tasks/status` for a task's new state. */
export const tellStatus = (state: Omit<State, "toolset">, run: Run): void => {
  if (run.taskId === undefined || !run.announced) return
  state.channels.get(run.owner)?.at(-1)?.(
    McpWire.notification("notifications/tasks/status", { ...Runs.wireTask(run, state.pollInterval) })
  )
}

// --- ending ----------------------------------------------------------------------------------------

/** Forgets ended tasks whose time is up, and endings kept too long for tasks nobody asked about. */
export const sweep = (state: State): Effect.Effect<void> =>
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

export const endSession = (state: State, owner: string): Effect.Effect<void> =>
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
