/**
 * The agent's side of a durable toolset: the calls of its session as this process knows them,
 * starting them, cancelling them, and following what the store says of them.
 *
 * The store is the truth. A call is a row (its status, the output the model got); its updates and
 * result are chat rows, written by the workflow body wherever it runs. This process keeps a
 * registry of the calls still live, for the duplicate check (which must be synchronous, D5),
 * `runningTasks` and `awaitIdle`, and a watcher that reads what changed in the session since it
 * last looked (woken at once by changes made in this process, else every `pollInterval`): first
 * outputs go to the callers waiting for them, new items into the agent's chat and, when owed a
 * reply, to the session's reply coordinator; ended calls leave the registry.
 */
import { Clock, Deferred, Duration, Effect, Exit, Fiber, Schedule } from "effect"
import type { Context } from "effect"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import type { AgentSession } from "../../AgentSession.ts"
import type { CancelResult, RunningTask } from "../../AsyncToolset.ts"
import { isPending } from "../../AsyncToolset.ts"
import { FunctionCallOutput } from "../../ChatContext.ts"
import type { ChatItem, FunctionCall } from "../../ChatContext.ts"
import type { DurableChat } from "../../DurableChat.ts"
import type { DurableStore } from "../../DurableStore.ts"
import * as Prompts from "../../Prompts.ts"
import type { Outcome, ToolsetEvent } from "../../ToolsetEvent.ts"
import * as Coordinator from "./coordinator.ts"
import type { Definition, Prepared } from "./run.ts"
import { firstOutputId } from "./run.ts"
import type { CallRow, Changes, ChatRow } from "./tables.ts"
import {
  callsMissingFromChat,
  changes,
  claimCall,
  decodeCall,
  decodeItem,
  decodeOutput,
  encodeItem,
  headSeq,
  isLive,
  liveCalls,
  owedItems,
  recordEnd,
  requestCancel,
  restamp,
  restoreCall
} from "./tables.ts"

/**
 * Where a live call is, as this process sees it:
 * - `waiting`: a `replace` call waiting for the calls it replaces to end (not in the store yet);
 * - `starting`: being recorded and its execution started;
 * - `running`: its execution runs (here or on another runner);
 * - `cancelling`: its cancellation is recorded, its execution has not ended yet.
 */
export type EntryStatus = "waiting" | "starting" | "running" | "cancelling"

/** A live call. */
export interface Entry {
  readonly call: FunctionCall
  readonly p: Prepared | undefined
  /** Its duplicate key. */
  readonly key: string
  readonly startedAt: number
  /** The output the model gets for the call. */
  readonly first: Deferred.Deferred<FunctionCallOutput>
  /** Completed when the call leaves the registry. */
  readonly ended: Deferred.Deferred<void>
  /** Its id in its synthetic ids and in the store (known once it is recorded). */
  base: string | undefined
  status: EntryStatus
  cancellable: boolean
  /** `first` is settled. */
  firstSettled: boolean
  /** Callers waiting for `first` now. */
  awaiting: number
  /** Its record is in the store. */
  recorded: boolean
  /** Cancelled before it was recorded: record the cancellation once it is. */
  cancelRequested: boolean
}

/** What the calls of one durable toolset in one session share. */
export interface State {
  readonly definition: Definition
  readonly session: AgentSession["Service"]
  readonly chat: DurableChat["Service"]
  readonly store: DurableStore["Service"]
  readonly engine: Context.Context<WorkflowEngine>
  readonly clock: Clock.Clock
  readonly sessionRetry: Schedule.Schedule<unknown, unknown>
  /** Live calls, oldest first. */
  readonly live: Set<Entry>
  readonly byBase: Map<string, Entry>
  /** By the id of the model's call item: the same call started again joins it. */
  readonly byItem: Map<string, Entry>
  readonly owner: Coordinator.Owner
  coordinator: Coordinator.Coordinator | undefined
  /** The session counter up to which the store has been read. */
  seq: number
  /** Item ids handed to the coordinator (an item is answered once). */
  readonly handedOver: Set<string>
  readonly idleWaiters: Set<Deferred.Deferred<void>>
  closed: boolean
  readonly emit: (event: () => ToolsetEvent) => void
}

