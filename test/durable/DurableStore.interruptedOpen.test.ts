/**
 * A process killed while it copied the template into a new data folder leaves the copy under a
 * temporary name beside `<dataDir>/pglite` (`pglite.copying-<uuid>`, up to the template's size,
 * about 40 MB). The next open of the folder makes the database again, and removes what the killed
 * copy left: the data folder holds only the store.
 */
import { assert, describe, it } from "@effect/vitest"
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { Effect, Layer } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { DurableStore } from "effect-async-toolset/durable"
import { testTmp } from "../support/tmp.ts"

describe("DurableStore: a data folder whose first open was killed while copying the template", () => {
  it.live("the next open makes the database and removes the half copy", () =>
    Effect.gen(function*() {
      const dataDir = mkdtempSync(join(testTmp(), "eat-interrupted-"))
      // what a process killed in the middle of the copy leaves (its lock is a dead process's)
      const half = join(dataDir, "pglite.copying-5d2f1f0e-0000-4000-8000-000000000000")
      mkdirSync(join(half, "base", "1"), { recursive: true })
      writeFileSync(join(half, "PG_VERSION"), "17\n")
      writeFileSync(join(half, "base", "1", "1259"), Buffer.alloc(64 * 1024))

      yield* Effect.gen(function*() {
        const sql = yield* SqlClient
        yield* sql`SELECT 1`
      }).pipe(Effect.scoped, Effect.provide(Layer.orDie(DurableStore.layerEmbedded({ dataDir }))))

      assert.deepStrictEqual(readdirSync(dataDir), ["pglite"])
      rmSync(dataDir, { recursive: true, force: true })
    }), 120_000)
})
