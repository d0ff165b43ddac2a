/**
 * A store holding rows this code did not write as they are (a corrupted store, a hand edit, a bug
 * of an older version): an item whose text is not a chat item, a call row whose call is not a call,
 * an output that does not decode, waiting bases that are not JSON. Each bad row is logged, naming
 * its session and its call or item, and skipped (a live call: marked failed); every other call and
 * the rest of the conversation load and run.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Layer } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset, PgliteClient } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { claimCall } from "../../src/durable/internal/calls.ts"
import { encodeItem } from "../../src/durable/internal/tables.ts"
import { eventually, newSessionId, sessionLayer, storeLayer } from "../support/durable.ts"
import { captureLogs, reported } from "../support/reliability.ts"
import { freshDataDir } from "../support/pglite.ts"
import { call } from "../support/replies.ts"

const quick = FunctionTool.make("quick", { description: "Says it started, then answers", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    return "quick answer"
  }))

const def = DurableToolset.define({ id: "corrupt", tools: [quick] })

/** Records a running call as a process that died right after recording it leaves it. */
const recordRunning = (sessionId: string, callId: string) =>
  Effect.gen(function*() {
    const store = yield* DurableStore.DurableStore
    const fc = yield* call(callId, "quick")
    yield* claimCall(store.sql, {
      sessionId, base: callId, toolsetId: def.id, call: fc, dupKey: undefined, cancellable: true, status: "running",
      after: [], timeoutMs: undefined, deadline: undefined, startedAt: Date.now()
    }).pipe(Effect.orDie)
    return fc
  })

/** A call row written by hand: `columns` over a running call of `quick`. */
const insertCall = (sessionId: string, base: string, columns: Record<string, unknown>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient
    const fc = yield* call(base, "quick")
    const row = {
      session_id: sessionId, base, toolset_id: def.id, call_item: encodeItem(fc), call_item_id: fc.id, dup_key: null,
      cancellable: true, status: "running", after_bases: "", started_at: Date.now(), ...columns
    }
    yield* sql`INSERT INTO async_toolset_call ${sql.insert(row)}`.pipe(Effect.orDie)
  })

const insertItem = (sessionId: string, itemId: string, columns: Record<string, unknown>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient
    yield* sql`INSERT INTO async_toolset_item ${sql.insert({ session_id: sessionId, item_id: itemId, created_at: Date.now(), ...columns })}`
      .pipe(Effect.orDie)
  })

const statusOf = (sessionId: string, base: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient
    const rows = yield* Effect.orDie(sql<{ status: string }>`SELECT status FROM async_toolset_call WHERE session_id = ${sessionId} AND base = ${base}`)
    return rows[0]?.status
  })

const outputsIn = Effect.gen(function*() {
  const session = yield* TestSession.TestSession
  const chat = yield* session.chat
  return chat.items.flatMap((item) => item._tag === "FunctionCallOutput" ? [`${item.callId}: ${item.output}`] : [])
})

describe("a corrupted store", () => {
  it.live("DurableChat: an item whose text is no chat item is logged (session and item named) and left out; the rest of the conversation loads", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const sessionId = newSessionId()
      const hello = yield* ChatContext.message("user", "hello")
      yield* Effect.gen(function*() {
        const chat = yield* DurableChat.DurableChat
        yield* chat.save([hello])
      }).pipe(Effect.provide(DurableChat.layer({ sessionId })))
      yield* insertItem(sessionId, "bad-json", { item: "{not json" })
      yield* insertItem(sessionId, "bad-shape", { item: JSON.stringify({ _tag: "Nope", id: "bad-shape" }) })
      const bye = yield* ChatContext.message("user", "bye")
      yield* insertItem(sessionId, bye.id, { item: encodeItem(bye) })
      const history = yield* Effect.gen(function*() {
        const chat = yield* DurableChat.DurableChat
        return chat.history.items.map((item) => item.id)
      }).pipe(Effect.provide(DurableChat.layer({ sessionId })), Effect.provide(logs.layer))
      assert.deepStrictEqual(history, [hello.id, bye.id])
      for (const id of ["bad-json", "bad-shape"]) {
        assert.isAbove(logs.find(reported, sessionId, id).length, 0, `no error naming ${id} and the session`)
      }
    }).pipe(Effect.provide(storeLayer)), { timeout: 60_000 })

  it.live("DurableToolset.make: a live call whose call, or waiting list, does not decode is logged and marked failed; the session's other live call runs and is told", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const sessionId = newSessionId()
      yield* recordRunning(sessionId, "good1")
      yield* insertCall(sessionId, "badjson", { call_item: "{not json" })
      const message = yield* ChatContext.message("user", "not a call")
      yield* insertCall(sessionId, "badkind", { call_item: encodeItem(message) })
      yield* insertCall(sessionId, "badafter", { status: "waiting", after_bases: "[not json" })
      yield* Effect.gen(function*() {
        const toolset = yield* DurableToolset.make(def)
        yield* eventually(Effect.map(outputsIn, (outputs) => outputs.some((o) => o.startsWith("good1:"))), "good1 told")
        yield* toolset.awaitIdle
      }).pipe(Effect.scoped, Effect.provide(sessionLayer(def, { sessionId })), Effect.provide(logs.layer))
      for (const base of ["badjson", "badkind", "badafter"]) {
        assert.isAbove(logs.find(reported, sessionId, base).length, 0, `no error naming ${base} and the session`)
        assert.strictEqual(yield* statusOf(sessionId, base), "error", `${base} left live`)
      }
      assert.strictEqual(yield* statusOf(sessionId, "good1"), "done")
    }).pipe(Effect.provide(storeLayer)), { timeout: 60_000 })

  it.live("DurableToolset.make: an owed item, or a call's first output, that does not decode is logged and skipped; the good ones are told", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const sessionId = newSessionId()
      // a finished call missing from the chat whose first output is garbage, and a good one
      yield* insertCall(sessionId, "lostbad", { status: "done", first_output: "{not json", ended_at: Date.now() })
      const fc = yield* call("lostgood", "quick")
      const fco = new ChatContext.FunctionCallOutput({ id: "fco:lostgood:first", callId: "lostgood", name: "quick", output: "lost good answer", isError: false, createdAt: Date.now() })
      yield* insertCall(sessionId, "lostgood", { status: "done", first_output: encodeItem(fco), call_item: encodeItem(fc), call_item_id: fc.id, ended_at: Date.now() })
      // an owed pair whose output is garbage (of a call that does not exist)
      yield* insertItem(sessionId, "fc:ghost:1", { item: encodeItem(new ChatContext.FunctionCall({ id: "fc:ghost:1", callId: "ghost_update_1", name: "quick", arguments: "{}", createdAt: Date.now() })), toolset_id: def.id, base: "ghost", step: 1, call_id: "ghost_update_1" })
      yield* insertItem(sessionId, "fco:ghost:1", { item: "{not json", toolset_id: def.id, base: "ghost", step: 1, call_id: "ghost_update_1", owed: true })
      yield* Effect.gen(function*() {
        const toolset = yield* DurableToolset.make(def)
        yield* eventually(Effect.map(outputsIn, (outputs) => outputs.includes("lostgood: lost good answer")), "lostgood told")
        yield* toolset.awaitIdle
        // the toolset serves
        const answer = yield* Effect.flatMap(call("fresh", "quick"), toolset.execute)
        assert.include(answer.output, "started")
      }).pipe(Effect.scoped, Effect.provide(sessionLayer(def, { sessionId })), Effect.provide(logs.layer))
      assert.isAbove(logs.find(reported, sessionId, "lostbad").length, 0, "no error naming lostbad and the session")
      assert.isAbove(logs.find(reported, sessionId, "fco:ghost:1").length, 0, "no error naming fco:ghost:1 and the session")
    }).pipe(Effect.provide(storeLayer)), { timeout: 60_000 })
})

