/**
 * Retention never touches a call that is still running, whatever the clock says (far in the
 * future: every finished call is due; far in the past: none is), and never the conversation: a
 * call pruned once it ended still has its result told.
 */
import { assert, describe, it } from "@effect/vitest"
import { mkdtempSync } from "node:fs"
import { join } from "node:path"
import { Deferred, Effect, Layer } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import * as Retention from "../../src/durable/internal/retention.ts"
import { eventually } from "../support/durable.ts"
import { execute } from "../support/lifetime.ts"
import { testTmp } from "../support/tmp.ts"

const gate = Deferred.makeUnsafe<void>()

const held = FunctionTool.make("held", { description: "Says it started, then waits for the test" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Deferred.await(gate)
    return "held done"
  }))

const def = DurableToolset.define({ id: "retainlive", tools: [held] })

const app = (dataDir: string) =>
  Layer.mergeAll(DurableToolset.layer(def), DurableChat.layer({ sessionId: "s-retain-live" }), TestSession.layerWith({})).pipe(
    Layer.provideMerge(DurableStore.layerEmbedded({ dataDir, pollInterval: "50 millis" }))
  )

const state = Effect.gen(function*() {
  const sql = yield* SqlClient
  const [messages] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM cluster_messages WHERE entity_type = 'Workflow/effect-async-toolset/retainlive'`
  const [items] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM async_toolset_item WHERE session_id = 's-retain-live'`
  const calls = yield* sql<{ base: string; status: string; cleared: boolean }>`SELECT base, status, cleared FROM async_toolset_call WHERE session_id = 's-retain-live'`
  return { messages: messages!.n, items: items!.n, calls: calls.map((c) => `${c.base} ${c.status}${c.cleared ? " cleared" : ""}`) }
}).pipe(Effect.orDie)

describe("DurableStore retention and live calls", () => {
  it.live("a running call is never pruned, with the clock far in the future or the past; once it ended it is, and its result is still told", () =>
    Effect.gen(function*() {
      const toolset = yield* DurableToolset.make(def)
      const session = yield* TestSession.TestSession
      const sql = yield* SqlClient
      const first = yield* execute(toolset, "r1", "held")
      assert.include(first.output, "started")
      const before = yield* state
      assert.deepStrictEqual(before.calls, ["r1 running"])
      const everything = { maxAge: "0 millis", maxCount: 0 } as const
      for (const now of [Date.now() + 100 * 365 * 86_400_000, 0, -1e15, Number.MAX_SAFE_INTEGER]) {
        assert.strictEqual(yield* Retention.prune(sql, everything, now), 0, `pruned a running call at ${now}`)
      }
      assert.deepStrictEqual(yield* state, before, "a running call's stored messages or rows changed")
      yield* Deferred.succeed(gate, undefined)
      yield* eventually(Effect.map(state, (s) => s.calls[0] === "r1 done"), "r1 done")
      yield* toolset.awaitIdle
      const told = (yield* session.chat).items.filter((i) => i._tag === "FunctionCallOutput" && i.output.includes("held done"))
      assert.strictEqual(told.length, 1)
      const ended = yield* state
      assert.strictEqual(yield* Retention.prune(sql, everything, 0), 0, "pruned with the clock before its end")
      assert.strictEqual(yield* Retention.prune(sql, everything, Date.now() + 100 * 365 * 86_400_000), 1)
      const after = yield* state
      assert.deepStrictEqual(after.calls, ["r1 done cleared"])
      assert.strictEqual(after.messages, 0)
      assert.strictEqual(after.items, ended.items, "the conversation is kept whole")
    }).pipe(Effect.scoped, Effect.provide(app(mkdtempSync(join(testTmp(), "eat-retention-live-"))))), { timeout: 120_000 })
})
