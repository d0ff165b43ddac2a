/**
 * The agent's turns, one at a time: a user message, `generateReply` and a toolset's reply request
 * each queue a turn, and one worker fiber (owned by the agent's scope) takes them in order, so two
 * generations never overlap.
 *
 * ```text
 *   open ──the agent's scope closes──▶ closed
 * ```
 *
 * - `open`: turns are queued and run. A turn counts in the activity gate from when it is queued
 *   until it ended.
 * - `closed`: the worker was interrupted (its turn with it), the turns still queued were
 *   interrupted, and a new turn is interrupted at once.
 *
 * A reply request of the session port completes when its turn begins: the agent has taken it up
 * (C4e); the turn itself may go on for minutes. Idle is more than inactive: no turn queued or
 * running, the user not typing, and nothing running or owed in the toolsets.
 */
import { Deferred, Effect, Exit, Queue } from "effect"
import type { Scope } from "effect"
import type { AiError } from "effect/ai"
import type * as AiAgent from "../AiAgent.ts"
import { message } from "../../ChatContext.ts"
import * as ActivityGate from "./activityGate.ts"
import * as ChatLog from "./chatLog.ts"
import * as ToolsetRegistry from "./toolsetRegistry.ts"
import * as Turn from "./turn.ts"

/** A turn waiting for its go. */
interface Job extends Turn.TurnRequest {
  /** A reply request of the session port: completed when the turn begins. */
  readonly started: Deferred.Deferred<void> | undefined
  /** A caller waiting for the turn: completed with what the turn did. */
  readonly done: Deferred.Deferred<AiAgent.Turn, AiError.AiError> | undefined
}

/** The turns of one agent. */
export interface TurnRunner {
  readonly turns: Turn.Turns
  readonly gate: ActivityGate.ActivityGate
  readonly jobs: Queue.Queue<Job>
  state: "open" | "closed"
  /** Turns begun so far: the number of the newest. */
  begun: number
}

/** Starts the worker in the current scope; closing the scope stops it and interrupts the turns still queued. */
export const make = Effect.fnUntraced(function*(
  turns: Turn.Turns,
  gate: ActivityGate.ActivityGate
): Effect.fn.Return<TurnRunner, never, Scope.Scope> {
  const runner: TurnRunner = { turns, gate, jobs: yield* Queue.unbounded<Job>(), state: "open", begun: 0 }
  // Runs after the worker is interrupted (finalizers run last-added first).
  yield* Effect.addFinalizer(() => Effect.flatMap(Queue.clear(runner.jobs), (left) => Effect.sync(() => close(runner, left))))
  yield* Effect.forkScoped(Effect.forever(Effect.flatMap(Queue.take(runner.jobs), (job) => runJob(runner, job))), {
    startImmediately: true
  })
  return runner
})

/** The user says `text`: it is in the chat and its turn queued in one step (no reply comes between); saved after. */
export const send = (runner: TurnRunner, text: string): Effect.Effect<AiAgent.Turn, AiError.AiError> =>
  Effect.suspend(() => {
    if (runner.state === "closed") return Effect.interrupt
    return Effect.flatMap(message("user", text), (user) => {
      ChatLog.add(runner.turns.log, [user])
      return awaitTurn(runner, { cause: "user", instructions: undefined, toolChoice: "auto" }, ChatLog.save(runner.turns.log, [user]))
    })
  })

/** A turn without a user message, queued like any other; yields what it did. */
export const generateReply = (runner: TurnRunner, options: AiAgent.ReplyOptions): Effect.Effect<AiAgent.Turn, AiError.AiError> =>
  awaitTurn(runner, { cause: "reply", instructions: options.instructions, toolChoice: options.toolChoice ?? "auto" })

/**
 * A toolset's reply request (the session port): completes once its turn begins, when the agent
 * took the request up. A model error in that turn is the turn's (logged), and the toolset's
 * items stay in the chat for the next reply.
 */
export const requestReply = (
  runner: TurnRunner,
  request: { readonly instructions: string; readonly toolChoice: "auto" | "none" }
): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (runner.state === "closed") return Effect.interrupt
    const started = Deferred.makeUnsafe<void>()
    offer(runner, { cause: "reply", instructions: request.instructions, toolChoice: request.toolChoice, started, done: undefined })
    return Deferred.await(started)
  })

/**
 * Completes when everything is said. A toolset's call starts only in a turn, and its reply is a
 * turn: so once the toolsets were idle and the agent inactive, with no turn begun since the look
 * began, nothing is left to say. Otherwise look again: a turn may have started calls, and a reply
 * a turn.
 */
export const awaitIdle = (runner: TurnRunner): Effect.Effect<void> =>
  Effect.suspend(() => {
    const begun = runner.begun
    const toolsetsIdle = ToolsetRegistry.awaitIdle(runner.turns.toolsets)
    return toolsetsIdle.pipe(
      Effect.andThen(runner.gate.awaitInactive),
      Effect.andThen(toolsetsIdle),
      Effect.andThen(Effect.suspend(() =>
        runner.begun === begun && ActivityGate.isInactive(runner.gate) ? Effect.void : awaitIdle(runner)
      ))
    )
  })

/** Queues a turn; `before` runs once it is queued, before waiting for the turn. */
const awaitTurn = (
  runner: TurnRunner,
  request: Turn.TurnRequest,
  before: Effect.Effect<void> = Effect.void
): Effect.Effect<AiAgent.Turn, AiError.AiError> =>
  Effect.suspend(() => {
    if (runner.state === "closed") return Effect.interrupt
    const done = Deferred.makeUnsafe<AiAgent.Turn, AiError.AiError>()
    offer(runner, { ...request, started: undefined, done })
    return Effect.andThen(before, Deferred.await(done))
  })

/** Queues a job: the gate is active from now until its turn ended. */
const offer = (runner: TurnRunner, job: Job): void => {
  ActivityGate.turnQueued(runner.gate)
  Queue.offerUnsafe(runner.jobs, job)
}

/** Begins a job's turn (its reply request is taken up) and runs it; ends it whatever its exit. */
const runJob = (runner: TurnRunner, job: Job): Effect.Effect<unknown> =>
  Effect.suspend(() => {
    const turn = ++runner.begun
    if (job.started !== undefined) Deferred.doneUnsafe(job.started, Exit.void)
    return Turn.run(runner.turns, job, turn)
  }).pipe(
    Effect.onExit((exit) => Effect.sync(() => ended(runner, job, exit))),
    Effect.exit
  )

/** A turn ended: it no longer counts, then its caller resumes (inline), then the gate's waiters. */
const ended = (runner: TurnRunner, job: Job, exit: Exit.Exit<AiAgent.Turn, AiError.AiError>): void => {
  ActivityGate.turnsEnded(runner.gate, 1)
  if (job.done !== undefined) Deferred.doneUnsafe(job.done, exit)
  ActivityGate.wake(runner.gate)
}

/** The scope closed: no turn is taken any more, and the callers of those left in the queue are interrupted. */
const close = (runner: TurnRunner, left: ReadonlyArray<Job>): void => {
  runner.state = "closed"
  ActivityGate.turnsEnded(runner.gate, left.length)
  for (const job of left) {
    if (job.started !== undefined) Deferred.doneUnsafe(job.started, Exit.interrupt())
    if (job.done !== undefined) Deferred.doneUnsafe(job.done, Exit.interrupt())
  }
  ActivityGate.wake(runner.gate)
}
