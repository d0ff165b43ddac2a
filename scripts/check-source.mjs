// Checks what a reader relies on in the source:
// - imports flow one way: the shared core (src/*.ts, src/internal/) imports none of the feature
//   folders (src/agent, src/openai-compat, src/durable, src/testing, src/mcp), the agent imports
//   neither the durable toolset nor the provider, and the MCP part only the core;
// - every rule code a comment or test name in src/ or test/ cites (A1, C4b, E9, ...) is defined in
//   docs/rules.md, and every test file it names exists;
// - no comment cites a commit hash (they mean nothing to a reader of the tree).
// Run: node scripts/check-source.mjs (CI runs it).
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { join, relative } from "node:path"

const root = new URL("..", import.meta.url).pathname
const walk = (dir) =>
  readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : /\.(ts|mts)$/.test(e.name) ? [join(dir, e.name)] : []
  )
const problems = []

// 1. imports
const features = ["agent", "openai-compat", "durable", "testing", "mcp"]
const folderOf = (file) => {
  const parts = file.split("/")
  return parts.length > 2 && features.includes(parts[1]) ? parts[1] : "core"
}
const allowed = {
  core: new Set(["core"]),
  agent: new Set(["core", "agent"]),
  "openai-compat": new Set(["core", "openai-compat"]),
  testing: new Set(["core", "testing"]),
  durable: new Set(["core", "agent", "durable"]),
  mcp: new Set(["core", "mcp"])
}
for (const file of walk("src")) {
  // src/index.ts is the package's "." entry point: it hands on the core and the agent loop
  if (file === "src/index.ts") continue
  const text = readFileSync(join(root, file), "utf8")
  for (const m of text.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
    const target = relative(root, join(root, file, "..", m[1]))
    const from = folderOf(file), to = folderOf(target)
    if (!allowed[from].has(to)) problems.push(`${file}: imports ${target} (${from} must not import ${to})`)
  }
}

// 2. rule codes
const rules = readFileSync(join(root, "docs/rules.md"), "utf8")
const defined = new Set([...rules.matchAll(/^\*\*([A-Z][0-9]+[a-z]?)\*\*/gm)].map((m) => m[1]))
const code = /\b([A-G][0-9]{1,2}[a-z]?)\b/g
const range = /\b([A-G])([0-9]{1,2})\s*[–-]\s*\1?([0-9]{1,2})\b/g
for (const file of [...walk("src"), ...walk("test")]) {
  const lines = readFileSync(join(root, file), "utf8").split("\n")
  lines.forEach((line, i) => {
    for (const m of line.matchAll(code)) {
      if (!defined.has(m[1])) problems.push(`${file}:${i + 1}: cites rule ${m[1]}, which docs/rules.md does not define`)
    }
    for (const m of line.matchAll(range)) {
      for (let n = Number(m[2]); n <= Number(m[3]); n++) {
        if (!defined.has(m[1] + n)) problems.push(`${file}:${i + 1}: cites rule ${m[1]}${n} (in ${m[0]}), which docs/rules.md does not define`)
      }
    }
  })
}

// every test file docs/rules.md names ("Tested in: ...") exists
for (const m of rules.matchAll(/test\/[A-Za-z0-9_./-]+\.(?:ts|json)/g)) {
  if (!existsSync(join(root, m[0]))) problems.push(`docs/rules.md names ${m[0]}, which does not exist`)
}

// 3. commit hashes in comments
const comment = /(\/\/.*|\/\*.*|^\s*\*.*)$/
const hash = /\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b/
for (const file of [...walk("src"), ...walk("test")]) {
  readFileSync(join(root, file), "utf8").split("\n").forEach((line, i) => {
    const c = line.match(comment)
    if (c && hash.test(c[1]) && /commit|\b[0-9a-f]{7,12}\b/.test(c[1]) && !/0x|sha-?256|digest/i.test(c[1])) {
      problems.push(`${file}:${i + 1}: a comment cites what looks like a commit hash: ${c[1].trim()}`)
    }
  })
}

if (problems.length > 0) {
  console.error(problems.join("\n"))
  process.exit(1)
}
console.log(`source checks passed: imports flow one way; ${defined.size} rule codes defined, each one cited is; no commit hashes in comments`)
