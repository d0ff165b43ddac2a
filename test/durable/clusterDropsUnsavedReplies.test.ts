/**
 * Why the durable store saves effect/cluster's replies again itself (src/durable/internal/cluster.ts,
 * issue 18 defect 2): on the bare dependency (effect 4.1.5, in-memory cluster), a persisted
 * request whose reply cannot be saved 5 times in a row (about a second: `retryRespond` in
 * `effect/cluster/internal/entityManager.ts`) is never answered, even once the storage works again:
 * the request stays "being processed" in its entity, and the storage read loop, which reads it
 * again at each poll, skips it. Its caller waits for good; nothing is logged. When this test
 * fails, effect/cluster answers it: the store's own retry can go.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Schema } from "effect"
import { PersistenceError } from "effect/cluster/ClusterError"
import * as ClusterSchema from "effect/cluster/ClusterSchema"
import * as Entity from "effect/cluster/Entity"
import * as MessageStorage from "effect/cluster/MessageStorage"
import * as RunnerHealth from "effect/cluster/RunnerHealth"
import * as Runners from "effect/cluster/Runners"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as Sharding from "effect/cluster/Sharding"
import * as ShardingConfig from "effect/cluster/ShardingConfig"
import * as Snowflake from "effect/cluster/Snowflake"
import * as Rpc from "effect/rpc/Rpc"

const Echo = Entity.make("Echo", [
  Rpc.make("ping", { success: Schema.String }).annotate(ClusterSchema.Persisted, true)
])

/** The storage's state, for the test: replies fail while `failing`. */
const state = { failing: true, failures: 0, saved: 0, reads: 0 }

const storage = Layer.effect(
  MessageStorage.MessageStorage,
  Effect.gen(function*() {
    const driver = yield* MessageStorage.MemoryDriver
    return yield* MessageStorage.makeEncoded({
      ...driver.encoded,
      saveReply: (reply) =>
        Effect.suspend(() => {
          if (state.failing) {
            state.failures++
            return Effect.fail(new PersistenceError({ cause: new Error("connection refused") }))
          }
          state.saved++
          return driver.encoded.saveReply(reply)
        }),
      unprocessedMessages: (shardIds, options) =>
        Effect.suspend(() => {
          state.reads++
          return driver.encoded.unprocessedMessages(shardIds, options)
        })
    })
  })
).pipe(Layer.provideMerge(MessageStorage.MemoryDriver.layer), Layer.provide(Snowflake.layerGenerator))

const cluster = Sharding.layer.pipe(
  Layer.provideMerge(Runners.layerNoop),
  Layer.provideMerge(storage),
  Layer.provide([RunnerStorage.layerMemory, RunnerHealth.layerNoop]),
  Layer.provide(ShardingConfig.layer({ entityMessagePollInterval: "50 millis" }))
)

const until = (check: () => boolean) =>
  Effect.gen(function*() {
    while (!check()) yield* Effect.sleep("10 millis")
  })

describe("effect/cluster (the bare dependency)", () => {
  it.live("a persisted request whose reply could not be saved 5 times is never answered, the storage working again", () =>
    Effect.gen(function*() {
      yield* Layer.build(Echo.toLayer(Effect.succeed({ ping: () => Effect.succeed("pong") })))
      const client = (yield* Echo.client)("e1")
      const call = yield* Effect.forkChild(client.ping())
      // effect/cluster tries the save 5 times, then gives up
      yield* until(() => state.failures >= 5)
      state.failing = false
      // the storage works; its read loop reads the stored request again, 5 times
      const reads = state.reads
      yield* until(() => state.reads >= reads + 5)
      assert.strictEqual(state.saved, 0, "no reply saved")
      assert.isUndefined(call.pollUnsafe(), "the caller still waits")
      yield* Fiber.interrupt(call)
    }).pipe(Effect.provide(cluster)), 30_000)
})
