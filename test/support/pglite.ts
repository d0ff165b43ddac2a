/**
 * PGlite data folders for tests. Making a new one runs PGlite's initdb (5 to 15 seconds, most of
 * a gigabyte of memory); opening a copy of one takes 1 to 2 seconds. So a template folder is made
 * once per machine (in the temp folder, named after PGlite's version) and each test copies it.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { testTmp } from "./tmp.ts"

const require = createRequire(import.meta.url)
const version = (JSON.parse(readFileSync(join(dirname(require.resolve("@electric-sql/pglite")), "..", "package.json"), "utf8")) as {
  readonly version: string
}).version

/** The template folder: an initialized, empty PGlite data folder. Made at the first call. */
export const templateDir = async (): Promise<string> => {
  const template = join(tmpdir(), `effect-async-toolset-pglite-${version}`) // once per machine, not per run
  if (existsSync(join(template, "PG_VERSION"))) return template
  // Made aside and renamed into place, so concurrent test files never see half a folder.
  const making = mkdtempSync(join(testTmp(), "effect-async-toolset-pglite-making-"))
  const { PGlite } = await import("@electric-sql/pglite")
  const pglite = new PGlite(join(making, "data"))
  await pglite.waitReady
  await pglite.close()
  try {
    renameSync(join(making, "data"), template)
  } catch (error) {
    // another test file made it meanwhile
    if (!existsSync(join(template, "PG_VERSION"))) throw error
  }
  rmSync(making, { recursive: true, force: true })
  return template
}

/** A fresh copy of the template, in a new temp folder; returns the data folder's path. */
export const freshDataDir = async (parent?: string): Promise<string> => {
  const template = await templateDir()
  const base = parent ?? mkdtempSync(join(testTmp(), "effect-async-toolset-test-"))
  mkdirSync(base, { recursive: true })
  const dir = join(base, "pglite")
  cpSync(template, dir, { recursive: true })
  return dir
}
