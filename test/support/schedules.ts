/**
 * Schedules for the race and property tests: the scheduler yield budgets they run under, and ways
 * to let every other fiber run without moving the clock.
 *
 * `References.MaxOpsBeforeYield` is how many run-loop steps a fiber takes before it yields to the
 * scheduler: 1 yields before every step, 2048 is Effect's default. A race that hides at one budget
 * shows at another, so each race test runs under every budget of `yieldSettings`.
 *
 * Two tiers run the same tests: `npm test` (quick) runs each race test under three budgets (1, a
 * middle one and 2048); `npm run test:explore` (`exploring`) runs them under the full list, and the
 * seeded property tests with more seeds; in the quick tier the durable toolset's race tests run
 * under one budget (`yieldsFor`). Set `TEST_YIELDS` (comma-separated) to run other budgets.
 */
import { Effect, Fiber } from "effect"
import { type Kind, quickRanIt, settle } from "./toolsets.ts"

/**
 * Whether this is the explore tier (`npm run test:explore`, which sets `TEST_TIER=explore`): long
 * explorations (every yield budget, many seeds) run there; `npm test` runs a quick sample of them.
 */
export const exploring: boolean = process.env["TEST_TIER"] === "explore"

/** Every yield budget the explore tier runs. */
export const allYieldSettings: ReadonlyArray<number> = [1, 2, 3, 5, 16, 64, 2048]

/** The budgets of the quick tier: the extremes and one in the middle. */
export const quickYieldSettings: ReadonlyArray<number> = [1, 16, 2048]

/** The yield budgets every race and property test runs under (`TEST_YIELDS` picks others). */
export const yieldSettings: ReadonlyArray<number> = process.env["TEST_YIELDS"] !== undefined
  ? process.env["TEST_YIELDS"].split(",").map((s) => Number(s.trim()))
  : exploring
  ? allYieldSettings
  : quickYieldSettings

/**
 * The yield budgets a race test runs under for `kind`. The durable toolset's tests run a store
 * (PGlite) and take ten times the in-memory ones' time: in the quick tier they run under Effect's
 * default budget only (the in-memory ones under the quick list); the explore tier runs the durable
 * kind under every budget, and the in-memory kind under the budgets the quick tier did not run it
 * under (where the quick tier ran the file: `quickRanIt`); `TEST_YIELDS` sets the budgets of both.
 */
export const yieldsFor = (kind: Kind): ReadonlyArray<number> =>
  process.env["TEST_YIELDS"] !== undefined
    ? yieldSettings
    : !exploring
    ? kind.durable ? [2048] : quickYieldSettings
    : !kind.durable && quickRanIt()
    ? allYieldSettings.filter((n) => !quickYieldSettings.includes(n))
    : allYieldSettings

/** The explore tier's count where it is set, else the quick tier's (for seeded runs). */
export const byTier = (quick: number, explore: number): number => exploring ? explore : quick

/** Lets every other fiber run until it waits; the clock does not move. More turns than `settle` (low yield budgets need them). */
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
