/**
 * `npm run bench:durable`: what durability costs, in one run. The same call (W1 of `npm run bench`:
 * one update, the call returns with it, then its result is delivered into the chat and replied to)
 * through three sides, on each store:
 *
 * - **ours**: `DurableToolset.make` over the test kit's session (`TestSession`), each session's
 *   chat a `DurableChat`; the session plays the agent: it answers each reply request with a
 *   message, which it hands to `DurableChat.save` (as `AiAgent` does with every item its chat
 *   gets), so the reply is stored with the record that its items are owed nothing.
 * - **floor**: a bare effect/workflow `Workflow` with one `Activity` (the update and the result as
 *   the activity's result), registered on the same store layer (same engine, cluster and message
 *   storage settings), run to its stored result (`bench/durableFloor.ts`). No toolset, no chat.
 * - **in-memory**: `AsyncToolset.make` over the same session.
 *
 * Stores: PGlite (`DurableStore.layerEmbedded`, in a fresh copy of an initialized data folder),
 * always; PostgreSQL (`DurablePostgres.layer`, this process one runner on 127.0.0.1) when
 * BENCH_PG_URL or TEST_PG_URL is set, in a database of its own made for the run (dropped after).
 *
 * Workloads: one call after the other (each until its reply), 10 and 50 calls at a time, over 1
 * session and over 10 sessions (calls spread over them in turn). A call is done when its toolset
 * reports the reply that covered it (`ReplyDelivered`); the floor's when its stored result is back.
 * Rounds alternate the sides (the order rotates each round); the table shows medians.
 *
 * Measured: calls per second; the first output's latency (`execute` until it returns; ours and
 * in-memory); SQL statements and commits per call, counted at the client (`bench/durableSql.ts`;
 * BEGIN and COMMIT included; commits are COMMITs plus writes outside a transaction), less the
 * store's idle statements over the same time (measured before, with no session open); the store's
 * growth per finished call per table; how long the store takes to open.
 *
 *   npm run bench:durable                                  (markdown on stdout, progress on stderr)
 *   BENCH_PG_URL=postgres://... npm run bench:durable      (with PostgreSQL; TEST_PG_URL works too)
 *   BENCH_DURABLE_CALLS=300 BENCH_DURABLE_ROUNDS=5 npm run bench:durable
 *   BENCH_DURABLE_OPEN=0 npm run bench:durable             (skip the new-folder open: PGlite's initdb)
 *
 * Also measured per sample: this process's CPU time per call (`process.cpuUsage`), its share of a
 * core, the main thread's share of the wall time on a core or waiting for one (from /proc: near 1.0
 * means CPU-bound, whatever the machine's load), and on PostgreSQL the server backends' CPU time
 * per call (from /proc, for a local server). These do not depend on the load the way rates do.
 *
 * For a look at one part (a profile, a quick comparison):
 *
 *   BENCH_DURABLE_STORES=pglite (or postgres)           only that store
 *   BENCH_DURABLE_SIDES=ours,floor                       only these sides
 *   BENCH_DURABLE_WORKLOADS=1x1,50x10                    only these (<at a time>x<sessions>)
 *   BENCH_DURABLE_PROFILE=/tmp/prof                      a V8 CPU profile of each measured sample's calls
 *   BENCH_DURABLE_STATEMENT_MS=1                         PGlite's mean time per statement (stderr)
 *
 * `npm run bench:durable:counters` (BENCH_DURABLE_COUNTERS=1): only the statements and commits per
 * call of ours, one after the other and 10 at a time over one session, on PGlite and (with
 * TEST_PG_URL or BENCH_PG_URL) PostgreSQL, against `bench/durable-budget.json`; exits non-zero over
 * budget or when a call fails. For CI: well under a minute.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import * as inspector from "node:inspector"
import * as net from "node:net"
import * as os from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { Context, Deferred, Effect, Exit, Layer, Logger, Redacted, References, Schema, Stream } from "effect"
import type { Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import { AgentSession, AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset, PgliteClient } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { freshDataDir } from "../test/support/pglite.ts"
import * as Floor from "./durableFloor.ts"
import { counter, countPglite, countPostgres, since, statementMs } from "./durableSql.ts"
import type { Tally } from "./durableSql.ts"

// --- settings ------------------------------------------------------------------------------------

const int = (name: string, fallback: number): number => {
  const raw = process.env[name]
  if (raw === undefined || raw === "") return fallback
  const n = Number(raw)
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, got "${raw}"`)
  return n
}

const countersOnly = process.env["BENCH_DURABLE_COUNTERS"] === "1" || process.argv.includes("--counters")
const calls = int("BENCH_DURABLE_CALLS", countersOnly ? 40 : 200)
const rounds = int("BENCH_DURABLE_ROUNDS", countersOnly ? 1 : 3)
const callTimeout = int("BENCH_DURABLE_TIMEOUT_MS", 30_000)
const idleMs = int("BENCH_DURABLE_IDLE_MS", countersOnly ? 1_500 : 3_000)
const measureNewFolder = !countersOnly && process.env["BENCH_DURABLE_OPEN"] !== "0"
const pgUrl = process.env["BENCH_PG_URL"] || process.env["TEST_PG_URL"] || undefined
/** BENCH_DURABLE_STORES=pglite or postgres: only that store (for a profile of one); default both. */
const storesOnly = (process.env["BENCH_DURABLE_STORES"] ?? "pglite,postgres").split(",").map((x) => x.trim())
const onlyList = (name: string) => {
  const raw = process.env[name]
  return raw === undefined || raw === "" ? undefined : raw.split(",").map((x) => x.trim())
}
/** BENCH_DURABLE_SIDES=ours,floor: only these sides (default all three). */
const sidesOnly = onlyList("BENCH_DURABLE_SIDES")
/** BENCH_DURABLE_WORKLOADS=1x1,50x10: only these workloads (`<at a time>x<sessions>`; default all six). */
const workloadsOnly = onlyList("BENCH_DURABLE_WORKLOADS")

