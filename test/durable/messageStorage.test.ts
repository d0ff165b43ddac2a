/**
 * The durable stores' message storage (effect/cluster's SQL storage with a reply saved in one
 * statement) writes the same rows as upstream's `SqlMessageStorage`: a request with its final
 * (WithExit) reply, and one with a chunk reply, on PGlite and on PostgreSQL; a reply whose save fails
 * because the database is unreachable is saved again for a while, then an error says so.
 */
import { assert, describe, it } from "@effect/vitest"
import { PgClient } from "@effect/sql-pg"
import { Duration, Effect, Exit, Fiber, Layer, Redacted } from "effect"
import type * as MessageStorage from "effect/cluster/MessageStorage"
import * as SqlMessageStorage from "effect/cluster/SqlMessageStorage"
import * as Digest from "effect/crypto/Digest"
import { SqlClient } from "effect/sql/SqlClient"
import { PgliteClient } from "effect-async-toolset/durable"
import * as Cluster from "../../src/durable/internal/cluster.ts"
import { freshDataDir } from "../support/pglite.ts"
import { eventually } from "../support/durable.ts"
import { captureLogs } from "../support/reliability.ts"
import { freshDatabase, testPgUrl } from "./pgDatabase.ts"

const request = (requestId: string, entityId: string) => ({
  _tag: "Request" as const,
  requestId,
  address: { shardId: { group: "default", id: 7 }, entityType: "Workflow/test", entityId },
  tag: "run",
  payload: { to: "Tokyo", n: 1 },
  headers: { "x-test": "1" }
})

/** Stores two requests and their replies (a final one, a chunk) with `storage`; the rows they left. */
const writeAndRead = (storage: MessageStorage.Encoded) =>
  Effect.gen(function*() {
    const sql = (yield* SqlClient).withoutTransforms()
    yield* storage.saveEnvelope({ envelope: request("1001", "e1"), primaryKey: "e1/run/", deliverAt: null })
    yield* storage.saveReply({
      _tag: "WithExit",
      id: "2001",
      requestId: "1001",
      exit: { _tag: "Success", value: { confirmation: "FL-847293" } } as never
    })
    yield* storage.saveEnvelope({ envelope: request("1002", "e2"), primaryKey: "e2/run/", deliverAt: null })
    yield* storage.saveReply({ _tag: "Chunk", id: "2002", requestId: "1002", sequence: 0, values: [{ step: 1 }] })
    return {
      messages: yield* sql`SELECT * FROM cluster_messages ORDER BY id`,
      replies: yield* sql`SELECT * FROM cluster_replies ORDER BY id`
    }
  }).pipe(Effect.provide(Digest.layerWebCrypto))

/** The rows each storage leaves, each on a new database of `store`. */
const compare = <A>(store: () => Layer.Layer<A | SqlClient, unknown>) =>
  Effect.gen(function*() {
    const rows = []
    for (const make of [SqlMessageStorage.makeEncoded(), Cluster.makeEncoded()]) {
      rows.push(yield* Effect.flatMap(make, writeAndRead).pipe(Effect.provide(Digest.layerWebCrypto), Effect.provide(store())))
    }
    const [upstream, lean] = rows
    assert.strictEqual(upstream!.messages.length, 2)
    assert.strictEqual(upstream!.replies.length, 2)
    assert.deepStrictEqual(lean, upstream)
  })

describe("the durable stores' message storage", () => {
  it.live("writes upstream's rows for a final reply and a chunk reply (PGlite), in one statement each", () =>
    Effect.gen(function*() {
      yield* compare(() =>
        Layer.unwrap(Effect.map(Effect.promise(() => freshDataDir()), (dataDir) => PgliteClient.layer({ dataDir })))
      )
      // one statement per reply
      const dataDir = yield* Effect.promise(() => freshDataDir())
      yield* Effect.gen(function*() {
        const client = yield* PgliteClient.PgliteClient
        const storage = yield* Cluster.makeEncoded()
        yield* storage.saveEnvelope({ envelope: request("1003", "e3"), primaryKey: "e3/run/", deliverAt: null })
        const sent: Array<string> = []
        const query = client.pglite.query.bind(client.pglite)
        const exec = client.pglite.exec.bind(client.pglite)
        Object.assign(client.pglite, {
          query: (text: string, ...rest: Array<any>) => (sent.push(text), query(text, ...rest)),
          exec: (text: string, ...rest: Array<any>) => (sent.push(text), exec(text, ...rest))
        })
        yield* storage.saveReply({ _tag: "WithExit", id: "2003", requestId: "1003", exit: { _tag: "Success", value: 1 } as never })
        yield* storage.saveReply({ _tag: "Chunk", id: "2004", requestId: "1003", sequence: 0, values: [1] })
        assert.strictEqual(sent.length, 2, sent.join("\n"))
      }).pipe(Effect.provide(Digest.layerWebCrypto), Effect.provide(PgliteClient.layer({ dataDir })))
    }), 60_000)

  it.live.skipIf(testPgUrl === undefined)("writes upstream's rows for a final reply and a chunk reply (PostgreSQL)", () =>
    Effect.scoped(Effect.gen(function*() {
      const urls = [yield* freshDatabase("eat_storage"), yield* freshDatabase("eat_storage")]
      let next = 0
      yield* compare(() => PgClient.layer({ url: Redacted.make(urls[next++]!) }))
    })), 60_000)
})

/**
 * A storage on a new PGlite database whose reply saves fail while `refusing`, with SQLSTATE `code`
 * (a refused connection unless told).
 */
