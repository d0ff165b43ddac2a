/**
 * How a toolset's calls stop: one call cancelled (by the model or `cancel`), every cancellable call
 * drained (a hand-off), every call stopped at close; and the wait for a toolset's calls to end.
 */
import { Effect, Fiber } from "effect"
import type { CancelResult } from "../AsyncToolset.ts"
import * as Lifecycle from "./callLifecycle.ts"
import type * as CallRun from "./callRun.ts"
import type { Call } from "./callRun.ts"
import * as Coordinator from "./coordinator/index.ts"
import type { Prepared } from "./toolTable.ts"

/**
 * Stops a call (E2): its caller, if it waits, is answered at once (E8); the answer comes once the
 * store has recorded the cancel (a durable call cancelled before a crash stays cancelled), and
 * never later than the store's bound for that (a call inside an uninterruptible region is not
 * waited for: it stops on its own, listed as cancelling, E4).
 */
export const cancel = (toolset: CallRun.Toolset, callId: string): Effect.Effect<CancelResult> => {
  const recorded = toolset.store.stopRecorded
  if (recorded === undefined) return Effect.sync(() => resultOf(stop(toolset, callId)))
  return Effect.suspend(() => {
    const stopped = stop(toolset, callId)
    return typeof stopped === "string" ? Effect.succeed(stopped) : Effect.as(recorded(toolset, stopped), "cancelled")
  })
}

/** Stops a call now: the call it stopped (its store may still be recording that), or why not. */
const stop = (toolset: CallRun.Toolset, callId: string): CancelResult | Call => {
  const { registry } = toolset
  const c = registry.byId.get(callId)
  // Asked again while it stops: it is being cancelled, as the model wanted.
  if (c === undefined) return Lifecycle.isStopping(registry, callId) ? "cancelled" : "not-found"
  if (!c.cancellable) return "not-cancellable"
  Lifecycle.stop(registry, c, "cancelled", toolset.cancelled)
  Lifecycle.flush(registry)
  return c
}

const resultOf = (stopped: CancelResult | Call): CancelResult => typeof stopped === "string" ? stopped : "cancelled"

/**
 * Stops the cancellable calls and waits for every call to end. A call whose handler returned is
 * not stopped (its result stands), but its delivery is cut short: its result goes to the reply
 * coordinator, which inserts it, so a stalled session cannot hold a hand-off.
 */
export const drain = (toolset: CallRun.Toolset): Effect.Effect<void> => {
  const { registry } = toolset
  for (const c of Array.from(registry.live)) {
    if (c.status === "finishing") {
      const fiber = c.fiber
      if (fiber !== undefined) registry.wakes.push(() => fiber.interruptUnsafe())
    } else if (c.cancellable) {
      Lifecycle.stop(registry, c, "drained", toolset.cancelled)
    }
  }
  Lifecycle.flush(registry)
  return waitFor(registry, () => registry.live.size === 0)
}

/**
 * The toolset stops taking calls and delivering, and interrupts every call and timer: one step,
 * taken as soon as `close` is called (or the scope's finalizers reach the toolset). What it had
 * queued for a reply is taken back from the coordinator, and returned to be reported.
 */
const beginClose = (toolset: CallRun.Toolset): ReadonlyArray<Coordinator.Item> => {
  if (toolset.owner.closed) return []
  const left = Coordinator.closeOwner(toolset.coordinator, toolset.owner)
  Lifecycle.closeAll(toolset.registry, toolset.cancelled)
  Lifecycle.flush(toolset.registry)
  for (const timer of toolset.timers) timer.interruptUnsafe()
  return left
}

/**
 * The toolset's close: every call stopped at once, what it let go reported, its fibers awaited,
 * then it leaves the session's reply coordinator (the last toolset of the session stops it).
 */
export const closing = (toolset: CallRun.Toolset): Effect.Effect<void> =>
  Effect.suspend(() =>
    Effect.andThen(
      Coordinator.letGo(toolset.owner, beginClose(toolset)),
      Effect.andThen(
        Effect.andThen(
          waitFor(toolset.registry, () => toolset.registry.live.size === 0),
          Effect.suspend(() => Fiber.awaitAll(Array.from(toolset.timers)))
        ),
        Coordinator.release(toolset.coordinator, toolset.owner)
      )
    )
  )

/** Completes once `ready()` holds; it is checked now and after each transition. */
export const waitFor = (registry: Lifecycle.Registry<Prepared>, ready: () => boolean): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const waiter = Lifecycle.waiter(registry, ready, () => resume(Effect.void))
    if (waiter === undefined) return resume(Effect.void)
    return Effect.sync(() => Lifecycle.forgetWaiter(registry, waiter))
  })
