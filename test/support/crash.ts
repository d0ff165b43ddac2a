/**
 * Starting and killing the crash tests' child process (test/durable/crashChild.ts), and reading what it
 * left: the marks file (what ran, across processes) and the report of the process that finished.
 */
import { assert, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { freshDataDir } from "./pglite.ts"
import { testTmp } from "./tmp.ts"

const root = join(import.meta.dirname, "..", "..")

/** A child process of the crash tests, with its output so far. */
export interface Child {
  readonly process: ChildProcess
  /** Everything it printed (stdout and stderr). */
  output: string
  /** Resolves with its exit code (or signal name) when it ends. */
  readonly exited: Promise<number | string>
}

/** Starts the child with `env` (on top of this process's environment). */
export const start = (env: Record<string, string>): Child => {
  const child = spawn(process.execPath, ["--import", "tsx", "--conditions=effect-async-toolset-source", "test/durable/crashChild.ts"], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  const self: Child = {
    process: child,
    output: "",
    exited: new Promise((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal ?? "unknown")))
  }
  child.stdout!.on("data", (data: Buffer) => self.output += data.toString())
  child.stderr!.on("data", (data: Buffer) => self.output += data.toString())
  return self
}

/** Resolves once the child printed a line matching `pattern`; rejects after `seconds` or if it ends first. */
export const waitFor = (child: Child, pattern: RegExp, seconds = 60): Promise<RegExpExecArray> =>
  new Promise((resolve, reject) => {
    const started = Date.now()
    const check = () => {
      const found = pattern.exec(child.output)
      if (found !== null) return resolve(found)
      if (child.process.exitCode !== null || child.process.signalCode !== null) {
        return reject(new Error(`the child ended before printing ${pattern}:\n${tail(child.output)}`))
      }
      if (Date.now() - started > seconds * 1000) {
        return reject(new Error(`the child did not print ${pattern} within ${seconds} s:\n${tail(child.output)}`))
      }
      setTimeout(check, 20)
    }
    check()
  })

/** Kills the child with SIGKILL and waits until it is gone. */
export const kill = async (child: Child): Promise<void> => {
  child.process.kill("SIGKILL")
  const ended = await child.exited
  if (ended !== "SIGKILL") throw new Error(`the child ended with ${ended}, not by SIGKILL:\n${tail(child.output)}`)
}

/** Waits for the child to end by itself (within `seconds`, else kills it) and returns its report. */
export const finish = async (child: Child, seconds = 120): Promise<Report> => {
  const timer = setTimeout(() => child.process.kill("SIGKILL"), seconds * 1000)
  const ended = await child.exited
  clearTimeout(timer)
  if (ended !== 0) throw new Error(`the child ended with ${ended}:\n${tail(child.output)}`)
  const line = /^REPORT (.*)$/m.exec(child.output)
  if (line === null) throw new Error(`the child printed no report:\n${tail(child.output)}`)
  return JSON.parse(line[1]!) as Report
}

/** What a child that finished saw: the agent's chat, the calls still running, and the store's calls. */
export interface Report {
  readonly chat: ReadonlyArray<{
    readonly tag: "ChatMessage" | "FunctionCall" | "FunctionCallOutput"
    readonly id: string
    readonly role?: string
    readonly content?: string
    readonly callId?: string
    readonly output?: string
  }>
  readonly running: ReadonlyArray<{ readonly callId: string }>
  /** The calls' statuses as stored, by base. */
  readonly stored: ReadonlyArray<{ readonly base: string; readonly status: string }>
}

/** The lines of the marks file (what ran, in order, across the processes). */
export const marks = (path: string): ReadonlyArray<string> =>
  existsSync(path) ? readFileSync(path, "utf8").split("\n").filter((line) => line !== "") : []

/** How many chat items of `tag` have call id `callId`. */
export const count = (report: Report, tag: "FunctionCall" | "FunctionCallOutput", callId: string): number =>
  report.chat.filter((item) => item.tag === tag && item.callId === callId).length

/** The call ids named by the reply requests in the marks, each as often as it was named. */
export const repliedCallIds = (lines: ReadonlyArray<string>): ReadonlyArray<string> =>
  lines.filter((line) => line.startsWith("reply ")).flatMap((line) => line.slice("reply ".length).split(", "))

const tail = (output: string): string => output.split("\n").slice(-40).join("\n")

// --- the crash tests, on a store ---------------------------------------------------------------------

/** Where the child keeps its store: the embedded one in a fresh folder, or the test's PostgreSQL. */
export type Store = { readonly _tag: "pglite" } | { readonly _tag: "postgres"; readonly url: string }

let port = 50_200 + (process.pid % 200) * 10

export const crashAndResume = async (crashAt: string, extra: Record<string, string> = {}, store: Store = { _tag: "pglite" }) => {
  const dir = store._tag === "pglite" ? dirname(await freshDataDir()) : mkdtempSync(join(testTmp(), "eat-crash-"))
  const env = {
    MARKS: join(dir, "marks"),
    SESSION: `crash_${Date.now().toString(36)}`,
    ...(store._tag === "pglite"
      ? { STORE: "pglite", DATA_DIR: dir }
      : { STORE: "postgres", PG_URL: store.url, RUNNER_PORT: String(port++) })
  }
  const first = start({ ...env, ...extra, MODE: "start", CRASH_AT: crashAt })
  await waitFor(first, new RegExp(`^CRASH ${crashAt}$`, "m"), 120)
  await kill(first)
  // the killed process left its lock file: the next one takes it over
  const second = start({ ...env, MODE: "resume" })
  const report = await finish(second)
  return { report, marks: marks(env.MARKS) }
}

/** The model's call id of the booking (the one call without a synthetic suffix). */
export const bookingCallId = (report: Report): string => {
  const calls = report.chat.filter((item) => item.tag === "FunctionCall" && !/_(update_\d+|final)$/.test(item.callId!))
  assert.strictEqual(calls.length, 1, "one booking call in the chat")
  return calls[0]!.callId!
}

/** Everything of the booking is in the chat once and was told once; the charge happened once. */
export const assertToldOnce = (report: Report, lines: ReadonlyArray<string>, options: { readonly restored: boolean }) => {
  const callId = bookingCallId(report)
  assert.strictEqual(report.chat.filter((item) => item.content === "Book me a flight to Tokyo").length, 1)
  for (const id of [callId, `${callId}_update_1`, `${callId}_final`]) {
    assert.strictEqual(count(report, "FunctionCall", id), 1, `one call ${id}`)
    assert.strictEqual(count(report, "FunctionCallOutput", id), 1, `one output ${id}`)
  }
  assert.include(report.chat.find((item) => item.callId === `${callId}_final` && item.tag === "FunctionCallOutput")!.output, "FL-847293")
  // each result told in exactly one stored reply, across both processes
  const expected = [...(options.restored ? [callId] : []), `${callId}_update_1`, `${callId}_final`].sort()
  const told = report.chat
    .filter((item) => item.tag === "ChatMessage" && item.role === "assistant" && item.content!.startsWith("Update ("))
    .flatMap((item) => /\((.*)\)/.exec(item.content!)![1]!.split(", "))
  assert.deepStrictEqual(told.sort(), expected)
  // and asked about: once, or twice when the process was killed while the model answered (its
  // answer was never stored: the reply and its record are stored in one commit)
  const asked = repliedCallIds(lines)
  assert.deepStrictEqual([...new Set(asked)].sort(), expected)
  for (const id of expected) assert.isAtMost(asked.filter((named) => named === id).length, 2, id)
  assert.deepStrictEqual(report.running, [])
  // the card was charged once (the provider deduplicates by the step's key), the step done once
  assert.strictEqual(new Set(lines.filter((line) => line.startsWith("charge ")).map((line) => line.slice(7))).size, 1)
  assert.strictEqual(lines.filter((line) => line === "activity-done charge_card").length, 1)
}

/** The crash tests on a store (the PostgreSQL ones run them too). */
export const crashTests = (store: Store) => {
  it("killed after the first update was recorded, before the agent got it: the call and its output are restored, the booking goes on, everything is told once", async () => {
    const { marks, report } = await crashAndResume("after-first-update", {}, store)
    assertToldOnce(report, marks, { restored: true })
    // the tool's waiting ran again in the new process; its first update was not said again
    assert.strictEqual(marks.filter((line) => line.startsWith("poll ")).length, 1)
    assert.strictEqual(report.chat.filter((item) => item.output?.includes("Searching flights") === true).length, 1)
  }, 240_000)

  it("killed during the charge_card activity (the card charged, the step not recorded): the step runs again, the card is charged once, everything is told once", async () => {
    const { marks, report } = await crashAndResume("during-activity", {}, store)
    assertToldOnce(report, marks, { restored: false })
    assert.strictEqual(marks.filter((line) => line === "activity-start charge_card").length, 2)
    assert.strictEqual(marks.filter((line) => line.startsWith("charge ")).length, 2)
  }, 240_000)

  it("killed after the final result was recorded, before it reached the agent's chat: it reaches the chat once and is told once", async () => {
    const { marks, report } = await crashAndResume("final-stored", {}, store)
    assertToldOnce(report, marks, { restored: false })
    assert.strictEqual(marks.filter((line) => line.startsWith("reply ") && line.includes("_final")).length, 1)
  }, 240_000)

  it("killed after the final result reached the agent's chat, before the reply was asked for: one reply is asked for", async () => {
    const { marks, report } = await crashAndResume("final-inserted", {}, store)
    assertToldOnce(report, marks, { restored: false })
    assert.strictEqual(marks.filter((line) => line.startsWith("reply ") && line.includes("_final")).length, 1)
  }, 240_000)

  it("killed while a replacing booking waits for the one it replaces to stop: after the restart the first stays stopped, the second runs, and all of it is told once", async () => {
    const { marks, report } = await crashAndResume("replace-waiting", { REPLACE: "1", POLL_MS: "3000" }, store)
    const bookings = report.chat.filter((item) => item.tag === "FunctionCall" && !/_(update_\d+|final)$/.test(item.callId!))
    assert.strictEqual(bookings.length, 2, "two booking calls in the chat")
    const [first, second] = bookings.map((item) => item.callId!)
    // the replaced booking: its first update only
    assert.strictEqual(count(report, "FunctionCallOutput", first!), 1)
    assert.strictEqual(count(report, "FunctionCall", `${first}_update_1`), 0)
    assert.strictEqual(count(report, "FunctionCall", `${first}_final`), 0)
    // the replacing one ran after the restart: its output, its update and its result, once each
    for (const id of [second!, `${second}_update_1`, `${second}_final`]) {
      assert.strictEqual(count(report, "FunctionCall", id), 1, `one call ${id}`)
      assert.strictEqual(count(report, "FunctionCallOutput", id), 1, `one output ${id}`)
    }
    assert.include(report.chat.find((item) => item.callId === `${second}_final` && item.tag === "FunctionCallOutput")!.output, "FL-847293")
    assert.include(repliedCallIds(marks), `${second}_final`)
    assert.deepStrictEqual(report.running, [])
    assert.strictEqual(new Set(marks.filter((line) => line.startsWith("charge ")).map((line) => line.slice(7))).size, 1, "one booking charged")
  }, 240_000)

  it("a call cancelled before the crash stays cancelled: its steps never run and nothing more of it reaches the chat", async () => {
    const { marks, report } = await crashAndResume("after-cancel", { CANCEL: "1", POLL_MS: "10000" }, store)
    const callId = bookingCallId(report)
    assert.strictEqual(count(report, "FunctionCallOutput", callId), 1)
    assert.strictEqual(count(report, "FunctionCall", `${callId}_update_1`), 0)
    assert.strictEqual(count(report, "FunctionCall", `${callId}_final`), 0)
    assert.deepStrictEqual(report.running, [])
    assert.isFalse(marks.some((line) => line.startsWith("activity-start") || line.startsWith("charge ")))
    assert.strictEqual(marks.filter((line) => line.startsWith("poll ")).length, 1)
    assert.deepStrictEqual(repliedCallIds(marks), [])
    assert.isFalse(report.chat.some((item) => item.content?.startsWith("Update (") === true))
  }, 240_000)
}