const refusingStorage = <A, E>(
  options: { readonly saveWindow?: Duration.Duration; readonly stopped?: () => boolean },
  use: (storage: MessageStorage.Encoded, db: { refusing: boolean; attempts: number }) => Effect.Effect<A, E, SqlClient>,
  code = "08006"
) =>
  Effect.gen(function*() {
    const dataDir = yield* Effect.promise(() => freshDataDir())
    return yield* Effect.gen(function*() {
      const client = yield* PgliteClient.PgliteClient
      const storage = yield* Cluster.makeEncoded("cluster", options)
      const db = { refusing: false, attempts: 0 }
      const query = client.pglite.query.bind(client.pglite)
      const refused = Object.assign(new Error(code === "08006" ? "connection refused" : `refused (${code})`), { code })
      Object.assign(client.pglite, {
        query: (text: string, ...rest: Array<any>) =>
          db.refusing && text.includes("cluster_replies") ? (db.attempts++, Promise.reject(refused)) : query(text, ...rest)
      })
      return yield* use(storage, db)
    }).pipe(Effect.provide(Digest.layerWebCrypto), Effect.provide(PgliteClient.layer({ dataDir })))
  })

const finalReply = (id: string, requestId: string) =>
  ({ _tag: "WithExit", id, requestId, exit: { _tag: "Success", value: 1 } }) as never

describe("the durable stores' message storage, the database unreachable", () => {
  it.live("a reply's save is tried again until the database answers; failing past the window, an error says so once", () => {
    const logs = captureLogs()
    return refusingStorage({ saveWindow: Duration.millis(300) }, (storage, db) =>
      Effect.gen(function*() {
        yield* storage.saveEnvelope({ envelope: request("1005", "e5"), primaryKey: "e5/run/", deliverAt: null })
        db.refusing = true
        const save = yield* Effect.forkChild(storage.saveReply(finalReply("2005", "1005")))
        yield* eventually(Effect.sync(() => logs.find(["Error"], "request 1005 has not been saved").length > 0), "the error", 20)
        // still trying, past the window; the database answers again: the same save goes through
        const before = db.attempts
        yield* eventually(Effect.sync(() => db.attempts > before), "tried again after the error", 20)
        db.refusing = false
        yield* Fiber.join(save)
        const sql = (yield* SqlClient).withoutTransforms()
        const rows = yield* sql<{ processed: boolean }>`SELECT processed FROM cluster_messages WHERE request_id = 1005`
        assert.deepStrictEqual(rows.map((r) => r.processed), [true])
        assert.lengthOf(logs.find(["Error"], "request 1005"), 1, "told once")
      })).pipe(Effect.provide(logs.layer))
  }, 60_000)

  it.live("a failing save stops trying once the runner shuts down (the request stays unprocessed in storage)", () => {
    const runner = { shuttingDown: false }
    const logs = captureLogs()
    return refusingStorage({ stopped: () => runner.shuttingDown }, (storage, db) =>
      Effect.gen(function*() {
        yield* storage.saveEnvelope({ envelope: request("1007", "e7"), primaryKey: "e7/run/", deliverAt: null })
        db.refusing = true
        const save = yield* Effect.forkChild(storage.saveReply(finalReply("2007", "1007")))
        yield* eventually(Effect.sync(() => db.attempts >= 3), "tried again", 20)
        runner.shuttingDown = true
        const exit = yield* Fiber.await(save)
        assert.isTrue(Exit.isFailure(exit))
        db.refusing = false
        const sql = (yield* SqlClient).withoutTransforms()
        const rows = yield* sql<{ processed: boolean }>`SELECT processed FROM cluster_messages WHERE request_id = 1007`
        assert.deepStrictEqual(rows.map((r) => r.processed), [false])
      })).pipe(Effect.provide(logs.layer))
  }, 60_000)

  it.live("a reply's save refused for a state of the server that passes (its disk full) is tried again until the server takes it", () => {
    const logs = captureLogs()
    return refusingStorage({}, (storage, db) =>
      Effect.gen(function*() {
        yield* storage.saveEnvelope({ envelope: request("1008", "e8"), primaryKey: "e8/run/", deliverAt: null })
        db.refusing = true
        const save = yield* Effect.forkChild(storage.saveReply(finalReply("2008", "1008")))
        yield* eventually(Effect.sync(() => db.attempts > 2), "tried again", 20)
        db.refusing = false
        yield* Fiber.join(save)
        const sql = (yield* SqlClient).withoutTransforms()
        const rows = yield* sql<{ processed: boolean }>`SELECT processed FROM cluster_messages WHERE request_id = 1008`
        assert.deepStrictEqual(rows.map((r) => r.processed), [true])
      }), "53100").pipe(Effect.provide(logs.layer))
  }, 60_000)

  it.live("a reply whose save fails for a reason that does not pass (its reply already stored) is not tried again", () => {
    const logs = captureLogs()
    return refusingStorage({}, (storage, db) =>
      Effect.gen(function*() {
        yield* storage.saveEnvelope({ envelope: request("1006", "e6"), primaryKey: "e6/run/", deliverAt: null })
        yield* storage.saveReply(finalReply("2006", "1006"))
        // the same reply again: its id is taken (a save that committed but whose answer was lost)
        const exit = yield* Effect.exit(storage.saveReply(finalReply("2006", "1006")))
        assert.isTrue(Exit.isFailure(exit))
        assert.strictEqual(db.attempts, 0)
        assert.lengthOf(logs.find(["Warn"], "reply to request 1006"), 1)
        assert.lengthOf(logs.find(["Error"], "request 1006"), 0)
      })).pipe(Effect.provide(logs.layer))
  }, 60_000)
})
