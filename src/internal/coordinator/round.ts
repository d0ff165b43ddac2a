/**
 * The coordinator's fiber: it waits for items, lets everything ready at this clock instant join
 * (C4d), then makes one round: insert again what failed, wait until the session is inactive, and
 * ask for one reply covering everything pending (C2, C3), each toolset's items by its own options
 * (C4c).
 *
 * A round's request step (read the chat, wait until the session is inactive, decide, ask) runs in
 * a child fiber started at once: when the session answers at once (the usual case) it is over
 * before the coordinator looks at it, with no timer and no scheduler hop. Nothing in it suspends
 * or yields between the last inactive check and the request: a user who starts speaking is never
 * talked over (C2). A step that does not answer at once is waited for: its wait for the session to
 * be inactive without bound, its chat read and its request within each toolset's `replyTimeout`
 * (C4e: the time the session takes to take the request up, not the time the agent then speaks).
 *
 * A request that fails is asked again by each toolset's own `sessionRetry`: a toolset whose
 * schedule ends has its items given up and reported; the others go on (C4c). Each attempt takes
 * what arrived meanwhile and reads the chat again. A request that does not answer in time is not
 * repeated (the session may still make that reply; a second request would repeat it).
 */
import { Cause, Duration, Effect, Exit, Fiber, Schedule } from "effect"
import type { ChatItem } from "../../ChatContext.ts"
import {
  answerable,
  awaitsInsertion,
  delivered,
  giveUp,
  portCause,
  portFault,
  PortFault,
  settleBatch,
  skipped,
  take,
  unbatch
} from "./batch.ts"
import type { Coordinator, Item, Owner } from "./coordinator.ts"
import { awaitWork, callPort, interruptQuietly, isClosed, settle } from "./coordinator.ts"
import { byOwner, callIdsOf, decide, ownersOf } from "./decide.ts"
import { awaitSiblings, gatherOnce, hasSiblings, isTestClock } from "./gather.ts"
import { letGoCancelled, retryInsertions } from "./insertions.ts"

/** The coordinator's fiber. */
export const run = (coordinator: Coordinator): Effect.Effect<never> => {
  const gather = gatherOnce(coordinator)
  const siblings = isTestClock(coordinator.clock) ? undefined : awaitSiblings(coordinator)
  const round = Effect.suspend(() =>
    siblings !== undefined && hasSiblings(coordinator)
      ? Effect.andThen(siblings, Effect.suspend(() => oneRound(coordinator)))
      : oneRound(coordinator)
  )
  return Effect.forever(Effect.andThen(awaitWork(coordinator, gather), round), { disableYield: true })
}

/** What a round's request step ended with: asked (or nothing to ask), or prepare again. */
type Step = "done" | "again"

/** The state of one round, from taking the queue to the reply (or giving up). */
interface Round {
  /** The request step waits for the session to be inactive (a wait no time bound counts). */
  waiting: boolean
  /** When the time bounds of the step's port operations count from. */
  boundFrom: number
  /** Called when the step's wait for the session ends (while the coordinator waits on the step). */
  waitEnded: (() => void) | undefined
  /** The step suspended (on the chat read, the idle wait, or the request). */
  suspended: boolean
  /** The chat was read again after a step that suspended (at most once per attempt). */
  reread: boolean
  /** The reply asked for in this attempt, once the step asks. */
  request: { readonly items: ReadonlyArray<Item>; readonly instructions: string } | undefined
  /** Each toolset's retry schedule, as far as it went in this round (made at the first failure). */
  retries: Map<Owner, Retry> | undefined
  /** When each toolset whose request failed may be asked for again (its own schedule's delay). */
  notBefore: Map<Owner, number> | undefined
  /** What to do once the round is over (skipped items recorded by their store), if anything. */
  after: Array<Effect.Effect<void>> | undefined
}

type Retry = (now: number, input: unknown) => Effect.Effect<[unknown, Duration.Duration], Cause.Done<unknown>>

const newRound = (): Round => ({
  waiting: false,
  boundFrom: 0,
  waitEnded: undefined,
  suspended: false,
  reread: false,
  request: undefined,
  retries: undefined,
  notBefore: undefined,
  after: undefined
})

