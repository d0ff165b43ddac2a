import { Session } from "node:inspector/promises"
import * as ours from "./ours.ts"
const which = process.argv[2] ?? "w2"
const n = Number(process.argv[3] ?? 2000)
const run = () => which === "w1" ? ours.w1(n) : which === "w6" ? ours.w6(n) : which === "w4" ? ours.w4(1000, n) : ours.w2(n)
await run()
const session = new Session()
session.connect()
await session.post("HeapProfiler.enable")
await session.post("HeapProfiler.startSampling", { samplingInterval: 128, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true } as any)
await run()
const { profile } = await session.post("HeapProfiler.stopSampling") as any
const byFn = new Map<string, number>()
let total = 0
const walk = (node: any, stack: Array<string>) => {
  const f = node.callFrame
  const loc = `${f.functionName || "(anon)"} ${f.url.replace(/.*\/(src|node_modules\/effect\/dist|bench)\//, "$1/")}:${f.lineNumber + 1}`
  if (node.selfSize > 0) { byFn.set(loc, (byFn.get(loc) ?? 0) + node.selfSize); total += node.selfSize }
  for (const c of node.children) walk(c, [...stack, loc])
}
walk(profile.head, [])
console.log("total bytes per unit", (total / n).toFixed(0))
for (const [k, v] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, 45)) console.log((v / n).toFixed(0).padStart(7), k)
process.exit(0)
