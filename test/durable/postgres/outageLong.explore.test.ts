/**
 * A reply's save on PostgreSQL (issue 18, defect 2) failing for longer than its 30 s window, and
 * failing for a reason that does not pass.
 *
 * - The runner keeping its shard locks, new connections refused for 32 s as a step ends: the
 *   step's result is saved again all along; an error says once that the save has failed for 30 s,
 *   and the call ends once the database answers.
 * - The save failing for a reason that does not pass (a statement refused: here a trigger raising
 *   "permission denied"): it is not tried again by the store, only by effect/cluster (5 times
 *   about 200 ms apart), and no error says the database is unreachable.
 * - The server refusing the save for a state of its own that passes (disk full, raised here by a
 *   trigger) for 5 s: the save is tried again and the call ends. effect/cluster's 5 tries in
 *   about a second used to be all: the step's request stayed "being processed" and the call
 *   "running" for the runner's life.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { ChatContext } from "effect-async-toolset"
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"
import { TestSession } from "effect-async-toolset/testing"
import { eventually } from "../../support/durable.ts"
import { captureLogs } from "../../support/reliability.ts"
import { callsEnded, callStatuses, gatedSteps, stepStarted } from "../../support/outage.ts"
import * as TcpProxy from "../../support/tcpProxy.ts"
import { freePort, freshDatabase, testPgUrl } from "../pgDatabase.ts"

// Its second step ends (its result cannot be saved) once the fault has begun.
const steps3 = gatedSteps("outage_long")
const toolset = steps3.toolset

/** A runner through a proxy (its logs captured), a client on the database; `fault` begins once the second step started. */
const withStepFault = (
  fault: (proxy: TcpProxy.TcpProxy, sql: SqlClient) => Effect.Effect<void>,
  then: (logs: ReturnType<typeof captureLogs>, proxy: TcpProxy.TcpProxy, sql: SqlClient) => Effect.Effect<void>
) =>
  Effect.scoped(Effect.gen(function*() {
    steps3.reset()
    const logs = captureLogs()
    const url = yield* freshDatabase("eat_outage")
    const target = new URL(url)
    const proxy = yield* TcpProxy.make({ host: target.hostname, port: Number(target.port) })
    yield* Layer.build(DurableToolset.layer(toolset).pipe(
      Layer.provideMerge(DurablePostgres.layer({
        url: Redacted.make(TcpProxy.through(url, proxy)),
        runner: { host: "127.0.0.1", port: yield* freePort },
        pollInterval: "100 millis",
        // the runner is not held dead while its heartbeats fail
        shardingConfig: { shardLockExpiration: "90 seconds" }
      })),
      Layer.provide(logs.layer)
    ))
    const client = DurablePostgres.layer({ url: Redacted.make(url), pollInterval: "100 millis" })
    yield* Effect.gen(function*() {
      const made = yield* DurableToolset.make(toolset)
      yield* made.execute(yield* ChatContext.functionCall({ callId: "c1", name: "gated", arguments: "{}" }))
      const sql = yield* SqlClient
      yield* stepStarted(sql, "step2")
      yield* fault(proxy, sql)
      yield* steps3.open
      yield* then(logs, proxy, sql)
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.mergeAll(DurableChat.layer({ sessionId: "s1" }), TestSession.layer).pipe(Layer.provideMerge(client)))
    )
  }))


/** A trigger that makes every insert into cluster_replies fail with `sqlState`. */
const refuseReplies = (sql: SqlClient, sqlState: string, message: string) =>
  Effect.orDie(Effect.gen(function*() {
    yield* sql.unsafe(`CREATE FUNCTION refuse_replies() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION '${message}' USING ERRCODE = '${sqlState}'; END $$`)
    yield* sql.unsafe(`CREATE TRIGGER refuse_replies BEFORE INSERT ON cluster_replies FOR EACH ROW EXECUTE FUNCTION refuse_replies()`)
  }))

describe.skipIf(testPgUrl === undefined)("DurablePostgres: a step's result that cannot be saved", () => {
  it.live("new connections refused for 32 s as a step ends: an error once past 30 s, and the call ends once the database answers", () =>
    withStepFault(
      (proxy) =>
        Effect.sync(() => {
          proxy.refuse("close")
          proxy.dropAllBut("pg_try_advisory_lock")
        }),
      (logs, proxy, sql) =>
        Effect.gen(function*() {
          yield* eventually(Effect.sync(() => logs.find(["Error"], "has not been saved").length > 0), "the error", 45)
          // still tried after the error
          const refused = proxy.refused()
          yield* eventually(Effect.sync(() => proxy.refused() > refused), "tried again after the error")
          yield* Effect.sleep("2 seconds")
          proxy.accept()
          yield* callsEnded(sql, "the call ended", 30)
          assert.deepStrictEqual(yield* callStatuses(sql), ["done"])
          assert.lengthOf(logs.find(["Error"], "has not been saved"), 1, "told once")
        })
    ), 90_000)

  it.live("the save refused by the database (permission denied): not tried again by the store", () =>
    withStepFault(
      (_, sql) => refuseReplies(sql, "42501", "permission denied for table cluster_replies"),
      (logs) =>
        Effect.gen(function*() {
          const saves = () => logs.find(["Warn"], "saving effect/cluster's reply to request", "AuthorizationError").length
          yield* eventually(Effect.sync(() => saves() > 0), "the save failed")
          // effect/cluster's own tries (about 200 ms apart), then no more
          yield* Effect.sleep("3 seconds")
          const tried = saves()
          yield* Effect.sleep("3 seconds")
          assert.strictEqual(saves(), tried, "no longer tried")
          assert.isAtMost(tried, 5)
          assert.lengthOf(logs.find(["Error"], "has not been saved"), 0)
        })
    ), 60_000)

  it.live("the server refusing the save for 5 s as its disk is full: the save is tried again, and the call ends", () =>
    withStepFault(
      (_, sql) => refuseReplies(sql, "53100", "could not extend file: No space left on device"),
      (logs, _, sql) =>
        Effect.gen(function*() {
          const saves = () => logs.find(["Warn"], "saving effect/cluster's reply to request", "53100").length
          yield* eventually(Effect.sync(() => saves() > 0), "the save failed")
          // longer than effect/cluster's own tries
          yield* Effect.sleep("4 seconds")
          yield* Effect.orDie(sql.unsafe("DROP TRIGGER refuse_replies ON cluster_replies"))
          yield* callsEnded(sql, "the call ended", 30)
          assert.deepStrictEqual(yield* callStatuses(sql), ["done"])
        })
    ), 60_000)
})