// --- the call ------------------------------------------------------------------------------------

/** The call of W1: one update (the call returns with it), then the result. */
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

type Side = "ours" | "floor" | "in-memory"

interface Workload {
  readonly concurrency: number
  readonly sessions: number
}

const workloadName = (w: Workload) =>
  `${w.concurrency === 1 ? "sequential" : `${w.concurrency} at a time`}${w.sessions === 1 ? "" : `, ${w.sessions} sessions`}`

const workloads: ReadonlyArray<Workload> = countersOnly
  ? [{ concurrency: 1, sessions: 1 }, { concurrency: 10, sessions: 1 }]
  : [1, 10, 50].flatMap((concurrency) => [1, 10].map((sessions) => ({ concurrency, sessions })))
    .filter((w) => workloadsOnly === undefined || workloadsOnly.includes(`${w.concurrency}x${w.sessions}`))

type StoreServices = DurableStore.DurableStore | WorkflowEngine | SqlClient

// --- sessions ------------------------------------------------------------------------------------

/** A session with its toolset, and the calls waiting for the reply that covers them. */
interface Party {
  readonly toolset: AsyncToolset.AsyncToolset
  readonly waiting: Map<string, Deferred.Deferred<void, string>>
}

/** The session's agent: it answers each reply request with a message. */
const respond = () => Effect.succeed("Noted.")

/** The call whose final result an item's synthetic call id (`<callId>_final`) names, or "". */
const finalOf = (id: string) => id.endsWith("_final") ? id.slice(0, -"_final".length) : ""

const listen = (toolset: AsyncToolset.AsyncToolset) =>
  Effect.gen(function*() {
    const waiting = new Map<string, Deferred.Deferred<void, string>>()
    const settle = (callId: string, exit: Exit.Exit<void, string>) => {
      const deferred = waiting.get(callId)
      if (deferred === undefined) return
      waiting.delete(callId)
      Deferred.doneUnsafe(deferred, exit)
    }
    yield* toolset.events.pipe(
      Stream.runForEach((event) =>
        Effect.sync(() => {
          // a reply names the items it covers by their synthetic call ids (`<callId>_final`)
          if (event._tag === "ReplyDelivered") for (const id of event.callIds) settle(finalOf(id), Exit.void)
          else if (event._tag === "ReplySkipped") {
            for (const id of event.callIds) settle(finalOf(id), Exit.fail(`its reply was skipped (${event.reason})`))
          } else if (event._tag === "CallEnded" && event.outcome !== "done") {
            settle(event.callId, Exit.fail(`it ended ${event.outcome}`))
          }
        })
      ),
      Effect.forkScoped
    )
    // the subscription is taken when the stream starts
    yield* Effect.sleep("20 millis")
    return { toolset, waiting } satisfies Party
  })

const openOurs = (sessionId: string): Effect.Effect<Party, never, Scope.Scope | StoreServices> =>
  Effect.gen(function*() {
    const chat = yield* Effect.orDie(DurableChat.make({ sessionId }))
    const { session } = yield* TestSession.make({ onInsert: (items) => chat.save(items), respond })
    const toolset = yield* DurableToolset.make(durableSet).pipe(
      Effect.provideService(AgentSession.AgentSession, session),
      Effect.provideService(DurableChat.DurableChat, chat)
    )
    return yield* listen(toolset)
  })

const openInMemory: Effect.Effect<Party, never, Scope.Scope> = Effect.gen(function*() {
  const { session } = yield* TestSession.make({ respond })
  const toolset = yield* AsyncToolset.make({ id: "bench", tools: [work] }).pipe(
    Effect.provideService(AgentSession.AgentSession, session)
  )
  return yield* listen(toolset)
})

/** One call on a session's toolset, until the reply that covers it; pushes its first output's latency. */
const toolsetCall = (party: Party, call: ChatContext.FunctionCall, latencies: Array<number>) =>
  Effect.gen(function*() {
    const done = Deferred.makeUnsafe<void, string>()
    party.waiting.set(call.callId, done)
    const started = performance.now()
    const output = yield* party.toolset.execute(call)
    latencies.push(performance.now() - started)
    if (!AsyncToolset.isPending(output)) return yield* Effect.fail(`${call.callId}: the first output is not pending: ${output.output}`)
    yield* Deferred.await(done).pipe(Effect.mapError((reason) => `${call.callId}: ${reason}`))
  })

// --- one sample ----------------------------------------------------------------------------------

interface Sample {
  readonly side: Side
  readonly workload: Workload
  readonly perSecond: number
  /** First outputs: ms from `execute` until it returned (ours, in-memory). */
  readonly latencies: ReadonlyArray<number>
  /** Each call from its start until its reply (the floor's: its stored result), ms. */
  readonly durations: ReadonlyArray<number>
  /** Per call, less the idle statements over the sample's time (stores only). */
  readonly statements?: number | undefined
  readonly commits?: number | undefined
  readonly tally?: Tally | undefined
  /** Growth per call: table -> [bytes, rows]. */
  readonly storage?: ReadonlyMap<string, readonly [number, number]> | undefined
  /** This process's CPU time (user + system) per call, ms, over the calls. */
  readonly cpuMs: number
  /** This process's CPU time over the wall time of the calls (1.0: one core busy all along). */
  readonly cpuShare: number
  /**
   * The main thread's time running or waiting to run (runnable) over the calls' wall time, from
   * /proc (Linux): near 1.0, it never waited for anything but a core (CPU-bound); what is missing
   * to 1.0 is time it waited for I/O or a timer. Undefined where /proc is not there.
   */
  readonly busyShare?: number | undefined
  /** The PostgreSQL server's CPU time per call for this run's database (its backends), ms, when known. */
  readonly serverCpuMs?: number | undefined
}

