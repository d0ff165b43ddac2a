/**
 * The durable toolset's own tables, beside effect/cluster's, and every query on them.
 *
 * - `async_toolset_call`: one row per call: the model's call, where its lifecycle is (`status`),
 *   the output the model got for it once it got one, how many updates it recorded (`steps`, and
 *   of those the `_update_<n>` pairs: `updates`), its deadline, and a `version` raised by every
 *   write, which a process following a call another process runs compares.
 * - `async_toolset_item`: the session's chat items, keyed by item id (storing one again is a
 *   no-op). A toolset's items carry its id, their call's base and step, the synthetic call id,
 *   and `owed` while a reply for them is owed.
 *
 * Every write is one statement (a data-modifying `WITH` where it touches both tables), so it is
 * atomic on its own, needs no explicit transaction, and costs one round trip; a call's writes lock
 * its row first, so they take turns. The SQL is PostgreSQL's (PGlite and a server alike).
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
  `CREATE TABLE IF NOT EXISTS async_toolset_call (
    session_id TEXT NOT NULL,
    base TEXT NOT NULL,
    toolset_id TEXT NOT NULL,
    call_item TEXT NOT NULL,
    call_item_id TEXT NOT NULL,
    dup_key TEXT,
    cancellable BOOLEAN NOT NULL,
    status TEXT NOT NULL,
    stop_cause TEXT,
    after_bases TEXT NOT NULL DEFAULT '',
    first_output TEXT,
    first_message TEXT,
    timeout_ms DOUBLE PRECISION,
    deadline DOUBLE PRECISION,
    steps INTEGER NOT NULL DEFAULT 0,
    updates INTEGER NOT NULL DEFAULT 0,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    version INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, base)
  )`,
  `CREATE INDEX IF NOT EXISTS async_toolset_call_live ON async_toolset_call (session_id, toolset_id)
    WHERE status IN ('waiting', 'running', 'stopping')`,
  `CREATE TABLE IF NOT EXISTS async_toolset_item (
    session_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ord BIGSERIAL,
    created_at DOUBLE PRECISION NOT NULL,
    item TEXT NOT NULL,
    toolset_id TEXT,
    base TEXT,
    step INTEGER,
    call_id TEXT,
    message TEXT,
    owed BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (session_id, item_id)
  )`,
  `CREATE INDEX IF NOT EXISTS async_toolset_item_of_call ON async_toolset_item (session_id, base, step)`,
  `CREATE INDEX IF NOT EXISTS async_toolset_item_owed ON async_toolset_item (session_id, toolset_id) WHERE owed`,
  // retention: the call's execution's stored messages (effect/cluster's) were deleted
  `ALTER TABLE async_toolset_call ADD COLUMN IF NOT EXISTS cleared BOOLEAN NOT NULL DEFAULT FALSE`
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
const migrationLock = 2_406_151_118

// --- rows ----------------------------------------------------------------------------------------

/**
 * Where a call is. `waiting` (for the calls it replaces), `running` and `stopping` (asked to stop:
 * its execution ends it) are live; the others are ends.
 */
export type Status = "waiting" | "running" | "stopping" | "done" | "error" | "cancelled" | "timed-out"

export type End = Exclude<Status, "waiting" | "running" | "stopping">

export const isLive = (status: Status): boolean => status === "waiting" || status === "running" || status === "stopping"

/** Why a call was asked to stop (the engine's `StopCause`s that end a durable call). */
export type StopCause = "cancelled" | "replaced" | "drained" | "timed-out" | "abandoned"

export interface CallRow {
  readonly base: string
  readonly toolsetId: string
  readonly callItem: string
  readonly callItemId: string
  readonly dupKey: string | null
  readonly cancellable: boolean
  readonly status: Status
  readonly stopCause: StopCause | null
  /** The calls it waits for (`waiting`), by base. */
  readonly after: ReadonlyArray<string>
  readonly firstOutput: string | null
  /** The first update as the tool gave it (its string, or the JSON of its value). */
  readonly firstMessage: string | null
  readonly timeoutMs: number | null
  readonly deadline: number | null
  readonly steps: number
  readonly updates: number
  readonly startedAt: number
  readonly endedAt: number | null
  readonly version: number
}

