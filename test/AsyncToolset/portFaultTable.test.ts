/**
 * Fault injection (issue 5, item 2): the session's reply request fails, dies or hangs; inserting
 * into the chat fails or dies; reading the chat fails; a tool throws, dies, never ends, or ignores
 * interruption inside an uninterruptible region. For each: the toolset keeps serving other calls,
 * the fault is logged with its cause, and queued items are retried or reported, never dropped
 * silently. docs/reliability.md lists what the toolset does for each. Every test runs on both
 * toolsets; closing a durable toolset leaves its calls running in the workflow engine (F2), so
 * there close neither waits for them nor leaves no fiber behind.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Effect, Exit, Fiber, Layer, Schedule, Schema, Scope } from "effect"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import {
  captureLogs,
  chatCallIds,
  chatProblems,
  faultySession,
  injected,
  makeFiberCounter,
  modelCall,
  namedCallIds,
  reported,
  whileClockRuns
} from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"

// --- tools ----------------------------------------------------------------------------------------

/** Says "collecting <quarter>" (the model gets it at once), works a second, returns the report. */
const report = FunctionTool.make("run_report", {
  description: "Builds a report in the background",
  parameters: Schema.Struct({ quarter: Schema.String }),
  onDuplicateCall: "allow"
}, ({ quarter }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`collecting ${quarter}`)
    yield* Effect.sleep("1 second")
    return `report ${quarter} ready`
  }))

/** A plain tool: answers at once. */
const ping = FunctionTool.make("ping", { description: "Answers pong" }, () => Effect.succeed("pong"))

const runReport = (toolset: AsyncToolset.AsyncToolset, callId: string, quarter = "Q1") =>
  Effect.flatMap(modelCall(callId, "run_report", { quarter }), toolset.execute)

/** The toolset still answers a plain call at once. */
const stillServes = (toolset: AsyncToolset.AsyncToolset, callId: string) =>
  Effect.gen(function*() {
    const out = yield* toolset.execute(yield* modelCall(callId, "ping"))
    assert.strictEqual(out.output, "pong", "the toolset still serves other calls")
    assert.isFalse(out.isError)
  })

/** A call's results reached the chat once and a reply named them: the toolset serves a background call end to end. */
const servesBackgroundCall = (
  toolset: AsyncToolset.AsyncToolset,
  session: TestSession.TestSession["Service"],
  callId: string
) =>
  Effect.gen(function*() {
    const first = yield* runReport(toolset, callId, "Q4")
    assert.isTrue(AsyncToolset.isPending(first))
    yield* whileClockRuns(untilReplyNames(session, `${callId}_final`), { what: `a reply naming ${callId}_final` })
    assert.include(chatCallIds(yield* session.chat), `${callId}_final`)
  })

/** Waits (on the clock) until a reply request names `callId`. */
const untilReplyNames = (session: TestSession.TestSession["Service"], callId: string): Effect.Effect<void> =>
  Effect.flatMap(session.replies, (replies) =>
    replies.some((r) => namedCallIds(r.instructions).includes(callId))
      ? Effect.void
      : Effect.andThen(Effect.sleep("100 millis"), untilReplyNames(session, callId)))

const retryTwice = Schedule.recurs(2)

