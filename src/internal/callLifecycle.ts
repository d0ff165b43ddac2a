/**
 * The lifecycle of a toolset's calls: every state a call can be in, and each transition as one
 * synchronous function.
 *
 * ```text
 *   waiting ──start──▶ running ──handler returned──▶ finishing ──fiber ended──▶ done
 *      │                  │
 *      └──stop──▶ done    └──stop──▶ stopping ──fiber ended──▶ done
 * ```
 *
 * - `waiting`: admitted to replace other calls of its key; it starts once all of them stopped. Its
 *   fiber exists (it waits for its turn there), and may be recording the call meanwhile.
 * - `running`: its handler runs. Its updates and its result reach the model.
 * - `stopping`: cancelled, replaced, drained, timed out or closed: from now on nothing it says
 *   reaches the chat. Its fiber was interrupted and may still be inside an uninterruptible region;
 *   it is listed as `cancelling` and still blocks a successor of its key.
 * - `finishing`: its handler returned; its result is being delivered. No timeout or cancel
 *   applies any more (the work is done), and it no longer counts as running.
 * - `done`: its fiber ended (or it never started); it is in no table.
 *
 * Whether a call is being cancelled is this state, never the shape of a `Cause` some port handed
 * back. A transition changes the tables first and wakes waiters last (`flush`): a waiter woken in
 * the middle of a transition could run inline, see half a change, and act on it.
 */
import { Deferred, Exit } from "effect"
import type { Fiber } from "effect"
import type { FunctionCall, FunctionCallOutput } from "../ChatContext.ts"
import type { Outcome } from "../ToolsetEvent.ts"

/** @internal */
export type Status = "waiting" | "running" | "stopping" | "finishing" | "done"

/**
 * Why a call was stopped: the model or the app cancelled it, a `replace` call replaced it, `drain`
 * stopped it, its timeout ran out, its caller stopped waiting for its first output, or the toolset
 * closed.
 */
export type StopCause = "cancelled" | "replaced" | "drained" | "timed-out" | "abandoned" | "closed"

/** One call of a toolset. Mutable, and only changed by the transitions below. */
export interface Call<Tool> {
  readonly functionCall: FunctionCall
  readonly tool: Tool
  /**
   * The duplicate key: calls of one key are duplicates of each other. `undefined` for a tool in
   * `allow` mode, whose calls are never checked against each other (and so need no index).
   */
  readonly key: string | undefined
  readonly cancellable: boolean
  readonly startedAt: number
  status: Status
  /** It began to run (its start was told): a call stopped while it waited never does. */
  begun: boolean
  /** It counts among its session's running calls (from its start to its fiber's end; C4d). */
  counted: boolean
  /** How it ended, or is ending; `done` and `error` are set when the handler returns. */
  outcome: Outcome
  /** Why it was stopped, once it was. */
  stopCause: StopCause | undefined
  /** The first output was settled (by the first update, the result, or a stop). */
  firstSettled: boolean
  /**
   * The settled first output, until its caller takes it (`takeFirst`): a call that ran inline
   * settles it before its caller could wait, which then needs no `Deferred` at all.
   */
  firstOutput: FunctionCallOutput | undefined
  /** Made only when the caller has to wait for the first output; completed when it is settled. */
  firstWaiter: Deferred.Deferred<FunctionCallOutput> | undefined
  /** `waiting` only: completed when the call may start, or when it was stopped while it waited. */
  gate: Deferred.Deferred<void> | undefined
  /** `waiting` only: how many calls of its key must stop before it starts. */
  blockers: number
  /** Calls waiting for this one to stop. */
  successors: Array<Call<Tool>> | undefined
  fiber: Fiber.Fiber<unknown, unknown> | undefined
  timer: Fiber.Fiber<unknown, unknown> | undefined
  /** How many `_update_<n>` items it delivered. */
  updates: number
  /** What its synthetic call ids start with, once it made one. */
  base: string | undefined
  /** When it times out (clock milliseconds), if it was set before it was taken up here (a durable call's deadline). */
  deadline: number | undefined
}

