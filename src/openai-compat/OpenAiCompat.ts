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
import { AiError, IdGenerator, LanguageModel, OpenAiStructuredOutput, Telemetry } from "effect/ai"
import type { Response } from "effect/ai"
import { Sse } from "effect/encoding"
import { Headers, HttpClient, HttpClientRequest } from "effect/http"
import type { HttpClientError, HttpClientResponse } from "effect/http"
import * as Request from "./internal/chatCompletionsRequest.ts"
import * as Reply from "./internal/chatCompletionsResponse.ts"

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
export const metadataKey = "openai-compat"

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

// --- one provider ---------------------------------------------------------------------------------

/** The options resolved once per layer. */
interface Provider {
  readonly http: HttpClient.HttpClient
  readonly url: string
  readonly model: string
  readonly apiKey: Redacted.Redacted<string> | undefined
  readonly headers: Readonly<Record<string, string | Redacted.Redacted<string>>>
  readonly body: Readonly<Record<string, Schema.Json>>
  readonly timeout: Duration.Duration
  readonly retry: Schedule.Schedule<unknown, AiError.AiError>
  readonly maxRetryAfter: Duration.Duration
  readonly strictTools: boolean
  readonly streamUsage: boolean
  /** Every secret's text, to scrub from what a server says back. */
  readonly secrets: ReadonlyArray<string>
}

type Method = "generateText" | "streamText"

const fail = (method: Method, reason: AiError.AiErrorReason) => AiError.make({ module: "OpenAiCompat", method, reason })

/** The text with every secret replaced: a server may echo the key back in an error. */
const scrub = (provider: Provider, text: string): string =>
  provider.secrets.reduce((out, secret) => out.split(secret).join("<redacted>"), text)

// --- the request ------------------------------------------------------------------------------

const requestBody = Effect.fnUntraced(function*(provider: Provider, options: LanguageModel.ProviderOptions, method: Method) {
  const mapped = Request.toMessages(options.prompt)
  if (Result.isFailure(mapped)) {
    return yield* fail(method, new AiError.InvalidUserInputError({ description: mapped.failure }))
  }
  const { messages, orphans, unanswered } = mapped.success
  if (messages.length === 0) {
    // The API's schema requires at least one message; a server would answer 400.
    return yield* fail(
      method,
      new AiError.InvalidUserInputError({
        description: "the prompt has no message to send (it is empty, or holds only reasoning): " +
          "a Chat Completions request needs at least one message"
      })
    )
  }
  if (unanswered.length > 0) {
    yield* Effect.logWarning("tool calls without a result in the prompt; each was sent with a note saying so", {
      callIds: unanswered
    })
  }
  if (orphans.length > 0) {
    yield* Effect.logWarning("tool results without their call in the prompt were left out", { callIds: orphans })
  }
  const tools = Request.toFunctions(options.tools, provider.strictTools)
  const format = Request.toResponseFormat(options.responseFormat)
  if (Result.isFailure(format)) {
    return yield* fail(method, new AiError.UnsupportedSchemaError({ description: format.failure }))
  }
  return {
    ...provider.body,
    model: provider.model,
    messages,
    ...(tools.length === 0 ? {} : { tools, tool_choice: Request.toToolChoice(options.toolChoice) }),
    ...(format.success === undefined ? {} : { response_format: format.success }),
    ...(method === "streamText"
      ? { stream: true, ...(provider.streamUsage ? { stream_options: { include_usage: true } } : {}) }
      : {})
  }
})

/**
 * Sends the body once: the response if its status is 2xx, else the server's error as an
 * `AiError`. `read` consumes a successful response within the same timeout.
 */
const attempt = <A>(
  provider: Provider,
  body: unknown,
  method: Method,
  read: (response: HttpClientResponse.HttpClientResponse) => Effect.Effect<A, AiError.AiError>
): Effect.Effect<A, AiError.AiError> => {
  let request = HttpClientRequest.post(provider.url).pipe(
    HttpClientRequest.setHeaders(Object.fromEntries(
      Object.entries(provider.headers).map(([name, value]) => [
        name,
        Redacted.isRedacted(value) ? Redacted.value(value) : value
      ])
    )),
    HttpClientRequest.accept(method === "streamText" ? "text/event-stream" : "application/json"),
    HttpClientRequest.bodyJsonUnsafe(body)
  )
  if (provider.apiKey !== undefined) request = HttpClientRequest.bearerToken(request, provider.apiKey)
  return provider.http.execute(request).pipe(
    Effect.mapError((error) => fail(method, transportReason(provider, error))),
    Effect.flatMap((response) =>
      response.status >= 200 && response.status < 300
        ? read(response)
        : Effect.flatMap(readText(provider, response, method), (text) =>
          Effect.flatMap(
            Clock.currentTimeMillis,
            (now) => Effect.fail(fail(method, statusReason(provider, response, text, now)))
          ))
    ),
    Effect.timeoutOrElse({ duration: provider.timeout, orElse: () => Effect.fail(fail(method, timeoutReason(provider))) })
  )
}