export interface ItemRow {
  readonly itemId: string
  readonly createdAt: number
  readonly item: string
  readonly toolsetId: string | null
  readonly base: string | null
  /** `n` for `_update_<n>`, -1 for `_final`, 0 for a call and its first output put back into the chat. */
  readonly step: number | null
  readonly callId: string | null
  /** An update as the tool gave it (its string, or the JSON of its value). */
  readonly message: string | null
  readonly owed: boolean
}

const text = (v: unknown): string | null => v === null || v === undefined ? null : String(v)
const num = (v: unknown): number | null => v === null || v === undefined ? null : Number(v)

const callRow = (r: Record<string, unknown>): CallRow => ({
  base: String(r.base),
  toolsetId: String(r.toolset_id),
  callItem: String(r.call_item),
  callItemId: String(r.call_item_id),
  dupKey: text(r.dup_key),
  cancellable: r.cancellable === true,
  status: String(r.status) as Status,
  stopCause: text(r.stop_cause) as StopCause | null,
  after: r.after_bases === null || r.after_bases === undefined || r.after_bases === "" ? [] : JSON.parse(String(r.after_bases)),
  firstOutput: text(r.first_output),
  firstMessage: text(r.first_message),
  timeoutMs: num(r.timeout_ms),
  deadline: num(r.deadline),
  steps: Number(r.steps),
  updates: Number(r.updates),
  startedAt: Number(r.started_at),
  endedAt: num(r.ended_at),
  version: Number(r.version)
})

const itemRow = (r: Record<string, unknown>): ItemRow => ({
  itemId: String(r.item_id),
  createdAt: Number(r.created_at),
  item: String(r.item),
  toolsetId: text(r.toolset_id),
  base: text(r.base),
  step: num(r.step),
  callId: text(r.call_id),
  message: text(r.message),
  owed: r.owed === true
})

const itemColumns = "item_id, created_at, item, toolset_id, base, step, call_id, message, owed"

// --- calls ---------------------------------------------------------------------------------------

export interface NewCall {
  readonly sessionId: string
  readonly base: string
  readonly toolsetId: string
  readonly call: FunctionCall
  readonly dupKey: string | undefined
  readonly cancellable: boolean
  readonly status: "waiting" | "running"
  readonly after: ReadonlyArray<string>
  readonly timeoutMs: number | undefined
  /** When a running call times out; a waiting call gets its deadline when it begins to run. */
  readonly deadline: number | undefined
  readonly startedAt: number
}

/**
 * Records a new call under `base`, unless a call has it already: then that call's row is returned
 * (the same model call recorded before, or another call that had this base).
 */
export const claimCall = (sql: SqlClient, c: NewCall): Effect.Effect<CallRow | undefined, SqlError> =>
  Effect.flatMap(
    sql`INSERT INTO async_toolset_call
        (session_id, base, toolset_id, call_item, call_item_id, dup_key, cancellable, status, after_bases,
         timeout_ms, deadline, started_at)
      VALUES (${c.sessionId}, ${c.base}, ${c.toolsetId}, ${encodeItem(c.call)}, ${c.call.id}, ${c.dupKey ?? null},
        ${c.cancellable}, ${c.status}, ${c.after.length === 0 ? "" : JSON.stringify(c.after)},
        ${c.timeoutMs ?? null}, ${c.deadline ?? null}, ${c.startedAt})
      ON CONFLICT (session_id, base) DO NOTHING
      RETURNING base`,
    (inserted) => inserted.length > 0 ? Effect.succeed(undefined) : readCall(sql, c.sessionId, c.base)
  )

export const readCall = (sql: SqlClient, sessionId: string, base: string): Effect.Effect<CallRow | undefined, SqlError> =>
  Effect.map(
    sql`SELECT * FROM async_toolset_call WHERE session_id = ${sessionId} AND base = ${base}`,
    (rows) => rows.length === 0 ? undefined : callRow(rows[0]!)
  )

