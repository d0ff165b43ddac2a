// Makes the benchmark's peer ready, then type-checks bench/ against it (`npm run bench` and
// `npm run check:bench` run this first).
//
// The peer, @livekit/agents, is not a dependency of the library: it lives in bench/peer/, with its
// own package.json and lock file, so the root `npm install` stays small. It is installed here, with
// `npm ci` in bench/peer, when bench/peer/node_modules lacks one of the pinned packages or has
// another version of it (a fresh clone, or after the pins change).
import { spawnSync } from "node:child_process"
import { existsSync, readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const dir = fileURLToPath(new URL("../bench/peer/", import.meta.url))
const log = (line) => process.stderr.write(`${line}\n`)

/** Runs a command; its output goes to stderr, so the bench's stdout stays the report. Exits on failure. */
const run = (command, args, cwd) => {
  const result = spawnSync(command, args, { cwd, stdio: ["ignore", 2, 2] })
  if (result.error !== undefined) throw result.error
  if (result.status !== 0) {
    log(`${[command, ...args].join(" ")} (in ${cwd}) failed`)
    process.exit(result.status ?? 1)
  }
}

const installedVersion = (name) => {
  const file = `${dir}node_modules/${name}/package.json`
  return existsSync(file) ? JSON.parse(readFileSync(file, "utf8")).version : undefined
}

const pinned = JSON.parse(readFileSync(`${dir}package.json`, "utf8")).dependencies
const missing = Object.entries(pinned).filter(([name, version]) => installedVersion(name) !== version)
if (missing.length > 0) {
  log(`bench: installing the peer in bench/peer (npm ci; ${missing.map(([n, v]) => `${n}@${v}`).join(", ")})`)
  // npm_execpath is npm's own script when this runs from an npm script: no shell, any platform
  const npm = process.env.npm_execpath
  if (npm !== undefined && npm.endsWith(".js")) run(process.execPath, [npm, "ci", "--no-audit", "--no-fund"], dir)
  else run(process.platform === "win32" ? "npm.cmd" : "npm", ["ci", "--no-audit", "--no-fund"], dir)
}

log("bench: type check (tsc -p bench)")
run(process.execPath, [`${root}node_modules/typescript/bin/tsc`, "-p", "bench/tsconfig.json"], root)
