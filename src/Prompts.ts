/**
 * Every text the toolset writes for the model. Each is an option of `AsyncToolset.make`: a string
 * with `{placeholders}`, or a function of the same values.
 *
 * @since 0.1.0
 */

/**
 * A prompt text: a string whose `{name}` placeholders are filled from `Vars`, or a function.
 *
 * @since 0.1.0
 * @category models
 */
export type Template<Vars> = string | ((vars: Vars) => string)

/**
 * @since 0.1.0
 * @category models
 */
export interface Prompts {
  /** A progress update as the model reads it. */
  readonly update: Template<{ readonly functionName: string; readonly callId: string; readonly message: string }>
  /** The output of a duplicate call under `reject`. */
  readonly duplicateReject: Template<{
    readonly functionName: string
    readonly runningCalls: string
    readonly cancelTool: string
  }>
  /** The output of a duplicate call under `confirm` when the model did not set the flag. */
  readonly duplicateConfirm: Template<{
    readonly functionName: string
    readonly runningCalls: string
    readonly cancelTool: string
    readonly confirmParameter: string
  }>
  /** The description of the confirmation flag added under `confirm`. */
  readonly confirmParameter: Template<{ readonly functionName: string }>
  /** Reply instructions when the pending results are the newest items of the chat. */
  readonly replyAtTail: Template<{ readonly pendingCallIds: string }>
  /** Reply instructions when the agent spoke after the pending results arrived. */
  readonly replyMaybeCovered: Template<{ readonly pendingCallIds: string }>
  /** The output of a call cancelled before it said anything. */
  readonly cancelled: Template<{ readonly functionName: string; readonly callId: string }>
  /** The output of a call stopped by its timeout. */
  readonly timedOut: Template<{ readonly functionName: string; readonly callId: string; readonly timeout: string }>
}

/**
 * The default texts.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defaults: Prompts = {
  update: "{functionName} (call {callId}) reports progress: {message}\n" +
    "It is still running in the background. Tell the user only what this says; do not guess the result.",
  duplicateReject: "Not started: {functionName} is already running:\n{runningCalls}\n" +
    "Tell the user it is in progress. To start over, cancel the running call with {cancelTool} first.",
  duplicateConfirm: "Not started yet: {functionName} is already running:\n{runningCalls}\n" +
    "Ask the user whether they really want a second one. Only if they confirm, call {functionName} again " +
    "with {confirmParameter} set to true. To stop the running call instead, use {cancelTool}.",
  confirmParameter: "Set to true only when {functionName} is already running and the user has confirmed " +
    "they want another run. Leave it out otherwise.",
  replyAtTail: "Background tool calls have new results: {pendingCallIds}. " +
    "Tell the user what changed, briefly and naturally, without repeating what you already said. " +
    "Do not call any tools.",
  replyMaybeCovered: "Background tool calls have new results: {pendingCallIds}. " +
    "The conversation moved on after they arrived, so you may have told the user already. " +
    "If you did, answer with an empty message. Otherwise tell the user briefly. Do not call any tools.",
  cancelled: "{functionName} (call {callId}) was cancelled before it finished.",
  timedOut: "{functionName} (call {callId}) took longer than {timeout} and was stopped."
}

/**
 * Fills a template. Unknown placeholders are left as they are.
 *
 * @since 0.1.0
 * @category rendering
 */
export const render = <Vars extends object>(template: Template<Vars>, vars: Vars): string => {
  if (typeof template === "function") return template(vars)
  // A template is split into its literal text and placeholder names once; rendering it again
  // (on every update, every reply) is then a concatenation.
  const parts = compiled(template)
  let out = parts[0]!
  for (let i = 1; i < parts.length; i += 2) {
    const name = parts[i]!
    out += (Object.hasOwn(vars, name) ? String((vars as Record<string, unknown>)[name]) : `{${name}}`) + parts[i + 1]!
  }
  return out
}

/** Literal text and placeholder names, alternating: `["Hi ", "name", "!"]` for `"Hi {name}!"`. */
const compiled = (template: string): ReadonlyArray<string> => {
  let parts = cache.get(template)
  if (parts === undefined) {
    parts = template.split(/\{([A-Za-z0-9_]+)\}/)
    if (cache.size >= 256) cache.delete(cache.keys().next().value!)
    cache.set(template, parts)
  }
  return parts
}
const cache = new Map<string, ReadonlyArray<string>>()
