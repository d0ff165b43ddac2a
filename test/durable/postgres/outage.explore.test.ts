/**
 * Issue 18, defect 2: a brief outage of the database while calls wait between their steps, the
 * runner keeping its shard locks (effect/cluster's default `shardLockExpiration`, 35 s, is longer
 * than the outage). The calls in flight must go on once the database is reachable again, never
 * stay "running" for good. The runner reaches the database through a proxy; the agent's process is
 * a client, on its own connections.
 *
 * - Every open connection dropped and new ones refused for 3 s (closed, or answered as a server
 *   starting up does): the runner's shard-lock session dies with them, so it gives its shards up
 *   and takes them again, and its calls start over from their stored steps. This passed before the
 *   fix too.
 * - The runner's pool losing its connections while its shard-lock session stays open, new ones
 *   refused for 3 s just as a step ends: the step's result could not be saved. effect/cluster
 *   tries a reply's save 5 times in about a second, then drops it without a word; the step's
 *   request stays "being processed" for the runner's life and the call waited for its result for
 *   good (it stayed "running" with nothing logged; only restarting the runner resumed it). Now the
 *   store saves a reply again while the database fails for a passing reason (for up to 30 s).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Option, Redacted, Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"
import { TestSession } from "effect-async-toolset/testing"
import { eventually } from "../../support/durable.ts"
import { callsEnded, callStatuses, gatedSteps, proxiedDatabase, runnerThrough, savesRefused, stepStarted } from "../../support/outage.ts"
import { testPgUrl } from "../pgDatabase.ts"

const steps = FunctionTool.make("steps", { description: "Takes steps", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    for (let i = 1; i <= 12; i++) {
      yield* DurableToolset.activity(`step${i}`, Effect.void)
      yield* AsyncRunContext.update(`step ${i}`)
      yield* Effect.sleep("300 millis")
    }
    return "done"
  }))

const toolset = DurableToolset.define({ id: "outage", tools: [steps] })

const callIds = ["c1", "c2", "c3", "c4", "c5", "c6"]

const outage = (how: "close" | "fatal") =>
  Effect.scoped(Effect.gen(function*() {
    const { url, proxy } = yield* proxiedDatabase
    yield* Layer.build(yield* runnerThrough(url, proxy, toolset))
    const client = DurablePostgres.layer({ url: Redacted.make(url), pollInterval: "100 millis" })
    yield* Effect.gen(function*() {
      const made = yield* DurableToolset.make(toolset)
      for (const callId of callIds) {
        yield* made.execute(yield* ChatContext.functionCall({ callId, name: "steps", arguments: "{}" }))
      }
      // the calls are between their steps
      yield* Effect.sleep("1 second")
      proxy.refuse(how)
      proxy.dropAll()
      yield* Effect.sleep("3 seconds")
      proxy.accept()
      const sql = yield* SqlClient
      yield* eventually(Effect.map(callStatuses(sql), (all) => all.length === callIds.length && !all.includes("running")), "every call ended", 90)
      assert.deepStrictEqual(yield* callStatuses(sql), callIds.map(() => "done"))
      assert.isAbove(proxy.refused(), 0)
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.mergeAll(DurableChat.layer({ sessionId: "s1" }), TestSession.layer).pipe(Layer.provideMerge(client)))
    )
  }))

// Its second step ends (its result is saved) once the outage has begun.
const steps3 = gatedSteps("outage_locks_kept")
const gatedToolset = steps3.toolset

/** The runner's pool connections dropped, its shard-lock session kept, new connections refused for 3 s as a step ends. */
const outageLocksKept = (how: "close" | "fatal") =>
  Effect.scoped(Effect.gen(function*() {
    steps3.reset()
    const { url, proxy } = yield* proxiedDatabase
    yield* Layer.build(yield* runnerThrough(url, proxy, gatedToolset))
    const client = DurablePostgres.layer({ url: Redacted.make(url), pollInterval: "100 millis" })
    yield* Effect.gen(function*() {
      const made = yield* DurableToolset.make(gatedToolset)
      const first = yield* made.execute(yield* ChatContext.functionCall({ callId: "c1", name: "gated", arguments: "{}" }))
      assert.include(first.output, "step 1")
      const sql = yield* SqlClient
      // the call waits in its second step
      yield* stepStarted(sql, "step2")
      proxy.refuse(how)
      // effect/cluster's shard locks are held by a session of their own (pg_try_advisory_lock)
      assert.isAbove(proxy.dropAllBut("pg_try_advisory_lock"), 0)
      yield* steps3.open
      yield* Effect.sleep("3 seconds")
      proxy.accept()
      yield* callsEnded(sql, "the call ended", 40)
      assert.deepStrictEqual(yield* callStatuses(sql), ["done"])
      assert.isAbove(proxy.refused(), 0)
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.mergeAll(DurableChat.layer({ sessionId: "s1" }), TestSession.layer).pipe(Layer.provideMerge(client)))
    )
  }))

