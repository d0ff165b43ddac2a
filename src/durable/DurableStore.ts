/**
 * Where durable calls and chats are kept: a SQL database (through effect's `SqlClient`) holding
 * effect/cluster's messages and the toolset's own tables, and the `WorkflowEngine` that runs the
 * calls.
 *
 * `layerEmbedded` needs no server: PGlite in a data folder, an effect/cluster runner of its own (as
 * `SingleRunner`), and a lock file so that two processes never open the same folder. On PostgreSQL
 * with several runner processes, `effect-async-toolset/durable/postgres` gives the same services
 * (or compose `layer` with your own cluster layers).
 *
 * @since 0.1.0
 */
import { randomUUID } from "node:crypto"
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"
import { Context, Duration, Effect, Layer, Schema } from "effect"
import type { Scope } from "effect"
import * as ClusterWorkflowEngine from "effect/cluster/ClusterWorkflowEngine"
import * as RunnerHealth from "effect/cluster/RunnerHealth"
import * as Runners from "effect/cluster/Runners"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as Sharding from "effect/cluster/Sharding"
import * as ShardingConfig from "effect/cluster/ShardingConfig"
import * as Digest from "effect/crypto/Digest"
import { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import * as Cluster from "./internal/cluster.ts"
import * as Hub from "./internal/hub.ts"
import * as Retention from "./internal/retention.ts"
import type * as RunnerToolsets from "./internal/runners.ts"
import * as Template from "./internal/template.ts"
import { migrate } from "./internal/tables.ts"
import * as PgliteClient from "./PgliteClient.ts"

/**
 * @since 0.1.0
 * @category services
 */
export class DurableStore extends Context.Service<DurableStore, {
  readonly sql: SqlClient
  /**
   * How often a process looks for what another process changed in a call it follows (a call its
   * agent started, run by another runner; a cancel asked for by another process). Changes made in
   * the same process are handed over at once.
   */
  readonly pollInterval: Duration.Duration
  /** @internal How a call's execution and its follower in one process tell each other what they recorded. */
  readonly hub: Hub.Hub
  /**
   * @internal On a cluster of several runners (PostgreSQL): which toolsets its runners run, so that
   * a call starts only where it can run.
   */
  readonly runners?: RunnerToolsets.Runners | undefined
  /** @internal The application the store is of (`DurablePostgres`'s `application`), for what is logged. */
  readonly application?: string | undefined
}>()("effect-async-toolset/DurableStore") {}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * How often to look for changes another process made to a session's calls and chat (default 1
   * second). Changes made in the same process are seen at once.
   */
  readonly pollInterval?: Duration.Input | undefined
  /**
   * Pruning what finished calls leave in the store (default: everything is kept). A finished
   * call's execution keeps effect/cluster's stored messages and replies (about 4 to 5 KB, most of
   * what a call leaves); retention deletes them for calls that ended more than `maxAge` ago, and
   * for all but the `maxCount` most recently ended, at the store's open and then every `interval`
   * (default 10 minutes, at least a second). A call is pruned one minute after its end at the
   * earliest. What stays: the session's chat (the conversation, with the calls' outputs, updates
   * and results) and the call's row (about 1 KB: its id stays taken). Settings that cannot be used
   * (a `maxAge` that is not a duration, a negative `maxCount`) fail the open, naming the setting.
   */
  readonly retention?: {
    readonly maxAge?: Duration.Input | undefined
    readonly maxCount?: number | undefined
    readonly interval?: Duration.Input | undefined
  } | undefined
}

/**
 * The store on a `SqlClient`: creates its tables if missing.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(options: Options = {}) {
  const sql = yield* SqlClient
  yield* migrate(sql)
  const pollInterval = Duration.fromInputUnsafe(options.pollInterval ?? "1 second")
  if (options.retention !== undefined) yield* Retention.run(sql, options.retention)
  // A call's row as written is held for its execution only where no other process writes the
  // rows: PGlite (in this process, its data folder opened by one), not a database processes share.
  return DurableStore.of({ sql, pollInterval, hub: Hub.make({ holds: sql.driver === "pglite" }) })
})

/**
 * The store as a layer on a `SqlClient` (the caller provides the `WorkflowEngine` and its cluster).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<DurableStore, SqlError, SqlClient> =>
  Layer.effect(DurableStore, make(options))

// --- the embedded store --------------------------------------------------------------------------

/**
 * The data folder is in use by another process.
 *
 * @since 0.1.0
 * @category errors
 */
export class StoreLocked extends Schema.TaggedError<StoreLocked>()("StoreLocked", {
  dataDir: Schema.String,
  owner: Schema.String
}) {
  override get message(): string {
    return `The data folder ${this.dataDir} is in use by ${this.owner}. ` +
      `Stop that process first, or use another folder (a folder is opened by one process at a time).`
  }
}

/** This process, as a lock file names its owner: pid, host, and a token of this process's own. */
const me = `${process.pid}@${hostname()}#${randomUUID()}`

