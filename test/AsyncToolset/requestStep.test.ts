/**
 * The reply coordinator's request step: it waits for the session to be inactive, reads the chat,
 * and requests one reply. A reply is never requested while the session is busy (C2), whatever the
 * port's timing and the user's; what the agent said is read once the last idle wait is over (C4);
 * closing a toolset while the step is inside a port operation (inline or suspended, in any answer
 * shape) or while the coordinator retries returns promptly, leaves no fiber behind (E6) and inserts
 * nothing afterwards; and a step left over from a toolset closed during it never asks a second
 * time for what another toolset's round covers (C2, C3).
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, References, Schedule, Scope } from "effect"
import { AgentSession, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute, settle } from "../support/lifetime.ts"
import { captureLogs, chatCallIds, chatProblems, faultySession, makeFiberCounter, namedCallIds, whileClockRuns } from "../support/reliability.ts"
import { promptlyLong, settleLong, yieldsFor } from "../support/schedules.ts"
import { forEachKind } from "../support/toolsets.ts"

/**
 * Scheduler settings the races run under: a yield after almost every step, up to the default
 * (2048). Below 3 a fiber that resumes yields again before its first step: it never progresses.
 */

/** Says "started", works a second, returns "done". */
const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

/** Says "started", then one more update a second apart for each of `steps - 1`, then "done" a second later. */
const stepped = (name: string, steps = 2) =>
  FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("started")
      for (let i = 1; i < steps; i++) {
        yield* Effect.sleep("1 second")
        yield* AsyncRunContext.update(`step ${i}`)
      }
      yield* Effect.sleep("1 second")
      return "done"
    }))

// --- a port operation of the request step answering in one shape --------------------------------

type Op = "items" | "awaitInactive" | "generateReply"
type Shape = "ok" | "fail" | "die" | "interrupt" | "hang" | "slow"

const ops: ReadonlyArray<Op> = ["items", "awaitInactive", "generateReply"]
const shapes: ReadonlyArray<Shape> = ["ok", "fail", "die", "interrupt", "hang", "slow"]

const answer = <A>(shape: Shape, ok: Effect.Effect<A, AgentSession.SessionError>, op: string) => {
  switch (shape) {
    case "ok":
      return ok
    case "fail":
      return Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: `injected fail in ${op}` }))
    case "die":
      return Effect.die(new Error(`injected die in ${op}`))
    case "interrupt":
      return Effect.interrupt
    case "hang":
      return Effect.never
    case "slow":
      return Effect.andThen(Effect.sleep("5 seconds"), ok)
  }
}

/**
 * The in-memory session whose `op`, the first time the coordinator calls it, first calls `hook`
 * (synchronously, before answering), then answers in `shape`.
 */
const hookedSession = (op: Op, shape: Shape, hook: () => void) => {
  let fired = false
  return Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
    const once = <A>(ok: Effect.Effect<A, AgentSession.SessionError>) =>
      Effect.suspend(() => {
        if (fired) return ok
        fired = true
        hook()
        return answer(shape, ok, op)
      })
    const port = AgentSession.AgentSession.of({
      ...session,
      items: op === "items" ? once(session.items) : session.items,
      awaitInactive: op === "awaitInactive" ? Effect.orDie(once(session.awaitInactive)) : session.awaitInactive,
      generateReply: (request) => op === "generateReply" ? once(session.generateReply(request)) : session.generateReply(request)
    })
    return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
  }))
}

/** The in-memory session whose `op`, the first time it is called, waits for `gate` and then answers `shape`. */
const gatedSession = (op: Op, shape: Shape, gate: () => Deferred.Deferred<void>) =>
  Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
    let fired = false
    const once = <A>(ok: Effect.Effect<A, AgentSession.SessionError>) =>
      Effect.suspend(() => {
        if (fired) return ok
        fired = true
        return Effect.andThen(Deferred.await(gate()), answer(shape, ok, op))
      })
    const port = AgentSession.AgentSession.of({
      ...session,
      items: op === "items" ? once(session.items) : session.items,
      awaitInactive: op === "awaitInactive" ? Effect.orDie(once(session.awaitInactive)) : session.awaitInactive,
      generateReply: (r) => op === "generateReply" ? once(session.generateReply(r)) : session.generateReply(r)
    })
    return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
  }))

