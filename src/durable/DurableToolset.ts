/**
 * A toolset whose calls survive the process: each call runs as an effect/workflow execution,
 * keyed by its session and call id, and everything it says (its first update, later updates, its
 * result) is recorded in a SQL store before it reaches the chat. A process that crashes in the
 * middle of a booking starts again, the booking goes on where it was, and the user is told its
 * result exactly once.
 *
 * The same `FunctionTool`s as `AsyncToolset`, the same `AsyncRunContext`, the same rules for the
 * chat (first-update hand-off, numbered `_update_<n>` and `_final` pairs, one idle-gated reply for
 * everything pending, duplicate modes, cancellation, timeouts), and the same value shape
 * (`AsyncToolset.AsyncToolset`), so `AiAgent.addToolset` takes it. What differs:
 *
 * - A call's body replays from the top after a restart. Steps that must not run twice (charge the
 *   card) are activities: `DurableToolset.activity("charge_card", effect)`. Their result is stored
 *   and replayed; the rest of the tool (waiting, polling the airline) may run again.
 * - Cancelling is recorded (a call cancelled before a crash stays cancelled), and a timeout is a
 *   deadline in the call's record (a call past it after a restart times out at once). Cancelling
 *   waits for a running activity to end: an activity is never cut short.
 * - Closing the toolset does not stop its calls: they go on in the workflow engine and are found
 *   again by the next `make` for the session. A caller still waiting for its first output is told
 *   the call goes on, and what the call says later is told then. `drain` cancels them.
 *
 * It is the in-memory toolset's engine (one call lifecycle, one admission, the session's one reply
 * coordinator) over another call store (`internal/store.ts`): a durable and an in-memory toolset
 * on one session share the coordinator.
 *
 * Three parts: `define` (the tools and options), `layer` (registers the calls' workflow with the
 * engine: on every runner), and `make` (the toolset of one session, in the process of its agent).
 *
 * @since 0.1.0
 */
import { Clock, Deferred, Effect, Exit, Layer, Result, Schema } from "effect"
import type { Context, Scope } from "effect"
import * as Activity from "effect/workflow/Activity"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import { AgentSession } from "../AgentSession.ts"
import { AsyncRunContext } from "../AsyncRunContext.ts"
import type { AsyncToolset, Options as AsyncToolsetOptions } from "../AsyncToolset.ts"
import type { ChatItem, FunctionCall } from "../ChatContext.ts"
import type * as FunctionTool from "../FunctionTool.ts"
import type { StopCause } from "../internal/callLifecycle.ts"
import * as Coordinator from "../internal/coordinator/index.ts"
import * as ToolTable from "../internal/toolTable.ts"
import * as Engine from "../internal/toolset.ts"
import * as Prompts from "../Prompts.ts"
import { ToolError } from "../ToolError.ts"
import { DurableChat } from "./DurableChat.ts"
import { DurableStore } from "./DurableStore.ts"
import { body, DurableRun, makeWorkflow, pairIds } from "./internal/body.ts"
import type { CallWorkflow, Definition } from "./internal/body.ts"
import * as Runners from "./internal/runners.ts"
import * as Store from "./internal/store.ts"
import type { CallRow, ItemRow } from "./internal/tables.ts"
import { liveCalls, markUnusable } from "./internal/calls.ts"
import { callsMissingFromChat, owedItems, restoreCall } from "./internal/chatItems.ts"
import { decodeCall, decodeItem, decodeOutput, tryDecode, unusable } from "./internal/tables.ts"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<Tools extends ReadonlyArray<FunctionTool.Any>> extends AsyncToolsetOptions<Tools> {
  /**
   * Names the toolset: its management tools, and its calls' workflow (`effect-async-toolset/<id>`):
   * keep it stable across deploys. `[A-Za-z0-9_-]`, at most 40.
   */
  readonly id: string
}

const TypeId = "~effect-async-toolset/DurableToolset" as const

