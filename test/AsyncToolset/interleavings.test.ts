/**
 * Interleavings real agents produce, each once broken in the first engine (issue 8 lists them):
 * replace chains, interrupt-shaped port answers, racing first updates, a result against its
 * timeout, a reply request next to a user who starts speaking, a retried insertion, reused call
 * ids, two toolsets on one session, and what the events say about all this.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, References, Schema, Scope, Stream } from "effect"
import { AgentSession, AiAgent, AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import type { ToolsetEvent } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { agentLayer, transcript } from "../support/agent.ts"
import { chatCallIds, execute, promptly, settle, stillWaiting, thenLetToolsEnd } from "../support/lifetime.ts"
import {
  captureLogs,
  chatProblems,
  faultySession,
  injected,
  makeFiberCounter,
  modelCall,
  namedCallIds,
  whileClockRuns
} from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"
import { yieldsFor } from "../support/schedules.ts"

/**
 * Scheduler settings the races run under: a yield after almost every step, up to the default
 * (2048). Below 3 a fiber that resumes yields again before its first step: it never progresses.
 */

/**
 * A booking tool in `replace` mode. A call says "started <callId>" at once, then charges the card
 * uninterruptibly for 10 seconds (cancelling it waits for that), then works until cancelled. `log`
 * records when each call's handler starts and stops, so a test can see two calls overlap; `charging`
 * tells, per call id, when it is inside its uninterruptible region.
 */
const replacing = (log: Array<string>, charging = new Map<string, Deferred.Deferred<void>>()) =>
  FunctionTool.make("book", {
    description: "Books; a new booking replaces the running one",
    parameters: Schema.Struct({ to: Schema.String }),
    onDuplicateCall: "replace"
  }, () =>
    Effect.gen(function*() {
      const { callId } = yield* AsyncRunContext.functionCall
      log.push(`start ${callId}`)
      yield* AsyncRunContext.update(`started ${callId}`)
      yield* Effect.uninterruptible(Effect.andThen(
        Effect.sync(() => {
          const signal = charging.get(callId)
          if (signal !== undefined) Deferred.doneUnsafe(signal, Effect.void)
        }),
        Effect.sleep("10 seconds")
      ))
      return yield* Effect.never
    }).pipe(Effect.ensuring(Effect.flatMap(AsyncRunContext.functionCall, ({ callId }) =>
      Effect.sync(() => log.push(`stop ${callId}`))))))

/** Starts a booking and waits until it charges the card (inside its uninterruptible region). */
const startCharging = (toolset: AsyncToolset.AsyncToolset, charging: Map<string, Deferred.Deferred<void>>, callId: string) =>
  Effect.gen(function*() {
    const signal = yield* Deferred.make<void>()
    charging.set(callId, signal)
    yield* execute(toolset, callId, "book", { to: "NRT" })
    yield* Deferred.await(signal)
  })

/** The call id of the model's last call in the chat. */
const lastCallId = (chat: ChatContext.ChatContext): string =>
  chat.items.filter((item): item is ChatContext.FunctionCall => item._tag === "FunctionCall").at(-1)!.callId

/** How many handlers ran at once, at most, from a start/stop log. */
const maxOverlap = (log: ReadonlyArray<string>) => {
  let now = 0
  let max = 0
  for (const line of log) {
    now += line.startsWith("start") ? 1 : -1
    max = Math.max(max, now)
  }
  return max
}