forEachKind("a faulty session port: each fault is retried or reported, the toolset keeps serving", (kind) => {
  describe("the reply request", () => {
    it.effect("a reply request that keeps failing is retried, then logged with its cause and the pending call ids; the toolset keeps serving", () => {
      let broken = true
      const faulty = faultySession({ generateReply: () => broken ? "fail" : "ok" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report, ping], sessionRetry: retryTwice })

        yield* runReport(toolset, "c1")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })

        assert.deepStrictEqual(faulty.attempts.generateReply.map((a) => a.fault), ["fail", "fail", "fail"], "1 try + 2 retries")
        assert.deepStrictEqual(namedCallIds(faulty.attempts.generateReply[0]!.instructions), ["c1_final"])
        assert.include(chatCallIds(yield* session.chat), "c1_final", "the result is in the chat for the next reply")
        const logged = logs.find(["Error"], "c1_final", injected("generateReply", "fail"))
        assert.strictEqual(logged.length, 1, "logged once, with the call id and the cause")

        broken = false
        yield* stillServes(toolset, "p1")
        yield* servesBackgroundCall(toolset, session, "c2")
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("a reply request that fails twice is retried and the reply is made once", () => {
      const faulty = faultySession({ generateReply: (_, attempt) => attempt <= 2 ? "fail" : "ok" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report], sessionRetry: retryTwice })

        yield* runReport(toolset, "c1")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })

        assert.deepStrictEqual(faulty.attempts.generateReply.map((a) => a.fault), ["fail", "fail", "ok"])
        assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["c1_final"]])
        assert.deepStrictEqual(logs.find(["Error"]), [], "a fault that a retry cured is no error")
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("with the default retry, a reply request failing for a moment is retried with backoff and made once", () => {
      const faulty = faultySession({ generateReply: (_, attempt) => attempt <= 3 ? "fail" : "ok" })
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report] })

        yield* runReport(toolset, "c1")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })

        assert.strictEqual(faulty.attempts.generateReply.length, 4)
        assert.strictEqual((yield* session.replies).length, 1)
      }).pipe(kind.provide(faulty.layer))
    })

    it.effect("a reply request that dies is retried, then logged with its defect and the pending call ids; later results still get replies", () => {
      let broken = true
      const faulty = faultySession({ generateReply: () => broken ? "die" : "ok" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report, ping], sessionRetry: retryTwice })

        yield* runReport(toolset, "c1")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })

        assert.strictEqual(faulty.attempts.generateReply.length, 3)
        assert.strictEqual(logs.find(["Error"], "c1_final", injected("generateReply", "die")).length, 1)

        broken = false
        yield* stillServes(toolset, "p1")
        yield* servesBackgroundCall(toolset, session, "c2")
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("a reply request that never returns is given up after a while, then retried or reported; later results still get replies", () => {
      const faulty = faultySession({ generateReply: (_, attempt) => attempt === 1 ? "hang" : "ok" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report, ping] })

        yield* runReport(toolset, "c1")
        yield* kind.advance("1 second")
        yield* stillServes(toolset, "p1")
        // an hour of clock time is far beyond any sensible bound on one reply request
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle with a hanging reply request", step: "1 minute", steps: 60 })

        const named = (yield* session.replies).flatMap((r) => namedCallIds(r.instructions))
        assert.isTrue(named.includes("c1_final") || logs.find(reported, "c1_final").length > 0, "c1_final is retried or reported")
        yield* servesBackgroundCall(toolset, session, "c2")
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("a reply request that always hangs is reported with the pending call ids; the toolset keeps serving", () => {
      const faulty = faultySession({ generateReply: () => "hang" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report, ping], sessionRetry: retryTwice })

        yield* runReport(toolset, "c1")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle with a hanging reply request", step: "1 minute", steps: 60 })

        assert.isAtLeast(faulty.attempts.generateReply.length, 1)
        assert.isAtLeast(logs.find(["Error"], "c1_final").length, 1, "the hang is reported with the pending call id")
        assert.deepStrictEqual(yield* session.replies, [])
        yield* stillServes(toolset, "p1")
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })
  })

  describe("inserting into the chat", () => {
    it.effect("an insertion that fails once is logged as a warning with its cause, retried by the reply fiber, inserted once and replied to once", () => {
      const faulty = faultySession({ insert: (_, attempt) => attempt === 1 ? "fail" : "ok" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report], sessionRetry: retryTwice })

        yield* runReport(toolset, "c1")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })

        assert.deepStrictEqual(faulty.attempts.insert.map((a) => a.fault), ["fail", "ok"])
        const warned = logs.find(["Warn"], injected("insert", "fail"))
        assert.strictEqual(warned.length, 1)
        assert.strictEqual(warned[0]!.annotations["callId"], "c1_final")
        const chat = yield* session.chat
        assert.deepStrictEqual(chatCallIds(chat), ["c1_final"])
        assert.deepStrictEqual(chatProblems(chat), [])
        assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["c1_final"]])
        assert.deepStrictEqual(logs.find(["Error"]), [])
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("an insertion that always fails is reported as an error naming the call id; other calls' results are delivered", () => {
      const faulty = faultySession({ insert: (items) => items.some((i) => "callId" in i && i.callId.startsWith("c1_")) ? "fail" : "ok" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report, ping], sessionRetry: retryTwice })

        yield* runReport(toolset, "c1")
        yield* runReport(toolset, "c2")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })

        assert.strictEqual(faulty.attempts.insert.filter((a) => a.callIds.includes("c1_final")).length, 4, "1 try, then the reply fiber's 1 try + 2 retries")
        const chat = yield* session.chat
        assert.deepStrictEqual(chatCallIds(chat), ["c2_final"])
        assert.deepStrictEqual(chatProblems(chat), [])
        const named = (yield* session.replies).flatMap((r) => namedCallIds(r.instructions))
        assert.deepStrictEqual(named, ["c2_final"], "no reply names an item that is not in the chat")
        assert.strictEqual(logs.find(["Error"], "c1_final", injected("insert", "fail")).length, 1)
        yield* stillServes(toolset, "p1")
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("an insertion that dies is logged with its defect and the call id; the toolset keeps serving", () => {
      const faulty = faultySession({ insert: (items) => items.some((i) => "callId" in i && i.callId.startsWith("c1_")) ? "die" : "ok" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report, ping], sessionRetry: retryTwice })

        yield* runReport(toolset, "c1")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })

        assert.deepStrictEqual(chatCallIds(yield* session.chat), [])
        assert.isAtLeast(logs.find(["Error"], "c1_final", injected("insert", "die")).length, 1)
        yield* stillServes(toolset, "p1")
        yield* servesBackgroundCall(toolset, session, "c2")
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("an insertion that never returns does not stop cancel, other calls, or close, and leaves no fiber behind", () => {
      const faulty = faultySession({ insert: (items) => items.some((i) => "callId" in i && i.callId.startsWith("c1_")) ? "hang" : "ok" })
      const fibers = makeFiberCounter()
      return fibers.track(Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const scope = yield* Scope.make()
        const chatty = FunctionTool.make("chatty", { description: "Updates every second" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("started")
            for (let i = 1;; i++) {
              yield* Effect.sleep("1 second")
              yield* AsyncRunContext.update(`step ${i}`)
            }
          }))
        const toolset = yield* kind.make({ id: "reports", tools: [chatty, report, ping] }).pipe(Scope.provide(scope))

        yield* Effect.flatMap(modelCall("c1", "chatty"), toolset.execute)
        yield* kind.advance("1 second") // c1_update_1's insertion hangs: the tool waits in update
        yield* stillServes(toolset, "p1")
        yield* servesBackgroundCall(toolset, session, "c2")

        const cancelled = yield* Effect.forkChild(toolset.cancel("c1"), { startImmediately: true })
        for (let i = 0; i < 20; i++) yield* Effect.yieldNow
        assert.strictEqual(cancelled.pollUnsafe()?._tag, "Success", "cancel returns without the clock moving")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle after cancelling the stuck call" })
        assert.deepStrictEqual(yield* toolset.runningTasks, [])

        yield* Effect.flatMap(modelCall("c3", "chatty"), toolset.execute) // c3 is not stuck
        yield* whileClockRuns(Scope.close(scope, Exit.void), { what: "close" })
        // (durable: closing leaves the calls running in the workflow engine, c3's fibers with them)
        if (!kind.durable) assert.strictEqual(fibers.active, 0, "no fiber outlives close")
      })).pipe(kind.provide(faulty.layer))
    })
  })

  describe("reading the chat and waiting for idle", () => {
    it.effect("when reading the chat fails, the reply is still requested and the fault is logged with its cause", () => {
      const faulty = faultySession({ chatContext: () => "fail" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report], sessionRetry: retryTwice })

        yield* runReport(toolset, "c1")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })

        assert.isAtLeast(logs.find(reported, injected("chatContext", "fail")).length, 1)
        assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["c1_final"]])
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("when waiting for idle dies, the defect is logged with the pending call ids and later results still get replies", () => {
      const faulty = faultySession({ awaitInactive: (attempt) => attempt === 1 ? "die" : "ok" })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "reports", tools: [report, ping], sessionRetry: retryTwice })

        yield* runReport(toolset, "c1")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        yield* stillServes(toolset, "p1")
        yield* servesBackgroundCall(toolset, session, "c2")

        assert.strictEqual(logs.find(["Error"], injected("awaitInactive", "die")).length, 1)
        assert.strictEqual(logs.find(["Error"], injected("awaitInactive", "die"), "c1_final").length, 1, "the log names what got no reply")
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })
  })
})

