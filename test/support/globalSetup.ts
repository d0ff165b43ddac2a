/**
 * Once per `npm test`, before the test files: the PGlite template folder the durable tests copy is
 * made (once per machine: it takes PGlite's initdb, 5 to 15 seconds), the run's temp folder is made
 * (test/support/tmp.ts: the tests' temp folders go in it; removed with them when the run ends), and
 * a line says whether the PostgreSQL tests run (they need TEST_PG_URL).
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { templateDir } from "./pglite.ts"

export const setup = async (): Promise<() => void> => {
  await templateDir()
  // the workers (started after this) and the processes they start inherit it
  const root = mkdtempSync(join(tmpdir(), "eat-run-"))
  process.env.EAT_TEST_TMP = root
  const url = process.env.TEST_PG_URL
  if (url === undefined || url === "") {
    console.log(
      "PostgreSQL tests not run (TEST_PG_URL is not set). To run them: bash .ci/run, or " +
        `eval "$(scripts/pg-throwaway.sh start)" && TEST_PG_URL=$PG_URL npm test`
    )
  }
  return () => rmSync(root, { recursive: true, force: true })
}