forEachKind("AsyncToolset interleavings", (kind) => {
  describe("1 a chain of replacements never leaves a caller waiting", () => {
    it.effect("a call replaced while it waits for a slowly stopping call answers cancelled at once", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        const charging = new Map<string, Deferred.Deferred<void>>()
        const toolset = yield* kind.make({ id: "t", tools: [replacing(log, charging)] })
        yield* startCharging(toolset, charging, "a") // charging the card for 10 s
        const b = yield* Effect.forkChild(execute(toolset, "b", "book", { to: "KIX" }), { startImmediately: true })
        assert.isTrue(yield* stillWaiting(b), "b waits for a to stop")

        const c = yield* Effect.forkChild(execute(toolset, "c", "book", { to: "HND" }), { startImmediately: true })
        const bOut = yield* promptly(Fiber.join(b), "b's execute, replaced by c")
        assert.isTrue(bOut.isError)
        assert.include(bOut.output, "cancelled")
        assert.isTrue(yield* stillWaiting(c), "c waits for a, still charging")

        yield* kind.advance("10 seconds")
        const cOut = yield* Fiber.join(c)
        assert.strictEqual(cOut.output.includes("started c"), true)
        assert.deepStrictEqual(log, ["start a", "stop a", "start c"], "b never ran")
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))

    it.effect("drain answers a call waiting to replace a slowly stopping call at once", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        const charging = new Map<string, Deferred.Deferred<void>>()
        const toolset = yield* kind.make({ id: "t", tools: [replacing(log, charging)] })
        yield* startCharging(toolset, charging, "a")
        const b = yield* Effect.forkChild(execute(toolset, "b", "book", { to: "KIX" }), { startImmediately: true })
        const drained = yield* Effect.forkChild(toolset.drain, { startImmediately: true })

        const bOut = yield* promptly(Fiber.join(b), "b's execute, drained while it waited")
        assert.include(bOut.output, "cancelled")
        assert.isTrue(yield* stillWaiting(drained), "drain waits for a to stop")
        yield* kind.advance("10 seconds")
        yield* Fiber.join(drained)
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        assert.deepStrictEqual(log, ["start a", "stop a"])
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))

    it.effect("three calls of a replace tool in one model response: the turn ends, only the last runs", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        const agent = yield* AiAgent.AiAgent
        yield* agent.addToolset(yield* kind.make({ id: "t", tools: [replacing(log)] }))
        const turn = yield* Effect.forkChild(agent.send("Book it, no, that, no, this one"), { startImmediately: true })
        yield* whileClockRuns(Fiber.join(turn), { what: "the turn" })
        // The first ran (or, durable, was replaced before its execution began: it never ran), the
        // second, replaced while it waited, never ran, the last runs.
        const started = log.filter((l) => l.startsWith("start"))
        assert.include(kind.durable ? [1, 2] : [2], started.length, "the call replaced while it waited never ran")
        assert.strictEqual(started.at(-1), `start ${lastCallId(yield* agent.chat)}`)
        assert.strictEqual(maxOverlap(log), 1)
        const lines = transcript(yield* agent.chat)
        // A call that never ran was answered "cancelled"; one that ran said it started.
        assert.strictEqual(
          lines.filter((l) => l.startsWith("output") && l.includes("(error)") && l.includes("cancelled")).length,
          3 - started.length,
          lines.join("\n")
        )
      }).pipe(
        thenLetToolsEnd,
        kind.provide(agentLayer((request) =>
          request.index === 0
            ? { toolCalls: [1, 2, 3].map((n) => ({ name: "book", params: { to: `city ${n}` } })) }
            : "Booking the last one."
        ))
      ))
  })

  describe("2 replace never lets two calls of a key run at once", () => {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`a replacing call waits for every call of its key still stopping (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          // TestClock's first sleep of a test briefly makes the sleeping fiber interruptible (to
          // start its "the clock did not move" warning): move the clock once so that is done.
          yield* kind.advance("0 millis")
          const log: Array<string> = []
          const charging = new Map<string, Deferred.Deferred<void>>()
          const toolset = yield* kind.make({ id: "t", tools: [replacing(log, charging)] })
          yield* startCharging(toolset, charging, "a")
          const b = yield* Effect.forkChild(execute(toolset, "b", "book", { to: "KIX" }), { startImmediately: true })
          yield* settle
          const cCharging = yield* Deferred.make<void>()
          charging.set("c", cCharging)
          const c = yield* Effect.forkChild(execute(toolset, "c", "book", { to: "HND" }), { startImmediately: true })
          yield* settle
          assert.deepStrictEqual(log, ["start a"], "neither b nor c started while a stops")
          yield* kind.advance("10 seconds")
          yield* Fiber.join(c)
          yield* Fiber.join(b)
          yield* Deferred.await(cCharging)
          const d = yield* Effect.forkChild(execute(toolset, "d", "book", { to: "ITM" }), { startImmediately: true })
          yield* settle
          yield* kind.advance("10 seconds")
          yield* Fiber.join(d)
          assert.strictEqual(maxOverlap(log), 1, log.join(", "))
          assert.deepStrictEqual(log, ["start a", "stop a", "start c", "stop c", "start d"])
        }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }
  })

  describe("3 replace and drain answer a caller still waiting for a first update at once", () => {
    it.effect("replaced before its first update, inside an uninterruptible region: cancelled output at once", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        const quiet = FunctionTool.make("book", {
          description: "Charges the card before it says anything",
          onDuplicateCall: "replace"
        }, () =>
          Effect.gen(function*() {
            const { callId } = yield* AsyncRunContext.functionCall
            log.push(`start ${callId}`)
            yield* Effect.uninterruptible(Effect.sleep("10 seconds"))
            yield* AsyncRunContext.update(`charged ${callId}`)
            return yield* Effect.never
          }))
        const toolset = yield* kind.make({ id: "t", tools: [quiet] })
        const a = yield* Effect.forkChild(execute(toolset, "a", "book"), { startImmediately: true })
        yield* settle // a is inside its region (a durable call's tool starts in its own time)
        const b = yield* Effect.forkChild(execute(toolset, "b", "book"), { startImmediately: true })
        const aOut = yield* promptly(Fiber.join(a), "a's execute, replaced by b")
        assert.include(aOut.output, "cancelled")
        assert.isTrue(yield* stillWaiting(b))
        yield* kind.advance("10 seconds") // a leaves its region and stops; b starts charging
        assert.isTrue(yield* stillWaiting(b))
        yield* kind.advance("10 seconds")
        assert.include((yield* Fiber.join(b)).output, "charged b")
        assert.deepStrictEqual(log, ["start a", "start b"])
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))

    it.effect("drained before its first update, inside an uninterruptible region: cancelled output at once", () =>
      Effect.gen(function*() {
        const quiet = FunctionTool.make("report", { description: "Works quietly first" }, () =>
          Effect.andThen(Effect.uninterruptible(Effect.sleep("10 seconds")), AsyncRunContext.update("half way")))
        const toolset = yield* kind.make({ id: "t", tools: [quiet] })
        const a = yield* Effect.forkChild(execute(toolset, "a", "report"), { startImmediately: true })
        yield* Effect.forkChild(toolset.drain, { startImmediately: true })
        const out = yield* promptly(Fiber.join(a), "a's execute, drained")
        assert.include(out.output, "cancelled")
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))
  })

  describe("4 a port answer shaped like an interruption is a fault, never a cancellation", () => {
    const report = FunctionTool.make("report", { description: "Builds a report", onDuplicateCall: "allow" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("collecting")
        yield* Effect.sleep("1 second")
        return "report ready"
      }))

    it.effect("awaitInactive ending with an interrupt cause: the coordinator goes on; later results get replies", () => {
      const faulty = faultySession({ awaitInactive: (attempt) => attempt === 1 ? "interrupt" : "ok" })
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [report] })
        yield* execute(toolset, "c1", "report")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle after the interrupt-shaped answer" })
        yield* execute(toolset, "c2", "report")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        const named = (yield* session.replies).flatMap((r) => namedCallIds(r.instructions))
        assert.include(named, "c2_final")
      }).pipe(kind.provide(faulty.layer))
    })

    it.effect("generateReply ending with an interrupt cause is retried; the reply is made once", () => {
      const faulty = faultySession({ generateReply: (_, attempt) => attempt === 1 ? "interrupt" : "ok" })
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [report] })
        yield* execute(toolset, "c1", "report")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        assert.deepStrictEqual(faulty.attempts.generateReply.map((a) => a.fault), ["interrupt", "ok"])
        assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["c1_final"]])
      }).pipe(kind.provide(faulty.layer))
    })

    it.effect("generateReply always ending with an interrupt cause is reported; the toolset keeps serving", () => {
      let broken = true
      const faulty = faultySession({ generateReply: () => broken ? "interrupt" : "ok" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [report] })
        yield* execute(toolset, "c1", "report")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        assert.strictEqual(logs.find(["Error"], "c1_final").length, 1, "the lost reply is reported")
        broken = false
        yield* execute(toolset, "c2", "report")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["c2_final"]])
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("insert ending with an interrupt cause does not cancel the tool: its result is delivered, the fault logged", () => {
      const faulty = faultySession({ insert: (_, attempt) => attempt === 1 ? "interrupt" : "ok" })
      const logs = captureLogs()
      const chatty = FunctionTool.make("chatty", { description: "Reports twice" }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("started")
          yield* AsyncRunContext.update("half way") // its insertion ends with an interrupt cause
          yield* Effect.sleep("1 second")
          return "done"
        }))
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [chatty] })
        yield* execute(toolset, "c1", "chatty")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        assert.deepStrictEqual([...(yield* chatCallIds(session))].sort(), ["c1_final", "c1_final", "c1_update_1", "c1_update_1"])
        assert.isAtLeast(logs.find(["Warn"], "c1_update_1").length, 1, "the failed insertion is logged")
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })
  })

  describe("5 two updates racing for the first output", () => {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`exactly one is the output, the other is _update_1, none is lost (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const racing = FunctionTool.make("race", { description: "Two helpers report at once" }, () =>
            Effect.andThen(
              Effect.all([AsyncRunContext.update("left"), AsyncRunContext.update("right")], { concurrency: "unbounded" }),
              Effect.never
            ))
          const toolset = yield* kind.make({ id: "t", tools: [racing] })
          const first = yield* execute(toolset, "c1", "race")
          yield* settle
          const outputs = (yield* session.chat).items.flatMap((i) => i._tag === "FunctionCallOutput" ? [i] : [])
          assert.deepStrictEqual(outputs.map((o) => o.callId), ["c1_update_1"])
          const said = [first.output, outputs[0]!.output].map((text) => text.includes("left") ? "left" : "right")
          assert.deepStrictEqual([...said].sort(), ["left", "right"])
        }).pipe(kind.provide(TestSession.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }
  })

  describe("6 once the handler returned, the timeout no longer applies", () => {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`a result whose delivery is still under way when the timeout fires is told once, as the result (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const events: Array<ToolsetEvent.ToolsetEvent> = []
          const book = FunctionTool.make("book", { description: "Books in 4 s", timeout: "5 seconds" }, () =>
            Effect.gen(function*() {
              yield* AsyncRunContext.update("booking")
              yield* Effect.sleep("4 seconds")
              return "booked FL-1"
            }))
          const toolset = yield* kind.make({ id: "t", tools: [book] })
          yield* toolset.events.pipe(Stream.runForEach((e) => Effect.sync(() => events.push(e))), Effect.forkChild({ startImmediately: true }))
          yield* execute(toolset, "c1", "book")
          yield* kind.advance("4 seconds") // the booking is done; its insertion takes 2 s
          yield* kind.advance("1 second") // the timeout's instant
          yield* kind.advance("5 seconds")
          yield* toolset.awaitIdle
          const finals = (yield* session.chat).items.flatMap((i) => i._tag === "FunctionCallOutput" ? [i.output] : [])
          assert.deepStrictEqual(finals, ["booked FL-1"])
          const ended = events.flatMap((e) => e._tag === "CallEnded" ? [e.outcome] : [])
          assert.deepStrictEqual(ended, ["done"])
          assert.strictEqual((yield* session.replies).length, 1)
        }).pipe(
          kind.provide(TestSession.layerWith({ beforeInsert: () => Effect.sleep("2 seconds") })),
          Effect.provideService(References.MaxOpsBeforeYield, maxOps)
        ))
    }

    it.effect("a child fiber of the tool that updates while the result is delivered adds nothing after _final", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const leaky = FunctionTool.make("leaky", { description: "Leaves a helper running" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("started")
            const ctx = yield* AsyncRunContext.AsyncRunContext
            yield* Effect.forkDetach(Effect.andThen(Effect.sleep("2 seconds"), ctx.update("too late")))
            yield* Effect.sleep("1 second")
            return "done"
          }))
        const toolset = yield* kind.make({ id: "t", tools: [leaky] })
        yield* execute(toolset, "c1", "leaky")
        yield* kind.advance("1 second") // the result is ready; its insertion takes 2 s
        yield* kind.advance("1 second") // the helper speaks meanwhile
        yield* kind.advance("5 seconds")
        yield* toolset.awaitIdle
        assert.deepStrictEqual(yield* chatCallIds(session), ["c1_final", "c1_final"])
      }).pipe(kind.provide(TestSession.layerWith({ beforeInsert: () => Effect.sleep("2 seconds") }))))
  })

  describe("7 the reply is never requested while the session is busy", () => {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`a user who starts speaking right after each idle check is never talked over (MaxOpsBeforeYield ${maxOps})`, () => {
        let controls: TestSession.TestSession["Service"] | undefined
        let checks = 0
        // The user starts speaking at the first chance the scheduler gives after the session was
        // found idle (the first few times): a reply fiber that yields before it asks talks over them.
        const layer = Layer.effectContext(Effect.map(TestSession.make(), ({ controls: c, session }) => {
          controls = c
          const eager = AgentSession.AgentSession.of({
            ...session,
            awaitInactive: Effect.tap(session.awaitInactive, () =>
              checks++ < 6 ? Effect.asVoid(Effect.forkDetach(c.setBusy)) : Effect.void)
          })
          return Context.make(AgentSession.AgentSession, eager).pipe(Context.add(TestSession.TestSession, c))
        }))
        const job = FunctionTool.make("job", { description: "Works a second" }, () =>
          Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("1 second"), "done")))
        return Effect.gen(function*() {
          const toolset = yield* kind.make({ id: "t", tools: [job] })
          yield* execute(toolset, "c1", "job")
          yield* kind.advance("1 second")
          for (let i = 0; i < 10 && (yield* controls!.replies).length === 0; i++) {
            yield* settle
            yield* controls!.setIdle // the user stops speaking
            yield* settle
          }
          const replies = yield* controls!.replies
          assert.strictEqual(replies.length, 1)
          assert.deepStrictEqual(replies.map((r) => r.whileBusy), [false])
        }).pipe(kind.provide(layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  })

  describe("8 a retried insertion is stamped when it is finally inserted", () => {
    it.effect("what the agent said while the insertion failed does not count as covering the result", () => {
      const faulty = faultySession({ insert: (items, attempt) => attempt === 1 && items.length > 0 ? "fail" : "ok" })
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
        yield* session.setBusy
        yield* kind.advance("1 second") // the result's insertion fails
        yield* kind.advance("1 second")
        yield* session.say("assistant", "Anything else I can do?") // said before the result is in the chat
        yield* session.setIdle
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        const lines = (yield* session.chat).items.map((i) => i._tag === "ChatMessage" ? "assistant" : i.callId)
        assert.deepStrictEqual(lines, ["assistant", "c1_final", "c1_final"], "the retried result stands after what was said")
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1, "the result is told")
        assert.notInclude(replies[0]!.instructions, "may have told")
      }).pipe(kind.provide(faulty.layer))
    })
  })

  describe("9 call ids stay unique in the chat", () => {
    const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* AsyncRunContext.update("half way")
        yield* Effect.sleep("1 second")
        return "done"
      }))

    it.effect("a model that reuses an ended call's id never makes the toolset write a pair twice", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [job] })
        yield* execute(toolset, "c1", "job")
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle
        yield* execute(toolset, "c1", "job") // the same id again
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
        assert.deepStrictEqual(
          [...new Set(yield* chatCallIds(session))],
          ["c1_update_1", "c1_final", "c1_run2_update_1", "c1_run2_final"]
        )
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("two toolsets of one session never write the same pair for one reused call id", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const other = FunctionTool.make("other", { description: "Another job" }, () =>
          Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("1 second"), "done")))
        const a = yield* kind.make({ id: "a", tools: [job] })
        const b = yield* kind.make({ id: "b", tools: [other] })
        yield* execute(a, "c1", "job")
        yield* kind.advance("1 second")
        yield* a.awaitIdle
        yield* execute(b, "c1", "other")
        yield* kind.advance("1 second")
        yield* b.awaitIdle
        assert.deepStrictEqual(chatProblems(yield* session.chat), [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("an empty call id is bad input: a clear error output, and nothing runs", () =>
      Effect.gen(function*() {
        const toolset = yield* kind.make({ id: "t", tools: [job] })
        const out = yield* execute(toolset, "", "job")
        assert.isTrue(out.isError)
        assert.include(out.output, "no call id")
        assert.notInclude(out.output, "already running")
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("the agent gives a call id the model repeats a fresh one, so its chat never holds one twice", () =>
      Effect.gen(function*() {
        const agent = yield* AiAgent.AiAgent
        const toolset = yield* kind.make({ id: "t", tools: [job] })
        yield* agent.addToolset(toolset)
        yield* agent.send("Start a job")
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle
        yield* agent.send("Start another")
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle
        const chat = yield* agent.chat
        assert.deepStrictEqual(chatProblems(chat), [])
        const ids = chat.items.flatMap((i) => i._tag === "FunctionCall" ? [i.callId] : [])
        assert.includeMembers(ids, ["same", "same_final", "same_2", "same_2_final"])
      }).pipe(kind.provide(agentLayer((request) =>
        request.toolChoice === "none" || request.resultsSinceUser.length > 0
          ? "Done."
          : { toolCalls: [{ name: "job", id: "same" }] }
      ))))
  })

  describe("10 one reply coordinator per session", () => {
    it.effect("results pending in two toolsets of one session get one reply", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const mk = (name: string) =>
          FunctionTool.make(name, { description: name }, () =>
            Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("1 second"), `${name} done`)))
        const a = yield* kind.make({ id: "a", tools: [mk("flights")] })
        const b = yield* kind.make({ id: "b", tools: [mk("hotels")] })
        yield* execute(a, "f1", "flights")
        yield* execute(b, "h1", "hotels")
        yield* session.setBusy
        yield* kind.advance("1 second")
        yield* session.setIdle
        yield* a.awaitIdle
        yield* b.awaitIdle
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        assert.deepStrictEqual([...namedCallIds(replies[0]!.instructions)].sort(), ["f1_final", "h1_final"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a toolset that closes leaves the other's replies going", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const job = FunctionTool.make("job", { description: "job" }, () =>
          Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("1 second"), "done")))
        const a = yield* kind.make({ id: "a", tools: [job] })
        const b = yield* kind.make({ id: "b", tools: [job] })
        yield* a.close
        yield* execute(b, "c1", "job")
        yield* kind.advance("1 second")
        yield* b.awaitIdle
        assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["c1_final"]])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("11 the events tell what happened, and only that", () => {
    const record = (toolset: AsyncToolset.AsyncToolset) =>
      Effect.gen(function*() {
        const events: Array<ToolsetEvent.ToolsetEvent> = []
        yield* toolset.events.pipe(Stream.runForEach((e) => Effect.sync(() => events.push(e))), Effect.forkChild({ startImmediately: true }))
        yield* Effect.yieldNow
        return events
      })

    it.effect("ReplyScheduled comes when the item is in the chat, not when its insertion failed", () => {
      const faulty = faultySession({ insert: (_, attempt) => attempt === 1 ? "fail" : "ok" })
      const job = FunctionTool.make("job", { description: "job" }, () =>
        Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("1 second"), "done")))
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [job] })
        const events = yield* record(toolset)
        yield* session.setBusy
        yield* execute(toolset, "c1", "job")
        yield* kind.advance("1 second")
        assert.deepStrictEqual(events.filter((e) => e._tag === "ReplyScheduled"), [], "not in the chat yet")
        yield* session.setIdle
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        assert.deepStrictEqual(events.flatMap((e) => e._tag === "ReplyScheduled" ? [e.callId] : []), ["c1_final"])
      }).pipe(kind.provide(faulty.layer))
    })

    it.effect("an item given up is not tried again at the next reply", () => {
      let failing = true
      const faulty = faultySession({ insert: (items) => failing && items.some((i) => i._tag === "FunctionCall" && i.callId === "c1_final") ? "fail" : "ok" })
      const logs = captureLogs()
      const job = FunctionTool.make("job", { description: "job", onDuplicateCall: "allow" }, () =>
        Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("1 second"), "done")))
      return Effect.gen(function*() {
        const toolset = yield* kind.make({ id: "t", tools: [job] })
        yield* execute(toolset, "c1", "job")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        const attempts = faulty.attempts.insert.filter((a) => a.callIds.includes("c1_final")).length
        assert.strictEqual(logs.find(["Error"], "c1_final", injected("insert", "fail")).length, 1)
        failing = false
        yield* execute(toolset, "c2", "job")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        assert.strictEqual(faulty.attempts.insert.filter((a) => a.callIds.includes("c1_final")).length, attempts)
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("no CallUpdated for an update dropped as the toolset closes", () =>
      Effect.gen(function*() {
        const gate = yield* Deferred.make<void>()
        const stubborn = FunctionTool.make("stubborn", { description: "Reports from an uninterruptible region" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("started")
            yield* Effect.uninterruptible(Effect.andThen(Deferred.await(gate), AsyncRunContext.update("after close")))
          }))
        const toolset = yield* kind.make({ id: "t", tools: [stubborn] })
        const events = yield* record(toolset)
        yield* execute(toolset, "c1", "stubborn")
        const closing = yield* Effect.forkChild(toolset.close, { startImmediately: true })
        yield* settle
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(closing)
        assert.deepStrictEqual(events.flatMap((e) => e._tag === "CallUpdated" ? [e.step] : []), [0])
      }).pipe(kind.provide(TestSession.layer)))
  })
})

forEachKind("many calls at once", (kind) => {
  const blocked = FunctionTool.make("wait", { description: "Blocks after it starts", onDuplicateCall: "allow" }, () =>
    Effect.andThen(AsyncRunContext.update("started"), Effect.never))

  // (Durable calls are a store's rows and executions: a few hundred make the point.)
  const n = kind.durable ? 300 : 10_000
  for (const how of ["close", "drain"] as const) {
    it.effect(`${how} with ${n} calls running stops them all and leaves no fiber`, () => {
      const fibers = makeFiberCounter()
      return fibers.track(Effect.gen(function*() {
        const scope = yield* Scope.make()
        const toolset = yield* kind.make({ id: "t", tools: [blocked] }).pipe(Scope.provide(scope))
        const calls = yield* Effect.forEach(Array.from({ length: n }, (_, i) => `c${i}`), (id) => modelCall(id, "wait"))
        const outputs = yield* Effect.forEach(calls, toolset.execute, { concurrency: "unbounded" })
        assert.isTrue(outputs.every(AsyncToolset.isPending))
        assert.strictEqual((yield* toolset.runningTasks).length, n)
        if (how === "drain") yield* toolset.drain
        yield* Scope.close(scope, Exit.void)
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        // Closed, a durable toolset's calls go on in the workflow engine (F2): their executions'
        // fibers live on, the toolset's own do not (drained, nothing is left).
        if (!kind.durable || how === "drain") {
          yield* settle
          assert.strictEqual(fibers.active, 0)
        }
      })).pipe(kind.provide(TestSession.layer))
    }, 60_000)
  }
})
