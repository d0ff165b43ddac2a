/**
 * Two runner processes on PostgreSQL, and the agent a client of the cluster: the runner holding a
 * booking is killed between the tool's return and the record of its end (crash point
 * tool-returned of test/durable/crashChild.ts). The other runner takes the call over and runs the
 * tool again (its charge step not again: its result is stored); the agent tells the result once,
 * neither timed out nor cancelled, and its toolset closes (or drains) without waiting on the dead
 * runner.
 */
import { assert, describe, it } from "@effect/vitest"
import { PgClient } from "@effect/sql-pg"
import { Effect, Redacted, Schedule } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { mkdtempSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { assertToldOnce, bookingCallId, finish, kill, marks, start, waitFor } from "../../support/crash.ts"
import type { Child } from "../../support/crash.ts"
import { testTmp } from "../../support/tmp.ts"
import { freePort, freshDatabase, testPgUrl } from "../pgDatabase.ts"

/** Two runners (the first to return the booking freezes there), and the agent; the holder killed once frozen. */
const takeover = (url: string, agentEnv: (dir: string) => Record<string, string>, beforeKill: (dir: string) => Promise<void> = async () => {}) =>
  Effect.gen(function*() {
    const ports = [yield* freePort, yield* freePort]
    return yield* Effect.promise(async () => {
      const dir = mkdtempSync(join(testTmp(), "eat-returned-"))
      const common = { STORE: "postgres", PG_URL: url, MARKS: join(dir, "marks"), SESSION: `returned_${Date.now().toString(36)}`, POLL_MS: "300" }
      const crash = { CRASH_AT: "tool-returned", CRASH_ONCE: join(dir, "crashed-once") }
      const runners = ports.map((port) => start({ ...common, ...crash, MODE: "runner", RUNNER_PORT: String(port) }))
      try {
        await Promise.all(runners.map((runner) => waitFor(runner, /^RUNNER READY/m, 120)))
        const agent = start({ ...common, ...agentEnv(dir), MODE: "start" })
        const holder = await Promise.any(runners.map((runner) => waitFor(runner, /^CRASH tool-returned$/m, 120).then(() => runner)))
        await beforeKill(dir)
        await kill(holder)
        const other: Child = runners.find((runner) => runner !== holder)!
        const report = await finish(agent)
        return { report, lines: marks(common.MARKS), agent: agent.output, holder: holder.process.pid!, other: other.process.pid! }
      } finally {
        for (const runner of runners) runner.process.kill("SIGKILL")
      }
    })
  })

/** Waits until `query` (one row, `n`) counts one or more. */
const until = (url: string, query: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient
    yield* Effect.repeat(Effect.orDie(sql.unsafe<{ n: number }>(query)), {
      until: (rows) => Number(rows[0]!.n) > 0,
      schedule: Schedule.spaced("20 millis")
    })
  }).pipe(Effect.scoped, Effect.provide(PgClient.layer({ url: Redacted.make(url) })), Effect.orDie, Effect.timeout("60 seconds"), Effect.orDie)

describe.skipIf(testPgUrl === undefined)("DurableToolset on PostgreSQL: the runner holding a call killed between the tool's return and its end's record", () => {
  it.live("the other runner runs the tool again (its charge step not again), the result is told once, not timed out or cancelled, and the toolset closes", () =>
    Effect.gen(function*() {
      const url = yield* freshDatabase("eat_returned")
      const { agent, holder, lines, other, report } = yield* takeover(url, () => ({}))
      assertToldOnce(report, lines, { restored: false })
      const callId = bookingCallId(report)
      const final = report.chat.find((item) => item.callId === `${callId}_final` && item.tag === "FunctionCallOutput")!
      assert.notMatch(final.output!, /timed out|cancel/i)
      assert.deepStrictEqual(report.stored, [{ base: callId, status: "done" }])
      // returned on the killed runner, then again on the other one
      assert.deepStrictEqual(lines.filter((line) => line.startsWith("returned ")), [`returned ${holder}`, `returned ${other}`])
      assert.strictEqual(lines.filter((line) => line === "activity-start charge_card").length, 1)
      assert.match(agent, /^CLOSED \d+$/m)
    }).pipe(Effect.scoped), 240_000)

  it.live("the agent drains its toolset while the holder is frozen, which is then killed: the drain ends when the other runner has taken the call over and stopped it (the agent never heard of the return: the call is cancelled), nothing more is told, and the toolset closes", () =>
    Effect.gen(function*() {
      const url = yield* freshDatabase("eat_returned")
      const drainFile = (dir: string) => join(dir, "drain")
      // (drained while the holder is frozen, its end not recorded; killed once the drain's stop is recorded)
      const { agent, lines, report } = yield* takeover(url, (dir) => ({ DRAIN_ON: drainFile(dir) }), async (dir) => {
        writeFileSync(drainFile(dir), "")
        await Effect.runPromise(until(url, "SELECT count(*)::int AS n FROM async_toolset_call WHERE status = 'stopping'"))
      })
      assert.match(agent, /^DRAINED \d+$/m)
      assert.match(agent, /^CLOSED \d+$/m)
      const callId = bookingCallId(report)
      assert.deepStrictEqual(report.stored, [{ base: callId, status: "cancelled" }])
      // what the model was told before stands, once (an update the agent had not read yet is
      // withdrawn, E2); no result after the drain
      assert.strictEqual(report.chat.filter((item) => item.tag === "FunctionCallOutput" && item.callId === callId).length, 1)
      assert.isAtMost(report.chat.filter((item) => item.tag === "FunctionCallOutput" && item.callId === `${callId}_update_1`).length, 1)
      assert.isFalse(report.chat.some((item) => item.callId === `${callId}_final`))
      assert.deepStrictEqual(report.running, [])
      // charged once, by the killed runner; the other one stopped the call before running the tool
      assert.strictEqual(lines.filter((line) => line.startsWith("charge ")).length, 1)
      assert.strictEqual(lines.filter((line) => line.startsWith("returned ")).length, 1)
    }).pipe(Effect.scoped), 240_000)
})