/** A wait for a condition on the tables (idle, no calls). */
export interface Waiter {
  readonly ready: () => boolean
  /** Resumes the waiting fiber (run on `flush`). */
  readonly wake: () => void
}

/** The calls of one toolset. */
export interface Registry<Tool> {
  /** Waiting and running calls by call id: the ids a new call may not reuse. */
  readonly byId: Map<string, Call<Tool>>
  /** Waiting, running and stopping calls by duplicate key, oldest first. */
  readonly byKey: Map<string, Set<Call<Tool>>>
  /** Every call whose fiber has not ended. */
  readonly live: Set<Call<Tool>>
  readonly waiters: Set<Waiter>
  /** Wake-ups owed by the transitions so far; `flush` runs them. */
  wakes: Array<() => void>
  /** An empty array `flush` swaps in while it runs the owed ones (no array per flush). */
  spare: Array<() => void>
  flushing: boolean
  closed: boolean
}

/** @internal */
export const makeRegistry = <Tool>(): Registry<Tool> => ({
  byId: new Map(),
  byKey: new Map(),
  live: new Set(),
  waiters: new Set(),
  wakes: [],
  spare: [],
  flushing: false,
  closed: false
})

/** @internal */
export const makeCall = <Tool>(
  functionCall: FunctionCall,
  tool: Tool,
  key: string | undefined,
  cancellable: boolean,
  startedAt: number
): Call<Tool> => ({
  functionCall,
  tool,
  key,
  cancellable,
  startedAt,
  status: "running",
  begun: false,
  counted: false,
  outcome: "cancelled",
  stopCause: undefined,
  firstSettled: false,
  firstOutput: undefined,
  firstWaiter: undefined,
  gate: undefined,
  blockers: 0,
  successors: undefined,
  fiber: undefined,
  timer: undefined,
  updates: 0,
  base: undefined,
  deadline: undefined
})

/**
 * Runs the wake-ups owed, in order. A wake-up may run another fiber inline, whose transitions owe
 * more: those join the queue of the flush already running rather than start one of their own, so
 * closing ten thousand calls is a loop, not ten thousand nested calls deep.
 */
export const flush = <Tool>(registry: Registry<Tool>): void => {
  if (registry.flushing) return
  registry.flushing = true
  try {
    while (registry.wakes.length > 0) {
      const wakes = registry.wakes
      registry.wakes = registry.spare
      registry.spare = wakes
      for (let i = 0; i < wakes.length; i++) wakes[i]!()
      wakes.length = 0
    }
  } finally {
    registry.flushing = false
  }
}

// --- reading -----------------------------------------------------------------------------------

/** The calls of `key` that run or wait to run (not those stopping): what a duplicate is checked against. */
export const activeOfKey = <Tool>(registry: Registry<Tool>, key: string): Array<Call<Tool>> => {
  const calls = registry.byKey.get(key)
  const active: Array<Call<Tool>> = []
  if (calls !== undefined) for (const c of calls) if (c.status !== "stopping") active.push(c)
  return active
}

/** Whether a call with this id runs or waits to run. */
export const isInUse = <Tool>(registry: Registry<Tool>, callId: string): boolean => registry.byId.has(callId)


/** Whether a call with this id was stopped and its fiber has not ended yet. */
export const isStopping = <Tool>(registry: Registry<Tool>, callId: string): boolean => {
  for (const c of registry.live) if (c.status === "stopping" && c.functionCall.callId === callId) return true
  return false
}

// --- transitions -------------------------------------------------------------------------------

/**
 * Registers an admitted call. With `after` (the calls it replaces, and any other call of its key
 * still stopping), it waits until each has stopped; otherwise it runs at once.
 */
