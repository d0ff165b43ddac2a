/**
 * The travel agent demo on a real model: a small OpenAI-compatible `LanguageModel` layer (the Chat
 * Completions API, over effect's own `HttpClient`), put in place of the scripted model.
 *
 * NOT RUN AGAINST A LIVE API. It was written from the Chat Completions API's documented request and
 * response shapes on a machine with no network: it is type-checked (`npm run check`), and was tried
 * only against a local stand-in server that returned canned Chat Completions responses (a tool
 * call, text, a 429, a refused connection). Expect to adjust it for your provider. CI type-checks
 * it and never runs it.
 *
 *   OPENAI_API_KEY=sk-... npm run example examples/openai.ts
 *   OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_MODEL=llama3.1 npm run example examples/openai.ts
 *
 * `OPENAI_BASE_URL` (default https://api.openai.com/v1) points it at any server that speaks the
 * Chat Completions API (a local Ollama or vLLM, a gateway); `OPENAI_MODEL` defaults to gpt-4o-mini.
 * The options of the demo work the same: `--script <file>`, and the built-in script without a
 * terminal.
 *
 * Why not `@effect/ai-openai`: its newest 4.x release (4.0.0-beta.106) imports `effect/unstable/ai/*`
 * and `effect/unstable/http/*`, which effect 4.1.0 no longer ships (they became `effect/ai` and
 * `effect/http`), so with effect 4.1.0 it fails to load (ERR_MODULE_NOT_FOUND) and its type
 * declarations do not resolve; `@effect/ai-openai-compat` 4.0.0-beta.98 likewise. When a release
 * for effect 4.1 is out, `OpenAiLanguageModel.layer(...)` from it replaces `layer` below as is: the
 * agent only needs a `LanguageModel`.
 *
 * What this layer does not do: real streaming (`streamText` sends the whole answer as one chunk;
 * `AiAgent` only uses `generateText`), files and images in prompts, retries, structured output.
 * Nothing here runs on import: the demo starts only when this file is the program.
 */
import { Effect, Layer, Redacted, Schema, Stream } from "effect"
import { AiError, LanguageModel, Tool } from "effect/ai"
import type { Prompt, Response } from "effect/ai"
import { FetchHttpClient, HttpClient, HttpClientRequest, HttpClientResponse } from "effect/http"
import { isMain, runDemo } from "./travel-agent.ts"

export interface Options {
  /** The model name the server knows, e.g. "gpt-4o-mini". */
  readonly model: string
  /** Sent as a bearer token; a local server may need none. */
  readonly apiKey?: Redacted.Redacted<string> | undefined
  /** Default https://api.openai.com/v1. */
  readonly baseUrl?: string | undefined
}

// --- the request ----------------------------------------------------------------------------------

type Message =
  | { readonly role: "system" | "user"; readonly content: string }
  | {
    readonly role: "assistant"
    readonly content: string | null
    readonly tool_calls?: ReadonlyArray<{
      readonly id: string
      readonly type: "function"
      readonly function: { readonly name: string; readonly arguments: string }
    }>
  }
  | { readonly role: "tool"; readonly tool_call_id: string; readonly content: string }

const asText = (value: unknown): string => typeof value === "string" ? value : JSON.stringify(value) ?? ""

/** effect/ai's prompt as Chat Completions messages (text, tool calls and tool results only). */
const toMessages = (prompt: Prompt.Prompt): Array<Message> =>
  prompt.content.flatMap((message): Array<Message> => {
    switch (message.role) {
      case "system":
        return [{ role: "system", content: message.content }]
      case "user":
        return [{ role: "user", content: message.content.map((p) => p.type === "text" ? p.text : "").join("") }]
      case "assistant": {
        const text = message.content.map((p) => p.type === "text" ? p.text : "").join("")
        const calls = message.content.flatMap((p) =>
          p.type === "tool-call" && !p.providerExecuted
            ? [{ id: p.id, type: "function" as const, function: { name: p.name, arguments: asText(p.params) } }]
            : []
        )
        return [{ role: "assistant", content: text === "" ? null : text, ...(calls.length > 0 ? { tool_calls: calls } : {}) }]
      }
      case "tool":
        return message.content.flatMap((p): Array<Message> =>
          p.type === "tool-result" ? [{ role: "tool", tool_call_id: p.id, content: asText(p.result) }] : []
        )
    }
  })

const toTools = (tools: ReadonlyArray<Tool.Any>) =>
  tools.map((tool) => {
    const description = Tool.getDescription(tool)
    const strict = Tool.getStrictMode(tool)
    return {
      type: "function",
      function: {
        name: tool.name,
        parameters: Tool.getJsonSchema(tool),
        ...(description === undefined ? {} : { description }),
        ...(strict === undefined ? {} : { strict })
      }
    }
  })

const toToolChoice = (choice: LanguageModel.ToolChoice<string>) => {
  if (typeof choice === "string") return choice
  if ("tool" in choice) return { type: "function", function: { name: choice.tool } }
  return choice.mode ?? "auto" // `oneOf`: the tools sent are narrowed to those below
}

// --- the response ---------------------------------------------------------------------------------