/**
 * The in-memory session whose first chat read (the request step's) wakes the agent loop, which
 * closes toolset A, and answers `then` (5 s late, or never); later reads answer asynchronously;
 * a reply request is recorded at once and answered 10 s later.
 */
const sessionWhoseFirstReadClosesA = (trigger: () => void, then: "slow" | "hang") =>
  Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
    let reads = 0
    const port = AgentSession.AgentSession.of({
      ...session,
      items: Effect.suspend(() => {
        // Later reads answer asynchronously (a session that reads its chat over IPC).
        if (++reads !== 1) return Effect.andThen(Effect.yieldNow, session.items)
        trigger()
        return then === "slow" ? Effect.andThen(Effect.sleep("5 seconds"), session.items) : Effect.never
      }),
      // A reply request is recorded at once and answered 10 s later (the agent speaks).
      generateReply: (request) => Effect.andThen(session.generateReply(request), Effect.sleep("10 seconds"))
    })
    return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
  }))

/** Yield settings at which the closing fiber reaches the toolset's close within its budget (inline). */
const inlineSettings = [16, 2048] as const

forEachKind("AsyncToolset reply request step", (kind) => {
  describe("C2 a reply is never requested while the session is busy", () => {
    /** The in-memory session whose chat read answers after `hops` scheduler turns (0: at once). */
    const withReadHops = (hops: number, retryFirst: boolean) =>
      Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
        let replies = 0
        const port = AgentSession.AgentSession.of({
          ...session,
          items: hops === 0 ? session.items : Effect.andThen(Effect.forEach(Array.from({ length: hops }), () => Effect.yieldNow), session.items),
          generateReply: (request) =>
            Effect.suspend(() =>
              retryFirst && replies++ === 0
                ? Effect.andThen(session.generateReply(request), Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "injected" })))
                : session.generateReply(request)
            )
        })
        return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
      }))

    for (const hops of [0, 1, 3]) {
      for (const retryFirst of [false, true]) {
        for (const maxOps of yieldsFor(kind)) {
          it.effect(`chat read after ${hops} turns${retryFirst ? ", first request fails" : ""}; the user speaks at every point: no reply while busy, every result named (MaxOpsBeforeYield ${maxOps})`, () =>
            Effect.gen(function*() {
              const session = yield* TestSession.TestSession
              const toolset = yield* kind.make({
                id: "t",
                tools: [stepped("w", 3)],
                sessionRetry: Schedule.spaced("10 millis").pipe(Schedule.upTo({ times: 5 }))
              })
              let seed = 7
              const next = () => (seed = (seed * 48271) % 2147483647)
              for (let c = 0; c < 6; c++) yield* execute(toolset, `c${c}`, "w")
              for (let round = 0; round < 60; round++) {
                yield* (next() % 2 === 0 ? session.setBusy : session.setIdle)
                for (let i = 0, n = next() % 7; i < n; i++) yield* Effect.yieldNow
                if (round % 5 === 0) yield* kind.advance("250 millis")
              }
              yield* session.setIdle
              yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
              const replies = yield* session.replies
              assert.deepStrictEqual(replies.filter((r) => r.whileBusy).map((r) => r.instructions), [], "a reply was requested while busy")
              const named = new Set(replies.flatMap((r) => namedCallIds(r.instructions)))
              for (let c = 0; c < 6; c++) assert.isTrue(named.has(`c${c}_final`), `c${c}_final named`)
              assert.deepStrictEqual(chatProblems(yield* session.chat), [])
            }).pipe(kind.provide(withReadHops(hops, retryFirst)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
        }
      }
    }

    for (const maxOps of yieldsFor(kind)) {
      it.effect(`a retried reply request after a failure never talks over a user who starts speaking after each idle check (MaxOpsBeforeYield ${maxOps})`, () => {
        let controls: TestSession.TestSession["Service"] | undefined
        let checks = 0
        let requests = 0
        const layer = Layer.effectContext(Effect.map(
          TestSession.make({
            onReply: () =>
              Effect.suspend(() =>
                requests++ < 2
                  ? Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "not now" }))
                  : Effect.void
              )
          }),
          ({ controls: c, session }) => {
            controls = c
            const eager = AgentSession.AgentSession.of({
              ...session,
              awaitInactive: Effect.tap(session.awaitInactive, () => checks++ < 12 ? Effect.asVoid(Effect.forkDetach(c.setBusy)) : Effect.void)
            })
            return Context.make(AgentSession.AgentSession, eager).pipe(Context.add(TestSession.TestSession, c))
          }
        ))
        const quick = FunctionTool.make("job", { description: "Works a second" }, () =>
          Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("1 second"), "done")))
        return Effect.gen(function*() {
          const toolset = yield* kind.make({ id: "t", tools: [quick], sessionRetry: Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 5 })) })
          yield* execute(toolset, "c1", "job")
          yield* kind.advance("1 second")
          for (let i = 0; i < 40 && (yield* controls!.replies).filter((r) => !r.whileBusy).length < 3; i++) {
            yield* settle
            yield* controls!.setIdle
            yield* settle
            yield* kind.advance("100 millis")
          }
          const replies = yield* controls!.replies
          assert.deepStrictEqual(replies.map((r) => r.whileBusy), [false, false, false])
        }).pipe(kind.provide(layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  })

  describe("C4 the chat read for the wording is kept across the last idle wait", () => {
    it.effect("the agent tells the result while the reply waits for idle: with skip, no reply is requested", () => {
      // A remote session: reading the chat takes a second and gives a copy (the port allows a copy:
      // "it may be the session's own array. Read it at once, never keep or change it").
      const layer = Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
        const port = AgentSession.AgentSession.of({
          ...session,
          items: Effect.andThen(Effect.sleep("1 second"), Effect.map(session.items, (items) => items.slice()))
        })
        return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
      }))
      const book = FunctionTool.make("book", { description: "Books" }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("booking")
          yield* Effect.sleep("1 second")
          return "booked"
        }))
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [book], whenAlreadyAnswered: "skip" })
        yield* execute(toolset, "c1", "book")
        yield* kind.advance("1 second") // c1_final is in the chat; the coordinator reads the chat (1 s)
        yield* kind.advance("500 millis")
        yield* session.setBusy // the user speaks; the agent answers
        yield* kind.advance("500 millis") // the copy is taken; the reply waits for idle
        yield* session.say("assistant", "Your flight is booked.") // said after c1_final is in the chat
        yield* session.setIdle
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        // C4: the agent spoke after the pending item; with whenAlreadyAnswered "skip", no reply.
        assert.deepStrictEqual((yield* session.replies).map((r) => r.instructions), [])
      }).pipe(kind.provide(layer))
    })
  })

  describe("E6 close requested while the request step runs inline leaves no step running", () => {
    /**
     * An agent runtime's port can wake another fiber synchronously (a Deferred, a Queue taker):
     * e.g. `generateReply` hands the request to the agent loop, which ends the session (the user
     * hung up, a hand-off) and closes the toolset, before the port answers asynchronously. The
     * close then reaches the toolset while the coordinator is still running the step inline, before
     * the step could have said how to stop it: the step must stop all the same, and nothing of it
     * may outlive close (a 'slow' step would still call the port 5 s later, a 'hang' one never end).
     */
    for (const op of ops) {
      for (const shape of ["hang", "slow"] as const) {
        for (const maxOps of yieldsFor(kind)) {
          it.effect(`${op} wakes a fiber that closes the toolset, then answers '${shape}': no fiber outlives close (MaxOpsBeforeYield ${maxOps})`, () => {
            const fibers = makeFiberCounter()
            let trigger: Deferred.Deferred<void> | undefined
            return fibers.track(Effect.gen(function*() {
              trigger = yield* Deferred.make<void>()
              const scope = yield* Scope.make()
              const toolset = yield* kind.make({ id: "t", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scope))
              // The agent loop: wakes on the port's signal and closes the toolset.
              const closer = yield* Effect.forkChild(
                Effect.andThen(Deferred.await(trigger), Scope.close(scope, Exit.void)),
                { startImmediately: true }
              )
              yield* execute(toolset, "c1", "job")
              yield* kind.advance("1 second") // c1_final: the coordinator's round begins
              yield* Effect.yieldNow
              yield* promptlyLong(Fiber.join(closer), "close")
              yield* settleLong
              // E6: once close returned, no fiber of the toolset is left (the clock has not moved:
              // a 'slow' step would still call the port 5 s after close, a 'hang' one lives forever).
              assert.strictEqual(fibers.active, 0, "a fiber outlived the toolset's close")
            })).pipe(
              kind.provide(hookedSession(op, shape, () => Deferred.doneUnsafe(trigger!, Effect.void))),
              Effect.provideService(References.MaxOpsBeforeYield, maxOps)
            )
          })
        }
      }
    }
  })

  describe("E6 close while the request step is suspended in a port operation", () => {
    /**
     * The step suspends in `op` (answering `shape` only later, or never); the toolset closes then.
     * Close must return promptly, and no fiber (the call's, the coordinator's, the step's) may be
     * left.
     */
    for (const op of ops) {
      for (const shape of shapes) {
        for (const maxOps of yieldsFor(kind)) {
          it.effect(`step suspended in ${op} (then '${shape}'), close: close returns, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
            const fibers = makeFiberCounter()
            let gate: Deferred.Deferred<void> | undefined
            return fibers.track(Effect.gen(function*() {
              gate = yield* Deferred.make<void>()
              const scope = yield* Scope.make()
              const toolset = yield* kind.make({
                id: "t",
                tools: [job],
                replyTimeout: "1 hour",
                sessionRetry: Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 2 }))
              }).pipe(Scope.provide(scope))
              yield* execute(toolset, "c1", "job")
              yield* kind.advance("1 second")
              yield* settleLong
              const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true })
              yield* promptlyLong(Fiber.join(closing), "close")
              yield* kind.advance("10 seconds")
              yield* settleLong
              assert.strictEqual(fibers.active, 0, "a fiber outlived the toolset's close")
            })).pipe(
              kind.provide(gatedSession(op, shape, () => gate!)),
              Effect.provideService(References.MaxOpsBeforeYield, maxOps)
            )
          })
        }
      }
    }
  })

  describe("C2 two toolsets on one session close in either order while the step is suspended", () => {
    for (const op of ops) {
      for (const order of ["a-then-b", "b-then-a"] as const) {
        for (const maxOps of yieldsFor(kind)) {
          it.effect(`step suspended in ${op}; ${order}: the other toolset's results still get one reply; no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
            const fibers = makeFiberCounter()
            let gate: Deferred.Deferred<void> | undefined
            return fibers.track(Effect.gen(function*() {
              gate = yield* Deferred.make<void>()
              const session = yield* TestSession.TestSession
              const scopeA = yield* Scope.make()
              const scopeB = yield* Scope.make()
              const a = yield* kind.make({ id: "a", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeA))
              const b = yield* kind.make({ id: "b", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeB))
              yield* execute(a, "a1", "job")
              yield* execute(b, "b1", "job")
              yield* kind.advance("1 second") // a1_final and b1_final: the step suspends in op
              yield* settleLong
              const [first, second, firstScope, secondScope] = order === "a-then-b" ? [a, b, scopeA, scopeB] as const : [b, a, scopeB, scopeA] as const
              yield* promptlyLong(Scope.close(firstScope, Exit.void), "first close")
              yield* Deferred.succeed(gate, void 0) // the port answers
              yield* whileClockRuns(second.awaitIdle, { what: "the other toolset's awaitIdle" })
              const replies = yield* session.replies
              const named = replies.flatMap((r) => namedCallIds(r.instructions))
              const survivor = second === a ? "a1_final" : "b1_final"
              assert.include(named, survivor, JSON.stringify(replies.map((r) => r.instructions)))
              assert.isFalse(replies.some((r) => r.whileBusy))
              void first
              yield* promptlyLong(Scope.close(secondScope, Exit.void), "second close")
              yield* settleLong
              assert.strictEqual(fibers.active, 0, "a fiber outlived both closes")
            })).pipe(
              kind.provide(gatedSession(op, "ok", () => gate!)),
              Effect.provideService(References.MaxOpsBeforeYield, maxOps)
            )
          })
        }
      }
    }
  })

  describe("C2/C3 a toolset closed during the request step's inline run (two toolsets on one session)", () => {
    // The close takes the closed toolset's items back out of the round while the step runs; the
    // step must neither fail on the emptied round nor go on beside the coordinator's later rounds.
    for (const maxOps of inlineSettings) {
      it.effect(`B's result gets exactly one reply: the orphaned step does not ask a second time (MaxOpsBeforeYield ${maxOps})`, () => {
        let trigger: Deferred.Deferred<void> | undefined
        return Effect.gen(function*() {
          trigger = yield* Deferred.make<void>()
          const session = yield* TestSession.TestSession
          const scopeA = yield* Scope.make()
          const scopeB = yield* Scope.make()
          const a = yield* kind.make({ id: "a", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeA))
          const b = yield* kind.make({ id: "b", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeB))
          // The agent loop: woken by the port, it closes A (a hand-off away from A's agent).
          yield* Effect.forkChild(Effect.andThen(Deferred.await(trigger), Scope.close(scopeA, Exit.void)), { startImmediately: true })
          yield* execute(a, "a1", "job")
          yield* kind.advance("1 second") // t=1 a1_final: the step reads the chat (answers at t=6); A closes inline
          yield* settleLong
          yield* execute(b, "b1", "job")
          yield* kind.advance("1 second") // t=2 b1_final: its reply is requested (the request takes 10 s)
          yield* settleLong
          yield* kind.advance("5 seconds") // t=7: the first step's read answered
          yield* settleLong
          yield* whileClockRuns(b.awaitIdle, { what: "b.awaitIdle" })
          const replies = yield* session.replies
          const forB1 = replies.filter((r) => namedCallIds(r.instructions).includes("b1_final"))
          // C2: exactly one reply for what is pending; C3: no item delivered twice.
          assert.strictEqual(forB1.length, 1, `replies: ${JSON.stringify(replies.map((r) => r.instructions))}`)
          yield* Scope.close(scopeB, Exit.void)
        }).pipe(
          kind.provide(sessionWhoseFirstReadClosesA(() => Deferred.doneUnsafe(trigger!, Effect.void), "slow")),
          Effect.provideService(References.MaxOpsBeforeYield, maxOps)
        )
      })

      it.effect(`the first step is not left running: after both toolsets close no fiber is left (MaxOpsBeforeYield ${maxOps})`, () => {
        const fibers = makeFiberCounter()
        let trigger: Deferred.Deferred<void> | undefined
        return fibers.track(Effect.gen(function*() {
          trigger = yield* Deferred.make<void>()
          const scopeA = yield* Scope.make()
          const scopeB = yield* Scope.make()
          const a = yield* kind.make({ id: "a", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeA))
          yield* kind.make({ id: "b", tools: [job], replyTimeout: "1 hour" }).pipe(Scope.provide(scopeB))
          const closer = yield* Effect.forkChild(Effect.andThen(Deferred.await(trigger), Scope.close(scopeA, Exit.void)), { startImmediately: true })
          yield* execute(a, "a1", "job")
          yield* kind.advance("1 second")
          yield* settleLong
          yield* Fiber.join(closer)
          yield* Scope.close(scopeB, Exit.void)
          yield* settleLong
          assert.strictEqual(fibers.active, 0, "a fiber outlived both toolsets")
        })).pipe(
          kind.provide(sessionWhoseFirstReadClosesA(() => Deferred.doneUnsafe(trigger!, Effect.void), "hang")),
          Effect.provideService(References.MaxOpsBeforeYield, maxOps)
        )
      })
    }
  })

  describe("E6 close while the coordinator retries (an insertion, or a failed reply request)", () => {
    type Where = "insert-retry" | "reply-retry"
    for (const where of ["insert-retry", "reply-retry"] as const satisfies ReadonlyArray<Where>) {
      for (const shape of ["fail", "die", "interrupt", "hang"] as const) {
        for (const maxOps of yieldsFor(kind)) {
          it.effect(`${where}: the port answers '${shape}' and the toolset closes during the retries: close returns, no fiber left (MaxOpsBeforeYield ${maxOps})`, () => {
            const fibers = makeFiberCounter()
            return fibers.track(Effect.gen(function*() {
              const scope = yield* Scope.make()
              const toolset = yield* kind.make({
                id: "t",
                tools: [job],
                replyTimeout: "1 hour",
                sessionRetry: Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 100 }))
              }).pipe(Scope.provide(scope))
              yield* execute(toolset, "c1", "job")
              yield* kind.advance("1 second")
              yield* settleLong
              yield* kind.advance("2500 millis") // in the middle of the retries
              yield* settleLong
              yield* promptlyLong(Scope.close(scope, Exit.void), "close")
              yield* settleLong
              assert.strictEqual(fibers.active, 0, "a fiber outlived the toolset's close")
            })).pipe(
              kind.provide(Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
                const port = AgentSession.AgentSession.of({
                  ...session,
                  insert: (items) => where === "insert-retry" && items.some((i) => "callId" in i && i.callId === "c1_final") ? answer(shape, session.insert(items), "insert") : session.insert(items),
                  generateReply: (r) => where === "reply-retry" ? answer(shape, session.generateReply(r), "generateReply") : session.generateReply(r)
                })
                return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
              }))),
              Effect.provideService(References.MaxOpsBeforeYield, maxOps)
            )
          })
        }
      }
    }

    it.effect("items waiting for an insertion retry when the toolset closes: none is inserted afterwards", () => {
      const has = (items: ReadonlyArray<{ readonly _tag: string }>, id: string) =>
        items.some((i) => "callId" in i && i.callId === id)
      // a1_final and a2_final both fail once; a1_final's retry then hangs, a2_final's would work.
      const faulty = faultySession({
        insert: (items, attempt) =>
          has(items, "a1_final") ? (attempt === 1 ? "fail" : "hang") : has(items, "a2_final") && attempt === 1 ? "fail" : "ok"
      })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const scope = yield* Scope.make()
        const toolset = yield* kind.make({ id: "t", tools: [job] }).pipe(Scope.provide(scope))
        yield* execute(toolset, "a1", "job")
        yield* execute(toolset, "a2", "job")
        yield* session.setBusy
        yield* kind.advance("1 second") // both insertions fail; the coordinator holds both for a retry
        yield* session.setIdle
        yield* settle // the retry of a1_final hangs; a2_final waits behind it
        assert.deepStrictEqual(chatCallIds(yield* session.chat), [])
        yield* Scope.close(scope, Exit.void)
        yield* settle
        assert.deepStrictEqual(chatCallIds(yield* session.chat), [], "nothing is inserted after close")
        // (A durable store keeps the item: the toolset made again puts it into the chat.)
        const notInChat = kind.durable ? ["Warn", "did not reach the chat yet"] as const : ["Error", "never reached the chat"] as const
        assert.strictEqual(logs.find([notInChat[0]], "a2_final", notInChat[1]).length, 1)
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })
  })
})
