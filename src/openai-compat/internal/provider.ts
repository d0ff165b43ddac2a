/**
 * One OpenAI-compatible provider as a layer resolved it, and what every part of a request uses
 * of it: the `AiError` it fails with, and the scrubbing of its secrets from what a server says.
 */
import type { Duration, Redacted, Schedule, Schema } from "effect"
import { AiError } from "effect/ai"
import type { HttpClient } from "effect/http"

/** The provider-metadata key of this module's errors (`OpenAiCompat.metadataKey`). */
export const metadataKey = "openai-compat"

/** The options resolved once per layer. */
export interface Provider {
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

export type Method = "generateText" | "streamText"

export const fail = (method: Method, reason: AiError.AiErrorReason) => AiError.make({ module: "OpenAiCompat", method, reason })

/** The text with every secret replaced: a server may echo the key back in an error. */
export const scrub = (provider: Provider, text: string): string =>
  provider.secrets.reduce((out, secret) => out.split(secret).join("<redacted>"), text)
