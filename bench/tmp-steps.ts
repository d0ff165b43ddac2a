import { MixedScheduler } from "effect/Scheduler"
import * as ours from "./ours.ts"
const n = 300
await ours.w1(n)
const counts = new Map<number, number>()
const orig = MixedScheduler.prototype.shouldYield
MixedScheduler.prototype.shouldYield = function(this: any, f: any) { counts.set(f.id, (counts.get(f.id) ?? 0) + 1); return orig.call(this, f) }
await ours.w1(n)
MixedScheduler.prototype.shouldYield = orig
const sorted = [...counts.entries()].sort((a, b) => b[1] - a[1])
console.log("fibers", counts.size, "total", [...counts.values()].reduce((a, b) => a + b, 0) / n)
console.log("top", sorted.slice(0, 5).map(([id, c]) => `${id}:${(c / n).toFixed(1)}/call`))
const hist = new Map<number, number>()
for (const [, c] of sorted.slice(3)) hist.set(c, (hist.get(c) ?? 0) + 1)
console.log("per-fiber step histogram (count: fibers)", [...hist].sort((a, b) => b[1] - a[1]).slice(0, 8))