/**
 * The test session, but its `insert` or `generateReply` throws (instead of returning an effect) on
 * the calls `throws` picks: an adapter written without Effect may do that.
 */
const throwingSession = (throws: {
  readonly insert?: (items: ReadonlyArray<{ readonly _tag: string }>, call: number) => boolean
  readonly generateReply?: (call: number) => boolean
}) => {
  const calls = { insert: 0, generateReply: 0 }
  const layer = Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) =>
    Context.make(AgentSession.AgentSession, AgentSession.AgentSession.of({
      ...session,
      insert: (items) => {
        if (throws.insert?.(items, ++calls.insert) === true) throw new Error("the port threw in insert")
        return session.insert(items)
      },
      generateReply: (request) => {
        if (throws.generateReply?.(++calls.generateReply) === true) throw new Error("the port threw in generateReply")
        return session.generateReply(request)
      }
    })).pipe(Context.add(TestSession.TestSession, controls))))
  return { layer, calls }
}

const hasCallId = (items: ReadonlyArray<{ readonly _tag: string }>, prefix: string) =>
  items.some((i) => "callId" in i && typeof i.callId === "string" && i.callId.startsWith(prefix))

forEachKind("E9 a session port that throws instead of returning an effect: a fault like any other", (kind) => {
  it.effect("insert throws once: the insertion is retried, the result reaches the chat once, one reply", () => {
    let thrown = 0
    const port = throwingSession({ insert: (items) => hasCallId(items, "c1_") && thrown++ === 0 })
    const logs = captureLogs()
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* kind.make({ id: "reports", tools: [report], sessionRetry: retryTwice })
      yield* runReport(toolset, "c1")
      yield* kind.advance("1 second")
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
      assert.strictEqual(thrown, 2, "thrown once, then inserted")
      const chat = yield* session.chat
      assert.deepStrictEqual(chatCallIds(chat), ["c1_final"])
      assert.deepStrictEqual(chatProblems(chat), [])
      assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["c1_final"]])
      assert.isAtLeast(logs.find(["Warn"], "the port threw in insert").length, 1, "the throw is logged")
    }).pipe(kind.provide(port.layer), Effect.provide(logs.layer))
  })

  it.effect("insert always throws for one call: it is reported, awaitIdle returns, other calls' results are delivered", () => {
    const port = throwingSession({ insert: (items) => hasCallId(items, "c1_") })
    const logs = captureLogs()
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* kind.make({ id: "reports", tools: [report, ping], sessionRetry: retryTwice })
      yield* runReport(toolset, "c1")
      yield* runReport(toolset, "c2")
      yield* kind.advance("1 second")
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
      const chat = yield* session.chat
      assert.deepStrictEqual(chatCallIds(chat), ["c2_final"])
      assert.deepStrictEqual((yield* session.replies).flatMap((r) => namedCallIds(r.instructions)), ["c2_final"])
      assert.isAtLeast(logs.find(["Error"], "c1_final", "the port threw in insert").length, 1, "the lost result is reported")
      yield* stillServes(toolset, "p1")
    }).pipe(kind.provide(port.layer), Effect.provide(logs.layer))
  })

  it.effect("generateReply throws once: the request is retried; one reply is made", () => {
    const port = throwingSession({ generateReply: (call) => call === 1 })
    const logs = captureLogs()
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* kind.make({ id: "reports", tools: [report], sessionRetry: retryTwice })
      yield* runReport(toolset, "c1")
      yield* kind.advance("1 second")
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
      assert.strictEqual(port.calls.generateReply, 2)
      assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["c1_final"]])
      assert.isAtLeast(logs.find(["Debug", "Warn", "Error"], "the port threw in generateReply").length, 1, "the throw is logged (a failed request is routine: at Debug)")
    }).pipe(kind.provide(port.layer), Effect.provide(logs.layer))
  })
})

