/**
 * A runner closed while a call waits between its steps, and a new runner started in the same
 * process (an agent's process that is also a client of the cluster): the new runner takes the
 * call's shard and goes on with it from its stored steps. It used to register nothing and run
 * nothing: the new runner was built where the client's store was provided, and effect/cluster's
 * layers (module constants) built by the client were reused, so it was a second client.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Layer, Redacted, Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"
import { TestSession } from "effect-async-toolset/testing"
import { eventually } from "../../support/durable.ts"
import { freePort, freshDatabase, testPgUrl } from "../pgDatabase.ts"

// Opened once the first runner is closed: the call waits on it between its second and third steps.
let between = Deferred.makeUnsafe<void>()

const paused = FunctionTool.make("paused", { description: "Takes steps", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* DurableToolset.activity("step1", Effect.void)
    yield* AsyncRunContext.update("step 1")
    yield* DurableToolset.activity("step2", Effect.void)
    yield* Deferred.await(between)
    yield* DurableToolset.activity("step3", Effect.void)
    return "done"
  }))

const toolset = DurableToolset.define({ id: "runner_restart", tools: [paused] })

describe.skipIf(testPgUrl === undefined)("DurablePostgres: a runner restarted in the agent's process", () => {
  it.live("a call waiting between its steps when its runner closed goes on on the next runner", () =>
    Effect.scoped(Effect.gen(function*() {
      between = Deferred.makeUnsafe<void>()
      const url = yield* freshDatabase("eat_restart")
      const runner = Effect.map(freePort, (port) =>
        DurableToolset.layer(toolset).pipe(Layer.provideMerge(DurablePostgres.layer({
          url: Redacted.make(url),
          runner: { host: "127.0.0.1", port },
          pollInterval: "100 millis"
        }))))
      const first = yield* Scope.make()
      yield* Layer.buildWithScope(yield* runner, first)
      const client = DurablePostgres.layer({ url: Redacted.make(url), pollInterval: "100 millis" })
      yield* Effect.gen(function*() {
        const made = yield* DurableToolset.make(toolset)
        yield* made.execute(yield* ChatContext.functionCall({ callId: "c1", name: "paused", arguments: "{}" }))
        const sql = yield* SqlClient
        yield* eventually(
          Effect.map(
            Effect.orDie(sql<{ n: number }>`SELECT count(*)::int AS n FROM cluster_messages
              WHERE processed AND message_id LIKE ${"%/activity/step/step2/%"}`),
            (rows) => rows[0]!.n === 1
          ),
          "the second step ended"
        )
        yield* Scope.close(first, Exit.void)
        yield* Deferred.succeed(between, undefined)
        // built where the client's store is provided
        const second = yield* Scope.make()
        yield* Layer.buildWithScope(yield* runner, second)
        const statuses = Effect.map(
          Effect.orDie(sql<{ status: string }>`SELECT status FROM async_toolset_call`),
          (rows) => rows.map((row) => row.status)
        )
        yield* eventually(Effect.map(statuses, (all) => !all.includes("running")), "the call ended", 30)
        assert.deepStrictEqual(yield* statuses, ["done"])
        yield* Scope.close(second, Exit.void)
      }).pipe(
        Effect.scoped,
        Effect.provide(Layer.mergeAll(DurableChat.layer({ sessionId: "s1" }), TestSession.layer).pipe(Layer.provideMerge(client)))
      )
    })), 90_000)
})
