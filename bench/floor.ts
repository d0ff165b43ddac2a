/**
 * W0, the floor: the same work with bare Effect primitives and no toolset. A call is a fiber
 * forked in a scope that completes a `Deferred` at its first update; later results are pushed onto
 * an array (the chat) and offered to a `Queue`; one reply fiber waits for an idle `Latch`, takes
 * everything pending and counts one reply. No argument decoding, no chat items, no registry of
 * calls, no duplicate check: what is left is the cost of the primitives our engine is built from.
 */
import { Deferred, Effect, Exit, Fiber, Latch, Queue, Scope } from "effect"
import { begin, collect, end, expect } from "./harness.ts"
import * as Mailbox from "./mailbox.ts"

interface Result {
  readonly text: string
  readonly delivered: Deferred.Deferred<void> | undefined
}

/** The reply fiber: wait for results, wait until idle, take everything pending, reply once. */
const replyLoop = (
  queue: Queue.Queue<Result>,
  idle: Latch.Latch,
  onReply: (batch: ReadonlyArray<Result>) => void
) =>
  Effect.gen(function*() {
    const batch = [...(yield* Queue.takeAll(queue))]
    yield* idle.await
    batch.push(...(yield* Queue.clear(queue)))
    onReply(batch)
    for (const result of batch) if (result.delivered !== undefined) Deferred.doneUnsafe(result.delivered, Exit.void)
  }).pipe(Effect.forever)

interface Floor {
  readonly scope: Scope.Scope
  readonly queue: Queue.Queue<Result>
  readonly idle: Latch.Latch
  readonly chat: Array<string>
  readonly replies: () => number
}

const makeFloor = (onReply?: (batch: ReadonlyArray<Result>) => void) =>
  Effect.gen(function*() {
    const scope = yield* Scope.Scope
    const queue = yield* Queue.unbounded<Result>()
    const idle = yield* Latch.make(true)
    const chat: Array<string> = []
    let replies = 0
    yield* replyLoop(queue, idle, (batch) => {
      replies++
      onReply?.(batch)
    }).pipe(Effect.forkIn(scope, { startImmediately: true }))
    return { scope, queue, idle, chat, replies: () => replies } satisfies Floor
  })

/** Delivers a later result: into the chat at once, and queued for the reply fiber. */
const deliver = (floor: Floor, text: string, delivered?: Deferred.Deferred<void>) =>
  Effect.suspend(() => {
    floor.chat.push(text)
    return Queue.offer(floor.queue, { text, delivered })
  })

/** Starts a call: a fiber whose first update completes the handoff `Deferred`. */
const start = (floor: Floor, body: (first: Deferred.Deferred<string>) => Effect.Effect<void>) =>
  Effect.gen(function*() {
    const first = yield* Deferred.make<string>()
    const fiber = yield* body(first).pipe(Effect.forkIn(floor.scope, { startImmediately: true }))
    return { first, fiber }
  })

/** A call blocked after its first update until `gate` opens; then it delivers its result. */
const startBlocked = (floor: Floor, gate: Effect.Effect<void>) =>
  start(floor, (first) =>
    Effect.gen(function*() {
      yield* Deferred.succeed(first, "started")
      yield* gate
      yield* deliver(floor, "done")
    }))

const launch = (floor: Floor, n: number, gate: Effect.Effect<void>) =>
  Effect.forEach(
    Array.from({ length: n }, (_, i) => i),
    () => Effect.flatMap(startBlocked(floor, gate), ({ fiber, first }) => Effect.as(Deferred.await(first), fiber)),
    { concurrency: "unbounded" }
  )

const run = <A>(program: Effect.Effect<A, never, Scope.Scope>): Promise<A> => Effect.runPromise(Effect.scoped(program))

