/**
 * More crash points of the crash tests' child (test/durable/crashChild.ts), on the embedded store, some
 * killed twice in a row. Each test starts the
 * child, kills it at a crash point, possibly again during the next start, then lets a last process
 * finish and checks: nothing told twice, nothing lost, every call ended, the chat well formed.
 */
import { assert, describe, it } from "@effect/vitest"
import { dirname, join } from "node:path"
import { freshDataDir } from "../support/pglite.ts"
import type { Report } from "../support/crash.ts"
import { assertToldOnce, finish, kill, marks as readMarks, repliedCallIds, start, waitFor } from "../support/crash.ts"

/** Runs `start` killed at `points[0]`, then a resume killed at each later point, then a resume that finishes. */
const run = async (points: ReadonlyArray<string>, extra: Record<string, string> = {}) => {
  const dir = dirname(await freshDataDir())
  const env = { MARKS: join(dir, "marks"), SESSION: `crash_${Date.now().toString(36)}`, STORE: "pglite", DATA_DIR: dir, ...extra }
  for (let i = 0; i < points.length; i++) {
    const child = start({ ...env, MODE: i === 0 ? "start" : "resume", CRASH_AT: points[i]! })
    await waitFor(child, new RegExp(`^CRASH ${points[i]}$`, "m"), 120)
    await kill(child)
  }
  const last = start({ ...env, MODE: "resume" })
  const report = await finish(last)
  return { report, marks: readMarks(env.MARKS), output: last.output }
}

/** Every function call has exactly one output; call ids unique. */
const wellFormed = (report: Report) => {
  const calls = new Map<string, number>()
  const outs = new Map<string, number>()
  for (const item of report.chat) {
    if (item.tag === "FunctionCall") calls.set(item.callId!, (calls.get(item.callId!) ?? 0) + 1)
    if (item.tag === "FunctionCallOutput") outs.set(item.callId!, (outs.get(item.callId!) ?? 0) + 1)
  }
  const problems: Array<string> = []
  for (const [id, n] of calls) {
    if (n !== 1) problems.push(`${id}: ${n} calls`)
    if ((outs.get(id) ?? 0) !== 1) problems.push(`${id}: ${outs.get(id) ?? 0} outputs`)
  }
  for (const [id] of outs) if (!calls.has(id)) problems.push(`${id}: output without call`)
  assert.deepStrictEqual(problems, [], JSON.stringify(report.chat))
  assert.deepStrictEqual(report.running, [])
}

describe("DurableToolset killed at more crash points, and again while it starts (embedded store, SIGKILL)", () => {
  it("killed before the tool's first update (the call recorded, the caller waiting): restored once, told once", async () => {
    const { marks, report } = await run(["before-first-update"])
    wellFormed(report)
    assertToldOnce(report, marks, { restored: true })
  }, 240_000)

  it("killed after update_1 was recorded, before it reached the agent's chat", async () => {
    const { marks, report } = await run(["update-stored"])
    wellFormed(report)
    assertToldOnce(report, marks, { restored: false })
  }, 240_000)

  it("killed right after the cancel was asked for, before the store recorded it: the call ends, nothing twice", async () => {
    const { marks, report } = await run(["cancel-requested"], { CANCEL: "1", CANCEL_NOWAIT: "1", POLL_MS: "3000" })
    wellFormed(report)
    assert.isAtMost(new Set(marks.filter((l) => l.startsWith("charge "))).size, 1)
    const asked = repliedCallIds(marks)
    assert.strictEqual(asked.length, new Set(asked).size, `asked twice: ${asked.join(",")}`)
  }, 240_000)

  it("killed after update_1 was recorded, then again while the next start's first insertion", async () => {
    const { marks, report } = await run(["update-stored", "resume-any-insert"])
    wellFormed(report)
    assertToldOnce(report, marks, { restored: false })
  }, 240_000)

  it("killed before the first update, then again while the next start restores the call into the chat", async () => {
    const { marks, report } = await run(["before-first-update", "resume-restore"])
    wellFormed(report)
    assertToldOnce(report, marks, { restored: true })
  }, 240_000)

  it("killed just after the session took the reply request up (the reply not stored): asked again at most once", async () => {
    const { report } = await run(["reply-taken"])
    wellFormed(report)
  }, 240_000)

  it("killed after the final result reached the chat, then during the resumed reply request", async () => {
    const { marks, report } = await run(["final-inserted", "resume-reply"])
    wellFormed(report)
    assertToldOnce(report, marks, { restored: false })
  }, 240_000)

  it("killed during toolset make after a restart (after-make), following a kill mid-replace", async () => {
    const { marks, report } = await run(["replace-waiting", "after-make"], { REPLACE: "1", POLL_MS: "3000" })
    wellFormed(report)
    assert.strictEqual(new Set(marks.filter((l) => l.startsWith("charge ")).map((l) => l.slice(7))).size, 1, "one booking charged")
  }, 240_000)
})
