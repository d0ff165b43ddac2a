/**
 * Session faults (rule E9, and C3/C4b/E2 under them): every port operation answers in every shape
 * (ok, typed failure, defect, interrupt cause, hang, slow). A fault is retried or reported, never a
 * silent cancellation and never the end of the reply coordinator: whatever the fault on one call's
 * way, a later call's result still gets its reply, no item reaches the chat twice or is lost
 * without a word, and nothing of a cancelled call reaches the chat.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, References, Schedule } from "effect"
import { AgentSession, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute, settle } from "../support/lifetime.ts"
import {
  captureLogs,
  chatCallIds,
  chatProblems,
  faultySession,
  namedCallIds,
  reported,
  whileClockRuns
} from "../support/reliability.ts"
import { yieldsFor } from "../support/schedules.ts"
import { forEachKind } from "../support/toolsets.ts"

/** Says "started", works a second, returns "done". */
const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

// --- a port operation answering in one shape ----------------------------------------------------

type Shape = "fail" | "die" | "interrupt" | "hang" | "slow"
type Op = "insert" | "insertRetry" | "items" | "awaitInactive" | "generateReply"

const ops: ReadonlyArray<Op> = ["insert", "insertRetry", "items", "awaitInactive", "generateReply"]
const shapes: ReadonlyArray<Shape> = ["fail", "die", "interrupt", "hang", "slow"]

const shaped = <A>(s: Shape, ok: Effect.Effect<A, AgentSession.SessionError>, op: string): Effect.Effect<A, AgentSession.SessionError> => {
  switch (s) {
    case "fail":
      return Effect.fail(new AgentSession.SessionError({ operation: "insert", message: `injected fail in ${op}` }))
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
 * The in-memory session whose `op` answers in `s`: inserting c1's items (every attempt, or every
 * attempt after a first failure), or the first chat read, idle wait or reply request about c1.
 */
const faultyOn = (op: Op, s: Shape) => {
  let insertAttempts = 0
  let itemsReads = 0
  let idleWaits = 0
  return Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
    const isC1 = (items: ReadonlyArray<{ readonly _tag: string }>) => items.some((i) => "callId" in i && String(i.callId).startsWith("c1_"))
    const port = AgentSession.AgentSession.of({
      ...session,
      insert: (items) =>
        Effect.suspend(() => {
          if (!isC1(items)) return session.insert(items)
          const attempt = ++insertAttempts
          if (op === "insert") return shaped(s, session.insert(items), "insert") // every attempt
          if (op === "insertRetry") return attempt === 1 ? shaped("fail", session.insert(items), "insert") : shaped(s, session.insert(items), "insert")
          return session.insert(items)
        }),
      items: Effect.suspend(() => op === "items" && ++itemsReads === 1 ? shaped(s, session.items, "items") : session.items),
      awaitInactive: Effect.suspend(() =>
        op === "awaitInactive" && ++idleWaits === 1
          ? Effect.orDie(shaped(s, Effect.andThen(session.awaitInactive, Effect.void), "awaitInactive"))
          : session.awaitInactive
      ),
      generateReply: (request) =>
        op === "generateReply" && request.instructions.includes("c1_") && !request.instructions.includes("c2_")
          ? shaped(s, session.generateReply(request), "generateReply")
          : session.generateReply(request)
    })
    return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
  }))
}

// --- an insertion cut short -----------------------------------------------------------------------

type Cut = "fail" | "die" | "interrupt"

const answer = (shape: Cut, op: string): Effect.Effect<never, AgentSession.SessionError> =>
  shape === "fail"
    ? Effect.fail(new AgentSession.SessionError({ operation: "insert", message: `injected fail in ${op}` }))
    : shape === "die"
    ? Effect.die(new Error(`injected die in ${op}`))
    : Effect.interrupt

/**
 * The in-memory session whose first insertion of c1_update_1 happens but answers `cut`; the chat
 * read after it answers `read`.
 */
const cutShortSession = (cut: Cut, read: Cut) =>
  Layer.effectContext(Effect.map(TestSession.make(), ({ controls, session }) => {
    let cutDone = false
    let readFailed = false
    const port = AgentSession.AgentSession.of({
      ...session,
      insert: (items) =>
        Effect.suspend(() => {
          const isTarget = items.some((i) => "callId" in i && i.callId === "c1_update_1")
          if (!isTarget || cutDone) return session.insert(items)
          cutDone = true
          return Effect.andThen(session.insert(items), answer(cut, "insert"))
        }),
      items: Effect.suspend(() => {
        if (!cutDone || readFailed) return session.items
        readFailed = true
        return answer(read, "items")
      })
    })
    return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
  }))

