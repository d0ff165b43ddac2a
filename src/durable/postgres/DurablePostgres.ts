/**
 * The durable store on a PostgreSQL server, for several processes: `@effect/sql-pg` for the
 * database, and effect/cluster runners talking over TCP sockets (`NodeClusterSocket` of
 * `@effect/platform-node`). Sessions and calls are spread over the runners by effect/cluster's
 * shards; a runner that dies has its shards, and so its calls, taken over by another once its shard
 * locks expire (`shardLockExpiration`).
 *
 * Each process builds `layer` with its own address (`runner`), or without one as a client that runs
 * no calls (an agent's process can be either). Every runner also builds `DurableToolset.layer` for
 * each toolset, so that it can run their calls.
 *
 * `@effect/sql-pg` and `@effect/platform-node` are optional peer dependencies, needed only here.
 *
 * @since 0.1.0
 */
import { NodeClusterSocket, NodeCrypto } from "@effect/platform-node"
import { PgClient } from "@effect/sql-pg"
import { Duration, Effect, Layer, Schema } from "effect"
import type { Redacted } from "effect"
import * as ClusterWorkflowEngine from "effect/cluster/ClusterWorkflowEngine"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import * as ShardingConfig from "effect/cluster/ShardingConfig"
import * as SqlRunnerStorage from "effect/cluster/SqlRunnerStorage"
import * as Option from "effect/Option"
import { SqlClient } from "effect/sql/SqlClient"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import * as DurableStore from "../DurableStore.ts"
import * as Cluster from "../internal/cluster.ts"
import * as Runners from "../internal/runners.ts"

export {
  /**
   * A runner would not start: the database's stored cluster messages were written with another
   * `shardsPerGroup`, and other runners are running (see `defaultShardingConfig`). Also a client
   * whose `shardsPerGroup` is not the one the runners last started with.
   *
   * @since 0.1.0
   * @category errors
   */
  ShardsPerGroupChanged
} from "../internal/cluster.ts"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options extends DurableStore.Options {
  /** The database, e.g. `postgres://user:password@host:5432/db`. */
  readonly url: Redacted.Redacted<string>
  /**
   * Where this runner listens, as the other runners reach it (`port` is also where it listens).
   * Without it the process is a client: it starts and follows calls, and runs none.
   */
  readonly runner?: { readonly host: string; readonly port: number } | undefined
  /**
   * effect/cluster settings, over `defaultShardingConfig` (environment variables such as
   * `SHARDS_PER_GROUP` are read first and overridden by both; see also `fastFailover`). Every
   * process of a cluster, runners and clients, needs the same `shardsPerGroup`.
   */
  readonly shardingConfig?: Partial<ShardingConfig.ShardingConfig["Service"]> | undefined
  /**
   * The application this process is of, when several share the database (say a travel agent's
   * runners and a billing agent's): each application has a cluster of its own, and its own
   * sessions, calls and chats. Its tables are in the PostgreSQL schema of that name (made if
   * missing; the connection's `search_path`), and its effect/cluster tables and shard locks are
   * named after it (`cluster_<application>_*`). Every process of an application, runners and
   * clients, gives the same one. `[a-z][a-z0-9_]*`, at most 40. Without it the tables are those of
   * the connection's `search_path` (usually `public`), for one application per database.
   */
  readonly application?: string | undefined
}

/**
 * `application` is not a name the store can use.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidApplication extends Schema.TaggedError<InvalidApplication>()("InvalidApplication", {
  application: Schema.String
}) {
  override get message(): string {
    return `DurablePostgres.layer: application ${JSON.stringify(this.application)} must be lowercase letters, ` +
      `digits and underscores, starting with a letter, at most 40 characters (it names a PostgreSQL schema).`
  }
}

const applicationPattern = /^[a-z][a-z0-9_]{0,39}$/

/** "async_toolset_schema" as a number, for the advisory lock that makes starting processes take turns. */
const schemaLock = 2_406_151_120

/**
 * The store's effect/cluster settings on PostgreSQL, under `Options.shardingConfig`:
 *
 * - `shardsPerGroup: 16` (effect/cluster's default is 300): a call's execution is placed on one of
 *   16 shards, each held by one runner, so up to 16 runners share the work. Fewer shards make each
 *   read of the stored messages, each runner's lock check and its shutdown cheaper (a runner
 *   releases its shards one by one). Choose at least as many as the runners you will run, from
 *   the start: a stored message names its shard, so after a change the messages are moved to
 *   their new shards. A runner does that when it starts and no other runner is running (all at
 *   once in one transaction, once); if another runner is running, it refuses to start
 *   (`ShardsPerGroupChanged`): runners of two counts would each read the messages of their own,
 *   and could run a call twice. So change it by stopping every runner, starting one with the new
 *   count, then the others.
 * - `entityTerminationTimeout: "1 second"`: at a normal close (or when its shard moves to another
 *   runner) a running call is given a second to stop before it is interrupted; it runs again on
 *   the runner that holds it next (effect/cluster's default waits 15 seconds).
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultShardingConfig: Partial<ShardingConfig.ShardingConfig["Service"]> = {
  shardsPerGroup: 16,
  entityTerminationTimeout: "1 second"
}

/**
 * Settings that make a dead runner's calls move within about 3 seconds, for tests and demos
 * (effect/cluster's defaults take about 35 seconds, and check the health of runners less often).
 *
 * @since 0.1.0
 * @category constants
 */
