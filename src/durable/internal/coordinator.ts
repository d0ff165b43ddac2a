/**
 * The reply coordinator of a session's durable toolsets: one fiber per session, in the process that
 * hosts its agent. Durable toolsets hand it the items (a call/output pair each) that they put into
 * the agent's chat and that are owed a reply; it waits until the session is inactive, takes every
 * pending item at once, and asks for one reply covering them all (C2, C3). Once the reply is
 * asked for (or given up), the items are marked in the store as owed nothing: a process that
 * starts again asks only for what is still owed.
 *
 * Every answer of the session port that is not a success is a fault to retry or report (E9).
 */
import { Deferred, Effect, Exit, Fiber, References, Schedule } from "effect"
import type { Clock } from "effect"
import type { AgentSession } from "../../AgentSession.ts"
import type { ChatItem } from "../../ChatContext.ts"
import type { DurableChat } from "../../DurableChat.ts"
import type { DurableStore } from "../../DurableStore.ts"
import * as Prompts from "../../Prompts.ts"
import type { ToolsetEvent } from "../../ToolsetEvent.ts"
import type { ReplyPolicy } from "../../internal/coordinator/index.ts"
import { markReplied } from "./tables.ts"

type Session = AgentSession["Service"]

/** How a toolset wants its items answered: as the in-memory coordinator's policy. */
export type Policy = ReplyPolicy

/** A durable toolset, as the coordinator sees it. */
export interface Owner {
  readonly id: string
  readonly policy: Policy
  /** Items handed over and not answered yet. */
  pending: number
  closed: boolean
  readonly emit: (event: ToolsetEvent) => void
  /** `pending` went down. */
  readonly settled: () => void
}

/** A pair in the agent's chat, owed a reply. */
export interface Item {
  readonly owner: Owner
  /** The call id the reply instructions name (`<callId>_update_<n>`, `<callId>_final`, or the call's own). */
  readonly callId: string
  readonly itemIds: ReadonlyArray<string>
  /** When it reached the agent's chat. */
  readonly insertedAt: number
}

export interface Coordinator {
  readonly session: Session
  readonly store: DurableStore["Service"]
  readonly chat: DurableChat["Service"]
  readonly clock: Clock.Clock
  queue: Array<Item>
  parked: Deferred.Deferred<void> | undefined
  readonly owners: Set<Owner>
  fiber: Fiber.Fiber<never> | undefined
  closed: boolean
}

const coordinators = new WeakMap<Session, Coordinator>()

/** The session's coordinator, made (its fiber started) by the first durable toolset on it. */
export const acquire = (
  session: Session,
  store: DurableStore["Service"],
  chat: DurableChat["Service"],
  owner: Owner
): Effect.Effect<Coordinator> =>
  Effect.clockWith((clock) =>
    Effect.suspend(() => {
      const found = coordinators.get(session)
      if (found !== undefined && !found.closed) {
        found.owners.add(owner)
        return Effect.succeed(found)
      }
      const made: Coordinator = {
        session,
        store,
        chat,
        clock,
        queue: [],
        parked: undefined,
        owners: new Set([owner]),
        fiber: undefined,
        closed: false
      }
      coordinators.set(session, made)
      return Effect.map(Effect.forkDetach(run(made), { startImmediately: true }), (fiber) => {
        made.fiber = fiber
        return made
      })
    })
  )

/** The toolset leaves; the last one stops the fiber. Items it had queued stay owed in the store. */
export const release = (coordinator: Coordinator, owner: Owner): Effect.Effect<void> =>
  Effect.suspend(() => {
    owner.closed = true
    const left = coordinator.queue.filter((item) => item.owner === owner).map((item) => item.callId)
    coordinator.queue = coordinator.queue.filter((item) => item.owner !== owner)
    owner.pending = 0
    owner.settled()
    coordinator.owners.delete(owner)
    const report = left.length === 0 ? Effect.void : Effect.logInfo(
      `closing: ${left.join(", ")} are in the chat and still owed a reply; the store keeps them for the next start`
    ).pipe(Effect.annotateLogs({ toolset: owner.id }))
    if (coordinator.owners.size > 0) return report
    coordinator.closed = true
    if (coordinators.get(coordinator.session) === coordinator) coordinators.delete(coordinator.session)
    const fiber = coordinator.fiber
    return fiber === undefined ? report : Effect.andThen(report, Fiber.interrupt(fiber))
  })

