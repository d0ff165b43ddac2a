/**
 * A process killed between a tool's return and the record of its end (rule F5 with E7): the tool
 * returned in the killed process (its execution told the agent's follower there), nothing of its
 * end is stored. After the restart the engine runs the tool again (at least once, docs/durable.md:
 * its activities are not run again, their results are stored), and the chat gets the result once,
 * neither timed out nor cancelled. The crash tests' child (test/durable/crashChild.ts) on the
 * embedded store, killed with SIGKILL.
 */
import { assert, describe, it } from "@effect/vitest"
import { dirname, join } from "node:path"
import { freshDataDir } from "../support/pglite.ts"
import { assertToldOnce, bookingCallId, finish, kill, marks as readMarks, start, waitFor } from "../support/crash.ts"

/** Starts the child, kills it at `point`, then (after `then.downMs`) lets a resumed process finish. */
const run = async (point: string, extra: Record<string, string> = {}, then: { readonly downMs?: number; readonly resume?: Record<string, string> } = {}) => {
  const dir = dirname(await freshDataDir())
  const env = { MARKS: join(dir, "marks"), SESSION: `crash_${Date.now().toString(36)}`, STORE: "pglite", DATA_DIR: dir }
  const first = start({ ...env, ...extra, MODE: "start", CRASH_AT: point })
  await waitFor(first, new RegExp(`^CRASH ${point}$`, "m"), 120)
  await kill(first)
  // (the process stays down this long: a deadline passes meanwhile)
  if (then.downMs !== undefined) await new Promise((resolve) => setTimeout(resolve, then.downMs))
  const last = start({ ...env, ...then.resume, MODE: "resume" })
  const report = await finish(last)
  return { report, marks: readMarks(env.MARKS), first: first.output, last: last.output }
}

describe("DurableToolset killed between a tool's return and the record of its end (embedded store, SIGKILL)", () => {
  it("the tool runs again after the restart (its charge step not again), and the result is told once, not timed out or cancelled", async () => {
    const { marks, report } = await run("tool-returned")
    assertToldOnce(report, marks, { restored: false })
    const callId = bookingCallId(report)
    const final = report.chat.find((item) => item.callId === `${callId}_final` && item.tag === "FunctionCallOutput")!
    assert.notMatch(final.output!, /timed out|cancel/i)
    // it returned twice (once in each process); its polling ran again, its charge step did not
    assert.strictEqual(marks.filter((line) => line.startsWith("returned ")).length, 2)
    assert.strictEqual(marks.filter((line) => line.startsWith("poll ")).length, 2)
    assert.strictEqual(marks.filter((line) => line === "activity-start charge_card").length, 1)
  }, 240_000)

  it("a cancel asked while the store refuses the end's record (the tool returned), then the process killed: the call had ended for the cancel, its result is told once, and the store says done", async () => {
    const { first, marks, report } = await run("cancel-while-recording", { REFUSE_END: "1", CANCEL_AFTER_RETURN: "1" })
    // the tool had returned: the cancel found no running call
    assert.match(first, /^CANCEL "not-found"$/m)
    assertToldOnce(report, marks, { restored: false })
    const callId = bookingCallId(report)
    assert.deepStrictEqual(report.stored, [{ base: callId, status: "done" }])
    assert.isFalse(report.chat.some((item) => /cancel/i.test(item.output ?? "")), "nothing said it was cancelled")
  }, 240_000)

  it("with a timeout, restarted past the deadline: the return was never recorded, so the call times out at once after the restart (told once, as timed out; its charge step had run, and does not run again)", async () => {
    const { marks, report } = await run("tool-returned", { TIMEOUT_MS: "3000" }, { downMs: 3500, resume: { TIMEOUT_MS: "3000" } })
    const callId = bookingCallId(report)
    const outputs = report.chat.filter((item) => item.tag === "FunctionCallOutput" && item.callId === `${callId}_final`)
    assert.strictEqual(outputs.length, 1)
    assert.match(outputs[0]!.output!, /took longer than 3s/)
    assert.deepStrictEqual(report.stored, [{ base: callId, status: "timed-out" }])
    assert.deepStrictEqual(report.running, [])
    assert.strictEqual(marks.filter((line) => line.startsWith("returned ")).length, 1)
    assert.strictEqual(marks.filter((line) => line === "activity-start charge_card").length, 1)
  }, 240_000)
})
