/**
 * `npm run bench:durable`: what durability costs. The same background call (one update, then its
 * result delivered into the chat and replied to: W1 of `npm run bench`) through
 *
 * - the in-memory `AsyncToolset` (the reference: durable is opt-in),
 * - the durable toolset on the embedded store (PGlite, effect/cluster's SingleRunner),
 * - the durable toolset on PostgreSQL (one socket runner), when BENCH_PG_URL (or TEST_PG_URL) is set,
 *
 * each over the test kit's in-memory session. Measured: calls per second one after the other, and
 * with 10 calls at a time; the store's growth per call (bytes and rows, per table); how long the
 * store takes to open.
 *
 *   npm run bench:durable                                     (table on stdout)
 *   BENCH_PG_URL=postgres://... npm run bench:durable         (with PostgreSQL)
 *   BENCH_DURABLE_CALLS=500 npm run bench:durable             (calls per sample; default 200)
 */
import { dirname } from "node:path"
import * as os from "node:os"
import { Effect, Layer, Redacted, Schema } from "effect"
import type { Context } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import { AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { freshDataDir } from "../test/support/pglite.ts"

const calls = Number(process.env.BENCH_DURABLE_CALLS ?? 200)
const pgUrl = process.env.BENCH_PG_URL ?? process.env.TEST_PG_URL

/** The call of W1: one update (the call returns), then the result. */
const work = FunctionTool.make("work", {
  description: "Works in the background",
  parameters: Schema.Struct({ n: Schema.Number }),
  onDuplicateCall: "allow"
}, ({ n }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`working on ${n}`)
    return `done ${n}`
  }))

const durableSet = DurableToolset.define({ id: "bench", tools: [work] })

interface Row {
  readonly side: string
  readonly sequential: number
  readonly concurrent: number
  readonly open?: number | undefined
  readonly storage?: ReadonlyArray<readonly [string, number, number]> | undefined
}

const modelCalls = (prefix: string, count: number) =>
  Effect.forEach(Array.from({ length: count }, (_, i) => i), (i) =>
    ChatContext.functionCall({ callId: `${prefix}_${i}`, name: "work", arguments: `{"n":${i}}` }))

/** Calls per second: each call executed, then its result delivered and replied to, before the next. */
const sequential = (toolset: AsyncToolset.AsyncToolset, prefix: string) =>
  Effect.gen(function*() {
    const batch = yield* modelCalls(prefix, calls)
    const started = performance.now()
    for (const call of batch) {
      const output = yield* toolset.execute(call)
      if (!AsyncToolset.isPending(output)) return yield* Effect.die(new Error(`not pending: ${output.output}`))
      yield* toolset.awaitIdle
    }
    return calls / ((performance.now() - started) / 1000)
  })

/** Calls per second with 10 at a time, until every result was delivered and replied to. */
const concurrent = (toolset: AsyncToolset.AsyncToolset, prefix: string) =>
  Effect.gen(function*() {
    const batch = yield* modelCalls(prefix, calls)
    const started = performance.now()
    yield* Effect.forEach(batch, (call) => toolset.execute(call), { concurrency: 10, discard: true })
    yield* toolset.awaitIdle
    return calls / ((performance.now() - started) / 1000)
  })

const tables = ["cluster_messages", "cluster_replies", "async_toolset_calls", "async_toolset_chat", "async_toolset_sessions"]

/** Each table's size in bytes (with its indexes and TOAST) and rows. */
const sizes = Effect.gen(function*() {
  const sql = yield* SqlClient
  const out = new Map<string, readonly [number, number]>()
  for (const table of tables) {
    const [row] = yield* sql<{ bytes: string; rows: string }>`SELECT pg_total_relation_size(${table}::regclass)::text AS bytes,
      (SELECT count(*) FROM ${sql(table)})::text AS rows`
    out.set(table, [Number(row!.bytes), Number(row!.rows)])
  }
  return out
})