const timeoutReason = (provider: Provider) =>
  new AiError.NetworkError({
    reason: "TransportError",
    method: "POST",
    url: provider.url,
    description: `no answer within ${Duration.format(provider.timeout)} (the request timeout)`
  })

const readText = (provider: Provider, response: HttpClientResponse.HttpClientResponse, method: Method) =>
  response.text.pipe(Effect.mapError((error) => fail(method, transportReason(provider, error))))

/** A request that failed before a whole answer came back: refused, cut, unreadable. */
const transportReason = (provider: Provider, error: HttpClientError.HttpClientError): AiError.AiErrorReason => {
  const reason = error.reason
  // The description of a fetch failure is often empty; its cause says what happened (ECONNREFUSED).
  const cause = "cause" in reason ? describeCause(reason.cause) : undefined
  const description = scrub(provider, [reason.description, cause].filter((s) => s !== undefined && s !== "").join(": "))
  switch (reason._tag) {
    case "TransportError":
    case "EncodeError":
    case "InvalidUrlError":
      return new AiError.NetworkError({
        reason: reason._tag,
        method: "POST",
        url: provider.url,
        ...(description === "" ? {} : { description })
      })
    default:
      return new AiError.InvalidResponseError({
        description: `the answer could not be read (${reason._tag})${description === "" ? "" : `: ${description}`}`
      })
  }
}

const describeCause = (cause: unknown): string | undefined => {
  if (!(cause instanceof Error)) return undefined
  const inner = cause.cause instanceof Error ? describeCause(cause.cause) : undefined
  return inner === undefined ? cause.message : `${cause.message} (${inner})`
}

/** A non-2xx answer as an error reason, with the server's message. */
const statusReason = (
  provider: Provider,
  response: HttpClientResponse.HttpClientResponse,
  body: string,
  now: number
): AiError.AiErrorReason => {
  const status = response.status
  const text = scrub(provider, body)
  const server = Reply.serverError(Reply.parseJson(text))
  const shown = text.trim() === "" ? undefined : Reply.excerpt(text)
  const message = status === 404
    ? notFoundMessage(provider, server?.message, shown)
    : server?.message ?? (shown === undefined ? `HTTP ${status}` : `HTTP ${status}: ${shown}`)
  const requestId = response.headers["x-request-id"]
  const retryAfterHeader = response.headers["retry-after"]
  const wait = retryAfterHeader === undefined ? undefined : Headers.parseRetryAfter(retryAfterHeader)
  return errorReason(provider, {
    status,
    server,
    message,
    requestId,
    retryAfter: wait !== undefined && Result.isSuccess(wait) ? Headers.retryAfterDelay(wait.success, now) : undefined,
    http: {
      response: {
        status,
        headers: {
          ...(requestId === undefined ? {} : { "x-request-id": requestId }),
          ...(retryAfterHeader === undefined ? {} : { "retry-after": retryAfterHeader })
        }
      },
      body: Reply.excerpt(text, 2000)
    }
  })
}

/**
 * A 404 names the URL: a model the server does not know answers it with its own words, a wrong
 * `baseUrl` (most often one without `/v1`) with nothing useful.
 */
const notFoundMessage = (provider: Provider, serverMessage: string | undefined, shown: string | undefined): string =>
  serverMessage !== undefined
    ? `${serverMessage} (HTTP 404 from POST ${provider.url})`
    : `HTTP 404 from POST ${provider.url}${shown === undefined ? "" : ` (${shown})`}: no Chat Completions endpoint ` +
      "answers there. Check baseUrl: it is the API root, which for most servers ends in /v1 " +
      "(e.g. https://api.openai.com/v1, http://localhost:11434/v1)."