interface Failure {
  readonly side: Side
  readonly workload: Workload
  readonly error: string
}

/** The store's idle statements per millisecond (measured with no session open). */
interface Idle {
  readonly statements: number
  readonly commits: number
}

/** Waits until no statement was sent for `quietMs` (at most `maxMs`). */
const quiet = (quietMs = 200, maxMs = 3_000) =>
  Effect.gen(function*() {
    const until = performance.now() + maxMs
    while (performance.now() < until) {
      const since = performance.now() - counter.last
      if (since >= quietMs) return
      yield* Effect.sleep(Math.max(5, Math.ceil(quietMs - since)))
    }
  })

/** Each of the store's tables: size in bytes (with its indexes and TOAST) and rows. */
const sizes = Effect.gen(function*() {
  const sql = yield* SqlClient
  const tables = yield* sql<{ readonly name: string }>`SELECT tablename AS name FROM pg_tables
    WHERE schemaname = current_schema() AND (tablename LIKE 'cluster%' OR tablename LIKE 'async_toolset%') ORDER BY tablename`
  const out = new Map<string, readonly [number, number]>()
  for (const { name } of tables) {
    const [row] = yield* sql<{ readonly bytes: string; readonly rows: string }>`SELECT
      pg_total_relation_size(${name}::regclass)::text AS bytes, (SELECT count(*) FROM ${sql(name)})::text AS rows`
    out.set(name, [Number(row!.bytes), Number(row!.rows)])
  }
  return out
}).pipe(Effect.orDie)

/** The database whose server backends' CPU time is read (`serverCpu`): set while PostgreSQL is measured. */
let serverDatabase: string | undefined

/**
 * The CPU time (ms) of the PostgreSQL server's backends connected to `serverDatabase`, read from
 * /proc (a local server; Linux): each backend's process title names its database. Undefined when
 * not measuring PostgreSQL or /proc cannot be read. A backend that exits between two reads drops
 * its time (the pool keeps its connections, so rarely).
 */
/** The main thread's [ns on a core, ns waiting for one] (/proc/<pid>/task/<pid>/schedstat), or undefined. */
const schedstat = (): readonly [number, number] | undefined => {
  try {
    const [run, wait] = readFileSync(`/proc/${process.pid}/task/${process.pid}/schedstat`, "utf8").split(" ")
    return [Number(run), Number(wait)]
  } catch {
    return undefined
  }
}

const serverCpu = (): number | undefined => {
  if (serverDatabase === undefined) return undefined
  try {
    let total = 0
    for (const pid of readdirSync("/proc")) {
      if (!/^\d+$/.test(pid)) continue
      let title: string
      try {
        title = readFileSync(`/proc/${pid}/cmdline`, "utf8")
      } catch {
        continue
      }
      if (!title.startsWith("postgres: ") || !title.includes(` ${serverDatabase} `)) continue
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
        const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command
        total += (Number(fields[11]) + Number(fields[12])) * 10
      } catch {
        continue
      }
    }
    return total
  } catch {
    return undefined
  }
}

/**
 * BENCH_DURABLE_PROFILE=<folder>: a V8 CPU profile of each measured sample's calls (and nothing
 * else: not the store's open, the warm-up or the close), written as
 * `<folder>/<store>-<side>-<workload>-<round>.cpuprofile` (open in Chrome DevTools).
 */
const profileDir = process.env["BENCH_DURABLE_PROFILE"] || undefined
let profiler: inspector.Session | undefined
const post = (method: string, params?: object) =>
  new Promise<{ readonly profile?: object }>((resolve, reject) =>
    profiler!.post(method, params ?? {}, (error, result) => error ? reject(error) : resolve(result as { readonly profile?: object })))
const profileStart = Effect.promise(async () => {
  if (profileDir === undefined) return
  if (profiler === undefined) {
    profiler = new inspector.Session()
    profiler.connect()
    await post("Profiler.enable")
    await post("Profiler.setSamplingInterval", { interval: 200 })
  }
  await post("Profiler.start")
})
const profileStop = (name: string) =>
  Effect.promise(async () => {
    if (profileDir === undefined || profiler === undefined) return
    const { profile } = await post("Profiler.stop")
    mkdirSync(profileDir, { recursive: true })
    writeFileSync(join(profileDir, `${name.replace(/[^A-Za-z0-9_.-]+/g, "_")}.cpuprofile`), JSON.stringify(profile))
  })
let storeName = ""

let sequence = 0
const runId = Date.now().toString(36)

const modelCalls = (prefix: string, count: number) =>
  Effect.forEach(Array.from({ length: count }, (_, i) => i), (i) =>
    ChatContext.functionCall({ callId: `${prefix}_${i}`, name: "work", arguments: `{"n":${i}}` }))

/**
 * One sample: `count` calls of a side in a workload. On a store (`idle` given), counts the
 * statements from the first call until the store is quiet again, and the store's growth.
 */
