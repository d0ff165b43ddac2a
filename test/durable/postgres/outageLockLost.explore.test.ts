/**
 * An outage that also ends the runner's shard-lock session while a step's result is being saved
 * again (issue 18, defect 2): the runner loses its shards (PostgreSQL drops a session's advisory
 * locks with it), and effect/cluster releases them, waiting for the entity whose save goes on
 * (uninterruptible) until the database answers. Nothing may hang, and the call ends once, with one
 * stored result per step (effect/cluster keeps one final reply per request).
 *
 * - One runner: once the database answers, the save ends, the shards are released and taken
 *   again, and the call goes on.
 * - Two runners (effect/cluster's fastFailover): the runner cut off from the database keeps trying
 *   its save while the other takes its shards, runs the step again and goes on with the call; the
 *   first runner's save, once the database answers, finds the step's result stored.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Option, Redacted, Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { ChatContext } from "effect-async-toolset"
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"
import { TestSession } from "effect-async-toolset/testing"
import { eventually } from "../../support/durable.ts"
import { pairOf } from "../../support/replies.ts"
import { callsEnded, callStatuses, gatedSteps, savesRefused, stepStarted } from "../../support/outage.ts"
import * as TcpProxy from "../../support/tcpProxy.ts"
import { freePort, freshDatabase, testPgUrl } from "../pgDatabase.ts"

// Opened once the outage has begun: the second step ends, and its result cannot be saved.
let step2Runs = 0
const steps3 = gatedSteps("outage_lock_lost", () => void step2Runs++)
const toolset = steps3.toolset

const lockLost = (runners: 1 | 2) =>
  Effect.scoped(Effect.gen(function*() {
    steps3.reset()
    step2Runs = 0
    const url = yield* freshDatabase("eat_outage")
    const target = new URL(url)
    const proxy = yield* TcpProxy.make({ host: target.hostname, port: Number(target.port) })
    const runner = (through: string) =>
      Effect.map(freePort, (port) =>
        DurableToolset.layer(toolset).pipe(Layer.provideMerge(DurablePostgres.layer({
          url: Redacted.make(through),
          runner: { host: "127.0.0.1", port },
          pollInterval: "100 millis",
          ...(runners === 2 ? { shardingConfig: DurablePostgres.fastFailover } : {})
        }))))
    const first = yield* Scope.make()
    yield* Layer.buildWithScope(yield* runner(TcpProxy.through(url, proxy)), first)
    const client = DurablePostgres.layer({
      url: Redacted.make(url),
      pollInterval: "100 millis",
      ...(runners === 2 ? { shardingConfig: DurablePostgres.fastFailover } : {})
    })
    yield* Effect.gen(function*() {
      const made = yield* DurableToolset.make(toolset)
      yield* made.execute(yield* ChatContext.functionCall({ callId: "c1", name: "gated", arguments: "{}" }))
      const sql = yield* SqlClient
      yield* stepStarted(sql, "step2")
      // the step's result is being saved, and refused; then the shard-lock session dies too
      yield* savesRefused(proxy, steps3.open)
      proxy.dropAll()
      const second = yield* Scope.make()
      if (runners === 2) {
        // another runner, on the database directly, takes the shards and goes on with the call
        yield* Layer.buildWithScope(yield* runner(url), second)
      } else {
        yield* Effect.sleep("4 seconds")
      }
      if (runners === 2) {
        yield* callsEnded(sql, "the call ended on the other runner", 40)
      }
      proxy.accept()
      yield* callsEnded(sql, "the call ended", 40)
      assert.deepStrictEqual(yield* callStatuses(sql), ["done"])
      // the first runner's close ends (nothing waits for good)
      const closed = yield* Effect.forkChild(Scope.close(first, Exit.void))
      assert.isTrue(Option.isSome(yield* Fiber.await(closed).pipe(Effect.timeoutOption("30 seconds"))), "the runner's close ended")
      yield* Scope.close(second, Exit.void)
      // one final reply per request, every request processed, the result in the chat once
      const replies = yield* Effect.orDie(sql<{ n: number }>`SELECT count(*)::int AS n FROM cluster_replies WHERE kind = 0 GROUP BY request_id HAVING count(*) > 1`)
      assert.deepStrictEqual(replies, [])
      const unprocessed = yield* Effect.orDie(sql<{ message_id: string }>`SELECT message_id FROM cluster_messages WHERE NOT processed`)
      assert.deepStrictEqual(unprocessed, [])
      const session = yield* TestSession.TestSession
      yield* eventually(
        Effect.map(session.chat, (chat) => chat.items.some((i) => i._tag === "FunctionCallOutput" && i.callId === "c1_final")),
        "the result reached the chat"
      )
      assert.strictEqual(pairOf(yield* session.chat, "c1_final").output.output, "done")
      assert.isAtLeast(step2Runs, 1, "step2 ran")
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.mergeAll(DurableChat.layer({ sessionId: "s1" }), TestSession.layer).pipe(Layer.provideMerge(client)))
    )
  }))

describe.skipIf(testPgUrl === undefined)("DurablePostgres: an outage that ends the shard-lock session during a save", () => {
  it.live("one runner: the save ends once the database answers, the runner takes its shards again, the call ends once", () =>
    lockLost(1), 90_000)

  it.live("two runners: the other takes the shards and ends the call; the cut-off runner's save finds the result stored", () =>
    lockLost(2), 90_000)
})
