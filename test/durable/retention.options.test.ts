/**
 * Retention settings that cannot be used are refused when the store opens, naming the setting:
 * a `maxAge` that is not a duration (else the store opens and never prunes, a warning at each
 * pass), an `interval` that is not a positive duration (else the passes run back to back, a
 * query loop on the database), a `maxCount` that is not a whole number of calls at least 0.
 */
import { assert, describe, it } from "@effect/vitest"
import { mkdtempSync } from "node:fs"
import { join } from "node:path"
import { Cause, Effect, Exit, Layer } from "effect"
import { DurableStore } from "effect-async-toolset/durable"
import { testTmp } from "../support/tmp.ts"

const opens = (dataDir: string, retention: DurableStore.Options["retention"]) =>
  Effect.exit(Effect.scoped(Layer.build(DurableStore.layerEmbedded({ dataDir, retention }))))

describe("DurableStore retention settings", () => {
  it.live("a maxAge, interval or maxCount that cannot be used is refused at open, naming it", () =>
    Effect.gen(function*() {
      const dataDir = mkdtempSync(join(testTmp(), "eat-retention-options-"))
      const cases: ReadonlyArray<readonly [DurableStore.Options["retention"], string]> = [
        [{ maxAge: "a week" as never }, "retention.maxAge"],
        [{ maxAge: "1 day", interval: "0 millis" }, "retention.interval"],
        [{ maxCount: -1 }, "retention.maxCount"],
        [{ maxCount: Number.NaN }, "retention.maxCount"]
      ]
      for (const [retention, named] of cases) {
        const exit = yield* opens(dataDir, retention)
        assert.isTrue(Exit.isFailure(exit), `${JSON.stringify(retention)} was accepted`)
        assert.include(Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "", named)
      }
      // a usable one opens
      assert.isTrue(Exit.isSuccess(yield* opens(dataDir, { maxAge: "7 days", maxCount: 0, interval: "1 hour" })))
    }), 120_000)
})
