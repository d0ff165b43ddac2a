/**
 * Adversarial review of the engine: each test is a small scenario meant to break one rule of
 * SPEC.md. A failing test here documents a bug (see the comment above each).
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, References, Schedule, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute, settle, stillWaiting, thenLetToolsEnd } from "./support/lifetime.ts"
import { captureLogs, chatCallIds, chatProblems, faultySession, namedCallIds, whileClockRuns } from "./support/reliability.ts"

/** Scheduler settings (3..64 and the default). */
const yieldSettings = [3, 4, 5, 8, 16, 32, 64, 2048] as const

const retryTwice = Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 2 }))

describe("Review: D4 replace never lets two calls of one key run at once", () => {
  /**
   * A replace-mode tool: logs start/stop, says "started" at once, then charges the card for 10 s
   * inside an uninterruptible region, then works until stopped.
   */
  const booking = (log: Array<string>, charging?: Deferred.Deferred<void>) =>
    FunctionTool.make("book", { description: "Books", onDuplicateCall: "replace" }, () =>
      Effect.gen(function*() {
        const { callId } = yield* AsyncRunContext.functionCall
        log.push(`start ${callId}`)
        yield* AsyncRunContext.update(`started ${callId}`)
        yield* Effect.uninterruptible(Effect.andThen(
          Effect.sync(() => {
            if (callId === "a" && charging !== undefined) Deferred.doneUnsafe(charging, Effect.void)
          }),
          Effect.sleep("10 seconds")
        ))
        return yield* Effect.never
      }).pipe(Effect.ensuring(Effect.flatMap(AsyncRunContext.functionCall, ({ callId }) =>
        Effect.sync(() => log.push(`stop ${callId}`))))))

  for (const maxOps of yieldSettings) {
    it.effect(`a replace call after a cancel of a call still stopping waits for it (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        yield* TestClock.adjust("0 millis")
        const log: Array<string> = []
        const charging = yield* Deferred.make<void>()
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [booking(log, charging)] })
        yield* execute(toolset, "a", "book")
        yield* Deferred.await(charging) // a charges the card for 10 s (uninterruptible)
        assert.strictEqual(yield* toolset.cancel("a"), "cancelled") // a is stopping
        const b = yield* Effect.forkChild(execute(toolset, "b", "book"), { startImmediately: true })
        yield* settle
        // SPEC D4: "The new call starts only once every call of that key has stopped, those still
        // stopping from earlier cancels included: two calls of one key never run at once."
        assert.deepStrictEqual(log, ["start a"], "b must not start while a is still stopping")
        yield* TestClock.adjust("10 seconds")
        yield* Fiber.join(b)
        assert.deepStrictEqual(log, ["start a", "stop a", "start b"])
      }).pipe(thenLetToolsEnd, Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
  }

  for (const maxOps of yieldSettings) {
    it.effect(`a replace call after a call abandoned by its caller, still stopping, waits for it (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        yield* TestClock.adjust("0 millis")
        const log: Array<string> = []
        // Charges the card for 10 s (uninterruptible) before it says anything.
        const quiet = FunctionTool.make("book", { description: "Books", onDuplicateCall: "replace" }, () =>
          Effect.gen(function*() {
            const { callId } = yield* AsyncRunContext.functionCall
            log.push(`start ${callId}`)
            yield* Effect.uninterruptible(Effect.sleep("10 seconds"))
            yield* AsyncRunContext.update(`charged ${callId}`)
            return yield* Effect.never
          }).pipe(Effect.ensuring(Effect.flatMap(AsyncRunContext.functionCall, ({ callId }) =>
            Effect.sync(() => log.push(`stop ${callId}`))))))
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [quiet] })
        const a = yield* Effect.forkChild(execute(toolset, "a", "book"), { startImmediately: true })
        yield* settle
        yield* Fiber.interrupt(a) // the caller gives up: a is abandoned, and stops in 10 s
        const b = yield* Effect.forkChild(execute(toolset, "b", "book"), { startImmediately: true })
        yield* settle
        assert.deepStrictEqual(log, ["start a"], "b must not start while a is still stopping")
        yield* TestClock.adjust("20 seconds")
        yield* Fiber.join(b)
      }).pipe(thenLetToolsEnd, Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
  }

  it.effect("a replace call after a timed-out call still stopping waits for it", () =>
    Effect.gen(function*() {
      yield* TestClock.adjust("0 millis")
      const log: Array<string> = []
      const timed = FunctionTool.make("book", { description: "Books", onDuplicateCall: "replace", timeout: "1 second" }, () =>
        Effect.gen(function*() {
          const { callId } = yield* AsyncRunContext.functionCall
          log.push(`start ${callId}`)
          yield* AsyncRunContext.update(`started ${callId}`)
          yield* Effect.uninterruptible(Effect.sleep("10 seconds"))
          return yield* Effect.never
        }).pipe(Effect.ensuring(Effect.flatMap(AsyncRunContext.functionCall, ({ callId }) =>
          Effect.sync(() => log.push(`stop ${callId}`))))))
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [timed] })
      yield* execute(toolset, "a", "book")
      yield* TestClock.adjust("1 second") // a times out, still inside its region for 9 s
      const b = yield* Effect.forkChild(execute(toolset, "b", "book"), { startImmediately: true })
      yield* settle
      assert.deepStrictEqual(log, ["start a"], "b must not start while a is still stopping")
      yield* TestClock.adjust("9 seconds")
      yield* Fiber.join(b)
    }).pipe(thenLetToolsEnd, Effect.provide(TestSession.layer)))
})

