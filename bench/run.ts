/**
 * `npm run bench`: this library against `@livekit/agents`' `ToolExecutor` (the peer) and against
 * bare Effect primitives (W0, the floor), on the same workloads, in the same run. Each workload
 * runs on every side, alternating (the order rotates each round), several times; the table shows
 * medians. Progress goes to stderr, the table (markdown) to stdout, and to `BENCH_OUT` if set.
 *
 * Sizes come from environment variables (see `harness.ts`); `BENCH_QUICK=1` is a smoke run.
 */
import { spawn } from "node:child_process"
import { writeFileSync } from "node:fs"
import * as os from "node:os"
import { fileURLToPath } from "node:url"
import * as floor from "./floor.ts"
import { collect, config, median } from "./harness.ts"
import type { Side } from "./harness.ts"
import * as ours from "./ours.ts"
import * as peer from "./peer/peer.ts"

const log = (line: string) => process.stderr.write(`${line}\n`)
const started = performance.now()
const elapsed = () => `${((performance.now() - started) / 1000).toFixed(0)}s`

// --- sampling ------------------------------------------------------------------------------------

type Runs = Partial<Record<Side, () => Promise<number>>>
type Medians = Partial<Record<Side, number>>

/** Runs every side `rounds` times, rotating the order each round; returns the medians. */
const sample = async (label: string, rounds: number, runs: Runs): Promise<Medians> => {
  const sides = (["ours", "peer", "floor"] as const).filter((side) => runs[side] !== undefined)
  const values: Partial<Record<Side, Array<number>>> = {}
  for (let round = 0; round < rounds; round++) {
    const order = sides.map((_, i) => sides[(i + round) % sides.length]!)
    const line: Array<string> = []
    for (const side of order) {
      collect()
      const value = await runs[side]!()
      ;(values[side] ??= []).push(value)
      line.push(`${side} ${format(value)}`)
    }
    log(`[${elapsed()}] ${label} round ${round + 1}/${rounds}: ${line.join(", ")}`)
  }
  const medians: Medians = {}
  for (const side of sides) medians[side] = median(values[side]!)
  return medians
}

const childScript = fileURLToPath(new URL("./child.ts", import.meta.url))

interface ChildOutcome {
  readonly result: unknown
  readonly progress: { readonly launched: number; readonly ms: number } | undefined
  readonly timedOut: boolean
}

/** Runs `child.ts` in a fresh node with the same flags; stops it after `capSeconds`, if given. */
const runChild = (args: ReadonlyArray<string>, capSeconds?: number): Promise<ChildOutcome> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, childScript, ...args], {
      stdio: ["ignore", "pipe", "inherit"]
    })
    let out = ""
    let timedOut = false
    child.stdout.setEncoding("utf8")
    child.stdout.on("data", (chunk: string) => {
      out += chunk
    })
    const timer = capSeconds === undefined ? undefined : setTimeout(() => {
      timedOut = true
      child.kill("SIGKILL")
    }, capSeconds * 1000)
    child.on("error", reject)
    child.on("close", (code) => {
      if (timer !== undefined) clearTimeout(timer)
      let result: unknown = undefined
      let progress: ChildOutcome["progress"] = undefined
      for (const line of out.split("\n")) {
        if (line.startsWith("RESULT ")) result = JSON.parse(line.slice(7))
        const p = /^PROGRESS (\d+) ([\d.]+)$/.exec(line)
        if (p !== null) progress = { launched: Number(p[1]), ms: Number(p[2]) }
      }
      if (!timedOut && (code !== 0 || result === undefined)) {
        reject(new Error(`child ${args.join(" ")} failed (exit ${code})`))
      } else {
        resolve({ result, progress, timedOut })
      }
    })
  })

// --- the table -----------------------------------------------------------------------------------

const format = (value: number): string => {
  const abs = Math.abs(value)
  if (abs >= 1000) return Math.round(value).toLocaleString("en-US")
  if (abs >= 100) return value.toFixed(0)
  if (abs >= 10) return value.toFixed(1)
  return value.toFixed(2)
}

interface Row {
  readonly workload: string
  readonly size: string
  readonly unit: string
  readonly ours: number | undefined
  readonly peer: number | undefined
  /** Shown instead of the peer's value (e.g. a run stopped at the time cap). */
  readonly peerText?: string | undefined
  readonly floor: number | undefined
  /** Whether the ratio columns mean anything for this row (default true). */
  readonly ratios?: boolean | undefined
  readonly target: string
  readonly met: string
}

const rows: Array<Row> = []
const notes: Array<string> = []

