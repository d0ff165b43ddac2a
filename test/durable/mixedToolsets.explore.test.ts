/**
 * An in-memory and a durable toolset on one session (one coordinator), on the real clock: seconds
 * of real waits each, so in the explore tier (the quick tier tests C2, C4c and C4d in test/AsyncToolset/).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { sessionLayer, storeLayer } from "../support/durable.ts"
import { execute } from "../support/lifetime.ts"
import { chatProblems, namedCallIds } from "../support/reliability.ts"

const job = (name: string) =>
  FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep("1 second")
      return "done"
    }))

const durableDef = DurableToolset.define({ id: "d", tools: [job("d_job")] })
const otherDef = DurableToolset.define({ id: "e", tools: [job("e_job")], whenAlreadyAnswered: "skip" })

describe("an in-memory and a durable toolset on one session", () => {
  it.live("C4d/C2: calls of equal length started together in both toolsets get one reply", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const m = yield* AsyncToolset.make({ id: "m", tools: [job("m_job")] })
      const d = yield* DurableToolset.make(durableDef)
      yield* Effect.all([execute(m, "m1", "m_job"), execute(d, "d1", "d_job")], { concurrency: "unbounded" })
      yield* Effect.sleep("3 seconds")
      yield* m.awaitIdle
      yield* d.awaitIdle
      const replies = yield* session.replies
      assert.deepStrictEqual(replies.map((r) => namedCallIds(r.instructions).slice().sort()), [["d1_final", "m1_final"]])
      assert.deepStrictEqual(chatProblems(yield* session.chat), [])
    }).pipe(Effect.scoped, Effect.provide(sessionLayer(durableDef)), Effect.provide(storeLayer)), { timeout: 60_000, retry: 2 })

  it.live("C4d: five durable calls of equal length started in one answer get one reply (real clock)", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const d = yield* DurableToolset.make(durableDef)
      yield* Effect.all([1, 2, 3, 4, 5].map((i) => execute(d, `d${i}`, "d_job")), { concurrency: "unbounded" })
      yield* Effect.sleep("3 seconds")
      yield* d.awaitIdle
      const replies = yield* session.replies
      assert.strictEqual(replies.length, 1, JSON.stringify(replies.map((r) => namedCallIds(r.instructions))))
    }).pipe(Effect.scoped, Effect.provide(sessionLayer(durableDef)), Effect.provide(storeLayer)), { timeout: 60_000, retry: 2 })

  it.live("C4c: two durable toolsets (skip vs ask) and an in-memory one, results while busy, the agent spoke: one reply, skip applied to its own only", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const m = yield* AsyncToolset.make({ id: "m", tools: [job("m_job")] })
      const d = yield* DurableToolset.make(durableDef)
      const e = yield* DurableToolset.make(otherDef)
      yield* session.setBusy
      yield* execute(m, "m1", "m_job")
      yield* execute(d, "d1", "d_job")
      yield* execute(e, "e1", "e_job")
      yield* Effect.sleep("2 seconds")
      yield* session.say("assistant", "All done.")
      yield* session.setIdle
      yield* Effect.sleep("1 second")
      yield* m.awaitIdle
      yield* d.awaitIdle
      yield* e.awaitIdle
      const replies = yield* session.replies
      assert.deepStrictEqual(replies.map((r) => namedCallIds(r.instructions).slice().sort()), [["d1_final", "m1_final"]])
      assert.deepStrictEqual(chatProblems(yield* session.chat), [])
    }).pipe(Effect.scoped, Effect.provide(DurableToolset.layer(otherDef).pipe(Layer.provideMerge(sessionLayer(durableDef)))), Effect.provide(storeLayer)), { timeout: 60_000, retry: 2 })
})
