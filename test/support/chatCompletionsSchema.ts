/**
 * OpenAI's published schema of a Chat Completions request (`CreateChatCompletionRequest` and what
 * it refers to, vendored from openai/openai-openapi into test/fixtures/openai-compat/openapi), as a
 * validator: `problems(body)` lists where a body breaks it, `[]` for a body OpenAI's schema accepts.
 *
 * The document is OpenAPI 3.1 but keeps OpenAPI 3.0's `nullable` keyword, which no JSON Schema
 * validator reads; it is rewritten as a union with `null` when loaded. Formats (`uri`) and vendor
 * keywords (`x-oai...`, `discriminator`) are not checked.
 */
import { Ajv } from "ajv"
import type { ErrorObject } from "ajv"
import { readFileSync } from "node:fs"

const path = new URL("../fixtures/openai-compat/openapi/chat-completions-request.json", import.meta.url)

/** OpenAPI 3.0's `nullable: true` as JSON Schema: the same schema, or `null`. */
const withoutNullable = (node: unknown): unknown => {
  if (Array.isArray(node)) return node.map(withoutNullable)
  if (node === null || typeof node !== "object") return node
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(node)) {
    // `properties` holds names, not keywords: a property may be called "nullable"
    out[key] = key === "properties" || key === "$defs"
      ? Object.fromEntries(Object.entries(value as object).map(([name, child]) => [name, withoutNullable(child)]))
      : withoutNullable(value)
  }
  if (out.nullable !== true) return out
  delete out.nullable
  return { anyOf: [out, { type: "null" }] }
}

const document = withoutNullable(JSON.parse(readFileSync(path, "utf8"))) as Record<string, unknown>
const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false })
ajv.addSchema({ ...document, $id: "openai" })
const validate = ajv.compile({ $ref: "openai#/components/schemas/CreateChatCompletionRequest" })

const describe = (error: ErrorObject): string => `${error.instancePath || "/"} ${error.message ?? error.keyword}`

/** Where `body` breaks OpenAI's request schema; empty when it follows it. */
export const problems = (body: unknown): ReadonlyArray<string> =>
  validate(body) ? [] : (validate.errors ?? []).map(describe)