/** The live calls of a toolset in a session, oldest first. */
export const liveCalls = (sql: SqlClient, sessionId: string, toolsetId: string): Effect.Effect<ReadonlyArray<CallRow>, SqlError> =>
  Effect.map(
    sql`SELECT * FROM async_toolset_call WHERE session_id = ${sessionId} AND toolset_id = ${toolsetId}
      AND status IN ('waiting', 'running', 'stopping') ORDER BY started_at, base`,
    (rows) => rows.map(callRow)
  )

/** The versions of some calls now (for a process following calls another process runs). */
export const versions = (
  sql: SqlClient,
  sessionId: string,
  bases: ReadonlyArray<string>
): Effect.Effect<ReadonlyMap<string, number>, SqlError> =>
  bases.length === 0
    ? Effect.succeed(new Map())
    : Effect.map(
      sql`SELECT base, version FROM async_toolset_call WHERE session_id = ${sessionId} AND ${sql.in("base", bases)}`,
      (rows) => new Map(rows.map((r) => [String(r.base), Number(r.version)]))
    )

/** How many of `bases` are still live (a waiting call begins once none is). */
export const liveAmong = (sql: SqlClient, sessionId: string, bases: ReadonlyArray<string>): Effect.Effect<number, SqlError> =>
  bases.length === 0
    ? Effect.succeed(0)
    : Effect.map(
      sql`SELECT count(*) AS n FROM async_toolset_call WHERE session_id = ${sessionId}
        AND ${sql.in("base", bases)} AND status IN ('waiting', 'running', 'stopping')`,
      (rows) => Number(rows[0]!.n)
    )

/** A waiting call begins to run, with its deadline from now. Returns its row (whatever its status). */
export const beginRunning = (
  sql: SqlClient,
  sessionId: string,
  base: string,
  now: number
): Effect.Effect<CallRow | undefined, SqlError> =>
  Effect.map(
    sql`WITH u AS (
        UPDATE async_toolset_call SET status = 'running', version = version + 1,
          deadline = CASE WHEN timeout_ms IS NULL THEN NULL ELSE ${now} + timeout_ms END
        WHERE session_id = ${sessionId} AND base = ${base} AND status = 'waiting'
        RETURNING *
      )
      SELECT * FROM u UNION ALL SELECT * FROM async_toolset_call
        WHERE session_id = ${sessionId} AND base = ${base} AND NOT EXISTS (SELECT 1 FROM u)`,
    (rows) => rows.length === 0 ? undefined : callRow(rows[0]!)
  )

/** What recording an update did. */
export type Recorded =
  | { readonly _tag: "First" }
  | { readonly _tag: "Pair"; readonly n: number }
  | { readonly _tag: "Dropped" }

export interface UpdateRecord {
  readonly sessionId: string
  readonly base: string
  readonly toolsetId: string
  /** The body's count of updates before this one (in this run and the runs before). */
  readonly steps: number
  /** The `_update_<n>` pairs recorded before this one. */
  readonly updates: number
  /** The output the model gets if this is the call's first: its first update. */
  readonly first: FunctionCallOutput
  /** The pair `_update_<updates + 1>` if it is not. */
  readonly pair: readonly [FunctionCall, FunctionCallOutput]
  readonly message: string
}

/**
 * Records an update of a running call: the call's first output if it has none (B2), else the next
 * `_update_<n>` pair, owed a reply (B4); nothing if the call is not running any more (E2) or this
 * step was recorded before (a replay). One statement.
 */
