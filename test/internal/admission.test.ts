/**
 * The duplicate policy on its own (rules D1, D3, D4, D5): given the calls of a key that are
 * running, does a new call start, replace them, or get refused?
 */
import { assert, describe, it } from "@effect/vitest"
import { decide } from "../../src/internal/admission.ts"

const cancellable = { id: "a", cancellable: true }
const pinned = { id: "p", cancellable: false }

describe("admission", () => {
  describe("decide", () => {
    it("with nothing running, every mode starts the call", () => {
      for (const mode of ["allow", "replace", "reject", "confirm"] as const) {
        assert.deepStrictEqual(decide(mode, false, []), { _tag: "Start" }, mode)
      }
    })

    it("allow starts a second call alongside the running one", () => {
      assert.deepStrictEqual(decide("allow", false, [cancellable]), { _tag: "Start" })
    })

    it("reject refuses a second call and names the running ones", () => {
      assert.deepStrictEqual(decide("reject", false, [cancellable, pinned]), {
        _tag: "Reject",
        reason: "duplicate",
        running: [cancellable, pinned]
      })
    })

    it("reject refuses even when the confirmation flag is set", () => {
      assert.strictEqual(decide("reject", true, [cancellable])._tag, "Reject")
    })

    it("confirm refuses without the flag, and starts alongside with it", () => {
      assert.deepStrictEqual(decide("confirm", false, [cancellable]), {
        _tag: "Reject",
        reason: "unconfirmed",
        running: [cancellable]
      })
      assert.deepStrictEqual(decide("confirm", true, [cancellable]), { _tag: "Start" })
    })

    it("replace replaces every running call when all can be cancelled", () => {
      const other = { id: "b", cancellable: true }
      assert.deepStrictEqual(decide("replace", false, [cancellable, other]), {
        _tag: "Replace",
        replaced: [cancellable, other]
      })
    })

    it("replace refuses when one running call cannot be cancelled, naming only those", () => {
      assert.deepStrictEqual(decide("replace", false, [cancellable, pinned]), {
        _tag: "Reject",
        reason: "not-cancellable",
        running: [pinned]
      })
    })
  })
})
