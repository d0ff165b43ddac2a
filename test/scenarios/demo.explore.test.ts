/**
 * The durable demo, run twice as processes (`npm start -- --durable`): quit in the middle of a
 * booking, start again. Slow (two processes, each opening a store), so in the explore tier.
 */
import { readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { root, runScript } from "../support/demo.ts"
import { freshDataDir } from "../support/pglite.ts"

describe("demo: --durable", () => {
  it("quit in the middle of a booking, start again: the agent tells its result, once", async () => {
    const data = dirname(await freshDataDir())
    const scripts = join(root, "examples")
    const first = await runScript("durable-1.txt", readFileSync(join(scripts, "travel-durable-1.txt"), "utf8"), "--durable", "--data", data)
    assert.strictEqual(first.code, 0, first.stdout)
    assert.include(first.stdout, "On it! Searching flights to Tokyo")
    assert.include(first.stdout, "go on: start the demo again")
    assert.notInclude(first.stdout, "is booked")
    assert.notInclude(first.stdout, "told now", "a new conversation has nothing to tell from before")
    const second = await runScript("durable-2.txt", readFileSync(join(scripts, "travel-durable-2.txt"), "utf8"), "--durable", "--data", data)
    assert.strictEqual(second.code, 0, second.stdout)
    assert.include(second.stdout, "resuming the conversation")
    assert.strictEqual(second.stdout.split("what the bookings did meanwhile is told now").length - 1, 1, "said once, as it is told")
    assert.strictEqual(second.stdout.split("Your confirmation number is FL-").length - 1, 1, second.stdout)
    assert.notInclude(second.stdout, "[error]")
  }, 120_000)
})