export const recordUpdate = (sql: SqlClient, u: UpdateRecord): Effect.Effect<Recorded, SqlError> => {
  const n = u.updates + 1
  const [fc, fco] = u.pair
  return Effect.map(
    sql`WITH c AS (
        UPDATE async_toolset_call SET version = version + 1, steps = steps + 1,
          first_output = COALESCE(first_output, ${encodeItem(u.first)}),
          first_message = CASE WHEN first_output IS NULL THEN ${u.message} ELSE first_message END,
          updates = CASE WHEN first_output IS NULL THEN updates ELSE updates + 1 END
        WHERE session_id = ${u.sessionId} AND base = ${u.base} AND status = 'running' AND steps = ${u.steps}
        RETURNING updates
      ), i AS (
        INSERT INTO async_toolset_item (session_id, item_id, created_at, item, toolset_id, base, step, call_id, message, owed)
        SELECT ${u.sessionId}, v.item_id, ${fc.createdAt}, v.item, ${u.toolsetId}, ${u.base}, ${n}, ${fc.callId}, v.message, v.owed
        FROM c, (VALUES (${fc.id}, ${encodeItem(fc)}, ${null}::TEXT, FALSE), (${fco.id}, ${encodeItem(fco)}, ${u.message}, TRUE))
          AS v(item_id, item, message, owed)
        WHERE c.updates = ${n}
        ON CONFLICT (session_id, item_id) DO NOTHING
        RETURNING 1
      )
      SELECT (SELECT updates FROM c) AS updates`,
    (rows): Recorded => {
      const updates = num(rows[0]?.updates)
      return updates === null ? dropped : updates === n ? { _tag: "Pair", n } : first
    }
  )
}

const dropped: Recorded = { _tag: "Dropped" }
const first: Recorded = { _tag: "First" }

/** How a call's execution ended, as its body records it. */
export interface EndRecord {
  readonly sessionId: string
  readonly base: string
  readonly toolsetId: string
  readonly status: End
  /** The output the model gets if it got none yet (the call never updated): its whole result. */
  readonly output: FunctionCallOutput
  /** The `_final` pair, for a call that updated before and has something to say. */
  readonly final: readonly [FunctionCall, FunctionCallOutput] | undefined
  readonly message: string | undefined
  readonly now: number
}

/** What recording an end found: the call was running (its end is the result) or stopping (stopped), or had ended. */
export type EndFound = "running" | "stopping" | "ended"

/**
 * Records the end of a call's execution. A call asked to stop ends as cancelled (or timed out),
 * adding nothing; a running call that got no output yet gets `output`; else the `_final` pair is
 * added, owed a reply. Nothing for a call that ended already (a replay). One statement.
 */
export const recordEnd = (sql: SqlClient, e: EndRecord): Effect.Effect<EndFound, SqlError> => {
  const final = e.final
  return Effect.map(
    sql`WITH old AS (
        SELECT status, first_output IS NULL AS no_first FROM async_toolset_call
        WHERE session_id = ${e.sessionId} AND base = ${e.base} FOR UPDATE
      ), c AS (
        UPDATE async_toolset_call SET version = version + 1, ended_at = ${e.now},
          status = CASE WHEN old.status = 'running' THEN ${e.status}
            WHEN stop_cause = 'timed-out' THEN 'timed-out' ELSE 'cancelled' END,
          first_output = CASE WHEN old.status = 'running' AND old.no_first THEN ${encodeItem(e.output)}
            ELSE first_output END
        FROM old
        WHERE async_toolset_call.session_id = ${e.sessionId} AND async_toolset_call.base = ${e.base}
          AND old.status IN ('running', 'stopping', 'waiting')
        RETURNING old.status AS was, old.no_first AS no_first
      ), i AS (
        INSERT INTO async_toolset_item (session_id, item_id, created_at, item, toolset_id, base, step, call_id, message, owed)
        SELECT ${e.sessionId}, v.item_id, ${e.now}, v.item, ${e.toolsetId}, ${e.base}, -1, ${final?.[0].callId ?? null}, v.message, v.owed
        FROM c, (VALUES
          (${final?.[0].id ?? null}::TEXT, ${final === undefined ? null : encodeItem(final[0])}::TEXT, ${null}::TEXT, FALSE),
          (${final?.[1].id ?? null}::TEXT, ${final === undefined ? null : encodeItem(final[1])}::TEXT, ${e.message ?? null}::TEXT, TRUE))
          AS v(item_id, item, message, owed)
        WHERE c.was = 'running' AND NOT c.no_first AND v.item_id IS NOT NULL
        ON CONFLICT (session_id, item_id) DO NOTHING
        RETURNING 1
      )
      SELECT (SELECT was FROM c) AS was`,
    (rows): EndFound => {
      const was = text(rows[0]?.was)
      return was === "running" ? "running" : was === null ? "ended" : "stopping"
    }
  )
}

