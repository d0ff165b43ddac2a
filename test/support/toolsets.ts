/**
 * The two toolsets every behaviour test runs on: the in-memory one (`AsyncToolset.make`) and the
 * durable one (`DurableToolset.define` + `layer` + `make`, on effect/workflow's in-memory engine
 * and an embedded PGlite store shared by the test file). A test is written once, against a
 * `Kind` (the quick tier runs the in-memory kind, the explore tier both: see `kinds`):
 *
 * ```ts
 * forEachKind("B2 the first update completes the call", (kind) => {
 *   it.effect("...", () =>
 *     Effect.gen(function*() {
 *       const toolset = yield* kind.make({ id: "travel", tools: [bookFlight] })
 *       yield* kind.advance("1 second") // the test clock, then everything that follows from it
 *     }).pipe(kind.provide(TestSession.layer)))
 * })
 * ```
 *
 * `advance` moves the test clock from one sleep to the next, letting everything run in between
 * (fibers, and the durable store's statements, which a test clock knows nothing of); `settle`
 * lets everything run without moving the clock. Neither sleeps.
 */
import { beforeEach, describe, expect } from "@effect/vitest"
import type { PGliteInterface } from "@electric-sql/pglite"
import { Duration, Effect, Layer, ManagedRuntime } from "effect"
import { Scope } from "effect"
import type { SqlClient } from "effect/sql/SqlClient"
import { TestClock } from "effect/testing"
import * as WorkflowEngine from "effect/workflow/WorkflowEngine"
import type { AgentSession, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { AsyncToolset } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset, PgliteClient } from "effect-async-toolset/durable"
import { freshDataDir } from "./pglite.ts"

/** What a toolset is made over in a test: the session, plus what its kind needs. */
export interface Kind {
  /** `in memory` or `durable`, as the test names say. */
  readonly name: "in memory" | "durable"
  readonly durable: boolean
  /** Makes a toolset on the test's session (its scope closes it). */
  readonly make: <const Tools extends ReadonlyArray<FunctionTool.Any>>(
    options: AsyncToolset.Options<Tools>
  ) => Effect.Effect<
    AsyncToolset.AsyncToolset,
    never,
    Scope.Scope | AgentSession.AgentSession | Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext.AsyncRunContext> | Extra
  >
  /** Lets every fiber (and every store statement) run until nothing is left to do; the clock does not move. */
  readonly settle: Effect.Effect<void>
  /** Moves the test clock by `duration`, sleep by sleep, settling at each. */
  readonly advance: (duration: Duration.Input) => Effect.Effect<void>
  /** Provides `session` (a session layer) and what the kind needs besides, to a test. */
  readonly provide: <ROut, E>(
    session: Layer.Layer<ROut, E>
  ) => <A, E2, R>(effect: Effect.Effect<A, E2, R>) => Effect.Effect<A, E | E2, Exclude<R, ROut | Extra | Scope.Scope>>
}

/** What the durable kind adds to a test's context. */
export type Extra = WorkflowEngine.WorkflowEngine | DurableChat.DurableChat | DurableStore.DurableStore | SqlClient

// --- settling ------------------------------------------------------------------------------------

/** Turns of the scheduler that let every runnable fiber run (the clock does not move). */
const yields = (n: number): Effect.Effect<void> =>
  Effect.suspend(() => {
    let effect: Effect.Effect<void> = Effect.void
    for (let i = 0; i < n; i++) effect = Effect.andThen(effect, Effect.yieldNow)
    return effect
  })

/** A store's statements in flight, and a way to wait until there are none. */
export interface Tracker {
  pending: number
  /** Statements started so far. */
  started: number
  readonly idle: () => Promise<void>
}

const makeTracker = (): Tracker => {
  const waiters: Array<() => void> = []
  const tracker: Tracker & { done: () => void } = {
    pending: 0,
    started: 0,
    idle: () => tracker.pending === 0 ? Promise.resolve() : new Promise((resolve) => waiters.push(resolve)),
    done: () => {
      if (--tracker.pending === 0) for (const wake of waiters.splice(0)) wake()
    }
  }
  return tracker
}

/** Which statements the durable kind's store refuses now (a test's fault; none by default). */
let refusing: ((sql: string) => boolean) | undefined

/**
 * Makes the durable kind's store refuse (fail) the statements `refuse` picks, for the effect's
 * scope: a store that fails for a while, for one kind of record. (Retried statements are tried
 * again as the test clock moves.)
 */
export const refuseStatements = (refuse: (sql: string) => boolean): Effect.Effect<void, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      refusing = refuse
    }),
    () =>
      Effect.sync(() => {
        refusing = undefined
      })
  )

