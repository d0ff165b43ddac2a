/**
 * The travel agent demo on a real model: the package's OpenAI-compatible `LanguageModel`
 * (`effect-async-toolset/openai-compat`), configured from the environment, in place of the
 * scripted model.
 *
 *   OPENAI_API_KEY=sk-... npm run example examples/openai.ts
 *   OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_MODEL=llama3.1 npm run example examples/openai.ts
 *
 * `OPENAI_BASE_URL` (default https://api.openai.com/v1) points it at any server that speaks the
 * Chat Completions API (a local Ollama, vLLM or LM Studio, OpenRouter, Groq, a gateway);
 * `OPENAI_MODEL` defaults to gpt-4o-mini; `OPENAI_API_KEY` may be left out for a local server. The
 * options of the demo work the same: `--script <file>`, and the built-in script without a terminal.
 *
 * NOT RUN AGAINST A LIVE API: this repository is built without network access. The provider is
 * tested against a local stand-in server that checks requests the way OpenAI does
 * (test/OpenAiCompat.test.ts); this file is type-checked in CI and never run there. Nothing here
 * runs on import: the demo starts only when this file is the program.
 */
import { Layer } from "effect"
import { FetchHttpClient } from "effect/http"
import { OpenAiCompat } from "effect-async-toolset/openai-compat"
import { isMain, runDemo } from "./travel-agent.ts"

/**
 * The provider's `layer`, kept under this file's old name so that code importing it from here
 * (the README's "Plug in a real model") keeps working; new code imports it from
 * `effect-async-toolset/openai-compat`.
 */
export const layer = OpenAiCompat.layer

/** The model of the demo: `OPENAI_*` from the environment, over `fetch`. */
export const model = OpenAiCompat.layerConfig({ model: "gpt-4o-mini" }).pipe(Layer.provide(FetchHttpClient.layer))

if (isMain(import.meta.url)) {
  const { OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL } = process.env
  if (OPENAI_API_KEY === undefined && OPENAI_BASE_URL === undefined) {
    console.error("Set OPENAI_API_KEY (and OPENAI_BASE_URL for a server other than OpenAI's).")
    process.exit(1)
  }
  const modelName = `${OPENAI_MODEL ?? "gpt-4o-mini"} at ${OPENAI_BASE_URL ?? "api.openai.com"}`
  runDemo(model, { modelName }).then(
    (result) => process.exit(result.exitCode),
    (error: unknown) => {
      console.error(error instanceof Error ? error.message : error)
      process.exit(1)
    }
  )
}