/** What the engine asks of a call it stopped. */
export interface StopRecord {
  readonly sessionId: string
  readonly base: string
  readonly toolsetId: string
  readonly cause: StopCause
  /**
   * The output the model was given if the call had none yet (cancelled, timed out): recorded as
   * the call's first output, whatever the body recorded meanwhile (the model was told this).
   */
  readonly given: FunctionCallOutput | undefined
  /** The `_update_<n>` pairs that reached the chat: later ones (and a `_final`) are withdrawn (E2). */
  readonly delivered: number
  /** A timeout's `_final` notice, for a call that answered before (owed a reply). */
  readonly notice: readonly [FunctionCall, FunctionCallOutput] | undefined
  readonly now: number
}

/**
 * Asks a call to stop (its execution sees it and ends it). A cancel is the engine's word: it holds
 * even if the call ended meanwhile (what the model was told stands, what it was not told is
 * withdrawn). A timeout holds only for a call still running: returns `false` if it had ended (its
 * result stands, E7). A waiting call ends at once, cancelled. One statement.
 */
export const requestStop = (sql: SqlClient, s: StopRecord): Effect.Effect<boolean, SqlError> => {
  const notice = s.notice
  const given = s.given === undefined ? null : encodeItem(s.given)
  const timedOut = s.cause === "timed-out"
  return Effect.map(
    sql`WITH old AS (
        SELECT status FROM async_toolset_call WHERE session_id = ${s.sessionId} AND base = ${s.base} FOR UPDATE
      ), c AS (
        UPDATE async_toolset_call SET version = version + 1, stop_cause = ${s.cause},
          status = CASE WHEN old.status = 'running' THEN 'stopping'
            WHEN old.status = 'waiting' THEN 'cancelled'
            WHEN old.status = 'stopping' THEN 'stopping' ELSE 'cancelled' END,
          ended_at = CASE WHEN old.status IN ('running', 'stopping') THEN ended_at ELSE ${s.now} END,
          first_output = COALESCE(${given}::TEXT, first_output)
        FROM old
        WHERE async_toolset_call.session_id = ${s.sessionId} AND async_toolset_call.base = ${s.base}
          AND (${!timedOut} OR old.status = 'running')
        RETURNING old.status AS was
      ), withdrawn AS (
        DELETE FROM async_toolset_item WHERE session_id = ${s.sessionId} AND base = ${s.base}
          AND (step > ${s.delivered} OR step = -1) AND EXISTS (SELECT 1 FROM c)
      ), i AS (
        INSERT INTO async_toolset_item (session_id, item_id, created_at, item, toolset_id, base, step, call_id, message, owed)
        SELECT ${s.sessionId}, v.item_id, ${s.now}, v.item, ${s.toolsetId}, ${s.base}, -2, ${notice?.[0].callId ?? null}, NULL, v.owed
        FROM c, (VALUES
          (${notice?.[0].id ?? null}::TEXT, ${notice === undefined ? null : encodeItem(notice[0])}::TEXT, FALSE),
          (${notice?.[1].id ?? null}::TEXT, ${notice === undefined ? null : encodeItem(notice[1])}::TEXT, TRUE))
          AS v(item_id, item, owed)
        WHERE v.item_id IS NOT NULL
        ON CONFLICT (session_id, item_id) DO NOTHING
        RETURNING 1
      )
      SELECT (SELECT was FROM c) AS was`,
    (rows) => text(rows[0]?.was) !== null
  )
}

/**
 * The output a caller gets when the toolset closes while it waits: `placeholder` (the call goes on
 * and will be told), recorded as the call's first output, unless it has one (then that one).
 * `undefined` if the call is not recorded.
 */
