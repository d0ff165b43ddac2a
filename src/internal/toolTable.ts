/**
 * A toolset's tools as the model sees and calls them, shared by the in-memory and the durable
 * toolset: each tool prepared once (its duplicate mode and scope, the confirmation flag in
 * `confirm` mode), a model call read against them (which tool, with which decoded arguments, or
 * why it is refused), and the management tools' texts.
 *
 * Plain synchronous functions: reading a call allocates nothing an effect would.
 */
import { Duration, Effect, Result, Schema } from "effect"
import type { RunningTask } from "../AsyncToolset.ts"
import type { FunctionCall } from "../ChatContext.ts"
import * as FunctionTool from "../FunctionTool.ts"
import * as Prompts from "../Prompts.ts"

/** The optional boolean parameter added to tools in `confirm` mode. */
export const confirmParameter = "confirm_duplicate"

/** A tool as a toolset runs it. */
export interface Prepared {
  /** The tool as the user wrote it. */
  readonly tool: FunctionTool.Any
  /** The tool as the model sees it (with the confirmation flag in `confirm` mode). */
  readonly visible: FunctionTool.Any
  readonly mode: FunctionTool.DuplicateMode
  readonly scope: FunctionTool.DuplicateScope
  readonly cancellable: boolean
  readonly timeout: Duration.Duration | undefined
}

/** The names of a toolset's management tools. */
export interface Names {
  readonly getRunningTasks: string
  readonly cancelTask: string
}

/** The options `prepare` reads. */
export interface Defaults {
  readonly tools: ReadonlyArray<FunctionTool.Any>
  readonly onDuplicateCall?: FunctionTool.DuplicateMode | undefined
  readonly duplicateScope?: FunctionTool.DuplicateScope | undefined
}

/**
 * Checks the tools (unique names, none shadowing a management tool, no parameter named as the
 * confirmation flag in `confirm` mode) and prepares each as the model sees it. `who` names the
 * constructor in the error (`AsyncToolset.make`).
 */
export const prepare = (
  who: string,
  options: Defaults,
  prompts: Prompts.Prompts,
  names: Names
): Result.Result<Map<string, Prepared>, Error> => {
  const prepared = new Map<string, Prepared>()
  for (const tool of options.tools) {
    if (prepared.has(tool.name) || tool.name === names.getRunningTasks || tool.name === names.cancelTask) {
      return Result.fail(new Error(`${who}: two tools are named "${tool.name}"`))
    }
    const mode = tool.options.onDuplicateCall ?? options.onDuplicateCall ?? "confirm"
    if (mode === "confirm" && confirmParameter in tool.parameters.fields) {
      return Result.fail(new Error(`${who}: ${tool.name} has a parameter named "${confirmParameter}", which confirm mode adds`))
    }
    const visible = mode === "confirm"
      ? FunctionTool.mapParameters(
        tool,
        Schema.Struct({
          ...tool.parameters.fields,
          [confirmParameter]: Schema.optionalKey(Schema.Boolean).annotate({
            description: Prompts.render(prompts.confirmParameter, { functionName: tool.name })
          })
        }),
        tool.handler
      )
      : tool
    prepared.set(tool.name, {
      tool,
      visible,
      mode,
      scope: tool.options.duplicateScope ?? options.duplicateScope ?? "name",
      cancellable: tool.options.cancellable ?? true,
      timeout: tool.options.timeout === undefined ? undefined : Duration.fromInputUnsafe(tool.options.timeout)
    })
  }
  return Result.succeed(prepared)
}

/**
 * What a model's call asks of a toolset:
 * - `GetRunningTasks` / `CancelTask`: one of its management tools.
 * - `Refused`: not run; `text` is the error output the model gets (an unknown tool, the toolset
 *   shut down, arguments that do not decode, no call id).
 * - `Tool`: one of its tools, with the decoded arguments (the confirmation flag taken out) and
 *   whether the model confirmed a duplicate.
 */