/**
 * A durable toolset's definition: its tools and options, and the workflow its calls run as.
 *
 * @since 0.1.0
 * @category models
 */
export interface DurableToolset<Tools extends ReadonlyArray<FunctionTool.Any>> {
  readonly [TypeId]: typeof TypeId
  readonly id: string
  readonly tools: Tools
  readonly options: Options<Tools>
  /** The workflow each call runs as. */
  readonly workflow: CallWorkflow
  /** @internal */
  readonly definition: Definition
}

/**
 * Defines a durable toolset. Throws if the options are not valid (a bad id, two tools of one name).
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
 * import { DurableToolset } from "effect-async-toolset/durable"
 *
 * const bookFlight = FunctionTool.make("book_flight", {
 *   description: "Book a flight",
 *   parameters: Schema.Struct({ to: Schema.String })
 * }, ({ to }) =>
 *   Effect.gen(function*() {
 *     yield* AsyncRunContext.update(`Looking up flights to ${to}`)
 *     yield* Effect.sleep("5 seconds") // may run again after a restart
 *     const confirmation = yield* DurableToolset.activity("charge_card", Effect.succeed("FL-847293"), { success: Schema.String }) // runs once
 *     return { confirmation }
 *   }))
 *
 * export const travel = DurableToolset.define({ id: "travel", tools: [bookFlight] })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const define = <const Tools extends ReadonlyArray<FunctionTool.Any>>(options: Options<Tools>): DurableToolset<Tools> => {
  const invalid = Engine.checkId("DurableToolset.define", options.id)
  if (invalid !== undefined) throw invalid
  const prompts: Prompts.Prompts = { ...Prompts.defaults, ...options.prompts }
  const names = { getRunningTasks: `get_running_tasks_${options.id}`, cancelTask: `cancel_task_${options.id}` }
  const prepared = ToolTable.prepare("DurableToolset.define", options, prompts, names)
  if (Result.isFailure(prepared)) throw prepared.failure
  const workflow = makeWorkflow(options.id)
  return {
    [TypeId]: TypeId,
    id: options.id,
    tools: options.tools,
    options,
    workflow,
    definition: { id: options.id, tools: prepared.success, prompts, workflow }
  }
}

/**
 * Registers the toolset's workflow with the engine, so that this process runs its calls (those it
 * starts, and those of a process that ended). Every runner builds it; it needs the services the
 * tools need.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = <Tools extends ReadonlyArray<FunctionTool.Any>>(
  toolset: DurableToolset<Tools>
): Layer.Layer<never, never, WorkflowEngine | DurableStore | Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext>> =>
  Layer.unwrap(Effect.gen(function*() {
    const store = yield* DurableStore
    // The tools' services, for their handlers (which run in the engine's fibers).
    const services = yield* Effect.context<Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext>>()
    if (store.runners !== undefined) yield* serve(store, store.runners, toolset.id)
    return toolset.workflow.toLayer(body(toolset.definition, store, services))
  }))

/**
 * Notes that this runner runs the toolset's calls; says so if live runners of the cluster do not
 * (its calls cannot start until they all do).
 */
const serve = (store: DurableStore["Service"], runners: Runners.Runners, toolsetId: string) =>
  Effect.gen(function*() {
    yield* runners.serve(toolsetId)
    const refusal = yield* runners.refusal(toolsetId)
    if (refusal !== undefined) yield* Effect.logWarning(Runners.describe(refusal, store.application))
  }).pipe(Effect.orDie, Effect.annotateLogs({ toolset: toolsetId }))

/** The longest call id a durable call takes (its record is keyed by it). */
const maxCallIdLength = 200