forEachKind("a faulty tool: a clear output for the model, the fault logged, the toolset keeps serving", (kind) => {
  it.effect("a handler that throws instead of returning an Effect gets the generic error output, and the throw is logged with its cause", () => {
    const logs = captureLogs()
    const thrower = FunctionTool.make("thrower", { description: "Throws" }, (): Effect.Effect<string> => {
      throw new Error("thrown outside any Effect")
    })
    return Effect.gen(function*() {
      const toolset = yield* kind.make({ id: "tools", tools: [thrower, ping] })

      const out = yield* toolset.execute(yield* modelCall("c1", "thrower"))
      yield* toolset.awaitIdle

      assert.isTrue(out.isError)
      assert.strictEqual(out.output, FunctionTool.internalError("thrower").output)
      assert.notInclude(out.output, "thrown outside")
      assert.strictEqual(logs.find(["Error"], "thrown outside any Effect").length, 1)
      yield* stillServes(toolset, "p1")
    }).pipe(kind.provide(TestSession.layer), Effect.provide(logs.layer))
  })

  it.effect("a tool that dies before its first update gets the generic error output; the defect is logged with the call id", () => {
    const logs = captureLogs()
    const crash = FunctionTool.make("crash", { description: "Crashes" }, () =>
      Effect.andThen(Effect.sleep("1 second"), Effect.die(new Error("disk on fire"))))
    return Effect.gen(function*() {
      const toolset = yield* kind.make({ id: "tools", tools: [crash, ping] })

      const waiting = yield* Effect.forkChild(Effect.flatMap(modelCall("c1", "crash"), toolset.execute), { startImmediately: true })
      yield* stillServes(toolset, "p1") // served while the crashing call runs
      yield* kind.advance("1 second")
      const out = yield* Fiber.join(waiting)

      assert.isTrue(out.isError)
      assert.strictEqual(out.output, FunctionTool.internalError("crash").output)
      const logged = logs.find(["Error"], "disk on fire")
      assert.strictEqual(logged.length, 1)
      assert.strictEqual(logged[0]!.annotations["callId"], "c1")
      assert.isTrue(Cause.hasDies(logged[0]!.cause))
      yield* toolset.awaitIdle
      assert.deepStrictEqual(yield* toolset.runningTasks, [])
    }).pipe(kind.provide(TestSession.layer), Effect.provide(logs.layer))
  })

  it.effect("a tool that dies after an update delivers <callId>_final as the generic error; the defect is logged; other calls go on", () => {
    const logs = captureLogs()
    const crash = FunctionTool.make("crash", { description: "Crashes", onDuplicateCall: "allow" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("working")
        yield* Effect.sleep("1 second")
        return yield* Effect.sync((): string => {
          throw new Error("null pointer in the report engine")
        })
      }))
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* kind.make({ id: "tools", tools: [crash, report, ping] })

      yield* Effect.flatMap(modelCall("c1", "crash"), toolset.execute)
      yield* runReport(toolset, "r1")
      yield* kind.advance("1 second")
      yield* toolset.awaitIdle

      const chat = yield* session.chat
      assert.sameMembers([...chatCallIds(chat)], ["c1_final", "r1_final"])
      assert.deepStrictEqual(chatProblems(chat), [])
      const final = chat.items.find((i) => i._tag === "FunctionCallOutput" && i.callId === "c1_final")
      assert.strictEqual(final?._tag === "FunctionCallOutput" ? final.output : undefined, FunctionTool.internalError("crash").output)
      assert.strictEqual(logs.find(["Error"], "null pointer in the report engine", "c1").length, 1)
    }).pipe(kind.provide(TestSession.layer), Effect.provide(logs.layer))
  })

  it.effect("an update with no JSON form is a defect of the tool: logged, and the model gets the generic error output", () => {
    const logs = captureLogs()
    const odd = FunctionTool.make("odd", { description: "Sends a bigint" }, () =>
      Effect.andThen(AsyncRunContext.update({ bytes: 10n }), Effect.succeed("never")))
    return Effect.gen(function*() {
      const toolset = yield* kind.make({ id: "tools", tools: [odd, ping] })
      const out = yield* toolset.execute(yield* modelCall("c1", "odd"))
      yield* toolset.awaitIdle

      assert.isTrue(out.isError)
      assert.strictEqual(out.output, FunctionTool.internalError("odd").output)
      assert.strictEqual(logs.find(["Error"], "BigInt").length, 1)
      yield* stillServes(toolset, "p1")
    }).pipe(kind.provide(TestSession.layer), Effect.provide(logs.layer))
  })

  it.effect("a tool that never ends keeps serving others; a timeout answers the model; close interrupts the rest and leaves no fiber", () => {
    const fibers = makeFiberCounter()
    const stuckForever = FunctionTool.make("stuck", { description: "Never ends", onDuplicateCall: "allow" }, () =>
      Effect.andThen(AsyncRunContext.update("started"), Effect.never))
    const stuckQuiet = FunctionTool.make("stuck_quiet", { description: "Never ends, never updates", timeout: "30 seconds" }, () =>
      Effect.never)
    return fibers.track(Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const scope = yield* Scope.make()
      const toolset = yield* kind.make({ id: "tools", tools: [stuckForever, stuckQuiet, report, ping] }).pipe(
        Scope.provide(scope)
      )

      for (const id of ["s1", "s2", "s3"]) {
        const out = yield* toolset.execute(yield* modelCall(id, "stuck"))
        assert.isTrue(AsyncToolset.isPending(out))
      }
      const quiet = yield* Effect.forkChild(Effect.flatMap(modelCall("q1", "stuck_quiet"), toolset.execute), { startImmediately: true })
      yield* stillServes(toolset, "p1")
      yield* servesBackgroundCall(toolset, session, "r1")

      yield* kind.advance("30 seconds")
      const timedOut = yield* Fiber.join(quiet)
      assert.isTrue(timedOut.isError)
      assert.include(timedOut.output, "30s")
      assert.sameMembers((yield* toolset.runningTasks).map((t) => t.callId), ["s1", "s2", "s3"])

      assert.isAbove(fibers.active, 0)
      yield* whileClockRuns(Scope.close(scope, Exit.void), { what: "close" })
      // (durable: closing leaves the calls running in the workflow engine, their fibers with them)
      if (!kind.durable) assert.strictEqual(fibers.active, 0, "no fiber outlives close")
      assert.deepStrictEqual(yield* toolset.runningTasks, [])
      const late = yield* toolset.execute(yield* modelCall("late", "ping"))
      assert.isTrue(late.isError)
      assert.include(late.output, "shut down")
    })).pipe(kind.provide(TestSession.layer))
  })

  it.effect("a tool inside an uninterruptible region: cancel answers at once, others are served, it shows as cancelling until it stops, then leaves", () => {
    const fibers = makeFiberCounter()
    const stubborn = FunctionTool.make("stubborn", { description: "Ignores interruption for a minute" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* Effect.uninterruptible(Effect.gen(function*() {
          yield* Effect.sleep("1 minute")
          yield* AsyncRunContext.update("still here")
        }))
        return "finished"
      }))
    return fibers.track(Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const scope = yield* Scope.make()
      const toolset = yield* kind.make({ id: "tools", tools: [stubborn, report, ping] }).pipe(Scope.provide(scope))
      yield* toolset.execute(yield* modelCall("u1", "stubborn"))
      for (let i = 0; i < 5; i++) yield* Effect.yieldNow // inside the region now

      const cancelled = yield* Effect.forkChild(toolset.cancel("u1"), { startImmediately: true })
      for (let i = 0; i < 20; i++) yield* Effect.yieldNow
      assert.deepStrictEqual(cancelled.pollUnsafe(), Exit.succeed("cancelled"), "cancel answers without the clock moving")
      assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => [t.callId, t.status, t.cancellable]), [["u1", "cancelling", false]])

      yield* stillServes(toolset, "p1")
      yield* servesBackgroundCall(toolset, session, "r1")

      yield* kind.advance("1 minute")
      yield* toolset.awaitIdle
      assert.deepStrictEqual(yield* toolset.runningTasks, [])
      assert.notInclude(chatCallIds(yield* session.chat).join(), "u1", "nothing of the cancelled call reaches the chat")

      yield* whileClockRuns(Scope.close(scope, Exit.void), { what: "close" })
      assert.strictEqual(fibers.active, 0, "no fiber outlives close")
    })).pipe(kind.provide(TestSession.layer))
  })

  it.effect("close waits for a tool inside an uninterruptible region to leave it, then nothing of it is left", () => {
    const fibers = makeFiberCounter()
    const stubborn = FunctionTool.make("stubborn", { description: "Ignores interruption for a minute" }, () =>
      Effect.andThen(AsyncRunContext.update("started"), Effect.uninterruptible(Effect.as(Effect.sleep("1 minute"), "done"))))
    return fibers.track(Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const scope = yield* Scope.make()
      const toolset = yield* kind.make({ id: "tools", tools: [stubborn] }).pipe(Scope.provide(scope))
      yield* toolset.execute(yield* modelCall("u1", "stubborn"))
      for (let i = 0; i < 5; i++) yield* Effect.yieldNow

      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true })
      yield* kind.advance("59 seconds")
      // (durable: closing leaves the call running in the workflow engine: close does not wait for it)
      if (kind.durable) assert.isDefined(closing.pollUnsafe(), "a durable close does not wait for its calls")
      else assert.isUndefined(closing.pollUnsafe(), "close waits for the region to end")
      yield* kind.advance("1 second")
      yield* Fiber.join(closing)

      assert.strictEqual(fibers.active, 0)
      assert.deepStrictEqual(yield* toolset.runningTasks, [])
      assert.deepStrictEqual(yield* session.insertions, [], "a closed toolset delivers nothing")
    })).pipe(kind.provide(TestSession.layer))
  })

  it.effect("a cancelled tool whose clean-up dies has the defect logged with its cause", () => {
    const logs = captureLogs()
    const messy = FunctionTool.make("messy", { description: "Its clean-up crashes" }, () =>
      Effect.andThen(AsyncRunContext.update("started"), Effect.never).pipe(
        Effect.onInterrupt(() => Effect.die(new Error("clean-up crashed")))
      ))
    return Effect.gen(function*() {
      const toolset = yield* kind.make({ id: "tools", tools: [messy, ping] })
      yield* toolset.execute(yield* modelCall("m1", "messy"))

      assert.strictEqual(yield* toolset.cancel("m1"), "cancelled")
      yield* toolset.awaitIdle

      assert.deepStrictEqual(yield* toolset.runningTasks, [])
      assert.strictEqual(logs.find(reported, "clean-up crashed").length, 1)
      yield* stillServes(toolset, "p1")
    }).pipe(kind.provide(TestSession.layer), Effect.provide(logs.layer))
  })
})

