import { fileURLToPath } from "node:url"
import { defineConfig } from "vitest/config"

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

export default defineConfig({
  resolve: {
    // tests import the package by name, as users do; it resolves to src/
    alias: [
      { find: /^effect-async-toolset\/testing$/, replacement: fileURLToPath(new URL("./src/testing/index.ts", import.meta.url)) },
      { find: /^effect-async-toolset\/durable\/postgres$/, replacement: fileURLToPath(new URL("./src/durable/postgres/index.ts", import.meta.url)) },
      { find: /^effect-async-toolset\/durable$/, replacement: fileURLToPath(new URL("./src/durable/index.ts", import.meta.url)) },
      { find: /^effect-async-toolset\/openai-compat$/, replacement: fileURLToPath(new URL("./src/openai-compat/index.ts", import.meta.url)) },
      { find: /^effect-async-toolset$/, replacement: fileURLToPath(new URL("./src/index.ts", import.meta.url)) }
    ]
  },
  test: {
    include: ["test/**/*.test.ts", "readme-snippets/**/*.test.ts"],
    // The durable toolset's tests run a store (PGlite) in the test's process: on a loaded 2-core
    // machine one can take several seconds. A hang still fails, after this.
    testTimeout: 30_000,
    globalSetup: ["test/support/globalSetup.ts"]
  }
})
