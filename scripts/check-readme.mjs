// Extracts every ```ts block of README.md into readme-snippets/, so CI can type-check them and
// run them exactly as written: `*.test.ts` blocks (first line `// file: name.test.ts`) run under
// vitest, the others with tsx.
import { execFileSync } from "node:child_process"
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"

const dir = "readme-snippets"
rmSync(dir, { recursive: true, force: true })
mkdirSync(dir)
const readme = readFileSync("README.md", "utf8")
const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1])
const programs = []
const tests = []
blocks.forEach((code, i) => {
  const named = /^\/\/ file: ([\w.-]+)\n/.exec(code)
  const file = `${dir}/${named ? named[1] : `snippet-${i + 1}.ts`}`
  writeFileSync(file, code)
  ;(file.endsWith(".test.ts") ? tests : programs).push(file)
})
console.log(`README: ${blocks.length} TypeScript blocks (${programs.length} programs, ${tests.length} tests)`)
const run = (cmd, args) => execFileSync(cmd, args, { stdio: "inherit" })
run("npx", ["tsc", "-p", "tsconfig.readme.json"])
for (const file of programs) {
  console.log(`running ${file}`)
  run("npx", ["tsx", "--conditions=effect-async-toolset-source", file])
}
if (tests.length > 0) run("npx", ["vitest", "run", ...tests])
