/**
 * Retention (`DurableStore.Options.retention`): the stored messages of finished calls' executions
 * are deleted by age or by count; the conversation and the call rows stay, and a call reusing a
 * pruned call's id runs as a call of its own.
 */
import { assert, describe, it } from "@effect/vitest"
import { mkdtempSync } from "node:fs"
import { join } from "node:path"
import { Effect, Layer } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import * as Retention from "../../src/durable/internal/retention.ts"
import { eventually } from "../support/durable.ts"
import { execute } from "../support/lifetime.ts"
import { testTmp } from "../support/tmp.ts"

const report = FunctionTool.make("run_report", { description: "Runs a report", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    return "report ready"
  }))

const def = DurableToolset.define({ id: "retained", tools: [report] })

/** The embedded store (its own engine and cluster) with a session on it. */
const app = (dataDir: string, retention?: DurableStore.Options["retention"]) =>
  Layer.mergeAll(DurableToolset.layer(def), DurableChat.layer({ sessionId: "s-retention" }), TestSession.layerWith({})).pipe(
    Layer.provideMerge(DurableStore.layerEmbedded({ dataDir, pollInterval: "50 millis", retention }))
  )

const counts = Effect.gen(function*() {
  const sql = yield* SqlClient
  const [messages] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM cluster_messages WHERE entity_type = 'Workflow/effect-async-toolset/retained'`
  const [replies] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM cluster_replies r JOIN cluster_messages m ON m.id = r.request_id WHERE m.entity_type = 'Workflow/effect-async-toolset/retained'`
  const [items] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM async_toolset_item WHERE session_id = 's-retention'`
  const calls = yield* sql<{ base: string; cleared: boolean }>`SELECT base, cleared FROM async_toolset_call WHERE session_id = 's-retention' ORDER BY base`
  return { messages: messages!.n, replies: replies!.n, items: items!.n, calls: calls.map((c) => `${c.base}${c.cleared ? " cleared" : ""}`) }
})

const finished = (n: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient
    yield* eventually(
      Effect.map(
        Effect.orDie(sql<{ n: number }>`SELECT count(*)::int AS n FROM async_toolset_call WHERE session_id = 's-retention' AND status = 'done'`),
        (rows) => rows[0]!.n === n
      ),
      `${n} calls done`
    )
  })

describe("DurableStore retention", () => {
  it.live("by count, then by age: the executions' stored messages go, the chat and the call rows stay; a reused call id runs anew", () =>
    Effect.gen(function*() {
      const toolset = yield* DurableToolset.make(def)
      const session = yield* TestSession.TestSession
      const sql = yield* SqlClient
      for (const id of ["a", "b", "c"]) yield* execute(toolset, id, "run_report")
      yield* finished(3)
      yield* toolset.awaitIdle
      const before = yield* counts
      assert.isAbove(before.messages, 0)
      assert.deepStrictEqual(before.calls, ["a", "b", "c"])

      // one minute after their end at the earliest: nothing yet
      const now = Date.now()
      assert.strictEqual(yield* Retention.prune(sql, { maxCount: 0 }, now), 0)

      // all but the newest one
      const later = now + 2 * 60_000
      assert.strictEqual(yield* Retention.prune(sql, { maxCount: 1 }, later), 2)
      const byCount = yield* counts
      assert.deepStrictEqual(byCount.calls.filter((c) => c.endsWith("cleared")).length, 2)
      assert.strictEqual(byCount.messages, before.messages / 3)
      assert.strictEqual(byCount.replies, before.replies / 3)
      assert.strictEqual(byCount.items, before.items, "the conversation is kept whole")
      assert.strictEqual(yield* Retention.prune(sql, { maxCount: 1 }, later), 0, "a cleared call is not cleared again")

      // older than a minute
      assert.strictEqual(yield* Retention.prune(sql, { maxAge: "1 minute" }, later), 1)
      const byAge = yield* counts
      assert.deepStrictEqual(byAge.calls, ["a cleared", "b cleared", "c cleared"])
      assert.strictEqual(byAge.messages, 0)
      assert.strictEqual(byAge.replies, 0)

      // the model reuses a pruned call's id: a call of its own, run and told
      yield* execute(toolset, "a", "run_report")
      yield* finished(4)
      yield* toolset.awaitIdle
      assert.deepStrictEqual((yield* counts).calls, ["a cleared", "a_run2", "b cleared", "c cleared"])
      const told = (yield* session.chat).items.filter((item) => item._tag === "FunctionCallOutput" && item.output.includes("report ready"))
      assert.strictEqual(told.length, 4)
    }).pipe(Effect.scoped, Effect.provide(app(mkdtempSync(join(testTmp(), "eat-retention-"))))), { timeout: 120_000 })

  it.live("the option prunes when the store opens", () =>
    Effect.gen(function*() {
      const dataDir = mkdtempSync(join(testTmp(), "eat-retention-"))
      yield* Effect.gen(function*() {
        const toolset = yield* DurableToolset.make(def)
        const sql = yield* SqlClient
        yield* execute(toolset, "a", "run_report")
        yield* finished(1)
        yield* toolset.awaitIdle
        // ended two minutes ago
        yield* sql`UPDATE async_toolset_call SET ended_at = ended_at - 120000`
        assert.isAbove((yield* counts).messages, 0)
      }).pipe(Effect.scoped, Effect.provide(app(dataDir)))
      yield* Effect.gen(function*() {
        yield* eventually(Effect.map(Effect.orDie(counts), (c) => c.messages === 0), "cleared at open")
        assert.deepStrictEqual((yield* counts).calls, ["a cleared"])
      }).pipe(Effect.scoped, Effect.provide(app(dataDir, { maxAge: "1 minute" })))
    }), { timeout: 120_000 })
})
