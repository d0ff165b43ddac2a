/**
 * One request to the server: its body from the prompt and options, and one attempt to send it.
 */
import { Clock, Effect, Redacted, Result } from "effect"
import { AiError } from "effect/ai"
import type { LanguageModel } from "effect/ai"
import { HttpClientRequest } from "effect/http"
import type { HttpClientResponse } from "effect/http"
import * as Request from "./chatCompletionsRequest.ts"
import { statusReason, timeoutReason, transportReason } from "./errorReasons.ts"
import { fail } from "./provider.ts"
import type { Method, Provider } from "./provider.ts"

export const requestBody = Effect.fnUntraced(function*(provider: Provider, options: LanguageModel.ProviderOptions, method: Method) {
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
export const attempt = <A>(
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

export const readText = (provider: Provider, response: HttpClientResponse.HttpClientResponse, method: Method) =>
  response.text.pipe(Effect.mapError((error) => fail(method, transportReason(provider, error))))