/** What is known of a failure, from an HTTP status or from an error event inside a stream. */
interface Failure {
  /** The HTTP status, or the one an error event names; `undefined` when neither says. */
  readonly status: number | undefined
  readonly server: Reply.ServerError | undefined
  readonly message: string
  readonly requestId?: string | undefined
  readonly retryAfter?: Duration.Duration | undefined
  readonly http?: typeof AiError.HttpContext.Encoded | undefined
}

/**
 * The status an error stands for when the server gave none (an event inside a 200 stream that
 * carries only OpenAI's error `code` or `type`).
 */
const impliedStatus = (server: Reply.ServerError | undefined): number | undefined => {
  const code = String(server?.code ?? "")
  const type = server?.type ?? ""
  if (code === "invalid_api_key" || type === "authentication_error") return 401
  if (type === "permission_error") return 403
  if (code === "insufficient_quota" || code === "rate_limit_exceeded" || type === "rate_limit_error") return 429
  if (type === "server_error" || type === "api_error") return 500
  if (type === "invalid_request_error") return 400
  return undefined
}

/**
 * The error reason of a failure. An HTTP status and the same status inside a stream's error event
 * map alike: 401/403 authentication, 429 rate limit or exhausted quota, 5xx provider error,
 * 400/404/413/422 invalid request; a content-filter code is a content policy error.
 */
