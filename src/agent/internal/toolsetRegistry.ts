/**
 * The toolsets an agent has: added for the life of a scope, their tools as the model sees them,
 * and each call the model makes sent to the toolset that owns its tool.
 */
import { Effect } from "effect"
import type { Scope } from "effect"
import type { Toolkit } from "effect/ai"
import type { AgentSession } from "../../AgentSession.ts"
import type { AsyncToolset } from "../../AsyncToolset.ts"
import { functionCallOutput } from "../../ChatContext.ts"
import type { FunctionCall, FunctionCallOutput } from "../../ChatContext.ts"
import * as Coordinator from "../../internal/coordinator/index.ts"
import { toTool } from "../PromptConversion.ts"
import type { AiTool } from "../PromptConversion.ts"

/** The tools the model sees, as a toolkit whose calls the agent dispatches itself. */
export type Tools = Toolkit.WithHandler<Record<string, AiTool>>

/** The toolsets of one agent. */
export interface ToolsetRegistry {
  /** The agent's session: its toolsets' synthetic call ids must not take a model call id of its chat (B7). */
  readonly session: AgentSession["Service"]
  /** By id, in the order they were added. */
  readonly byId: Map<string, AsyncToolset>
  /** Tool name -> the toolset that runs it. */
  readonly owners: Map<string, AsyncToolset>
  /** The model's toolkit, built on first use after the toolsets changed. */
  toolkit: Tools | undefined
}

/** No toolsets, for the agent's `session`. */
export const make = (session: AgentSession["Service"]): ToolsetRegistry => ({
  session,
  byId: new Map(),
  owners: new Map(),
  toolkit: undefined
})

/**
 * A call id the chat holds though no toolset ran its call (the history, a call of an unknown tool):
 * no synthetic id (a running call's `_update_<n>` or `_final`) may take it (B7).
 */
export const noteCallId = (registry: ToolsetRegistry, callId: string): void => {
  Coordinator.noteCallId(registry.session, callId)
}

/**
 * Adds `toolset` until the scope closes. Its id and its tool names must be new to the agent: a
 * clash is a defect.
 */
export const add = (registry: ToolsetRegistry, toolset: AsyncToolset): Effect.Effect<void, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.suspend(() => {
      if (registry.byId.has(toolset.id)) {
        return Effect.die(new Error(`AiAgent.addToolset: a toolset with id "${toolset.id}" is already added`))
      }
      const clash = toolset.tools.find((tool) => registry.owners.has(tool.name))
      if (clash !== undefined) {
        return Effect.die(new Error(`AiAgent.addToolset: two toolsets have a tool named "${clash.name}"`))
      }
      registry.byId.set(toolset.id, toolset)
      for (const tool of toolset.tools) registry.owners.set(tool.name, toolset)
      registry.toolkit = undefined
      return Effect.void
    }),
    () => Effect.sync(() => remove(registry, toolset))
  )

/** Removes `toolset`, if it is the one added under its id. */
const remove = (registry: ToolsetRegistry, toolset: AsyncToolset): void => {
  if (registry.byId.get(toolset.id) !== toolset) return
  registry.byId.delete(toolset.id)
  for (const tool of toolset.tools) registry.owners.delete(tool.name)
  registry.toolkit = undefined
}

/** The toolsets, in the order they were added. */
export const list = (registry: ToolsetRegistry): Array<AsyncToolset> => Array.from(registry.byId.values())

/** The tools of every toolset, for the model. */
export const toolkit = (registry: ToolsetRegistry): Tools => {
  if (registry.toolkit !== undefined) return registry.toolkit
  const tools: Record<string, AiTool> = {}
  for (const toolset of registry.byId.values()) {
    for (const tool of toolset.tools) Object.defineProperty(tools, tool.name, { value: toTool(tool), enumerable: true })
  }
  return registry.toolkit = {
    tools,
    // never called: the model is asked with `disableToolCallResolution`
    handle: () => Effect.die(new Error("AiAgent dispatches tool calls to its toolsets"))
  }
}

/**
 * Runs a call on the toolset that owns its tool; a call of an unknown tool gets an error output
 * naming the tools (its id is noted: no toolset saw it).
 */
export const dispatch = (registry: ToolsetRegistry, call: FunctionCall): Effect.Effect<FunctionCallOutput> => {
  const toolset = registry.owners.get(call.name)
  if (toolset !== undefined) return toolset.execute(call)
  noteCallId(registry, call.callId)
  return functionCallOutput({
    callId: call.callId,
    name: call.name,
    output: `Unknown tool "${call.name}". The available tools are: ${[...registry.owners.keys()].join(", ")}.`,
    isError: true
  })
}

/** Completes when every toolset is idle: no call of theirs runs and no reply is owed. */
export const awaitIdle = (registry: ToolsetRegistry): Effect.Effect<void> =>
  Effect.suspend(() => Effect.forEach(list(registry), (toolset) => toolset.awaitIdle, { discard: true }))
