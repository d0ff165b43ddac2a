/**
 * The call lifecycle on its own: each transition moves a call between the tables in one step,
 * and wakes waiters only on `flush`.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect } from "effect"
import { ChatContext } from "effect-async-toolset"
import * as Lifecycle from "../../src/internal/callLifecycle.ts"

const make = (callId: string, key = "book") =>
  Effect.map(
    ChatContext.functionCall({ callId, name: "book" }),
    (fc) => Lifecycle.makeCall(fc, "tool", key, true, 0)
  )

const output = (callId: string) => ChatContext.functionCallOutput({ callId, name: "book", output: "cancelled", isError: true })

describe("call lifecycle", () => {
  it.effect("a call registered after others of its key waits for them, and starts once they are done", () =>
    Effect.gen(function*() {
      const registry = Lifecycle.makeRegistry<string>()
      const a = yield* make("a")
      Lifecycle.register(registry, a, [])
      assert.strictEqual(a.status, "running")
      const out = yield* output("a")
      Lifecycle.stop(registry, a, "replaced", () => out)
      const b = yield* make("b")
      Lifecycle.register(registry, b, registry.byKey.get("book") ?? [])
      assert.strictEqual(b.status, "waiting")
      assert.strictEqual(b.blockers, 1)
      assert.deepStrictEqual(Lifecycle.activeOfKey(registry, "book"), [b], "a stopping call is no duplicate")

      Lifecycle.fiberEnded(registry, a, () => out)
      assert.isFalse(Deferred.isDoneUnsafe(b.gate!), "nobody is woken before flush")
      Lifecycle.flush(registry)
      assert.isTrue(Deferred.isDoneUnsafe(b.gate!))
      assert.isTrue(Lifecycle.start(b))
      assert.strictEqual(b.status, "running")
    }))

  it.effect("stopping a waiting call ends it at once and answers its caller; its successors stop waiting on it", () =>
    Effect.gen(function*() {
      const registry = Lifecycle.makeRegistry<string>()
      const a = yield* make("a")
      Lifecycle.register(registry, a, [])
      const b = yield* make("b")
      Lifecycle.register(registry, b, [a])
      const c = yield* make("c")
      Lifecycle.register(registry, c, [a, b])
      const out = yield* output("b")
      assert.isTrue(Lifecycle.stop(registry, b, "replaced", () => out))
      Lifecycle.flush(registry)
      assert.strictEqual(b.status, "done")
      assert.strictEqual(Lifecycle.takeFirst(b), out, "its caller gets the output")
      assert.strictEqual(c.blockers, 1, "c still waits for a")
      assert.isFalse(Lifecycle.start(b), "a stopped call never starts")
      assert.deepStrictEqual([...registry.live], [a, c])
    }))

  it.effect("the first output is settled once: a second settle loses", () =>
    Effect.gen(function*() {
      const registry = Lifecycle.makeRegistry<string>()
      const a = yield* make("a")
      Lifecycle.register(registry, a, [])
      const out = yield* output("a")
      assert.isTrue(Lifecycle.settleFirst(registry, a, out))
      assert.isFalse(Lifecycle.settleFirst(registry, a, yield* output("a")))
      assert.strictEqual(Lifecycle.takeFirst(a), out)
    }))

  it.effect("a caller that waits before the first output is settled gets it when it is (on flush)", () =>
    Effect.gen(function*() {
      const registry = Lifecycle.makeRegistry<string>()
      const a = yield* make("a")
      Lifecycle.register(registry, a, [])
      assert.isUndefined(Lifecycle.takeFirst(a), "not settled yet")
      const waiter = Lifecycle.firstWaiter(a)
      const out = yield* output("a")
      assert.isTrue(Lifecycle.settleFirst(registry, a, out))
      assert.isUndefined(a.firstOutput, "the waiter holds it, not the call")
      assert.isFalse(Deferred.isDoneUnsafe(waiter), "woken on flush, not inside the transition")
      Lifecycle.flush(registry)
      assert.strictEqual(yield* Deferred.await(waiter), out)
    }))

  it.effect("a stopped call's handler result does not count; a running one's does, and it leaves the running tables", () =>
    Effect.gen(function*() {
      const registry = Lifecycle.makeRegistry<string>()
      const a = yield* make("a")
      const b = yield* make("b", "other")
      Lifecycle.register(registry, a, [])
      Lifecycle.register(registry, b, [])
      const out = yield* output("a")
      Lifecycle.stop(registry, a, "cancelled", () => out)
      assert.isFalse(Lifecycle.handlerReturned(registry, a))
      assert.isTrue(Lifecycle.isStopping(registry, "a"))
      assert.isTrue(Lifecycle.handlerReturned(registry, b))
      assert.strictEqual(b.status, "finishing")
      assert.isFalse(Lifecycle.isInUse(registry, "b"))
      assert.isTrue(registry.live.has(b), "still live until its fiber ends")
    }))

  it.effect("a call that reuses the id of a stopping one is not removed when the old one ends (E5)", () =>
    Effect.gen(function*() {
      const registry = Lifecycle.makeRegistry<string>()
      const old = yield* make("same")
      Lifecycle.register(registry, old, [])
      const out = yield* output("same")
      Lifecycle.stop(registry, old, "cancelled", () => out)
      const fresh = yield* make("same", "other")
      Lifecycle.register(registry, fresh, [])
      Lifecycle.fiberEnded(registry, old, () => out)
      assert.strictEqual(registry.byId.get("same"), fresh)
    }))
})