const now = (state: State) => state.clock.currentTimeMillisUnsafe()

/** A call whose model turn ended without its output: call and output go back into the chat. */
type Restore = readonly [FunctionCall, FunctionCallOutput]

// --- the registry --------------------------------------------------------------------------------

export const register = (state: State, entry: Entry): void => {
  state.live.add(entry)
  state.byItem.set(entry.call.id, entry)
  if (entry.base !== undefined) state.byBase.set(entry.base, entry)
}

const unregister = (state: State, entry: Entry): void => {
  state.live.delete(entry)
  if (state.byItem.get(entry.call.id) === entry) state.byItem.delete(entry.call.id)
  if (entry.base !== undefined && state.byBase.get(entry.base) === entry) state.byBase.delete(entry.base)
  Deferred.doneUnsafe(entry.ended, Exit.void)
  notifyIdle(state)
}

/** The calls of a duplicate key that count against a new one (not those being cancelled). */
export const activeOfKey = (state: State, key: string): Array<Entry> => {
  const found: Array<Entry> = []
  for (const entry of state.live) if (entry.key === key && entry.status !== "cancelling") found.push(entry)
  return found
}

/** Every live call of a key, those being cancelled included: a `replace` call waits for them all. */
export const liveOfKey = (state: State, key: string): Array<Entry> => {
  const found: Array<Entry> = []
  for (const entry of state.live) if (entry.key === key) found.push(entry)
  return found
}

/** The live call the model knows by `callId` (the newest, if a model reused an id). */
export const byCallId = (state: State, callId: string): Entry | undefined => {
  let found: Entry | undefined
  for (const entry of state.live) if (entry.call.callId === callId) found = entry
  return found
}

export const newEntry = (
  call: FunctionCall,
  p: Prepared | undefined,
  key: string,
  status: EntryStatus,
  startedAt: number
): Entry => ({
  call,
  p,
  key,
  startedAt,
  first: Deferred.makeUnsafe(),
  ended: Deferred.makeUnsafe(),
  base: undefined,
  status,
  cancellable: p?.cancellable ?? true,
  firstSettled: false,
  awaiting: 0,
  recorded: false,
  cancelRequested: false
})

export const runningTasks = (state: State): ReadonlyArray<RunningTask> =>
  Array.from(state.live, (entry) => ({
    callId: entry.call.callId,
    name: entry.call.name,
    arguments: entry.call.arguments,
    status: entry.status === "cancelling" ? "cancelling" as const : "running" as const,
    cancellable: entry.status !== "cancelling" && entry.cancellable,
    startedAt: entry.startedAt
  }))

// --- idle ----------------------------------------------------------------------------------------

const isIdle = (state: State) => state.closed || (state.live.size === 0 && state.owner.pending === 0)

export const notifyIdle = (state: State): void => {
  if (!isIdle(state) || state.idleWaiters.size === 0) return
  const waiters = [...state.idleWaiters]
  state.idleWaiters.clear()
  for (const waiter of waiters) Deferred.doneUnsafe(waiter, Exit.void)
}

/** Completes when no call of the toolset is live and nothing it put into the chat awaits a reply. */
export const awaitIdle = (state: State): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (isIdle(state)) return Effect.void
    const waiter = Deferred.makeUnsafe<void>()
    state.idleWaiters.add(waiter)
    return Deferred.await(waiter).pipe(Effect.onInterrupt(() => Effect.sync(() => state.idleWaiters.delete(waiter))))
  })

/** Completes when no call of the toolset is live. */
export const awaitNoCalls = (state: State): Effect.Effect<void> =>
  Effect.suspend(() => {
    const left = Array.from(state.live, (entry) => Deferred.await(entry.ended))
    return left.length === 0 ? Effect.void : Effect.andThen(Effect.all(left, { discard: true }), awaitNoCalls(state))
  })

// --- outputs -------------------------------------------------------------------------------------

