/**
 * A `LanguageModel` for any server that speaks OpenAI's Chat Completions API: OpenAI, and the
 * servers that copy its protocol (Ollama, vLLM, LM Studio, llama.cpp, OpenRouter, Groq, ...). It is
 * built on effect's own `HttpClient` (no SDK) and on `LanguageModel.make`, so toolkits, tool-call
 * resolution, `disableToolCallResolution`, `Chat` and `AiAgent` work with it as with any provider.
 *
 * - `generateText` and `streamText` (server-sent events; tool-call argument deltas assembled by
 *   index), `generateObject` (a strict `json_schema` response format).
 * - The prompt becomes messages the way servers require: every assistant `tool_calls` is followed
 *   at once by one tool message per call id, wherever the prompt kept the results.
 * - Tools are function definitions, sent `strict` when the schema has a strict form.
 * - Answers are read as real servers send them (tested on recorded answers of OpenAI, Azure,
 *   Mistral, DeepSeek, Groq, xAI, Gemini, OpenRouter and Qwen): `content` as parts, whole tool
 *   calls without index or id, placeholder chunks, choice 0 of several.
 * - Usage adds up the way each server counts reasoning tokens; finish reasons and response
 *   metadata are mapped; errors, as an HTTP status or as an error event inside a stream, become
 *   the same `AiError` reason, carrying the server's message.
 * - 429 and 5xx are retried by a `Schedule` you can replace, never sooner than the server's
 *   `Retry-After`; each request has a timeout.
 * - The API key is `Redacted`: it is never in a log, an error or a span, even when a server echoes
 *   it back in an error message.
 *
 * @example
 * ```ts
 * import { Effect, Layer, Redacted } from "effect"
 * import { LanguageModel } from "effect/ai"
 * import { FetchHttpClient } from "effect/http"
 * import { OpenAiCompat } from "effect-async-toolset/openai-compat"
 *
 * const model = OpenAiCompat.layer({
 *   model: "gpt-4o-mini",
 *   apiKey: Redacted.make(process.env.OPENAI_API_KEY ?? "")
 * }).pipe(Layer.provide(FetchHttpClient.layer))
 *
 * const program = LanguageModel.generateText({ prompt: "Say hello" }).pipe(Effect.provide(model))
 * ```
 *
 * @since 0.1.0
 */
import { Clock, Config, Duration, Effect, Layer, Option, Redacted, Result, Schedule, Stream } from "effect"
import type { Schema } from "effect"
import type { AiError } from "effect/ai"
import { LanguageModel, OpenAiStructuredOutput } from "effect/ai"
import { Headers, HttpClient } from "effect/http"
import { annotate, answerStream, asStreamParts, completion, idSource } from "./internal/answer.ts"
import { metadataKey as providerMetadataKey } from "./internal/provider.ts"
import type { Provider } from "./internal/provider.ts"
import { attempt, readText, requestBody } from "./internal/request.ts"

/**
 * The options of {@link layer} and {@link make}: the server, the model, and how requests go.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** The model name the server knows, e.g. `"gpt-4o-mini"`, `"llama3.1"`. */
  readonly model: string
  /** Sent as a bearer token. A local server (Ollama, vLLM, LM Studio) may need none. */
  readonly apiKey?: Redacted.Redacted<string> | undefined
  /** The API root, before `/chat/completions`. Default {@link defaultBaseUrl}. */
  readonly baseUrl?: string | undefined
  /**
   * Extra headers on every request (e.g. OpenRouter's `HTTP-Referer`, Azure's `api-key`). A
   * `Redacted` value is kept out of logs and errors like the API key.
   */
  readonly headers?: Readonly<Record<string, string | Redacted.Redacted<string>>> | undefined
  /**
   * Extra fields of every request body, e.g. `{ temperature: 0.2, max_completion_tokens: 800 }`.
   * The fields this module sets (`model`, `messages`, `tools`, `tool_choice`, `stream`, ...) win.
   */
  readonly body?: Readonly<Record<string, Schema.Json>> | undefined
  /**
   * How long one request may take (default {@link defaultTimeout}): for `generateText` the whole
   * answer, for `streamText` until the answer starts and then between two chunks of it. Each retry
   * gets the full time again.
   */
  readonly timeout?: Duration.Input | undefined
  /**
   * When to retry a request the server answered with 429 (a rate limit, not an exhausted quota)
   * or a 5xx. Default {@link defaultRetry}. The schedule gets the `AiError`; a `Retry-After` the
   * server sent is a lower bound on its delay. `Schedule.recurs(0)` turns retries off.
   */
  readonly retry?: Schedule.Schedule<unknown, AiError.AiError> | undefined
  /**
   * The longest `Retry-After` waited for (default 1 minute). A server asking for longer ends the
   * retries: the error is returned at once, with `retryAfter` set, for the caller to decide.
   */
  readonly maxRetryAfter?: Duration.Input | undefined
  /**
   * Send tools as `strict` when their schema has a strict form (default `true`). A tool opts out
   * with `Tool.Strict` false. Turn it off for a server that rejects the `strict` field.
   */
  readonly strictTools?: boolean | undefined
  /**
   * Ask for token usage in streamed answers with `stream_options: { include_usage: true }`
   * (default `true`). Turn it off for a server that rejects `stream_options`.
   */
  readonly streamUsage?: boolean | undefined
}