/**
 * The runner shut down while a step's result cannot be saved (new connections refused): its close
 * ends (the save stops trying), leaving the step's request unprocessed for the next runner; a new
 * runner (in the same process, once the database answers) runs the step again and the call ends.
 */
const closedInOutage = Effect.scoped(Effect.gen(function*() {
  steps3.reset()
  const { url, proxy } = yield* proxiedDatabase
  const runner = runnerThrough(url, proxy, gatedToolset)
  const runnerScope = yield* Scope.make()
  yield* Layer.buildWithScope(yield* runner, runnerScope)
  const client = DurablePostgres.layer({ url: Redacted.make(url), pollInterval: "100 millis" })
  yield* Effect.gen(function*() {
    const made = yield* DurableToolset.make(gatedToolset)
    yield* made.execute(yield* ChatContext.functionCall({ callId: "c1", name: "gated", arguments: "{}" }))
    const sql = yield* SqlClient
    yield* stepStarted(sql, "step2")
    // the step's result is being saved, and refused
    yield* savesRefused(proxy, steps3.open)
    const closed = yield* Effect.forkChild(Scope.close(runnerScope, Exit.void))
    const exit = yield* Fiber.await(closed).pipe(Effect.timeoutOption("40 seconds"))
    assert.isTrue(Option.isSome(exit), "the runner's close ended during the outage")
    proxy.accept()
    // the step's request is left unprocessed in storage: the runner that holds its shard next runs it
    const steps = yield* Effect.orDie(
      sql<{ processed: boolean }>`SELECT processed FROM cluster_messages WHERE message_id LIKE ${"%/activity/step/step2/%"}`
    )
    assert.deepStrictEqual(steps.map((row) => row.processed), [false])
    assert.deepStrictEqual(yield* callStatuses(sql), ["running"])
    const next = yield* Scope.make()
    yield* Layer.buildWithScope(yield* runner, next)
    // (a runner closed in an outage may not have unregistered nor freed its shard locks: the next
    // one takes its shards once they expire, effect/cluster's shardLockExpiration, 35 s here)
    yield* callsEnded(sql, "the call ended on the next runner", 90)
    assert.deepStrictEqual(yield* callStatuses(sql), ["done"])
    yield* Scope.close(next, Exit.void)
  }).pipe(
    Effect.scoped,
    Effect.provide(Layer.mergeAll(DurableChat.layer({ sessionId: "s1" }), TestSession.layer).pipe(Layer.provideMerge(client)))
  )
}))

describe.skipIf(testPgUrl === undefined)("DurablePostgres: a brief outage of the database", () => {
  it.live("connections dropped and new ones refused for 3 s while calls wait between steps: every call goes on to its end", () =>
    outage("close"), 150_000)

  it.live("connections dropped and the server answering 'starting up' for 3 s: every call goes on to its end", () =>
    outage("fatal"), 150_000)

  it.live("the runner keeping its shard locks, its pool's connections dropped and new ones refused for 3 s as a step ends: the call goes on to its end", () =>
    outageLocksKept("close"), 90_000)

  it.live("the runner keeping its shard locks, the server answering 'starting up' to new connections for 3 s as a step ends: the call goes on to its end", () =>
    outageLocksKept("fatal"), 90_000)

  it.live("the runner shut down while a step's result cannot be saved: its close ends, and the next runner ends the call", () =>
    closedInOutage, 150_000)
})