export const register = <Tool>(registry: Registry<Tool>, call: Call<Tool>, after: Iterable<Call<Tool>>): void => {
  for (const predecessor of after) {
    if (predecessor.status === "done" || predecessor.status === "finishing") continue
    ;(predecessor.successors ??= []).push(call)
    call.blockers++
  }
  if (call.blockers > 0) {
    call.status = "waiting"
    call.gate = Deferred.makeUnsafe<void>()
  }
  registry.byId.set(call.functionCall.callId, call)
  if (call.key !== undefined) {
    let calls = registry.byKey.get(call.key)
    if (calls === undefined) registry.byKey.set(call.key, calls = new Set())
    calls.add(call)
  }
  registry.live.add(call)
}

/** A waiting call whose predecessors all stopped begins to run. False if it was stopped meanwhile. */
export const start = <Tool>(call: Call<Tool>): boolean => {
  if (call.status !== "waiting") return false
  call.status = "running"
  call.gate = undefined
  return true
}

/**
 * Settles the first output, if nobody did yet. The one function that does: its result says
 * whether this caller's output is the one the model gets.
 */
export const settleFirst = <Tool>(registry: Registry<Tool>, call: Call<Tool>, output: FunctionCallOutput): boolean => {
  if (call.firstSettled) return false
  call.firstSettled = true
  const waiter = call.firstWaiter
  if (waiter === undefined) {
    call.firstOutput = output
  } else {
    call.firstWaiter = undefined
    registry.wakes.push(() => Deferred.doneUnsafe(waiter, Exit.succeed(output)))
  }
  return true
}

/** The settled first output, taken by its one reader (the call lets go of it); `undefined` if not settled yet. */
export const takeFirst = <Tool>(call: Call<Tool>): FunctionCallOutput | undefined => {
  const output = call.firstOutput
  call.firstOutput = undefined
  return output
}

/** The deferred a caller waits on while the first output is not settled (completed on `flush` once it is). */
export const firstWaiter = <Tool>(call: Call<Tool>): Deferred.Deferred<FunctionCallOutput> =>
  call.firstWaiter ??= Deferred.makeUnsafe<FunctionCallOutput>()

/**
 * Stops a call that waits or runs (cancel, replace, drain, timeout, close): what it says from now
 * on is dropped, a caller still waiting for its first output gets `output` now (unless it is
 * `undefined`: then the call's fiber answers it, after recording what it must), and its fiber is
 * interrupted without waiting (it may be inside an uninterruptible region). False if it was not
 * waiting or running.
 */
export const stop = <Tool>(
  registry: Registry<Tool>,
  call: Call<Tool>,
  cause: StopCause,
  output: (call: Call<Tool>) => FunctionCallOutput | undefined
): boolean => {
  switch (call.status) {
    case "waiting": {
      // It never started: it ends here (its fiber, waiting for its turn, wakes and lets go).
      call.stopCause = cause
      call.outcome = "cancelled"
      settleIfGiven(registry, call, output)
      const gate = call.gate!
      call.gate = undefined
      end(registry, call)
      registry.wakes.push(() => Deferred.doneUnsafe(gate, Exit.void))
      return true
    }
    case "running": {
      call.status = "stopping"
      call.stopCause = cause
      call.outcome = cause === "timed-out" ? "timed-out" : "cancelled"
      unlistId(registry, call)
      settleIfGiven(registry, call, output)
      const fiber = call.fiber
      if (fiber !== undefined) registry.wakes.push(() => fiber.interruptUnsafe())
      const timer = call.timer
      if (timer !== undefined && cause !== "timed-out") {
        call.timer = undefined
        registry.wakes.push(() => timer.interruptUnsafe())
      }
      notify(registry)
      return true
    }
    default:
      return false
  }
}

/**
 * The handler returned (with a value or a failure) while the call was running: its outcome is
 * fixed, no timeout or cancel applies any more, and it no longer counts as running. False if it
 * was stopped before: then nothing it produced is delivered.
 */
