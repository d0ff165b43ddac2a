/**
 * The reply coordinator of one session, shared by every toolset on it (in-memory and durable
 * alike): the data, and the steps by which toolsets join it, hand it items and leave it.
 *
 * A toolset inserts a call's later update or final result into the chat itself (so it is there
 * when `update` returns, rule C1) and hands the inserted item here. One fiber per session waits
 * until the session is inactive, takes everything pending from every toolset at once, and asks
 * for exactly one reply covering it all (C2, C3); each toolset's own options govern its items
 * inside that reply (C4c). It also retries insertions that failed (stamping the items anew, C4b),
 * and keeps, per toolset, the count of items not yet answered (for `awaitIdle`).
 *
 * What the fiber does is in `round.ts`; the decision of one reply in `decide.ts`; insertions
 * retried in `insertions.ts`. Every answer of the session port, whatever its shape (a failure, a
 * defect, an interrupt cause, a hang), is a fault to retry or report: only the coordinator's own
 * phase says it is stopping (E9).
 */
import { Deferred, Effect, Exit, Fiber, References, Scope } from "effect"
import type { Clock, Duration, Schedule } from "effect"
import type { AgentSession } from "../../AgentSession.ts"
import type { ChatItem } from "../../ChatContext.ts"
import type * as Prompts from "../../Prompts.ts"
import type { ToolsetEvent } from "../../ToolsetEvent.ts"

export type Session = AgentSession["Service"]

/** How a toolset wants its results answered (C4c: each toolset's items follow its own). */
export interface ReplyPolicy {
  readonly prompts: Prompts.Prompts
  readonly whenAlreadyAnswered: "ask" | "skip"
  /** How a failed insertion or reply request for its items is retried. */
  readonly sessionRetry: Schedule.Schedule<unknown, unknown>
  /**
   * How long the session may take to take up a request for its items (and to answer a chat read
   * or an insertion retried), not counting waits for the session to be inactive (C4e).
   */
  readonly replyTimeout: Duration.Duration
}

/**
 * What a toolset's store does around replies. The durable toolset keeps its items owed a reply in
 * its store until a reply is made for them; the in-memory toolset has no hooks.
 */
export interface ReplyHooks {
  /**
   * A reply covering these items is about to be asked for. Synchronous: nothing may suspend
   * between the session's last inactive check and the request (C2).
   */
  readonly asking: (items: ReadonlyArray<Item>) => void
  /** No reply will be asked for these: the agent already answered them (C4, `skip`). */
  readonly skipped: (items: ReadonlyArray<Item>) => Effect.Effect<void>
}

/** A toolset, as the coordinator sees it. */
export interface Owner {
  readonly id: string
  readonly policy: ReplyPolicy
  readonly hooks: ReplyHooks | undefined
  /** Items not answered yet: being inserted, queued, retried, or in a reply being asked for. */
  pending: number
  closed: boolean
  /** Publishes one of the toolset's events (a no-op without subscribers). */
  readonly emit: (event: ToolsetEvent) => void
  /** Whether someone listens to the toolset's events (else none is built). */
  readonly listening: () => boolean
  /** Called when `pending` went down: the toolset may be idle now. */
  readonly settled: () => void
  /** Completed when the toolset closes. */
  readonly closing: Deferred.Deferred<void>
}

/** What the coordinator needs to know of the call an item comes from. */
export interface CallState {
  /** Why the call was stopped, once it was (`closed`: its toolset closed). */
  readonly stopCause: string | undefined
  /** When it was admitted (clock milliseconds); absent for an item owed from before. */
  readonly startedAt?: number
  /** It counts among the session's running calls (`callBegan`, not yet `callEnded`). */
  readonly counted?: boolean
  /** Where its lifecycle is (`finishing`: its handler returned; its result is its last item). */
  readonly status?: string
}

/**
 * Why an item whose insertion failed is not inserted any more: its call was cancelled (nothing of
 * it reaches the chat after that, E2). Nothing else drops an item (C3).
 */
export type DropReason = "cancelled"

/** A call/output pair a toolset put (or tried to put) into the chat, owed a reply. */
export interface Item {
  readonly owner: Owner
  /** The synthetic call id (`<callId>_update_<n>`, `<callId>_final`). */
  readonly callId: string
  items: ReadonlyArray<ChatItem>
  inserted: boolean
  /** Clock time at which the insertion completed. */
  insertedAt: number
  readonly call: CallState
  readonly dropped: () => DropReason | undefined
  /** Its call was cancelled after its insertion failed, and the chat was looked at for part of it. */
  looked?: boolean
}

