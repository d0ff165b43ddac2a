/**
 * The server's answer as `LanguageModel` parts: a whole completion, or a stream of server-sent
 * events read as they arrive; and the telemetry annotations of either.
 */
import { Effect, Result, Stream } from "effect"
import { AiError, IdGenerator, Telemetry } from "effect/ai"
import type { LanguageModel, Response } from "effect/ai"
import { Sse } from "effect/encoding"
import type { HttpClientResponse } from "effect/http"
import * as Reply from "./chatCompletionsResponse.ts"
import { streamErrorReason, timeoutReason, transportReason } from "./errorReasons.ts"
import { fail, scrub } from "./provider.ts"
import type { Method, Provider } from "./provider.ts"

/** Ids for tool calls the server sent without one. */
export const idSource = Effect.gen(function*() {
  const base = yield* (yield* IdGenerator.IdGenerator).generateId()
  let n = 0
  return (): string => `${base}_${++n}`
})

export const annotate = (
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
export const completion = (provider: Provider, method: Method, text: string, newId: Reply.NewId) => {
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

/** The parts of a streamed answer, as its events arrive, then the closing parts. */
export const answerStream = (
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

/** A whole completion's parts as stream parts (for a server that did not stream). */
export const asStreamParts = (part: Response.PartEncoded): Array<Response.StreamPartEncoded> => {
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
