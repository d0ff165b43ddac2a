/**
 * The durable store: the data folder's lock file (one process at a time, a dead process's lock taken
 * over), and its tables made once however often the store is opened.
 */
import { assert, describe, it, layer } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { SqlClient } from "effect/sql"
import { spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"
import { DurableStore } from "effect-async-toolset/durable"
import { storeLayer } from "../support/durable.ts"
import { testTmp } from "../support/tmp.ts"

const newFolder = () => mkdtempSync(join(testTmp(), "eat-store-"))

describe("DurableStore lock file", () => {
  it.effect("a data folder is held by one opener at a time; the second is told who holds it", () =>
    Effect.gen(function*() {
      const dir = newFolder()
      yield* Effect.scoped(Effect.gen(function*() {
        yield* DurableStore.lockDataDir(dir)
        assert.match(readFileSync(join(dir, "LOCK"), "utf8"), new RegExp(`^${process.pid}@${hostname()}#`))
        const second = yield* Effect.exit(Effect.scoped(DurableStore.lockDataDir(dir)))
        assert.isTrue(Exit.isFailure(second))
        const error = yield* Effect.flip(Effect.scoped(DurableStore.lockDataDir(dir)))
        assert.strictEqual(error._tag, "StoreLocked")
        assert.include(error.message, `${process.pid}@${hostname()}`)
      }))
      // closed: the lock is gone, and the folder can be opened again
      assert.isFalse(existsSync(join(dir, "LOCK")))
      yield* Effect.scoped(DurableStore.lockDataDir(dir))
    }))

  it.effect("a lock left by a process that is gone (killed) is taken over", () =>
    Effect.gen(function*() {
      const dir = newFolder()
      const gone = spawnSync(process.execPath, ["-e", ""]).pid
      writeFileSync(join(dir, "LOCK"), `${gone}@${hostname()}`)
      yield* Effect.scoped(Effect.gen(function*() {
        yield* DurableStore.lockDataDir(dir)
        assert.match(readFileSync(join(dir, "LOCK"), "utf8"), new RegExp(`^${process.pid}@${hostname()}#`))
      }))
    }))

  it.effect("F5 a lock left by a dead process whose pid is now this process's own (pid 1 in a restarted container) is taken over", () =>
    Effect.gen(function*() {
      for (const left of [`${process.pid}@${hostname()}`, `${process.pid}@${hostname()}#a-process-before-this-one`]) {
        const dir = newFolder()
        writeFileSync(join(dir, "LOCK"), left)
        yield* Effect.scoped(Effect.gen(function*() {
          yield* DurableStore.lockDataDir(dir)
          assert.match(readFileSync(join(dir, "LOCK"), "utf8"), new RegExp(`^${process.pid}@${hostname()}#`))
          assert.notStrictEqual(readFileSync(join(dir, "LOCK"), "utf8"), left)
        }))
      }
    }))
})

layer(storeLayer, { timeout: "60 seconds", excludeTestServices: true })("DurableStore tables", (it) => {
  it.effect("are made once: opening the store again on the same database keeps what it holds", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`INSERT INTO async_toolset_item (session_id, item_id, created_at, item) VALUES ('kept', 'i1', 7, '{}')`
      yield* Effect.scoped(DurableStore.make())
      yield* Effect.scoped(DurableStore.make())
      const rows = yield* sql<{ created_at: number }>`SELECT created_at FROM async_toolset_item WHERE session_id = 'kept'`
      assert.deepStrictEqual(rows.map((r) => Number(r.created_at)), [7])
    }))
})