/** PGlite whose every statement is counted while it runs. */
const tracked = (pglite: PGliteInterface, tracker: Tracker & { readonly done?: () => void }): PGliteInterface =>
  new Proxy(pglite, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver)
      if (property !== "query" && property !== "exec" && property !== "transaction") return value
      return (...args: Array<unknown>) => {
        if (refusing !== undefined && typeof args[0] === "string" && refusing(args[0])) {
          return Promise.reject(new Error("the store refused this statement (a test's fault)"))
        }
        tracker.pending++
        tracker.started++
        const done = (tracker as unknown as { done: () => void }).done
        return (value as (...args: Array<unknown>) => Promise<unknown>).apply(target, args).finally(done)
      }
    }
  })

const settleWith = (tracker: Tracker | undefined): Effect.Effect<void> =>
  Effect.gen(function*() {
    // Quiet: a round of scheduler turns in which no statement ran or started, twice in a row.
    let quiet = 0
    let seen = tracker?.started ?? 0
    for (let round = 0; round < 10_000; round++) {
      yield* yields(20)
      if (tracker === undefined) return
      if (tracker.pending === 0) {
        const started = tracker.started
        quiet = started === seen ? quiet + 1 : 0
        seen = started
        if (quiet >= 2) return
      } else {
        quiet = 0
        yield* Effect.promise(() => tracker.idle())
      }
    }
    return yield* Effect.die(new Error("the toolset never settled: its fibers or its store kept working"))
  })

/** The test clock's sleeps, soonest last (the test clock keeps them so). */
const nextSleep = (clock: TestClock.TestClock): number | undefined => {
  const sleeps = (clock as unknown as { readonly sleeps: ReadonlyArray<{ readonly timestamp: number }> }).sleeps
  return sleeps.length === 0 ? undefined : sleeps[sleeps.length - 1]!.timestamp
}

const advanceWith = (settle: Effect.Effect<void>) => (duration: Duration.Input): Effect.Effect<void> =>
  TestClock.testClockWith((clock) =>
    Effect.gen(function*() {
      const target = clock.currentTimeMillisUnsafe() + Duration.toMillis(Duration.fromInputUnsafe(duration))
      for (let step = 0; step < 100_000; step++) {
        yield* settle
        const now = clock.currentTimeMillisUnsafe()
        const next = nextSleep(clock)
        if (next === undefined || next > target) {
          if (target > now) yield* clock.adjust(target - now)
          return yield* settle
        }
        yield* clock.adjust(Math.max(0, next - now))
      }
      return yield* Effect.die(new Error("the clock never got there: sleeps kept being added at the same instant"))
    })
  )

// --- the kinds -----------------------------------------------------------------------------------

const memorySettle = settleWith(undefined)

/**
 * The kind of the test running now (tests of a file run one after the other): what `settle`,
 * `promptly` and the other helpers of `support/` wait for.
 */
export let current: Kind

const running = (kind: Kind) =>
  Effect.sync(() => {
    current = kind
  })

/** The in-memory toolset. */
export const memory: Kind = {
  name: "in memory",
  durable: false,
  make: (options) => AsyncToolset.make(options),
  settle: memorySettle,
  advance: advanceWith(memorySettle),
  provide: (session) => (effect) => Effect.andThen(running(memory), Effect.provide(effect, session)) as never
}
current = memory

let sessions = 0

/** Closes the file's store once its tests are done (`closeFileStore`). */
let disposeStore: () => Promise<void> = () => Promise.resolve()

/**
 * The durable toolset: the store (PGlite, in a copy of the template folder) is opened once per
 * test file, at its first durable test; each test gets a new session and workflow engine.
 */
