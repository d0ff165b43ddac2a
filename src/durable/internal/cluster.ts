/**
 * effect/cluster as the durable stores run it: its SQL message storage with replies saved in one
 * statement (and saved again while the database is unreachable), the stored messages moved to
 * their shards when `shardsPerGroup` changed, and a close that prints no "No healthy runners
 * available" warning.
 *
 * - The message storage is `SqlMessageStorage`'s (same tables, same rows) with one change, through
 *   effect/cluster's public `MessageStorage.makeEncoded`: a reply is saved by one data-modifying
 *   statement (`WITH u AS (UPDATE cluster_messages …) INSERT INTO cluster_replies …`) instead of a
 *   transaction of two (`BEGIN`, `UPDATE`, `INSERT`, `COMMIT`): three statements fewer per stored
 *   request. Pinned to effect 4.1's row layout; test/durable/messageStorage.test.ts compares the
 *   rows with upstream's.
 * - A stored message names its shard (`cluster_messages.shard_id`, `<group>:<n>`, where `n` is the
 *   entity id's hash modulo `shardsPerGroup`, plus one). Runners only read the shards they hold, so
 *   after `shardsPerGroup` changed, a message stored under the old count waits for a shard nobody
 *   holds (or one its entity no longer maps to) and never runs. So the count a database was last
 *   opened with is kept (`async_toolset_settings`), and when it differs, every stored message whose
 *   shard is not its entity's under the new count is moved, once, in one transaction. Moving is
 *   safe only when no runner of the old count is reading them: a runner that sees another live
 *   runner (a heartbeat within `shardLockExpiration`) refuses to start (`ShardsPerGroupChanged`).
 * - A reply whose save fails for a reason that may pass (a connection refused or dropped, a server
 *   starting up, a deadlock, a statement timeout, a disk full, a read-only standby) is saved again,
 *   pausing 100 ms doubling to 2 s, until it is saved or the runner shuts down. effect/cluster tries a reply's save 5 times 200 ms
 *   apart (`retryRespond` in `internal/entityManager.ts`), then gives up without a word: the
 *   request stays "being processed" in its entity for the runner's life, never read again from
 *   storage, and what waits for its reply (a call's workflow waiting for a step's result) waits
 *   for good (issue 18: new connections refused for 3 s while the runner kept its shard locks
 *   left calls "running" until the runner restarted; test/durable/clusterDropsUnsavedReplies.test.ts
 *   shows it on effect/cluster alone). Each failure is a warning; a save still failing after
 *   `replySaveWindow` (30 s) logs an error once (the runner is stuck until the database answers).
 *   effect/cluster saves a reply where its entity cannot be interrupted, so the saves stop trying
 *   once the runner shuts down (effect/cluster's `Sharding.isShutdown`, through `withSharding`):
 *   the request stays unprocessed in storage and runs again on the runner that holds its shard
 *   next. A save that committed but whose answer was lost fails when tried again (the reply's id,
 *   or the request's one final reply, is taken), and effect/cluster then finds the reply stored.
 * - Table prefix: effect/cluster's tables are `<prefix>_messages`, `<prefix>_replies`,
 *   `<prefix>_runners`… (`cluster` unless `DurablePostgres`'s `application` names another); the
 *   shard moves read and write the tables of that prefix. The kept count (`async_toolset_settings`)
 *   is in the same schema as they are, so each application's count is its own.
 */