/** One reply: everything pending once the session is idle. Never fails. */
const oneRound = (coordinator: Coordinator): Effect.Effect<void> => {
  coordinator.phase = { _tag: "Round" }
  const r = newRound()
  const settled = Effect.suspend(() => {
    settleBatch(coordinator)
    return r.after === undefined ? Effect.void : Effect.all(r.after, { discard: true })
  })
  return Effect.matchCauseEffect(prepare(coordinator, r), {
    onSuccess: () => settled,
    onFailure: (cause) =>
      isClosed(coordinator)
        ? Effect.andThen(settled, Effect.interrupt)
        : Effect.ensuring(
          // A defect of its own (not a port's answer, which comes as a `PortFault`) is a bug: say so.
          cause.reasons.some(Cause.isDieReason)
            ? Effect.andThen(
              Effect.logError("the reply coordinator's round failed", cause),
              giveUp(coordinator, coordinator.batch.slice(), cause, "the reply coordinator failed")
            )
            : giveUp(coordinator, coordinator.batch.slice(), portCause(cause), "the session failed"),
          settled
        )
  })
}

/**
 * Inserts what failed before (once the session is inactive: a session may refuse insertions while
 * it generates), then asks.
 */
const prepare = (coordinator: Coordinator, r: Round): Effect.Effect<void, PortFault> =>
  Effect.suspend(() => {
    take(coordinator)
    if (coordinator.batch.some(awaitsInsertion)) {
      return Effect.andThen(
        letGoCancelled(coordinator),
        Effect.suspend(() =>
          coordinator.batch.some(awaitsInsertion)
            ? Effect.andThen(
              Effect.catchCause(coordinator.session.awaitInactive, portFault(coordinator)),
              Effect.andThen(Effect.suspend(() => retryInsertions(coordinator)), prepare(coordinator, r))
            )
            : prepare(coordinator, r)
        )
      )
    }
    if (!coordinator.batch.some(answerable)) return Effect.void
    return ask(coordinator, r)
  })

/** Starts the request step and follows it to its end. */
const ask = (coordinator: Coordinator, r: Round): Effect.Effect<void, PortFault> => {
  r.suspended = false
  r.waiting = false
  r.request = undefined
  r.boundFrom = coordinator.clock.currentTimeMillisUnsafe()
  // Started here and now on the coordinator's context (no fork effect: the step of a session that
  // answers at once is over before this returns). A step that suspends is waited for, and stopped
  // if the coordinator is.
  const step = Effect.runForkWith(Fiber.getCurrent()!.context)(requestStep(coordinator, r))
  const exit = step.pollUnsafe()
  if (exit !== undefined) return stepEnded(coordinator, r, exit)
  // Owned by the coordinator: its scope waits for the step to stop when it closes.
  coordinator.steps.add(step)
  step.addObserver(() => coordinator.steps.delete(step))
  r.suspended = true
  return Effect.flatMap(
    Effect.onInterrupt(awaitStep(coordinator, r, step), () => Effect.sync(() => interruptQuietly(step))),
    (ended) => ended === undefined ? (r.notBefore === undefined ? Effect.void : askHeld(coordinator, r)) : stepEnded(coordinator, r, ended)
  )
}

/** The step ended: asked (or nothing to ask), to be prepared again, or failed (retried). */
const stepEnded = (coordinator: Coordinator, r: Round, exit: Exit.Exit<Step, PortFault>): Effect.Effect<void, PortFault> => {
  if (Exit.isSuccess(exit)) {
    // (no run-loop step for a round without retries: the usual case)
    return exit.value === "again" ? prepare(coordinator, r) : r.notBefore === undefined ? Effect.void : askHeld(coordinator, r)
  }
  if (isClosed(coordinator)) return Effect.interrupt
  if (exit.cause.reasons.some(Cause.isDieReason)) return Effect.failCause(exit.cause)
  return retry(coordinator, r, exit.cause)
}

/**
 * The request step: read the chat (it only picks the wording: if the read fails, ask as if the
 * items were the latest), wait until the session is inactive, then, without suspending, decide
 * and ask.
 */
