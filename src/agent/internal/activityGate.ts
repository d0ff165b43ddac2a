/**
 * Whether the agent is inactive: no turn queued or running, and the user not typing. A toolset's
 * reply fiber waits for it (`awaitInactive`) and asks for its reply right after.
 *
 * ```text
 *   inactive ──a turn queued / the user types──▶ active
 *   active ──the last turn ended and the user is not typing──▶ inactive
 * ```
 *
 * The waiting is an Effect `Latch`, open exactly while the gate is inactive: a transition to
 * active closes it at once, and a transition to inactive changes the counts first and opens it
 * last (`wake`), so a woken fiber sees a consistent state. A woken fiber may run inline and queue
 * a turn (a toolset's reply fiber does), which makes the gate active again before the next waiter
 * resumes: so each waiter checks again on waking (the port promises the session is inactive when
 * `awaitInactive` completes).
 */
import { Effect, Latch } from "effect"

/** The activity of one agent. */
export interface ActivityGate {
  /** Turns queued or running. */
  turns: number
  /** The user is typing (or speaking). */
  typing: boolean
  /** Open while inactive; waiters wait on it. */
  readonly latch: Latch.Latch
  /** Completes when the gate is inactive, and only while it is. */
  readonly awaitInactive: Effect.Effect<void>
}

/** An inactive gate. */
export const make = (): ActivityGate => {
  const latch = Latch.makeUnsafe(true)
  const gate: ActivityGate = {
    turns: 0,
    typing: false,
    latch,
    awaitInactive: Effect.suspend(() => isInactive(gate) ? Effect.void : Effect.andThen(latch.await, gate.awaitInactive))
  }
  return gate
}

/** No turn queued or running, the user not typing. */
export const isInactive = (gate: ActivityGate): boolean => gate.turns === 0 && !gate.typing

/** A turn was queued: the gate is active. */
export const turnQueued = (gate: ActivityGate): void => {
  gate.turns++
  gate.latch.closeUnsafe()
}

/**
 * `count` turns ended (or were dropped). Wakes no one: the caller finishes its transition, then
 * calls `wake`.
 */
export const turnsEnded = (gate: ActivityGate, count: number): void => {
  gate.turns -= count
}

/** The user started or stopped typing. */
export const setTyping = (gate: ActivityGate, typing: boolean): void => {
  gate.typing = typing
  if (typing) gate.latch.closeUnsafe()
  else wake(gate)
}

/** Opens the latch if the gate is inactive: its waiters resume now, inline. */
export const wake = (gate: ActivityGate): void => {
  if (isInactive(gate)) gate.latch.openUnsafe()
}
