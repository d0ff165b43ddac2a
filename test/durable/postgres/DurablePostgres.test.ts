/**
 * DurablePostgres.layer's options, checked before it connects.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Layer, Redacted } from "effect"
import { DurablePostgres } from "effect-async-toolset/durable/postgres"

describe("DurablePostgres.layer", () => {
  it.effect("an application that cannot name a schema is refused, saying what it may be", () =>
    Effect.gen(function*() {
      for (const application of ["Billing", "travel-agent", "9lives", "", "a".repeat(41)]) {
        const built = yield* Effect.exit(Effect.scoped(Layer.build(
          DurablePostgres.layer({ url: Redacted.make("postgres://127.0.0.1:1/none"), application })
        )))
        assert.isTrue(Exit.isFailure(built), application)
        const error = Exit.isFailure(built) ? built.cause.reasons[0] : undefined
        assert.strictEqual(error?._tag, "Fail")
        const failure = error?._tag === "Fail" ? error.error : undefined
        assert.instanceOf(failure, DurablePostgres.InvalidApplication)
        assert.include((failure as DurablePostgres.InvalidApplication).message, "lowercase letters, digits and underscores")
      }
    }))
})
