/**
 * The outage tests' common parts (test/durable/postgres/outage*.explore.test.ts, runnerRestart):
 * a tool of three durable steps whose second waits at a gate (opened once the fault has begun, so
 * the step's result is saved during it), and the store's view of where calls are.
 */
import { Deferred, Effect, Layer, Redacted } from "effect"
import type { SqlClient } from "effect/sql/SqlClient"
import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { DurableToolset } from "effect-async-toolset/durable"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"
import { freePort, freshDatabase } from "../durable/pgDatabase.ts"
import { eventually } from "./durable.ts"
import * as TcpProxy from "./tcpProxy.ts"

/**
 * A toolset `id` with one tool, `gated`: step1, an update, step2 (waits for `open`; `onStep2` once
 * it ran), an update, step3, "done". `reset` closes the gate again (at each test's start).
 */
export const gatedSteps = (id: string, onStep2: () => void = () => {}) => {
  let gate = Deferred.makeUnsafe<void>()
  const gated = FunctionTool.make("gated", { description: "Takes steps", onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* DurableToolset.activity("step1", Effect.void)
      yield* AsyncRunContext.update("step 1")
      yield* DurableToolset.activity("step2", Effect.suspend(() => Effect.andThen(Deferred.await(gate), Effect.sync(onStep2))))
      yield* AsyncRunContext.update("step 2")
      yield* DurableToolset.activity("step3", Effect.void)
      return "done"
    }))
  return {
    toolset: DurableToolset.define({ id, tools: [gated] }),
    reset: (): void => {
      gate = Deferred.makeUnsafe<void>()
    },
    open: Effect.suspend(() => Deferred.succeed(gate, undefined))
  }
}

/** Waits until a call's durable step `step` was sent (its effect/cluster message stored). */
export const stepStarted = (sql: SqlClient, step: string) =>
  eventually(
    Effect.map(
      Effect.orDie(sql<{ n: number }>`SELECT count(*)::int AS n FROM cluster_messages WHERE message_id LIKE ${`%/activity/step/${step}/%`}`),
      (rows) => rows[0]!.n === 1
    ),
    `${step} started`
  )

/** The statuses of the store's calls, by base. */
export const callStatuses = (sql: SqlClient) =>
  Effect.map(
    Effect.orDie(sql<{ status: string }>`SELECT status FROM async_toolset_call ORDER BY base`),
    (rows) => rows.map((row) => row.status)
  )

/** Waits until no call of the store is running. */
export const callsEnded = (sql: SqlClient, what: string, seconds: number) =>
  eventually(Effect.map(callStatuses(sql), (all) => !all.includes("running")), what, seconds)

/** A new database of the test server, and a proxy in front of it (for the runner: the faults are the proxy's). */
export const proxiedDatabase = Effect.gen(function*() {
  const url = yield* freshDatabase("eat_outage")
  const target = new URL(url)
  const proxy = yield* TcpProxy.make({ host: target.hostname, port: Number(target.port) })
  return { url, proxy }
})

/** A runner of `toolset` reaching the database through `proxy`, on a free port. */
export const runnerThrough = <Tools extends ReadonlyArray<FunctionTool.Any>>(
  url: string,
  proxy: TcpProxy.TcpProxy,
  toolset: DurableToolset.DurableToolset<Tools>
) =>
  Effect.map(freePort, (port) =>
    DurableToolset.layer(toolset).pipe(Layer.provideMerge(DurablePostgres.layer({
      url: Redacted.make(TcpProxy.through(url, proxy)),
      runner: { host: "127.0.0.1", port },
      pollInterval: "100 millis"
    }))))

/**
 * Starts the fault the step's save meets: new connections refused, every connection dropped but the
 * shard-lock session; then opens the gate and waits until the save was refused, and tried again.
 */
export const savesRefused = (proxy: TcpProxy.TcpProxy, open: Effect.Effect<unknown>) =>
  Effect.gen(function*() {
    proxy.refuse("close")
    proxy.dropAllBut("pg_try_advisory_lock")
    yield* open
    const refused = proxy.refused()
    yield* eventually(Effect.sync(() => proxy.refused() > refused + 2), "the save tried again")
  })