export type Reading =
  | { readonly _tag: "GetRunningTasks" }
  | { readonly _tag: "CancelTask" }
  | { readonly _tag: "Refused"; readonly text: string }
  | {
    readonly _tag: "Tool"
    readonly prepared: Prepared
    readonly args: Record<string, unknown>
    readonly confirmed: boolean
  }

const getRunningTasks: Reading = { _tag: "GetRunningTasks" }
const cancelTask: Reading = { _tag: "CancelTask" }

const refused = (text: string): Reading => ({ _tag: "Refused", text })

/**
 * Reads a model's call against the toolset's tools. Whether its call id is in use is the caller's
 * to check, in the same synchronous step as its admission.
 */
export const read = (
  tools: ReadonlyMap<string, Prepared>,
  names: Names,
  call: FunctionCall,
  closed: boolean,
  maxArgumentsLength: number
): Reading => {
  if (call.name === names.getRunningTasks) return getRunningTasks
  if (call.name === names.cancelTask) return cancelTask
  const p = tools.get(call.name)
  if (p === undefined) {
    const available = [...tools.keys(), names.getRunningTasks, names.cancelTask].join(", ")
    return refused(`Unknown tool "${clip(call.name)}". The available tools are: ${available}.`)
  }
  if (closed) return refused(`${call.name} was not run: the toolset is shut down.`)
  const decoded = FunctionTool.decodeArguments(p.visible, call.arguments, { maxLength: maxArgumentsLength })
  if (Result.isFailure(decoded)) return refused(decoded.failure.message)
  if (call.callId === "") return refused(`${call.name} was not run: the call has no call id. Call it again with a call id.`)
  let args = decoded.success as Record<string, unknown>
  let confirmed = false
  if (p.mode === "confirm" && confirmParameter in args) {
    const { [confirmParameter]: flag, ...rest } = args
    confirmed = flag === true
    args = rest
  }
  return { _tag: "Tool", prepared: p, args, confirmed }
}

/** The refusal of a call whose call id a running call holds. */
export const inUse = (call: FunctionCall): string =>
  `${call.name} was not run: a call with id ${clip(call.callId)} is already running.`

/** What the management tools do on a toolset. */
export interface Management {
  /** The toolset's id, as the tools' descriptions name it. */
  readonly id: string
  readonly running: () => ReadonlyArray<RunningTask>
  readonly cancel: (callId: string) => Effect.Effect<"cancelled" | "not-found" | "not-cancellable">
  /** The tool name of a call, while it is known. */
  readonly nameOf: (callId: string) => string | undefined
}

/** The toolset's management tools: list the running calls, cancel one by its call id. */
export const managementTools = (names: Names, toolset: Management) => ({
  getRunningTasks: FunctionTool.make(names.getRunningTasks, {
    description: `List the calls of the "${toolset.id}" tools still running in the background.`
  }, () =>
    Effect.sync(() =>
      toolset.running().map((t) => ({
        call_id: t.callId,
        name: t.name,
        arguments: t.arguments,
        status: t.status,
        cancellable: t.cancellable
      }))
    )),
  cancelTask: FunctionTool.make(names.cancelTask, {
    description: `Cancel a call of the "${toolset.id}" tools still running in the background, by its call id.`,
    parameters: Schema.Struct({ call_id: Schema.String.annotate({ description: "The call id to cancel" }) })
  }, ({ call_id }) =>
    Effect.suspend(() => {
      // Read before the cancel: a call that stops at once may be forgotten by then.
      const name = toolset.nameOf(call_id) ?? "this tool"
      return Effect.map(toolset.cancel(call_id), (result) => {
        switch (result) {
          case "cancelled":
            return `Call ${clip(call_id)} was cancelled.`
          case "not-found":
            return `No running call has id ${clip(call_id)}; it may have finished already. ${names.getRunningTasks} lists the running calls.`
          case "not-cancellable":
            return `Call ${clip(call_id)} cannot be cancelled: ${name} does not allow it once started. It will finish on its own.`
        }
      })
    }))
})

/** Model input echoed in an output is cut short: the model needs to recognise it, not read it back. */
export const clip = (s: string, max = 200): string =>
  s.length <= max ? s : `${s.slice(0, max)}… (${s.length} characters)`
