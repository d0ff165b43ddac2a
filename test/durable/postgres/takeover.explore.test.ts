/**
 * A call's execution that began on another runner of the cluster, then moved to the runner of the
 * process that recorded the call (the other runner shut down): it goes on from what the other
 * runner recorded, as the store has it, not from the row this process wrote when it recorded the
 * call. Two runners in this process, each with a store of its own (one process per runner in
 * production); the agent's toolset is on runner A's store.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Layer, Redacted, Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"
import { TestSession } from "effect-async-toolset/testing"
import { makeWorkflow } from "../../../src/durable/internal/body.ts"
import { shardNumber } from "../../../src/durable/internal/cluster.ts"
import { eventually } from "../../support/durable.ts"
import { callIdsInChat } from "../../support/replies.ts"
import { freePort, freshDatabase, testPgUrl } from "../pgDatabase.ts"

// (shard locks in effect/cluster's table, not advisory locks: the test reads which runner holds which shard)
const settings = {
  shardingConfig: { ...DurablePostgres.fastFailover, shardLockDisableAdvisory: true },
  pollInterval: "100 millis"
} as const

const store = (url: string, port: number) =>
  DurablePostgres.layer({ url: Redacted.make(url), runner: { host: "127.0.0.1", port }, ...settings })

describe.skipIf(testPgUrl === undefined)("DurableToolset: a call's execution moved between runners", () => {
  it.live("an execution begun on another runner goes on here from what that runner recorded: no later update is lost", () =>
    Effect.scoped(Effect.gen(function*() {
      const url = yield* freshDatabase("eat_takeover")
      const go = yield* Deferred.make<void>()
      let runs = 0
      const tool = FunctionTool.make("book_flight", { description: "Book a flight" }, () =>
        Effect.gen(function*() {
          runs++
          yield* AsyncRunContext.update("looking")
          yield* AsyncRunContext.update("found 3 flights")
          yield* Deferred.await(go)
          yield* AsyncRunContext.update("holding seat 12A")
          return "booked"
        }))
      const toolset = DurableToolset.define({ id: "travel", tools: [tool] })
      const [portA, portB] = [yield* freePort, yield* freePort]
      const scopeB = yield* Scope.make()
      yield* Layer.buildWithScope(DurableToolset.layer(toolset).pipe(Layer.provideMerge(store(url, portB))), scopeB)
      const sessionId = "s1"
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient
        const locks = Effect.map(
          Effect.orDie(sql<{ shard_id: string; address: string }>`SELECT shard_id, address FROM cluster_locks`),
          (rows) => new Map(rows.map((row) => [row.shard_id, row.address]))
        )
        // both runners hold shards (16 between them)
        yield* eventually(
          Effect.map(locks, (held) => held.size === 16 && new Set(held.values()).size === 2),
          "both runners hold shards",
          30
        )
        const held = yield* locks
        // a call id whose execution runner B holds
        const workflow = makeWorkflow(toolset.id)
        let callId: string | undefined
        for (let i = 1; callId === undefined && i < 200; i++) {
          const executionId = yield* workflow.executionId({ sessionId, base: `c${i}` })
          if (held.get(`default:${shardNumber(executionId, 16)}`)?.endsWith(`:${portB}`)) callId = `c${i}`
        }
        assert.isDefined(callId, "a call id on runner B")
        const t = yield* DurableToolset.make(toolset)
        const first = yield* t.execute(yield* ChatContext.functionCall({ callId: callId!, name: "book_flight", arguments: "{}" }))
        assert.include(first.output, "looking")
        const steps = Effect.map(
          Effect.orDie(sql<{ steps: number }>`SELECT steps FROM async_toolset_call WHERE base = ${callId!}`),
          (rows) => Number(rows[0]?.steps)
        )
        yield* eventually(Effect.map(steps, (n) => n === 2), "runner B recorded two updates")
        assert.strictEqual(runs, 1)
        // runner B shuts down: its shards (and the call's execution) move to runner A
        yield* Scope.close(scopeB, Exit.void)
        yield* eventually(Effect.sync(() => runs === 2), "the execution runs again on runner A", 30)
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
        const session = yield* TestSession.TestSession
        assert.deepStrictEqual(callIdsInChat(yield* session.chat), [`${callId}_update_1`, `${callId}_update_2`, `${callId}_final`])
        assert.strictEqual(yield* steps, 3)
      }).pipe(
        Effect.scoped,
        Effect.provide(
          Layer.mergeAll(DurableToolset.layer(toolset), DurableChat.layer({ sessionId }), TestSession.layer).pipe(
            Layer.provideMerge(store(url, portA))
          )
        )
      )
    })), 120_000)
})
