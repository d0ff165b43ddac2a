// The conformance suite (0.1.16) imports fs.globSync, which Node has from 22 on; it uses it only to
// read result folders for SDK tier reports, never in the server scenarios. On an older Node this
// rewrites that one import into a stub that throws, so the suite loads. On Node 22+ it does nothing.
import fs from "node:fs"
import { register } from "node:module"

if (typeof fs.globSync !== "function") register("./node20-hooks.mjs", import.meta.url)