describe("a corrupted store: a call's execution", () => {
  it.live("an execution resumed for a call whose model call does not decode ends it failed, logged (session and call named), instead of dying", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const sessionId = newSessionId()
      yield* insertCall(sessionId, "resumedbad", { call_item: "{not json" })
      yield* def.workflow.execute({ sessionId, base: "resumedbad" }).pipe(
        Effect.provide(sessionLayer(def, { sessionId })),
        Effect.provide(logs.layer)
      )
      assert.strictEqual(yield* statusOf(sessionId, "resumedbad"), "error")
      assert.isAbove(logs.find(reported, sessionId, "resumedbad", "cannot be run").length, 0, "no error naming the call and the session")
    }).pipe(Effect.provide(storeLayer)), { timeout: 60_000 })
})

/** Opens the store on a fresh database where `before` ran first; the open's exit. */
const openAfter = (before: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const dataDir = yield* Effect.promise(() => freshDataDir())
    const database = PgliteClient.layer({ dataDir })
    return yield* Effect.gen(function*() {
      const sql = yield* SqlClient
      for (const statement of before) yield* Effect.orDie(sql.unsafe(statement))
      return yield* Effect.exit(Layer.build(DurableStore.layer()).pipe(Effect.scoped))
    }).pipe(Effect.scoped, Effect.provide(database))
  })

const oldCallTable = (without: string, extra = "") => `CREATE TABLE async_toolset_call (
    session_id TEXT NOT NULL, base TEXT NOT NULL, toolset_id TEXT NOT NULL, call_item TEXT NOT NULL, call_item_id TEXT NOT NULL,
    dup_key TEXT, cancellable BOOLEAN NOT NULL, status TEXT NOT NULL, stop_cause TEXT, after_bases TEXT NOT NULL DEFAULT '',
    first_output TEXT, first_message TEXT, timeout_ms DOUBLE PRECISION, deadline DOUBLE PRECISION,
    steps INTEGER NOT NULL DEFAULT 0, updates INTEGER NOT NULL DEFAULT 0, started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION, version INTEGER NOT NULL DEFAULT 0${extra},
    PRIMARY KEY (session_id, base))`.replace(new RegExp(`\\b${without} [^,]*,`), "")

describe("a store whose tables another version made", () => {
  it.live("a table without a column this version uses fails the open, naming the table and the column", () =>
    Effect.gen(function*() {
      const exit = yield* openAfter([oldCallTable("version")])
      assert.isTrue(Exit.isFailure(exit), "the store opened")
      const text = Exit.isFailure(exit) ? Cause.pretty(exit.cause) : ""
      assert.include(text, "async_toolset_call has no column version")
    }), { timeout: 60_000 })

  it.live("a column this version does not fill (NOT NULL, no default) fails the open, naming it", () =>
    Effect.gen(function*() {
      const exit = yield* openAfter([oldCallTable("none", ", tenant TEXT NOT NULL")])
      assert.isTrue(Exit.isFailure(exit), "the store opened")
      assert.include(Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "", "tenant")
    }), { timeout: 60_000 })

  it.live("an older table (no cleared column), another table missing, and an extra column that may stay empty: migrated, the open works", () =>
    Effect.gen(function*() {
      const exit = yield* openAfter([oldCallTable("none", ", note TEXT")])
      assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
    }), { timeout: 60_000 })
})
