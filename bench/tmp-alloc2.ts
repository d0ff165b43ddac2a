import { Session } from "node:inspector/promises"
import * as ours from "./ours.ts"
const which = process.argv[2] ?? "w1"
const n = Number(process.argv[3] ?? 500)
const target = process.argv[4] ?? "Function.js:77"
const run = () => which === "w1" ? ours.w1(n) : ours.w2(n)
await run()
const session = new Session()
session.connect()
await session.post("HeapProfiler.enable")
await session.post("HeapProfiler.startSampling", { samplingInterval: 128, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true } as any)
await run()
const { profile } = await session.post("HeapProfiler.stopSampling") as any
const byStack = new Map<string, number>()
const loc = (f: any) => `${f.functionName || "(anon)"} ${f.url.replace(/.*\/(dist|bench)\//, "")}:${f.lineNumber + 1}`
const walk = (node: any, stack: Array<string>) => {
  const here = loc(node.callFrame)
  const s = [...stack, here]
  if (node.selfSize > 0 && here.includes(target)) {
    const key = s.slice(-5, -1).join(" < ")
    byStack.set(key, (byStack.get(key) ?? 0) + node.selfSize)
  }
  for (const c of node.children) walk(c, s)
}
walk(profile.head, [])
for (const [k, v] of [...byStack].sort((a, b) => b[1] - a[1]).slice(0, 12)) console.log((v / n).toFixed(0).padStart(6), k)
process.exit(0)
