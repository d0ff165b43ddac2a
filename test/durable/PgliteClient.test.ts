/**
 * The PGlite client: effect's `SqlClient` on PGlite's single session. Statements and transactions
 * take turns on the session, errors are classified, and the data stays in its folder.
 */
import { assert, describe, it, layer } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Layer } from "effect"
import { SqlClient } from "effect/sql"
import { existsSync, mkdtempSync } from "node:fs"
import { join } from "node:path"
import { PgliteClient } from "effect-async-toolset/durable"
import { freshDataDir } from "../support/pglite.ts"
import { testTmp } from "../support/tmp.ts"

const clientLayer = Layer.unwrap(Effect.promise(() => freshDataDir()).pipe(Effect.map((dataDir) => PgliteClient.layer({ dataDir }))))

const counter = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const name = `t_${Math.random().toString(36).slice(2, 10)}`
  yield* sql`CREATE TABLE ${sql(name)} (id TEXT PRIMARY KEY, n INT NOT NULL)`
  return name
})

layer(clientLayer, { timeout: "120 seconds" })("PgliteClient", (it) => {
  it.effect("runs a statement with parameters and returns its rows", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ sum: number; text: string }>`SELECT ${2}::int + ${3}::int AS sum, ${"a'b"}::text AS text`
      assert.deepStrictEqual(rows, [{ sum: 5, text: "a'b" }])
      assert.strictEqual(sql.driver, "pglite")
    }))

  it.effect("runs a script of several statements whole", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql.unsafe("CREATE TABLE script_a (x INT); CREATE TABLE script_b (y INT); INSERT INTO script_a VALUES (1)").unprepared
      const rows = yield* sql<{ x: number }>`SELECT x FROM script_a`
      assert.deepStrictEqual(rows, [{ x: 1 }])
    }))

  it.effect("a transaction commits its statements, and a failed one leaves nothing", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const table = yield* counter
      yield* sql.withTransaction(sql`INSERT INTO ${sql(table)} VALUES ('kept', 1)`)
      const failed = yield* Effect.exit(sql.withTransaction(
        Effect.andThen(sql`INSERT INTO ${sql(table)} VALUES ('lost', 1)`, Effect.fail("no"))
      ))
      assert.isTrue(Exit.isFailure(failed))
      const rows = yield* sql<{ id: string }>`SELECT id FROM ${sql(table)} ORDER BY id`
      assert.deepStrictEqual(rows.map((r) => r.id), ["kept"])
    }))

  it.effect("a nested transaction rolls back to its savepoint only", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const table = yield* counter
      yield* sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO ${sql(table)} VALUES ('outer', 1)`
        yield* Effect.exit(sql.withTransaction(
          Effect.andThen(sql`INSERT INTO ${sql(table)} VALUES ('inner', 1)`, Effect.fail("no"))
        ))
      }))
      const rows = yield* sql<{ id: string }>`SELECT id FROM ${sql(table)} ORDER BY id`
      assert.deepStrictEqual(rows.map((r) => r.id), ["outer"])
    }))

  it.effect("two transactions never interleave on the one session", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const table = yield* counter
      yield* sql`INSERT INTO ${sql(table)} VALUES ('c', 0)`
      // read, wait, write: interleaved, both would read 0 and the count would end at 1
      const increment = sql.withTransaction(Effect.gen(function*() {
        const [row] = yield* sql<{ n: number }>`SELECT n FROM ${sql(table)} WHERE id = 'c'`
        yield* Effect.yieldNow
        yield* sql`UPDATE ${sql(table)} SET n = ${row!.n + 1} WHERE id = 'c'`
      }))
      yield* Effect.all([increment, increment, increment], { concurrency: "unbounded" })
      const [row] = yield* sql<{ n: number }>`SELECT n FROM ${sql(table)} WHERE id = 'c'`
      assert.strictEqual(row!.n, 3)
    }))

  it.effect("a statement outside a transaction waits for it and is not part of it", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const table = yield* counter
      const inside = yield* Deferred.make<void>()
      const goOn = yield* Deferred.make<void>()
      const tx = yield* Effect.forkChild(Effect.exit(sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO ${sql(table)} VALUES ('in-tx', 1)`
        yield* Deferred.succeed(inside, undefined)
        yield* Deferred.await(goOn)
        return yield* Effect.fail("roll back")
      }))))
      yield* Deferred.await(inside)
      const outside = yield* Effect.forkChild(sql`INSERT INTO ${sql(table)} VALUES ('outside', 1)`)
      yield* Deferred.succeed(goOn, undefined)
      yield* Fiber.join(tx)
      yield* Fiber.join(outside)
      const rows = yield* sql<{ id: string }>`SELECT id FROM ${sql(table)} ORDER BY id`
      assert.deepStrictEqual(rows.map((r) => r.id), ["outside"])
    }))

  it.effect("an interrupted transaction rolls back and frees the session", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const table = yield* counter
      const inside = yield* Deferred.make<void>()
      const tx = yield* Effect.forkChild(sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO ${sql(table)} VALUES ('interrupted', 1)`
        yield* Deferred.succeed(inside, undefined)
        return yield* Effect.never
      })))
      yield* Deferred.await(inside)
      yield* Fiber.interrupt(tx)
      const rows = yield* sql<{ id: string }>`SELECT id FROM ${sql(table)}`
      assert.deepStrictEqual(rows, [])
    }))

  it.effect("errors are classified by their SQLSTATE code", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const table = yield* counter
      yield* sql`INSERT INTO ${sql(table)} VALUES ('x', 1)`
      const duplicate = yield* Effect.flip(sql`INSERT INTO ${sql(table)} VALUES ('x', 1)`)
      assert.strictEqual(duplicate.reason._tag, "UniqueViolation")
      const syntax = yield* Effect.flip(sql.unsafe("SELEC 1"))
      assert.strictEqual(syntax.reason._tag, "SqlSyntaxError")
      assert.include(syntax.message, "SELEC 1")
      const missing = yield* Effect.flip(sql`SELECT * FROM no_such_table`)
      assert.strictEqual(missing.reason._tag, "SqlSyntaxError")
      // the session is usable after errors
      const [row] = yield* sql<{ one: number }>`SELECT 1 AS one`
      assert.strictEqual(row!.one, 1)
    }))

  it.effect("values and raw results are available", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const values = yield* sql`SELECT 1 AS a, 'b' AS b`.values
      assert.deepStrictEqual(values, [[1, "b"]])
    }))
})

describe("PgliteClient data folder", () => {
  it.live("keeps the data across a close and a reopen, and makes missing parent folders", () =>
    Effect.gen(function*() {
      const template = yield* Effect.promise(() => freshDataDir())
      const dataDir = join(mkdtempSync(join(testTmp(), "eat-pglite-")), "nested", "deeper", "db")
      // a new folder: PGlite runs initdb in it (slow), so copy the template there instead
      const { cpSync } = yield* Effect.promise(() => import("node:fs"))
      cpSync(template, dataDir, { recursive: true })
      const write = Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE kept (v TEXT)`
        yield* sql`INSERT INTO kept VALUES ('still here')`
      })
      const read = Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        return yield* sql<{ v: string }>`SELECT v FROM kept`
      })
      yield* write.pipe(Effect.provide(PgliteClient.layer({ dataDir })))
      const rows = yield* read.pipe(Effect.provide(PgliteClient.layer({ dataDir })))
      assert.deepStrictEqual(rows, [{ v: "still here" }])

      // a folder whose parents do not exist: made, then PGlite opens in it
      const parentLess = join(mkdtempSync(join(testTmp(), "eat-pglite-")), "a", "b")
      assert.isFalse(existsSync(parentLess))
      const pglite = yield* PgliteClient.PgliteClient.pipe(
        Effect.provide(PgliteClient.layer({ dataDir: parentLess })),
        Effect.map((client) => client.pglite)
      )
      assert.isTrue(pglite.closed)
      assert.isTrue(existsSync(join(parentLess, "PG_VERSION")))
    }), { timeout: 120_000 })
})
