/**
 * PGlite alone, without Effect or this library: how many small write transactions per second it
 * runs one at a time, and how many with 10 and 50 in flight. The durable benchmark
 * (`bench/durable.ts`) finds the embedded store's calls CPU-bound on Node's one thread even one at a
 * time; this is the bare dependency's side of that claim. PGlite runs one query at a time (its
 * WebAssembly PostgreSQL is single-user, in this process's thread), so transactions in flight
 * together wait for each other: more of them at once cannot multiply the rate, only share what
 * little is per batch (nothing, here).
 *
 * Each transaction is the shape of a durable call's own writes: BEGIN, an INSERT of a row, an
 * UPDATE of it, an INSERT of a second row, COMMIT (5 statements), through `PGlite.transaction`.
 *
 *   node --import tsx bench/pgliteAlone.ts                 (a new folder under the OS temp folder)
 *   BENCH_PGLITE_TX=2000 node --import tsx bench/pgliteAlone.ts
 *
 * Prints one table (transactions per second, and CPU-ms of this process per transaction).
 */
import { PGlite } from "@electric-sql/pglite"
import { mkdtempSync, rmSync } from "node:fs"
import { cpus, loadavg, tmpdir } from "node:os"
import { join } from "node:path"

const total = Number(process.env["BENCH_PGLITE_TX"] ?? 1000)
const rounds = Number(process.env["BENCH_PGLITE_ROUNDS"] ?? 3)

const dir = mkdtempSync(join(tmpdir(), "pglite-alone-"))
const db = new PGlite({ dataDir: dir })
await db.exec(`
  CREATE TABLE call (id bigint PRIMARY KEY, status text NOT NULL, version int NOT NULL, body jsonb NOT NULL);
  CREATE TABLE item (id bigint NOT NULL, n int NOT NULL, body jsonb NOT NULL, PRIMARY KEY (id, n));
`)

let next = 0
const one = () =>
  db.transaction(async (tx) => {
    const id = next++
    await tx.query("INSERT INTO call (id, status, version, body) VALUES ($1, 'running', 0, $2)", [id, { args: { city: "Paris" } }])
    await tx.query("UPDATE call SET version = version + 1, status = 'done' WHERE id = $1", [id])
    await tx.query("INSERT INTO item (id, n, body) VALUES ($1, 1, $2)", [id, { output: "booked" }])
  })

/** `total` transactions, `inFlight` at a time: their rate and this process's CPU-ms per transaction. */
const run = async (inFlight: number) => {
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  let started = 0
  const worker = async () => {
    while (started < total) {
      started++
      await one()
    }
  }
  await Promise.all(Array.from({ length: inFlight }, worker))
  const ms = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  return { rate: (total * 1000) / ms, cpuMs: (cpu.user + cpu.system) / 1000 / total }
}

const median = (xs: Array<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

await run(1) // warm up
const widths = [1, 10, 50]
const samples = new Map(widths.map((w) => [w, { rate: [] as Array<number>, cpu: [] as Array<number> }]))
for (let r = 0; r < rounds; r++) {
  for (const w of widths) {
    const s = await run(w)
    samples.get(w)!.rate.push(s.rate)
    samples.get(w)!.cpu.push(s.cpuMs)
  }
}
await db.close()
rmSync(dir, { recursive: true, force: true })

const seq = median(samples.get(1)!.rate)
const lines = [
  `PGlite alone (@electric-sql/pglite, no Effect): ${total} transactions per sample (BEGIN, 3 writes, COMMIT), ${rounds} rounds, medians. ` +
  `${cpus().length} cores (${cpus()[0]?.model.trim()}), Node ${process.version}, load ${loadavg().map((x) => x.toFixed(1)).join(" ")}.`,
  "",
  "| in flight | transactions/s | vs one at a time | CPU-ms per transaction |",
  "|---:|---:|---:|---:|",
  ...widths.map((w) => {
    const rate = median(samples.get(w)!.rate)
    return `| ${w} | ${rate.toFixed(0)} | ${(rate / seq).toFixed(2)}x | ${median(samples.get(w)!.cpu).toFixed(2)} |`
  })
]
process.stdout.write(`${lines.join("\n")}\n`)