/** An output the toolset writes itself for a call. */
const outputFor = (state: State, entry: Entry, text: string, isError: boolean): FunctionCallOutput =>
  new FunctionCallOutput({
    id: entry.base === undefined ? `fco:${entry.call.id}:toolset` : firstOutputId(entry.base),
    callId: entry.call.callId,
    name: entry.call.name,
    output: text,
    isError,
    createdAt: now(state)
  })

export const cancelledOutput = (state: State, entry: Entry): FunctionCallOutput =>
  outputFor(
    state,
    entry,
    Prompts.render(state.definition.prompts.cancelled, { functionName: entry.call.name, callId: entry.call.callId }),
    true
  )

/**
 * Settles the output the model gets for a call (once). A call nobody waits for in this process had
 * its model turn end without it (the process that asked ended, or the caller went away): its call
 * and output are restored into the chat, owed a reply.
 */
const settleFirst = (state: State, entry: Entry, output: FunctionCallOutput, restores: Array<Restore>): void => {
  if (entry.firstSettled) return
  entry.firstSettled = true
  if (entry.awaiting === 0 && !state.chat.has(entry.call.id) && entry.base !== undefined) restores.push([entry.call, output])
  Deferred.doneUnsafe(entry.first, Exit.succeed(output))
}

/** Waits for a call's output; the call goes on (durably) if the caller stops waiting. */
export const awaitFirst = (entry: Entry): Effect.Effect<FunctionCallOutput> =>
  Effect.suspend(() => {
    entry.awaiting++
    return Deferred.await(entry.first).pipe(Effect.ensuring(Effect.sync(() => entry.awaiting--)))
  })

// --- starting ------------------------------------------------------------------------------------

/**
 * Records a new call and starts its execution, once the calls it replaces (`predecessors`) have
 * ended. The first free base among `<callId>`, `<callId>_run2`, … is the call's: a base taken by
 * another call of the session (an ended call whose id the model reused) is skipped; one taken by
 * this very model call (started before by a process that ended) is joined.
 */
export const start = (state: State, entry: Entry, predecessors: ReadonlyArray<Entry>): Effect.Effect<void> =>
  Effect.gen(function*() {
    if (predecessors.length > 0) {
      yield* Effect.raceFirst(
        Effect.forEach(predecessors, (p) => Deferred.await(p.ended), { discard: true }),
        Deferred.await(entry.first)
      )
      // Replaced, cancelled or drained while it waited: it never starts.
      if (entry.firstSettled) return unregister(state, entry)
      entry.status = "starting"
    }
    const { definition, store } = state
    const sessionId = state.chat.sessionId
    const deadline = entry.p?.timeout === undefined ? null : entry.startedAt + Duration.toMillis(entry.p.timeout)
    for (let k = 1;; k++) {
      const base = k === 1 ? entry.call.callId : `${entry.call.callId}_run${k}`
      const other = state.byBase.get(base)
      if (other !== undefined && other !== entry) continue
      const payload = {
        sessionId,
        base,
        call: encodeItem(entry.call),
        startedAt: entry.startedAt,
        deadline
      }
      const executionId = yield* definition.workflow.executionId(payload)
      // Known by its base before it is in the store: the watcher, reading the new row, finds it
      // here (rather than taking it for a call of another process).
      entry.base = base
      state.byBase.set(base, entry)
      const existing = yield* claimCall(store.sql, {
        sessionId,
        base,
        toolsetId: definition.id,
        executionId,
        call: entry.call,
        dupKey: entry.key,
        cancellable: entry.cancellable,
        startedAt: entry.startedAt
      })
      if (existing !== undefined && existing.callItemId !== entry.call.id) {
        state.byBase.delete(base)
        entry.base = undefined
        continue
      }
      entry.recorded = true
      if (existing !== undefined) return yield* joinRecorded(state, entry, existing)
      yield* Effect.provideContext(definition.workflow.execute(payload, { discard: true }), state.engine)
      if (entry.status === "starting") entry.status = "running"
      state.emit(() => ({
        _tag: "CallStarted",
        toolsetId: definition.id,
        callId: entry.call.callId,
        name: entry.call.name,
        arguments: entry.call.arguments,
        at: entry.startedAt
      }))
      if (entry.cancelRequested) yield* recordCancel(state, entry)
      return
    }
  }).pipe(
    Effect.catchCause((cause) => {
      // The store or the engine failed: the call did not start. The model hears so; the cause is
      // logged; a record of it, if made, says it ended.
      const output = outputFor(state, entry, `${entry.call.name} could not be started (its store failed). Tell the user it did not work.`, true)
      settleFirst(state, entry, output, [])
      unregister(state, entry)
      const base = entry.base
      return Effect.logError("could not start a durable call", cause).pipe(
        Effect.andThen(base === undefined ? Effect.void : Effect.ignore(endUnstarted(state, base, output))),
        Effect.annotateLogs({ toolset: state.definition.id, callId: entry.call.callId })
      )
    })
  )

