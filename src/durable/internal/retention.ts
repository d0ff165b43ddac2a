/**
 * Retention: what a finished call leaves in the store is pruned, by age or by count.
 *
 * A finished call leaves three things: its rows in the session's chat (the call, its outputs, its
 * updates and result: the conversation itself, never pruned here), its row in
 * `async_toolset_call` (about 1 KB: it keeps the call's id taken, so a later call reusing the
 * model's id gets a base of its own), and its execution's stored messages and replies in
 * effect/cluster's tables (the run, its activities: most of the bytes). Retention deletes the last
 * through effect/cluster's `MessageStorage.clearAddress`, and marks the call row `cleared`.
 *
 * A call is cleared only once it ended at least `settle` ago (one minute): its execution writes
 * its own last reply just after the call's row says it ended.
 *
 * @internal
 */
import { Duration, Effect, Option } from "effect"
import * as EntityAddress from "effect/cluster/EntityAddress"
import * as EntityId from "effect/cluster/EntityId"
import * as EntityType from "effect/cluster/EntityType"
import * as MessageStorage from "effect/cluster/MessageStorage"
import * as Sharding from "effect/cluster/Sharding"
import * as ShardId from "effect/cluster/ShardId"
import type { SqlClient } from "effect/sql/SqlClient"
import { makeWorkflow } from "./body.ts"
import { finishedToClear, markCleared } from "./chatItems.ts"

/** The retention settings (see `DurableStore.Options.retention`). */
export interface Retention {
  readonly maxAge?: Duration.Input | undefined
  readonly maxCount?: number | undefined
  readonly interval?: Duration.Input | undefined
}

/** How long after its end a call's execution may still be writing. */
export const settle = Duration.minutes(1)

/** Calls cleared per statement. */
const batch = 100

/**
 * One pass: clears every finished call due under `retention` at `now`; how many it cleared. Needs
 * effect/cluster's `MessageStorage` (the stores' layers have it); without it, clears nothing.
 */
export const prune = (sql: SqlClient, retention: Retention, now: number): Effect.Effect<number, unknown> =>
  Effect.gen(function*() {
    const storage = yield* Effect.serviceOption(MessageStorage.MessageStorage)
    if (Option.isNone(storage)) return 0
    const sharding = yield* Effect.serviceOption(Sharding.Sharding)
    const maxAge = retention.maxAge === undefined ? undefined : Duration.fromInputUnsafe(retention.maxAge)
    const options = {
      endedBefore: maxAge === undefined ? Number.NEGATIVE_INFINITY : now - Duration.toMillis(maxAge),
      keep: retention.maxCount,
      settledBefore: now - Duration.toMillis(settle),
      limit: batch
    }
    let cleared = 0
    while (true) {
      const due = yield* finishedToClear(sql, options)
      for (const call of due) {
        const workflow = makeWorkflow(call.toolsetId)
        const entityId = EntityId.make(yield* workflow.executionId({ sessionId: call.sessionId, base: call.base }))
        const address = EntityAddress.make({
          entityType: EntityType.make(`Workflow/${workflow._tag}`),
          entityId,
          // the SQL storage deletes by entity type and id; the shard is named for other storages
          shardId: Option.isSome(sharding) ? sharding.value.getShardId(entityId, "default") : ShardId.make("default", 1)
        })
        yield* storage.value.clearAddress(address)
        yield* markCleared(sql, call.sessionId, call.base)
      }
      cleared += due.length
      if (due.length < batch) return cleared
    }
  })

/**
 * Prunes at start and then every `interval` (default 10 minutes) for the scope; a failed pass is
 * logged and tried again at the next.
 */
export const run = (sql: SqlClient, retention: Retention) =>
  Effect.gen(function*() {
    const interval = yield* check(retention)
    // effect/cluster's clearAddress finds an execution's stored messages by entity type and id; its
    // own indexes serve neither (every call of a toolset shares one entity type): without this,
    // each call cleared reads every stored message of its toolset.
    // (Two processes opening at once may race to make it: the one that loses goes on without it.)
    yield* Effect.gen(function*() {
      const [present] = yield* sql<{ present: boolean }>`SELECT to_regclass('cluster_messages') IS NOT NULL AS present`
      if (present?.present) {
        yield* sql`CREATE INDEX IF NOT EXISTS async_toolset_cluster_messages_entity ON cluster_messages (entity_type, entity_id)`
      }
    }).pipe(Effect.catchCause((cause) => Effect.logDebug("Retention: the index of stored messages by entity was not made", cause)))
    const pass = Effect.clockWith((clock) => prune(sql, retention, clock.currentTimeMillisUnsafe())).pipe(
      Effect.tap((n) => n > 0 ? Effect.logDebug(`Retention: cleared the stored messages of ${n} finished calls`) : Effect.void),
      Effect.catchCause((cause) => Effect.logWarning("Retention: a pass failed; the next one tries again", cause))
    )
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(pass, Effect.sleep(interval))))
  })

/**
 * The settings, checked before the first pass (a `maxAge` that is not a duration would fail every
 * pass, an `interval` of 0 would run them back to back): a defect naming the setting; else the
 * interval.
 */
const check = (retention: Retention): Effect.Effect<Duration.Duration> =>
  Effect.suspend(() => {
    const wrong = (setting: string, value: unknown, expected: string) =>
      Effect.die(new Error(`DurableStore option retention.${setting} is ${JSON.stringify(value) ?? String(value)}: expected ${expected}.`))
    if (retention.maxAge !== undefined) {
      const maxAge = Duration.fromInput(retention.maxAge)
      if (Option.isNone(maxAge) || Duration.isNegative(maxAge.value)) {
        return wrong("maxAge", retention.maxAge, "a duration such as \"7 days\"")
      }
    }
    const { maxCount } = retention
    if (maxCount !== undefined && !(Number.isSafeInteger(maxCount) && maxCount >= 0)) {
      return wrong("maxCount", maxCount, "a whole number of calls, 0 or more")
    }
    const interval = Duration.fromInput(retention.interval ?? "10 minutes")
    if (Option.isNone(interval) || !Duration.isFinite(interval.value) || Duration.toMillis(interval.value) < 1000) {
      return wrong("interval", retention.interval, "a duration of a second or more, such as \"10 minutes\"")
    }
    return Effect.succeed(interval.value)
  })
