/**
 * Issue 17, trap 7: a stored cluster message names its shard (`default:<n>`, by `shardsPerGroup`),
 * and a runner reads only the shards it holds. A store made by an earlier version (effect/cluster's
 * 300 shards) keeps unprocessed messages of running calls in shards the new count (1 embedded,
 * 16 on PostgreSQL) does not have: they are moved to their new shards when the store opens, so the
 * calls still run. On PostgreSQL a runner refuses to move them while another runner is running.
 *
 * The PostgreSQL case (two runners, real-clock waits) runs in the explore tier only.
 */
import { assert, describe, it } from "@effect/vitest"
import { NodeClusterSocket } from "@effect/platform-node"
import { PgClient } from "@effect/sql-pg"
import { Effect, Exit, Layer, Option, Redacted } from "effect"
import * as ClusterWorkflowEngine from "effect/cluster/ClusterWorkflowEngine"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import * as SingleRunner from "effect/cluster/SingleRunner"
import * as Digest from "effect/crypto/Digest"
import { SqlClient } from "effect/sql/SqlClient"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import { dirname, join } from "node:path"
import { AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
import type { AsyncToolset } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset, PgliteClient } from "effect-async-toolset/durable"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"
import { TestSession } from "effect-async-toolset/testing"
import { eventually } from "../support/durable.ts"
import { freshDataDir } from "../support/pglite.ts"
import { exploring } from "../support/schedules.ts"
import { freePort, freshDatabase, testPgUrl } from "./pgDatabase.ts"

/**
 * Whether the tool waits forever (the store of the earlier version) or returns. Set before a
 * runner's layers are built: a stored running call resumes as soon as the toolset registers its
 * workflow, which can be before the test's body runs.
 */
const state = { waits: true, finished: [] as Array<string> }

const book = FunctionTool.make("book", { description: "Books", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    const { callId } = yield* AsyncRunContext.functionCall
    yield* AsyncRunContext.update("booking")
    if (state.waits) yield* Effect.never
    state.finished.push(callId)
    return `booked ${callId}`
  }))

const toolset = DurableToolset.define({ id: "reshard", tools: [book] })

type Store = Layer.Layer<DurableStore.DurableStore | WorkflowEngine | SqlClient, unknown>

/** Runs `body` with a toolset of session `sessionId` on `store` (built and closed around it). */
const withToolset = <A, E>(store: Store, sessionId: string, body: (made: AsyncToolset.AsyncToolset) => Effect.Effect<A, E, SqlClient>) =>
  Effect.gen(function*() {
    return yield* body(yield* DurableToolset.make(toolset))
  }).pipe(
    Effect.scoped,
    Effect.provide(
      Layer.mergeAll(DurableToolset.layer(toolset), DurableChat.layer({ sessionId }), TestSession.layer).pipe(
        Layer.provideMerge(store)
      )
    )
  )

/** With the store of the earlier version: two calls start, and are still running when it closes. */
const leaveRunningCalls = (store: Store, sessionId: string) =>
  Effect.suspend(() => {
    state.waits = true
    return withToolset(store, sessionId, (made) =>
      Effect.gen(function*() {
        for (const callId of ["c1", "c2"]) {
          yield* made.execute(yield* ChatContext.functionCall({ callId, name: "book", arguments: "{}" }))
        }
        const sql = yield* SqlClient
        return yield* sql<{ shard_id: string }>`SELECT shard_id FROM cluster_messages
          WHERE NOT processed AND entity_type = 'Workflow/effect-async-toolset/reshard'`
      }))
  })

/** With the store of this version: both calls run to their end, with nothing done but waiting. */
const finishCalls = (store: Store, sessionId: string) =>
  Effect.suspend(() => {
    // before the runner starts: the calls may resume while its layers are still being built
    state.waits = false
    return withToolset(store, sessionId, () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient
        yield* eventually(
          Effect.map(
            Effect.orDie(sql<{ n: number }>`SELECT count(*)::int AS n FROM async_toolset_call WHERE status = 'done'`),
            (rows) => Number(rows[0]!.n) === 2
          ),
          "both calls are done",
          30
        )
        return yield* sql<{ shard_id: string }>`SELECT DISTINCT shard_id FROM cluster_messages
          WHERE entity_type = 'Workflow/effect-async-toolset/reshard'`
      }))
  })

