/**
 * The temp folder of a test run: test/support/globalSetup.ts makes one per run (in the machine's
 * temp folder, named `eat-run-*`), and removes it, with all the tests made in it, when the run ends.
 * Tests make their temp folders in it (`mkdtempSync(join(testTmp(), "name-"))`). Outside a run
 * (a test file imported by other means) it is the machine's temp folder.
 */
import { tmpdir } from "node:os"

export const testTmp = (): string => process.env.EAT_TEST_TMP ?? tmpdir()