export const recordPlaceholder = (
  sql: SqlClient,
  sessionId: string,
  base: string,
  placeholder: FunctionCallOutput
): Effect.Effect<string | undefined, SqlError> =>
  Effect.map(
    sql`UPDATE async_toolset_call SET version = version + 1, first_output = COALESCE(first_output, ${encodeItem(placeholder)})
      WHERE session_id = ${sessionId} AND base = ${base}
      RETURNING first_output`,
    (rows) => text(rows[0]?.first_output) ?? undefined
  )

// --- items ---------------------------------------------------------------------------------------

/** A call's items after `step` (its later `_update_<n>`, its `_final`, a timeout's notice), in order. */
export const itemsOfCall = (
  sql: SqlClient,
  sessionId: string,
  base: string,
  afterStep: number
): Effect.Effect<ReadonlyArray<ItemRow>, SqlError> =>
  Effect.map(
    sql`SELECT ${sql.unsafe(itemColumns)} FROM async_toolset_item WHERE session_id = ${sessionId} AND base = ${base}
      AND (step > ${afterStep} OR step < 0) ORDER BY CASE WHEN step < 0 THEN 1000000000 - step ELSE step END, ord`,
    (rows) => rows.map(itemRow)
  )

/** Stores items of the agent's own; `replied`: items its reply answers, owed nothing from the same statement. */
export const saveItems = (
  sql: SqlClient,
  sessionId: string,
  items: ReadonlyArray<ChatItem>,
  replied: ReadonlyArray<string>
): Effect.Effect<void, SqlError> => {
  if (items.length === 0) return markReplied(sql, sessionId, replied)
  const rows = items.map((item): Record<string, unknown> => ({
    session_id: sessionId,
    item_id: item.id,
    created_at: item.createdAt,
    item: encodeItem(item),
    call_id: item._tag === "ChatMessage" ? null : item.callId,
    owed: false
  }))
  return replied.length === 0
    ? Effect.asVoid(sql`INSERT INTO async_toolset_item ${sql.insert(rows as unknown as NonEmpty)} ON CONFLICT (session_id, item_id) DO NOTHING`)
    : Effect.asVoid(sql`WITH m AS (
        UPDATE async_toolset_item SET owed = FALSE WHERE session_id = ${sessionId} AND ${sql.in("item_id", replied)}
      ) INSERT INTO async_toolset_item ${sql.insert(rows as unknown as NonEmpty)} ON CONFLICT (session_id, item_id) DO NOTHING`)
}

type NonEmpty = readonly [Record<string, unknown>, ...Array<Record<string, unknown>>]

/** The whole chat of a session, in creation order. */
export const loadChat = (sql: SqlClient, sessionId: string): Effect.Effect<ReadonlyArray<ItemRow>, SqlError> =>
  Effect.map(
    sql`SELECT ${sql.unsafe(itemColumns)} FROM async_toolset_item WHERE session_id = ${sessionId} ORDER BY created_at, ord`,
    (rows) => rows.map(itemRow)
  )

/** The items of a toolset owed a reply, with the other half of each pair, in order. */
export const owedItems = (sql: SqlClient, sessionId: string, toolsetId: string): Effect.Effect<ReadonlyArray<ItemRow>, SqlError> =>
  Effect.map(
    sql`SELECT ${sql.unsafe(itemColumns)} FROM async_toolset_item WHERE session_id = ${sessionId} AND toolset_id = ${toolsetId}
      AND call_id IN (SELECT call_id FROM async_toolset_item WHERE session_id = ${sessionId} AND toolset_id = ${toolsetId} AND owed)
      ORDER BY created_at, ord`,
    (rows) => rows.map(itemRow)
  )

/** A reply was asked for these items (or they were skipped): they are owed nothing any more. */
export const markReplied = (sql: SqlClient, sessionId: string, itemIds: ReadonlyArray<string>): Effect.Effect<void, SqlError> =>
  itemIds.length === 0
    ? Effect.void
    : Effect.asVoid(sql`UPDATE async_toolset_item SET owed = FALSE
        WHERE session_id = ${sessionId} AND ${sql.in("item_id", itemIds)}`)