/**
 * Where the coordinator's fiber is:
 * - `Waiting`: nothing to do; the next item handed over wakes it.
 * - `Gathering`: woken by an item; it lets everything ready at this clock instant join (C4d).
 * - `Round`: preparing and asking for one reply (`round.ts`).
 * - `Closed`: the last toolset left; nothing is taken any more.
 */
export type Phase =
  | { readonly _tag: "Waiting"; readonly wake: () => void }
  | { readonly _tag: "Gathering" }
  | { readonly _tag: "Round" }
  | { readonly _tag: "Closed" }

/** The coordinator of one session. */
export interface Coordinator {
  readonly session: Session
  readonly clock: Clock.Clock
  /** Owns the coordinator's fiber (and, through it, every request it makes). */
  readonly scope: Scope.Closeable
  readonly owners: Set<Owner>
  phase: Phase
  /** Items handed over and not taken yet. */
  queue: Array<Item>
  /** Items taken for the reply being prepared or asked for. */
  batch: Array<Item>
  /** Called when the batch of a round that retries is left with nothing of an open toolset. */
  nothingLeft: (() => void) | undefined
  /** Called with each item handed over while a round waits for a toolset's retry (`round.ts`). */
  arrived: ((item: Item) => void) | undefined
  /**
   * The session's running calls, counted by the clock millisecond they were admitted in: results
   * of calls started together are gathered into one reply (C4d, `round.ts`).
   */
  readonly running: Map<number, number>
  /** How many calls of the session are running (the sum of `running`). */
  runningCount: number
  /** Called when a running call of the session ends (while the coordinator gathers). */
  callEnded: (() => void) | undefined
  /** Request steps that did not end at once (stopped, and waited for, when the scope closes). */
  readonly steps: Set<Fiber.Fiber<unknown, unknown>>
}

const waiting = (wake: () => void): Phase => ({ _tag: "Waiting", wake })
const gathering: Phase = { _tag: "Gathering" }
const closedPhase: Phase = { _tag: "Closed" }

export const isClosed = (coordinator: Coordinator): boolean => coordinator.phase._tag === "Closed"

const coordinators = new WeakMap<Session, Coordinator>()

/**
 * The session's coordinator: made (its fiber started in a scope of its own) by the first toolset
 * of the session, stopped by `release` of the last. `run` is the fiber's program (`round.ts`).
 */
export const acquire = (
  session: Session,
  owner: Owner,
  run: (coordinator: Coordinator) => Effect.Effect<never>
): Effect.Effect<Coordinator> =>
  Effect.clockWith((clock) =>
    Effect.suspend(() => {
      const found = coordinators.get(session)
      if (found !== undefined && !isClosed(found)) {
        found.owners.add(owner)
        return Effect.succeed(found)
      }
      const made: Coordinator = {
        session,
        clock,
        scope: Scope.makeUnsafe(),
        owners: new Set([owner]),
        phase: gathering,
        queue: [],
        batch: [],
        nothingLeft: undefined,
        arrived: undefined,
        running: new Map(),
        runningCount: 0,
        callEnded: undefined,
        steps: new Set()
      }
      coordinators.set(session, made)
      // The fiber never yields to the scheduler on its own (it does little between waits, and its
      // last idle wait and the reply request must not be separated by a yield: C2). It waits only
      // where it means to: for work, for the clock, for the session. After it is stopped (the
      // scope's finalizers run last added first), a request step left running (its toolsets
      // closed while it hung) is stopped and waited for.
      return Effect.andThen(
        Scope.addFinalizer(made.scope, Effect.suspend(() => Fiber.interruptAll(made.steps))),
        Effect.as(
          Effect.forkIn(Effect.provideService(run(made), References.PreventSchedulerYield, true), made.scope, {
            startImmediately: true
          }),
          made
        )
      )
    })
  )

/** The toolset leaves (it closed); the last toolset's release stops the fiber and waits for it. */
export const release = (coordinator: Coordinator, owner: Owner): Effect.Effect<void> =>
  Effect.suspend(() => {
    const report = letGo(owner, closeOwner(coordinator, owner))
    coordinator.owners.delete(owner)
    if (coordinator.owners.size > 0) return report
    coordinator.phase = closedPhase
    if (coordinators.get(coordinator.session) === coordinator) coordinators.delete(coordinator.session)
    return Effect.andThen(report, Scope.close(coordinator.scope, Exit.void))
  })

