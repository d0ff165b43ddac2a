// Extracts every ```ts block of README.md and of docs/*.md into readme-snippets/, so CI can
// type-check them and run them exactly as written: `*.test.ts` blocks (first line
// `// file: name.test.ts`) run under vitest, the others with tsx. A block may import the package
// only by its public entry points, as a user does (never a file under src/). The pages' relative
// links are checked too: the file exists, and a `#fragment` into a page names one of its headings.
import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { basename, dirname, join, normalize } from "node:path"

const dir = "readme-snippets"
rmSync(dir, { recursive: true, force: true })
mkdirSync(dir)

const pages = ["README.md", ...readdirSync("docs").filter((f) => f.endsWith(".md")).sort().map((f) => `docs/${f}`)]
const entryPoints = new Set([
  "effect-async-toolset",
  "effect-async-toolset/testing",
  "effect-async-toolset/openai-compat",
  "effect-async-toolset/durable",
  "effect-async-toolset/durable/postgres",
  "effect-async-toolset/mcp"
])

const programs = []
const tests = []
const names = new Map()
const problems = []
for (const page of pages) {
  const text = readFileSync(page, "utf8")
  const blocks = [...text.matchAll(/^```ts\n([\s\S]*?)^```/gm)].map((m) => ({ code: m[1], line: text.slice(0, m.index).split("\n").length + 1 }))
  const stem = basename(page, ".md")
  blocks.forEach(({ code, line }, i) => {
    const named = /^\/\/ file: ([\w.-]+)\n/.exec(code)
    const name = named ? named[1] : `${stem}-${i + 1}.ts`
    const where = `${page}:${line}`
    if (names.has(name)) problems.push(`${where}: the file name ${name} is also used at ${names.get(name)}`)
    names.set(name, where)
    for (const m of code.matchAll(/\bfrom\s+"([^"]+)"|\bimport\(\s*"([^"]+)"\s*\)/g)) {
      const specifier = m[1] ?? m[2]
      if (specifier.startsWith(".") || specifier.startsWith("/") || specifier.includes("/src/")) {
        problems.push(`${where}: imports "${specifier}": documentation code imports the package by its entry points, never by a path`)
      } else if (specifier.startsWith("effect-async-toolset") && !entryPoints.has(specifier)) {
        problems.push(`${where}: imports "${specifier}", which is not an entry point (${[...entryPoints].join(", ")})`)
      }
    }
    const file = `${dir}/${name}`
    writeFileSync(file, code)
    ;(file.endsWith(".test.ts") ? tests : programs).push({ file, where })
  })
  console.log(`${page}: ${blocks.length} TypeScript blocks`)
}
// GitHub's anchors: a heading's text, lower case, without punctuation, spaces as dashes.
const anchors = (page) => {
  const text = readFileSync(page, "utf8").replace(/^```[\s\S]*?^```/gm, "")
  return new Set([...text.matchAll(/^#+ (.+)$/gm)].map((m) =>
    m[1].trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, "").replace(/\s/g, "-")
  ))
}
for (const page of pages) {
  const text = readFileSync(page, "utf8").replace(/^```[\s\S]*?^```/gm, "")
  for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
    const link = m[1]
    if (/^[a-z]+:/.test(link)) continue
    const [path, fragment] = link.split("#")
    const target = path === "" ? page : normalize(join(dirname(page), path))
    if (!existsSync(target)) problems.push(`${page}: the link ${link} names ${target}, which does not exist`)
    else if (fragment !== undefined && target.endsWith(".md") && !anchors(target).has(fragment)) {
      problems.push(`${page}: the link ${link}: ${target} has no heading whose anchor is #${fragment}`)
    }
  }
}
if (problems.length > 0) {
  for (const problem of problems) console.error(problem)
  process.exit(1)
}
console.log(`${programs.length + tests.length} blocks in all (${programs.length} programs, ${tests.length} tests)`)

const run = (cmd, args) => execFileSync(cmd, args, { stdio: "inherit" })
run("npx", ["tsc", "-p", "tsconfig.readme.json"])
for (const { file, where } of programs) {
  console.log(`running ${file} (${where})`)
  run("npx", ["tsx", "--conditions=effect-async-toolset-source", file])
}
if (tests.length > 0) run("npx", ["vitest", "run", ...tests.map((t) => t.file)])
