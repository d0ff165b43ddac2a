/**
 * The workloads on this library, through its public API: `AsyncToolset.make` over a minimal
 * in-memory session (`session.ts`, as lean as the peer's stub), on the real clock.
 *
 * The model's `FunctionCall` items are made before the clock starts (the model made them);
 * everything from `execute` on (argument decoding, the run context, the fiber, the first output,
 * delivery and the reply) is timed.
 */
import { Deferred, Effect, Exit, Latch, Schema } from "effect"
import type { Scope } from "effect"
import { AgentSession, AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { begin, collect, end, expect } from "./harness.ts"
import * as Mailbox from "./mailbox.ts"
import * as Session from "./session.ts"

/** `BENCH_SPANS=0` measures ours without the span per call (`spanPerCall: false`); the default keeps it. */
const spanPerCall = process.env["BENCH_SPANS"] !== "0"

const Parameters = Schema.Struct({ query: Schema.String })
const argumentsText = JSON.stringify({ query: "flights" })

/** Runs `body` with a fresh in-memory session as the `AgentSession`. */
const withSessionEffect = <A>(
  hooks: Session.Hooks,
  body: (stub: Session.Stub) => Effect.Effect<A, never, AgentSession.AgentSession | Scope.Scope>
): Effect.Effect<A, never, Scope.Scope> =>
  Effect.flatMap(Session.make(hooks), (stub) => body(stub).pipe(Effect.provideService(AgentSession.AgentSession, stub.session)))

/** The same, run to a promise; the scope (the toolset's) closes at the end, outside the timing. */
const withSession = <A>(
  hooks: Session.Hooks,
  body: (stub: Session.Stub) => Effect.Effect<A, never, AgentSession.AgentSession | Scope.Scope>
): Promise<A> => Effect.runPromise(Effect.scoped(withSessionEffect(hooks, body)))

const makeCalls = (n: number, name: string) =>
  Effect.forEach(
    Array.from({ length: n }, (_, i) => i),
    (i) => ChatContext.functionCall({ callId: `call_${i}`, name, arguments: argumentsText })
  )

/** Answers at once with an update, then returns its result at once. */
const lookup = FunctionTool.make("lookup", {
  description: "Looks something up",
  parameters: Parameters,
  onDuplicateCall: "allow"
}, ({ query }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`searching ${query}`)
    return `found ${query}`
  }))

/** Answers at once with an update, then waits for `gate` before returning its result. */
const blocked = (gate: Effect.Effect<void>) =>
  FunctionTool.make("wait", {
    description: "Waits in the background",
    parameters: Parameters,
    onDuplicateCall: "allow"
  }, ({ query }) =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update(`started ${query}`)
      yield* gate
      return `done ${query}`
    }))

/** What an agent loop does when the model sends many tool calls at once. */
const launch = (toolset: AsyncToolset.AsyncToolset, calls: ReadonlyArray<ChatContext.FunctionCall>) =>
  Effect.forEach(calls, toolset.execute, { concurrency: "unbounded" })

/** W1: calls per second, one call at a time, each until its final result was replied to. */
export const w1 = (calls: number): Promise<number> =>
  withSession({}, (controls) =>
    Effect.gen(function*() {
      const toolset = yield* AsyncToolset.make({ id: "bench", spanPerCall, tools: [lookup] })
      const functionCalls = yield* makeCalls(calls, "lookup")
      let pending = 0
      const t0 = begin()
      for (const call of functionCalls) {
        const output = yield* toolset.execute(call)
        if (AsyncToolset.isPending(output)) pending++
        yield* toolset.awaitIdle
      }
      const ms = end(t0)
      expect(pending === calls, `ours W1: ${pending} of ${calls} calls returned at their first update`)
      const replies = controls.replies()
      expect(replies === calls, `ours W1: ${replies} replies for ${calls} finals`)
      return calls / (ms / 1000)
    }))

/** W2: milliseconds to launch `n` calls at once, each blocked after its first update. */
export const w2 = (n: number): Promise<number> =>
  withSession({}, () =>
    Effect.gen(function*() {
      const toolset = yield* AsyncToolset.make({ id: "bench", spanPerCall, tools: [blocked(Effect.never)] })
      const calls = yield* makeCalls(n, "wait")
      const t0 = begin()
      const outputs = yield* launch(toolset, calls)
      const ms = end(t0)
      expect(outputs.every(AsyncToolset.isPending), "ours W2: every call returned at its first update")
      expect((yield* toolset.runningTasks).length === n, "ours W2: every call is running")
      return ms
    }))

