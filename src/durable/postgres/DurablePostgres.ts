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
import { NodeClusterSocket } from "@effect/platform-node"
import { PgClient } from "@effect/sql-pg"
import { Layer } from "effect"
import type { Redacted } from "effect"
import * as ClusterWorkflowEngine from "effect/cluster/ClusterWorkflowEngine"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import type * as ShardingConfig from "effect/cluster/ShardingConfig"
import * as Option from "effect/Option"
import type { SqlClient } from "effect/sql/SqlClient"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import * as DurableStore from "../DurableStore.ts"

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
  /** effect/cluster settings, over its defaults and environment (see `fastFailover`). */
  readonly shardingConfig?: Partial<ShardingConfig.ShardingConfig["Service"]> | undefined
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
  const { runner } = options
  const shardingConfig = {
    ...options.shardingConfig,
    ...(runner === undefined ? {} : { runnerAddress: Option.some(RunnerAddress.make(runner.host, runner.port)) })
  }
  const cluster = runner === undefined
    ? NodeClusterSocket.layer({ clientOnly: true, storage: "sql", shardingConfig })
    : NodeClusterSocket.layer({ storage: "sql", shardingConfig })
  return DurableStore.layer(options).pipe(
    Layer.provideMerge(ClusterWorkflowEngine.layer),
    Layer.provideMerge(cluster),
    Layer.provideMerge(PgClient.layer({ url: options.url }))
  )
}