const makeDurable = (): Kind => {
  const tracker = makeTracker()
  let runtime: ManagedRuntime.ManagedRuntime<DurableStore.DurableStore | SqlClient, unknown> | undefined
  const store = () => {
    if (runtime === undefined) {
      runtime = ManagedRuntime.make(
        Layer.unwrap(Effect.gen(function*() {
          const dataDir = yield* Effect.promise(() => freshDataDir())
          const pglite = yield* Effect.acquireRelease(
            Effect.promise(async () => {
              const { PGlite } = await import("@electric-sql/pglite")
              const opened = new PGlite(dataDir)
              await opened.waitReady
              return opened
            }),
            (opened) => Effect.promise(() => opened.close())
          )
          return DurableStore.layer({ pollInterval: "1 minute" }).pipe(
            Layer.provideMerge(PgliteClient.layerFromPglite(tracked(pglite, tracker)))
          )
        }))
      )
    }
    return runtime
  }
  const settle = settleWith(tracker)
  /** The scope of the test running now, where the toolsets' workflows are registered. */
  let runners: Scope.Scope | undefined
  disposeStore = () => runtime?.dispose() ?? Promise.resolve()
  const kind: Kind = {
    name: "durable",
    durable: true,
    make: (options) =>
      Effect.gen(function*() {
        const definition = DurableToolset.define(options)
        // Its workflow is registered for the whole test (the runner's lifetime), not the toolset's:
        // closing a durable toolset leaves its calls running.
        yield* Layer.build(DurableToolset.layer(definition)).pipe(Scope.provide(runners!))
        return yield* DurableToolset.make(definition)
      }) as never,
    settle,
    advance: advanceWith(settle),
    provide: (session) => (effect) =>
      Effect.flatMap(Effect.andThen(running(kind), Effect.promise(() => store().context())), (context) =>
        Effect.scoped(Effect.flatMap(Effect.scope, (scope) => {
          runners = scope
          return Effect.provide(
            effect,
            Layer.mergeAll(
              session,
              WorkflowEngine.layerMemory,
              DurableChat.layer({ sessionId: `t${sessions++}` }).pipe(Layer.orDie)
            ).pipe(Layer.provideMerge(Layer.succeedContext(context)))
          )
        }))) as never
  }
  return kind
}

/** Lets every fiber of the test (and its kind's store) run until nothing is left to do; the clock does not move. */
export const settle: Effect.Effect<void> = Effect.suspend(() => current.settle)

/** Moves the test clock by `duration`, sleep by sleep, settling at each (for the test's kind). */
export const advance = (duration: Duration.Input): Effect.Effect<void> => Effect.suspend(() => current.advance(duration))


let durableKind: Kind | undefined

/** The durable toolset (its store opened at the file's first durable test). */
export const durable = (): Kind => durableKind ??= makeDurable()

/**
 * Closes the durable kind's store, and forgets the kind, once a test file is done (test/support/perFile.ts
 * calls it after each file): the test files of a worker share this module (vitest's `isolate: false`),
 * and each file gets its own store.
 */
export const closeFileStore = async (): Promise<void> => {
  refusing = undefined
  const dispose = disposeStore
  disposeStore = () => Promise.resolve()
  durableKind = undefined
  current = memory
  await dispose()
}

/**
 * The kinds the tests of `forEachKind` run on. The explore tier (`npm run test:explore`) runs both,
 * in-memory first; the quick tier (`npm test`) the in-memory one only: the durable one runs a store
 * (PGlite) and takes about ten times as long, and the durable toolset's own behaviour (its store,
 * restarts, closing) is tested in the quick tier by test/durable/. `TOOLSET_KINDS=memory`,
 * `durable` or `both` picks in either tier (to look at one quickly, or to run a test against code
 * that has only one).
 */
export const kinds = (): ReadonlyArray<Kind> => {
  const only = process.env.TOOLSET_KINDS ?? (process.env.TEST_TIER === "explore" ? "both" : "memory")
  return only === "memory" ? [memory] : only === "durable" ? [durable()] : [memory, durable()]
}

/**
 * Whether the explore tier runs the test file being collected after the quick tier ran it: a file
 * of both tiers (not a `*.explore.test.ts`), in the explore tier, with no `TOOLSET_KINDS` or
 * `TEST_YIELDS` asking for something else. The explore tier then runs only what the quick tier did
 * not: the durable kind, and the in-memory kind under the budgets of `yieldsFor` the quick tier left
 * out (test/support/schedules.ts).
 */
export const quickRanIt = (): boolean =>
  process.env.TEST_TIER === "explore" && process.env.TOOLSET_KINDS === undefined && process.env["TEST_YIELDS"] === undefined &&
  !(expect.getState().testPath ?? "").endsWith(".explore.test.ts")

/**
 * A `describe` per kind: `name (in memory)`, `name (durable)`. Where the quick tier ran the file
 * (`quickRanIt`), the explore tier skips the in-memory tests that do not run under a yield budget:
 * the quick tier ran them, the same.
 */
export const forEachKind = (name: string, body: (kind: Kind) => void): void => {
  for (const kind of kinds()) {
    describe(`${name} (${kind.name})`, () => {
      if (!kind.durable && quickRanIt()) {
        beforeEach((context) => {
          // the budget is in the test's name or in one of its describes'
          if (!/MaxOpsBeforeYield \d+/.test(context.task.fullTestName)) context.skip("run by the quick tier (npm test)")
        })
      }
      body(kind)
    })
  }
}