/** W3: bytes per blocked call (heap and RSS, after GC). Run in a fresh process. */
export const w3 = (n: number): Promise<{ readonly heap: number; readonly rss: number }> =>
  withSession({}, () =>
    Effect.gen(function*() {
      const toolset = yield* AsyncToolset.make({ id: "bench", spanPerCall, tools: [blocked(Effect.never)] })
      collect()
      const before = process.memoryUsage()
      // The calls are made after the baseline: what the toolset keeps of them counts.
      yield* Effect.flatMap(makeCalls(n, "wait"), (calls) => launch(toolset, calls)).pipe(Effect.asVoid)
      collect()
      const after = process.memoryUsage()
      expect((yield* toolset.runningTasks).length === n, "ours W3: every call is running")
      return { heap: (after.heapUsed - before.heapUsed) / n, rss: (after.rss - before.rss) / n }
    }))

/**
 * W4: microseconds to deliver one later update (into the chat, then one reply) with `history`
 * items already in the chat.
 */
export const w4 = (history: number, updates: number): Promise<number> =>
  Effect.runPromise(Effect.gen(function*() {
    const replied = Mailbox.make<void>()
    const messages = Mailbox.make<string>()
    const stream = FunctionTool.make("stream", {
      description: "Streams progress",
      parameters: Parameters
    }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        while (true) yield* AsyncRunContext.update(yield* messages.take)
      }))
    return yield* withSessionEffect(
      { onReply: () => replied.offer(undefined) },
      (controls) =>
        Effect.gen(function*() {
          const items = yield* Effect.forEach(
            Array.from({ length: history }, (_, i) => i),
            (i) => ChatContext.message(i % 2 === 0 ? "user" : "assistant", `message ${i}`)
          )
          yield* controls.insert(items)
          const toolset = yield* AsyncToolset.make({ id: "bench", spanPerCall, tools: [stream] })
          const [call] = yield* makeCalls(1, "stream")
          expect(AsyncToolset.isPending(yield* toolset.execute(call!)), "ours W4: the call runs in the background")
          const t0 = begin()
          for (let i = 0; i < updates; i++) {
            messages.offer(`progress ${i}`)
            yield* replied.take
          }
          const us = (end(t0) * 1000) / updates
          const length = controls.chatLength()
          expect(length === history + 2 * updates, `ours W4: ${length} chat items`)
          return us
        })
    )
  }).pipe(Effect.scoped))

/**
 * W5: `n` final results arrive while the agent is busy; the agent becomes idle once they are all in
 * the chat. Milliseconds from the results' release to the end of the reply, and the reply count.
 */
export const w5 = (n: number): Promise<{ readonly ms: number; readonly replies: number }> =>
  Effect.runPromise(Effect.gen(function*() {
    const allInserted = yield* Deferred.make<void>()
    let inserted = 0
    const gate = yield* Latch.make(false)
    return yield* withSessionEffect(
      {
        onInsert: () => {
          if (++inserted === n) Deferred.doneUnsafe(allInserted, Exit.void)
        }
      },
      (controls) =>
        Effect.gen(function*() {
          const toolset = yield* AsyncToolset.make({ id: "bench", spanPerCall, tools: [blocked(gate.await)] })
          const outputs = yield* launch(toolset, yield* makeCalls(n, "wait"))
          expect(outputs.every(AsyncToolset.isPending), "ours W5: every call returned at its first update")
          yield* controls.setBusy
          const t0 = begin()
          yield* gate.open
          yield* Deferred.await(allInserted)
          yield* controls.setIdle
          yield* toolset.awaitIdle
          const ms = end(t0)
          expect(controls.busyReplies() === 0, "ours W5: no reply while busy")
          expect(controls.chatLength() === 2 * n, "ours W5: every final is in the chat")
          return { ms, replies: controls.replies() }
        })
    )
  }).pipe(Effect.scoped))

/** W6: milliseconds to cancel `n` running calls one by one, until every fiber has stopped. */
export const w6 = (n: number): Promise<number> =>
  withSession({}, () =>
    Effect.gen(function*() {
      const toolset = yield* AsyncToolset.make({ id: "bench", spanPerCall, tools: [blocked(Effect.never)] })
      const calls = yield* makeCalls(n, "wait")
      yield* launch(toolset, calls)
      let cancelled = 0
      const t0 = begin()
      for (const call of calls) {
        if ((yield* toolset.cancel(call.callId)) === "cancelled") cancelled++
      }
      yield* toolset.drain // returns once every cancelled fiber has really stopped
      const ms = end(t0)
      expect(cancelled === n, `ours W6: ${cancelled} of ${n} cancelled`)
      expect((yield* toolset.runningTasks).length === 0, "ours W6: nothing left running")
      return ms
    }))