/** An item is in the agent's chat and owed a reply. */
export const handOver = (coordinator: Coordinator, item: Item): void => {
  if (item.owner.closed || coordinator.closed) return
  item.owner.pending++
  coordinator.queue.push(item)
  const parked = coordinator.parked
  if (parked !== undefined) {
    coordinator.parked = undefined
    Deferred.doneUnsafe(parked, Exit.void)
  }
}

// --- the fiber -----------------------------------------------------------------------------------

const run = (coordinator: Coordinator): Effect.Effect<never> => {
  const park = Effect.suspend(() => {
    if (coordinator.queue.length > 0) return Effect.void
    const parked = Deferred.makeUnsafe<void>()
    coordinator.parked = parked
    return Deferred.await(parked)
  })
  // The yield lets a burst of results that arrive together join one reply.
  const next = Effect.suspend(() => round(coordinator))
  return Effect.forever(Effect.andThen(park, Effect.andThen(Effect.yieldNow, next)), { disableYield: true })
}

type Decision =
  | { readonly _tag: "Ask"; readonly batch: ReadonlyArray<Item>; readonly instructions: string; readonly policy: Policy }
  | { readonly _tag: "Skip"; readonly batch: ReadonlyArray<Item> }
  | { readonly _tag: "Nothing" }

/**
 * One reply (a new round each time: its decision is its own): wait until the session is inactive,
 * then, without yielding, take everything pending,
 * read the chat (it only picks the wording) and ask. A failed request is retried after the
 * session is inactive again; the whole is bounded by the newest item's `replyTimeout`.
 */
const round = (coordinator: Coordinator): Effect.Effect<void> => {
  const session = coordinator.session
  let decision: Decision = { _tag: "Nothing" }
  // No scheduler yield from the inactive check to the request: a user who starts speaking is never
  // talked over (C2). `items` is the session's own array, read synchronously.
  const attempt = Effect.andThen(
    session.awaitInactive,
    Effect.flatMap(session.items, (chat) => {
      if (decision._tag === "Nothing") decision = decide(coordinator, chat)
      if (decision._tag !== "Ask") return Effect.void
      // The reply the agent stores answers these items: recorded in the same commit (DurableChat).
      coordinator.chat.replyFor(decision.batch.flatMap((item) => item.itemIds))
      return session.generateReply({ instructions: decision.instructions, toolChoice: "none" })
    })
  ).pipe(Effect.provideService(References.PreventSchedulerYield, true))
  return Effect.suspend(() => {
    const policy = coordinator.queue.at(-1)?.owner.policy
    if (policy === undefined) return Effect.void
    // Waiting for the session to be inactive may take as long as the user talks: only the request
    // (with its retries) is bounded in time.
    return Effect.andThen(
      session.awaitInactive,
      attempt.pipe(Effect.retry(policy.sessionRetry), Effect.timeout(policy.replyTimeout))
    ).pipe(
      Effect.exit,
      Effect.flatMap((exit) => conclude(coordinator, decision, exit))
    )
  })
}

/** Takes the queue and decides whether and how to ask. */
const decide = (coordinator: Coordinator, chat: ReadonlyArray<ChatItem>): Decision => {
  const batch = coordinator.queue.filter((item) => !item.owner.closed)
  coordinator.queue = []
  if (batch.length === 0) return { _tag: "Nothing" }
  const covered = spokeAfter(chat, batch)
  if (covered && batch.every((item) => item.owner.policy.whenAlreadyAnswered === "skip")) return { _tag: "Skip", batch }
  const policy = batch[batch.length - 1]!.owner.policy
  const pendingCallIds = batch.map((item) => item.callId).join(", ")
  const instructions = Prompts.render(covered ? policy.prompts.replyMaybeCovered : policy.prompts.replyAtTail, { pendingCallIds })
  return { _tag: "Ask", batch, instructions, policy }
}