const ChatCompletion = Schema.Struct({
  choices: Schema.Array(Schema.Struct({
    message: Schema.Struct({
      content: Schema.optional(Schema.NullOr(Schema.String)),
      tool_calls: Schema.optional(Schema.NullOr(Schema.Array(Schema.Struct({
        id: Schema.String,
        function: Schema.Struct({ name: Schema.String, arguments: Schema.String })
      }))))
    }),
    finish_reason: Schema.optional(Schema.NullOr(Schema.String))
  })),
  usage: Schema.optional(Schema.NullOr(Schema.Struct({
    prompt_tokens: Schema.optional(Schema.Int),
    completion_tokens: Schema.optional(Schema.Int)
  })))
})

const finishReasons: Record<string, Response.FinishReason> = {
  stop: "stop",
  length: "length",
  tool_calls: "tool-calls",
  content_filter: "content-filter"
}

/** Arguments as a value; text that is not JSON is passed on, and the toolset reports it to the model. */
const parseArguments = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

const toParts = (completion: typeof ChatCompletion.Type): Array<Response.PartEncoded> => {
  const choice = completion.choices[0]
  const text = choice?.message.content ?? ""
  const usage = completion.usage ?? {}
  return [
    ...(text === "" ? [] : [{ type: "text" as const, text }]),
    ...(choice?.message.tool_calls ?? []).map((call) => ({
      type: "tool-call" as const,
      id: call.id,
      name: call.function.name,
      params: parseArguments(call.function.arguments)
    })),
    {
      type: "finish" as const,
      reason: finishReasons[choice?.finish_reason ?? ""] ?? "unknown",
      usage: {
        inputTokens: usage.prompt_tokens === undefined ? {} : { total: usage.prompt_tokens },
        outputTokens: usage.completion_tokens === undefined ? {} : { total: usage.completion_tokens }
      }
    }
  ]
}

// --- the layer ------------------------------------------------------------------------------------

const failure = (reason: AiError.AiErrorReason) =>
  AiError.make({ module: "OpenAiCompatible", method: "generateText", reason })

export const make = Effect.fnUntraced(function*(options: Options) {
  const http = yield* HttpClient.HttpClient
  const url = `${(options.baseUrl ?? "https://api.openai.com/v1").replace(/\/+$/, "")}/chat/completions`

  const generateText = (provider: LanguageModel.ProviderOptions) => {
    const choice = provider.toolChoice
    const allowed = typeof choice === "object" && "oneOf" in choice ? new Set(choice.oneOf) : undefined
    const tools = toTools(provider.tools.filter((tool) => allowed === undefined || allowed.has(tool.name)))
    const body = {
      model: options.model,
      messages: toMessages(provider.prompt),
      ...(tools.length === 0 ? {} : { tools, tool_choice: toToolChoice(choice) })
    }
    let request = HttpClientRequest.post(url).pipe(HttpClientRequest.bodyJsonUnsafe(body))
    if (options.apiKey !== undefined) request = HttpClientRequest.bearerToken(request, Redacted.value(options.apiKey))
    return Effect.gen(function*() {
      const response = yield* http.execute(request)
      if (response.status < 200 || response.status >= 300) {
        const text = yield* response.text
        return yield* Effect.fail(
          failure(AiError.reasonFromHttpStatus({ status: response.status, description: text.slice(0, 1000) }))
        )
      }
      return toParts(yield* HttpClientResponse.schemaBodyJson(ChatCompletion)(response))
    }).pipe(
      Effect.catchTags({
        HttpClientError: (error) => Effect.fail(failure(new AiError.UnknownError({ description: error.message }))),
        SchemaError: (error) => Effect.fail(failure(AiError.InvalidResponseError.fromSchemaError(error)))
      })
    )
  }

  return yield* LanguageModel.make({
    generateText,
    // not streamed: the whole answer as one chunk
    streamText: (provider) =>
      Stream.fromIterableEffect(Effect.map(generateText(provider), (parts) =>
        parts.flatMap((part): Array<Response.StreamPartEncoded> =>
          part.type === "text"
            ? [
              { type: "text-start", id: "text_1" },
              { type: "text-delta", id: "text_1", delta: part.text },
              { type: "text-end", id: "text_1" }
            ]
            : part.type === "tool-call" || part.type === "finish"
            ? [part]
            : []
        )))
  })
})

/** An OpenAI-compatible `LanguageModel`; needs an `HttpClient` (e.g. `FetchHttpClient.layer`). */
export const layer = (options: Options): Layer.Layer<LanguageModel.LanguageModel, never, HttpClient.HttpClient> =>
  Layer.effect(LanguageModel.LanguageModel, make(options))

// --- the demo on it -------------------------------------------------------------------------------

if (isMain(import.meta.url)) {
  const apiKey = process.env.OPENAI_API_KEY
  const baseUrl = process.env.OPENAI_BASE_URL
  const model = process.env.OPENAI_MODEL ?? "gpt-4o-mini"
  if (apiKey === undefined && baseUrl === undefined) {
    console.error("Set OPENAI_API_KEY (and OPENAI_BASE_URL for a server other than OpenAI's).")
    process.exit(1)
  }
  const openAi = layer({
    model,
    apiKey: apiKey === undefined ? undefined : Redacted.make(apiKey),
    baseUrl
  }).pipe(Layer.provide(FetchHttpClient.layer))
  runDemo(openAi, { modelName: `${model} at ${baseUrl ?? "api.openai.com"}` }).then(
    (result) => process.exit(result.exitCode),
    (error: unknown) => {
      console.error(error instanceof Error ? error.message : error)
      process.exit(1)
    }
  )
}