/** A call recorded whose execution could not be started: it ended, with the error its caller got. */
const endUnstarted = (state: State, base: string, output: FunctionCallOutput) =>
  state.store.sql.withTransaction(
    recordEnd(state.store.sql, state.chat.sessionId, state.definition.id, base, () =>
      Effect.succeed({ status: "error" as const, output, final: undefined, endedAt: now(state) }))
  )

/** The same model call was recorded before (by a process that ended): it is that call. */
const joinRecorded = (state: State, entry: Entry, row: CallRow) =>
  Effect.sync(() => {
    const restores: Array<Restore> = []
    entry.cancellable = row.cancellable
    if (row.status === "cancelling") entry.status = "cancelling"
    else if (entry.status === "starting") entry.status = "running"
    if (row.firstOutput !== null) settleFirst(state, entry, decodeOutput(row.firstOutput), restores)
    if (!isLive(row.status)) unregister(state, entry)
  })

// --- cancelling ----------------------------------------------------------------------------------

/**
 * Cancels a live call: the model's waiting caller gets the cancelled output at once (E2, E8), and
 * the cancellation is recorded in the store (the call's execution sees it and stops; a process
 * that starts again finds it cancelled). Returns the effect that records it.
 */
export const cancelEntry = (state: State, entry: Entry): Effect.Effect<void> => {
  const restores: Array<Restore> = []
  const wasWaiting = entry.status === "waiting"
  entry.status = "cancelling"
  entry.cancellable = false
  settleFirst(state, entry, cancelledOutput(state, entry), restores)
  // A waiting call was never recorded: `start` sees it settled and lets it go.
  if (wasWaiting) return Effect.void
  if (!entry.recorded) {
    entry.cancelRequested = true
    return Effect.void
  }
  return recordCancel(state, entry)
}

const recordCancel = (state: State, entry: Entry): Effect.Effect<void> =>
  requestCancel(state.store.sql, state.chat.sessionId, entry.base!, cancelledOutput(state, entry)).pipe(
    Effect.tap(() =>
      Effect.sync(() => {
        state.store.signalCall(state.chat.sessionId, entry.base!)
        state.store.signal(state.chat.sessionId)
      })
    ),
    Effect.retry(Schedule.exponential("100 millis").pipe(Schedule.upTo({ times: 5 }))),
    Effect.catchCause((cause) =>
      Effect.logError("could not record a cancellation; the call may go on after a restart", cause).pipe(
        Effect.annotateLogs({ toolset: state.definition.id, callId: entry.call.callId })
      )
    ),
    Effect.asVoid
  )

export const cancel = (state: State, callId: string): Effect.Effect<CancelResult> =>
  Effect.suspend(() => {
    const entry = byCallId(state, callId)
    if (entry === undefined) return Effect.succeed("not-found")
    // Asked again while it stops: it is being cancelled, as the model wanted.
    if (entry.status === "cancelling") return Effect.succeed("cancelled")
    if (!entry.cancellable) return Effect.succeed("not-cancellable")
    return Effect.as(cancelEntry(state, entry), "cancelled")
  })

// --- following the store -------------------------------------------------------------------------

/**
 * What the store holds when the toolset starts: the live calls, calls whose model turn ended
 * without them (restored into the chat), and items still owed a reply.
 */
