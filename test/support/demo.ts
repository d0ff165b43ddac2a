/**
 * Running the demo (examples/travel-agent.ts) in a child process as `npm start` does, for the
 * demo's tests (test/scenarios/demo.test.ts, demo.explore.test.ts).
 */
import { execFile } from "node:child_process"
import { mkdtempSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { testTmp } from "./tmp.ts"

export const root = fileURLToPath(new URL("../..", import.meta.url))
/** A folder for the scripts the tests write. */
export const dir = mkdtempSync(join(testTmp(), "demo-test-"))

/** Runs `examples/travel-agent.ts` with these arguments as `npm start` does; its exit code and output. */
export const runDemo = (args: ReadonlyArray<string>, env: Readonly<Record<string, string | undefined>> = {}) =>
  new Promise<{ readonly code: number | null; readonly stdout: string; readonly stderr: string }>((resolve) => {
    execFile(
      process.execPath,
      ["--conditions=effect-async-toolset-source", "--import", "tsx", "examples/travel-agent.ts", ...args],
      { cwd: root, env: { ...process.env, NO_COLOR: "1", ...env } },
      (error, stdout, stderr) => resolve({ code: error === null ? 0 : (error.code as number | null), stdout, stderr })
    )
  })

/** Runs `examples/travel-agent.ts --script <file>` as `npm start` does; its exit code and output. */
export const runScript = (name: string, script: string, ...args: Array<string>) => {
  const file = join(dir, name)
  writeFileSync(file, script)
  return runDemo(["--script", file, ...args])
}

