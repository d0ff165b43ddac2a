/**
 * What joins a round before it takes the queue (C4d): everything ready at this clock instant, and
 * on the real clock the calls started together with a queued item's call, while they go on ending.
 */
import type { Clock } from "effect"
import { Duration, Effect } from "effect"
import type { TestClock } from "effect/testing"
import type { Coordinator, Item } from "./coordinator.ts"

/**
 * Lets everything ready now run before the round takes the queue, so results that end together are
 * answered together (C4d).
 *
 * On the real clock: one scheduler turn (timers that fired together have all run by then, as have
 * fibers woken together and a call's update and result made in one run); then, while calls of the
 * session admitted within `gatherWindow` of a queued item's call are still running (calls the
 * model made in one answer), the coordinator waits for them: as long as each ends within
 * `siblingWait` of the last one. An instant on the real clock is blurred by timer granularity
 * and scheduling: five calls of one length started in one answer end a few milliseconds apart
 * (tens of milliseconds when some are durable).
 * Calls started apart, or a lone call, are not waited for.
 *
 * On a test clock (effect's `TestClock`) an instant is exact, and its sleeps are woken one after
 * the other, each to its end: the coordinator waits for the clock's adjustment under way to end
 * (a test moves to the next instant through `adjust`), or for the clock to pass the instant,
 * whichever comes first.
 */
export const gatherOnce = (coordinator: Coordinator): Effect.Effect<void> => {
  const clock = coordinator.clock
  if (isTestClock(clock)) return Effect.raceFirst(clock.adjust(0), Effect.sleep(Duration.millis(1)))
  return Effect.suspend(() => lastOfAll(coordinator) ? Effect.void : Effect.yieldNow)
}

/**
 * Nothing else can become ready in this turn: every item queued is the result of a call whose
 * handler returned (nothing of it follows), and no other call of the session runs. (Items owed
 * from before, and a call's updates, are gathered.) The usual case of one call at a time: its
 * reply needs no scheduler turn.
 */
const lastOfAll = (coordinator: Coordinator): boolean => {
  const queue = coordinator.queue
  if (queue.length === 0 || queue.length > coordinator.runningCount) return false
  let calls = 0
  for (let i = 0; i < queue.length; i++) {
    const call = queue[i]!.call
    if (call.status !== "finishing" || call.counted !== true) return false
    let seen = false
    for (let j = 0; j < i; j++) if (queue[j]!.call === call) seen = true
    if (!seen) calls++
  }
  return calls === coordinator.runningCount
}

/** How far apart calls may be admitted and still count as started together (C4d, real clock). */
export const gatherWindow = Duration.millis(25)
const windowMillis = Duration.toMillis(gatherWindow)

/**
 * How long the coordinator waits for the next of those calls to end (their ends are further apart
 * than their starts: a durable call records itself before its tool runs).
 */
export const siblingWait = Duration.millis(200)

/** Waits while running calls started together with a queued item's call go on (each within the window). */
export const awaitSiblings = (coordinator: Coordinator): Effect.Effect<void> => {
  const step: Effect.Effect<void> = Effect.suspend(() => {
    if (!hasSiblings(coordinator)) return Effect.void
    const ended = Effect.callback<boolean>((resume) => {
      coordinator.callEnded = () => resume(Effect.succeed(true))
      return Effect.sync(() => {
        coordinator.callEnded = undefined
      })
    })
    return Effect.flatMap(
      Effect.raceFirst(ended, Effect.as(Effect.sleep(siblingWait), false)),
      (again) => again ? step : Effect.void
    )
  })
  return step
}

/**
 * Whether a call admitted within the window of a queued item's call is running, apart from the
 * queued items' own calls.
 */
export const hasSiblings = (coordinator: Coordinator): boolean => {
  const running = coordinator.running
  if (running.size === 0) return false
  const own = new Set<Item["call"]>()
  const starts = new Set<number>()
  for (const item of coordinator.queue) {
    const startedAt = item.call.startedAt
    if (startedAt === undefined) continue
    starts.add(Math.floor(startedAt))
    if (item.call.counted === true) own.add(item.call)
  }
  for (const start of starts) {
    let count = 0
    for (let at = start - windowMillis; at <= start + windowMillis; at++) count += running.get(at) ?? 0
    if (count === 0) continue
    let mine = 0
    for (const call of own) if (Math.abs(Math.floor(call.startedAt!) - start) <= windowMillis) mine++
    if (count > mine) return true
  }
  return false
}

/** A clock a test moves by hand (effect's `TestClock`): it has `adjust` and `withLive`. */
export const isTestClock = (clock: Clock.Clock): clock is TestClock.TestClock =>
  typeof (clock as Partial<TestClock.TestClock>).adjust === "function" &&
  typeof (clock as Partial<TestClock.TestClock>).withLive === "function"