/**
 * The toolset is closing: nothing of it is inserted or answered from now on. Its items still
 * queued or in the batch are taken back and returned, for `letGo` to report; its count drops to
 * zero. A second call returns nothing.
 */
export const closeOwner = (coordinator: Coordinator, owner: Owner): ReadonlyArray<Item> => {
  if (owner.closed) return []
  owner.closed = true
  const mine = (item: Item) => item.owner === owner
  const left = [...coordinator.queue.filter(mine), ...coordinator.batch.filter(mine)]
  coordinator.queue = coordinator.queue.filter((item) => !mine(item))
  coordinator.batch = coordinator.batch.filter((item) => !mine(item))
  owner.pending = 0
  owner.settled()
  Deferred.doneUnsafe(owner.closing, Exit.void)
  if (coordinator.nothingLeft !== undefined && !coordinator.batch.some((item) => !item.owner.closed)) coordinator.nothingLeft()
  return left
}

/** Says which items a closing toolset lets go: those not in the chat, and those owed a reply. */
export const letGo = (owner: Owner, items: ReadonlyArray<Item>): Effect.Effect<void> => {
  // Not in the chat, as far as the toolset knows: an insertion that failed may have put part of
  // one there (a function call without its output), which no one completes after close. An item
  // of a cancelled call is left out unless its insertion failed (it was handed over for a look).
  const lost = items.filter((item) => !item.inserted && item.dropped() !== "cancelled").map((item) => item.callId)
  const cancelled = items.filter((item) => !item.inserted && item.dropped() === "cancelled").map((item) => item.callId)
  const unanswered = items.filter((item) => item.inserted).map((item) => item.callId)
  if (lost.length === 0 && cancelled.length === 0 && unanswered.length === 0) return Effect.void
  const half = "(a failed insertion may have left part of it there: a function call without its output)"
  const owed = owner.hooks === undefined
    ? "no reply will be requested for them"
    : "a reply is still owed for them: the toolset made again for this conversation asks for it"
  return Effect.all([
    lost.length === 0 ? Effect.void : owner.hooks === undefined
      ? Effect.logError(`closing: ${lost.join(", ")} never reached the chat ${half}`)
      // A store that keeps its items (durable) puts them into the chat when the toolset is made again.
      : Effect.logWarning(`closing: ${lost.join(", ")} did not reach the chat yet ${half}; the store keeps them: the toolset made again for this conversation puts them there`),
    cancelled.length > 0
      ? Effect.logError(`closing: ${cancelled.join(", ")} of cancelled calls: a failed insertion may have left part of it in the chat (a function call without its output), not completed`)
      : Effect.void,
    unanswered.length > 0
      ? Effect.logInfo(`closing: ${unanswered.join(", ")} are in the chat; ${owed}`)
      : Effect.void
  ], { discard: true }).pipe(Effect.annotateLogs({ toolset: owner.id }))
}

// --- items ---------------------------------------------------------------------------------------

/** Why an item is not to be inserted (or answered) any more, if it is not. */
export const dropped = (call: CallState, force: boolean): DropReason | undefined =>
  !force && call.stopCause !== undefined && call.stopCause !== "closed" ? "cancelled" : undefined

/** An item is being inserted by its toolset: it counts as pending from now on. */
export const begin = (item: Item): void => {
  item.owner.pending++
}

/** The item's insertion completed. */
export const inserted = (coordinator: Coordinator, item: Item): void => {
  item.inserted = true
  item.insertedAt = coordinator.clock.currentTimeMillisUnsafe()
}

/** The item is in the chat (or its insertion failed and is to be retried): queue it for the reply. */
export const handOver = (coordinator: Coordinator, item: Item): void => {
  if (item.owner.closed || isClosed(coordinator)) return settle(item)
  coordinator.queue.push(item)
  const phase = coordinator.phase
  if (phase._tag === "Waiting") {
    coordinator.phase = gathering
    phase.wake()
  } else coordinator.arrived?.(item)
}

/** The item will never be answered. */
export const settle = (item: Item): void => {
  if (item.owner.closed) return
  item.owner.pending--
  item.owner.settled()
}

/**
 * Waits for an item to be handed over (at once if one is queued), then runs `gather` (which lets
 * everything ready at this instant be handed over too). Only the coordinator's fiber calls it,
 * between rounds.
 */
