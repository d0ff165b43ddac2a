/**
 * Two stores in one process, one built where the other is provided (an Effect provided with a
 * store, running code provided with another): each has its own effect/cluster runner and workflow
 * engine. effect/cluster's layers are module constants (`Sharding.layer`,
 * `ClusterWorkflowEngine.layer`), and a layer built inside an Effect provided with layers reuses
 * what those built (Effect's memo map): the inner store's calls ran on the outer store's cluster,
 * their messages in the outer store's database.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { dirname } from "node:path"
import { SqlClient } from "effect/sql/SqlClient"
import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { freshDataDir } from "../support/pglite.ts"
import { call } from "../support/replies.ts"

const step = FunctionTool.make("step", { description: "Takes a step" }, () =>
  Effect.gen(function*() {
    yield* DurableToolset.activity("step1", Effect.void)
    yield* AsyncRunContext.update("stepped")
    return "done"
  }))

const inner = DurableToolset.define({ id: "inner", tools: [step] })

const messages = Effect.flatMap(SqlClient, (sql) =>
  Effect.map(Effect.orDie(sql<{ n: number }>`SELECT count(*)::int AS n FROM cluster_messages`), (rows) => rows[0]!.n))

describe("DurableStore: a store built where another is provided", () => {
  it.live("runs its calls on its own cluster, in its own database", () =>
    Effect.gen(function*() {
      const outerDir = dirname(yield* Effect.promise(() => freshDataDir()))
      const innerDir = dirname(yield* Effect.promise(() => freshDataDir()))
      yield* Effect.gen(function*() {
        const ran = yield* Effect.gen(function*() {
          const toolset = yield* DurableToolset.make(inner)
          yield* toolset.execute(yield* call("c1", "step"))
          yield* toolset.awaitIdle
          return yield* messages
        }).pipe(
          Effect.scoped,
          Effect.provide(
            Layer.mergeAll(DurableToolset.layer(inner), DurableChat.layer({ sessionId: "s1" }), TestSession.layer).pipe(
              Layer.provideMerge(DurableStore.layerEmbedded({ dataDir: innerDir }))
            )
          )
        )
        assert.isAbove(ran, 0, "the inner store's database has the call's messages")
        assert.strictEqual(yield* messages, 0, "the outer store's database has none")
      }).pipe(Effect.provide(DurableStore.layerEmbedded({ dataDir: outerDir })))
    }), { timeout: 60_000 })
})