const requestStep = (coordinator: Coordinator, r: Round): Effect.Effect<Step, PortFault> => {
  const session = coordinator.session
  const afterRead = (chat: ReadonlyArray<ChatItem> | undefined): Effect.Effect<Step, PortFault> => {
    r.waiting = true
    return Effect.matchCauseEffect(session.awaitInactive, {
      onSuccess: () => decideAndAsk(coordinator, r, chat),
      onFailure: portFault(coordinator)
    })
  }
  return Effect.matchCauseEffect(session.items, {
    onSuccess: afterRead,
    onFailure: (cause) => {
      if (isClosed(coordinator)) return Effect.interrupt
      const batch = coordinator.batch.filter(answerable)
      return Effect.andThen(
        Effect.logWarning(`could not read the chat; asking for the reply for ${callIdsOf(batch)} as if they were the latest`, cause)
          .pipe(Effect.annotateLogs({ toolset: ownersOf(batch) })),
        Effect.suspend(() => afterRead(undefined))
      )
    }
  })
}

/**
 * After the last inactive check: take what arrived meanwhile, decide whether and how to reply, and
 * ask. Nothing here suspends before the request.
 */
const decideAndAsk = (
  coordinator: Coordinator,
  r: Round,
  chat: ReadonlyArray<ChatItem> | undefined
): Effect.Effect<Step, PortFault> => {
  if (r.waiting) {
    r.waiting = false
    r.boundFrom = coordinator.clock.currentTimeMillisUnsafe()
  }
  const late = take(coordinator)
  if (late.some(awaitsInsertion)) return Effect.succeed("again")
  // The step suspended (a session that reads its chat asynchronously, or that was busy at the
  // last idle wait): the agent may have spoken since the chat was read. Read it once more (a
  // session busy all through an asynchronous read is the one case this cannot see).
  if (r.suspended && !r.reread) {
    r.reread = true
    return Effect.succeed("again")
  }
  const ready = r.notBefore === undefined ? coordinator.batch.filter(answerable) : dueItems(coordinator, r)
  if (ready.length === 0) return Effect.succeed("done")
  const decision = decide(ready, chat, late.length === 0 ? noLate : new Set(late))
  if (decision.skip.length > 0) skip(coordinator, r, decision.skip)
  if (decision.ask.length === 0) {
    return Effect.as(Effect.logDebug("the agent already spoke after the pending results; no reply requested"), "done")
  }
  const { instructions } = decision
  r.request = { items: decision.ask, instructions }
  if (decision.ask.some(hooked)) for (const [owner, items] of byOwner(decision.ask)) owner.hooks?.asking(items)
  // (A port that throws instead of returning an effect fails the request: a fault like any other, E9.)
  const request = callPort(() => coordinator.session.generateReply({ instructions, toolChoice: "none" }))
  const answered = (exit: Exit.Exit<void, unknown>): Effect.Effect<Step, PortFault> => {
    if (Exit.isFailure(exit)) return portFault(coordinator)(exit.cause)
    r.request = undefined
    // (A toolset whose time ran out while the request was under way was told it was given up.)
    delivered(coordinator, decision.ask, instructions)
    // Items held for their toolset's own retry are asked for later in this round: what was
    // answered now leaves the batch.
    if (r.notBefore !== undefined) settleAnswered(coordinator, decision.ask)
    return Effect.succeed("done")
  }
  const waitEnded = r.waitEnded
  if (waitEnded === undefined) return Effect.flatMap(Effect.exit(request), answered)
  // The coordinator waits for this step's wait for the session to end, to bound what comes after
  // it. A request that answers at once ends the step (whatever the bound); one that does not is
  // bounded from now.
  return Effect.flatMap(Effect.forkChild(request, { startImmediately: true }), (fiber) => {
    const exit = fiber.pollUnsafe()
    if (exit !== undefined) return answered(exit)
    waitEnded()
    return Effect.flatMap(Fiber.await(fiber), answered)
  })
}

const noLate: ReadonlySet<Item> = new Set()

/** These items of the batch were answered: they leave it, no longer pending. */
const settleAnswered = (coordinator: Coordinator, items: ReadonlyArray<Item>): void => {
  for (const item of items) {
    const index = coordinator.batch.indexOf(item)
    if (index < 0) continue
    coordinator.batch.splice(index, 1)
    settle(item)
  }
}

const hooked = (item: Item): boolean => item.owner.hooks !== undefined

/** Items skipped because the agent already answered them (their toolset's `skip`): told, then let go. */
const skip = (coordinator: Coordinator, r: Round, items: ReadonlyArray<Item>): void => {
  skipped(coordinator, items, "already-answered")
  for (const [owner, mine] of byOwner(items)) {
    if (owner.hooks !== undefined) (r.after ??= []).push(owner.hooks.skipped(mine))
  }
  for (const item of items) unbatch(coordinator, item)
}