/**
 * The options of {@link layerConfig}: everything but the model, the key and the URL, which come
 * from the environment.
 *
 * @since 0.1.0
 * @category models
 */
export interface ConfigOptions extends Omit<Options, "model" | "apiKey" | "baseUrl"> {
  /** The model when `OPENAI_MODEL` is not set; without either, the layer fails with a `ConfigError`. */
  readonly model?: string | undefined
}

/**
 * What this module puts in an error's `metadata` under {@link metadataKey}: the server's own words
 * (also for the reasons whose message leaves them out: a rate limit, an exhausted quota), and its
 * error code, type, parameter and request id when it sent them.
 *
 * @since 0.1.0
 * @category models
 */
export type ErrorMetadata = {
  readonly message: string
  readonly code?: string | number
  readonly type?: string
  readonly param?: string
  readonly requestId?: string
}

/**
 * The provider-metadata key of this module's errors.
 *
 * @since 0.1.0
 * @category constants
 */
export const metadataKey = providerMetadataKey

/**
 * OpenAI's API root.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultBaseUrl = "https://api.openai.com/v1"

/**
 * The default request timeout: 10 minutes, as OpenAI's own SDK (a long answer from a reasoning
 * model takes minutes).
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultTimeout: Duration.Duration = Duration.minutes(10)

/**
 * The default retry schedule: up to 3 retries, exponential from 500 ms with jitter, each delay at
 * most 8 seconds (a `Retry-After` may ask for longer, up to `maxRetryAfter`).
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultRetry: Schedule.Schedule<Duration.Duration, AiError.AiError> = Schedule.exponential("500 millis")
  .pipe(
    Schedule.jittered,
    Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(8)))),
    Schedule.upTo({ times: 3 })
  )

const defaultMaxRetryAfter = Duration.minutes(1)

/**
 * Whether a request that failed this way is worth retrying: a rate limit (429 that is not an
 * exhausted quota) or a server error (5xx).
 *
 * @since 0.1.0
 * @category predicates
 */
export const isRetryable = (error: AiError.AiError): boolean =>
  error.reason._tag === "RateLimitError" || error.reason._tag === "InternalProviderError"

/**
 * How long the server asked to wait before the next request (its `Retry-After` header, in
 * seconds or as an HTTP date, measured from `now`), if it asked.
 *
 * @since 0.1.0
 * @category utils
 */
export const retryAfter = (error: AiError.AiError, now: number): Duration.Duration | undefined => {
  const header = "http" in error.reason ? error.reason.http?.response?.headers["retry-after"] : undefined
  if (typeof header !== "string") return undefined
  const parsed = Headers.parseRetryAfter(header)
  return Result.isSuccess(parsed) ? Headers.retryAfterDelay(parsed.success, now) : undefined
}

// --- retries ----------------------------------------------------------------------------------

/** The schedule, never sooner than the server's `Retry-After`; each retry logged (at debug). */
const honourRetryAfter = (
  schedule: Schedule.Schedule<unknown, AiError.AiError>
): Schedule.Schedule<unknown, AiError.AiError> =>
  Schedule.fromStep(Effect.map(Schedule.toStep(schedule), (step) => (now: number, error: AiError.AiError) => {
    const wait = retryAfter(error, now)
    return step(now, error).pipe(
      Effect.map(([output, delay]): [unknown, Duration.Duration] => [
        output,
        wait === undefined ? delay : Duration.max(delay, wait)
      ]),
      Effect.tap(([, delay]) => Effect.logDebug(`retrying in ${Duration.format(delay)}`, { error: error.reason.message }))
    )
  }))

const withRetries = <A>(provider: Provider, effect: Effect.Effect<A, AiError.AiError>): Effect.Effect<A, AiError.AiError> =>
  Effect.retry(effect, {
    schedule: honourRetryAfter(provider.retry),
    while: (error) =>
      isRetryable(error) &&
      Effect.map(Clock.currentTimeMillis, (now) => {
        const wait = retryAfter(error, now)
        return wait === undefined || Duration.isLessThanOrEqualTo(wait, provider.maxRetryAfter)
      })
  })