/**
 * The toolset of the current session (`DurableChat`), for its agent: the same value as
 * `AsyncToolset.make` gives, on the same engine. It takes up the session's calls still live and
 * the results still owed a reply. Closing its scope stops following them here; the calls go on.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*<Tools extends ReadonlyArray<FunctionTool.Any>>(
  toolset: DurableToolset<Tools>
): Effect.fn.Return<AsyncToolset, never, Scope.Scope | AgentSession | DurableChat | DurableStore | WorkflowEngine> {
  const chat = yield* DurableChat
  const store = yield* DurableStore
  const engine = yield* Effect.context<WorkflowEngine>()
  const clock = yield* Clock.clockWith(Effect.succeed)
  const deps: Store.Deps = {
    toolsetId: toolset.id,
    workflow: toolset.workflow,
    store,
    chat,
    engine,
    clock,
    records: new WeakMap()
  }
  const idsOf = (items: ReadonlyArray<{ readonly items: ReadonlyArray<ChatItem> }>) => items.flatMap((item) => item.items.map((i) => i.id))
  const setup: Engine.Setup = {
    who: "DurableToolset.make",
    store: Store.make(deps),
    hooks: {
      // The agent's reply to them is stored with the record that they are owed nothing (DurableChat).
      asking: (items) => chat.replyFor(idsOf(items)),
      skipped: (items) => chat.markReplied(idsOf(items))
    },
    refuseCallId: (call) =>
      call.callId.length > maxCallIdLength || call.callId.includes("\u0000")
        ? `${call.name} was not run: its call id must be at most ${maxCallIdLength} characters, without NUL characters. Call it again with a shorter id.`
        : undefined
  }
  // The tools run where the workflow engine runs them (their services are `layer`'s): the engine
  // here needs none of theirs.
  const built = yield* (Engine.make(toolset.options, setup) as Effect.Effect<Engine.Built, never, Scope.Scope | AgentSession>)
  // The model's call ids in the stored conversation are the chat's (B7): no synthetic id may take
  // one, a restart or a new toolset for the session notwithstanding (a running call's future
  // `_update_<n>` or `_final` the model used for a call of its own before).
  for (const item of chat.history.items) {
    if (item._tag === "FunctionCall") Coordinator.noteCallId(built.state.toolset.session, item.callId)
  }
  yield* load(built.state, deps, toolset).pipe(
    Effect.catchCause((cause) =>
      Effect.logError("could not read the session's durable calls; calls started before this start are not followed here", cause)
        .pipe(Effect.annotateLogs({ toolset: toolset.id }))
    )
  )
  return built.toolset
})

/**
 * What the store holds for the toolset when it is made: calls whose model turn ended without them
 * (put back into the chat, owed a reply), items owed a reply, and the calls still live (followed
 * from here on).
 */