export const awaitWork = (coordinator: Coordinator, gather: Effect.Effect<void>): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    if (isClosed(coordinator)) return resume(Effect.void)
    if (coordinator.queue.length > 0) {
      coordinator.phase = gathering
      return resume(gather)
    }
    coordinator.phase = waiting(() => resume(gather))
    return Effect.sync(() => {
      if (coordinator.phase._tag === "Waiting") coordinator.phase = gathering
    })
  })

// --- running calls (C4d) -------------------------------------------------------------------------

/** A call of the session began to run. */
export const callBegan = (coordinator: Coordinator, startedAt: number): void => {
  const at = Math.floor(startedAt)
  coordinator.running.set(at, (coordinator.running.get(at) ?? 0) + 1)
  coordinator.runningCount++
}

/** A call of the session that began to run has ended (its last item, if any, handed over). */
export const callEnded = (coordinator: Coordinator, startedAt: number): void => {
  const at = Math.floor(startedAt)
  const left = (coordinator.running.get(at) ?? 1) - 1
  if (left <= 0) coordinator.running.delete(at)
  else coordinator.running.set(at, left)
  coordinator.runningCount--
  coordinator.callEnded?.()
}

// --- synthetic call ids (B7) ---------------------------------------------------------------------

/**
 * The call ids a session's chat holds or will hold, as far as its toolsets know: the bases of
 * their calls' synthetic ids, the synthetic ids they made, and the ids of the model's calls they
 * were given. They outlive the session's coordinators (a toolset made again at an agent hand-off
 * must not write a pair written before), and live as long as the session: as many as the chat
 * holds, and smaller than its items.
 */
const ids = new WeakMap<Session, Set<string>>()

const idsOf = (session: Session): Set<string> => {
  let used = ids.get(session)
  if (used === undefined) ids.set(session, used = new Set())
  return used
}

/**
 * Calls a function of the session port: one that throws instead of returning an effect is a port
 * fault like any other (E9), a defect its caller handles. (A `try` rather than `Effect.suspend`:
 * no step more per call on the way every call takes.)
 */
export const callPort = <A, E>(f: () => Effect.Effect<A, E>): Effect.Effect<A, E> => {
  try {
    return f()
  } catch (defect) {
    return Effect.die(defect)
  }
}

/** A model's call id seen by a toolset of the session: no synthetic id may take it (B7). */
export const noteCallId = (session: Session, callId: string): void => {
  idsOf(session).add(callId)
}

/**
 * The base of a call's synthetic ids: its call id, or, when that was a base already (a model
 * reusing an ended call's id, or a model id that equals a base made before), `<callId>_run<k>`
 * with the first free `k`.
 */
export const claimBase = (session: Session, callId: string): string => {
  const bases = basesOf(session)
  let base = callId
  for (let k = 2; bases.has(base); k++) base = `${callId}_run${k}`
  bases.add(base)
  idsOf(session).add(base)
  return base
}

const bases = new WeakMap<Session, Set<string>>()
const basesOf = (session: Session): Set<string> => {
  let found = bases.get(session)
  if (found === undefined) bases.set(session, found = new Set())
  return found
}

/** A base taken in the session (a store's call, recorded before): no new call may take it. */
export const noteBase = (session: Session, base: string): void => {
  basesOf(session).add(base)
  idsOf(session).add(base)
}

/**
 * A synthetic call id, `<base><suffix>`, claimed for the session: if the model used that id for a
 * call of its own (a later answer's call id may equal a running call's future `_update_1`), a
 * `_<k>` is added, so no two items of the chat ever share a call id (B7).
 */
export const claimSynthetic = (session: Session, base: string, suffix: string): string => {
  const used = idsOf(session)
  const wanted = base + suffix
  let id = wanted
  for (let k = 2; used.has(id); k++) id = `${wanted}_${k}`
  used.add(id)
  return id
}

/** Whether a call id is taken in the session (for a store that names its items itself). */
export const isTaken = (session: Session, callId: string): boolean => idsOf(session).has(callId)

/** Stops a fiber the coordinator started without waiting for it (it is owned by the scope). */
export const interruptQuietly = (fiber: Fiber.Fiber<unknown, unknown> | undefined): void => {
  if (fiber !== undefined && fiber.pollUnsafe() === undefined) fiber.interruptUnsafe()
}
