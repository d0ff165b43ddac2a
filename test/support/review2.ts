/**
 * Helpers for the Review2 tests (the hot-path changes of 57c1ac9, b84cc45, 59a8349).
 *
 * Yield settings: Effect 4.1's run loop itself livelocks at `MaxOpsBeforeYield` 1 and 2 (even
 * `Effect.runPromise(Effect.sync(...))` never finishes: the fiber yields before its first op,
 * forever), so 3 is the lowest setting that can be tested.
 */
import { Effect, Fiber } from "effect"
import { settle } from "./toolsets.ts"

export const yieldSettings = [3, 4, 16, 2048] as const

/** Lets every other fiber run until it waits; the clock does not move. More turns than `settle` (low yield settings need them). */
export const settleLong: Effect.Effect<void> = Effect.gen(function*() {
  for (let i = 0; i < 300; i++) yield* Effect.yieldNow
  yield* settle
})

/**
 * Runs `effect` in the background; fails the test if it has not finished once every other fiber
 * had plenty of turns (the clock does not move). The fiber is left running (not awaited) if it
 * hangs, so an uninterruptible hang fails the test instead of hanging it.
 */
export const promptlyLong = <A, E>(effect: Effect.Effect<A, E>, what = "the effect"): Effect.Effect<A, E> =>
  Effect.gen(function*() {
    const fiber = yield* Effect.forkDetach(effect, { startImmediately: true })
    for (let i = 0; i < 300 && fiber.pollUnsafe() === undefined; i++) yield* Effect.yieldNow
    if (fiber.pollUnsafe() === undefined) yield* settle
    if (fiber.pollUnsafe() === undefined) {
      fiber.interruptUnsafe()
      return yield* Effect.die(new Error(`still waiting: ${what} did not return without the clock moving`))
    }
    return yield* Fiber.join(fiber)
  })
