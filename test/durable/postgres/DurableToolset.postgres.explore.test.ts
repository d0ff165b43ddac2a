/**
 * The durable toolset on a PostgreSQL server (`@effect/sql-pg`, effect/cluster runners over
 * sockets): the crash tests of the embedded store, with the agent's process a runner, and the
 * failover of a call between two runner processes when the runner that holds it is killed.
 *
 * They run when TEST_PG_URL names a database (`bash .ci/run` starts a throwaway server; so does
 * `eval "$(scripts/pg-throwaway.sh start)"`, then `TEST_PG_URL=$PG_URL npm test`). Without it they are
 * skipped, and `npm test` says so in one line.
 */
import { assert, describe, it } from "@effect/vitest"
import { mkdtempSync } from "node:fs"
import { join } from "node:path"
import { assertToldOnce, crashTests, finish, kill, marks, start, waitFor } from "../../support/crash.ts"
import type { Child } from "../../support/crash.ts"
import { testTmp } from "../../support/tmp.ts"

const url = process.env.TEST_PG_URL

describe.skipIf(url === undefined || url === "")("DurableToolset on PostgreSQL", () => {
  describe("crash tests (the agent's process is a runner; SIGKILL)", () => crashTests({ _tag: "postgres", url: url! }))

  it("two runner processes: the runner holding the booking is killed, the other takes the call over, and everything is told once", async () => {
    const dir = mkdtempSync(join(testTmp(), "eat-multi-"))
    const base = 51_000 + (process.pid % 400) * 2
    const common = { STORE: "postgres", PG_URL: url!, MARKS: join(dir, "marks"), SESSION: `multi_${Date.now().toString(36)}`, POLL_MS: "300" }
    const crash = { CRASH_AT: "holding", CRASH_ONCE: join(dir, "crashed-once") }
    const runners = [
      start({ ...common, ...crash, MODE: "runner", RUNNER_PORT: String(base) }),
      start({ ...common, ...crash, MODE: "runner", RUNNER_PORT: String(base + 1) })
    ]
    try {
      await Promise.all(runners.map((runner) => waitFor(runner, /^RUNNER READY/m, 120)))
      // the agent is a client of the cluster: it starts the call, a runner runs it
      const agent = start({ ...common, MODE: "start" })
      const holder = await Promise.any(runners.map((runner) => waitFor(runner, /^CRASH holding$/m, 120).then(() => runner)))
      await kill(holder)
      const other: Child = runners.find((runner) => runner !== holder)!
      const report = await finish(agent)
      const lines = marks(common.MARKS)
      assertToldOnce(report, lines, { restored: false })
      // the booking was polled by the killed runner, then by the other, which finished it
      const pollers = lines.filter((line) => line.startsWith("poll ")).map((line) => Number(line.slice(5)))
      assert.deepStrictEqual(pollers, [holder.process.pid, other.process.pid])
      assert.strictEqual(lines.filter((line) => line === "activity-start charge_card").length, 1)
    } finally {
      for (const runner of runners) runner.process.kill("SIGKILL")
    }
  }, 240_000)
})
