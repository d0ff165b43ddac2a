/**
 * An OpenAI-compatible `LanguageModel` (the Chat Completions API over effect's `HttpClient`), for
 * OpenAI and the servers that speak its protocol.
 *
 * @since 0.1.0
 */
export * as OpenAiCompat from "./OpenAiCompat.ts"