/**
 * Takes the data folder's lock file (`LOCK`, holding the owner's pid, host and a token of its
 * process) for the scope. A lock left by a process that is gone (killed, crashed) is taken over,
 * also when a new process has its pid (pid 1 in a restarted container: the token tells them
 * apart); one held by a live process fails with `StoreLocked`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const lockDataDir = (dataDir: string): Effect.Effect<void, StoreLocked, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.suspend(() => {
      mkdirSync(dataDir, { recursive: true })
      const path = join(dataDir, "LOCK")
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          const fd = openSync(path, "wx")
          writeSync(fd, me)
          closeSync(fd)
          return Effect.succeed(path)
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== "EEXIST") return Effect.die(error)
        }
        const owner = readOwner(path)
        if (owner !== undefined && isAlive(owner)) return Effect.fail(new StoreLocked({ dataDir, owner }))
        // The owner is gone: move its lock aside (one process wins the rename) and try again.
        try {
          renameSync(path, `${path}.stale-${process.pid}`)
          rmSync(`${path}.stale-${process.pid}`, { force: true })
        } catch {
          // another process took it over first; the next attempt sees its lock
        }
      }
      return Effect.fail(new StoreLocked({ dataDir, owner: readOwner(join(dataDir, "LOCK")) ?? "another process" }))
    }),
    (path) =>
      Effect.sync(() => {
        if (readOwner(path) === me) rmSync(path, { force: true })
      })
  ).pipe(Effect.asVoid)

const readOwner = (path: string): string | undefined => {
  try {
    return readFileSync(path, "utf8").trim()
  } catch {
    return undefined
  }
}

/**
 * Whether the process of `pid@host#token` runs (on another host, we cannot tell: assume it does).
 * A lock naming this process's pid with another token is a dead process's: the pid was reused.
 */
const isAlive = (owner: string): boolean => {
  if (owner === me) return true
  const [pidAndHost, token] = owner.split("#")
  const [pid, host] = (pidAndHost ?? "").split("@")
  if (host !== hostname()) return true
  if (Number(pid) === process.pid) return token === undefined ? false : token === me.split("#")[1]
  try {
    process.kill(Number(pid), 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface EmbeddedOptions extends Options {
  /** The data folder (made if missing): PGlite's database is in `<dataDir>/pglite`. */
  readonly dataDir: string
  /**
   * effect/cluster settings, over `embeddedShardingConfig` (environment variables such as
   * `SHARDS_PER_GROUP` are read first and overridden by both).
   */
  readonly shardingConfig?: Partial<ShardingConfig.ShardingConfig["Service"]> | undefined
}

/**
 * The embedded store's effect/cluster settings: one shard (one process reads every message, so
 * more shards only make each read longer), and a running call given one second to stop at a
 * normal close before it is interrupted (it runs again at the next start). A folder last opened
 * with another `shardsPerGroup` has its stored messages moved to their shards when it opens.
 *
 * @since 0.1.0
 * @category constants
 */
export const embeddedShardingConfig: Partial<ShardingConfig.ShardingConfig["Service"]> = {
  shardsPerGroup: 1,
  entityTerminationTimeout: "1 second"
}

/**
 * The embedded store: PGlite in a data folder, an effect/cluster runner of its own on it (as
 * `SingleRunner`, with replies stored in one statement each), its `WorkflowEngine`, and the
 * toolset's tables. One process at a time opens a folder (a lock file). A new folder is a copy of
 * a database this machine made once, in the temp folder, the first time (that first open takes
 * several seconds: PGlite creates the database); opening a new or an existing folder then takes
 * about a second.
 *
 * @example
 * ```ts
 * import { DurableStore } from "effect-async-toolset/durable"
 *
 * const store = DurableStore.layerEmbedded({ dataDir: "./data" })
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerEmbedded = (
  options: EmbeddedOptions
): Layer.Layer<DurableStore | WorkflowEngine | SqlClient | PgliteClient.PgliteClient, SqlError | StoreLocked> => {
  const dataDir = join(options.dataDir, "pglite")
  // the lock first; then a new folder is a copy of this machine's template database (see template.ts)
  const database = PgliteClient.layer({ dataDir }).pipe(
    Layer.provide(Layer.effectDiscard(Effect.andThen(lockDataDir(options.dataDir), Template.fromTemplate(dataDir, migrate))))
  )
  const cluster = Cluster.withSharding((stopped) =>
    Sharding.layer.pipe(
      Layer.provideMerge(Runners.layerNoop),
      Layer.provideMerge(Cluster.messageStorage({ _tag: "alone" }, { stopped })),
      Layer.provide([RunnerStorage.layerMemory, RunnerHealth.layerNoop]),
      Layer.provide(Layer.orDie(ShardingConfig.layerFromEnv({ ...embeddedShardingConfig, ...options.shardingConfig }))),
      Layer.provide(Digest.layerWebCrypto)
    )
  )
  // built on its own: another store of the process never shares its cluster (see `isolated`)
  return Cluster.isolated(layer(options).pipe(
    Layer.provideMerge(ClusterWorkflowEngine.layer),
    Layer.provideMerge(cluster),
    Layer.provideMerge(database)
  ))
}