/** Items reached the agent's chat later than they were recorded: they count from then on. */
export const restamp = (sql: SqlClient, sessionId: string, itemIds: ReadonlyArray<string>, createdAt: number) =>
  Effect.asVoid(sql`UPDATE async_toolset_item SET created_at = ${createdAt}
    WHERE session_id = ${sessionId} AND ${sql.in("item_id", itemIds)}`)

/**
 * Calls of a toolset whose output the model got (or was to get) but whose call is not in the
 * stored chat: the process that asked for them ended before the agent stored the pair.
 */
/**
 * Calls whose model call is not in the stored chat though they answered it (the process stopped
 * before the agent stored the turn). A call its caller abandoned (B9) is withdrawn: never put back.
 */
export const callsMissingFromChat = (sql: SqlClient, sessionId: string, toolsetId: string) =>
  Effect.map(
    sql`SELECT * FROM async_toolset_call c WHERE c.session_id = ${sessionId} AND c.toolset_id = ${toolsetId}
      AND c.first_output IS NOT NULL
      AND c.stop_cause IS DISTINCT FROM 'abandoned'
      AND NOT EXISTS (SELECT 1 FROM async_toolset_item i WHERE i.session_id = c.session_id AND i.item_id = c.call_item_id)
      ORDER BY c.started_at, c.base`,
    (rows) => rows.map(callRow)
  )

/** Puts a call and its output into the stored chat for a call missing from it; a reply is owed. */
export const restoreCall = (
  sql: SqlClient,
  sessionId: string,
  toolsetId: string,
  base: string,
  call: FunctionCall,
  output: FunctionCallOutput
): Effect.Effect<void, SqlError> =>
  Effect.asVoid(sql`INSERT INTO async_toolset_item
      (session_id, item_id, created_at, item, toolset_id, base, step, call_id, message, owed)
    VALUES
      (${sessionId}, ${call.id}, ${call.createdAt}, ${encodeItem(call)}, ${toolsetId}, ${base}, 0, ${call.callId}, NULL, FALSE),
      (${sessionId}, ${output.id}, ${output.createdAt}, ${encodeItem(output)}, ${toolsetId}, ${base}, 0, ${call.callId}, NULL, TRUE)
    ON CONFLICT (session_id, item_id) DO NOTHING`)

/**
 * Finished calls whose execution's stored messages are still kept, with their toolset (retention):
 * those ended before `endedBefore`, and (with `keep`) those beyond the `keep` most recently ended.
 * At most `limit`, oldest first.
 */
export const finishedToClear = (
  sql: SqlClient,
  options: { readonly endedBefore: number; readonly keep: number | undefined; readonly settledBefore: number; readonly limit: number }
): Effect.Effect<ReadonlyArray<{ readonly sessionId: string; readonly base: string; readonly toolsetId: string }>, SqlError> =>
  Effect.map(
    sql<{ session_id: string; base: string; toolset_id: string }>`SELECT session_id, base, toolset_id FROM (
        SELECT session_id, base, toolset_id, cleared, ended_at,
          row_number() OVER (ORDER BY ended_at DESC, session_id, base) AS newest
        FROM async_toolset_call WHERE status IN ('done', 'error', 'cancelled', 'timed-out')
      ) f
      WHERE NOT cleared AND ended_at < ${options.settledBefore}
        AND (ended_at < ${options.endedBefore} OR newest > ${options.keep ?? 2_147_483_647})
      ORDER BY ended_at LIMIT ${options.limit}`,
    (rows) => rows.map((r) => ({ sessionId: r.session_id, base: r.base, toolsetId: r.toolset_id }))
  )

/** The call's execution's stored messages were deleted (retention). */
export const markCleared = (sql: SqlClient, sessionId: string, base: string): Effect.Effect<void, SqlError> =>
  Effect.asVoid(sql`UPDATE async_toolset_call SET cleared = TRUE WHERE session_id = ${sessionId} AND base = ${base}`)