const ratio = (a: number | undefined, b: number | undefined): string =>
  a === undefined || b === undefined || b === 0 ? "–" : `${a / b < 0.1 ? (a / b).toFixed(3) : (a / b).toFixed(2)}`

const yesNo = (ok: boolean) => ok ? "yes" : "**no**"

const renderTable = (): string => {
  const head = "| workload | size | unit | ours | peer | W0 floor | ours/peer | ours/W0 | target | met |"
  const rule = "|---|---|---|---:|---:|---:|---:|---:|---|---|"
  const body = rows.map((r) =>
    `| ${r.workload} | ${r.size} | ${r.unit} | ${r.ours === undefined ? "–" : format(r.ours)} | ${
      r.peerText ?? (r.peer === undefined ? "–" : format(r.peer))
    } | ${r.floor === undefined ? "–" : format(r.floor)} | ${r.ratios === false ? "–" : ratio(r.ours, r.peer)} | ${
      r.ratios === false ? "–" : ratio(r.ours, r.floor)
    } | ${r.target} | ${r.met} |`
  )
  return [head, rule, ...body].join("\n")
}

const sizeLabel = (n: number) => n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n)

// --- the workloads -------------------------------------------------------------------------------

const warmUp = async () => {
  log(`[${elapsed()}] warm-up`)
  for (let i = 0; i < 2; i++) {
    await ours.w1(200)
    await peer.w1(200)
    await floor.w1(200)
    await ours.w2(1000)
    await peer.w2(1000)
    await floor.w2(1000)
  }
}

const w1 = async () => {
  const n = config.w1Calls
  const m = await sample(`W1 n=${n}`, config.rounds, {
    ours: () => ours.w1(n),
    peer: () => peer.w1(n),
    floor: () => floor.w1(n)
  })
  const vsPeer = m.ours! / m.peer!
  const vsFloor = m.ours! / m.floor!
  rows.push({
    workload: "W1 sequential calls (1 update, then final delivered and replied)",
    size: `${sizeLabel(n)} calls`,
    unit: "calls/s (higher is better)",
    ours: m.ours,
    peer: m.peer,
    floor: m.floor,
    target: "ours/peer > 1.0; ours/W0 ≥ 0.5",
    met: `${yesNo(vsPeer > 1)}; ${yesNo(vsFloor >= 0.5)}`
  })
}

const w2 = async () => {
  const perCall: Array<{ readonly n: number; readonly us: number }> = []
  for (const n of config.w2Sizes) {
    const peerInProcess = n <= config.peerInProcessMax
    const rounds = n > config.peerInProcessMax ? config.slowRounds : config.rounds
    const m = await sample(`W2 n=${n}`, rounds, {
      ours: () => ours.w2(n),
      ...(peerInProcess ? { peer: () => peer.w2(n) } : {}),
      floor: () => floor.w2(n)
    })
    let peerText: string | undefined
    if (!peerInProcess) {
      log(`[${elapsed()}] W2 n=${n} peer: once, in a child process, stopped after ${config.peerCapSeconds}s`)
      const outcome = await runChild(["launch", "peer", String(n)], config.peerCapSeconds)
      if (outcome.timedOut) {
        const launched = outcome.progress?.launched ?? 0
        peerText = `> ${format(config.peerCapSeconds * 1000)} (stopped: ${sizeLabel(launched)} of ${sizeLabel(n)} launched)`
        m.peer = config.peerCapSeconds * 1000
        notes.push(
          `W2 ${sizeLabel(n)}: the peer was stopped after ${config.peerCapSeconds} s with ${launched} of ${n} calls launched; ` +
            `ours/peer is an upper bound.`
        )
      } else {
        m.peer = outcome.result as number
        peerText = `${format(m.peer)} (1 run)`
      }
      log(`[${elapsed()}] W2 n=${n} peer: ${peerText ?? format(m.peer)}`)
    }
    perCall.push({ n, us: (m.ours! * 1000) / n })
    const vsPeer = m.ours! / m.peer!
    const vsFloor = m.ours! / m.floor!
    const isTenK = n === 10_000
    rows.push({
      workload: "W2 launch N calls at once, each blocked after its first update",
      size: `${sizeLabel(n)} calls`,
      unit: `ms to launch all (ours: ${format((m.ours! * 1000) / n)} µs/call)`,
      ours: m.ours,
      peer: m.peer,
      peerText,
      floor: m.floor,
      target: isTenK ? "ours/peer < 1 (lead kept); ours/W0 ≤ 2" : "ours/W0 ≤ 2",
      met: isTenK ? `${yesNo(vsPeer < 1)}; ${yesNo(vsFloor <= 2)}` : yesNo(vsFloor <= 2)
    })
  }
  // Linear: the cost per call at the largest N is within 2× of the cheapest per-call cost at a
  // smaller N (the smallest N runs least warmed up, so it is not the baseline by itself).
  const last = perCall[perCall.length - 1]!
  const base = perCall.slice(0, -1).reduce((a, b) => (b.us < a.us ? b : a), perCall[0]!)
  const growth = last.us / base.us
  rows.push({
    workload: "W2 linearity: ours µs per call at the largest N / the lowest at a smaller N",
    size: `${sizeLabel(base.n)} → ${sizeLabel(last.n)}`,
    unit: "ratio",
    ours: growth,
    peer: undefined,
    floor: undefined,
    target: "≤ 2 (linear)",
    met: yesNo(growth <= 2)
  })
}

