/**
 * `npm run bench:counters`: what one call costs, in counters that do not depend on the machine's
 * load: Effect run-loop steps, fibers started, `setImmediate` calls (macrotask hops) and bytes
 * allocated, per call of each workload, for this library and for the bare-Effect floor (W0). It
 * exits non-zero when a counter of ours exceeds its budget in `bench/budget.json`, so CI can hold
 * the line on a shared machine where timings mean little.
 *
 * How each counter is taken, over exactly the section a workload times (`begin`/`end`):
 * - steps: the turns of every fiber's run loop (each run of the loop counts its turns; the count
 *   is read as the run returns).
 * - fibers: the first `evaluate` of each fiber.
 * - setImmediate: calls of `globalThis.setImmediate` (the default scheduler's flushes).
 * - bytes: growth of V8's used heap over the section, in passes without the counting hooks (the
 *   least of three: code V8 has optimized allocates less, and on a loaded machine a pass can run
 *   before it is in), in a process started with a young generation large enough that no collection
 *   runs during the section (checked; a section with a collection is reported as such).
 * - retained bytes per blocked call (W3): heap after a full collection, as `npm run bench` W3
 *   (the least of three runs).
 *
 *   npm run bench:counters                 (table on stdout; exit 1 over budget)
 *   COUNTERS_JSON=/tmp/c.json npm run bench:counters   (also write the numbers as JSON)
 */
import { readFileSync, writeFileSync } from "node:fs"
import { PerformanceObserver } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import * as v8 from "node:v8"
import { Effect } from "effect"
import * as floor from "./floor.ts"
import { collect, probed } from "./harness.ts"
import type { Probe } from "./harness.ts"
import * as ours from "./ours.ts"

type Counter = "steps" | "fibers" | "setImmediate" | "bytes"
type Counts = Record<Counter, number>

// --- the hooks -----------------------------------------------------------------------------------

const live = { steps: 0, fibers: 0, setImmediate: 0 }

const fiberProto = Object.getPrototypeOf(Effect.runFork(Effect.void)) as {
  evaluate: (this: object, effect: unknown) => void
  runLoop: (this: { currentOpCount: number }, effect: unknown) => unknown
}
const hooks = (() => {
  const runLoop = fiberProto.runLoop
  const evaluate = fiberProto.evaluate
  const setImmediate = globalThis.setImmediate
  const started = new WeakSet<object>()
  return {
    install: () => {
      fiberProto.runLoop = function(this: { currentOpCount: number }, effect: unknown) {
        const result = runLoop.call(this, effect)
        live.steps += this.currentOpCount
        return result
      }
      fiberProto.evaluate = function(this: object, effect: unknown) {
        if (!started.has(this)) {
          started.add(this)
          live.fibers++
        }
        return evaluate.call(this, effect)
      }
      globalThis.setImmediate = ((...args: Parameters<typeof setImmediate>) => {
        live.setImmediate++
        return setImmediate(...args)
      }) as typeof setImmediate
    },
    remove: () => {
      fiberProto.runLoop = runLoop
      fiberProto.evaluate = evaluate
      globalThis.setImmediate = setImmediate
    }
  }
})()

const gcTimes: Array<number> = []
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) gcTimes.push(entry.startTime)
}).observe({ entryTypes: ["gc"] })
const tick = () => new Promise<void>((resolve) => setTimeout(resolve, 0))

/** Runs a workload twice (counted, then weighed) and returns the counts per unit of work. */
const measure = async (units: number, run: () => Promise<unknown>): Promise<Counts & { readonly gc: boolean }> => {
  await run() // warm up: JIT, lazy schemas, caches
  // pass 1: steps, fibers, macrotask hops
  let counted = { steps: 0, fibers: 0, setImmediate: 0 }
  const counting: Probe = {
    start: () => {
      live.steps = 0
      live.fibers = 0
      live.setImmediate = 0
    },
    stop: () => {
      counted = { ...live }
    }
  }
  hooks.install()
  try {
    await probed(counting, run)
  } finally {
    hooks.remove()
  }
  // pass 2: bytes, with no hook allocating; the least of three weighings (V8 optimizes on a
  // background thread, and optimized code allocates less: on a loaded machine a pass can run
  // before the optimized code is in, and weigh up to 12% more)
  let bytes = Infinity
  let window: readonly [number, number] = [0, 0]
  for (let pass = 0; pass < 3; pass++) {
    collect()
    let heapAt = 0
    let startedAt = 0
    let weighed = 0
    let weighedWindow: readonly [number, number] = [0, 0]
    const weighing: Probe = {
      start: () => {
        startedAt = performance.now()
        heapAt = v8.getHeapStatistics().used_heap_size
      },
      stop: () => {
        weighed = v8.getHeapStatistics().used_heap_size - heapAt
        weighedWindow = [startedAt, performance.now()]
      }
    }
    await probed(weighing, run)
    if (weighed < bytes) {
      bytes = weighed
      window = weighedWindow
    }
  }
  await tick()
  const gc = gcTimes.some((t) => t >= window[0] && t <= window[1])
  return {
    steps: counted.steps / units,
    fibers: counted.fibers / units,
    setImmediate: counted.setImmediate / units,
    bytes: bytes / units,
    gc
  }
}

