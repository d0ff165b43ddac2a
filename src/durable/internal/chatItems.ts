/**
 * The queries on `async_toolset_item` (see `tables.ts`): a session's chat, the items owed a reply,
 * the agent's own items saved; and a call's pair put back into the chat when it is missing.
 */
import { Effect } from "effect"
import type { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import type { ChatItem, FunctionCall, FunctionCallOutput } from "../../ChatContext.ts"
import { callRow, encodeItem, itemColumns, itemRow } from "./tables.ts"
import type { ItemRow } from "./tables.ts"

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
 * A call's pair reached the agent's chat under another call id (the model had taken its own, B7):
 * stored so (the pair together), a restart's conversation has no two items with one call id.
 */
export const rename = (sql: SqlClient, sessionId: string, items: ReadonlyArray<ChatItem>, callId: string) =>
  sql.withTransaction(Effect.forEach(items, (item) =>
    sql`UPDATE async_toolset_item SET item = ${encodeItem(item)}, call_id = ${callId}, created_at = ${item.createdAt}
      WHERE session_id = ${sessionId} AND item_id = ${item.id}`, { discard: true }))

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