// --- a step that does not answer at once ---------------------------------------------------------

/**
 * Waits for the step to end. Its wait for the session to be inactive is not bounded; from the end
 * of that wait (and before it, its chat read) each toolset's items are given `replyTimeout`: a
 * toolset whose time runs out has its items given up and reported; when none is left, the step is
 * stopped. `undefined`: the step was stopped.
 */
const awaitStep = (
  coordinator: Coordinator,
  r: Round,
  step: Fiber.Fiber<Step, PortFault>
): Effect.Effect<Exit.Exit<Step, PortFault> | undefined, PortFault> => {
  const loop: Effect.Effect<Exit.Exit<Step, PortFault> | undefined, PortFault> = Effect.suspend(() => {
    const ended = step.pollUnsafe()
    if (ended !== undefined) return Effect.succeed(ended)
    if (r.waiting) return Effect.andThen(Effect.raceFirst(stepOrWaitEnd(r, step), nothingLeft(coordinator)), loop)
    // (Toolsets whose items wait for their own retry are not part of this attempt.)
    const owners = r.notBefore === undefined
      ? openOwners(coordinator)
      : openOwners(coordinator).filter((owner) => (r.notBefore?.get(owner) ?? 0) <= r.boundFrom)
    if (owners.length === 0) {
      interruptQuietly(step)
      return Effect.succeed(undefined)
    }
    const now = coordinator.clock.currentTimeMillisUnsafe()
    const late = owners.filter((owner) => r.boundFrom + Duration.toMillis(owner.policy.replyTimeout) <= now)
    if (late.length > 0) return Effect.andThen(timedOut(coordinator, r, late), loop)
    const left = Math.min(...owners.map((owner) => r.boundFrom + Duration.toMillis(owner.policy.replyTimeout))) - now
    return Effect.andThen(
      Effect.raceFirst(Effect.timeoutOption(Fiber.await(step), Duration.millis(left)), nothingLeft(coordinator)),
      loop
    )
  })
  return loop
}

/** Completes when the step ends or its wait for the session ends, whichever comes first. */
const stepOrWaitEnd = (r: Round, step: Fiber.Fiber<Step, PortFault>): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const remove = step.addObserver(() => resume(Effect.void))
    r.waitEnded = () => resume(Effect.void)
    return Effect.sync(() => {
      remove()
      r.waitEnded = undefined
    })
  })

/** The toolsets with items the round still answers. */
const openOwners = (coordinator: Coordinator): ReadonlyArray<Owner> => {
  const owners = new Set<Owner>()
  for (const item of coordinator.batch) if (answerable(item) || awaitsInsertion(item)) owners.add(item.owner)
  return Array.from(owners)
}

/** These toolsets' time ran out: their items are given up (not asked again: the session may still make that reply). */
const timedOut = (coordinator: Coordinator, r: Round, owners: ReadonlyArray<Owner>): Effect.Effect<void> => {
  const items = coordinator.batch.filter((item) => owners.includes(item.owner))
  const bound = Duration.format(owners[0]!.policy.replyTimeout)
  const reason = r.request === undefined
    ? `the session did not answer within ${bound}`
    : `the session did not take the request up within ${bound}`
  return giveUp(coordinator, items, Cause.fail(`no answer within ${bound}`), reason)
}

// --- retries -------------------------------------------------------------------------------------

/**
 * A request (or the step before it) failed: each toolset of the batch steps its own retry
 * schedule; those whose schedule ended have their items given up and reported; the others are
 * asked for again after the shortest of their delays (what arrived meanwhile joins).
 */