const sample = (
  side: Side,
  workload: Workload,
  count: number,
  idle: Idle | undefined
): Effect.Effect<Sample, string, StoreServices> =>
  Effect.scoped(Effect.gen(function*() {
    const prefix = `${side === "ours" ? "o" : side === "floor" ? "f" : "m"}${runId}_${++sequence}`
    const parties = side === "floor"
      ? []
      : yield* Effect.forEach(
        Array.from({ length: workload.sessions }, (_, i) => `${prefix}_s${i}`),
        (sessionId) => side === "ours" ? openOurs(sessionId) : openInMemory
      )
    const batch = yield* modelCalls(prefix, count)
    const latencies: Array<number> = []
    const durations: Array<number> = []
    const one = (i: number): Effect.Effect<void, string, StoreServices> =>
      Effect.suspend(() => {
        const started = performance.now()
        return Effect.tap(
          side === "floor" ? Floor.call(`${prefix}_${i}`, i) : toolsetCall(parties[i % parties.length]!, batch[i]!, latencies),
          () => Effect.sync(() => durations.push(performance.now() - started))
        )
      })
    const measured = idle !== undefined && side !== "in-memory"
    const before = measured ? yield* sizes : undefined
    if (idle !== undefined) yield* quiet()
    const tally0 = counter.snapshot()
    if (idle !== undefined) yield* profileStart
    const server0 = serverCpu()
    const sched0 = schedstat()
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    yield* Effect.forEach(
      batch.map((_, i) => i),
      (i) =>
        one(i).pipe(Effect.timeoutOrElse({
          duration: callTimeout,
          orElse: () => Effect.fail(`call ${i} got no reply within ${callTimeout} ms`)
        })),
      { concurrency: workload.concurrency, discard: true }
    )
    const elapsed = performance.now() - t0
    const cpu = process.cpuUsage(cpu0)
    const sched1 = schedstat()
    const busyShare = sched0 === undefined || sched1 === undefined
      ? undefined
      : (sched1[0] - sched0[0] + sched1[1] - sched0[1]) / 1e6 / (performance.now() - t0)
    const server1 = serverCpu()
    if (idle !== undefined) yield* profileStop(`${storeName}-${side}-${workload.concurrency}x${workload.sessions}-${sequence}`)
    const cpuMs = (cpu.user + cpu.system) / 1000 / count
    const cpuShare = (cpu.user + cpu.system) / 1000 / elapsed
    const serverCpuMs = server0 === undefined || server1 === undefined ? undefined : (server1 - server0) / count
    if (idle === undefined) {
      return { side, workload, perSecond: count / (elapsed / 1000), latencies, durations, cpuMs, cpuShare, busyShare, serverCpuMs } satisfies Sample
    }
    yield* quiet()
    const window = performance.now() - t0
    const tally = since(tally0, counter.snapshot())
    const after = measured ? yield* sizes : undefined
    const storage = new Map<string, readonly [number, number]>()
    if (before !== undefined && after !== undefined) {
      for (const [table, [b1, r1]] of after) {
        const [b0, r0] = before.get(table) ?? [0, 0]
        storage.set(table, [(b1 - b0) / count, (r1 - r0) / count])
      }
    }
    return {
      side,
      workload,
      perSecond: count / (elapsed / 1000),
      latencies,
      durations,
      statements: (tally.statements - idle.statements * window) / count,
      commits: (tally.commits - idle.commits * window) / count,
      tally,
      storage: measured ? storage : undefined,
      cpuMs,
      cpuShare,
      busyShare,
      serverCpuMs
    } satisfies Sample
  }))

// --- a store -------------------------------------------------------------------------------------

interface StoreResult {
  readonly name: string
  /** The database's version (`SELECT version()`'s first words). */
  readonly version: string
  readonly samples: ReadonlyArray<Sample>
  readonly failures: ReadonlyArray<Failure>
  readonly idle: Idle
  /** Store open times, ms, by what was opened. */
  readonly open: ReadonlyArray<readonly [string, number]>
  /** The first call after the store opened (ms). */
  readonly firstCall: number
}

const log = (line: string) => Effect.sync(() => process.stderr.write(`${line}\n`))

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
    })
  })

/** Opens a store layer in the scope; returns its services and how long it took. */
const open = (store: Layer.Layer<StoreServices, unknown>) =>
  Effect.gen(function*() {
    const started = performance.now()
    const context = yield* Layer.build(store)
    return { context, ms: performance.now() - started } as const
  })

/** Opens a store, times it, and closes it again. */
const openOnly = (store: Layer.Layer<StoreServices, unknown>) =>
  Effect.scoped(Effect.map(open(store), ({ ms }) => ms))

