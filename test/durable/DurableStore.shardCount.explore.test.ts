/**
 * Runners of two `shardsPerGroup` on one PostgreSQL database each read the stored messages of
 * their own shards, and could run a call twice (`DurablePostgres.defaultShardingConfig`): a runner
 * whose count is not the one the running runners started with refuses to start
 * (`ShardsPerGroupChanged`), whether or not any stored message has to move.
 */
import { assert, describe, it } from "@effect/vitest"
import { PgClient } from "@effect/sql-pg"
import { Effect, Exit, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"
import { eventually } from "../support/durable.ts"
import { freePort, freshDatabase, testPgUrl } from "./pgDatabase.ts"

describe("DurablePostgres: runners of another shardsPerGroup", () => {
  it.live.skipIf(testPgUrl === undefined)(
    "a runner of another shardsPerGroup does not start while a runner runs, even with no stored message to move",
    () =>
      Effect.scoped(Effect.gen(function*() {
        const url = Redacted.make(yield* freshDatabase("eat_shardcount"))
        const first = DurablePostgres.layer({ url, runner: { host: "127.0.0.1", port: yield* freePort } })
        // the first runner (16 shards, the default) runs on a database with no stored message
        yield* Layer.build(first)
        const admin = Layer.orDie(PgClient.layer({ url }))
        yield* eventually(
          Effect.provide(
            Effect.orDie(Effect.gen(function*() {
              const sql = yield* SqlClient
              const rows = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM cluster_runners
                WHERE healthy AND last_heartbeat > NOW() - INTERVAL '5 seconds'`
              return rows[0]!.n === 1
            })),
            admin
          ),
          "the first runner is registered",
          30
        )

        // a second runner with 8 shards: the two would each hold shards of their own count
        const second = DurablePostgres.layer({
          url,
          runner: { host: "127.0.0.1", port: yield* freePort },
          shardingConfig: { shardsPerGroup: 8 }
        })
        const started = yield* Effect.exit(Effect.scoped(Layer.build(second)))
        assert.isTrue(Exit.isFailure(started), "the runner of 8 shards started beside a running runner of 16")
        assert.include(String(Exit.isFailure(started) ? started.cause : ""), "ShardsPerGroupChanged")
      })),
    120_000
  )
})
