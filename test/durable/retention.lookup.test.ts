/**
 * Retention deletes a finished call's stored messages by their entity (effect/cluster's
 * `clearAddress`: `WHERE entity_type = … AND entity_id = …`), which effect/cluster's own indexes
 * do not serve (by shard, by request, and by entity type, which every call of a toolset shares):
 * each call cleared read every stored message
 * (measured on PostgreSQL: 100 calls cleared in 0.6 s with 12,000 stored messages, 18.8 s with
 * 600,000; 0.2 s with an index). With retention on, the store has an index that serves it.
 */
import { assert, describe, it } from "@effect/vitest"
import { mkdtempSync } from "node:fs"
import { join } from "node:path"
import { Effect, Layer } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { DurableStore } from "effect-async-toolset/durable"
import { testTmp } from "../support/tmp.ts"

describe("DurableStore retention: finding a call's stored messages", () => {
  it.live("with retention on, the deletion of a call's stored messages is served by an index", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient
      yield* sql`SET enable_seqscan = off`
      const plan = yield* sql.unsafe<Record<string, string>>(
        `EXPLAIN DELETE FROM cluster_messages WHERE entity_type = 'Workflow/effect-async-toolset/t' AND entity_id = 'e1'`
      )
      const text = plan.map((row) => Object.values(row)[0]).join("\n")
      // found by entity id, not by reading every stored message of the toolset (they share one entity type)
      assert.match(text, /Index Cond: .*entity_id/, text)
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.orDie(DurableStore.layerEmbedded({ dataDir: mkdtempSync(join(testTmp(), "eat-retention-")), retention: { maxAge: "7 days" } })))
    ), 120_000)
})