/** The benchmark on one store, opened by `store` (the counters are installed by `onOpen`). */
const onStore = (
  name: string,
  store: Effect.Effect<Layer.Layer<StoreServices, unknown>>,
  onOpen: (context: Context.Context<StoreServices>) => void,
  openTimes: Array<readonly [string, number]>
): Effect.Effect<StoreResult, unknown> =>
  Effect.scoped(Effect.gen(function*() {
    storeName = name
    const opened = yield* open(yield* store)
    const { context } = opened
    onOpen(context)
    yield* log(`${name}: opened in ${opened.ms.toFixed(0)} ms`)
    openTimes.push(["this run's store", opened.ms])
    yield* Layer.build(Layer.mergeAll(DurableToolset.layer(durableSet), Floor.layer).pipe(
      Layer.provide(Layer.succeedContext(context))
    ))
    return yield* Effect.gen(function*() {
      const failures: Array<Failure> = []
      const samples: Array<Sample> = []
      const sides: ReadonlyArray<Side> = countersOnly
        ? ["ours"]
        : (["floor", "ours", "in-memory"] as const).filter((side) => sidesOnly === undefined || sidesOnly.includes(side))
      // warm up: the first call (shards acquired, the workflow's entity started), JIT, caches
      const first = performance.now()
      yield* Effect.scoped(Effect.flatMap(openOurs(`w${runId}_first`), (party) =>
        Effect.flatMap(modelCalls(`w${runId}_first`, 1), ([call]) => toolsetCall(party, call!, [])))).pipe(
          Effect.timeoutOrElse({
            duration: callTimeout,
            orElse: () => Effect.fail(`the first call got no reply within ${callTimeout} ms`)
          })
        )
      const firstCall = performance.now() - first
      const version = yield* SqlClient.use((sql) => sql<{ readonly v: string }>`SELECT version() AS v`).pipe(
        Effect.map(([row]) => row!.v.split(" ").slice(0, 2).join(" ")),
        Effect.orElseSucceed(() => "?")
      )
      for (const side of sides) {
        for (const w of [{ concurrency: 1, sessions: 1 }, { concurrency: 10, sessions: 1 }]) {
          yield* sample(side, w, 20, undefined).pipe(
            Effect.catch((error) => Effect.sync(() => failures.push({ side, workload: w, error: `warm-up: ${error}` })))
          )
        }
      }
      // the store's idle statements
      yield* quiet()
      const idle0 = counter.snapshot()
      yield* Effect.sleep(idleMs)
      const idleTally = since(idle0, counter.snapshot())
      const idle: Idle = { statements: idleTally.statements / idleMs, commits: idleTally.commits / idleMs }
      yield* log(`${name}: idle ${(idle.statements * 1000).toFixed(2)} statements/s`)
      for (let round = 0; round < rounds; round++) {
        for (const w of workloads) {
          const order = sides.map((_, i) => sides[(i + round) % sides.length]!)
          for (const side of order) {
            if (side === "floor" && w.sessions !== 1) continue
            if (failures.some((f) => f.side === side && f.workload === w)) continue
            const s = yield* Effect.result(sample(side, w, calls, idle))
            if (s._tag === "Failure") {
              failures.push({ side, workload: w, error: s.failure })
              yield* log(`${name}: ${side}, ${workloadName(w)}: FAILED: ${s.failure}`)
              continue
            }
            samples.push(s.success)
            yield* log(
              `${name} round ${round + 1}/${rounds}: ${side}, ${workloadName(w)}: ${s.success.perSecond.toFixed(1)} calls/s` +
                (s.success.statements === undefined || side === "in-memory"
                  ? ""
                  : `, ${s.success.statements.toFixed(2)} statements and ${s.success.commits!.toFixed(2)} commits per call`) +
                `, ${s.success.cpuMs.toFixed(2)} CPU-ms per call (${s.success.cpuShare.toFixed(2)} of a core` +
                (s.success.busyShare === undefined ? "" : `, main thread runnable ${s.success.busyShare.toFixed(2)}`) + ")" +
                (s.success.serverCpuMs === undefined ? "" : `, server ${s.success.serverCpuMs.toFixed(2)} CPU-ms per call`)
            )
          }
        }
      }
      return { name, version, samples, failures, idle, open: openTimes, firstCall } satisfies StoreResult
    }).pipe(Effect.provide(context))
  }))

const pgliteStore = (openTimes: Array<readonly [string, number]>) =>
  Effect.gen(function*() {
    if (measureNewFolder) {
      const fresh = mkdtempSync(join(os.tmpdir(), "bench-durable-new-"))
      yield* log("PGlite: opening a new folder (initdb)...")
      openTimes.push(["new folder", yield* openOnly(DurableStore.layerEmbedded({ dataDir: fresh }))])
      openTimes.push(["existing folder (empty)", yield* openOnly(DurableStore.layerEmbedded({ dataDir: fresh }))])
      rmSync(fresh, { recursive: true, force: true })
    }
    const dataDir = dirname(yield* Effect.promise(() => freshDataDir()))
    const result = yield* onStore(
      "PGlite",
      Effect.succeed(DurableStore.layerEmbedded({ dataDir })),
      (context) =>
        countPglite(Context.get(context as unknown as Context.Context<PgliteClient.PgliteClient>, PgliteClient.PgliteClient).pglite),
      openTimes
    )
    if (!countersOnly) {
      openTimes.push(["existing folder, after the run", yield* openOnly(DurableStore.layerEmbedded({ dataDir }))])
    }
    rmSync(dataDir, { recursive: true, force: true })
    return result
  })

/** A database of the run's own on the server of `url` (dropped at the end), or `url` itself. */
const ownDatabase = (url: string) =>
  Effect.gen(function*() {
    const { PgClient } = yield* Effect.promise(() => import("@effect/sql-pg"))
    const name = `bench_durable_${process.pid}_${runId}`
    const admin = PgClient.layer({ url: Redacted.make(url) })
    const made = yield* Effect.result(Effect.scoped(Effect.gen(function*() {
      const sql = yield* SqlClient
      yield* sql.unsafe(`CREATE DATABASE ${name}`)
    }).pipe(Effect.provide(admin))))
    if (made._tag === "Failure") {
      yield* log(`PostgreSQL: could not make a database of its own (${String(made.failure)}); running in ${url}`)
      return url
    }
    yield* Effect.addFinalizer(() =>
      Effect.scoped(Effect.gen(function*() {
        const sql = yield* SqlClient
        yield* sql.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      }).pipe(Effect.provide(admin))).pipe(Effect.ignore)
    )
    const own = new URL(url)
    own.pathname = `/${name}`
    return own.toString()
  })

const postgresStore = (url: string, openTimes: Array<readonly [string, number]>) =>
  Effect.scoped(Effect.gen(function*() {
    countPostgres()
    const { DurablePostgres } = yield* Effect.promise(() => import("effect-async-toolset/durable/postgres"))
    const database = yield* ownDatabase(url)
    serverDatabase = new URL(database).pathname.slice(1)
    yield* Effect.addFinalizer(() => Effect.sync(() => { serverDatabase = undefined }))
    const layer = (port: number) =>
      DurablePostgres.layer({ url: Redacted.make(database), runner: { host: "127.0.0.1", port } })
    const result = yield* onStore(
      "PostgreSQL",
      Effect.map(Effect.promise(freePort), layer),
      () => {},
      openTimes
    )
    if (!countersOnly) {
      openTimes.push(["existing database, after the run", yield* openOnly(layer(yield* Effect.promise(freePort)))])
    }
    return result
  }))

// --- the report ----------------------------------------------------------------------------------

const median = (xs: ReadonlyArray<number>): number => {
  if (xs.length === 0) return Number.NaN
  const sorted = [...xs].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

const fmt = (n: number, digits = 0) =>
  Number.isNaN(n) ? "–" : n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })

