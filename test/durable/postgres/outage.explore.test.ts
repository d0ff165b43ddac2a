/**
 * Issue 18, defect 2: a brief outage of the database while calls wait between their steps, the
 * runner keeping its shard locks (effect/cluster's default `shardLockExpiration`, 35 s, is longer
 * than the outage). The calls in flight must go on once the database is reachable again, never
 * stay "running" for good. The runner reaches the database through a proxy that refuses new
 * connections for 3 s (closing them, or answering as a server starting up does) and drops the open
 * ones; the agent's process is a client, on its own connections.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
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
    for (let i = 1; i <= 12; i++) {
      yield* DurableToolset.activity(`step${i}`, Effect.void)
      yield* AsyncRunContext.update(`step ${i}`)
      yield* Effect.sleep("300 millis")
    }
    return "done"
  }))

const toolset = DurableToolset.define({ id: "outage", tools: [steps] })

const callIds = ["c1", "c2", "c3", "c4", "c5", "c6"]

const outage = (how: "close" | "fatal") =>
  Effect.scoped(Effect.gen(function*() {
    const url = yield* freshDatabase("eat_outage")
    const target = new URL(url)
    const proxy = yield* TcpProxy.make({ host: target.hostname, port: Number(target.port) })
    const runner = DurablePostgres.layer({
      url: Redacted.make(TcpProxy.through(url, proxy)),
      runner: { host: "127.0.0.1", port: yield* freePort },
      pollInterval: "100 millis"
    })
    yield* Layer.build(DurableToolset.layer(toolset).pipe(Layer.provideMerge(runner)))
    const client = DurablePostgres.layer({ url: Redacted.make(url), pollInterval: "100 millis" })
    yield* Effect.gen(function*() {
      const made = yield* DurableToolset.make(toolset)
      for (const callId of callIds) {
        yield* made.execute(yield* ChatContext.functionCall({ callId, name: "steps", arguments: "{}" }))
      }
      // the calls are between their steps
      yield* Effect.sleep("1 second")
      proxy.refuse(how)
      proxy.dropAll()
      yield* Effect.sleep("3 seconds")
      proxy.accept()
      const sql = yield* SqlClient
      const statuses = Effect.map(
        Effect.orDie(sql<{ status: string }>`SELECT status FROM async_toolset_call ORDER BY base`),
        (rows) => rows.map((row) => row.status)
      )
      yield* eventually(Effect.map(statuses, (all) => all.length === callIds.length && !all.includes("running")), "every call ended", 90)
      assert.deepStrictEqual(yield* statuses, callIds.map(() => "done"))
      assert.isAbove(proxy.refused(), 0)
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.mergeAll(DurableChat.layer({ sessionId: "s1" }), TestSession.layer).pipe(Layer.provideMerge(client)))
    )
  }))

describe.skipIf(testPgUrl === undefined)("DurablePostgres: a brief outage of the database", () => {
  it.live("connections dropped and new ones refused for 3 s while calls wait between steps: every call goes on to its end", () =>
    outage("close"), 150_000)

  it.live("connections dropped and the server answering 'starting up' for 3 s: every call goes on to its end", () =>
    outage("fatal"), 150_000)
})
