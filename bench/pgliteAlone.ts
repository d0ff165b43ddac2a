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
 * Then one statement shaped like a durable call's writes, as PGlite's `query` sends it (parsed and
 * planned each time) and as a prepared statement's `EXECUTE` (planned once): what a client that
 * prepared its statements would save per statement.
 *
 * Prints two tables.
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
// Part two: one statement of the shape a durable call's writes take (a data-modifying WITH over two
// tables), sent as PGlite's `query` sends it (parsed, analyzed and planned every time) and as a
// prepared statement's EXECUTE (planned once).
const shaped = `WITH old AS (SELECT status FROM call WHERE id = $1 FOR UPDATE),
  c AS (UPDATE call SET version = version + 1,
          status = CASE WHEN old.status = 'running' THEN 'done' ELSE 'cancelled' END
        FROM old WHERE call.id = $1 AND old.status IN ('running', 'stopping') RETURNING old.status AS was),
  i AS (INSERT INTO item (id, n, body) SELECT $1, 2, $2::jsonb FROM c WHERE c.was = 'running'
        ON CONFLICT (id, n) DO NOTHING RETURNING 1)
  SELECT (SELECT was FROM c) AS was`
const body = JSON.stringify({ output: "booked", note: "x".repeat(200) })
const statements = Math.max(200, Math.floor(total / 2))
const fresh = async () => {
  const first = next
  for (let k = 0; k < statements; k++) {
    await db.query("INSERT INTO call (id, status, version, body) VALUES ($1, 'running', 0, '{}')", [next++])
  }
  return first
}
await db.exec(`PREPARE shaped(bigint, text) AS ${shaped}`)
const shapedMs = { query: [] as Array<number>, prepared: [] as Array<number> }
for (let r = 0; r < rounds; r++) {
  let first = await fresh()
  let t0 = performance.now()
  for (let k = 0; k < statements; k++) await db.query(shaped, [first + k, body])
  shapedMs.query.push((performance.now() - t0) / statements)
  first = await fresh()
  t0 = performance.now()
  for (let k = 0; k < statements; k++) await db.query(`EXECUTE shaped(${first + k}, '${body}')`)
  shapedMs.prepared.push((performance.now() - t0) / statements)
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
lines.push(
  "",
  `One statement shaped like a durable call's write (a data-modifying WITH over both tables, a row found and updated, one inserted), ${statements} per sample, ms each (medians):`,
  "",
  "| sent as | ms per statement |",
  "|---|---:|",
  `| \`query(text, params)\`: parsed and planned every time | ${median(shapedMs.query).toFixed(3)} |`,
  `| \`EXECUTE\` of a prepared statement: planned once | ${median(shapedMs.prepared).toFixed(3)} |`
)
process.stdout.write(`${lines.join("\n")}\n`)
