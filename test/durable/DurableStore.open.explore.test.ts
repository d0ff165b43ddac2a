/**
 * Issue 17: the embedded store opens in about a second, new or not. A new data folder is a copy
 * of a template database made once per machine (PGlite's initdb takes seconds), kept whole: made
 * aside and renamed into place, so processes racing to make it never see half of one, and made
 * again when files of it are gone.
 */
import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { Effect } from "effect"
import * as Reactivity from "effect/reactivity/Reactivity"
import type { SqlClient } from "effect/sql/SqlClient"
import * as Template from "../../src/durable/internal/template.ts"
import { testTmp } from "../support/tmp.ts"

const root = join(import.meta.dirname, "..", "..")

/** Marks the template's database, so a copy of it can be told from a database made by initdb. */
const prepare = (sql: SqlClient) => Effect.orDie(sql`CREATE TABLE made_from_template (x INT)`)

const hasMark = (dataDir: string) =>
  Effect.gen(function*() {
    const { PgliteClient } = yield* Effect.promise(() => import("effect-async-toolset/durable"))
    return yield* Effect.scoped(Effect.gen(function*() {
      const client = yield* PgliteClient.make({ dataDir })
      const rows = yield* client`SELECT to_regclass('made_from_template') IS NOT NULL AS present`
      return rows[0]!["present"] === true
    })).pipe(Effect.provide(Reactivity.layer), Effect.orDie)
  })

/** Opens the embedded store at `dataDir` in a child process whose temp folder is `tmp`; ms to open. */
const openInChild = (dataDir: string, tmp: string) =>
  Effect.promise(() =>
    new Promise<number>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ["--import", "tsx", "--conditions=effect-async-toolset-source", "test/durable/exitChild.ts"],
        { cwd: root, env: { ...process.env, STORE: "pglite", DATA_DIR: dataDir, TMPDIR: tmp }, stdio: ["ignore", "pipe", "pipe"] }
      )
      let output = ""
      child.stdout.on("data", (data: Buffer) => output += data.toString())
      child.stderr.on("data", (data: Buffer) => output += data.toString())
      child.on("exit", (code) => {
        const opened = /^OPENED (\d+)$/m.exec(output)
        if (code === 0 && opened !== null) resolve(Number(opened[1]))
        else reject(new Error(`the child ended with ${code}:\n${output}`))
      })
    })
  )

describe("DurableStore: new data folders from a template", () => {
  it.live("a new folder is a copy of the template (made once); a folder with data is left alone; a template missing a file is made again", () =>
    Effect.gen(function*() {
      const templates = mkdtempSync(join(testTmp(), "eat-templates-"))
      const base = mkdtempSync(join(testTmp(), "eat-open-"))
      const version = Template.pgliteVersion()!
      assert.isString(version)

      // the first new folder: the template is made, then copied
      assert.isTrue(yield* Template.fromTemplate(join(base, "a"), prepare, templates))
      const template = Template.templatePath(version, templates)
      assert.isTrue(Template.isWhole(template))
      assert.isTrue(existsSync(join(base, "a", "PG_VERSION")))
      assert.isFalse(existsSync(join(base, "a", "MANIFEST.json")))
      assert.isTrue(yield* hasMark(join(base, "a")))
      // nothing half-made is left beside them
      assert.deepStrictEqual(readdirSync(templates), [`pglite-${version}-s1`])
      assert.deepStrictEqual(readdirSync(base), ["a"])

      // an empty folder is new too
      mkdirSync(join(base, "b"))
      assert.isTrue(yield* Template.fromTemplate(join(base, "b"), prepare, templates))
      assert.isTrue(yield* hasMark(join(base, "b")))

      // a folder with anything in it is not touched
      mkdirSync(join(base, "c"))
      writeFileSync(join(base, "c", "mine"), "x")
      assert.isFalse(yield* Template.fromTemplate(join(base, "c"), prepare, templates))
      assert.deepStrictEqual(readdirSync(join(base, "c")), ["mine"])

      // a temp-folder cleaner took a file of the template: it is made again, whole
      rmSync(join(template, "PG_VERSION"))
      assert.isFalse(Template.isWhole(template))
      assert.isTrue(yield* Template.fromTemplate(join(base, "d"), prepare, templates))
      assert.isTrue(Template.isWhole(template))
      assert.isTrue(yield* hasMark(join(base, "d")))
      rmSync(templates, { recursive: true, force: true })
      rmSync(base, { recursive: true, force: true })
    }), 180_000)

  it.live("two processes making the machine's template at once both open; a new folder then is a copy of it (no initdb of its own)", () =>
    Effect.gen(function*() {
      // the children's temp folder: a machine without a template
      const tmp = mkdtempSync(join(testTmp(), "eat-tmp-"))
      const base = mkdtempSync(join(testTmp(), "eat-open-"))
      const racing = yield* Effect.all([openInChild(join(base, "a"), tmp), openInChild(join(base, "b"), tmp)], {
        concurrency: "unbounded"
      })
      const templates = join(tmp, "effect-async-toolset")
      assert.deepStrictEqual(readdirSync(templates), [`pglite-${Template.pgliteVersion()}-s1`])
      assert.isTrue(Template.isWhole(join(templates, readdirSync(templates)[0]!)))
      const fresh = yield* openInChild(join(base, "c"), tmp)
      const existing = yield* openInChild(join(base, "c"), tmp)
      console.log(`embedded store open (ms): making the template ${racing.join(", ")}; new folder ${fresh}; existing ${existing}`)
      // a copy, not a database of its own: PostgreSQL's system identifier (pg_control's first 8 bytes,
      // set once by initdb) is the template's
      const systemId = (dir: string) => readFileSync(join(dir, "global", "pg_control")).subarray(0, 8).toString("hex")
      const template = systemId(join(templates, readdirSync(templates)[0]!))
      for (const dir of ["a", "b", "c"]) assert.strictEqual(systemId(join(base, dir, "pglite")), template, `${dir} is a copy of the template`)
      rmSync(tmp, { recursive: true, force: true })
      rmSync(base, { recursive: true, force: true })
    }), 180_000)
})