const w3 = async () => {
  for (const n of config.w3Sizes) {
    const heap: Partial<Record<Side, Array<number>>> = {}
    const rss: Partial<Record<Side, Array<number>>> = {}
    for (let round = 0; round < config.memoryRounds; round++) {
      const sides = (["ours", "peer", "floor"] as const)
      const order = sides.map((_, i) => sides[(i + round) % sides.length]!)
      const line: Array<string> = []
      for (const side of order) {
        const { result } = await runChild(["memory", side, String(n)])
        const r = result as { readonly heap: number; readonly rss: number }
        ;(heap[side] ??= []).push(r.heap)
        ;(rss[side] ??= []).push(r.rss)
        line.push(`${side} heap ${format(r.heap)} B, rss ${format(r.rss)} B`)
      }
      log(`[${elapsed()}] W3 n=${n} round ${round + 1}/${config.memoryRounds}: ${line.join("; ")}`)
    }
    const med = (values: Partial<Record<Side, Array<number>>>, side: Side) => median(values[side]!)
    const heapOurs = med(heap, "ours")
    rows.push({
      workload: "W3 memory per blocked call: heap after GC",
      size: `${sizeLabel(n)} calls`,
      unit: "bytes/call",
      ours: heapOurs,
      peer: med(heap, "peer"),
      floor: med(heap, "floor"),
      target: "ours ≤ 3,072; ours/W0 ≤ 2",
      met: `${yesNo(heapOurs <= 3072)}; ${yesNo(heapOurs / med(heap, "floor") <= 2)}`
    })
    rows.push({
      workload: "W3 memory per blocked call: RSS after GC",
      size: `${sizeLabel(n)} calls`,
      unit: "bytes/call",
      ours: med(rss, "ours"),
      peer: med(rss, "peer"),
      floor: med(rss, "floor"),
      target: "(reported)",
      met: ""
    })
    if (n > config.peerExecutorMax) {
      notes.push(
        `W3 ${sizeLabel(n)}: the peer's calls are spread over ${Math.ceil(n / config.peerExecutorMax)} executors of ` +
          `${sizeLabel(config.peerExecutorMax)} (one executor takes minutes to launch that many: see W2).`
      )
    }
  }
}

const w4 = async () => {
  const perSize: Array<{ readonly n: number; readonly ours: number; readonly peer: number }> = []
  for (const n of config.w4Sizes) {
    const updates = n > 10_000 ? config.w4UpdatesLarge : config.w4Updates
    const m = await sample(`W4 history=${n}`, config.rounds, {
      ours: () => ours.w4(n, updates),
      peer: () => peer.w4(n, updates),
      floor: () => floor.w4(n, updates)
    })
    perSize.push({ n, ours: m.ours!, peer: m.peer! })
    rows.push({
      workload: `W4 deliver one later update (chat insert + reply), ${updates} updates per sample`,
      size: `${sizeLabel(n)} items in the chat`,
      unit: "µs/update",
      ours: m.ours,
      peer: m.peer,
      floor: m.floor,
      // The lead the issue keeps is at scale (the peer copies the history on every update).
      target: n >= 100_000 ? "ours/peer < 1 (lead kept); ours/W0 ≤ 2" : "ours/W0 ≤ 2",
      met: n >= 100_000
        ? `${yesNo(m.ours! / m.peer! < 1)}; ${yesNo(m.ours! / m.floor! <= 2)}`
        : yesNo(m.ours! / m.floor! <= 2)
    })
  }
  const first = perSize[0]!
  const last = perSize[perSize.length - 1]!
  rows.push({
    workload: "W4 flatness: µs per update at the largest history / at the smallest",
    size: `${sizeLabel(first.n)} → ${sizeLabel(last.n)}`,
    unit: "ratio",
    ours: last.ours / first.ours,
    peer: last.peer / first.peer,
    floor: undefined,
    target: "ours ≤ 2 (flat)",
    met: yesNo(last.ours / first.ours <= 2)
  })
}

