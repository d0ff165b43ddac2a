/**
 * Where durable calls and chats are kept: a SQL database (through effect's `SqlClient`) holding
 * effect/cluster's messages and the toolset's own tables, and the `WorkflowEngine` that runs the
 * calls.
 *
 * `layerEmbedded` needs no server: PGlite in a data folder, effect/cluster's `SingleRunner`, and a
 * lock file so that two processes never open the same folder. On PostgreSQL with several runner
 * processes, `effect-async-toolset/durable/postgres` gives the same services (or compose `layer`
 * with your own cluster layers).
 *
 * @since 0.1.0
 */
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"
import { Context, Deferred, Duration, Effect, Exit, Layer, Schema } from "effect"
import type { Scope } from "effect"
import * as ClusterWorkflowEngine from "effect/cluster/ClusterWorkflowEngine"
import type * as ShardingConfig from "effect/cluster/ShardingConfig"
import * as SingleRunner from "effect/cluster/SingleRunner"
import * as Digest from "effect/crypto/Digest"
import { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import { migrate } from "./durable/internal/tables.ts"
import * as PgliteClient from "./PgliteClient.ts"

/**
 * @since 0.1.0
 * @category services
 */
export class DurableStore extends Context.Service<DurableStore, {
  readonly sql: SqlClient
  /** How often a session's watchers look for changes made by other processes. */
  readonly pollInterval: Duration.Duration
  /** Wakes this process's watchers of a session (after a change of its calls or chat was committed). */
  readonly signal: (sessionId: string) => void
  /**
   * Completes at the session's next signal in this process, or after `pollInterval` (a change made
   * by another process is seen then).
   */
  readonly awaitChange: (sessionId: string) => Effect.Effect<void>
  /** Wakes the execution of a call in this process: it was asked to stop (its cancellation is committed). */
  readonly signalCall: (sessionId: string, base: string) => void
  /** Completes at the call's next signal in this process, or after `pollInterval`. */
  readonly awaitCall: (sessionId: string, base: string) => Effect.Effect<void>
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
  // Whoever waits for a key (a session, or a call: `<session>\u0000<base>`) in this process.
  const waiting = new Map<string, Deferred.Deferred<void>>()
  const wake = (key: string) => {
    const deferred = waiting.get(key)
    if (deferred === undefined) return
    waiting.delete(key)
    Deferred.doneUnsafe(deferred, Exit.void)
  }
  const wait = (key: string) =>
    Effect.suspend(() => {
      let deferred = waiting.get(key)
      if (deferred === undefined) waiting.set(key, deferred = Deferred.makeUnsafe<void>())
      return Effect.raceFirst(Deferred.await(deferred), Effect.sleep(pollInterval))
    })
  return DurableStore.of({
    sql,
    pollInterval,
    signal: wake,
    awaitChange: wait,
    signalCall: (sessionId, base) => wake(`${sessionId}\u0000${base}`),
    awaitCall: (sessionId, base) => wait(`${sessionId}\u0000${base}`)
  })
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

/**
 * Takes the data folder's lock file (`LOCK`, holding the owner's pid and host) for the scope. A lock
 * left by a process that is gone (killed, crashed) is taken over; one held by a live process fails
 * with `StoreLocked`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const lockDataDir = (dataDir: string): Effect.Effect<void, StoreLocked, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.suspend(() => {
      mkdirSync(dataDir, { recursive: true })
      const path = join(dataDir, "LOCK")
      const me = `${process.pid}@${hostname()}`
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
        if (readOwner(path) === `${process.pid}@${hostname()}`) rmSync(path, { force: true })
      })
  ).pipe(Effect.asVoid)

const readOwner = (path: string): string | undefined => {
  try {
    return readFileSync(path, "utf8").trim()
  } catch {
    return undefined
  }
}

/** Whether the process of `pid@host` runs (on another host, we cannot tell: assume it does). */
const isAlive = (owner: string): boolean => {
  const [pid, host] = owner.split("@")
  if (host !== hostname()) return true
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
  /** effect/cluster settings, over its defaults and environment. */
  readonly shardingConfig?: Partial<ShardingConfig.ShardingConfig["Service"]> | undefined
}

/**
 * The embedded store: PGlite in a data folder, effect/cluster's `SingleRunner` on it, its
 * `WorkflowEngine`, and the toolset's tables. One process at a time opens a folder (a lock file);
 * opening a new folder takes several seconds (PGlite creates its database), reopening one about
 * one to two seconds.
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
  const database = PgliteClient.layer({ dataDir: join(options.dataDir, "pglite") }).pipe(
    Layer.provide(Layer.effectDiscard(lockDataDir(options.dataDir)))
  )
  return layer(options).pipe(
    Layer.provideMerge(ClusterWorkflowEngine.layer),
    Layer.provideMerge(
      SingleRunner.layer({ runnerStorage: "memory", shardingConfig: { entityTerminationTimeout: "1 second", ...options.shardingConfig } }).pipe(Layer.orDie)
    ),
    Layer.provide(Digest.layerWebCrypto),
    Layer.provideMerge(database)
  )
}