const same = (a: Workload, b: Workload) => a.concurrency === b.concurrency && a.sessions === b.sessions

const of = (result: StoreResult, side: Side, w: Workload) => result.samples.filter((s) => s.side === side && same(s.workload, w))

const failed = (result: StoreResult, side: Side, w: Workload) =>
  result.failures.find((f) => f.side === side && same(f.workload, w) && !f.error.startsWith("warm-up"))

const cell = (result: StoreResult, side: Side, w: Workload, value: (samples: ReadonlyArray<Sample>) => string) => {
  const failure = failed(result, side, w)
  if (failure !== undefined) return `failed: ${failure.error}`
  const samples = of(result, side, w)
  return samples.length === 0 ? "–" : value(samples)
}

const rate = (samples: ReadonlyArray<Sample>) => median(samples.map((s) => s.perSecond))
const stmts = (samples: ReadonlyArray<Sample>) => median(samples.map((s) => s.statements!))
const commits = (samples: ReadonlyArray<Sample>) => median(samples.map((s) => s.commits!))
const latency = (samples: ReadonlyArray<Sample>) => median(samples.flatMap((s) => s.latencies))

const seq1: Workload = { concurrency: 1, sessions: 1 }
const top10: Workload = { concurrency: 50, sessions: 10 }

const report = (results: ReadonlyArray<StoreResult>): string => {
  const cpus = os.cpus()
  const lines: Array<string> = [
    `Measured ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC on ${cpus.length} cores (${cpus[0]?.model.trim()}), ` +
    `Node ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(1)).join(" ")} at the end; ` +
    `${calls} calls per sample, ${rounds} rounds (sides alternated, medians).`,
    "",
    `Command: \`${
      process.env["npm_lifecycle_event"] === undefined
        ? "node --conditions=effect-async-toolset-source --import tsx bench/durable.ts"
        : `npm run ${process.env["npm_lifecycle_event"]}`
    }\`${pgUrl === undefined ? "" : ` with TEST_PG_URL/BENCH_PG_URL set (server at ${new URL(pgUrl).host})`}. ` +
    `Stores: ${results.map((r) => `${r.name} (${r.version})`).join(", ")}.`,
    ""
  ]
  const rowsOf = (result: StoreResult) => [
    { side: "floor" as const, sessions: 1, label: "floor: Workflow + 1 Activity" },
    { side: "ours" as const, sessions: 1, label: "ours: DurableToolset, 1 session" },
    { side: "ours" as const, sessions: 10, label: "ours: DurableToolset, 10 sessions" },
    { side: "in-memory" as const, sessions: 1, label: "in-memory AsyncToolset, 1 session" },
    { side: "in-memory" as const, sessions: 10, label: "in-memory AsyncToolset, 10 sessions" }
  ].filter((row) => result.samples.some((s) => s.side === row.side && s.workload.sessions === row.sessions) ||
    result.failures.some((f) => f.side === row.side && f.workload.sessions === row.sessions))
  const levels = [1, 10, 50]
  lines.push("Calls per second (each call until the reply that covers it; the floor's until its stored result):", "")
  lines.push("| store | side | sequential | 10 at a time | 50 at a time |", "|---|---|---:|---:|---:|")
  for (const result of results) {
    for (const row of rowsOf(result)) {
      lines.push(`| ${result.name} | ${row.label} | ${
        levels.map((c) => cell(result, row.side, { concurrency: c, sessions: row.sessions }, (s) => fmt(rate(s)))).join(" | ")
      } |`)
    }
  }
  lines.push("", "SQL statements / commits per call (at the client; BEGIN and COMMIT included; idle statements subtracted):", "")
  lines.push("| store | side | sequential | 10 at a time | 50 at a time | idle statements/s |", "|---|---|---:|---:|---:|---:|")
  for (const result of results) {
    for (const row of rowsOf(result).filter((r) => r.side !== "in-memory")) {
      lines.push(`| ${result.name} | ${row.label} | ${
        levels.map((c) => cell(result, row.side, { concurrency: c, sessions: row.sessions }, (s) => `${fmt(stmts(s), 2)} / ${fmt(commits(s), 2)}`))
          .join(" | ")
      } | ${fmt(result.idle.statements * 1000, 2)} |`)
    }
  }
  lines.push(
    "",
    "CPU per call: this process's CPU-ms (user + system) per call / its CPU time over the calls' wall time (1.00: one core busy all along)" +
      "; PostgreSQL: + the server backends' CPU-ms per call for this run's database; in brackets, the main thread's share of the" +
      " wall time on a core or waiting for one (1.00: CPU-bound; less: it waited for I/O or timers) (medians):",
    ""
  )
  lines.push("| store | side | sequential | 10 at a time | 50 at a time |", "|---|---|---:|---:|---:|")
  for (const result of results) {
    for (const row of rowsOf(result)) {
      lines.push(`| ${result.name} | ${row.label} | ${
        levels.map((c) =>
          cell(result, row.side, { concurrency: c, sessions: row.sessions }, (s) => {
            const server = s.every((x) => x.serverCpuMs !== undefined) ? ` + ${fmt(median(s.map((x) => x.serverCpuMs!)), 2)}` : ""
            const busy = s.every((x) => x.busyShare !== undefined) ? ` (${fmt(median(s.map((x) => x.busyShare!)), 2)})` : ""
            return `${fmt(median(s.map((x) => x.cpuMs)), 2)}${server} / ${fmt(median(s.map((x) => x.cpuShare)), 2)}${busy}`
          })
        ).join(" | ")
      } |`)
    }
  }
  lines.push("", "First output: median ms from `execute` until it returns:", "")
  lines.push("| store | side | sequential | 10 at a time | 50 at a time |", "|---|---|---:|---:|---:|")
  for (const result of results) {
    for (const row of rowsOf(result).filter((r) => r.side !== "floor")) {
      lines.push(`| ${result.name} | ${row.label} | ${
        levels.map((c) => cell(result, row.side, { concurrency: c, sessions: row.sessions }, (s) => fmt(latency(s), 2))).join(" | ")
      } |`)
    }
  }
  lines.push("", "Each call from its start until its reply (the floor's: its stored result): median / slowest ms (a call that waited for a poll shows here):", "")
  lines.push("| store | side | sequential | 10 at a time | 50 at a time |", "|---|---|---:|---:|---:|")
  for (const result of results) {
    for (const row of rowsOf(result)) {
      lines.push(`| ${result.name} | ${row.label} | ${
        levels.map((c) =>
          cell(result, row.side, { concurrency: c, sessions: row.sessions }, (s) => {
            const all = s.flatMap((x) => x.durations)
            return `${fmt(median(all), 1)} / ${fmt(Math.max(...all), 0)}`
          })
        ).join(" | ")
      } |`)
    }
  }
  lines.push("", "Store growth per finished call (bytes with indexes and TOAST, and rows; all of ours' and the floor's samples):", "")
  lines.push("| store | side | table | bytes per call | rows per call |", "|---|---|---|---:|---:|")
  for (const result of results) {
    for (const side of ["ours", "floor"] as const) {
      const samples = result.samples.filter((s) => s.side === side && s.storage !== undefined)
      const n = samples.length
      if (n === 0) continue
      const tables = new Map<string, [number, number]>()
      for (const s of samples) {
        for (const [table, [bytes, rows]] of s.storage!) {
          const t = tables.get(table) ?? [0, 0]
          tables.set(table, [t[0] + bytes / n, t[1] + rows / n])
        }
      }
      let total = 0
      for (const [table, [bytes, rows]] of tables) {
        total += bytes
        // (a table the side does not write to can still move by a few bytes: another side's pages)
        if (Math.abs(rows) < 0.005 && Math.abs(bytes) < 100) continue
        lines.push(`| ${result.name} | ${side} | ${table} | ${fmt(bytes)} | ${fmt(rows, 2)} |`)
      }
      lines.push(`| ${result.name} | ${side} | **total** | ${fmt(total)} | |`)
    }
  }
  lines.push("", "Store open (ms; the layer built: database open, tables made, cluster started):", "")
  lines.push("| store | what | ms |", "|---|---|---:|")
  for (const result of results) {
    for (const [what, ms] of result.open) lines.push(`| ${result.name} | ${what} | ${fmt(ms)} |`)
    lines.push(`| ${result.name} | its first call after open (until replied) | ${fmt(result.firstCall)} |`)
  }
  lines.push("", "Targets (issue 17):", "")
  lines.push("| store | target | measured | |", "|---|---|---:|---|")
  for (const result of results) {
    const pg = result.name === "PostgreSQL"
    const limit = pg ? 20 : 16
    const oursSeq = of(result, "ours", seq1)
    const floorSeq = of(result, "floor", seq1)
    const memSeq = of(result, "in-memory", seq1)
    const top = of(result, "ours", top10)
    const verdict = (ok: boolean, miss: string) => ok ? "met" : `missed (${miss})`
    if (oursSeq.length > 0) {
      const s = stmts(oursSeq)
      lines.push(`| ${result.name} | statements per call (sequential) <= ${limit} | ${fmt(s, 2)} | ${verdict(s <= limit, `${fmt(s - limit, 2)} over`)} |`)
    }
    if (oursSeq.length > 0 && floorSeq.length > 0) {
      const ratio = rate(oursSeq) / rate(floorSeq)
      lines.push(`| ${result.name} | sequential calls/s >= 1.5x the floor | ${fmt(ratio, 2)}x (${fmt(rate(oursSeq))} vs ${fmt(rate(floorSeq))}) | ${
        verdict(ratio >= 1.5, `${fmt(1.5 / ratio, 2)}x short`)
      } |`)
    }
    if (oursSeq.length > 0 && memSeq.length > 0) {
      const gap = latency(oursSeq) - latency(memSeq)
      lines.push(`| ${result.name} | first output within 5 ms of in-memory${pg ? "" : " (the target is PostgreSQL's)"} | +${fmt(gap, 2)} ms | ${
        pg ? verdict(gap <= 5, `${fmt(gap - 5, 2)} ms over`) : "(information)"
      } |`)
    }
    if (oursSeq.length > 0 && top.length > 0) {
      const ratio = rate(top) / rate(oursSeq)
      lines.push(`| ${result.name} | 50 at a time over 10 sessions >= 5x sequential | ${fmt(ratio, 2)}x | ${verdict(ratio >= 5, `${fmt(5 / ratio, 2)}x short`)} |`)
    } else if (failed(result, "ours", top10) !== undefined) {
      lines.push(`| ${result.name} | 50 at a time over 10 sessions >= 5x sequential | failed | missed |`)
    }
    if (!pg) {
      const byName = new Map(result.open)
      const existing = byName.get("existing folder (empty)")
      const fresh = byName.get("new folder")
      if (existing !== undefined) lines.push(`| ${result.name} | opens in <= 1 s when it exists | ${fmt(existing)} ms | ${verdict(existing <= 1000, `${fmt(existing - 1000)} ms over`)} |`)
      if (fresh !== undefined) lines.push(`| ${result.name} | opens in <= 3 s when new | ${fmt(fresh)} ms | ${verdict(fresh <= 3000, `${fmt(fresh - 3000)} ms over`)} |`)
    }
  }
  lines.push("", "Statements of ours per call, sequential, 1 session (text with literals folded; all rounds):", "")
  for (const result of results) {
    const samples = of(result, "ours", seq1).filter((s) => s.tally !== undefined)
    if (samples.length === 0) continue
    const merged = new Map<string, number>()
    for (const s of samples) for (const [text, n] of s.tally!.byText) merged.set(text, (merged.get(text) ?? 0) + n)
    const n = samples.length * calls
    lines.push(`${result.name}:`, "", "| per call | statement |", "|---:|---|")
    for (const [text, count] of [...merged].sort((a, b) => b[1] - a[1])) {
      lines.push(`| ${fmt(count / n, 2)} | \`${text.replace(/\|/g, "\\|").slice(0, 150)}\` |`)
    }
    lines.push("")
  }
  const failures = results.flatMap((r) => r.failures.map((f) => `- ${r.name}, ${f.side}, ${workloadName(f.workload)}: ${f.error}`))
  if (failures.length > 0) lines.push("Failures:", "", ...failures)
  return lines.join("\n")
}