export const handlerReturned = <Tool>(registry: Registry<Tool>, call: Call<Tool>): boolean => {
  if (call.status !== "running") return false
  call.status = "finishing"
  unlistId(registry, call)
  unlistKey(registry, call)
  const timer = call.timer
  if (timer !== undefined) {
    call.timer = undefined
    registry.wakes.push(() => timer.interruptUnsafe())
  }
  notify(registry)
  return true
}

/** The call's fiber ended, whatever ended it. A caller still waiting gets `output` (never a hang). */
export const fiberEnded = <Tool>(
  registry: Registry<Tool>,
  call: Call<Tool>,
  output: (call: Call<Tool>) => FunctionCallOutput
): void => {
  if (call.status === "done") return
  if (!call.firstSettled) settleFirst(registry, call, output(call))
  const timer = call.timer
  if (timer !== undefined && call.outcome !== "timed-out") registry.wakes.push(() => timer.interruptUnsafe())
  call.timer = undefined
  end(registry, call)
}

/** Marks every call stopped as the toolset closes; their fibers are interrupted (on `flush`). */
export const closeAll = <Tool>(
  registry: Registry<Tool>,
  output: (call: Call<Tool>) => FunctionCallOutput | undefined
): void => {
  registry.closed = true
  for (const call of Array.from(registry.live)) {
    if (!stop(registry, call, "closed", output) && call.fiber !== undefined) {
      // finishing or already stopping: interrupt it again (a delivery in flight stops too)
      const fiber = call.fiber
      registry.wakes.push(() => fiber.interruptUnsafe())
    }
  }
  // Whoever waits for the toolset to close (a call's fiber waiting for what it cannot interrupt).
  notify(registry)
}

// --- waiting on the tables ---------------------------------------------------------------------

/** Wakes every waiter whose condition holds now. */
export const notify = <Tool>(registry: Registry<Tool>): void => {
  for (const waiter of registry.waiters) {
    if (waiter.ready()) {
      registry.waiters.delete(waiter)
      registry.wakes.push(waiter.wake)
    }
  }
}

/** A deferred completed once `ready()` holds (checked now and after each transition). */
export const waiter = <Tool>(registry: Registry<Tool>, ready: () => boolean, wake: () => void): Waiter | undefined => {
  if (ready()) return undefined
  const waiter: Waiter = { ready, wake }
  registry.waiters.add(waiter)
  return waiter
}

/** Stops waiting (the waiting fiber was interrupted). */
export const forgetWaiter = <Tool>(registry: Registry<Tool>, waiter: Waiter): void => {
  registry.waiters.delete(waiter)
}

// --- internals ---------------------------------------------------------------------------------

const settleIfGiven = <Tool>(
  registry: Registry<Tool>,
  call: Call<Tool>,
  output: (call: Call<Tool>) => FunctionCallOutput | undefined
): void => {
  if (call.firstSettled) return
  const out = output(call)
  if (out !== undefined) settleFirst(registry, call, out)
}

/** A call is done: out of every table; its successors may start. */
const end = <Tool>(registry: Registry<Tool>, call: Call<Tool>): void => {
  call.status = "done"
  unlistId(registry, call)
  unlistKey(registry, call)
  registry.live.delete(call)
  const successors = call.successors
  call.successors = undefined
  if (successors !== undefined) {
    for (const successor of successors) {
      if (--successor.blockers === 0 && successor.status === "waiting") {
        const gate = successor.gate!
        registry.wakes.push(() => Deferred.doneUnsafe(gate, Exit.void))
      }
    }
  }
  notify(registry)
}

/** A newer call may own the id by now (rule E5): only remove this one. */
const unlistId = <Tool>(registry: Registry<Tool>, call: Call<Tool>): void => {
  if (registry.byId.get(call.functionCall.callId) === call) registry.byId.delete(call.functionCall.callId)
}

const unlistKey = <Tool>(registry: Registry<Tool>, call: Call<Tool>): void => {
  if (call.key === undefined) return
  const calls = registry.byKey.get(call.key)
  if (calls === undefined) return
  calls.delete(call)
  if (calls.size === 0) registry.byKey.delete(call.key)
}