const load = <Tools extends ReadonlyArray<FunctionTool.Any>>(state: Engine.State, deps: Store.Deps, toolset: DurableToolset<Tools>) =>
  Effect.gen(function*() {
    const { sql } = deps.store
    const sessionId = deps.chat.sessionId
    const session = state.toolset.session
    // A row that cannot be read (a corrupted store) is logged and left out: the others load and run.
    const corrupt = (what: string, reason: string, callId: string | undefined, outcome: string) =>
      Effect.logError(`${what} of session ${sessionId} cannot be read: ${reason}. ${outcome}`).pipe(
        Effect.annotateLogs({ toolset: toolset.id, session: sessionId, ...(callId === undefined ? {} : { callId }) })
      )
    const live: Array<CallRow> = []
    for (const row of yield* liveCalls(sql, sessionId, toolset.id)) {
      const reason = unusable(row)
      if (reason === undefined) {
        live.push(row)
        continue
      }
      yield* corrupt(`The durable call ${row.base}`, reason, row.base, "It is marked failed; the session's other calls go on.")
      yield* markUnusable(sql, sessionId, row.base, deps.clock.currentTimeMillisUnsafe()).pipe(
        Effect.catchCause((cause) => Effect.logError(`could not mark the durable call ${row.base} failed`, cause))
      )
    }
    const liveBases = new Set(live.map((row) => row.base))
    for (const row of yield* callsMissingFromChat(sql, sessionId, toolset.id)) {
      if (deps.chat.has(row.callItemId)) continue
      const call = tryDecode(() => decodeCall(row.callItem))
      const output = tryDecode(() => decodeOutput(row.firstOutput!))
      if (Result.isFailure(call) || Result.isFailure(output)) {
        const reason = Result.isFailure(call) ? `its model call: ${call.failure}` : `its output: ${(output as Result.Failure<unknown, string>).failure}`
        yield* corrupt(`The durable call ${row.base}`, reason, row.base, "It is not put back into the chat.")
        continue
      }
      Coordinator.noteCallId(session, call.success.callId)
      yield* restoreCall(sql, sessionId, toolset.id, row.base, call.success, output.success)
    }
    const owedRows = yield* owedItems(sql, sessionId, toolset.id)
    // What the agent's chat holds: read from the session only when something is owed (within the
    // toolset's replyTimeout; make does not wait longer on a slow or failing port), else as the
    // store knows it.
    const chatRead = owedRows.length === 0 ? undefined : yield* Store.readChat(state.toolset)
    if (owedRows.length > 0 && chatRead === undefined) {
      yield* Effect.logWarning("could not read the agent's chat; going by the stored conversation")
        .pipe(Effect.annotateLogs({ toolset: toolset.id }))
    }
    const agentChat = chatRead === undefined ? undefined : new Set(chatRead.map((item) => item.id))
    const inChat = { has: (id: string) => agentChat === undefined ? deps.chat.has(id) : agentChat.has(id) }
    const toInsert: Array<ChatItem> = []
    const owed: Array<{ readonly callId: string; readonly items: ReadonlyArray<ChatItem>; readonly at: number; readonly inChat: boolean }> = []
    const { pairs, unreadable } = pairsOf(owedRows)
    for (const { reason, row } of unreadable) {
      yield* corrupt(`The stored item ${row.itemId}`, reason, row.base ?? undefined, "It is left out: no reply is asked for it.")
    }
    for (const { items, rows: pair } of pairs) {
      const there = pair.every((row) => inChat.has(row.itemId))
      // A live call's pairs not yet in the agent's chat reach it through that call's fiber.
      if (!there && pair[0].step !== 0 && pair[0].base !== null && liveBases.has(pair[0].base)) continue
      if (!there) toInsert.push(...items.filter((item) => !inChat.has(item.id)))
      owed.push({ callId: pair[0].callId!, items, at: Math.max(...items.map((item) => item.createdAt)), inChat: there })
    }
    // Put into the agent's chat now; if that fails, the reply coordinator tries again (as for any
    // item whose insertion failed, C4b), and asks for the reply only once they are in the chat.
    let insertedAll = true
    if (toInsert.length > 0) {
      deps.chat.adopt(toInsert.map((item) => item.id))
      const inserted = yield* Effect.exit(Effect.timeout(Coordinator.callPort(() => session.insert(toInsert)), state.toolset.owner.policy.replyTimeout))
      if (Exit.isFailure(inserted)) {
        insertedAll = false
        yield* Effect.logWarning(`could not put ${toInsert.map((i) => i.id).join(", ")} into the agent's chat; the reply coordinator will retry`, inserted.cause)
      }
    }
    const now = deps.clock.currentTimeMillisUnsafe()
    const owing = new Set<string>()
    for (const item of owed) {
      owing.add(item.callId)
      Engine.owe(state, item.callId, item.items, item.inChat ? item.at : now, item.inChat || insertedAll)
    }
    // (An output owed already, being also the last thing said, is owed once.)
    for (const item of unanswered(deps, toolset.definition)) {
      if (!owing.has(item.callId)) Engine.owe(state, item.callId, item.items, item.at)
    }
    const caller = yield* Effect.context<never>()
    for (const row of live) adopt(state, deps, row, caller)
  })

