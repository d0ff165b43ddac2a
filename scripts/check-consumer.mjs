// The published types, as a strict consumer sees them: packs the built package (`npm pack`; run
// `npm run build` first), puts it into consumer projects in the temp folder (outside this
// repository, so nothing resolves from its node_modules), and type-checks files using every entry
// point with `skipLibCheck: false`, strict, exactOptionalPropertyTypes and NodeNext resolution.
//
// Each consumer gets only the packages it names (linked from this repository's install: the
// versions of its lock file). The first has `effect` alone (no optional peer, no @types/node): the
// declarations of all five entry points need nothing else. The second has every optional peer
// (PGlite, @effect/sql-pg, @effect/platform-node) and @types/node, as an app that uses the durable
// stores does.
import { execFileSync } from "node:child_process"
import { cpSync, existsSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")
if (!existsSync(join(root, "dist", "index.d.ts"))) {
  console.error("check-consumer: dist/ is missing; run `npm run build` first")
  process.exit(1)
}

const entries = {
  ".": "effect-async-toolset",
  "./testing": "effect-async-toolset/testing",
  "./openai-compat": "effect-async-toolset/openai-compat",
  "./durable": "effect-async-toolset/durable",
  "./durable/postgres": "effect-async-toolset/durable/postgres",
  "./mcp": "effect-async-toolset/mcp"
}

// A few values of each entry point, typed, so that a declaration that resolved to `any` or failed
// to resolve is noticed (besides every .d.ts being checked).
const uses = {
  ".": `import { AiAgent, AsyncToolset, FunctionTool } from "effect-async-toolset"
export const agent: typeof AiAgent.layer = AiAgent.layer
export const toolset: typeof AsyncToolset.make = AsyncToolset.make
export const tool: typeof FunctionTool.make = FunctionTool.make
`,
  "./testing": `import { ScriptedModel, TestSession } from "effect-async-toolset/testing"
export const model: typeof ScriptedModel.layer = ScriptedModel.layer
export const session: typeof TestSession.layer = TestSession.layer
`,
  "./openai-compat": `import { OpenAiCompat } from "effect-async-toolset/openai-compat"
export const openAi: typeof OpenAiCompat.layer = OpenAiCompat.layer
`,
  "./durable": `import { DurableChat, DurableStore, DurableToolset, PgliteClient } from "effect-async-toolset/durable"
export const store: typeof DurableStore.layerEmbedded = DurableStore.layerEmbedded
export const chat: typeof DurableChat.layer = DurableChat.layer
export const define: typeof DurableToolset.define = DurableToolset.define
export const pglite: typeof PgliteClient.layer = PgliteClient.layer
`,
  "./durable/postgres": `import { DurablePostgres } from "effect-async-toolset/durable/postgres"
export const postgres: typeof DurablePostgres.layer = DurablePostgres.layer
`,
  "./mcp": `import { McpConnection, McpRemoteTools, McpToolsetServer } from "effect-async-toolset/mcp"
export const server: typeof McpToolsetServer.layer = McpToolsetServer.layer
export const http: typeof McpConnection.http = McpConnection.http
export const remote: typeof McpRemoteTools.make = McpRemoteTools.make
`
}

const consumers = [
  {
    name: "effect alone",
    packages: ["effect"],
    types: []
  },
  {
    name: "effect, every optional peer and @types/node",
    packages: ["effect", "@types/node", "@electric-sql/pglite", "@effect/sql-pg", "@effect/platform-node"],
    types: ["node"]
  }
]

const tsconfig = {
  compilerOptions: {
    target: "ES2022",
    // effect 4.1.5's own declarations name DOM types (`globalThis.Transferable` in effect/rpc,
    // which effect/ai's reach): without the DOM lib a bare `import { Tool } from "effect/ai"` fails
    // to type-check with skipLibCheck false. The control below says whether that still holds.
    lib: ["ES2023", "DOM"],
    module: "NodeNext",
    moduleResolution: "NodeNext",
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    skipLibCheck: false,
    noEmit: true
  },
  include: ["*.ts"]
}

const run = (cmd, args, options = {}) => execFileSync(cmd, args, { encoding: "utf8", ...options })
const work = mkdtempSync(join(tmpdir(), "eat-consumer-"))
let failed = 0
try {
  const [packed] = JSON.parse(run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", work], { cwd: root }))
  const pkg = join(work, "package")
  run("tar", ["xzf", join(work, packed.filename), "-C", work])
  console.log(`packed ${packed.filename}: ${packed.entryCount} files, ${(packed.size / 1024).toFixed(0)} KB`)
  const tsc = createRequire(join(root, "package.json")).resolve("typescript/bin/tsc")

  // The control: bare effect/ai, without the DOM lib. Not a failure either way; it tells when the
  // DOM lib above is no longer needed.
  {
    const dir = join(work, "control")
    mkdirSync(join(dir, "node_modules", "@types"), { recursive: true })
    for (const name of ["effect", "@types/node"]) symlinkSync(realpathSync(join(root, "node_modules", name)), join(dir, "node_modules", name), "dir")
    writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "control", private: true, type: "module" }))
    const noDom = { ...tsconfig, compilerOptions: { ...tsconfig.compilerOptions, lib: ["ES2023"], types: ["node"] } }
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify(noDom, null, 2))
    writeFileSync(join(dir, "control.ts"), `import { Tool } from "effect/ai"\nexport const make: typeof Tool.make = Tool.make\n`)
    try {
      run(process.execPath, [tsc, "-p", dir], { stdio: "pipe" })
      console.log("note  bare effect/ai now type-checks without the DOM lib: the consumers' \"DOM\" can go")
    } catch {
      console.log("note  bare effect/ai still needs the DOM lib to type-check (effect's globalThis.Transferable): consumers keep \"DOM\"")
    }
  }

  consumers.forEach((consumer, i) => {
    const dir = join(work, `consumer-${i + 1}`)
    mkdirSync(join(dir, "node_modules", "@types"), { recursive: true })
    cpSync(pkg, join(dir, "node_modules", "effect-async-toolset"), { recursive: true })
    for (const name of consumer.packages) {
      const target = join(dir, "node_modules", name)
      mkdirSync(dirname(target), { recursive: true })
      symlinkSync(realpathSync(join(root, "node_modules", name)), target, "dir")
    }
    writeFileSync(join(dir, "package.json"), JSON.stringify({ name: `consumer-${i + 1}`, private: true, type: "module" }))
    const config = { ...tsconfig, compilerOptions: { ...tsconfig.compilerOptions, types: consumer.types } }
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify(config, null, 2))
    Object.keys(entries).forEach((entry, j) => writeFileSync(join(dir, `entry-${j + 1}.ts`), uses[entry]))
    const label = `${consumer.name}: ${Object.values(entries).join(", ")}`
    try {
      run(process.execPath, [tsc, "-p", dir], { stdio: "pipe" })
      console.log(`ok    ${label}`)
    } catch (error) {
      failed++
      console.log(`FAIL  ${label}`)
      console.log(String(error.stdout ?? "") + String(error.stderr ?? ""))
    }
  })
} finally {
  rmSync(work, { recursive: true, force: true })
}
if (failed > 0) {
  console.error(`check-consumer: ${failed} consumer(s) failed to type-check the published declarations`)
  process.exit(1)
}
