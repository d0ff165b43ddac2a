/**
 * The queries on `async_toolset_call` (see `tables.ts`): a call claimed under its base, read, begun,
 * its updates, end and stop recorded. A write that also puts items into the chat does it in the same
 * statement.
 */
import { Effect } from "effect"
import type { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import type { FunctionCall, FunctionCallOutput } from "../../ChatContext.ts"
import { callRow, encodeItem, num, text } from "./tables.ts"
import type { CallRow, End, StopCause } from "./tables.ts"

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

/** What claiming a base did: recorded the call (its row as written), or found the base taken (by that row, if it is still there). */
export type Claim =
  | { readonly _tag: "Recorded"; readonly row: CallRow }
  | { readonly _tag: "Taken"; readonly row: CallRow | undefined }

/**
 * Records a new call under `base`, unless a call has it already: then that call's row is returned
 * (the same model call recorded before, or another call that had this base). The row recorded is
 * returned as written, for the execution in this process to start from without reading it again.
 */
export const claimCall = (sql: SqlClient, c: NewCall): Effect.Effect<Claim, SqlError> =>
  Effect.flatMap(
    sql`INSERT INTO async_toolset_call
        (session_id, base, toolset_id, call_item, call_item_id, dup_key, cancellable, status, after_bases,
         timeout_ms, deadline, started_at)
      VALUES (${c.sessionId}, ${c.base}, ${c.toolsetId}, ${encodeItem(c.call)}, ${c.call.id}, ${c.dupKey ?? null},
        ${c.cancellable}, ${c.status}, ${c.after.length === 0 ? "" : JSON.stringify(c.after)},
        ${c.timeoutMs ?? null}, ${c.deadline ?? null}, ${c.startedAt})
      ON CONFLICT (session_id, base) DO NOTHING
      RETURNING *`,
    (inserted): Effect.Effect<Claim, SqlError> =>
      inserted.length > 0
        ? Effect.succeed({ _tag: "Recorded", row: callRow(inserted[0]!) })
        : Effect.map(readCall(sql, c.sessionId, c.base), (row) => ({ _tag: "Taken", row }))
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

/**
 * A live call whose row cannot be run or followed (a corrupted store) ends as failed, so that it is
 * not taken up again at every start. Its row is otherwise left as it is, for whoever looks into it.
 */
export const markUnusable = (sql: SqlClient, sessionId: string, base: string, now: number): Effect.Effect<void, SqlError> =>
  Effect.asVoid(sql`UPDATE async_toolset_call SET status = 'error', ended_at = ${now}, version = version + 1
    WHERE session_id = ${sessionId} AND base = ${base} AND status IN ('waiting', 'running', 'stopping')`)