/** W1: calls per second, one at a time, each until its result was replied to. */
export const w1 = (calls: number): Promise<number> =>
  run(Effect.gen(function*() {
    const floor = yield* makeFloor()
    const t0 = begin()
    for (let i = 0; i < calls; i++) {
      const delivered = yield* Deferred.make<void>()
      const { first } = yield* start(floor, (first) =>
        Effect.gen(function*() {
          yield* Deferred.succeed(first, "searching")
          yield* deliver(floor, "found", delivered)
        }))
      yield* Deferred.await(first)
      yield* Deferred.await(delivered)
    }
    const ms = end(t0)
    expect(floor.replies() === calls, `floor W1: ${floor.replies()} replies for ${calls} results`)
    return calls / (ms / 1000)
  }))

/** W2: milliseconds to launch `n` blocked calls at once. */
export const w2 = (n: number): Promise<number> =>
  run(Effect.gen(function*() {
    const floor = yield* makeFloor()
    const t0 = begin()
    const fibers = yield* launch(floor, n, Effect.never)
    const ms = end(t0)
    expect(fibers.length === n, "floor W2: every call started")
    return ms
  }))

/** W3: bytes per blocked call (heap and RSS, after GC). Run in a fresh process. */
export const w3 = (n: number): Promise<{ readonly heap: number; readonly rss: number }> =>
  run(Effect.gen(function*() {
    const floor = yield* makeFloor()
    collect()
    const before = process.memoryUsage()
    yield* launch(floor, n, Effect.never).pipe(Effect.asVoid)
    collect()
    const after = process.memoryUsage()
    return { heap: (after.heapUsed - before.heapUsed) / n, rss: (after.rss - before.rss) / n }
  }))

/** W4: microseconds to deliver one later update with `history` items already in the chat. */
export const w4 = (history: number, updates: number): Promise<number> =>
  run(Effect.gen(function*() {
    const replied = Mailbox.make<void>()
    const floor = yield* makeFloor(() => replied.offer(undefined))
    for (let i = 0; i < history; i++) floor.chat.push(`message ${i}`)
    const messages = Mailbox.make<string>()
    const { first } = yield* start(floor, (first) =>
      Effect.gen(function*() {
        yield* Deferred.succeed(first, "started")
        while (true) yield* deliver(floor, yield* messages.take)
      }))
    yield* Deferred.await(first)
    const t0 = begin()
    for (let i = 0; i < updates; i++) {
      messages.offer(`progress ${i}`)
      yield* replied.take
    }
    const us = (end(t0) * 1000) / updates
    expect(floor.chat.length === history + updates, "floor W4: every update is in the chat")
    return us
  }))

/** W5: `n` results arrive while busy; idle once all are in. Milliseconds, and the reply count. */
export const w5 = (n: number): Promise<{ readonly ms: number; readonly replies: number }> =>
  run(Effect.gen(function*() {
    const allReplied = yield* Deferred.make<void>()
    let replied = 0
    const floor = yield* makeFloor((batch) => {
      replied += batch.length
      if (replied === n) Deferred.doneUnsafe(allReplied, Exit.void)
    })
    const gate = yield* Latch.make(false)
    const fibers = yield* launch(floor, n, gate.await)
    yield* floor.idle.close
    const t0 = begin()
    yield* gate.open
    yield* Fiber.awaitAll(fibers) // every result is in the chat and queued
    yield* floor.idle.open
    yield* Deferred.await(allReplied)
    const ms = end(t0)
    expect(floor.chat.length === n, "floor W5: every result is in the chat")
    return { ms, replies: floor.replies() }
  }))

/** W6: milliseconds to cancel `n` running calls one by one, until every fiber has stopped. */
export const w6 = (n: number): Promise<number> =>
  run(Effect.gen(function*() {
    const floor = yield* makeFloor()
    const fibers = yield* launch(floor, n, Effect.never)
    const registry = new Map<string, Fiber.Fiber<void>>(fibers.map((fiber, i) => [`call_${i}`, fiber]))
    const t0 = begin()
    for (let i = 0; i < n; i++) {
      const id = `call_${i}`
      registry.get(id)?.interruptUnsafe()
      registry.delete(id)
    }
    yield* Fiber.awaitAll(fibers)
    const ms = end(t0)
    expect(registry.size === 0, "floor W6: nothing left running")
    return ms
  }))
