/**
 * The durable toolset's own tables, beside effect/cluster's: their schema and migration, their rows,
 * and chat items as stored text. The queries on them are in `calls.ts` and `chatItems.ts`.
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
import { Effect, Result, Schema } from "effect"
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

/**
 * A stored chat item; `createdAt`, when given, replaces the time in the text (the column is the
 * truth). Throws, saying what is wrong, if the text is not a chat item (a corrupted store).
 */
export const decodeItem = (text: string, createdAt?: number): ChatItem => {
  let encoded: unknown
  try {
    encoded = JSON.parse(text)
  } catch {
    throw new Error(`its text is not JSON: ${preview(text)}`)
  }
  if (typeof encoded !== "object" || encoded === null) throw new Error(`its text is not a chat item: ${preview(text)}`)
  try {
    return decodeItemJson(createdAt === undefined ? encoded : { ...encoded, createdAt })
  } catch (error) {
    throw new Error(`its text is not a chat item (${error instanceof Error ? error.message : String(error)}): ${preview(text)}`)
  }
}

/** What a stored text holds, or why it cannot be read (a corrupted store): a plain reason. */
export const tryDecode = <A>(decode: () => A): Result.Result<A, string> =>
  Result.try({ try: decode, catch: (error) => error instanceof Error ? error.message : String(error) })

/** The start of a stored text, for a message. */
const preview = (text: string): string => JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text)

export const decodeCall = (text: string): FunctionCall => {
  const item = decodeItem(text)
  if (item._tag !== "FunctionCall") throw new Error(`it is a ${item._tag}, not a function call`)
  return item
}

export const decodeOutput = (text: string): FunctionCallOutput => {
  const item = decodeItem(text)
  if (item._tag !== "FunctionCallOutput") throw new Error(`it is a ${item._tag}, not a function call output`)
  return item
}

/** A call row's model call, or why the row cannot be run or followed (a corrupted store), in plain words. */
export const usable = (row: CallRow): Result.Result<FunctionCall, string> => {
  if (row.corrupt !== undefined) return Result.fail(row.corrupt)
  const call = tryDecode(() => decodeCall(row.callItem))
  return Result.isFailure(call) ? Result.fail(`the model call it records cannot be read: ${call.failure}`) : call
}

/** Why a call's row cannot be run or followed (a corrupted store), in plain words; `undefined` if it can. */
export const unusable = (row: CallRow): string | undefined => {
  const call = usable(row)
  return Result.isFailure(call) ? call.failure : undefined
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
    yield* checkColumns(sql)
  }))

/** The columns this version reads and writes, per table. */
const columns: Record<string, ReadonlyArray<string>> = {
  async_toolset_call: [
    "session_id", "base", "toolset_id", "call_item", "call_item_id", "dup_key", "cancellable", "status", "stop_cause",
    "after_bases", "first_output", "first_message", "timeout_ms", "deadline", "steps", "updates", "started_at", "ended_at",
    "version", "cleared"
  ],
  async_toolset_item: ["session_id", "item_id", "ord", "created_at", "item", "toolset_id", "base", "step", "call_id", "message", "owed"]
}

/**
 * The tables found (made by another version, or changed by hand) have the columns this version
 * uses, and none it would have to fill: else a defect at open naming what differs (rather than
 * calls failing one by one later).
 */
const checkColumns = (sql: SqlClient): Effect.Effect<void, SqlError> =>
  Effect.flatMap(
    sql<{ table_name: string; column_name: string; is_nullable: string; column_default: string | null; is_identity: string }>`
      SELECT table_name, column_name, is_nullable, column_default, is_identity FROM information_schema.columns
      WHERE table_schema = current_schema() AND table_name IN ('async_toolset_call', 'async_toolset_item')`,
    (found) => {
      const problems: Array<string> = []
      for (const [table, expected] of Object.entries(columns)) {
        const present = found.filter((c) => c.table_name === table)
        const missing = expected.filter((name) => !present.some((c) => c.column_name === name))
        const required = present.filter((c) =>
          !expected.includes(c.column_name) && c.is_nullable === "NO" && c.column_default === null && c.is_identity !== "YES"
        )
        if (missing.length > 0) problems.push(`${table} has no column ${missing.join(", ")}`)
        if (required.length > 0) problems.push(`${table} has a column this version does not fill (NOT NULL, no default): ${required.map((c) => c.column_name).join(", ")}`)
      }
      return problems.length === 0 ? Effect.void : Effect.die(new Error(
        `DurableStore: the store's tables are not the ones this version of effect-async-toolset uses: ${problems.join("; ")}. ` +
          "They were made or changed by another version (or by hand): open the store with the version that made it, or migrate the tables."
      ))
    }
  )

/** "async_toolset" as a number, for the advisory lock. */
export const migrationLock = 2_406_151_118

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
  /** Why the row cannot be used as it is, if it cannot (a corrupted store): a plain reason. */
  readonly corrupt?: string | undefined
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

export const text = (v: unknown): string | null => v === null || v === undefined ? null : String(v)
export const num = (v: unknown): number | null => v === null || v === undefined ? null : Number(v)

export const callRow = (r: Record<string, unknown>): CallRow => {
  const after = parseAfter(r.after_bases)
  const row: CallRow = {
    base: String(r.base),
    toolsetId: String(r.toolset_id),
    callItem: String(r.call_item),
    callItemId: String(r.call_item_id),
    dupKey: text(r.dup_key),
    cancellable: r.cancellable === true,
    status: String(r.status) as Status,
    stopCause: text(r.stop_cause) as StopCause | null,
    after: after ?? [],
    firstOutput: text(r.first_output),
    firstMessage: text(r.first_message),
    timeoutMs: num(r.timeout_ms),
    deadline: num(r.deadline),
    steps: Number(r.steps),
    updates: Number(r.updates),
    startedAt: Number(r.started_at),
    endedAt: num(r.ended_at),
    version: Number(r.version)
  }
  return after === undefined
    ? { ...row, corrupt: `its list of the calls it waits for is not a JSON list of bases: ${preview(String(r.after_bases))}` }
    : row
}

/** The bases a waiting call waits for; `undefined` if the column does not hold a list of them. */
const parseAfter = (v: unknown): ReadonlyArray<string> | undefined => {
  if (v === null || v === undefined || v === "") return []
  try {
    const parsed: unknown = JSON.parse(String(v))
    return Array.isArray(parsed) && parsed.every((base) => typeof base === "string") ? parsed : undefined
  } catch {
    return undefined
  }
}

export const itemRow = (r: Record<string, unknown>): ItemRow => ({
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

export const itemColumns = "item_id, created_at, item, toolset_id, base, step, call_id, message, owed"