export const fastFailover: Partial<ShardingConfig.ShardingConfig["Service"]> = {
  shardLockExpiration: "3 seconds",
  shardLockRefreshInterval: "1 second",
  refreshAssignmentsInterval: "500 millis",
  runnerHealthCheckInterval: "1 second",
  entityMessagePollInterval: "500 millis",
  sendRetryInterval: "100 millis",
  entityTerminationTimeout: "1 second"
}

/**
 * The store on PostgreSQL, with this process as a runner of the cluster (or a client).
 *
 * @example
 * ```ts
 * import { Redacted } from "effect"
 * import { DurablePostgres } from "effect-async-toolset/durable/postgres"
 *
 * const store = DurablePostgres.layer({
 *   url: Redacted.make(process.env.DATABASE_URL ?? "postgres://localhost/app"),
 *   runner: { host: "10.0.0.5", port: 34431 }
 * })
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<DurableStore.DurableStore | WorkflowEngine | SqlClient, unknown> => {
  const { application, runner } = options
  if (application !== undefined && !applicationPattern.test(application)) {
    return Layer.unwrap(Effect.fail(new InvalidApplication({ application })))
  }
  // effect/cluster's table prefix: it also names its shard locks (advisory locks are the
  // database's, not the schema's), so each application's are its own
  const prefix = application === undefined ? "cluster" : `cluster_${application}`
  const address = runner === undefined ? undefined : `${runner.host}:${runner.port}`
  const shardingConfig = {
    ...defaultShardingConfig,
    ...options.shardingConfig,
    ...(runner === undefined ? {} : { runnerAddress: Option.some(RunnerAddress.make(runner.host, runner.port)) })
  }
  // effect/cluster's SQL storage, with replies saved in one statement and the stored messages kept
  // on the shards of this `shardsPerGroup`
  const storage = (stopped: Cluster.Stopped) =>
    Layer.mergeAll(
      Cluster.messageStorage(address === undefined ? { _tag: "client" } : { _tag: "runner", address }, { prefix, stopped }),
      Layer.orDie(SqlRunnerStorage.layerWith({ prefix }))
    ).pipe(
      Layer.provide(Layer.orDie(ShardingConfig.layerFromEnv(shardingConfig))),
      Layer.provide(NodeCrypto.layerDigest)
    )
  const cluster = Cluster.withSharding((stopped) =>
    (runner === undefined
      ? NodeClusterSocket.layer({ clientOnly: true, storage: "byo", shardingConfig })
      : NodeClusterSocket.layer({ storage: "byo", shardingConfig })).pipe(Layer.provideMerge(storage(stopped)))
  )
  const store = Layer.effect(
    DurableStore.DurableStore,
    Effect.gen(function*() {
      const made = yield* DurableStore.make(options)
      const runners = yield* Runners.make({
        sql: made.sql,
        prefix,
        address,
        runnerExpiry: Duration.fromInputUnsafe(shardingConfig.shardLockExpiration ?? ShardingConfig.defaults.shardLockExpiration)
      })
      return DurableStore.DurableStore.of({ ...made, runners, application })
    })
  )
  const database = application === undefined
    ? PgClient.layer({ url: options.url })
    : Layer.provideMerge(
      // processes starting together take turns (concurrent CREATE SCHEMA IF NOT EXISTS can fail)
      Layer.effectDiscard(Effect.flatMap(SqlClient, (sql) =>
        sql.withTransaction(Effect.andThen(
          sql`SELECT pg_advisory_xact_lock(${schemaLock})`,
          sql`CREATE SCHEMA IF NOT EXISTS ${sql(application)}`
        )))),
      PgClient.layer({ url: options.url, startupParameters: { search_path: application } })
    )
  // built on its own: another store of the process never shares its cluster (see `isolated`)
  return Cluster.isolated(store.pipe(
    Layer.provideMerge(ClusterWorkflowEngine.layer),
    Layer.provideMerge(cluster),
    Layer.provideMerge(database)
  ))
}
