/**
 * What every workload shares: the sizes (from environment variables, for quick runs), a forced
 * garbage collection between samples, and medians.
 */

const int = (name: string, fallback: number): number => {
  const raw = process.env[name]
  if (raw === undefined || raw === "") return fallback
  const n = Number(raw)
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, got "${raw}"`)
  return n
}

const ints = (name: string, fallback: ReadonlyArray<number>): ReadonlyArray<number> => {
  const raw = process.env[name]
  if (raw === undefined || raw === "") return fallback
  return raw.split(",").map((part) => {
    const n = Number(part.trim())
    if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must list positive integers, got "${raw}"`)
    return n
  })
}

/** `BENCH_QUICK=1` divides every size by 10 (a smoke run of a few seconds per workload). */
const quick = process.env["BENCH_QUICK"] === "1"
const scale = (sizes: ReadonlyArray<number>): ReadonlyArray<number> =>
  quick ? sizes.map((n) => Math.max(10, Math.round(n / 10))) : sizes

export const config = {
  quick,
  /** Samples per side and size; the table shows their median. */
  rounds: int("BENCH_ROUNDS", quick ? 3 : 5),
  /** Rounds for the largest W2 size. */
  slowRounds: int("BENCH_SLOW_ROUNDS", quick ? 1 : 3),
  /** Rounds for W3 (memory, each sample in a fresh process; it varies by well under 1%). */
  memoryRounds: int("BENCH_MEMORY_ROUNDS", quick ? 1 : 2),
  w1Calls: int("BENCH_W1_CALLS", quick ? 200 : 2000),
  w2Sizes: ints("BENCH_W2_SIZES", scale([1_000, 10_000, 100_000])),
  w3Sizes: ints("BENCH_W3_SIZES", scale([10_000, 100_000])),
  w4Sizes: ints("BENCH_W4_SIZES", scale([10, 1_000, 100_000])),
  /** Updates per W4 sample up to 10k items in the chat (enough for a sample to last long enough to time). */
  w4Updates: int("BENCH_W4_UPDATES", quick ? 200 : 2000),
  /** Updates per W4 sample above 10k items (the peer copies the history on every update). */
  w4UpdatesLarge: int("BENCH_W4_UPDATES_LARGE", quick ? 50 : 200),
  w5Calls: int("BENCH_W5_CALLS", quick ? 1_000 : 10_000),
  w6Calls: int("BENCH_W6_CALLS", quick ? 1_000 : 10_000),
  /**
   * The peer's launch is quadratic (it scans every running call on every call): above this many
   * calls it runs once, in a child process that is stopped after `peerCapSeconds`.
   */
  peerInProcessMax: int("BENCH_PEER_INPROCESS_MAX", 10_000),
  peerCapSeconds: int("BENCH_PEER_CAP_SECONDS", quick ? 20 : 45),
  /** W3 for the peer above this many calls uses several executors of this many calls each. */
  peerExecutorMax: int("BENCH_PEER_EXECUTOR_MAX", 10_000)
} as const

export type Side = "ours" | "peer" | "floor"

/** Forces a full collection (the run needs `--expose-gc`), so garbage of one sample never slows the next. */
export const collect = (): void => {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error("run with node --expose-gc (npm run bench does)")
  gc()
  gc()
}

export const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** Lets pending timers and I/O callbacks run (a macrotask turn). */
export const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

/** Fails the run when a side did not do the work the workload asks for. */
export const expect = (condition: boolean, message: string): void => {
  if (!condition) throw new Error(`bench check failed: ${message}`)
}

/** What a measured section reports to, besides the clock (the counters of `counters.ts`). */
export interface Probe {
  readonly start: () => void
  readonly stop: () => void
}

let probe: Probe | undefined

/** Runs `f` with `p` told when each measured section starts and stops. */
export const probed = async <A>(p: Probe, f: () => Promise<A>): Promise<A> => {
  probe = p
  try {
    return await f()
  } finally {
    probe = undefined
  }
}

/** Starts a measured section (the part a workload times); returns the time it started. */
export const begin = (): number => {
  probe?.start()
  return performance.now()
}

/** Ends the measured section started at `t0`; returns its milliseconds. */
export const end = (t0: number): number => {
  const ms = performance.now() - t0
  probe?.stop()
  return ms
}
