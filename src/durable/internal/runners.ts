/**
 * Which toolsets the runners of a PostgreSQL cluster run, so that a call is never given to a
 * runner that cannot run it.
 *
 * effect/cluster spreads every call over all the runners of its cluster (by shard), whatever
 * their toolsets: a call whose shard is held by a runner without its toolset waits there for the
 * toolset to be registered (effect/cluster's `entityRegistrationTimeout`, a minute), then fails.
 * So each runner notes the toolsets it runs (`async_toolset_runner`, one row per runner address
 * and toolset, written as `DurableToolset.layer` registers them), and a call starts only when
 * every live runner of the cluster runs its toolset; otherwise it fails at once, and the model is
 * told so.
 *
 * A runner is live while effect/cluster's runners table says so (healthy, with a heartbeat within
 * `shardLockExpiration`). A runner that started less than `settling` ago may not have registered
 * all its toolsets yet: it is not held against a call. Runners that noted no toolset (an earlier
 * version) are not either.
 *
 * @internal
 */
import { randomUUID } from "node:crypto"
import { Clock, Duration, Effect } from "effect"
import type { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import { migrationLock } from "./tables.ts"

/** What the store of a cluster knows of its runners' toolsets. */
export interface Runners {
  /** This process is a runner of the toolset (its `DurableToolset.layer` was built). */
  readonly serve: (toolsetId: string) => Effect.Effect<void, SqlError>
  /** Why a call of the toolset cannot start now (live runners that do not run it), if it cannot. */
  readonly refusal: (toolsetId: string) => Effect.Effect<Refusal | undefined, SqlError>
}

/** Live runners of the cluster that do not run a toolset, with the toolsets they run. */
export interface Refusal {
  readonly toolsetId: string
  readonly runners: ReadonlyArray<{ readonly address: string; readonly toolsets: ReadonlyArray<string> }>
}

/** The operator's words for a refusal (logged; the model hears a shorter text). */
export const describe = (refusal: Refusal, application: string | undefined): string =>
  `No call of toolset ${refusal.toolsetId} can start: ` +
  refusal.runners.map((r) => `the runner at ${r.address} runs ${r.toolsets.join(", ")}`).join("; ") +
  `, not ${refusal.toolsetId}, and every runner of a cluster may be given any of its calls. ` +
  (application === undefined
    ? `If those runners belong to another application on this database, give each application its own ` +
      `\`application\` in DurablePostgres.layer; else build DurableToolset.layer(${refusal.toolsetId}) on every runner.`
    : `Runners of application ${application} must all build DurableToolset.layer(${refusal.toolsetId}); ` +
      `another application on this database needs an \`application\` of its own.`)

/** How long a runner that just started is given to register its toolsets. */
const settling = Duration.seconds(2)

/** How long a refusal found for a toolset is not looked up again (each start would else read). */
const allowedFor = Duration.seconds(1)

export const make = (options: {
  readonly sql: SqlClient
  /** effect/cluster's table prefix. */
  readonly prefix: string
  /** This runner's address (`host:port`), or `undefined` for a client. */
  readonly address: string | undefined
  /** effect/cluster's `shardLockExpiration`: a runner without a heartbeat for that long is gone. */
  readonly runnerExpiry: Duration.Duration
}): Effect.Effect<Runners, SqlError> =>
  Effect.gen(function*() {
    const sql = options.sql.withoutTransforms()
    // the tables' migration lock: runners starting together take turns creating it
    yield* sql.withTransaction(Effect.gen(function*() {
      yield* sql`SELECT pg_advisory_xact_lock(${migrationLock})`
      yield* sql`CREATE TABLE IF NOT EXISTS async_toolset_runner (
        address TEXT NOT NULL,
        toolset_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        since TIMESTAMPTZ NOT NULL DEFAULT NOW(),
        PRIMARY KEY (address, toolset_id)
      )`
    }))
    // This process, as its rows name it: rows of the address left by an earlier process are dropped.
    const instance = randomUUID()
    const runnersTable = sql(`${options.prefix}_runners`)
    const expiry = Duration.toSeconds(options.runnerExpiry)
    const allowed = new Map<string, number>()
    const serve = (toolsetId: string): Effect.Effect<void, SqlError> =>
      options.address === undefined ? Effect.void : sql`WITH gone AS (
          DELETE FROM async_toolset_runner WHERE address = ${options.address} AND instance <> ${instance}
        )
        INSERT INTO async_toolset_runner (address, toolset_id, instance) VALUES (${options.address}, ${toolsetId}, ${instance})
        ON CONFLICT (address, toolset_id) DO UPDATE SET instance = EXCLUDED.instance, since = NOW()`.pipe(Effect.asVoid)
    const refusal = (toolsetId: string): Effect.Effect<Refusal | undefined, SqlError> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const until = allowed.get(toolsetId)
        if (until !== undefined && now < until) return Effect.succeed(undefined)
        return Effect.map(
          sql<{ address: string; toolsets: string }>`SELECT t.address, string_agg(t.toolset_id, ',' ORDER BY t.toolset_id) AS toolsets
            FROM async_toolset_runner t JOIN ${runnersTable} r ON r.address = t.address
            WHERE r.healthy AND r.last_heartbeat > NOW() - make_interval(secs => ${expiry})
            GROUP BY t.address
            HAVING bool_and(t.toolset_id <> ${toolsetId})
              AND min(t.since) < NOW() - make_interval(secs => ${Duration.toSeconds(settling)})
            ORDER BY t.address`,
          (rows) => {
            if (rows.length === 0) {
              allowed.set(toolsetId, now + Duration.toMillis(allowedFor))
              return undefined
            }
            allowed.delete(toolsetId)
            return { toolsetId, runners: rows.map((row) => ({ address: row.address, toolsets: row.toolsets.split(",") })) }
          }
        )
      })
    return { serve, refusal }
  })