import { Clock, Context, Duration, Effect, Layer, Logger, Schedule, Schema } from "effect"
import { PersistenceError } from "effect/cluster/ClusterError"
import * as MessageStorage from "effect/cluster/MessageStorage"
import { ShardingConfig } from "effect/cluster/ShardingConfig"
import * as Sharding from "effect/cluster/Sharding"
import * as Snowflake from "effect/cluster/Snowflake"
import * as SqlMessageStorage from "effect/cluster/SqlMessageStorage"
import type * as Digest from "effect/crypto/Digest"
import { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import { isSqlError } from "effect/sql/SqlError"

// --- shards --------------------------------------------------------------------------------------

/** effect/cluster's hash of an entity id (`effect/cluster/internal/hash.ts`, not exported): do not change. */
const hashString = (text: string): number => {
  let h = 5381
  let i = text.length
  while (i) h = (h * 33) ^ text.charCodeAt(--i)
  return (h & 0xbfffffff) | ((h >>> 1) & 0x40000000)
}

/** The shard number of an entity id, as `Sharding.getShardId` computes it. */
export const shardNumber = (entityId: string, shardsPerGroup: number): number =>
  Math.abs(hashString(entityId) % shardsPerGroup) + 1

/**
 * The stored cluster messages were written with another `shardsPerGroup` than this runner's, and
 * other runners are running: moving the messages now could run one twice.
 *
 * @since 0.1.0
 * @category errors
 */
export class ShardsPerGroupChanged extends Schema.TaggedError<ShardsPerGroupChanged>()("ShardsPerGroupChanged", {
  shardsPerGroup: Schema.Number,
  previous: Schema.optional(Schema.Number),
  runners: Schema.Array(Schema.String)
}) {
  override get message(): string {
    const previous = this.previous === undefined ? "another shardsPerGroup" : `shardsPerGroup ${this.previous}`
    return this.runners.length === 0
      ? `This database's cluster runners use ${previous}, this process ${this.shardsPerGroup}. ` +
        `Give every process the same shardsPerGroup.`
      : `The stored cluster messages were written with ${previous}; this runner has ${this.shardsPerGroup}, ` +
        `and other runners are running (${this.runners.join(", ")}). Stop every runner, then start one with ` +
        `shardsPerGroup ${this.shardsPerGroup} (it moves the stored messages to their new shards once), then the others.`
  }
}

/** How a process may move stored messages to their shards. */
export type Resharding =
  /** The only process on the database (the embedded store: its lock file says so). */
  | { readonly _tag: "alone" }
  /** A runner of a cluster: moves them only when no other runner is live. */
  | { readonly _tag: "runner"; readonly address: string }
  /** A client: runs nothing, so never moves them; refuses to start on a database of another count. */
  | { readonly _tag: "client" }

const setting = "shards_per_group"

/** "async_toolset_shards" as a number, for the advisory lock that makes starting runners take turns. */
const reshardLock = 2_406_151_119

/**
 * Makes the stored messages' shards those of `shardsPerGroup`, once per change of it (see the
 * module's notes). Runs after effect/cluster's tables exist and before its runner reads them.
 */
export const reshard = (
  shardsPerGroup: number,
  mode: Resharding,
  runnerExpiry: Duration.Duration,
  prefix = "cluster"
): Effect.Effect<void, SqlError | ShardsPerGroupChanged, SqlClient> =>
  Effect.gen(function*() {
    const sql = (yield* SqlClient).withoutTransforms()
    const messages = sql(`${prefix}_messages`)
    const runners = sql(`${prefix}_runners`)
    const read = Effect.map(
      sql<{ value: string }>`SELECT value FROM async_toolset_settings WHERE name = ${setting}`,
      (rows) => rows.length === 0 ? undefined : Number(rows[0]!.value)
    )
    // the usual case, without a transaction: the count is the one the database was last opened with
    const [present] = yield* sql<{ present: boolean }>`SELECT to_regclass('async_toolset_settings') IS NOT NULL AS present`
    const last = present?.present ? yield* read : undefined
    if (last === shardsPerGroup) return
    if (mode._tag === "client") {
      if (last !== undefined) return yield* new ShardsPerGroupChanged({ shardsPerGroup, previous: last, runners: [] })
      return
    }
    yield* sql.withTransaction(Effect.gen(function*() {
      yield* sql`SELECT pg_advisory_xact_lock(${reshardLock})`
      yield* sql`CREATE TABLE IF NOT EXISTS async_toolset_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)`
      const previous = yield* read
      if (previous === shardsPerGroup) return // another runner moved them meanwhile
      // each entity's messages share its shard: look at each (entity, shard) once
      const pairs = yield* sql<{ entity_id: string; shard_id: string }>`SELECT DISTINCT entity_id, shard_id FROM ${messages}`
      const moves = new Map<string, number>()
      for (const { entity_id, shard_id } of pairs) {
        const n = shardNumber(entity_id, shardsPerGroup)
        if (Number(shard_id.slice(shard_id.lastIndexOf(":") + 1)) !== n) moves.set(entity_id, n)
      }
      // Another count was in use (recorded, or shown by messages off their shards): runners of it
      // may be running, even with nothing to move; a runner of this count beside them could run a
      // call twice.
      if ((moves.size > 0 || previous !== undefined) && mode._tag === "runner") {
        const [present] = yield* sql<{ present: boolean }>`SELECT to_regclass(${`${prefix}_runners`}) IS NOT NULL AS present`
        const live = present?.present
          ? yield* sql<{ address: string }>`SELECT address FROM ${runners}
              WHERE address <> ${mode.address} AND healthy
                AND last_heartbeat > NOW() - make_interval(secs => ${Duration.toSeconds(runnerExpiry)})`
          : []
        if (live.length > 0) {
          return yield* new ShardsPerGroupChanged({
            shardsPerGroup,
            ...(previous === undefined ? {} : { previous }),
            runners: live.map((r) => r.address)
          })
        }
      }
      const entries = [...moves]
      for (let i = 0; i < entries.length; i += 2000) {
        const batch = JSON.stringify(entries.slice(i, i + 2000).map(([entity_id, n]) => ({ entity_id, n })))
        yield* sql`UPDATE ${messages} m
          SET shard_id = regexp_replace(m.shard_id, ':[0-9]+$', ':' || v.n)
          FROM json_to_recordset(${batch}::json) AS v(entity_id TEXT, n INTEGER)
          WHERE m.entity_id = v.entity_id AND m.shard_id <> regexp_replace(m.shard_id, ':[0-9]+$', ':' || v.n)`
      }
      yield* sql`INSERT INTO async_toolset_settings (name, value) VALUES (${setting}, ${String(shardsPerGroup)})
        ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value`
    }))
  })

// --- message storage -----------------------------------------------------------------------------

/**
 * A failure of the database that may pass: one its driver calls retryable (a connection refused or
 * dropped, a deadlock, a statement timeout), any failure to connect (a server starting up or out
 * of connection slots answers with an error of its own), or a state of the server rather than of
 * the statement (`serverStates`): the statement did not run.
 */
const passing = (error: unknown): boolean =>
  isSqlError(error) && (error.isRetryable || error.reason.operation === "connect" || serverState(error.reason.cause))

/**
 * PostgreSQL's SQLSTATEs of a server's state that passes, which its driver calls neither retryable
 * nor a failure to connect: insufficient resources (class 53: disk full, out of memory, too many
 * connections), the server shutting down or restarting (57P01 admin shutdown, 57P02 crash
 * shutdown, 57P03 cannot connect now, 57P05 idle session timeout), a read-only server (25006: a
 * standby, as after a failover), an I/O error (58030). Not 57P04 (the database was dropped).
 */
const serverState = (cause: unknown): boolean => {
  const code = typeof cause === "object" && cause !== null && "code" in cause ? cause.code : undefined
  return typeof code === "string" &&
    (code.startsWith("53") || ["57P01", "57P02", "57P03", "57P05", "25006", "58030"].includes(code))
}

/** How long a reply's save fails for a passing reason before an error says the runner is stuck (see the module's notes). */
export const replySaveWindow: Duration.Duration = Duration.seconds(30)

/** Whether the runner that saves replies is shutting down (then a failing save stops trying). */
export type Stopped = () => boolean

const never: Stopped = () => false

/**
 * `SqlMessageStorage`'s driver (it creates its tables) with every reply saved in one statement:
 * the request's row updated as upstream does (`processed` and `last_reply_id` for a final reply,
 * `last_reply_id` for a chunk) and the reply's row inserted (a chunk's `kind` is NULL, as upstream's),
 * atomically, without a transaction.
 * A reply whose save fails for a passing reason is saved again until it is saved or `stopped()`;
 * failing for longer than `saveWindow`, an error says so once.
 */
export const makeEncoded = Effect.fnUntraced(function*(
  prefix: string = "cluster",
  options: { readonly stopped?: Stopped; readonly saveWindow?: Duration.Duration } = {}
): Effect.fn.Return<MessageStorage.Encoded, never, SqlClient | Digest.Digest> {
  const encoded = yield* SqlMessageStorage.makeEncoded({ prefix })
  const sql = (yield* SqlClient).withoutTransforms()
  const messages = sql(`${prefix}_messages`)
  const replies = sql(`${prefix}_replies`)
  const stopped = options.stopped ?? never
  const window = Duration.toMillis(options.saveWindow ?? replySaveWindow)
  const saveReply: MessageStorage.Encoded["saveReply"] = (reply) =>
    Effect.suspend(() =>
      reply._tag === "WithExit"
        ? sql`WITH u AS (
            UPDATE ${messages} SET processed = TRUE, last_reply_id = ${reply.id} WHERE request_id = ${reply.requestId}
          )
          INSERT INTO ${replies} (id, kind, request_id, payload, sequence)
          VALUES (${reply.id}, 0, ${reply.requestId}, ${JSON.stringify(reply.exit)}, NULL)`
        : sql`WITH u AS (
            UPDATE ${messages} SET last_reply_id = ${reply.id} WHERE id = ${reply.requestId}
          )
          INSERT INTO ${replies} (id, kind, request_id, payload, sequence)
          VALUES (${reply.id}, NULL, ${reply.requestId}, ${JSON.stringify(reply.values)}, ${reply.sequence})`
    ).pipe(
      Effect.asVoid,
      (save) => {
        let since: number | undefined
        let told = false
        return Effect.tapError(save, (error) =>
          Effect.gen(function*() {
            yield* Effect.logWarning(`saving effect/cluster's reply to request ${reply.requestId} failed`, error)
            if (!passing(error) || told) return
            const now = yield* Clock.currentTimeMillis
            since ??= now
            if (now - since < window) return
            told = true
            yield* Effect.logError(
              `effect/cluster's reply to request ${reply.requestId} has not been saved for ` +
                `${Duration.format(Duration.millis(now - since))}: the database is unreachable or refuses it (the warnings say why). ` +
                "What waits for it (a durable call's step) waits too; the save is tried again until the database takes it, " +
                "then the call goes on."
            )
          }))
      },
      Effect.retry({
        while: (error) => passing(error) && !stopped(),
        schedule: Schedule.min([Schedule.exponential("100 millis"), Schedule.spaced("2 seconds")])
      }),
      PersistenceError.refail,
      Effect.withTracerEnabled(false)
    )
  return { ...encoded, saveReply }
})

/**
 * The message storage of the durable stores, its stored messages on the shards of the
 * configuration's `shardsPerGroup` (moved there once if they were not: see `reshard`).
 */
export function messageStorage(
  mode: { readonly _tag: "alone" },
  options?: { readonly stopped?: Stopped }
): Layer.Layer<MessageStorage.MessageStorage, SqlError, SqlClient | ShardingConfig | Digest.Digest>
export function messageStorage(
  mode: Resharding,
  options?: { readonly prefix?: string; readonly stopped?: Stopped }
): Layer.Layer<MessageStorage.MessageStorage, SqlError | ShardsPerGroupChanged, SqlClient | ShardingConfig | Digest.Digest>
export function messageStorage(
  mode: Resharding,
  options: { readonly prefix?: string; readonly stopped?: Stopped } = {}
): Layer.Layer<MessageStorage.MessageStorage, SqlError | ShardsPerGroupChanged, SqlClient | ShardingConfig | Digest.Digest> {
  const prefix = options.prefix ?? "cluster"
  return Layer.effect(
    MessageStorage.MessageStorage,
    Effect.gen(function*() {
      const driver = yield* makeEncoded(prefix, options.stopped === undefined ? {} : { stopped: options.stopped })
      const config = yield* ShardingConfig
      const moved = reshard(config.shardsPerGroup, mode, Duration.fromInputUnsafe(config.shardLockExpiration), prefix)
      // alone on its database, a process never refuses
      yield* mode._tag === "alone" ? Effect.catchTag(moved, "ShardsPerGroupChanged", Effect.die) : moved
      return yield* MessageStorage.makeEncoded(driver)
    })
  ).pipe(Layer.provide(Snowflake.layerGenerator))
}

// --- the cluster, knowing when it shuts down, with a quiet close -------------------------------

/**
 * The cluster layers `make` builds, given a `Stopped` that says whether their `Sharding` is shutting
 * down (for the message storage's saves: see `makeEncoded`), with their logs going to the loggers
 * of where they are built, except the "No healthy runners available" warning once the runner
 * shuts down: effect/cluster's runner unregisters itself first (at the close of its layer, or as
 * soon as an entity closes, with `preemptiveShutdown`), then waits for its entities to stop, and
 * meanwhile its assignment loop finds no healthy runner and says so every
 * `refreshAssignmentsInterval`. While the runner runs, the warning is kept.
 */
export const withSharding = <A, E, R>(
  make: (stopped: Stopped) => Layer.Layer<A | Sharding.Sharding, E, R>
): Layer.Layer<A | Sharding.Sharding, E, R> =>
  Layer.unwrap(Effect.gen(function*() {
    const loggers = yield* Logger.CurrentLoggers
    let sharding: Sharding.Sharding["Service"] | undefined
    const stopped: Stopped = () => sharding !== undefined && Effect.runSync(sharding.isShutdown)
    const logger = Logger.make<unknown, void>((options) => {
      if (isNoHealthyRunners(options.message) && stopped()) return
      for (const inner of loggers) inner.log(options)
    })
    const capture = Layer.effectDiscard(Effect.gen(function*() {
      sharding = yield* Sharding.Sharding
    }))
    return capture.pipe(Layer.provideMerge(make(stopped)), Layer.provide(Logger.layer([logger])))
  }))

const isNoHealthyRunners = (message: unknown): boolean =>
  (Array.isArray(message) ? message[0] : message) === "No healthy runners available"

// --- a store's layers, built on their own -------------------------------------------------------

/**
 * `layer` built with a memo map of its own, so that a store never shares effect/cluster's runner
 * or workflow engine with another store of the process. effect/cluster's layers are module
 * constants (`Sharding.layer`, `ClusterWorkflowEngine.layer`, …), and Effect builds a layer once
 * per memo map; a layer built inside an Effect provided with layers (`Effect.provide`,
 * `Layer.build`) uses that build's memo map, so a second store built there reused the first's
 * cluster: its calls ran on the first's runner, in the first's database (or, for a runner built
 * where a client is provided, on a cluster that runs nothing). The result is memoized as any layer
 * (one store per `layer` value in a graph), and the memo map is not passed on to what it provides.
 */
export const isolated = <A, E>(layer: Layer.Layer<A, E>): Layer.Layer<A, E> =>
  Layer.effectContext(Effect.gen(function*() {
    const built = yield* Layer.buildWithMemoMap(layer, Layer.makeMemoMapUnsafe(), yield* Effect.scope)
    return Context.omit(Layer.CurrentMemoMap)(built) as Context.Context<A>
  }))