/** Updates at once and after a second, ends a second later. */
const twoUpdates = FunctionTool.make("chatty", { description: "Updates twice, then ends" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("half way")
    yield* Effect.sleep("1 second")
    return "done"
  }))

const retryTwice = Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 2 }))

forEachKind("AsyncToolset session faults", (kind) => {
  describe("E9 a port answer of any shape on any operation is a session fault", () => {
    for (const op of ops) {
      for (const s of shapes) {
        // awaitInactive never completing is the session being busy forever: replies must wait.
        if (op === "awaitInactive" && s === "hang") continue
        it.effect(`${op} answers with ${s}: a later result still gets its reply; the fault is logged`, () => {
          const logs = captureLogs()
          return Effect.gen(function*() {
            const session = yield* TestSession.TestSession
            const toolset = yield* kind.make({
              id: "t",
              tools: [job],
              sessionRetry: retryTwice,
              replyTimeout: "30 seconds"
            })
            yield* execute(toolset, "c1", "job")
            yield* kind.advance("1 second") // c1_final meets the fault
            yield* kind.advance("10 seconds")
            yield* execute(toolset, "c2", "job")
            yield* kind.advance("1 second")
            const named = Effect.map(session.replies, (rs) => rs.flatMap((r) => namedCallIds(r.instructions)))
            yield* whileClockRuns(
              Effect.repeat(named, { until: (ids) => ids.includes("c2_final"), schedule: Schedule.spaced("1 second") }),
              { what: "a reply naming c2_final", step: "1 second", steps: 300 }
            )
            if (s !== "slow" && s !== "hang") assert.isAtLeast(logs.find(reported).length, 1, "the fault is logged")
          }).pipe(kind.provide(faultyOn(op, s)), Effect.provide(logs.layer))
        })
      }
    }
  })

  describe("session faults never drop a result silently, nor stop the coordinator", () => {
    it.effect("waiting for idle fails while a result waits for its insertion retry: it is retried, or reported as not in the chat", () => {
      const faulty = faultySession({
        insert: (items, attempt) => items.some((i) => "callId" in i && i.callId === "c1_final") && attempt === 1 ? "fail" : "ok",
        awaitInactive: (attempt) => attempt === 1 ? "die" : "ok"
      })
      const logs = captureLogs()
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [job], sessionRetry: retryTwice })
        yield* execute(toolset, "c1", "job")
        yield* kind.advance("1 second") // c1_final's insertion fails; then waiting for idle dies
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        const inChat = chatCallIds(yield* session.chat).includes("c1_final")
        const claimsInChat = logs.find(["Error"], "c1_final", "they are in the chat")
        // README: "If it still fails, an error names the item, and no reply names it"; the log must
        // not tell the operator the result is in the chat when it never got there.
        assert.isTrue(inChat || claimsInChat.length === 0, `c1_final is not in the chat, yet the log says: ${claimsInChat.map((l) => l.text).join(" | ")}`)
      }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
    })

    it.effect("reading the chat never returns: later results still get replies (the coordinator is not stuck)", () => {
      let hang = true
      const faulty = faultySession({ chatContext: () => hang ? "hang" : "ok" })
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "t", tools: [job] })
        yield* execute(toolset, "c1", "job")
        yield* kind.advance("1 second") // c1_final; the coordinator reads the chat: it never answers
        hang = false
        yield* execute(toolset, "c2", "job")
        yield* kind.advance("1 second")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "10 seconds", steps: 60 })
        assert.include((yield* session.replies).flatMap((r) => namedCallIds(r.instructions)), "c2_final")
      }).pipe(kind.provide(faulty.layer))
    })
  })

  describe("E2 nothing of a cancelled call reaches the chat after its cancellation", () => {
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
        const toolset = yield* kind.make({
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
      }).pipe(kind.provide(faulty.layer))
    })

    it.effect("an update inserted (slowly) from an uninterruptible region lands after cancel: no reply is asked for it", () =>
      Effect.gen(function*() {
        yield* kind.advance("0 millis")
        const session = yield* TestSession.TestSession
        const tool = FunctionTool.make("charge", { description: "Charges" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("started")
            yield* Effect.uninterruptible(AsyncRunContext.update("charged")) // its insertion takes 2 s
            return yield* Effect.never
          }))
        const toolset = yield* kind.make({ id: "t", tools: [tool] })
        yield* execute(toolset, "c1", "charge")
        yield* kind.advance("1 second")
        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        const mark = (yield* session.chat).items.length
        yield* kind.advance("2 seconds")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        const after = (yield* session.chat).items.slice(mark).flatMap((i) => "callId" in i ? [i.callId] : [])
        assert.deepStrictEqual(yield* session.replies, [], "the model is not asked to talk about a cancelled call")
        assert.deepStrictEqual(after, [], "nothing of c1 reaches the chat after its cancellation")
      }).pipe(kind.provide(TestSession.layerWith({ beforeInsert: () => Effect.sleep("2 seconds") }))))
  })

  describe("C4/C4b what the agent said before a result reached the chat never covers it", () => {
    it.effect("a slow insertion: the agent speaks while the result is being inserted; the result is still told (skip)", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const book = FunctionTool.make("book", { description: "Books" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("booking")
            yield* Effect.sleep("1 second")
            return "booked"
          }))
        const toolset = yield* kind.make({ id: "t", tools: [book], whenAlreadyAnswered: "skip" })
        yield* execute(toolset, "c1", "book")
        yield* session.setBusy
        yield* kind.advance("1 second") // the result is ready; its insertion takes 2 s
        yield* kind.advance("1 second")
        yield* session.say("assistant", "Anything else I can do?") // said before the result is in the chat
        yield* kind.advance("1 second") // the insertion completes
        yield* session.setIdle
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
        assert.strictEqual((yield* session.replies).length, 1, "the result is told: nothing said before it reached the chat covers it")
      }).pipe(kind.provide(TestSession.layerWith({ beforeInsert: () => Effect.sleep("2 seconds") }))))
  })

  describe("C3 an update whose insertion was cut short or failed is delivered once", () => {
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
        const toolset = yield* kind.make({ id: "t", tools: [tool] })
        yield* execute(toolset, "c1", "job")
        yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
        const ids = chatCallIds(yield* session.chat)
        assert.deepStrictEqual(ids.filter((id) => id === "c1_update_1").length, 1, `once: ${ids.join(", ")}`)
        assert.deepStrictEqual(ids.filter((id) => id === "c1_final").length, 1, `once: ${ids.join(", ")}`)
        const named = (yield* session.replies).flatMap((r) => [...namedCallIds(r.instructions)])
        assert.includeMembers(named, ["c1_update_1", "c1_final"])
        assert.strictEqual(named.filter((id) => id === "c1_update_1").length, 1, "named in exactly one reply")
      }).pipe(kind.provide(layer))
    })

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
          const toolset = yield* kind.make({ id: "t", tools: [background] })
          yield* execute(toolset, "c1", "background")
          yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle" })
          const ids = chatCallIds(yield* session.chat)
          assert.deepStrictEqual([...ids].sort(), ["c1_final", "c1_update_1"], `chat: ${ids.join(", ")}`)
          const named = (yield* session.replies).flatMap((r) => [...namedCallIds(r.instructions)])
          assert.deepStrictEqual([...named].sort(), ["c1_final", "c1_update_1"], "each named in exactly one reply")
          assert.deepStrictEqual(chatProblems(yield* session.chat), [])
          assert.deepStrictEqual(logs.find(["Error"]).map((l) => l.text), [], "nothing reported lost")
        }).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
      })
    }

    // An insertion cut short (the port inserted the items, then answered with a failure, a defect
    // or an interrupt cause) is retried by the coordinator, which first reads the chat to see
    // whether it happened after all. When that read fails too, the retry must still not insert the
    // item a second time.
    for (const cut of ["fail", "die", "interrupt"] as const) {
      for (const read of ["fail", "die", "interrupt"] as const) {
        for (const maxOps of yieldsFor(kind)) {
          it.effect(`insert answers '${cut}' after inserting; the retry's chat read answers '${read}': c1_update_1 is in the chat once (MaxOpsBeforeYield ${maxOps})`, () =>
            Effect.gen(function*() {
              const session = yield* TestSession.TestSession
              const toolset = yield* kind.make({
                id: "t",
                tools: [twoUpdates],
                sessionRetry: Schedule.spaced("100 millis").pipe(Schedule.upTo({ times: 3 }))
              })
              yield* execute(toolset, "c1", "chatty")
              yield* kind.advance("1 second")
              yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "100 millis" })
              const chat = yield* session.chat
              assert.deepStrictEqual(chatProblems(chat), [], "an item is in the chat twice")
              const named = (yield* session.replies).flatMap((r) => namedCallIds(r.instructions))
              assert.strictEqual(named.filter((id) => id === "c1_update_1").length, 1)
            }).pipe(kind.provide(cutShortSession(cut, read)), Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
        }
      }
    }
  })
})