/**
 * The toolset's call outputs the stored conversation ends with, with no word of the agent after
 * them: the process stopped in the middle of the turn that made the calls (the model had their
 * outputs, and never answered). They are owed a reply, as if the call had told them later.
 */
const unanswered = (deps: Store.Deps, definition: Definition) => {
  const history = deps.chat.history.items
  const calls = new Map<string, FunctionCall>()
  const out: Array<{ readonly callId: string; readonly items: ReadonlyArray<ChatItem>; readonly at: number }> = []
  for (let i = history.length - 1; i >= 0; i--) {
    const item = history[i]!
    if (item._tag === "ChatMessage") {
      if (item.role === "assistant") break
      continue
    }
    if (item._tag === "FunctionCall") {
      calls.set(item.callId, item)
      continue
    }
    // A durable call's output (`fco:<base>:first`) of one of this toolset's tools.
    if (!/^fco:.+:first$/.test(item.id) || !definition.tools.has(item.name)) continue
    const call = calls.get(item.callId) ??
      history.slice(0, i).findLast((c): c is FunctionCall => c._tag === "FunctionCall" && c.callId === item.callId)
    if (call !== undefined) out.push({ callId: item.callId, items: [call, item], at: item.createdAt })
  }
  return out.reverse()
}

/** A live call of the store, taken up by the engine; its follower knows its row. */
const adopt = (state: Engine.State, deps: Store.Deps, row: CallRow, caller: Context.Context<never>): void => {
  Engine.adopt(state, {
    functionCall: decodeCall(row.callItem),
    base: row.base,
    key: row.dupKey ?? undefined,
    cancellable: row.cancellable,
    startedAt: row.startedAt,
    status: row.status as "waiting" | "running" | "stopping",
    stopCause: (row.stopCause ?? undefined) as StopCause | undefined,
    after: row.after,
    answered: row.firstOutput !== null,
    deadline: row.deadline ?? undefined
  }, caller, (c) => {
    // Its pairs in the agent's chat already (the conversation as stored): delivered.
    let pairs = 0
    while (pairs < row.updates && deps.chat.has(pairIds(row.base, pairs + 1)[1])) pairs++
    deps.records.set(c, { adopted: row, recorded: true, first: row.firstOutput !== null, pairs, version: -1, stopped: Deferred.makeUnsafe() })
  })
}

/**
 * Item rows as call/output pairs (by call id), in order, with their items; and the rows whose item
 * cannot be read (a corrupted store), with why.
 */
const pairsOf = (rows: ReadonlyArray<ItemRow>) => {
  const pairs: Array<{ readonly rows: readonly [ItemRow, ItemRow]; readonly items: readonly [ChatItem, ChatItem] }> = []
  const unreadable: Array<{ readonly row: ItemRow; readonly reason: string }> = []
  const byCallId = new Map<string, Array<{ readonly row: ItemRow; readonly item: ChatItem }>>()
  for (const row of rows) {
    if (row.callId === null) continue
    const item = tryDecode(() => decodeItem(row.item, row.createdAt))
    if (Result.isFailure(item)) {
      unreadable.push({ row, reason: item.failure })
      continue
    }
    const list = byCallId.get(row.callId)
    if (list === undefined) byCallId.set(row.callId, [{ row, item: item.success }])
    else list.push({ row, item: item.success })
  }
  for (const list of byCallId.values()) {
    const fc = list.find(({ item }) => item._tag === "FunctionCall")
    const fco = list.find(({ item }) => item._tag === "FunctionCallOutput")
    if (fc !== undefined && fco !== undefined) pairs.push({ rows: [fc.row, fco.row], items: [fc.item, fco.item] })
  }
  return { pairs, unreadable }
}

// --- steps that run once -------------------------------------------------------------------------

