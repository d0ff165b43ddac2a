/**
 * Issue 18, defect 3: with few connections allowed (the server refuses connections beyond 2), a
 * call's start meets a store that fails for a moment. It was tried again 3 times at once, and
 * effect/cluster's failure to store the execution's message (a defect) not at all: calls were
 * "could not be started", and those already recorded stayed "running" for good. Now a start is
 * tried again under a schedule, and a call that did not start has its record ended.
 */
import { assert, describe, it } from "@effect/vitest"
import { PgClient } from "@effect/sql-pg"
import { Context, Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"
import { TestSession } from "effect-async-toolset/testing"
import { eventually } from "../../support/durable.ts"
import * as TcpProxy from "../../support/tcpProxy.ts"
import { freePort, freshDatabase, testPgUrl } from "../pgDatabase.ts"

const steps = FunctionTool.make("steps", { description: "Takes steps", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    for (let i = 1; i <= 5; i++) {
      yield* DurableToolset.activity(`step${i}`, Effect.void)
      yield* AsyncRunContext.update(`step ${i}`)
      yield* Effect.sleep("50 millis")
    }
    return "done"
  }))

const toolset = DurableToolset.define({ id: "few", tools: [steps] })

describe.skipIf(testPgUrl === undefined)("DurablePostgres: few connections", () => {
  it.live("calls on a runner allowed 2 connections all end done", () =>
    Effect.scoped(Effect.gen(function*() {
      const url = yield* freshDatabase("eat_few")
      const target = new URL(url)
      const proxy = yield* TcpProxy.make({ host: target.hostname, port: Number(target.port) })
      const store = DurablePostgres.layer({
        url: Redacted.make(TcpProxy.through(url, proxy)),
        runner: { host: "127.0.0.1", port: yield* freePort },
        shardingConfig: DurablePostgres.fastFailover,
        pollInterval: "100 millis"
      })
      // the test reads on connections of its own (not one of the runner's few)
      const sql = Context.get(yield* Layer.build(Layer.orDie(PgClient.layer({ url: Redacted.make(url) }))), SqlClient)
      const callIds = Array.from({ length: 12 }, (_, i) => `c${i + 1}`)
      yield* Effect.gen(function*() {
        const made = yield* DurableToolset.make(toolset)
        proxy.limit(2)
        const outputs = yield* Effect.forEach(callIds, (callId) =>
          Effect.flatMap(ChatContext.functionCall({ callId, name: "steps", arguments: "{}" }), made.execute), { concurrency: "unbounded" })
        // each started (its start tried again while the store refused connections)
        for (const output of outputs) assert.include(output.output, "reports progress: step 1")
        yield* eventually(
          Effect.map(
            Effect.orDie(sql<{ status: string }>`SELECT status FROM async_toolset_call`),
            (rows) => rows.length === callIds.length && rows.every((row) => row.status !== "running")
          ),
          "every call ended",
          60
        )
        const rows = yield* Effect.orDie(sql<{ base: string; status: string; first_output: string | null }>`SELECT base, status, first_output FROM async_toolset_call ORDER BY base`)
        assert.deepStrictEqual(rows.filter((row) => row.status !== "done"), [])
      }).pipe(
        Effect.scoped,
        Effect.provide(Layer.mergeAll(DurableToolset.layer(toolset), DurableChat.layer({ sessionId: "s1" }), TestSession.layer).pipe(Layer.provideMerge(store)))
      )
    })), 120_000)
})
