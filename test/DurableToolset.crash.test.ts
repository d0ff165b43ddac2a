/**
 * Proof by killing processes, on the embedded store (PGlite, effect/cluster's SingleRunner): a
 * real child process runs a travel agent with a durable toolset; the user asks for a booking; the
 * process stops at a crash point and is killed with SIGKILL; a new process starts on the same data
 * folder. Then the booking's charge happened once, each update and the final result are in the
 * chat exactly once, each was asked about in exactly one reply, and no call is left running.
 *
 * The child stops at a crash point by freezing its thread (so the state is exactly that point's),
 * and the test kills it from outside. These tests take real time: about 10 to 20 seconds each.
 */
import { assert, describe, it } from "@effect/vitest"
import { dirname, join } from "node:path"
import { count, finish, kill, marks, repliedCallIds, start, waitFor } from "./support/crash.ts"
import type { Report } from "./support/crash.ts"
import { freshDataDir } from "./support/pglite.ts"

const crashAndResume = async (crashAt: string, extra: Record<string, string> = {}) => {
  const dir = dirname(await freshDataDir())
  const env = { STORE: "pglite", DATA_DIR: dir, MARKS: join(dir, "marks"), SESSION: "crash" }
  const first = start({ ...env, ...extra, MODE: "start", CRASH_AT: crashAt })
  await waitFor(first, new RegExp(`^CRASH ${crashAt}$`, "m"), 120)
  await kill(first)
  // the killed process left its lock file: the next one takes it over
  const second = start({ ...env, MODE: "resume" })
  const report = await finish(second)
  return { report, marks: marks(env.MARKS) }
}

/** The model's call id of the booking (the one call without a synthetic suffix). */
const bookingCallId = (report: Report): string => {
  const calls = report.chat.filter((item) => item.tag === "FunctionCall" && !/_(update_\d+|final)$/.test(item.callId!))
  assert.strictEqual(calls.length, 1, "one booking call in the chat")
  return calls[0]!.callId!
}

/** Everything of the booking is in the chat once and was told once; the charge happened once. */
const assertToldOnce = (report: Report, lines: ReadonlyArray<string>, options: { readonly restored: boolean }) => {
  const callId = bookingCallId(report)
  assert.strictEqual(report.chat.filter((item) => item.content === "Book me a flight to Tokyo").length, 1)
  for (const id of [callId, `${callId}_update_1`, `${callId}_final`]) {
    assert.strictEqual(count(report, "FunctionCall", id), 1, `one call ${id}`)
    assert.strictEqual(count(report, "FunctionCallOutput", id), 1, `one output ${id}`)
  }
  assert.include(report.chat.find((item) => item.callId === `${callId}_final` && item.tag === "FunctionCallOutput")!.output, "FL-847293")
  // each owed result named by exactly one reply request, across both processes
  const expected = [...(options.restored ? [callId] : []), `${callId}_update_1`, `${callId}_final`].sort()
  assert.deepStrictEqual([...repliedCallIds(lines)].sort(), expected)
  assert.deepStrictEqual(report.running, [])
  // the card was charged once (the provider deduplicates by the step's key), the step done once
  assert.strictEqual(new Set(lines.filter((line) => line.startsWith("charge ")).map((line) => line.slice(7))).size, 1)
  assert.strictEqual(lines.filter((line) => line === "activity-done charge_card").length, 1)
}

describe("DurableToolset crash tests (embedded store, SIGKILL)", () => {
  it("killed after the first update was recorded, before the agent got it: the call and its output are restored, the booking goes on, everything is told once", async () => {
    const { marks, report } = await crashAndResume("after-first-update")
    assertToldOnce(report, marks, { restored: true })
    // the tool's waiting ran again in the new process; its first update was not said again
    assert.strictEqual(marks.filter((line) => line.startsWith("poll ")).length, 1)
    assert.strictEqual(report.chat.filter((item) => item.output?.includes("Searching flights") === true).length, 1)
  }, 240_000)

  it("killed during the charge_card activity (the card charged, the step not recorded): the step runs again, the card is charged once, everything is told once", async () => {
    const { marks, report } = await crashAndResume("during-activity")
    assertToldOnce(report, marks, { restored: false })
    assert.strictEqual(marks.filter((line) => line === "activity-start charge_card").length, 2)
    assert.strictEqual(marks.filter((line) => line.startsWith("charge ")).length, 2)
  }, 240_000)

  it("killed after the final result was recorded, before it reached the agent's chat: it reaches the chat once and is told once", async () => {
    const { marks, report } = await crashAndResume("final-stored")
    assertToldOnce(report, marks, { restored: false })
  }, 240_000)

  it("killed after the final result reached the agent's chat, before the reply was asked for: one reply is asked for", async () => {
    const { marks, report } = await crashAndResume("final-inserted")
    assertToldOnce(report, marks, { restored: false })
    assert.strictEqual(marks.filter((line) => line.startsWith("reply ") && line.includes("_final")).length, 1)
  }, 240_000)

  it("a call cancelled before the crash stays cancelled: its steps never run and nothing more of it reaches the chat", async () => {
    const { marks, report } = await crashAndResume("after-cancel", { CANCEL: "1", POLL_MS: "10000" })
    const callId = bookingCallId(report)
    assert.strictEqual(count(report, "FunctionCallOutput", callId), 1)
    assert.strictEqual(count(report, "FunctionCall", `${callId}_update_1`), 0)
    assert.strictEqual(count(report, "FunctionCall", `${callId}_final`), 0)
    assert.deepStrictEqual(report.running, [])
    assert.isFalse(marks.some((line) => line.startsWith("activity-start") || line.startsWith("charge ")))
    assert.strictEqual(marks.filter((line) => line.startsWith("poll ")).length, 1)
    assert.deepStrictEqual(repliedCallIds(marks), [])
  }, 240_000)
})
