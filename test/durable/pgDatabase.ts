/**
 * Databases of their own on the test's PostgreSQL server (TEST_PG_URL), for tests that must not
 * see (or leave) other tests' cluster messages and runners: made for a scope, dropped after it.
 */
import { PgClient } from "@effect/sql-pg"
import { createServer } from "node:net"
import { Effect, Redacted } from "effect"
import type { Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"

export const testPgUrl: string | undefined = process.env.TEST_PG_URL === "" ? undefined : process.env.TEST_PG_URL

let made = 0

const admin = (statement: string) =>
  Effect.scoped(Effect.gen(function*() {
    const sql = yield* SqlClient
    yield* sql.unsafe(statement)
  })).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(testPgUrl!) })), Effect.orDie)

/** A new, empty database for the scope (dropped with it); its URL. */
export const freshDatabase = (prefix: string): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const name = `${prefix}_${process.pid}_${Date.now().toString(36)}_${made++}`
      yield* admin(`CREATE DATABASE ${name}`)
      const url = new URL(testPgUrl!)
      url.pathname = `/${name}`
      return { name, url: url.toString() }
    }),
    ({ name }) => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  ).pipe(Effect.map(({ url }) => url))

/** A TCP port free on 127.0.0.1 right now (for a runner to listen on). */
export const freePort: Effect.Effect<number> = Effect.callback<number>((resume) => {
  const server = createServer()
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address() as { port: number }
    server.close(() => resume(Effect.succeed(port)))
  })
})