forEachKind("queued items are retried or reported, never dropped silently", (kind) => {
  it.effect("an item whose insertion failed is not inserted after its call was cancelled", () => {
    const faulty = faultySession({ insert: (_, attempt) => attempt === 1 ? "fail" : "ok" })
    const logs = captureLogs()
    const chatty = FunctionTool.make("chatty", { description: "Updates once, then works" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* Effect.sleep("1 second")
        yield* AsyncRunContext.update("halfway")
        return yield* Effect.never
      }))
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* kind.make({ id: "tools", tools: [chatty], sessionRetry: retryTwice })
      yield* session.setBusy // the reply fiber waits, holding c1_update_1 for a retry
      yield* Effect.flatMap(modelCall("c1", "chatty"), toolset.execute)
      yield* kind.advance("1 second") // c1_update_1: its insertion fails

      assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
      yield* session.setIdle
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })

      assert.deepStrictEqual(chatCallIds(yield* session.chat), [], "nothing of a cancelled call reaches the chat after its cancellation")
      assert.deepStrictEqual(yield* session.replies, [])
    }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
  })

  it.effect("closing the toolset while items wait for a reply or for an insertion retry names each of them in the log", () => {
    const faulty = faultySession({ insert: (items) => items.some((i) => "callId" in i && i.callId.startsWith("c2_")) ? "fail" : "ok" })
    const logs = captureLogs()
    return Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const scope = yield* Scope.make()
      const toolset = yield* kind.make({ id: "tools", tools: [report], sessionRetry: retryTwice }).pipe(Scope.provide(scope))
      yield* session.setBusy
      yield* runReport(toolset, "c1") // c1_final will be in the chat, owed a reply
      yield* runReport(toolset, "c2") // c2_final will wait for an insertion retry
      yield* kind.advance("1 second")
      assert.deepStrictEqual(chatCallIds(yield* session.chat), ["c1_final"])

      const mark = logs.lines.length
      yield* Scope.close(scope, Exit.void)

      assert.isAtLeast(logs.findSince(mark, reported, "c2_final").length, 1, "an item that never reached the chat is reported")
      assert.isAtLeast(logs.findSince(mark, ["Debug", "Info", ...reported], "c1_final").length, 1, "an item owed a reply is named")
    }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
  })
})