// --- the counters mode ---------------------------------------------------------------------------

interface Budget {
  readonly [store: string]: { readonly [workload: string]: { readonly statements: number; readonly commits: number } }
}

const budgetKey = (name: string) => name === "PostgreSQL" ? "postgres" : "pglite"

const checkBudget = (results: ReadonlyArray<StoreResult>): number => {
  const budgetPath = fileURLToPath(new URL("./durable-budget.json", import.meta.url))
  const budget = (JSON.parse(readFileSync(budgetPath, "utf8")) as { readonly budget: Budget }).budget
  const over: Array<string> = []
  const lines = [
    `Durable call cost per call (ours; W1: 1 update, then the final told in one reply). Node ${process.version}, ${new Date().toISOString()}, ${calls} calls per sample.`,
    "",
    "| store | workload | statements | commits | budget (statements / commits) |",
    "|---|---|---:|---:|---|"
  ]
  for (const result of results) {
    for (const w of workloads) {
      const name = workloadName(w)
      const limit = budget[budgetKey(result.name)]?.[name]
      const failure = failed(result, "ours", w)
      if (failure !== undefined) {
        over.push(`${result.name} ${name}: failed: ${failure.error}`)
        lines.push(`| ${result.name} | ${name} | failed | | ${failure.error} |`)
        continue
      }
      const samples = of(result, "ours", w)
      const s = stmts(samples)
      const c = commits(samples)
      let verdict = "–"
      if (limit !== undefined) {
        const bad = [s > limit.statements ? `statements ${fmt(s, 2)} > ${limit.statements}` : "", c > limit.commits ? `commits ${fmt(c, 2)} > ${limit.commits}` : ""]
          .filter((x) => x !== "")
        if (bad.length > 0) over.push(`${result.name} ${name}: ${bad.join(", ")}`)
        verdict = `${bad.length > 0 ? "**over**" : "ok"} (${limit.statements} / ${limit.commits})`
      }
      lines.push(`| ${result.name} | ${name} | ${fmt(s, 2)} | ${fmt(c, 2)} | ${verdict} |`)
    }
  }
  process.stdout.write(`${lines.join("\n")}\n`)
  for (const result of results) {
    const samples = of(result, "ours", seq1).filter((s) => s.tally !== undefined)
    if (samples.length === 0) continue
    process.stderr.write(`\n${result.name}, sequential, statements per call (idle ${fmt(result.idle.statements * 1000, 2)}/s not subtracted here):\n`)
    for (const [text, count] of [...samples[0]!.tally!.byText].sort((a, b) => b[1] - a[1])) {
      process.stderr.write(`${fmt(count / calls, 2).padStart(7)}  ${text.slice(0, 150)}\n`)
    }
  }
  if (over.length > 0) {
    process.stderr.write(`\nOver budget (bench/durable-budget.json):\n${over.map((line) => `- ${line}`).join("\n")}\n`)
    return 1
  }
  process.stderr.write("\nEvery count is within its budget (bench/durable-budget.json).\n")
  return 0
}

