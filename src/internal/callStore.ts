/**
 * The in-memory call store: a call runs in this process, in its own fiber, and what it says goes
 * straight to the chat. (The durable store, `src/durable/internal/store.ts`, runs calls in a
 * workflow engine and records what they say first.)
 */
import { Effect, Exit, Result, Scope } from "effect"
import * as FunctionTool from "../FunctionTool.ts"
import * as Lifecycle from "./callLifecycle.ts"
import type { Call, CallStore, Toolset } from "./callRun.ts"
import { cancelledOutput, lateFailure, tellResult, waitTurn } from "./callRun.ts"

/** Calls run here: the handler in the call's fiber, its outcome told when it returns. */
export const memory: CallStore = {
  run: (toolset, c, args, context, callScope) =>
    c.status === "waiting"
      ? Effect.flatMap(waitTurn(toolset, c, context), (runs) => runs ? runHandler(toolset, c, args, callScope) : Effect.void)
      : runHandler(toolset, c, args, callScope),
  closedOutput: cancelledOutput,
  timerTellsTimeout: true,
  stopRecorded: undefined
}

/**
 * The handler, interruptible, in the call's own scope; then, once it returned, the outcome. (The
 * fiber runs uninterruptible from the start: only the handler may be interrupted.)
 */
const runHandler = (toolset: Toolset, c: Call, args: unknown, callScope: Scope.Closeable): Effect.Effect<void> =>
  Effect.matchCauseEffect(Effect.interruptible(handle(c, args)), {
    onSuccess: (value) => finish(toolset, c, callScope, Exit.succeed(value)),
    onFailure: (cause) => finish(toolset, c, callScope, Exit.failCause(cause))
  })

/** The handler's effect; a handler that throws instead of returning one is a defect of the tool. */
const handle = (c: Call, args: unknown): Effect.Effect<unknown, unknown> => {
  try {
    return c.tool.tool.handler(args) as Effect.Effect<unknown, unknown>
  } catch (error) {
    return Effect.die(error)
  }
}

/**
 * The handler returned. If the call was still running, its outcome is what the model hears: as
 * the output if it never updated (B3), else as `<callId>_final` (B5). If it was stopped before,
 * nothing is delivered, but a defect (say, in its clean-up) is still logged.
 */
const finish = (
  toolset: Toolset,
  c: Call,
  callScope: Scope.Closeable,
  exit: Exit.Exit<unknown, unknown>
): Effect.Effect<void> => {
  const won = Lifecycle.handlerReturned(toolset.registry, c)
  Lifecycle.flush(toolset.registry)
  const close = Scope.closeUnsafe(callScope, exit)
  const then = won ? tellOutcome(toolset, c, exit) : lateFailure(exit)
  return close === undefined ? then : Effect.andThen(close, then)
}

const tellOutcome = (toolset: Toolset, c: Call, exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> => {
  // A success is encoded at once; a failure (which may be logged) or an encoding that fails
  // takes the effectful path.
  if (Exit.isSuccess(exit)) {
    const encoded = FunctionTool.encodeSuccess(c.tool.tool, exit.value)
    if (Result.isSuccess(encoded)) {
      const text = encoded.success
      return tellResult(toolset, c, text._tag === "Some" ? { output: text.value, isError: false } : undefined)
    }
  }
  return Effect.flatMap(
    FunctionTool.encodeExit(c.tool.tool, c.functionCall.callId, exit),
    (result) => tellResult(toolset, c, result._tag === "Some" ? result.value : undefined)
  )
}