export const load = (state: State): Effect.Effect<void, unknown> =>
  Effect.gen(function*() {
    const { sql } = state.store
    const sessionId = state.chat.sessionId
    state.seq = yield* headSeq(sql, sessionId)
    for (const row of yield* liveCalls(sql, sessionId, state.definition.id)) adopt(state, row)
    for (const row of yield* callsMissingFromChat(sql, sessionId, state.definition.id)) {
      if (!state.chat.has(row.callItemId)) yield* restoreCall(sql, sessionId, state.definition.id, decodeCall(row.callItem), decodeOutput(row.firstOutput!))
    }
    const owed = yield* owedItems(sql, sessionId, state.definition.id)
    yield* receive(state, owed)
    yield* sync(state)
  })

/** A live call this process did not start (a process before it did). */
const adopt = (state: State, row: CallRow): Entry => {
  const found = state.byBase.get(row.base)
  if (found !== undefined) return found
  const call = decodeCall(row.callItem)
  const entry = newEntry(call, state.definition.tools.get(call.name), row.dupKey, row.status === "cancelling" ? "cancelling" : "running", row.startedAt)
  entry.base = row.base
  entry.recorded = true
  entry.cancellable = row.status === "running" && row.cancellable
  if (row.firstOutput !== null) {
    entry.firstSettled = true
    Deferred.doneUnsafe(entry.first, Exit.succeed(decodeOutput(row.firstOutput)))
  }
  register(state, entry)
  return entry
}

/** Reads what changed in the store since the last look, and applies it; again while that wrote. */
export const sync = (state: State): Effect.Effect<void, unknown> =>
  Effect.gen(function*() {
    while (!state.closed) {
      const changed = yield* changes(state.store.sql, state.chat.sessionId, state.definition.id, state.seq)
      if (changed.seq === state.seq) return
      state.seq = changed.seq
      const restored = yield* apply(state, changed)
      if (!restored) return
    }
  })

/** The watcher: `sync` at every change of the session, or every `pollInterval`. */
export const watch = (state: State): Effect.Effect<never> =>
  Effect.forever(
    Effect.andThen(
      state.store.awaitChange(state.chat.sessionId),
      sync(state).pipe(
        Effect.catchCause((cause) => Effect.logWarning("could not read the durable store; trying again", cause))
      )
    )
  )

/**
 * Applies changes: chat items first (into the agent's chat, owed ones to the coordinator), then
 * calls (first outputs to their callers, ended calls out of the registry), so that a call never
 * leaves the registry before its final result is counted as pending. Returns whether it restored
 * calls into the chat (to be read back).
 */
const apply = (state: State, changed: Changes): Effect.Effect<boolean, unknown> =>
  Effect.gen(function*() {
    yield* receive(state, changed.items)
    const restores: Array<Restore> = []
    const rowsToRestore: Array<CallRow> = []
    for (const row of changed.calls) {
      let entry = state.byBase.get(row.base)
      if (entry === undefined && isLive(row.status)) entry = adopt(state, row)
      if (entry === undefined) {
        if (row.firstOutput !== null && !state.chat.has(row.callItemId)) rowsToRestore.push(row)
        continue
      }
      if (row.status === "cancelling" && entry.status !== "cancelling") {
        entry.status = "cancelling"
        entry.cancellable = false
      }
      if (row.firstOutput !== null && !entry.firstSettled) {
        const output = decodeOutput(row.firstOutput)
        if (isPending(output)) {
          state.emit(() => ({
            _tag: "CallUpdated",
            toolsetId: state.definition.id,
            callId: entry.call.callId,
            name: entry.call.name,
            step: 0,
            message: row.firstMessage ?? output.output,
            at: now(state)
          }))
        }
        settleFirst(state, entry, output, restores)
      }
      if (!isLive(row.status)) {
        const ended = entry
        unregister(state, ended)
        state.emit(() => ({
          _tag: "CallEnded",
          toolsetId: state.definition.id,
          callId: ended.call.callId,
          name: ended.call.name,
          outcome: row.status as Outcome,
          duration: (row.endedAt ?? now(state)) - ended.startedAt,
          at: now(state)
        }))
      }
    }
    for (const row of rowsToRestore) restores.push([decodeCall(row.callItem), decodeOutput(row.firstOutput!)])
    for (const [call, output] of restores) {
      yield* restoreCall(state.store.sql, state.chat.sessionId, state.definition.id, call, output)
    }
    return restores.length > 0
  })

