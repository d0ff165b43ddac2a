/**
 * One measurement in a fresh process, for what an in-process run cannot measure well:
 * - `memory <side> <n>`: W3, bytes per blocked call (a fresh heap and RSS baseline);
 * - `launch peer <n>`: W2 on the peer at a size where it takes minutes; it reports its progress so
 *   the parent can stop it at a time cap and still say how far it got.
 * Prints `PROGRESS <launched> <ms>` lines and one `RESULT <json>` line.
 */
import * as floor from "./floor.ts"
import { config } from "./harness.ts"
import * as ours from "./ours.ts"
import * as peer from "./peer/peer.ts"

const [mode, side, size] = process.argv.slice(2)
const n = Number(size)

const main = async (): Promise<unknown> => {
  if (mode === "memory") {
    if (side === "ours") return ours.w3(n)
    if (side === "peer") return peer.w3(n, config.peerExecutorMax)
    if (side === "floor") return floor.w3(n)
  }
  if (mode === "launch" && side === "peer") {
    const t0 = performance.now()
    return peer.w2(n, (launched) => {
      process.stdout.write(`PROGRESS ${launched} ${(performance.now() - t0).toFixed(1)}\n`)
    })
  }
  throw new Error(`usage: child.ts memory <ours|peer|floor> <n> | launch peer <n>; got ${process.argv.slice(2).join(" ")}`)
}

main().then(
  (result) => {
    process.stdout.write(`RESULT ${JSON.stringify(result)}\n`)
    process.exit(0)
  },
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
