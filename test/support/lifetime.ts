/**
 * Helpers for the duplicate and lifetime tests: a background tool that records what happened to
 * each of its calls, shorthands for model calls, and a way to assert that an effect finishes
 * without the clock moving.
 */
import { Effect, Fiber, Schema } from "effect"
import type { Duration } from "effect"
import { TestClock } from "effect/testing"
import { settle as settleKind } from "./toolsets.ts"
import { AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
import type { AsyncToolset } from "effect-async-toolset"
import type { TestSession } from "effect-async-toolset/testing"

/** What happened to the calls of a tool: which ran (with the arguments they saw), which were interrupted. */
export interface Probe {
  readonly started: Array<string>
  readonly args: Array<unknown>
  readonly interrupted: Array<string>
}

export const makeProbe = (): Probe => ({ started: [], args: [], interrupted: [] })

/** The parameters of the test tools: a destination and an optional passenger count. */
export const Booking = Schema.Struct({
  to: Schema.String,
  passengers: Schema.optionalKey(Schema.Int)
})

/**
 * Runs `body` as a call of a tool: records the call id and arguments in `probe` when it starts,
 * and the call id when it is interrupted.
 */
export const tracked = <A, E, R>(
  probe: Probe,
  args: unknown,
  body: Effect.Effect<A, E, R>
): Effect.Effect<A, E, R | AsyncRunContext.AsyncRunContext> =>
  Effect.flatMap(AsyncRunContext.functionCall, ({ callId }) => {
    probe.started.push(callId)
    probe.args.push(args)
    return body.pipe(Effect.onInterrupt(() => Effect.sync(() => probe.interrupted.push(callId))))
  })

/**
 * A background booking tool: it says `started <callId>` at once (so `execute` returns), then runs
 * `work` (default: forever) and returns what `work` returns.
 */
export const bookingTool = (
  probe: Probe,
  options: FunctionTool.Options & {
    readonly name?: string
    readonly work?: Effect.Effect<string | void, never, AsyncRunContext.AsyncRunContext>
  } = {}
) => {
  const { name = "book_flight", work = Effect.never, ...toolOptions } = options
  return FunctionTool.make(name, { description: "Book a flight", parameters: Booking, ...toolOptions }, (args) =>
    tracked(
      probe,
      args,
      Effect.gen(function*() {
        const { callId } = yield* AsyncRunContext.functionCall
        yield* AsyncRunContext.update(`started ${callId}`)
        return yield* work
      })
    ))
}

/** `work` for `bookingTool`: sleeps, then returns `result`. */
export const finishesAfter = (duration: Duration.Input, result: string) =>
  Effect.as(Effect.sleep(duration), result)

/** A model call; `args` is JSON text or a value to encode. */
export const call = (callId: string, name: string, args: string | Record<string, unknown> = {}) =>
  ChatContext.functionCall({ callId, name, arguments: typeof args === "string" ? args : JSON.stringify(args) })

/** The model makes a call and gets the output it gets now. */
export const execute = (
  toolset: AsyncToolset.AsyncToolset,
  callId: string,
  name: string,
  args?: string | Record<string, unknown>
) => Effect.flatMap(call(callId, name, args), toolset.execute)

/**
 * Runs `effect` in the background and returns its result, failing the test if it is still waiting
 * once every other fiber has had its turn. The clock does not move: this is how a test says "this
 * returns now, not when some sleep ends" without hanging when it does not.
 */
export const promptly = <A, E>(effect: Effect.Effect<A, E>, what = "the effect"): Effect.Effect<A, E> =>
  Effect.gen(function*() {
    const fiber = yield* Effect.forkChild(effect, { startImmediately: true })
    // A durable store's statements finish on the event loop, outside the fibers: a loaded machine
    // can leave one pending past a settle, so settle up to three times (the clock never moves).
    for (let i = 0; i < 3 && fiber.pollUnsafe() === undefined; i++) yield* settleKind
    if (fiber.pollUnsafe() === undefined) {
      yield* Fiber.interrupt(fiber)
      return yield* Effect.die(new Error(`still waiting: ${what} did not return without the clock moving`))
    }
    return yield* Fiber.join(fiber)
  })

/**
 * Runs a test body, then (even if an assertion failed) moves the clock a day ahead, so tools inside
 * uninterruptible regions end and the test's scope can close: a failure is reported, not a hang.
 */
export const thenLetToolsEnd = <A, E, R>(body: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.ensuring(body, TestClock.adjust("1 day"))

/**
 * Lets every other fiber run until it waits (for the clock, a latch, …), and a durable toolset's
 * store until it is done. The clock does not move.
 */
export const settle: Effect.Effect<void> = settleKind

/** Whether a forked effect is still waiting after every other fiber has had its turn. */
export const stillWaiting = <A, E>(fiber: Fiber.Fiber<A, E>): Effect.Effect<boolean> =>
  Effect.map(settle, () => fiber.pollUnsafe() === undefined)

/** The call ids of the chat's items, in order. */
export const chatCallIds = (session: TestSession.TestSession["Service"]) =>
  Effect.map(session.chat, (chat) => chat.items.flatMap((item) => "callId" in item ? [item.callId] : []))

/** The outputs in the chat, by call id. */
export const chatOutputs = (session: TestSession.TestSession["Service"]) =>
  Effect.map(session.chat, (chat) =>
    new Map(
      chat.items.flatMap((item) => item._tag === "FunctionCallOutput" ? [[item.callId, item] as const] : [])
    ))