const w5 = async () => {
  const n = config.w5Calls
  const replies: Record<Side, Array<number>> = { ours: [], peer: [], floor: [] }
  const withReplies = (side: Side, run: () => Promise<{ readonly ms: number; readonly replies: number }>) => async () => {
    const r = await run()
    replies[side].push(r.replies)
    return r.ms
  }
  const m = await sample(`W5 n=${n}`, config.rounds, {
    ours: withReplies("ours", () => ours.w5(n)),
    peer: withReplies("peer", () => peer.w5(n)),
    floor: withReplies("floor", () => floor.w5(n))
  })
  const counts = (side: Side) => [...new Set(replies[side])].join("/")
  rows.push({
    workload: "W5 N finals arrive while busy, then idle: time to deliver all",
    size: `${sizeLabel(n)} finals`,
    unit: "ms",
    ours: m.ours,
    peer: m.peer,
    floor: m.floor,
    target: "ours/peer < 1 (lead kept); ours/W0 ≤ 2",
    met: `${yesNo(m.ours! / m.peer! < 1)}; ${yesNo(m.ours! / m.floor! <= 2)}`
  })
  rows.push({
    workload: "W5 reply requests for those N finals",
    size: `${sizeLabel(n)} finals`,
    unit: "replies (median of rounds)",
    ours: median(replies.ours),
    peer: median(replies.peer),
    floor: median(replies.floor),
    ratios: false,
    target: "ours = 1 in every round",
    met: yesNo(replies.ours.every((r) => r === 1))
  })
  notes.push(`W5 reply counts per round: ours ${counts("ours")}, peer ${counts("peer")}, W0 ${counts("floor")}.`)
}

const w6 = async () => {
  const n = config.w6Calls
  const m = await sample(`W6 n=${n}`, config.rounds, {
    ours: () => ours.w6(n),
    peer: () => peer.w6(n),
    floor: () => floor.w6(n)
  })
  rows.push({
    workload: "W6 cancel N running calls one by one, until all stopped",
    size: `${sizeLabel(n)} calls`,
    unit: "ms",
    ours: m.ours,
    peer: m.peer,
    floor: m.floor,
    target: "ours/peer ≤ 0.8; ours/W0 ≤ 2",
    met: `${yesNo(m.ours! / m.peer! <= 0.8)}; ${yesNo(m.ours! / m.floor! <= 2)}`
  })
}

// --- main ----------------------------------------------------------------------------------------

const only = (process.env["BENCH_ONLY"] ?? "").split(",").map((s) => s.trim().toUpperCase()).filter((s) => s !== "")
const selected = (id: string) => only.length === 0 || only.includes(id)

const main = async () => {
  const command = process.env["npm_lifecycle_event"] === "bench"
    ? "npm run bench"
    : `node ${process.execArgv.join(" ")} bench/run.ts`
  const env = Object.entries(process.env).filter(([k]) => k.startsWith("BENCH_")).map(([k, v]) => `${k}=${v}`)
  log(`effect-async-toolset bench: ${env.length > 0 ? env.join(" ") + " " : ""}${command}`)
  await warmUp()
  if (selected("W1")) await w1()
  if (selected("W2")) await w2()
  if (selected("W3")) await w3()
  if (selected("W4")) await w4()
  if (selected("W5")) await w5()
  if (selected("W6")) await w6()

  const cpus = os.cpus()
  const report = [
    `Measured ${new Date().toISOString().slice(0, 10)} on ${cpus.length} cores (${cpus[0]?.model.trim() ?? "unknown CPU"}), ` +
    `${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.arch()}.`,
    `Command: \`${env.length > 0 ? env.join(" ") + " " : ""}${command}\` (${config.rounds} rounds; ${config.slowRounds} for the largest W2, ${config.memoryRounds} for W3; ` +
    `medians; the whole run took ${elapsed()}).`,
    "",
    renderTable(),
    "",
    ...notes.map((n) => `- ${n}`)
  ].join("\n")
  process.stdout.write(`\n${report}\n`)
  const out = process.env["BENCH_OUT"]
  if (out !== undefined && out !== "") writeFileSync(out, `${report}\n`)
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