const errorReason = (provider: Provider, failure: Failure): AiError.AiErrorReason => {
  const { server, message, http } = failure
  const status = failure.status ?? impliedStatus(server)
  const details: ErrorMetadata = {
    message,
    ...(server?.code === undefined ? {} : { code: server.code }),
    ...(server?.type === undefined ? {} : { type: server.type }),
    ...(server?.param === undefined ? {} : { param: server.param }),
    ...(failure.requestId === undefined ? {} : { requestId: failure.requestId })
  }
  const metadata = { [metadataKey]: details }
  const withHttp = http === undefined ? {} : { http }
  const code = String(server?.code ?? "")
  if (code === "insufficient_quota" || server?.type === "insufficient_quota") {
    return new AiError.QuotaExhaustedError({ metadata, ...withHttp })
  }
  if (status === 429) {
    return new AiError.RateLimitError({
      metadata,
      ...withHttp,
      ...(failure.retryAfter === undefined ? {} : { retryAfter: failure.retryAfter })
    })
  }
  if (status === 401 || status === 403) {
    return new AiError.AuthenticationError({
      kind: status === 403 ? "InsufficientPermissions" : provider.apiKey === undefined ? "MissingKey" : "InvalidKey",
      description: message,
      metadata,
      ...withHttp
    })
  }
  if (code === "content_filter" || code === "content_policy_violation") {
    return new AiError.ContentPolicyError({ description: message, metadata, ...withHttp })
  }
  if (status !== undefined && status >= 500) return new AiError.InternalProviderError({ description: message, metadata, ...withHttp })
  if (status === 400 || status === 404 || status === 413 || status === 422) {
    return new AiError.InvalidRequestError({
      description: message,
      ...(server?.param === undefined ? {} : { parameter: server.param }),
      metadata,
      ...withHttp
    })
  }
  return new AiError.UnknownError({
    description: status === undefined ? message : `HTTP ${status}: ${message}`,
    metadata,
    ...withHttp
  })
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

// --- the answer -------------------------------------------------------------------------------

/** Ids for tool calls the server sent without one. */
const idSource = Effect.gen(function*() {
  const base = yield* (yield* IdGenerator.IdGenerator).generateId()
  let n = 0
  return (): string => `${base}_${++n}`
})

const annotate = (
  options: LanguageModel.ProviderOptions,
  provider: Provider,
  parts: ReadonlyArray<Response.StreamPartEncoded | Response.PartEncoded>
) => {
  const metadata = parts.find((part) => part.type === "response-metadata")
  const finish = parts.find((part) => part.type === "finish")
  Telemetry.addGenAIAnnotations(options.span, {
    operation: { name: "chat" },
    request: { model: provider.model },
    response: {
      id: metadata?.id,
      model: metadata?.modelId,
      finishReasons: finish === undefined ? undefined : [finish.reason]
    },
    usage: { inputTokens: finish?.usage.inputTokens.total, outputTokens: finish?.usage.outputTokens.total }
  })
}

const invalidResponse = (provider: Provider, method: Method, description: string) =>
  fail(method, new AiError.InvalidResponseError({ description: scrub(provider, description) }))

/** The parts of a whole completion, from the body's text. */
const completion = (provider: Provider, method: Method, text: string, newId: Reply.NewId) => {
  const json = Reply.parseJson(text)
  if (json === undefined) {
    return Effect.fail(invalidResponse(provider, method, `the answer is not JSON: ${Reply.excerpt(text)}`))
  }
  const error = Reply.serverError(json)
  if (error !== undefined && !(typeof json === "object" && json !== null && "choices" in json)) {
    // A proxy may answer 200 with an error body.
    const description = scrub(provider, error.message ?? Reply.excerpt(text))
    return Effect.fail(fail(method, new AiError.UnknownError({ description })))
  }
  const parts = Reply.completionParts(json, newId)
  return Result.isSuccess(parts)
    ? Effect.succeed(parts.success)
    : Effect.fail(invalidResponse(provider, method, parts.failure))
}

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

/** The parts of a streamed answer, as its events arrive, then the closing parts. */
const answerStream = (
  provider: Provider,
  options: LanguageModel.ProviderOptions,
  response: HttpClientResponse.HttpClientResponse,
  newId: Reply.NewId
): Stream.Stream<Response.StreamPartEncoded, AiError.AiError> =>
  Stream.suspend(() => {
    const state = Reply.makeStreamState()
    let metadata: Response.StreamPartEncoded | undefined
    const closing = Effect.suspend(() => {
      const parts = Reply.onEnd(state, newId)
      if (Result.isFailure(parts)) {
        return Effect.fail(invalidResponse(provider, "streamText", parts.failure))
      }
      annotate(options, provider, metadata === undefined ? parts.success : [metadata, ...parts.success])
      return Effect.succeed(parts.success)
    })
    return events(provider, response).pipe(
      Stream.takeUntil((data) => data.trim() === "[DONE]"),
      Stream.mapEffect((data) => {
        const parts = Reply.onData(state, data)
        if (Result.isFailure(parts)) return Effect.fail(fail("streamText", streamErrorReason(provider, parts.failure)))
        metadata ??= parts.success.find((part) => part.type === "response-metadata")
        return Effect.succeed(parts.success)
      }),
      Stream.concat(Stream.fromEffect(closing)),
      Stream.flattenIterable
    )
  })

/** The `data` of each server-sent event; a silence longer than the timeout fails. */
const events = (
  provider: Provider,
  response: HttpClientResponse.HttpClientResponse
): Stream.Stream<string, AiError.AiError> =>
  Stream.suspend(() => {
    const pending: Array<string> = []
    const parser = Sse.makeParser((event) => {
      if (event._tag === "Event") pending.push(event.data)
    })
    return response.stream.pipe(
      Stream.mapError((error) => fail("streamText", transportReason(provider, error))),
      Stream.timeoutOrElse({
        duration: provider.timeout,
        orElse: () => Stream.fail(fail("streamText", timeoutReason(provider)))
      }),
      Stream.decodeText(),
      Stream.flatMap((text) => {
        const error = parser.feed(text)
        const ready = Stream.fromIterable(pending.splice(0))
        return error === undefined
          ? ready
          : Stream.concat(ready, Stream.fail(invalidResponse(provider, "streamText", error.message)))
      })
    )
  })

const streamErrorReason = (
  provider: Provider,
  failure: { readonly description: string; readonly error?: Reply.ServerError }
): AiError.AiErrorReason => {
  const description = scrub(provider, failure.description)
  if (failure.error === undefined) return new AiError.InvalidResponseError({ description })
  return errorReason(provider, { status: failure.error.status, server: failure.error, message: description })
}

/** A whole completion's parts as stream parts (for a server that did not stream). */
const asStreamParts = (part: Response.PartEncoded): Array<Response.StreamPartEncoded> => {
  switch (part.type) {
    case "text":
      return [
        { type: "text-start", id: "text" },
        { type: "text-delta", id: "text", delta: part.text },
        { type: "text-end", id: "text" }
      ]
    case "reasoning":
      return [
        { type: "reasoning-start", id: "reasoning" },
        { type: "reasoning-delta", id: "reasoning", delta: part.text },
        { type: "reasoning-end", id: "reasoning" }
      ]
    case "tool-call":
    case "finish":
    case "response-metadata":
      return [part]
    default:
      return []
  }
}

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