/** Whether the agent said something after the newest pending item reached its chat. */
const spokeAfter = (chat: ReadonlyArray<ChatItem>, pending: ReadonlyArray<Item>): boolean => {
  const ours = new Set(pending.flatMap((item) => item.itemIds))
  const insertedAt = Math.max(...pending.map((item) => item.insertedAt))
  for (let i = chat.length - 1; i >= 0; i--) {
    const item = chat[i]!
    if (ours.has(item.id)) return false
    if (item._tag === "ChatMessage" && item.role === "assistant" && item.createdAt >= insertedAt) return true
  }
  return false
}

/** After the round: the items are owed nothing any more (asked, skipped, or given up and reported). */
const conclude = (coordinator: Coordinator, decision: Decision, exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> => {
  if (decision._tag === "Nothing") {
    // The session failed before the items were taken (waiting for idle or reading the chat).
    if (Exit.isSuccess(exit)) return Effect.void
    const left = coordinator.queue
    coordinator.queue = []
    return report(coordinator, left, exit, false)
  }
  const at = coordinator.clock.currentTimeMillisUnsafe()
  const batch = decision.batch
  if (Exit.isSuccess(exit)) {
    for (const [owner, callIds] of byOwner(batch)) {
      owner.emit(
        decision._tag === "Ask"
          ? { _tag: "ReplyDelivered", toolsetId: owner.id, callIds, instructions: decision.instructions, at }
          : { _tag: "ReplySkipped", toolsetId: owner.id, callIds, reason: "already-answered", at }
      )
    }
    return settle(coordinator, batch, decision._tag === "Ask")
  }
  return report(coordinator, batch, exit, decision._tag === "Ask")
}

const report = (coordinator: Coordinator, batch: ReadonlyArray<Item>, exit: Exit.Exit<unknown, unknown>, asked: boolean) => {
  if (batch.length === 0 || Exit.isSuccess(exit)) return settle(coordinator, batch, asked)
  const at = coordinator.clock.currentTimeMillisUnsafe()
  for (const [owner, callIds] of byOwner(batch)) {
    owner.emit({ _tag: "ReplySkipped", toolsetId: owner.id, callIds, reason: "session-failed", at })
  }
  return Effect.andThen(
    Effect.logError(
      `the session failed while a reply was prepared; no reply was requested for ${
        batch.map((item) => item.callId).join(", ")
      } (they are in the chat for the next reply)`,
      exit.cause
    ).pipe(Effect.annotateLogs({ toolset: [...new Set(batch.map((item) => item.owner.id))].join(", ") })),
    settle(coordinator, batch, asked)
  )
}

/**
 * Marks the items as owed nothing in the store, then counts them as answered. When the reply was
 * asked for (`asked`), those the agent's stored reply marked already are left out.
 */
const settle = (coordinator: Coordinator, batch: ReadonlyArray<Item>, asked: boolean): Effect.Effect<void> =>
  Effect.suspend(() => {
    const unmarked = asked ? coordinator.chat.replyFor([]) : batch.flatMap((item) => item.itemIds)
    return markReplied(coordinator.store.sql, coordinator.chat.sessionId, unmarked)
  }).pipe(
    Effect.retry(Schedule.exponential("100 millis").pipe(Schedule.upTo({ times: 4 }))),
    Effect.catchCause((cause) =>
      Effect.logWarning("could not record that a reply was asked for; after a restart it may be asked for again", cause)
    ),
    Effect.ensuring(Effect.sync(() => {
      const owners = new Set<Owner>()
      for (const item of batch) {
        if (item.owner.closed) continue
        item.owner.pending--
        owners.add(item.owner)
      }
      for (const owner of owners) owner.settled()
    }))
  )

const byOwner = (items: ReadonlyArray<Item>): Map<Owner, Array<string>> => {
  const map = new Map<Owner, Array<string>>()
  for (const item of items) {
    const list = map.get(item.owner)
    if (list === undefined) map.set(item.owner, [item.callId])
    else list.push(item.callId)
  }
  return map
}