// --- the run -------------------------------------------------------------------------------------

const main = Effect.gen(function*() {
  const results: Array<StoreResult> = []
  yield* log(`bench:durable${countersOnly ? " (counters)" : ""}: ${calls} calls per sample, ${rounds} rounds`)
  if (storesOnly.includes("pglite")) results.push(yield* pgliteStore([]))
  if (pgUrl !== undefined && storesOnly.includes("postgres")) results.push(yield* postgresStore(pgUrl, []))
  else yield* log("PostgreSQL: not run (set BENCH_PG_URL or TEST_PG_URL)")
  if (countersOnly) return checkBudget(results)
  process.stdout.write(`${report(results)}\n`)
  if (statementMs !== undefined) {
    // every sample's statements on PGlite, whichever side sent them: pick one side and workload
    // (BENCH_DURABLE_SIDES, BENCH_DURABLE_WORKLOADS=1x1) to read them as one call's
    process.stderr.write("\nPGlite, mean ms per statement (BENCH_DURABLE_STATEMENT_MS=1; all samples):\n")
    for (const [text, { ms, n }] of [...statementMs].sort((a, b) => b[1].ms - a[1].ms).slice(0, 20)) {
      process.stderr.write(`${(ms / n).toFixed(3).padStart(8)} ms x ${String(n).padStart(6)}  ${text.slice(0, 120)}\n`)
    }
  }
  return results.some((r) => r.failures.length > 0) ? 1 : 0
})

// Logs go to stderr (stdout is the report). The toolsets' info logs (e.g. a reply still owed when a
// sample's session closes) are left out; BENCH_DURABLE_LOG=Info (or Debug) shows them.
const logLevel = (process.env["BENCH_DURABLE_LOG"] ?? "Warn") as "Warn"

const program = main.pipe(
  Effect.provideService(References.MinimumLogLevel, logLevel),
  Effect.provideService(Logger.LogToStderr, true)
)

Effect.runPromise(program).then((code) => process.exit(code), (error: unknown) => {
  console.error(error)
  process.exit(1)
})
