/**
 * A reply request that fails is asked again, by each toolset's own `sessionRetry` (C4c). Each
 * retried attempt is prepared like a first one: it waits for the session to be inactive with
 * nothing between the check and the request (C2), takes what arrived meanwhile into the same
 * reply (C3), and reads the chat again, so that what the agent said meanwhile counts (C4). Port
 * answers of every shape in a retry are session faults, retried or reported (E9); an item taken
 * by an attempt that fails before it asks is reported, never settled silently; and a cancelled
 * call's item let go never holds up another toolset's reply.
 */
import { assert, it } from "@effect/vitest"
import { Cause, Effect, Fiber, References, Schedule } from "effect"
import { AsyncRunContext, FunctionTool, Prompts } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { captureLogs, namedCallIds, whileClockRuns } from "../support/reliability.ts"
import { callIdsOf, chatty, sessionError, wrappedSession } from "../support/reliability.ts"
import { failingWhile, recordEvents as record, replyEvents, reportingJob as job } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"
import { settleLong, yieldsFor } from "../support/schedules.ts"

const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 10 }))

forEachKind("C2 a retried request is never made while the session is busy", (kind) => {
  for (const maxOps of yieldsFor(kind)) {
    it.effect(`the session turns busy at the microtask after every idle check; the first request fails: no request (first or retried) is made while busy (MaxOpsBeforeYield ${maxOps})`, () => {
      let controls: TestSession.TestSession["Service"] | undefined
      let n = 0
      const layer = wrappedSession((session) => ({
        awaitInactive: Effect.tap(session.awaitInactive, () => Effect.sync(() => queueMicrotask(() => Effect.runSync(controls!.setBusy)))),
        generateReply: (r) => Effect.andThen(session.generateReply(r), Effect.suspend(() => ++n === 1 ? Effect.fail(sessionError("first")) : Effect.void))
      }))
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        controls = session
        const toolset = yield* kind.make({ id: "t", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
        yield* execute(toolset, "c1", "job")
        for (let i = 0; i < 8; i++) {
          yield* session.setIdle
          yield* kind.advance("1 second")
          yield* settleLong
        }
        const replies = yield* session.replies
        assert.deepStrictEqual(replies.map((r) => namedCallIds(r.instructions)), [["c1_final"], ["c1_final"]])
        assert.deepStrictEqual(replies.map((r) => r.whileBusy), [false, false])
        yield* session.setIdle
      }).pipe(kind.provide(layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})

forEachKind("E9 port answers of every shape in a retry", (kind) => {
  for (const op of ["awaitInactive", "generateReply"] as const) {
    for (const shape of ["typed failure", "defect", "interrupt cause"] as const) {
      for (const maxOps of yieldsFor(kind)) {
        // A defect of the session's idle wait (a broken adapter) is reported at error level; the
        // reply is still asked for again and made once.
        const reportsDefect = op === "awaitInactive" && shape === "defect"
        it.effect(`the first request fails, the retry's ${op} answers with a ${shape}: retried, one ReplyDelivered, ${reportsDefect ? "the defect reported once" : "nothing at error level"} (MaxOpsBeforeYield ${maxOps})`, () => {
          const logs = captureLogs()
          let waits = 0
          let asks = 0
          const fault = shape === "typed failure"
            ? Effect.fail(sessionError("injected"))
            : shape === "defect"
            ? Effect.die(new Error("boom"))
            : Effect.failCause(Cause.interrupt(123))
          const layer = wrappedSession((session) => ({
            // The port's type says the idle wait does not fail; a port may all the same (E9).
            awaitInactive: Effect.suspend(() => ++waits === 2 && op === "awaitInactive" ? (fault as Effect.Effect<never>) : session.awaitInactive),
            generateReply: (r) =>
              Effect.suspend(() => {
                const k = ++asks
                if (k === 1) return Effect.andThen(session.generateReply(r), Effect.fail(sessionError("first")))
                if (k === 2 && op === "generateReply") return Effect.andThen(session.generateReply(r), fault)
                return session.generateReply(r)
              })
          }))
          return Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const a = yield* kind.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
            const events = yield* record(a)
            yield* execute(a, "a1", "job")
            yield* kind.advance("1 second")
            yield* settleLong
            yield* whileClockRuns(a.awaitIdle, { what: "awaitIdle" })
            const named = (yield* session.replies).map((r) => namedCallIds(r.instructions))
            assert.deepStrictEqual(named, op === "generateReply" ? [["a1_final"], ["a1_final"], ["a1_final"]] : [["a1_final"], ["a1_final"]])
            yield* a.close
            assert.deepStrictEqual(replyEvents(yield* Fiber.join(events)), ["delivered a1_final"])
            assert.deepStrictEqual(
              logs.find(["Error"], "a1_final").map((l) => l.text),
              reportsDefect ? ["the session failed while the reply for a1_final was prepared; trying again"] : []
            )
          }).pipe(kind.provide(layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
        })
      }
    }
  }
})

forEachKind("C3 results that arrive while a retried request waits for idle join it", (kind) => {
  for (const where of ["another toolset", "the same toolset"] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`a1_final's request fails, the user talks, ${where}'s result arrives meanwhile: once idle, one reply names both (not two back-to-back replies) (MaxOpsBeforeYield ${maxOps})`, () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const a = yield* kind.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
          const b = where === "another toolset" ? yield* kind.make({ id: "b", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" }) : a
          yield* execute(a, "a1", "job")
          yield* kind.advance("1 second") // a1_final; its request fails at once
          yield* settleLong
          yield* session.setBusy // the user talks before the retry
          yield* execute(b, "b1", "job")
          for (let i = 0; i < 3; i++) {
            yield* kind.advance("1 second") // b1_final arrives; the retry waits for idle
            yield* settleLong
          }
          assert.strictEqual((yield* session.replies).length, 1)
          yield* session.setIdle
          yield* whileClockRuns(Effect.andThen(a.awaitIdle, b.awaitIdle), { what: "awaitIdle" })
          const after = (yield* session.replies).slice(1).map((r) => namedCallIds(r.instructions))
          assert.deepStrictEqual(after, [["a1_final", "b1_final"]], "the retry asked about a1_final alone, then b1_final got a second reply right after it")
        }).pipe(kind.provide(failingWhile((n) => n === 1)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
    }
  }
})

forEachKind("C4 the agent speaks while a retried request waits for idle", (kind) => {
  for (const maxOps of yieldsFor(kind)) {
    it.effect(`whenAlreadyAnswered "skip": a1_final's request fails, the agent tells the user while the session is busy: no second request, the toolset is told "already-answered" (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const a = yield* kind.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute", whenAlreadyAnswered: "skip" })
        const events = yield* record(a)
        yield* execute(a, "a1", "job")
        yield* kind.advance("1 second") // a1_final; its request fails
        yield* settleLong
        yield* session.setBusy
        yield* kind.advance("500 millis")
        yield* session.say("assistant", "Your job is done.") // the agent covers a1_final meanwhile
        yield* kind.advance("2 seconds")
        yield* settleLong
        yield* session.setIdle
        yield* whileClockRuns(a.awaitIdle, { what: "awaitIdle" })
        assert.deepStrictEqual((yield* session.replies).slice(1).map((r) => r.instructions), [], "the retry asked for a reply the agent had already given")
        yield* a.close
        assert.deepStrictEqual(replyEvents(yield* Fiber.join(events)), ["skipped a1_final already-answered"])
      }).pipe(kind.provide(failingWhile((n) => n === 1)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))

    it.effect(`default "ask": a1_final's request fails, the agent tells the user while the session is busy: the retry uses the "maybe covered" wording (MaxOpsBeforeYield ${maxOps})`, () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const a = yield* kind.make({ id: "a", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
        yield* execute(a, "a1", "job")
        yield* kind.advance("1 second")
        yield* settleLong
        yield* session.setBusy
        yield* kind.advance("500 millis")
        yield* session.say("assistant", "Your job is done.")
        yield* kind.advance("2 seconds")
        yield* settleLong
        yield* session.setIdle
        yield* whileClockRuns(a.awaitIdle, { what: "awaitIdle" })
        const after = (yield* session.replies).slice(1).map((r) => r.instructions)
        const maybeCovered = Prompts.render(Prompts.defaults.replyMaybeCovered, { pendingCallIds: "a1_final" })
        assert.deepStrictEqual(after, [maybeCovered], "the retry worded the reply as if nothing had been said since the items")
      }).pipe(kind.provide(failingWhile((n) => n === 1)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
  }
})

const quick = FunctionTool.make("quick", { description: "Reports, then ends in 0.5 s", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("500 millis")
    return "done"
  }))

forEachKind("an item taken by a retry attempt that fails before it asks is reported", (kind) => {
  for (const how of ["the idle wait dies", "the chat read hangs past replyTimeout"] as const) {
    for (const maxOps of yieldsFor(kind)) {
      it.effect(`a1_final's request fails; a2_final arrives during the retry pause; then ${how} in every attempt: a2_final is reported (ReplySkipped session-failed or an error line), not settled silently (MaxOpsBeforeYield ${maxOps})`, () => {
        const logs = captureLogs()
        const state = { broken: false, asks: 0 }
        const layer = wrappedSession((session) => ({
          awaitInactive: Effect.suspend(() =>
            state.broken && how === "the idle wait dies" ? Effect.die(new Error("injected idle-wait defect")) : session.awaitInactive
          ),
          items: Effect.suspend(() => state.broken && how === "the chat read hangs past replyTimeout" ? Effect.never : session.items),
          generateReply: (r) =>
            Effect.andThen(session.generateReply(r), Effect.suspend(() => ++state.asks === 1 ? Effect.fail(sessionError("first")) : Effect.void))
        }))
        return Effect.gen(function*() {
          const a = yield* kind.make({
            id: "a",
            tools: [job, quick],
            sessionRetry: Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 2 })),
            replyTimeout: "1 minute"
          })
          const events = yield* record(a)
          yield* execute(a, "a1", "job")
          yield* kind.advance("1 second") // a1_final; its request fails: the retry waits 1 s
          yield* settleLong
          assert.strictEqual(state.asks, 1)
          state.broken = true
          yield* execute(a, "a2", "quick")
          yield* kind.advance("500 millis") // a2_final arrives while the retry pauses
          yield* settleLong
          yield* whileClockRuns(a.awaitIdle, { what: "awaitIdle", step: "1 second", steps: 400 })
          assert.strictEqual(state.asks, 1)
          yield* a.close
          const told = replyEvents(yield* Fiber.join(events))
          const errorsA2 = logs.find(["Error", "Warn"], "a2_final").map((l) => l.text)
          assert.deepStrictEqual(
            { a2Reported: told.some((e) => e.includes("a2_final")) || errorsA2.length > 0 },
            { a2Reported: true },
            `a2_final (taken by a retry attempt) was settled silently; events: ${JSON.stringify(told)}`
          )
        }).pipe(kind.provide(layer), Effect.provide(logs.layer), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
      })
    }
  }
})

/** c1_update_1's insertion never answers (nothing inserted); once `state.armed`, the next chat read answers with `read`. */
const letGoSession = (read: "hang" | "fail", state: { armed: boolean; reads: number }) =>
  wrappedSession((session) => ({
    insert: (items) => callIdsOf(items).includes("c1_update_1") ? Effect.never : session.insert(items),
    items: Effect.suspend(() => {
      if (!state.armed) return session.items
      state.armed = false
      state.reads++
      return read === "hang" ? Effect.never : Effect.fail(sessionError("injected read failure"))
    })
  }))

forEachKind("a cancelled call's item let go never holds up another toolset's reply", (kind) => {
  const retryThrice = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 3 }))
  for (const maxOps of yieldsFor(kind)) {
    it.effect(`cancel c1 while c1_update_1's insertion hangs; the coordinator's chat read for it never answers: d1_final (another toolset) still gets its reply, d's awaitIdle returns (MaxOpsBeforeYield ${maxOps})`, () => {
      const state = { armed: false, reads: 0 }
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* kind.make({ id: "t", tools: [chatty], sessionRetry: retryThrice, replyTimeout: "1 minute" })
        const d = yield* kind.make({ id: "d", tools: [job], sessionRetry: retryThrice, replyTimeout: "1 minute" })
        yield* execute(t, "c1", "chatty")
        yield* kind.advance("1 second") // c1_update_1: its insertion hangs
        yield* settleLong
        state.armed = true
        assert.strictEqual(yield* t.cancel("c1"), "cancelled")
        yield* settleLong
        assert.strictEqual(state.reads, 1, "the coordinator did not read the chat for the cancelled item")
        yield* execute(d, "d1", "job")
        yield* whileClockRuns(d.awaitIdle, { what: "d's awaitIdle (coordinator stuck in its chat read for the cancelled item)", step: "1 second", steps: 300 })
        assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["d1_final"]])
      }).pipe(kind.provide(letGoSession("hang", state)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})
