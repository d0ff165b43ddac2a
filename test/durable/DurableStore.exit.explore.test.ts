/**
 * Issue 17: a process using the embedded store, or one PostgreSQL runner, ends normally (its scope
 * closes) without a cluster warning, a call running or not ("No healthy runners available" was
 * printed every `refreshAssignmentsInterval` while a running call was given time to stop); and a
 * running call is given one second to stop, not effect/cluster's 15.
 *
 * Each case is a child process (test/durable/exitChild.ts): what it prints is what a user sees.
 */
import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { dirname, join } from "node:path"
import { Effect } from "effect"
import { freshDataDir } from "../support/pglite.ts"
import { freePort, freshDatabase, testPgUrl } from "./pgDatabase.ts"

const root = join(import.meta.dirname, "..", "..")

/** Runs the child with `env` to its end; its exit code and everything it printed. */
const runChild = (env: Record<string, string>) =>
  Effect.promise(() =>
    new Promise<{ readonly code: number | null; readonly output: string }>((resolve) => {
      const child = spawn(
        process.execPath,
        ["--import", "tsx", "--conditions=effect-async-toolset-source", "test/durable/exitChild.ts"],
        { cwd: root, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] }
      )
      let output = ""
      child.stdout.on("data", (data: Buffer) => output += data.toString())
      child.stderr.on("data", (data: Buffer) => output += data.toString())
      const timer = setTimeout(() => child.kill("SIGKILL"), 90_000)
      child.on("exit", (code) => {
        clearTimeout(timer)
        resolve({ code, output })
      })
    })
  )

/** The child ended normally, printed no warning or error, and closed within `seconds`. */
const assertQuietExit = (result: { readonly code: number | null; readonly output: string }, seconds: number) => {
  assert.strictEqual(result.code, 0, result.output)
  assert.notMatch(result.output, /\b(WARN|ERROR|FATAL)\b|No healthy runners/, result.output)
  const closed = /^CLOSED (\d+)$/m.exec(result.output)
  assert.isNotNull(closed, result.output)
  assert.isBelow(Number(closed![1]), seconds * 1000, result.output)
}

describe("DurableStore: a normal exit", () => {
  it.live("embedded store: no cluster warning, with no call running and with one running (closed within seconds)", () =>
    Effect.gen(function*() {
      yield* Effect.forEach(["0", "1"], (running) =>
        Effect.gen(function*() {
          const dataDir = dirname(yield* Effect.promise(() => freshDataDir()))
          const result = yield* runChild({ STORE: "pglite", DATA_DIR: dataDir, RUNNING: running })
          if (running === "1") assert.match(result.output, /^RUNNING$/m)
          assertQuietExit(result, 5)
        }), { concurrency: "unbounded" })
    }), 180_000)

  it.live.skipIf(testPgUrl === undefined)(
    "one PostgreSQL runner: no cluster warning, with no call running and with one running (default and fastFailover settings); a running call stops within seconds",
    () =>
      Effect.gen(function*() {
        const cases = [["0", "0"], ["1", "0"], ["1", "1"]] as const
        yield* Effect.forEach(cases, ([running, fast]) =>
          Effect.gen(function*() {
            // a database of its own: no other test's messages or runners
            const result = yield* Effect.scoped(Effect.gen(function*() {
              const url = yield* freshDatabase("eat_exit")
              return yield* runChild({ STORE: "postgres", PG_URL: url, RUNNER_PORT: String(yield* freePort), RUNNING: running, FAST: fast })
            }))
            if (running === "1") assert.match(result.output, /^RUNNING$/m)
            assertQuietExit(result, 5)
          }), { concurrency: "unbounded" })
      }),
    180_000
  )
})