/**
 * Chat rows of the toolset: those not in the agent's chat are put there (restamped if the agent's
 * chat moved on since they were recorded: what the agent said before they reached it never covers
 * them); those owed a reply go to the coordinator, pair by pair.
 */
const receive = (state: State, rows: ReadonlyArray<ChatRow>): Effect.Effect<void, unknown> =>
  Effect.gen(function*() {
    if (rows.length === 0) return
    const fresh = rows.filter((row) => !state.chat.has(row.itemId))
    const mirrored = new Set<string>()
    if (fresh.length > 0) {
      const items = fresh.map((row) => decodeItem(row.item, row.createdAt))
      const chat = yield* state.session.items
      const newest = chat.at(-1)?.createdAt ?? Number.NEGATIVE_INFINITY
      let placed = items
      if (items.some((item) => item.createdAt < newest)) {
        const stamp = Math.max(now(state), newest)
        placed = items.map((item) => decodeItem(encodeItem(item), stamp))
        yield* restamp(state.store.sql, state.chat.sessionId, fresh.map((row) => row.itemId), stamp)
      }
      const ids = fresh.map((row) => row.itemId)
      state.chat.adopt(ids)
      const inserted = yield* state.session.insert(placed).pipe(
        Effect.retry(state.sessionRetry),
        Effect.as(true),
        Effect.catchCause((cause) => {
          state.chat.disown(ids)
          return Effect.as(
            Effect.logError(`could not put ${ids.join(", ")} into the agent's chat; they are in the store (the next start has them)`, cause)
              .pipe(Effect.annotateLogs({ toolset: state.definition.id })),
            false
          )
        })
      )
      if (!inserted) return
      for (const id of ids) mirrored.add(id)
      for (const [i, row] of fresh.entries()) updated(state, row, placed[i]!)
    }
    handOverOwed(state, rows, mirrored)
  })

/** A later update reached the agent's chat: the event for a UI. */
const updated = (state: State, row: ChatRow, item: ChatItem): void => {
  if (item._tag !== "FunctionCallOutput" || row.step === null || row.step <= 0) return
  const base = row.itemId.slice("fco:".length, row.itemId.lastIndexOf(":"))
  const entry = state.byBase.get(base)
  const step = row.step
  const message = row.message ?? item.output
  state.emit(() => ({
    _tag: "CallUpdated",
    toolsetId: state.definition.id,
    callId: entry?.call.callId ?? base,
    name: item.name,
    step,
    message,
    at: now(state)
  }))
}

/**
 * Hands each owed pair to the coordinator once. It counts from when it reached the agent's chat:
 * now for those just put there, its recorded time for those the chat had.
 */
const handOverOwed = (state: State, rows: ReadonlyArray<ChatRow>, mirrored: ReadonlySet<string>): void => {
  const coordinator = state.coordinator
  if (coordinator === undefined) return
  const at = now(state)
  for (const row of rows) {
    if (!row.owed || state.handedOver.has(row.itemId) || row.callId === null || !state.chat.has(row.itemId)) continue
    state.handedOver.add(row.itemId)
    const pairCall = rows.find((r) => r.callId === row.callId && r.itemId !== row.itemId)
    const itemIds = pairCall === undefined ? [row.itemId] : [pairCall.itemId, row.itemId]
    const callId = row.callId
    state.emit(() => ({ _tag: "ReplyScheduled", toolsetId: state.definition.id, callId, at }))
    Coordinator.handOver(coordinator, {
      owner: state.owner,
      callId,
      itemIds,
      insertedAt: mirrored.has(row.itemId) ? at : row.createdAt
    })
  }
  notifyIdle(state)
}

export const stopWatcher = (fiber: Fiber.Fiber<never> | undefined): Effect.Effect<void> =>
  fiber === undefined ? Effect.void : Fiber.interrupt(fiber)