describe("Review: awaitIdle and timeouts", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`awaitIdle does not complete before a timed-out call's notice is in the chat and replied to (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const slow = FunctionTool.make("slow", { description: "Slow", timeout: "1 second" }, () =>
          Effect.andThen(AsyncRunContext.update("started"), Effect.never))
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [slow] })
        yield* execute(toolset, "c1", "slow")
        // Someone waits for the toolset to be idle (tests, shutdown) while the call runs.
        const idle = yield* Effect.forkChild(
          Effect.andThen(toolset.awaitIdle, Effect.zip(session.chat, session.replies)),
          { startImmediately: true }
        )
        yield* TestClock.adjust("1 second") // the timeout fires
        const [chat, replies] = yield* Fiber.join(idle)
        // awaitIdle: "no running call and no pending reply". The timed-out notice is owed a reply.
        assert.deepStrictEqual(chatCallIds(chat), ["c1_final"], "the notice is in the chat when awaitIdle completes")
        assert.deepStrictEqual(replies.map((r) => namedCallIds(r.instructions)), [["c1_final"]], "and replied to")
      }).pipe(Effect.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
  }
})

describe("Review: E2 nothing of a cancelled call reaches the chat after its cancellation", () => {
  it.effect("a call cancelled between two insertion retries of its update: the retry stops", () => {
    // c1_update_1: the first two attempts fail, the third would work.
    const faulty = faultySession({
      insert: (items, attempt) => items.some((i) => "callId" in i && i.callId === "c1_update_1") && attempt <= 2 ? "fail" : "ok"
    })
    const chatty = FunctionTool.make("chatty", { description: "Updates, then works" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* AsyncRunContext.update("halfway") // c1_update_1
        return yield* Effect.never
      }))
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* AsyncToolset.make({
        id: "t",
        tools: [chatty],
        sessionRetry: Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 5 }))
      })
      yield* execute(toolset, "c1", "chatty") // attempt 1 fails; the coordinator retries at once (attempt 2 fails)
      yield* settle
      assert.deepStrictEqual(faulty.attempts.insert.map((a) => a.fault), ["fail", "fail"])
      assert.strictEqual(yield* toolset.cancel("c1"), "cancelled") // cancelled while the retry waits 1 s
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
      assert.deepStrictEqual(chatCallIds(yield* session.chat), [], "nothing of c1 reaches the chat after its cancellation")
      assert.deepStrictEqual(yield* session.replies, [])
    }).pipe(Effect.provide(faulty.layer))
  })
})

describe("Review: B7 call ids stay unique in the chat", () => {
  it.effect("a toolset made again on the same session (agent hand-off) never writes a pair the first one wrote", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const job = FunctionTool.make("job", { description: "Reports, then ends" }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("started")
          yield* Effect.sleep("1 second")
          return "done"
        }))
      // The first agent's toolset.
      yield* Effect.gen(function*() {
        const first = yield* AsyncToolset.make({ id: "t", tools: [job] })
        yield* execute(first, "c1", "job")
        yield* TestClock.adjust("1 second")
        yield* first.awaitIdle
      }).pipe(Effect.scoped)
      // The next agent's toolset, on the same session and chat; the model reuses an ended call's id.
      const second = yield* AsyncToolset.make({ id: "t", tools: [job] })
      yield* execute(second, "c1", "job")
      yield* TestClock.adjust("1 second")
      yield* second.awaitIdle
      assert.deepStrictEqual(chatProblems(yield* session.chat), [])
    }).pipe(Effect.provide(TestSession.layer)))
})

describe("Review: session faults never drop a result silently", () => {
  const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep("1 second")
      return "done"
    }))

  it.effect("waiting for idle fails while a result waits for its insertion retry: it is retried, or reported as not in the chat", () => {
    const faulty = faultySession({
      insert: (items, attempt) => items.some((i) => "callId" in i && i.callId === "c1_final") && attempt === 1 ? "fail" : "ok",
      awaitInactive: (attempt) => attempt === 1 ? "die" : "ok"
    })
    const logs = captureLogs()
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [job], sessionRetry: retryTwice })
      yield* execute(toolset, "c1", "job")
      yield* TestClock.adjust("1 second") // c1_final's insertion fails; then waiting for idle dies
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
      const inChat = chatCallIds(yield* session.chat).includes("c1_final")
      const claimsInChat = logs.find(["Error"], "c1_final", "they are in the chat")
      // README: "If it still fails, an error names the item, and no reply names it"; the log must
      // not tell the operator the result is in the chat when it never got there.
      assert.isTrue(inChat || claimsInChat.length === 0, `c1_final is not in the chat, yet the log says: ${claimsInChat.map((l) => l.text).join(" | ")}`)
    }).pipe(Effect.provide(faulty.layer), Effect.provide(logs.layer))
  })

  it.effect("reading the chat never returns: later results still get replies (the coordinator is not stuck)", () => {
    let hang = true
    const faulty = faultySession({ chatContext: () => hang ? "hang" : "ok" })
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [job] })
      yield* execute(toolset, "c1", "job")
      yield* TestClock.adjust("1 second") // c1_final; the coordinator reads the chat: it never answers
      hang = false
      yield* execute(toolset, "c2", "job")
      yield* TestClock.adjust("1 second")
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "10 seconds", steps: 60 })
      assert.include((yield* session.replies).flatMap((r) => namedCallIds(r.instructions)), "c2_final")
    }).pipe(Effect.provide(faulty.layer))
  })

  it.effect("an insertion retry that never returns does not hold back the replies of another toolset of the session", () => {
    const faulty = faultySession({
      insert: (items, attempt) =>
        items.some((i) => "callId" in i && i.callId === "a1_final") ? (attempt === 1 ? "fail" : "hang") : "ok"
    })
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const a = yield* AsyncToolset.make({ id: "a", tools: [job] })
      const b = yield* AsyncToolset.make({ id: "b", tools: [job] })
      yield* execute(a, "a1", "job")
      yield* TestClock.adjust("1 second") // a1_final fails; its retry hangs
      yield* execute(b, "b1", "job")
      yield* TestClock.adjust("1 second") // b1_final is in the chat
      yield* whileClockRuns(b.awaitIdle, { what: "b.awaitIdle", step: "10 seconds", steps: 60 })
      assert.include((yield* session.replies).flatMap((r) => namedCallIds(r.instructions)), "b1_final")
    }).pipe(Effect.provide(faulty.layer))
  })
})

describe("Review: C4/C4b what the agent said before a result reached the chat never covers it", () => {
  it.effect("a slow insertion: the agent speaks while the result is being inserted; the result is still told (skip)", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const book = FunctionTool.make("book", { description: "Books" }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("booking")
          yield* Effect.sleep("1 second")
          return "booked"
        }))
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [book], whenAlreadyAnswered: "skip" })
      yield* execute(toolset, "c1", "book")
      yield* session.setBusy
      yield* TestClock.adjust("1 second") // the result is ready; its insertion takes 2 s
      yield* TestClock.adjust("1 second")
      yield* session.say("assistant", "Anything else I can do?") // said before the result is in the chat
      yield* TestClock.adjust("1 second") // the insertion completes
      yield* session.setIdle
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
      assert.strictEqual((yield* session.replies).length, 1, "the result is told: nothing said before it reached the chat covers it")
    }).pipe(Effect.provide(TestSession.layerWith({ beforeInsert: () => Effect.sleep("2 seconds") }))))
})

describe("Review: E2 an update in flight when the call is cancelled", () => {
  it.effect("an update inserted (slowly) from an uninterruptible region lands after cancel: no reply is asked for it", () =>
    Effect.gen(function*() {
      yield* TestClock.adjust("0 millis")
      const session = yield* TestSession.TestSession
      const tool = FunctionTool.make("charge", { description: "Charges" }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("started")
          yield* Effect.uninterruptible(AsyncRunContext.update("charged")) // its insertion takes 2 s
          return yield* Effect.never
        }))
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [tool] })
      yield* execute(toolset, "c1", "charge")
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
      const mark = (yield* session.chat).items.length
      yield* TestClock.adjust("2 seconds")
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
      const after = (yield* session.chat).items.slice(mark).flatMap((i) => "callId" in i ? [i.callId] : [])
      assert.deepStrictEqual(yield* session.replies, [], "the model is not asked to talk about a cancelled call")
      assert.deepStrictEqual(after, [], "nothing of c1 reaches the chat after its cancellation")
    }).pipe(Effect.provide(TestSession.layerWith({ beforeInsert: () => Effect.sleep("2 seconds") }))))
})

describe("Review: E6 nothing is inserted after close", () => {
  it.effect("items waiting for an insertion retry when the toolset closes: none is inserted afterwards", () => {
    const has = (items: ReadonlyArray<{ readonly _tag: string }>, id: string) =>
      items.some((i) => "callId" in i && i.callId === id)
    // a1_final and a2_final both fail once; a1_final's retry then hangs, a2_final's would work.
    const faulty = faultySession({
      insert: (items, attempt) =>
        has(items, "a1_final") ? (attempt === 1 ? "fail" : "hang") : has(items, "a2_final") && attempt === 1 ? "fail" : "ok"
    })
    const logs = captureLogs()
    const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* Effect.sleep("1 second")
        return "done"
      }))
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const scope = yield* Scope.make()
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [job] }).pipe(Scope.provide(scope))
      yield* execute(toolset, "a1", "job")
      yield* execute(toolset, "a2", "job")
      yield* session.setBusy
      yield* TestClock.adjust("1 second") // both insertions fail; the coordinator holds both for a retry
      yield* session.setIdle
      yield* settle // the retry of a1_final hangs; a2_final waits behind it
      assert.deepStrictEqual(chatCallIds(yield* session.chat), [])
      yield* Scope.close(scope, Exit.void)
      yield* settle
      assert.deepStrictEqual(chatCallIds(yield* session.chat), [], "nothing is inserted after close")
      assert.strictEqual(logs.find(["Error"], "a2_final", "never reached the chat").length, 1)
    }).pipe(Effect.provide(faulty.layer), Effect.provide(logs.layer))
  })
})

describe("Review: E6 drain with a stalled session", () => {
  it.effect("drain returns when the only call left is one whose result's insertion never returns (runningTasks is empty)", () => {
    const faulty = faultySession({ insert: () => "hang" })
    const job = FunctionTool.make("job", { description: "Reports, then ends" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* Effect.sleep("1 second")
        return "done"
      }))
    return Effect.gen(function*() {
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [job] })
      yield* execute(toolset, "c1", "job")
      yield* TestClock.adjust("1 second") // the handler returned; inserting c1_final never returns
      assert.deepStrictEqual(yield* toolset.runningTasks, [], "nothing is listed as running")
      // drain (agent hand-off): "cancels the cancellable calls and waits for the others"; there are none.
      yield* whileClockRuns(toolset.drain, { what: "drain", step: "10 seconds", steps: 60 })
    }).pipe(Effect.provide(faulty.layer))
  })
})

describe("Review: E6 close while a close is in progress", () => {
  /** Says "started", then works 10 s inside an uninterruptible region (signalled once inside). */
  const stubbornTool = (inside: Deferred.Deferred<void>) =>
    FunctionTool.make("stubborn", { description: "Finishes what it started" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* Effect.uninterruptible(Effect.andThen(Deferred.succeed(inside, undefined), Effect.sleep("10 seconds")))
      }))

  it.effect("a second toolset.close does not return while the first is still waiting for a call to stop", () =>
    Effect.gen(function*() {
      yield* TestClock.adjust("0 millis")
      const inside = yield* Deferred.make<void>()
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [stubbornTool(inside)] })
      yield* execute(toolset, "c1", "stubborn")
      yield* Deferred.await(inside)
      yield* Effect.forkChild(toolset.close, { startImmediately: true }) // e.g. the agent's hand-off
      yield* settle
      const second = yield* Effect.forkChild(toolset.close, { startImmediately: true }) // e.g. shutdown
      assert.isTrue(yield* stillWaiting(second), "close returned while c1 still runs")
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.join(second)
    }).pipe(thenLetToolsEnd, Effect.provide(TestSession.layer)))

  it.effect("the scope the toolset was made in does not finish closing while toolset.close still waits for a call", () =>
    Effect.gen(function*() {
      yield* TestClock.adjust("0 millis")
      const inside = yield* Deferred.make<void>()
      const scope = yield* Scope.make()
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [stubbornTool(inside)] }).pipe(Scope.provide(scope))
      yield* execute(toolset, "c1", "stubborn")
      yield* Deferred.await(inside)
      yield* Effect.forkChild(toolset.close, { startImmediately: true })
      yield* settle
      const outer = yield* Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true })
      // Structured concurrency: nothing the toolset started outlives the scope it was made in.
      assert.isTrue(yield* stillWaiting(outer), "the scope closed while c1's fiber still runs")
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.join(outer)
    }).pipe(thenLetToolsEnd, Effect.provide(TestSession.layer)))
})

describe("Review: B7 a model call id equal to a synthetic base", () => {
  it.effect("calls c1, c1 again, then c1_run2: no call id appears twice in the chat", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
        Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("1 second"), "done")))
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [job] })
      // The second c1 writes c1_run2_final; a model copying ids it saw may then send "c1_run2".
      for (const id of ["c1", "c1", "c1_run2"]) {
        yield* execute(toolset, id, "job")
        yield* TestClock.adjust("1 second")
        yield* toolset.awaitIdle
      }
      assert.deepStrictEqual(chatProblems(yield* session.chat), [])
    }).pipe(Effect.provide(TestSession.layer)))
})

describe("Review: C4 the chat read for the wording is kept across the last idle wait", () => {
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
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [book], whenAlreadyAnswered: "skip" })
      yield* execute(toolset, "c1", "book")
      yield* TestClock.adjust("1 second") // c1_final is in the chat; the coordinator reads the chat (1 s)
      yield* TestClock.adjust("500 millis")
      yield* session.setBusy // the user speaks; the agent answers
      yield* TestClock.adjust("500 millis") // the copy is taken; the reply waits for idle
      yield* session.say("assistant", "Your flight is booked.") // said after c1_final is in the chat
      yield* session.setIdle
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
      // C4: the agent spoke after the pending item; with whenAlreadyAnswered "skip", no reply.
      assert.deepStrictEqual((yield* session.replies).map((r) => r.instructions), [])
    }).pipe(Effect.provide(layer))
  })
})

describe("Review: an update cut short is not lost (C3)", () => {
  it.effect("a child fiber's update whose insertion is cut short when the call ends is retried: in the chat once (after _final, stamped when inserted), named in a reply", () => {
    // Inserting an update takes 5 s; inserting the final result is quick.
    const layer = Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
      const port = AgentSession.AgentSession.of({
        ...session,
        insert: (items) =>
          items.some((i) => "callId" in i && i.callId.includes("_update_"))
            ? Effect.andThen(Effect.sleep("5 seconds"), session.insert(items))
            : session.insert(items)
      })
      return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
    }))
    const tool = FunctionTool.make("job", { description: "Reports progress from a helper fiber" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* Effect.forkChild(AsyncRunContext.update("progress: 50%")) // c1_update_1, still being inserted when the call ends
        yield* Effect.sleep("1 second")
        return "done"
      }))
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* AsyncToolset.make({ id: "t", tools: [tool] })
      yield* execute(toolset, "c1", "job")
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
      const ids = chatCallIds(yield* session.chat)
      assert.deepStrictEqual(ids.filter((id) => id === "c1_update_1").length, 1, `once: ${ids.join(", ")}`)
      assert.deepStrictEqual(ids.filter((id) => id === "c1_final").length, 1, `once: ${ids.join(", ")}`)
      const named = (yield* session.replies).flatMap((r) => [...namedCallIds(r.instructions)])
      assert.includeMembers(named, ["c1_update_1", "c1_final"])
      assert.strictEqual(named.filter((id) => id === "c1_update_1").length, 1, "named in exactly one reply")
    }).pipe(Effect.provide(layer))
  })
})

describe("C3: an update whose insertion failed is delivered even when its call's final result got in first", () => {
  for (const fault of ["fail", "die", "interrupt"] as const) {
    it.effect(`the insertion of c1_update_1 ends with '${fault}' once; c1_final is inserted before the retry: both are in the chat once and named in a reply once`, () => {
      const faulty = faultySession({
        insert: (items, attempt) => items.some((i) => "callId" in i && i.callId === "c1_update_1") && attempt === 1 ? fault : "ok"
      })
      const background = FunctionTool.make("background", { description: "Updates twice, then returns" }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("started")
          yield* AsyncRunContext.update("halfway") // c1_update_1: its insertion fails; update returns all the same
          return "done" // c1_final: inserted at once, before the coordinator retries c1_update_1
        }))
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* AsyncToolset.make({ id: "t", tools: [background] })
        yield* execute(toolset, "c1", "background")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        const ids = chatCallIds(yield* session.chat)
        assert.deepStrictEqual([...ids].sort(), ["c1_final", "c1_update_1"], `chat: ${ids.join(", ")}`)
        const named = (yield* session.replies).flatMap((r) => [...namedCallIds(r.instructions)])
        assert.deepStrictEqual([...named].sort(), ["c1_final", "c1_update_1"], "each named in exactly one reply")
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
        assert.deepStrictEqual(logs.find(["Error"]).map((l) => l.text), [], "nothing reported lost")
      }).pipe(Effect.provide(faulty.layer), Effect.provide(logs.layer))
    })
  }
})