/**
 * What an activity's effect is given: a key that is the same every time this step of this call
 * runs (after a restart too), for an outside service that deduplicates requests (a payment
 * provider's `Idempotency-Key`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Step {
  readonly idempotencyKey: string
}

/**
 * A step of a tool that must not run again once it has finished: in a durable call it is an
 * effect/workflow activity, whose result is stored and given back when the call replays after a
 * restart. In an in-memory `AsyncToolset` it simply runs. Either way it is never cut short: a
 * cancel or a timeout waits until it has ended, then stops the tool.
 *
 * Steps are named by `name` and the order the tool takes them in (a second `charge_card` in the
 * same call is `charge_card/2`), so a tool must take its steps in the same order each time it
 * runs. A step that was running when the process died runs again: give outside services its
 * `idempotencyKey`. The result is stored as JSON (give `success` for other values); a failure is
 * stored with `error` (default: `ToolError`; another failure becomes a defect).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { DurableToolset } from "effect-async-toolset/durable"
 *
 * declare const chargeCard: (amount: number, idempotencyKey: string) => Effect.Effect<string>
 *
 * const charge = DurableToolset.activity("charge_card", ({ idempotencyKey }) => chargeCard(420, idempotencyKey))
 * ```
 *
 * @since 0.1.0
 * @category steps
 */
export const activity = <A, E = never, R = never>(
  name: string,
  effect: Effect.Effect<A, E, R> | ((step: Step) => Effect.Effect<A, E, R>),
  ...[options]: ActivityOptionsArgs<A, E>
): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.serviceOption(DurableRun), (found) => {
    const run = (step: Step) => typeof effect === "function" ? effect(step) : effect
    if (found._tag === "None") {
      return Effect.uninterruptible(Effect.flatMap(
        Effect.serviceOption(AsyncRunContext),
        (ctx) => run({ idempotencyKey: ctx._tag === "Some" ? `${ctx.value.functionCall.callId}/${name}` : name })
      ))
    }
    const durable = found.value
    const n = (durable.steps.get(name) ?? 0) + 1
    durable.steps.set(name, n)
    const unique = `step/${name}${n === 1 ? "" : `/${n}`}`
    const success: Schema.Codec<A, unknown> = options?.success ?? voidSchema
    const error: Schema.Codec<E, unknown> = options?.error ?? toolErrorSchema
    // Never cut short (F3): the step itself is uninterruptible, so a cancel or a timeout (which
    // interrupts the tool, and the engine's wait for the step) waits for it to end and be stored.
    return Effect.flatMap(Effect.provideContext(Activity.idempotencyKey(unique), durable.context), (idempotencyKey) =>
      Activity.make({ name: unique, success, error, execute: Effect.uninterruptible(run({ idempotencyKey })) }).pipe(
        Effect.provideContext(durable.context)
      ))
  })

/**
 * How an activity's result and failure are stored. `success` is needed unless the step returns
 * nothing; `error` unless it cannot fail or fails only with `ToolError`.
 *
 * @since 0.1.0
 * @category models
 */
export interface ActivityOptions<A, E> {
  readonly success?: Schema.Codec<A, unknown> | undefined
  readonly error?: Schema.Codec<E, unknown> | undefined
}

/** The options argument of `activity`: required where a schema is needed. */
type ActivityOptionsArgs<A, E> = [A] extends [void] ? [E] extends [ToolError] ? [options?: ActivityOptions<A, E>]
  : [options: ActivityOptions<A, E> & { readonly error: Schema.Codec<E, unknown> }]
  : [E] extends [ToolError] ? [options: ActivityOptions<A, E> & { readonly success: Schema.Codec<A, unknown> }]
  : [options: { readonly success: Schema.Codec<A, unknown>; readonly error: Schema.Codec<E, unknown> }]

// Used only where the argument types say they fit: `A` is void, `E` is `ToolError` or never.
const voidSchema: Schema.Codec<any, unknown> = Schema.Void
const toolErrorSchema: Schema.Codec<any, unknown> = ToolError