/** The durable toolset on a store: both rates, and the store's growth per call. */
const durableSide = (
  side: string,
  store: Layer.Layer<DurableStore.DurableStore | WorkflowEngine | SqlClient, unknown>
) =>
  Effect.gen(function*() {
    const opened = performance.now()
    const context: Context.Context<DurableStore.DurableStore | WorkflowEngine | SqlClient> = yield* Layer.build(store)
    const open = performance.now() - opened
    return yield* Effect.gen(function*() {
      const before = yield* sizes
      const run = (sessionId: string, measure: (t: AsyncToolset.AsyncToolset, prefix: string) => Effect.Effect<number, unknown, never>) =>
        Effect.gen(function*() {
          const toolset = yield* DurableToolset.make(durableSet)
          return yield* measure(toolset, sessionId)
        }).pipe(
          Effect.scoped,
          Effect.provide(Layer.mergeAll(DurableChat.layer({ sessionId }), TestSession.layer))
        )
      const id = Date.now().toString(36)
      yield* run(`warm_${id}`, (t, p) => Effect.as(concurrent(t, p), 0))
      const warm = yield* sizes
      const seq = yield* run(`seq_${id}`, sequential)
      const conc = yield* run(`conc_${id}`, concurrent)
      const after = yield* sizes
      void before
      const storage = tables.map((table) => {
        const [b0, r0] = warm.get(table)!
        const [b1, r1] = after.get(table)!
        return [table, (b1 - b0) / (2 * calls), (r1 - r0) / (2 * calls)] as const
      })
      return { side, sequential: seq, concurrent: conc, open, storage } satisfies Row
    }).pipe(Effect.provide(context), Effect.provide(DurableToolset.layer(durableSet).pipe(Layer.provide(Layer.succeedContext(context)))))
  }).pipe(Effect.scoped)

const inMemory = Effect.gen(function*() {
  const run = (measure: (t: AsyncToolset.AsyncToolset, prefix: string) => Effect.Effect<number, unknown, never>) =>
    Effect.gen(function*() {
      const toolset = yield* AsyncToolset.make({ id: "bench", tools: [work] })
      return yield* measure(toolset, "mem")
    }).pipe(Effect.scoped, Effect.provide(TestSession.layer))
  yield* run((t, p) => Effect.as(concurrent(t, `${p}w`), 0))
  return { side: "in-memory AsyncToolset", sequential: yield* run(sequential), concurrent: yield* run(concurrent) } satisfies Row
})

const format = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })

const main = Effect.gen(function*() {
  const rows: Array<Row> = []
  console.error(`in memory (${calls} calls per sample)...`)
  rows.push(yield* inMemory)
  console.error("embedded (PGlite in a fresh copy of an initialized folder)...")
  const dataDir = dirname(yield* Effect.promise(() => freshDataDir()))
  rows.push(yield* durableSide("durable, embedded (PGlite, SingleRunner)", DurableStore.layerEmbedded({ dataDir })))
  if (pgUrl !== undefined && pgUrl !== "") {
    console.error("PostgreSQL (one socket runner)...")
    const { DurablePostgres } = yield* Effect.promise(() => import("effect-async-toolset/durable/postgres"))
    rows.push(yield* durableSide(
      "durable, PostgreSQL (one socket runner)",
      DurablePostgres.layer({ url: Redacted.make(pgUrl), runner: { host: "127.0.0.1", port: 34500 + (process.pid % 500) } })
    ))
  }
  const reference = rows[0]!
  const lines = [
    `Measured ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC on ${os.cpus().length} cores (${os.cpus()[0]?.model.trim()}), ` +
    `Node ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(1)).join(" ")}; ${calls} calls per sample.`,
    "",
    "| side | sequential calls/s | 10 at a time, calls/s | vs in-memory (sequential) | store open (ms) |",
    "|---|---:|---:|---:|---:|",
    ...rows.map((row) =>
      `| ${row.side} | ${format(row.sequential)} | ${format(row.concurrent)} | ${
        row === reference ? "1" : `1/${format(reference.sequential / row.sequential)}`
      } | ${row.open === undefined ? "–" : format(row.open)} |`
    ),
    "",
    "Store growth per call (after a warm-up; cluster_* are effect/cluster's tables, async_toolset_* the toolset's):",
    "",
    `| side | ${tables.join(" | ")} | total |`,
    `|---|${tables.map(() => "---:").join("|")}|---:|`,
    ...rows.filter((row) => row.storage !== undefined).map((row) => {
      const cells = row.storage!.map(([, bytes, count]) => `${format(bytes)} B, ${format(count, 1)} rows`)
      const total = row.storage!.reduce((sum, [, bytes]) => sum + bytes, 0)
      return `| ${row.side} | ${cells.join(" | ")} | ${format(total)} B |`
    })
  ]
  console.log(lines.join("\n"))
})

Effect.runPromise(main).then(() => process.exit(0), (error: unknown) => {
  console.error(error)
  process.exit(1)
})