// --- a request and its answer ---------------------------------------------------------------

const generateText = (provider: Provider) => (options: LanguageModel.ProviderOptions) =>
  Effect.gen(function*() {
    const body = yield* requestBody(provider, options, "generateText")
    const text = yield* withRetries(
      provider,
      attempt(provider, body, "generateText", (response) => readText(provider, response, "generateText"))
    )
    const parts = yield* completion(provider, "generateText", text, yield* idSource)
    annotate(options, provider, parts)
    return parts
  })

const streamText = (provider: Provider) => (options: LanguageModel.ProviderOptions) =>
  Stream.unwrap(Effect.gen(function*() {
    const body = yield* requestBody(provider, options, "streamText")
    const response = yield* withRetries(provider, attempt(provider, body, "streamText", Effect.succeed))
    const newId = yield* idSource
    // A server that answers a stream request with one JSON body is read as such.
    if ((response.headers["content-type"] ?? "").includes("application/json")) {
      const parts = yield* completion(provider, "streamText", yield* readText(provider, response, "streamText"), newId)
      annotate(options, provider, parts)
      return Stream.fromIterable(parts.flatMap(asStreamParts))
    }
    return answerStream(provider, options, response, newId)
  }))

// --- constructors -----------------------------------------------------------------------------

/**
 * The `LanguageModel` service on an OpenAI-compatible server. Needs an `HttpClient`
 * (e.g. `FetchHttpClient.layer` from `effect/http`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(options: Options) {
  const http = yield* HttpClient.HttpClient
  const secrets = [
    ...(options.apiKey === undefined ? [] : [Redacted.value(options.apiKey)]),
    ...Object.values(options.headers ?? {}).flatMap((value) => Redacted.isRedacted(value) ? [Redacted.value(value)] : [])
  ].filter((secret) => secret !== "")
  const provider: Provider = {
    http,
    url: `${(options.baseUrl ?? defaultBaseUrl).replace(/\/+$/, "")}/chat/completions`,
    model: options.model,
    apiKey: options.apiKey,
    headers: options.headers ?? {},
    body: options.body ?? {},
    timeout: options.timeout === undefined ? defaultTimeout : Duration.fromInputUnsafe(options.timeout),
    retry: options.retry ?? defaultRetry,
    maxRetryAfter: options.maxRetryAfter === undefined
      ? defaultMaxRetryAfter
      : Duration.fromInputUnsafe(options.maxRetryAfter),
    strictTools: options.strictTools ?? true,
    streamUsage: options.streamUsage ?? true,
    secrets
  }
  return yield* LanguageModel.make({
    generateText: generateText(provider),
    streamText: streamText(provider),
    codecTransformer: OpenAiStructuredOutput.toCodecOpenAI
  })
})

/**
 * An OpenAI-compatible `LanguageModel` layer. Needs an `HttpClient`.
 *
 * @example
 * ```ts
 * import { Layer, Redacted } from "effect"
 * import { FetchHttpClient } from "effect/http"
 * import { OpenAiCompat } from "effect-async-toolset/openai-compat"
 *
 * // a local Ollama: no key
 * const ollama = OpenAiCompat.layer({ baseUrl: "http://localhost:11434/v1", model: "llama3.1" })
 *   .pipe(Layer.provide(FetchHttpClient.layer))
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<LanguageModel.LanguageModel, never, HttpClient.HttpClient> =>
  Layer.effect(LanguageModel.LanguageModel, make(options))

/**
 * The layer configured from the environment (through effect's `Config`, so any `ConfigProvider`
 * works): `OPENAI_BASE_URL` (default {@link defaultBaseUrl}), `OPENAI_API_KEY` (read as `Redacted`;
 * optional, for local servers) and `OPENAI_MODEL` (or `options.model`). Fails with a
 * `ConfigError` when no model is given either way.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: ConfigOptions = {}
): Layer.Layer<LanguageModel.LanguageModel, Config.ConfigError, HttpClient.HttpClient> =>
  Layer.unwrap(Effect.gen(function*() {
    const baseUrl = yield* Config.String("OPENAI_BASE_URL").pipe(Config.withDefault(defaultBaseUrl))
    const apiKey = yield* Config.option(Config.Redacted("OPENAI_API_KEY"))
    const model = options.model === undefined
      ? yield* Config.String("OPENAI_MODEL")
      : yield* Config.String("OPENAI_MODEL").pipe(Config.withDefault(options.model))
    return layer({
      ...options,
      baseUrl,
      model,
      apiKey: Option.getOrUndefined(Option.filter(apiKey, (key) => Redacted.value(key) !== ""))
    })
  }))
