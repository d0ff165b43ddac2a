/**
 * Once per `npm test`, before the test files: the PGlite template folder the durable tests copy is
 * made (once per machine: it takes PGlite's initdb, 5 to 15 seconds), and a line says whether the
 * PostgreSQL tests run (they need TEST_PG_URL).
 */
import { templateDir } from "./pglite.ts"

export const setup = async (): Promise<void> => {
  await templateDir()
  const url = process.env.TEST_PG_URL
  if (url === undefined || url === "") {
    console.log(
      "PostgreSQL tests not run (TEST_PG_URL is not set). To run them: bash .ci/run, or " +
        `eval "$(scripts/pg-throwaway.sh start)" && TEST_PG_URL=$PG_URL npm test`
    )
  }
}