const retry = (coordinator: Coordinator, r: Round, cause: Cause.Cause<PortFault>): Effect.Effect<void, PortFault> =>
  Effect.gen(function*() {
    const now = coordinator.clock.currentTimeMillisUnsafe()
    const port = portCause(cause)
    const exhausted: Array<Owner> = []
    const notBefore: Map<Owner, number> = r.notBefore ??= new Map()
    // The toolsets the failed attempt was for step their own schedules; a toolset whose items
    // were held for their own retry is not charged for another's attempt.
    for (const owner of attemptedOwners(coordinator, r, now)) {
      const retries: Map<Owner, Retry> = r.retries ??= new Map()
      let step = retries.get(owner)
      if (step === undefined) {
        step = (yield* Schedule.toStep(owner.policy.sessionRetry)) as Retry
        retries.set(owner, step)
      }
      const next = yield* Effect.exit(step(now, port))
      if (Exit.isFailure(next)) exhausted.push(owner)
      else notBefore.set(owner, now + Duration.toMillis(next.value[1]))
    }
    if (exhausted.length > 0) {
      const reason = r.request === undefined ? "the session failed while it was prepared" : "the session failed it"
      yield* giveUp(coordinator, coordinator.batch.filter((item) => exhausted.includes(item.owner)), port, `${reason}, and its retries ran out`)
    }
    const left = coordinator.batch.filter((item) => answerable(item) || awaitsInsertion(item))
    if (left.length === 0) return
    // A failed request is routine (a model provider's error), retried by policy; a session that
    // fails before it is asked (its chat read, its wait for idle) is a broken adapter: say so.
    yield* (r.request === undefined
      ? (cause.reasons.some(Cause.isDieReason) || port.reasons.some(Cause.isDieReason) ? Effect.logError : Effect.logWarning)(`the session failed while the reply for ${callIdsOf(left)} was prepared; trying again`, port)
      : Effect.logDebug(`the reply request for ${callIdsOf(left)} failed; asking again`, port))
      .pipe(Effect.annotateLogs({ toolset: ownersOf(left) }))
    yield* askHeld(coordinator, r)
  })

/** The toolsets a failed attempt was for: those asked (or, before the request, those due). */
const attemptedOwners = (coordinator: Coordinator, r: Round, now: number): ReadonlyArray<Owner> => {
  const asked = r.request?.items
  if (asked !== undefined) return Array.from(new Set(asked.map((item) => item.owner))).filter((owner) => !owner.closed)
  return openOwners(coordinator).filter((owner) => (r.notBefore?.get(owner) ?? 0) <= now)
}

/** The answerable items of toolsets due to be asked for (not waiting for their own retry). */
const dueItems = (coordinator: Coordinator, r: Round): Array<Item> => {
  const now = coordinator.clock.currentTimeMillisUnsafe()
  return coordinator.batch.filter((item) => answerable(item) && (r.notBefore?.get(item.owner) ?? 0) <= now)
}

/**
 * Items of the batch still wait for their toolset's retry: wait until the first of them is due
 * (what arrives meanwhile joins), then prepare again; nothing left of an open toolset ends it. An
 * item of a toolset not waiting out a retry of its own arriving meanwhile is asked for at once (a
 * toolset's delay holds nobody else's items).
 */
const askHeld = (coordinator: Coordinator, r: Round): Effect.Effect<void, PortFault> =>
  Effect.suspend(() => {
    if (r.notBefore === undefined) return Effect.void
    let due: number | undefined
    for (const item of coordinator.batch) {
      if (!answerable(item) && !awaitsInsertion(item)) continue
      const at = r.notBefore?.get(item.owner) ?? 0
      due = due === undefined ? at : Math.min(due, at)
    }
    if (due === undefined) return Effect.void
    const wait = due - coordinator.clock.currentTimeMillisUnsafe()
    return Effect.andThen(
      wait > 0
        ? Effect.raceFirst(Effect.raceFirst(Effect.sleep(Duration.millis(wait)), nothingLeft(coordinator)), arrivedDue(coordinator, r))
        : Effect.void,
      Effect.suspend(() => {
        if (openOwners(coordinator).length === 0) return Effect.void
        r.reread = false
        return prepare(coordinator, r)
      })
    )
  })

/** Completes when the batch is left with nothing of an open toolset (they all closed). */
const nothingLeft = (coordinator: Coordinator): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    coordinator.nothingLeft = () => resume(Effect.void)
    return Effect.sync(() => {
      coordinator.nothingLeft = undefined
    })
  })

/** Completes when an item of a toolset due to be asked for (not waiting out its retry) is handed over. */
const arrivedDue = (coordinator: Coordinator, r: Round): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    coordinator.arrived = (item) => {
      if ((r.notBefore?.get(item.owner) ?? 0) <= coordinator.clock.currentTimeMillisUnsafe()) resume(Effect.void)
    }
    return Effect.sync(() => {
      coordinator.arrived = undefined
    })
  })
