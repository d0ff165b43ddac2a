/**
 * The durable toolset's own tables, beside effect/cluster's, and every query on them.
 *
 * - `async_toolset_sessions`: one row per session, holding the session's change counter `seq`.
 *   Every write to a session's chat or calls runs in a transaction that first raises that counter
 *   (which locks the row until commit) and stamps the rows it writes with the new values. So the
 *   writes of one session commit in `seq` order, and a reader that remembers the highest `seq` it
 *   saw never misses a row by reading `seq > last`.
 * - `async_toolset_chat`: the session's chat items, keyed by item id (inserting one again is a
 *   no-op). A toolset's items carry its id, their synthetic call id and step, and `owed` while a
 *   reply for them is owed.
 * - `async_toolset_calls`: one row per call: the model's call, its status, and the output the
 *   model got for it (its first update, or its whole result) once there is one.
 *
 * The SQL is PostgreSQL's (PGlite and a server alike), kept plain: `ON CONFLICT`, no JSON operators.
 */
import { Effect, Schema } from "effect"
import type { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import { ChatItem } from "../../ChatContext.ts"
import type { FunctionCall, FunctionCallOutput } from "../../ChatContext.ts"

// --- items as text -------------------------------------------------------------------------------

const ItemJson = Schema.toCodecJson(ChatItem)
const encodeItemJson = Schema.encodeSync(ItemJson)
const decodeItemJson = Schema.decodeUnknownSync(ItemJson)

/** A chat item as stored: its JSON text. */
export const encodeItem = (item: ChatItem): string => JSON.stringify(encodeItemJson(item))

/** A stored chat item; `createdAt`, when given, replaces the time in the text (the column is the truth). */
export const decodeItem = (text: string, createdAt?: number): ChatItem => {
  const encoded = JSON.parse(text) as Record<string, unknown>
  return decodeItemJson(createdAt === undefined ? encoded : { ...encoded, createdAt })
}

export const decodeCall = (text: string): FunctionCall => {
  const item = decodeItem(text)
  if (item._tag !== "FunctionCall") throw new Error(`stored call is a ${item._tag}`)
  return item
}

export const decodeOutput = (text: string): FunctionCallOutput => {
  const item = decodeItem(text)
  if (item._tag !== "FunctionCallOutput") throw new Error(`stored output is a ${item._tag}`)
  return item
}

// --- schema --------------------------------------------------------------------------------------

const migration = [
  `CREATE TABLE IF NOT EXISTS async_toolset_sessions (
    session_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
  )`,
  `CREATE TABLE IF NOT EXISTS async_toolset_chat (
    session_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    item TEXT NOT NULL,
    toolset_id TEXT,
    call_id TEXT,
    step INTEGER,
    message TEXT,
    owed BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (session_id, item_id)
  )`,
  `CREATE INDEX IF NOT EXISTS async_toolset_chat_by_seq ON async_toolset_chat (session_id, seq)`,
  `CREATE TABLE IF NOT EXISTS async_toolset_calls (
    session_id TEXT NOT NULL,
    base TEXT NOT NULL,
    toolset_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    call_item TEXT NOT NULL,
    call_item_id TEXT NOT NULL,
    dup_key TEXT NOT NULL,
    cancellable BOOLEAN NOT NULL,
    status TEXT NOT NULL,
    first_output TEXT,
    first_message TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    seq INTEGER NOT NULL,
    PRIMARY KEY (session_id, base)
  )`,
  `CREATE INDEX IF NOT EXISTS async_toolset_calls_by_seq ON async_toolset_calls (session_id, seq)`
]

/**
 * Creates the tables if missing. Runners starting together all run this: a transaction-scoped
 * advisory lock makes them take turns (concurrent `CREATE TABLE IF NOT EXISTS` can fail on
 * PostgreSQL).
 */
export const migrate = (sql: SqlClient): Effect.Effect<void, SqlError> =>
  sql.withTransaction(Effect.gen(function*() {
    yield* sql`SELECT pg_advisory_xact_lock(${migrationLock})`
    for (const statement of migration) yield* sql.unsafe(statement)
  }))

/** "async_toolset" as a number, for the advisory lock. */
const migrationLock = 2_406_151_117

// --- rows ----------------------------------------------------------------------------------------

/** What a call's status can be. `running` and `cancelling` are live; the others are ends. */
export type Status = "running" | "cancelling" | "done" | "error" | "cancelled" | "timed-out"

export const isLive = (status: Status): boolean => status === "running" || status === "cancelling"

export interface CallRow {
  readonly base: string
  readonly toolsetId: string
  readonly callId: string
  readonly executionId: string
  readonly callItem: string
  readonly callItemId: string
  readonly dupKey: string
  readonly cancellable: boolean
  readonly status: Status
  readonly firstOutput: string | null
  /** The first update as the tool gave it (its string, or the JSON of its value). */
  readonly firstMessage: string | null
  readonly startedAt: number
  readonly endedAt: number | null
  readonly seq: number
}

export interface ChatRow {
  readonly itemId: string
  readonly seq: number
  readonly createdAt: number
  readonly item: string
  readonly toolsetId: string | null
  readonly callId: string | null
  readonly step: number | null
  /** An update as the tool gave it (its string, or the JSON of its value). */
  readonly message: string | null
  readonly owed: boolean
}

const callRow = (r: Record<string, unknown>): CallRow => ({
  base: String(r.base),
  toolsetId: String(r.toolset_id),
  callId: String(r.call_id),
  executionId: String(r.execution_id),
  callItem: String(r.call_item),
  callItemId: String(r.call_item_id),
  dupKey: String(r.dup_key),
  cancellable: r.cancellable === true,
  status: String(r.status) as Status,
  firstOutput: r.first_output === null || r.first_output === undefined ? null : String(r.first_output),
  firstMessage: r.first_message === null || r.first_message === undefined ? null : String(r.first_message),
  startedAt: Number(r.started_at),
  endedAt: r.ended_at === null || r.ended_at === undefined ? null : Number(r.ended_at),
  seq: Number(r.seq)
})

const chatRow = (r: Record<string, unknown>): ChatRow => ({
  itemId: String(r.item_id),
  seq: Number(r.seq),
  createdAt: Number(r.created_at),
  item: String(r.item),
  toolsetId: r.toolset_id === null || r.toolset_id === undefined ? null : String(r.toolset_id),
  callId: r.call_id === null || r.call_id === undefined ? null : String(r.call_id),
  step: r.step === null || r.step === undefined ? null : Number(r.step),
  message: r.message === null || r.message === undefined ? null : String(r.message),
  owed: r.owed === true
})

// --- the session counter -------------------------------------------------------------------------

/**
 * Raises the session's counter by `k` and returns its new value; the rows of this transaction are
 * stamped `value - k + 1 … value`. Must run inside a transaction: the row stays locked until it
 * ends, so the session's writers commit one after the other.
 */
const bump = (sql: SqlClient, sessionId: string, k: number): Effect.Effect<number, SqlError> =>
  Effect.map(
    sql<{ seq: number }>`INSERT INTO async_toolset_sessions (session_id, seq) VALUES (${sessionId}, ${k})
      ON CONFLICT (session_id) DO UPDATE SET seq = async_toolset_sessions.seq + ${k}
      RETURNING seq`,
    (rows) => Number(rows[0]!.seq)
  )

/** The session's counter now (0 for a session never written). */
export const headSeq = (sql: SqlClient, sessionId: string): Effect.Effect<number, SqlError> =>
  Effect.map(
    sql<{ seq: number }>`SELECT seq FROM async_toolset_sessions WHERE session_id = ${sessionId}`,
    (rows) => rows.length === 0 ? 0 : Number(rows[0]!.seq)
  )

// --- chat ----------------------------------------------------------------------------------------

/** A chat item to store, with what the toolset knows of it. */
export interface NewChatItem {
  readonly item: ChatItem
  readonly toolsetId?: string | undefined
  readonly callId?: string | undefined
  readonly step?: number | undefined
  readonly message?: string | undefined
  readonly owed?: boolean | undefined
}

/** Inserts items in a transaction of the session; an item already stored stays as it is. */
const insertItems = (sql: SqlClient, sessionId: string, items: ReadonlyArray<NewChatItem>) =>
  Effect.gen(function*() {
    if (items.length === 0) return
    const last = yield* bump(sql, sessionId, items.length)
    let seq = last - items.length
    for (const { callId, item, message, owed, step, toolsetId } of items) {
      seq++
      yield* sql`INSERT INTO async_toolset_chat
          (session_id, item_id, seq, created_at, item, toolset_id, call_id, step, message, owed)
        VALUES (${sessionId}, ${item.id}, ${seq}, ${item.createdAt}, ${encodeItem(item)},
          ${toolsetId ?? null}, ${callId ?? null}, ${step ?? null}, ${message ?? null}, ${owed === true})
        ON CONFLICT (session_id, item_id) DO NOTHING`
    }
  })

/**
 * Saves items of the agent's own (messages, its calls and their outputs). `replied`: items that
 * these answer (the agent's reply to them is among the items), owed nothing from the same commit.
 */
export const saveItems = (
  sql: SqlClient,
  sessionId: string,
  items: ReadonlyArray<ChatItem>,
  replied: ReadonlyArray<string> = []
) =>
  sql.withTransaction(Effect.andThen(
    insertItems(sql, sessionId, items.map((item) => ({ item }))),
    markReplied(sql, sessionId, replied)
  ))

/** The whole chat of a session, in creation order. */
export const loadChat = (sql: SqlClient, sessionId: string): Effect.Effect<ReadonlyArray<ChatRow>, SqlError> =>
  Effect.map(
    sql`SELECT item_id, seq, created_at, item, toolset_id, call_id, step, message, owed FROM async_toolset_chat
      WHERE session_id = ${sessionId} ORDER BY created_at, seq`,
    (rows) => rows.map(chatRow)
  )

/** The pairs of a toolset owed a reply (the call and the output of each). */
export const owedItems = (sql: SqlClient, sessionId: string, toolsetId: string) =>
  Effect.map(
    sql`SELECT item_id, seq, created_at, item, toolset_id, call_id, step, message, owed FROM async_toolset_chat
      WHERE session_id = ${sessionId} AND toolset_id = ${toolsetId} AND call_id IN (
        SELECT call_id FROM async_toolset_chat WHERE session_id = ${sessionId} AND toolset_id = ${toolsetId} AND owed
      ) ORDER BY seq`,
    (rows) => rows.map(chatRow)
  )

/** A reply was requested for these items (or given up on): they are owed nothing any more. */
export const markReplied = (sql: SqlClient, sessionId: string, itemIds: ReadonlyArray<string>) =>
  itemIds.length === 0
    ? Effect.void
    : Effect.asVoid(sql`UPDATE async_toolset_chat SET owed = FALSE
        WHERE session_id = ${sessionId} AND ${sql.in("item_id", itemIds)}`)

/** Items reached the agent's chat later than they were recorded: they count from then on. */
export const restamp = (sql: SqlClient, sessionId: string, itemIds: ReadonlyArray<string>, createdAt: number) =>
  Effect.asVoid(sql`UPDATE async_toolset_chat SET created_at = ${createdAt}
    WHERE session_id = ${sessionId} AND ${sql.in("item_id", itemIds)}`)

// --- changes -------------------------------------------------------------------------------------

export interface Changes {
  /** The session counter the changes go up to. */
  readonly seq: number
  readonly items: ReadonlyArray<ChatRow>
  readonly calls: ReadonlyArray<CallRow>
}

/** What a toolset's rows of the session became after `after` (up to the counter read first). */
export const changes = (sql: SqlClient, sessionId: string, toolsetId: string, after: number) =>
  Effect.gen(function*() {
    const seq = yield* headSeq(sql, sessionId)
    if (seq <= after) return { seq: after, items: [], calls: [] } satisfies Changes
    const items = yield* sql`SELECT item_id, seq, created_at, item, toolset_id, call_id, step, message, owed FROM async_toolset_chat
      WHERE session_id = ${sessionId} AND toolset_id = ${toolsetId} AND seq > ${after} AND seq <= ${seq} ORDER BY seq`
    const calls = yield* sql`SELECT * FROM async_toolset_calls
      WHERE session_id = ${sessionId} AND toolset_id = ${toolsetId} AND seq > ${after} AND seq <= ${seq} ORDER BY seq`
    return { seq, items: items.map(chatRow), calls: calls.map(callRow) } satisfies Changes
  })

// --- calls ---------------------------------------------------------------------------------------

export interface NewCall {
  readonly sessionId: string
  readonly base: string
  readonly toolsetId: string
  readonly executionId: string
  readonly call: FunctionCall
  readonly dupKey: string
  readonly cancellable: boolean
  readonly startedAt: number
}

/**
 * Records a new call under `base`, unless a call has it already: then that call's row is returned
 * (the same model call started again, or another call that had this id).
 */
export const claimCall = (sql: SqlClient, c: NewCall) =>
  sql.withTransaction(Effect.gen(function*() {
    const seq = yield* bump(sql, c.sessionId, 1)
    const inserted = yield* sql`INSERT INTO async_toolset_calls
        (session_id, base, toolset_id, call_id, execution_id, call_item, call_item_id, dup_key, cancellable,
         status, first_output, first_message, started_at, ended_at, seq)
      VALUES (${c.sessionId}, ${c.base}, ${c.toolsetId}, ${c.call.callId}, ${c.executionId}, ${encodeItem(c.call)},
        ${c.call.id}, ${c.dupKey}, ${c.cancellable}, 'running', NULL, NULL, ${c.startedAt}, NULL, ${seq})
      ON CONFLICT (session_id, base) DO NOTHING
      RETURNING base`
    if (inserted.length > 0) return undefined
    return yield* readCall(sql, c.sessionId, c.base)
  }))

export const readCall = (sql: SqlClient, sessionId: string, base: string) =>
  Effect.map(
    sql`SELECT * FROM async_toolset_calls WHERE session_id = ${sessionId} AND base = ${base}`,
    (rows) => rows.length === 0 ? undefined : callRow(rows[0]!)
  )

/** The calls of a toolset still running (or being cancelled) in the session. */
export const liveCalls = (sql: SqlClient, sessionId: string, toolsetId: string) =>
  Effect.map(
    sql`SELECT * FROM async_toolset_calls WHERE session_id = ${sessionId} AND toolset_id = ${toolsetId}
      AND status IN ('running', 'cancelling') ORDER BY started_at, seq`,
    (rows) => rows.map(callRow)
  )

/**
 * Calls of a toolset whose output the model got (or was to get) but whose call is not in the chat:
 * the process that asked for them ended before the agent stored the pair.
 */
export const callsMissingFromChat = (sql: SqlClient, sessionId: string, toolsetId: string) =>
  Effect.map(
    sql`SELECT * FROM async_toolset_calls c WHERE c.session_id = ${sessionId} AND c.toolset_id = ${toolsetId}
      AND c.first_output IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM async_toolset_chat i WHERE i.session_id = c.session_id AND i.item_id = c.call_item_id)
      ORDER BY c.started_at, c.seq`,
    (rows) => rows.map(callRow)
  )

/** Puts a call and its output into the chat for a call missing from it; a reply is owed. */
export const restoreCall = (
  sql: SqlClient,
  sessionId: string,
  toolsetId: string,
  call: FunctionCall,
  output: FunctionCallOutput
) =>
  sql.withTransaction(insertItems(sql, sessionId, [
    { item: call, toolsetId, callId: call.callId, step: 0 },
    { item: output, toolsetId, callId: call.callId, step: 0, owed: true }
  ]))

/**
 * The first update of a running call: the output the model gets. Nothing if the call already has
 * one (its cancellation's) or is not running. Returns whether it was recorded.
 */
export const recordFirst = (
  sql: SqlClient,
  sessionId: string,
  base: string,
  output: FunctionCallOutput,
  message: string
) =>
  sql.withTransaction(Effect.gen(function*() {
    const seq = yield* bump(sql, sessionId, 1)
    const rows = yield* sql`UPDATE async_toolset_calls
      SET first_output = ${encodeItem(output)}, first_message = ${message}, seq = ${seq}
      WHERE session_id = ${sessionId} AND base = ${base} AND status = 'running' AND first_output IS NULL
      RETURNING base`
    return rows.length > 0
  }))

/**
 * A later update (or the final result) of a call, as a call/output pair in the chat, owed a reply.
 * Dropped (nothing written, `false`) once the call is being cancelled or has ended. Must run inside
 * a transaction (the activity's).
 */
export const recordPair = (
  sql: SqlClient,
  sessionId: string,
  toolsetId: string,
  base: string,
  step: number,
  pair: readonly [FunctionCall, FunctionCallOutput],
  message: string
) =>
  Effect.gen(function*() {
    const call = yield* readCall(sql, sessionId, base)
    if (call === undefined || call.status !== "running") return false
    yield* insertItems(sql, sessionId, [
      { item: pair[0], toolsetId, callId: pair[0].callId, step },
      { item: pair[1], toolsetId, callId: pair[1].callId, step, message, owed: true }
    ])
    return true
  })

/** How a call ended, as the workflow body records it. */
export interface End {
  readonly status: Exclude<Status, "running" | "cancelling">
  /** The output the model gets if it got none yet (the call never updated). */
  readonly output: FunctionCallOutput
  /** The `_final` pair, when the call updated before and has something to say. */
  readonly final: readonly [FunctionCall, FunctionCallOutput] | undefined
  readonly endedAt: number
}

/**
 * Records the end of a call. A call being cancelled ends as cancelled, whatever its outcome, and
 * adds nothing to the chat; a call that got no output yet gets `output`; else the `_final` pair is
 * inserted. Nothing happens for a call that ended already. Must run inside a transaction.
 */
export const recordEnd = <R>(
  sql: SqlClient,
  sessionId: string,
  toolsetId: string,
  base: string,
  end: (row: CallRow) => Effect.Effect<End, never, R>
) =>
  Effect.gen(function*() {
    const call = yield* readCall(sql, sessionId, base)
    if (call === undefined || !isLive(call.status)) return
    const e = yield* end(call)
    if (call.status === "cancelling") {
      const seq = yield* bump(sql, sessionId, 1)
      yield* sql`UPDATE async_toolset_calls SET status = 'cancelled', ended_at = ${e.endedAt}, seq = ${seq}
        WHERE session_id = ${sessionId} AND base = ${base}`
      return
    }
    if (call.firstOutput === null) {
      const seq = yield* bump(sql, sessionId, 1)
      yield* sql`UPDATE async_toolset_calls SET status = ${e.status}, ended_at = ${e.endedAt},
          first_output = ${encodeItem(e.output)}, seq = ${seq}
        WHERE session_id = ${sessionId} AND base = ${base}`
      return
    }
    if (e.final !== undefined) {
      yield* insertItems(sql, sessionId, [
        { item: e.final[0], toolsetId, callId: e.final[0].callId, step: -1 },
        { item: e.final[1], toolsetId, callId: e.final[1].callId, step: -1, owed: true }
      ])
    }
    const seq = yield* bump(sql, sessionId, 1)
    yield* sql`UPDATE async_toolset_calls SET status = ${e.status}, ended_at = ${e.endedAt}, seq = ${seq}
      WHERE session_id = ${sessionId} AND base = ${base}`
  })

/**
 * Asks a running call to stop: it is `cancelling` (the workflow body sees it and stops), and if the
 * model got no output yet, `cancelled` is that output. Returns whether the call was running.
 */
export const requestCancel = (sql: SqlClient, sessionId: string, base: string, cancelled: FunctionCallOutput) =>
  sql.withTransaction(Effect.gen(function*() {
    const seq = yield* bump(sql, sessionId, 1)
    const rows = yield* sql`UPDATE async_toolset_calls SET status = 'cancelling',
        first_output = COALESCE(first_output, ${encodeItem(cancelled)}), seq = ${seq}
      WHERE session_id = ${sessionId} AND base = ${base} AND status = 'running'
      RETURNING base`
    return rows.length > 0
  }))

/** The status of a call now (what the workflow body checks to see whether it is cancelled). */
export const callStatus = (sql: SqlClient, sessionId: string, base: string) =>
  Effect.map(
    sql`SELECT status FROM async_toolset_calls WHERE session_id = ${sessionId} AND base = ${base}`,
    (rows) => rows.length === 0 ? undefined : String(rows[0]!.status) as Status
  )