// --- the workloads -------------------------------------------------------------------------------

interface Workload {
  readonly id: string
  readonly label: string
  readonly units: number
  readonly ours: () => Promise<unknown>
  readonly floor: () => Promise<unknown>
}

const size = (name: string, fallback: number) => Number(process.env[name] ?? fallback)
const w1 = size("COUNTERS_W1", 300)
const w2 = size("COUNTERS_W2", 2000)
const w4 = size("COUNTERS_W4", 200)
const w5 = size("COUNTERS_W5", 2000)
const w6 = size("COUNTERS_W6", 2000)

const workloads: ReadonlyArray<Workload> = [
  {
    id: "W1",
    label: "sequential call: 1 update, then the final delivered and replied",
    units: w1,
    ours: () => ours.w1(w1),
    floor: () => floor.w1(w1)
  },
  {
    id: "W2",
    label: "launch a call that blocks after its first update",
    units: w2,
    ours: () => ours.w2(w2),
    floor: () => floor.w2(w2)
  },
  {
    id: "W4",
    label: "deliver one later update (insert + reply), 1k items in the chat",
    units: w4,
    ours: () => ours.w4(1000, w4),
    floor: () => floor.w4(1000, w4)
  },
  {
    id: "W5",
    label: "a final arriving while busy (all in one reply)",
    units: w5,
    ours: () => ours.w5(w5),
    floor: () => floor.w5(w5)
  },
  {
    id: "W6",
    label: "cancel a running call until its fiber stopped",
    units: w6,
    ours: () => ours.w6(w6),
    floor: () => floor.w6(w6)
  }
]

// --- the run -------------------------------------------------------------------------------------

interface Budget {
  readonly [workload: string]: Partial<Record<Counter | "retained", number>>
}

const budgetPath = fileURLToPath(new URL("./budget.json", import.meta.url))
const budget = (JSON.parse(readFileSync(budgetPath, "utf8")) as { readonly ours: Budget }).ours

const fmt = (n: number) =>
  n >= 100 ? Math.round(n).toLocaleString("en-US") : n >= 10 ? n.toFixed(1) : n.toFixed(2)

const rows: Array<string> = []
const results: Record<string, unknown> = {}
const over: Array<string> = []
const check = (workload: string, counter: Counter | "retained", value: number) => {
  const limit = budget[workload]?.[counter]
  if (limit === undefined) return "–"
  if (value > limit) {
    over.push(`${workload} ${counter}: ${fmt(value)} > budget ${fmt(limit)}`)
    return `**over** (${fmt(limit)})`
  }
  return `ok (${fmt(limit)})`
}

for (const w of workloads) {
  process.stderr.write(`${w.id}: ${w.label} (${w.units} per sample)\n`)
  const o = await measure(w.units, w.ours)
  const f = await measure(w.units, w.floor)
  results[w.id] = { ours: o, floor: f }
  for (const counter of ["steps", "fibers", "setImmediate", "bytes"] as const) {
    const gcNote = counter === "bytes" && (o.gc || f.gc) ? " (a collection ran: bytes are a lower bound)" : ""
    rows.push(
      `| ${w.id} ${w.label} | ${counter}${gcNote} | ${fmt(o[counter])} | ${fmt(f[counter])} | ${
        f[counter] === 0 ? "–" : fmt(o[counter] / f[counter])
      } | ${check(w.id, counter, o[counter])} |`
    )
  }
}

// W3: memory a blocked call keeps (after a full collection)
{
  const n = size("COUNTERS_W3", 5000)
  process.stderr.write(`W3: retained bytes per blocked call (${n} calls)\n`)
  await ours.w3(200)
  // The heap after a collection still holds stray garbage of the runs before (up to about 500
  // bytes per call on a quiet machine): the least of three runs is what a blocked call keeps.
  const least = async (run: (n: number) => Promise<{ readonly heap: number }>) => {
    let least = Infinity
    for (let i = 0; i < 3; i++) least = Math.min(least, (await run(n)).heap)
    return least
  }
  const o = await least(ours.w3)
  const f = await least(floor.w3)
  results["W3"] = { ours: { retained: o }, floor: { retained: f } }
  rows.push(`| W3 a blocked call, after GC | retained bytes | ${fmt(o)} | ${fmt(f)} | ${fmt(o / f)} | ${check("W3", "retained", o)} |`)
}

const table = [
  `Per call (W4: per update; W5: per final; W6: per cancel). Node ${process.version}, ${new Date().toISOString()}.`,
  "",
  "| workload | counter | ours | floor (W0) | ours/floor | budget |",
  "|---|---|---:|---:|---:|---|",
  ...rows
].join("\n")
process.stdout.write(`${table}\n`)
if (process.env["COUNTERS_JSON"]) writeFileSync(process.env["COUNTERS_JSON"], JSON.stringify(results, null, 2))
if (over.length > 0) {
  process.stderr.write(`\nOver budget (bench/budget.json):\n${over.map((line) => `- ${line}`).join("\n")}\n`)
  process.exit(1)
}
process.stderr.write("\nEvery counter is within its budget (bench/budget.json).\n")