describe("DurableStore: stored messages of an earlier shard count", () => {
  it.live("embedded: running calls stored in shards other than 1 (300 shards) run after the store opens with one shard", () =>
    Effect.gen(function*() {
      state.finished = []
      const dataDir = dirname(yield* Effect.promise(() => freshDataDir()))
      // what layerEmbedded was before: SingleRunner with effect/cluster's 300 shards
      const earlier: Store = DurableStore.layer().pipe(
        Layer.provideMerge(ClusterWorkflowEngine.layer),
        Layer.provideMerge(
          SingleRunner.layer({ runnerStorage: "memory", shardingConfig: { shardsPerGroup: 300, entityTerminationTimeout: "1 second" } })
            .pipe(Layer.orDie)
        ),
        Layer.provide(Digest.layerWebCrypto),
        Layer.provideMerge(PgliteClient.layer({ dataDir: join(dataDir, "pglite") }))
      )
      const left = yield* leaveRunningCalls(earlier, "s1")
      assert.strictEqual(left.length, 2)
      assert.isTrue(left.some((row) => row.shard_id !== "default:1"), JSON.stringify(left))
      const shards = yield* finishCalls(DurableStore.layerEmbedded({ dataDir, pollInterval: "50 millis" }), "s1")
      assert.deepStrictEqual(state.finished.sort(), ["c1", "c2"])
      assert.deepStrictEqual(shards.map((row) => row.shard_id), ["default:1"])
    }), 120_000)

  it.live.skipIf(testPgUrl === undefined || !exploring)(
    "PostgreSQL: a runner refuses to move them while another runs; alone, it moves them (300 to 16 shards) and runs the calls",
    () =>
      Effect.scoped(Effect.gen(function*() {
        state.finished = []
        const url = Redacted.make(yield* freshDatabase("eat_reshard"))
        const runner = { host: "127.0.0.1", port: yield* freePort }
        // what DurablePostgres.layer was before: effect/cluster's SQL storage and 300 shards
        const earlier: Store = DurableStore.layer().pipe(
          Layer.provideMerge(ClusterWorkflowEngine.layer),
          Layer.provideMerge(NodeClusterSocket.layer({
            storage: "sql",
            shardingConfig: {
              shardsPerGroup: 300,
              entityTerminationTimeout: "1 second",
              runnerAddress: Option.some(RunnerAddress.make(runner.host, runner.port))
            }
          })),
          Layer.provideMerge(PgClient.layer({ url }))
        )
        const left = yield* leaveRunningCalls(earlier, "s1")
        assert.strictEqual(left.length, 2)
        const now = DurablePostgres.layer({ url, runner, pollInterval: "50 millis" })

        // another runner is running (its heartbeat is recent): this one does not start
        const admin = Layer.orDie(PgClient.layer({ url }))
        yield* Effect.provide(Effect.orDie(Effect.gen(function*() {
          const sql = yield* SqlClient
          yield* sql`INSERT INTO cluster_runners (address, runner, healthy, last_heartbeat) VALUES ('10.9.9.9:1', '{}', TRUE, NOW())`
        })), admin)
        const refused = yield* Effect.exit(Effect.scoped(Layer.build(now)))
        assert.isTrue(Exit.isFailure(refused))
        assert.include(String(Exit.isFailure(refused) ? refused.cause : ""), "ShardsPerGroupChanged")
        yield* Effect.provide(Effect.orDie(Effect.gen(function*() {
          const sql = yield* SqlClient
          yield* sql`DELETE FROM cluster_runners WHERE address = '10.9.9.9:1'`
        })), admin)

        // alone: the messages move to the shards of 16, and the calls run
        const shards = yield* finishCalls(now, "s1")
        assert.deepStrictEqual(state.finished.sort(), ["c1", "c2"])
        assert.isTrue(shards.every((row) => Number(row.shard_id.split(":")[1]) <= 16), JSON.stringify(shards))
      })),
    120_000
  )
})
