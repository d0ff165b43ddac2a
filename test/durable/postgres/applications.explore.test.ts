/**
 * Issue 18, defect 1: two applications on one PostgreSQL database (a travel agent's runner with
 * toolset `jobs`, a billing agent's runner with toolset `billing`). All the runners of a database
 * formed one cluster: a call whose shard the other application's runner held waited there a
 * minute (effect/cluster's registration timeout), then was "could not be started". Now each
 * application has a cluster of its own (`application`), and without it a call that a live runner
 * cannot run fails at once, saying so.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
import type { Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
type FunctionCallOutput = ChatContext.FunctionCallOutput
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"
import { TestSession } from "effect-async-toolset/testing"
import { eventually } from "../../support/durable.ts"
import { freePort, freshDatabase, testPgUrl } from "../pgDatabase.ts"

const runJob = FunctionTool.make("run_job", { description: "Runs a job", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("job started")
    yield* Effect.sleep("200 millis")
    return "job done"
  }))

const bill = FunctionTool.make("bill", { description: "Bills", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("billing")
    yield* Effect.sleep("200 millis")
    return "billed"
  }))

const jobs = DurableToolset.define({ id: "jobs", tools: [runJob] })
const billing = DurableToolset.define({ id: "billing", tools: [bill] })

const settings = { shardingConfig: DurablePostgres.fastFailover, pollInterval: "100 millis" } as const

/** A runner of `toolset` on the database, for the scope. */
const runner = (
  url: string,
  toolset: typeof jobs | typeof billing,
  application: string | undefined
): Effect.Effect<void, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const store = DurablePostgres.layer({
      url: Redacted.make(url),
      runner: { host: "127.0.0.1", port: yield* freePort },
      ...(application === undefined ? {} : { application }),
      ...settings
    })
    yield* Layer.build(DurableToolset.layer(toolset as typeof jobs).pipe(Layer.provideMerge(store)))
  })

/**
 * A client of the application starts `callIds` of `toolset` in session s1, then `then` runs with
 * what the model got first for each (on the client's store).
 */
const startCalls = <A>(
  url: string,
  toolset: typeof jobs | typeof billing,
  application: string | undefined,
  then: (outputs: ReadonlyArray<FunctionCallOutput>) => Effect.Effect<A, never, SqlClient>
) =>
  Effect.gen(function*() {
    const made = yield* DurableToolset.make(toolset as typeof jobs)
    const name = toolset === jobs ? "run_job" : "bill"
    const outputs = []
    for (const callId of callIds) {
      outputs.push(yield* made.execute(yield* ChatContext.functionCall({ callId, name, arguments: "{}" })))
    }
    return yield* then(outputs)
  }).pipe(
    Effect.scoped,
    Effect.provide(
      Layer.mergeAll(DurableChat.layer({ sessionId: "s1" }), TestSession.layer).pipe(
        Layer.provideMerge(DurablePostgres.layer({ url: Redacted.make(url), ...(application === undefined ? {} : { application }), ...settings }))
      )
    )
  )

const callIds: ReadonlyArray<string> = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"]

describe.skipIf(testPgUrl === undefined)("DurablePostgres: two applications on one database", () => {
  it.live("with an application each, every call of each runs on its own runners, and their sessions of one id stay apart", () =>
    Effect.scoped(Effect.gen(function*() {
      const url = yield* freshDatabase("eat_apps")
      yield* runner(url, jobs, "travel")
      yield* runner(url, billing, "billing")
      // each application's calls end, and its session s1 holds its own calls only
      const allDone = (first: string, toolsetId: string) => (outputs: ReadonlyArray<FunctionCallOutput>) =>
        Effect.gen(function*() {
          for (const output of outputs) assert.include(output.output, `reports progress: ${first}`)
          const sql = yield* SqlClient
          yield* eventually(
            Effect.map(
              Effect.orDie(sql<{ n: number }>`SELECT count(*)::int AS n FROM async_toolset_call WHERE status = 'done'`),
              (rows) => Number(rows[0]!.n) === callIds.length
            ),
            `every call of ${toolsetId} is done`,
            30
          )
          const toolsets = yield* Effect.orDie(sql<{ toolset_id: string }>`SELECT DISTINCT toolset_id FROM async_toolset_item
            WHERE session_id = 's1' AND toolset_id IS NOT NULL`)
          assert.deepStrictEqual(toolsets.map((row) => row.toolset_id), [toolsetId])
        })
      yield* startCalls(url, jobs, "travel", allDone("job started", "jobs"))
      yield* startCalls(url, billing, "billing", allDone("billing", "billing"))
    })), 90_000)

  it.live("without one, a call that a live runner of the cluster cannot run fails at once, and the model is told why", () =>
    Effect.scoped(Effect.gen(function*() {
      const url = yield* freshDatabase("eat_apps")
      yield* runner(url, jobs, undefined)
      yield* runner(url, billing, undefined)
      // both runners are up and registered their toolsets (a runner just started is given time to)
      yield* Effect.scoped(Effect.gen(function*() {
        const sql = yield* SqlClient
        const registered = Effect.orDie(sql<{ n: number }>`SELECT count(*)::int AS n FROM async_toolset_runner t JOIN cluster_runners r USING (address)
          WHERE r.healthy AND t.since < NOW() - interval '2 seconds'`)
        yield* eventually(
          Effect.gen(function*() {
            const [healthy] = yield* Effect.orDie(sql<{ n: number; noted: boolean }>`SELECT count(*)::int AS n,
              to_regclass('async_toolset_runner') IS NOT NULL AS noted FROM cluster_runners WHERE healthy`)
            return healthy!.n === 2 && (!healthy!.noted || Number((yield* registered)[0]!.n) === 2)
          }),
          "both runners are registered",
          30
        )
      }).pipe(Effect.provide(DurablePostgres.layer({ url: Redacted.make(url), ...settings }))))
      yield* startCalls(url, billing, undefined, (outputs) =>
        Effect.gen(function*() {
          for (const output of outputs) {
            assert.isTrue(output.isError)
            assert.include(output.output, "bill could not be started: the service that runs it is not available right now")
          }
          // nothing was recorded: no call waits for a runner that cannot run it
          const sql = yield* SqlClient
          const rows = yield* Effect.orDie(sql<{ n: number }>`SELECT count(*)::int AS n FROM async_toolset_call`)
          assert.strictEqual(Number(rows[0]!.n), 0)
        }))
    })), 45_000)
})
