import { readdirSync, readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { configDefaults, defineConfig } from "vitest/config"

// Node 20 lacks Map.groupBy (ES2024); vitest 5's reporter calls it when printing a failing test
// and crashes with "Map.groupBy is not a function". This keeps failures readable on Node 20.
const M = Map as unknown as { groupBy?: unknown }
if (typeof M.groupBy !== "function") {
  M.groupBy = <K, T>(items: Iterable<T>, key: (item: T, index: number) => K): Map<K, Array<T>> => {
    const out = new Map<K, Array<T>>()
    let i = 0
    for (const item of items) {
      const k = key(item, i++)
      const group = out.get(k)
      if (group) group.push(item)
      else out.set(k, [item])
    }
    return out
  }
}

/**
 * Two tiers of tests.
 * - `npm test` (the quick tier): every `*.test.ts` but the explorations, each race test under a
 *   few yield budgets (test/support/schedules.ts), the behaviour tests of `forEachKind` on the
 *   in-memory toolset (test/support/toolsets.ts); the durable toolset's own tests (test/durable/).
 * - `npm run test:explore` (`vitest run --mode explore`; CI runs it after `npm test`): the long
 *   explorations, files named `*.explore.test.ts` (crash tests that kill processes, runners on
 *   PostgreSQL, child processes), and again the tests whose reach depends on the tier (they use
 *   `yieldSettings`, `yieldsFor`, `exploring` or `byTier` from test/support/schedules.ts, or
 *   `forEachKind` from test/support/toolsets.ts), now under every yield budget, with more seeds,
 *   on both toolsets (in memory and durable), leaving out what the quick tier ran (`quickRanIt` in
 *   test/support/toolsets.ts). `TEST_TIER=explore` tells them which tier runs.
 */
const tierDependent = (): Array<string> => {
  const dir = fileURLToPath(new URL("./test/", import.meta.url))
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((f) => f.endsWith(".test.ts") && !f.endsWith(".explore.test.ts"))
    .filter((f) => /\b(yieldSettings|yieldsFor|exploring|byTier|forEachKind|kinds\(\))/.test(readFileSync(dir + f, "utf8")))
    .map((f) => `test/${f}`)
}

export default defineConfig(({ mode }) => ({
  resolve: {
    // tests import the package by name, as users do; it resolves to src/
    alias: [
      { find: /^effect-async-toolset\/testing$/, replacement: fileURLToPath(new URL("./src/testing/index.ts", import.meta.url)) },
      { find: /^effect-async-toolset\/durable\/postgres$/, replacement: fileURLToPath(new URL("./src/durable/postgres/index.ts", import.meta.url)) },
      { find: /^effect-async-toolset\/durable$/, replacement: fileURLToPath(new URL("./src/durable/index.ts", import.meta.url)) },
      { find: /^effect-async-toolset\/mcp$/, replacement: fileURLToPath(new URL("./src/mcp/index.ts", import.meta.url)) },
      { find: /^effect-async-toolset\/openai-compat$/, replacement: fileURLToPath(new URL("./src/openai-compat/index.ts", import.meta.url)) },
      { find: /^effect-async-toolset$/, replacement: fileURLToPath(new URL("./src/index.ts", import.meta.url)) }
    ]
  },
  test: {
    ...(mode === "explore"
      ? { include: ["test/**/*.explore.test.ts", ...tierDependent()], env: { TEST_TIER: "explore" } }
      : { include: ["test/**/*.test.ts", "readme-snippets/**/*.test.ts"], exclude: [...configDefaults.exclude, "**/*.explore.test.ts"] }),
    // The durable toolset's tests run a store (PGlite) in the test's process: on a loaded 2-core
    // machine one can take several seconds. A hang still fails, after this.
    testTimeout: 30_000,
    // Speed, on the 2-core machine CI runs on (both tiers took 10 minutes before these):
    // - two workers for the quick tier (vitest's default is one fewer than the cores: one here),
    //   three for the explorations, which wait on child processes, PostgreSQL and real clocks much
    //   of their time (on the idle machine: 273 s with two, 220 s with three); `TEST_WORKERS` sets
    //   another count.
    // - the test files of a worker share their modules (`isolate: false`): Effect and src/ are
    //   imported once per worker, not once per file (a third of the quick tier's time went there).
    //   What test/support keeps per file is reset by test/support/perFile.ts; a test file must not
    //   change what other files see (globals, process.env, module state of src/).
    maxWorkers: Number(process.env.TEST_WORKERS ?? (mode === "explore" ? 3 : 2)),
    isolate: false,
    setupFiles: ["test/support/perFile.ts"],
    globalSetup: ["test/support/globalSetup.ts"]
  }
}))
