/**
 * Review 6: `letGoCancelled` (0163a04) reads the chat for a cancelled call's failed insertion on
 * the coordinator's own fiber, with no time bound and no race against the toolset's close:
 * - a chat read that never answers stops every reply of the session for good (the coordinator
 *   promised: "no port call it makes is unbounded but the wait for the session to be inactive");
 * - a chat read that fails leaves the item to `retryInsertions`, behind an unbounded wait for idle:
 *   `awaitIdle` of a toolset whose only pending thing is a cancelled call waits for the session
 *   (the Review4 contract: it returns without waiting for the session).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, References, Schedule } from "effect"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "./support/lifetime.ts"
import { namedCallIds, whileClockRuns } from "./support/reliability.ts"
import { settleLong } from "./support/review2.ts"
import { callIdsOf, chatty, sessionError, wrappedSession, yieldSettings } from "./support/review3.ts"

const job = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 3 }))

/** c1_update_1's insertion never answers (nothing inserted); once `state.armed`, the next chat read answers with `read`. */
const layerFor = (read: "hang" | "fail", state: { armed: boolean; reads: number }) =>
  wrappedSession((session) => ({
    insert: (items) => callIdsOf(items).includes("c1_update_1") ? Effect.never : session.insert(items),
    items: Effect.suspend(() => {
      if (!state.armed) return session.items
      state.armed = false
      state.reads++
      return read === "hang" ? Effect.never : Effect.fail(sessionError("injected read failure"))
    })
  }))

describe("Review6: letGoCancelled's chat read", () => {
  for (const maxOps of yieldSettings) {
    it.effect(`cancel c1 while c1_update_1's insertion hangs; the coordinator's chat read for it never answers: d1_final (another toolset) still gets its reply, d's awaitIdle returns (MaxOpsBeforeYield ${maxOps})`, () => {
      const state = { armed: false, reads: 0 }
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* AsyncToolset.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 minute" })
        const d = yield* AsyncToolset.make({ id: "d", tools: [job], sessionRetry: retry, replyTimeout: "1 minute" })
        yield* execute(t, "c1", "chatty")
        yield* TestClock.adjust("1 second") // c1_update_1: its insertion hangs
        yield* settleLong
        state.armed = true
        assert.strictEqual(yield* t.cancel("c1"), "cancelled")
        yield* settleLong
        assert.strictEqual(state.reads, 1, "the coordinator did not read the chat for the cancelled item")
        yield* execute(d, "d1", "job")
        yield* whileClockRuns(d.awaitIdle, { what: "d's awaitIdle (coordinator stuck in letGoCancelled's chat read)", step: "1 second", steps: 300 })
        assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["d1_final"]])
      }).pipe(Effect.provide(layerFor("hang", state)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })

    it.effect(`cancel c1 while c1_update_1's insertion hangs and the session is busy for good; the coordinator's chat read for it fails: awaitIdle returns (nothing of c1 is owed) without waiting for the session (MaxOpsBeforeYield ${maxOps})`, () => {
      const state = { armed: false, reads: 0 }
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* AsyncToolset.make({ id: "t", tools: [chatty], sessionRetry: retry, replyTimeout: "1 minute" })
        yield* execute(t, "c1", "chatty")
        yield* session.setBusy
        yield* TestClock.adjust("1 second")
        yield* settleLong
        state.armed = true
        assert.strictEqual(yield* t.cancel("c1"), "cancelled")
        yield* settleLong
        assert.strictEqual(state.reads, 1)
        yield* whileClockRuns(t.awaitIdle, { what: "awaitIdle (waits for the busy session)", step: "1 second", steps: 300 })
        assert.deepStrictEqual(callIdsOf((yield* session.chat).items).filter((id) => id.startsWith("c1_update")), [])
        yield* session.setIdle
      }).pipe(Effect.provide(layerFor("fail", state)), Effect.provideService(References.MaxOpsBeforeYield, maxOps))
    })
  }
})
