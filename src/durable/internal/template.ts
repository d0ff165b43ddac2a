/**
 * New PGlite data folders from a template, instead of running PGlite's initdb each time.
 *
 * Making a PGlite database takes seconds (initdb: a second PostgreSQL in WebAssembly); copying an
 * initialized one takes a fraction of a second. So the first time on a machine, a database with
 * the store's tables is made once, closed, and kept in the temp folder
 * (`<tmp>/effect-async-toolset/pglite-<PGlite version>-<schema>`); a new data folder is a copy of it.
 *
 * - Made aside and renamed into place, so a process never sees half a template; two processes
 *   making one at once each make their own, and the second rename loses (its copy is dropped).
 * - A template lists its files and their sizes (`MANIFEST.json`, written before the rename); one
 *   whose files are not all there (a temp-folder cleaner removed old files) is made again.
 * - A copy goes to a temporary name beside the data folder, then is renamed: a process killed
 *   while copying leaves no half database behind, and what it copied is removed at the next open.
 * - A template is never opened, only copied. Its tables are those of the version that made it:
 *   opening the store runs the migrations anyway (as on any folder made by an older version), so a
 *   template of older tables is brought up to date like one; `schema` in the name only keeps
 *   versions apart.
 * - Anything failing on the way (no PGlite version to name it by, a read-only temp folder, a
 *   template removed while being copied) falls back to PGlite making the database itself.
 */
import { randomUUID } from "node:crypto"
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, statSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { basename, dirname, join, relative } from "node:path"
import { Effect } from "effect"
import type { SqlClient } from "effect/sql/SqlClient"
import * as Reactivity from "effect/reactivity/Reactivity"
import * as PgliteClient from "../PgliteClient.ts"

/** Raise when the template's tables change in a way worth a new template (old ones are still migrated). */
const schema = "s1"

const manifestName = "MANIFEST.json"

/** The installed PGlite's version (`undefined` if it cannot be told). */
export const pgliteVersion = (): string | undefined => {
  try {
    const require = createRequire(import.meta.url)
    const main = require.resolve("@electric-sql/pglite")
    // <package>/dist/index.js (or index.cjs): the package's package.json is one folder up
    for (let dir = dirname(main); dir !== dirname(dir); dir = dirname(dir)) {
      const path = join(dir, "package.json")
      if (!existsSync(path)) continue
      const json = JSON.parse(readFileSync(path, "utf8")) as { name?: string; version?: string }
      if (json.name === "@electric-sql/pglite") return json.version
    }
  } catch {
    // not installed where we can see it
  }
  return undefined
}

/** Where templates are kept: `<tmp>/effect-async-toolset`. */
export const defaultRoot = (): string => join(tmpdir(), "effect-async-toolset")

/** Where this machine's template for a PGlite version is kept. */
export const templatePath = (version: string, root = defaultRoot()): string => join(root, `pglite-${version}-${schema}`)

/** The files under `dir` with their sizes, as paths relative to it. */
const listFiles = (dir: string): Array<readonly [string, number]> => {
  const out: Array<readonly [string, number]> = []
  const walk = (at: string) => {
    for (const entry of readdirSync(at, { withFileTypes: true })) {
      const path = join(at, entry.name)
      if (entry.isDirectory()) walk(path)
      else if (entry.name !== manifestName) out.push([relative(dir, path), statSync(path).size])
    }
  }
  walk(dir)
  return out
}

/** Whether the template at `dir` is whole: every file its manifest lists, at its size. */
export const isWhole = (dir: string): boolean => {
  try {
    const files = JSON.parse(readFileSync(join(dir, manifestName), "utf8")) as Array<readonly [string, number]>
    return files.length > 0 && files.every(([path, size]) => statSync(join(dir, path)).size === size)
  } catch {
    return false
  }
}

/** Moves `path` aside (one process wins) and removes it. */
const remove = (path: string) => {
  const aside = `${path}.removing-${randomUUID()}`
  try {
    renameSync(path, aside)
  } catch {
    return
  }
  rmSync(aside, { recursive: true, force: true })
}

/**
 * The template of the installed PGlite, made now if this machine has none (or a broken one):
 * an empty database on which `prepare` made the store's tables.
 */
export const ensureTemplate = <E>(
  version: string,
  prepare: (sql: SqlClient) => Effect.Effect<void, E>,
  root = defaultRoot()
): Effect.Effect<string, unknown> =>
  Effect.suspend(() => {
    const template = templatePath(version, root)
    if (isWhole(template)) return Effect.succeed(template)
    mkdirSync(root, { recursive: true })
    const making = join(root, `.making-${randomUUID()}`)
    return Effect.gen(function*() {
      yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* PgliteClient.make({ dataDir: making })
        yield* prepare(client)
      })).pipe(Effect.provide(Reactivity.layer))
      writeFileSync(join(making, manifestName), JSON.stringify(listFiles(making)))
      if (isWhole(template)) return template // another process made one meanwhile
      if (existsSync(template)) remove(template) // a broken one
      try {
        renameSync(making, template)
      } catch (error) {
        // another process put its template there first
        if (!isWhole(template)) throw error
      }
      return template
    }).pipe(Effect.ensuring(Effect.sync(() => rmSync(making, { recursive: true, force: true }))))
  })

/** Whether `dir` is where a new database goes: missing, or an empty folder. */
export const isNew = (dir: string): boolean => {
  try {
    return readdirSync(dir).length === 0
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "ENOENT"
  }
}

/** Makes `dir` a copy of the template (`dir` is new: see `isNew`). */
export const copyTemplate = (template: string, dir: string): void => {
  const copying = `${dir}.copying-${randomUUID()}`
  try {
    cpSync(template, copying, { recursive: true, filter: (source) => !source.endsWith(manifestName) })
    if (existsSync(dir)) rmdirSync(dir) // empty (isNew)
    renameSync(copying, dir)
  } finally {
    rmSync(copying, { recursive: true, force: true })
  }
}

/**
 * Removes the copies a process killed while copying left beside `dir` (`<dir>.copying-<uuid>`).
 * Only while holding the data folder's lock: no other process copies into `dir` then.
 */
const removeHalfCopies = (dir: string): void => {
  const prefix = `${basename(dir)}.copying-`
  let names: Array<string>
  try {
    names = readdirSync(dirname(dir))
  } catch {
    return
  }
  for (const name of names) {
    if (name.startsWith(prefix)) rmSync(join(dirname(dir), name), { recursive: true, force: true })
  }
}

/**
 * If the PGlite folder `dir` is new, makes it from the template (made first if missing); says
 * whether it did. On any failure `dir` is left as it was, and PGlite makes the database itself.
 * The caller holds the data folder's lock (half copies a killed process left beside `dir` are
 * removed first).
 */
export const fromTemplate = <E>(
  dir: string,
  prepare: (sql: SqlClient) => Effect.Effect<void, E>,
  root = defaultRoot()
): Effect.Effect<boolean> =>
  Effect.suspend(() => {
    removeHalfCopies(dir)
    if (!isNew(dir)) return Effect.succeed(false)
    const version = pgliteVersion()
    if (version === undefined) return Effect.succeed(false)
    return ensureTemplate(version, prepare, root).pipe(
      Effect.flatMap((template) =>
        Effect.sync(() => {
          mkdirSync(dirname(dir), { recursive: true })
          copyTemplate(template, dir)
          return true
        })
      ),
      Effect.catchCause((cause) =>
        Effect.as(Effect.logDebug(`No PGlite template for ${dir}; PGlite makes the database`, cause), false)
      )
    )
  })
