/**
 * What went wrong, as an `AiError` reason: a transport failure, a timeout, a non-2xx answer, or an
 * error event inside a stream, each with the server's own words (scrubbed of secrets).
 */
import { Duration, Result } from "effect"
import { AiError } from "effect/ai"
import { Headers } from "effect/http"
import type { HttpClientError, HttpClientResponse } from "effect/http"
import type { ErrorMetadata } from "../OpenAiCompat.ts"
import * as Reply from "./chatCompletionsResponse.ts"
import { metadataKey, scrub } from "./provider.ts"
import type { Provider } from "./provider.ts"

export const timeoutReason = (provider: Provider) =>
  new AiError.NetworkError({
    reason: "TransportError",
    method: "POST",
    url: provider.url,
    description: `no answer within ${Duration.format(provider.timeout)} (the request timeout)`
  })

/** A request that failed before a whole answer came back: refused, cut, unreadable. */
export const transportReason = (provider: Provider, error: HttpClientError.HttpClientError): AiError.AiErrorReason => {
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
export const statusReason = (
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

export const streamErrorReason = (
  provider: Provider,
  failure: { readonly description: string; readonly error?: Reply.ServerError }
): AiError.AiErrorReason => {
  const description = scrub(provider, failure.description)
  if (failure.error === undefined) return new AiError.InvalidResponseError({ description })
  return errorReason(provider, { status: failure.error.status, server: failure.error, message: description })
}
