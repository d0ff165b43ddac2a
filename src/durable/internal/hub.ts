/**
 * What a durable call's execution and the agent that follows it tell each other in one process,
 * right after the row that says it is committed: no poll waits for a change its own process made.
 * A follower in another process reads the rows instead (every `pollInterval`).
 *
 * The hub is per store, keyed by session and call base. A listener is added before the follower
 * reads the store or starts the execution ("arm before you read"): nothing committed after that
 * is missed, and what it reads it may also hear (it keeps count of what it applied).
 */
import type { FunctionCall, FunctionCallOutput } from "../../ChatContext.ts"
import type { EndFound } from "./calls.ts"
import type { CallRow, End } from "./tables.ts"

/** What a call's execution says, once it is recorded. */
export type CallEvent =
  /** Its first update: the output the model gets (B2). */
  | { readonly _tag: "First"; readonly output: FunctionCallOutput; readonly message: string }
  /** A later update: the pair `_update_<n>` (B4). */
  | { readonly _tag: "Pair"; readonly n: number; readonly items: readonly [FunctionCall, FunctionCallOutput]; readonly message: string }
  /** A call that waited for the calls it replaces began to run. */
  | { readonly _tag: "Running" }
  /**
   * Its tool returned (a value or a failure), in this process; its end is being recorded. From
   * now on no timeout or cancel applies to it (E7), as in memory, however long the record takes.
   * (Told in this process only: a follower elsewhere learns of the end when it is recorded.)
   */
  | { readonly _tag: "Returned" }
  /**
   * Its execution ended. `found`: it was running (this is its result: `output` if it never
   * updated, else `final`), or it had been asked to stop.
   */
  | {
    readonly _tag: "Ended"
    readonly found: EndFound
    readonly status: End
    readonly output: FunctionCallOutput | undefined
    readonly final: readonly [FunctionCall, FunctionCallOutput] | undefined
    readonly message: string | undefined
  }
  /** To the execution: the call was asked to stop (its row says so). */
  | { readonly _tag: "Stop" }

export interface Hub {
  readonly publish: (sessionId: string, base: string, event: CallEvent) => void
  /** Listens to a call's events until the returned function is called. */
  readonly listen: (sessionId: string, base: string, listener: (event: CallEvent) => void) => () => void
  /**
   * A call's row as this process just recorded it, for its execution to start from if it runs in
   * this process (taken once: a replay reads the store). Dropped by every other write of the row
   * in this process before it is made, so a row taken is the row as stored. Held only where no
   * other process writes the store (`holds`: PGlite, which runs in this process and whose data
   * folder one process opens): on a database several processes share, the execution may begin on
   * another runner, record updates, its end even, and move here when that runner stops; the row
   * this process wrote is not the row as stored then, and a row held cannot tell. A no-op elsewhere.
   */
  readonly hold: (sessionId: string, base: string, row: CallRow) => void
  /** The row held for a call, once (then it is gone). */
  readonly take: (sessionId: string, base: string) => CallRow | undefined
  /** Forgets the row held for a call (its row is about to change, or its follower ends). */
  readonly drop: (sessionId: string, base: string) => void
  /**
   * Its tool returned in this process: `Returned` is told now, and the call is known to have
   * returned (`hasReturned`) until the returned function is called (its end recorded, or its
   * execution stopped before: its tool runs again). A follower that begins meanwhile (the
   * toolset made again for the session) hears of the return it was not there for (E7).
   */
  readonly returned: (sessionId: string, base: string) => () => void
  readonly hasReturned: (sessionId: string, base: string) => boolean
}

/** `holds`: no other process writes the store's rows (see `Hub.hold`). */
export const make = (options: { readonly holds: boolean }): Hub => {
  const listeners = new Map<string, Set<(event: CallEvent) => void>>()
  const held = new Map<string, CallRow>()
  const returned = new Set<string>()
  const key = (sessionId: string, base: string) => `${sessionId}\u0000${base}`
  const publish = (sessionId: string, base: string, event: CallEvent): void => {
    const found = listeners.get(key(sessionId, base))
    if (found === undefined) return
    for (const listener of Array.from(found)) listener(event)
  }
  return {
    returned: (sessionId, base) => {
      const k = key(sessionId, base)
      returned.add(k)
      publish(sessionId, base, returnedEvent)
      return () => {
        returned.delete(k)
      }
    },
    hasReturned: (sessionId, base) => returned.has(key(sessionId, base)),
    hold: (sessionId, base, row) => {
      if (options.holds) held.set(key(sessionId, base), row)
    },
    take: (sessionId, base) => {
      const k = key(sessionId, base)
      const row = held.get(k)
      if (row !== undefined) held.delete(k)
      return row
    },
    drop: (sessionId, base) => {
      held.delete(key(sessionId, base))
    },
    publish,
    listen: (sessionId, base, listener) => {
      const k = key(sessionId, base)
      let set = listeners.get(k)
      if (set === undefined) listeners.set(k, set = new Set())
      set.add(listener)
      return () => {
        set.delete(listener)
        if (set.size === 0 && listeners.get(k) === set) listeners.delete(k)
      }
    }
  }
}

const returnedEvent: CallEvent = { _tag: "Returned" }

/** Events waiting to be taken by one fiber, in order. */
export interface Mailbox {
  readonly events: Array<CallEvent>
  wake: (() => void) | undefined
}

export const mailbox = (): Mailbox => ({ events: [], wake: undefined })

export const post = (box: Mailbox, event: CallEvent): void => {
  box.events.push(event)
  const wake = box.wake
  if (wake !== undefined) {
    box.wake = undefined
    wake()
  }
}
