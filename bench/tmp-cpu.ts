import * as ours from "./ours.ts"
await ours.w1(2000)
const t = performance.now()
for (let i = 0; i < 5; i++) await ours.w1(3000)
console.log("us/call", ((performance.now() - t) * 1000 / 15000).toFixed(1))
