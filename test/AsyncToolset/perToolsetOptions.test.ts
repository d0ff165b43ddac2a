/**
 * C4c: toolsets on one session share one reply coordinator, and inside one reply each toolset's
 * own options govern its own items: `whenAlreadyAnswered`, `sessionRetry`, `replyTimeout`, prompts.
 * One toolset's failure or policy never drops or tells another's items.
 */
import { assert, it } from "@effect/vitest"
import { Effect, Fiber, Schedule, Stream } from "effect"
import { AgentSession, AsyncRunContext, FunctionTool, ToolsetEvent } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { namedCallIds } from "../support/replies.ts"
import { forEachKind } from "../support/toolsets.ts"

/** Says "started", then returns "done" after `seconds`. */
const job = (name: string, seconds = 1) =>
  FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep(`${seconds} seconds`)
      return "done"
    }))

const named = (session: TestSession.TestSession["Service"]) =>
  Effect.map(session.replies, (replies) => replies.map((r) => namedCallIds(r.instructions)))

const replyEvents = <A extends { readonly events: Stream.Stream<ToolsetEvent.ToolsetEvent> }>(toolset: A) =>
  toolset.events.pipe(
    Stream.filter((e) => e._tag === "ReplyDelivered" || e._tag === "ReplySkipped"),
    Stream.map((e) => e._tag === "ReplySkipped" ? `skipped ${e.callIds.join(" ")} (${e.reason})` : `delivered ${e.callIds.join(" ")}`),
    Stream.runCollect,
    Effect.forkChild({ startImmediately: true })
  )

forEachKind("C4c each toolset's options govern its own items inside one reply", (kind) => {
  it.effect("whenAlreadyAnswered: the items of a toolset that skips are skipped (and told so); another toolset's are still asked for", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const a = yield* kind.make({ id: "a", tools: [job("a_job")], whenAlreadyAnswered: "skip" })
      const b = yield* kind.make({ id: "b", tools: [job("b_job")] })
      const aEvents = yield* replyEvents(a)
      const bEvents = yield* replyEvents(b)
      yield* session.setBusy
      yield* execute(a, "a1", "a_job")
      yield* execute(b, "b1", "b_job")
      yield* kind.advance("1 second") // both results are in the chat; the agent is busy
      yield* session.say("assistant", "Both jobs are done.") // the agent spoke after them
      yield* session.setIdle
      yield* a.awaitIdle
      yield* b.awaitIdle

      assert.deepStrictEqual(yield* named(session), [["b1_final"]])
      yield* a.close
      yield* b.close
      assert.deepStrictEqual(yield* Fiber.join(aEvents), ["skipped a1_final (already-answered)"])
      assert.deepStrictEqual(yield* Fiber.join(bEvents), ["delivered b1_final"])
    }).pipe(kind.provide(TestSession.layer)))

  it.effect("sessionRetry: a toolset whose schedule ends gives its items up; another toolset's schedule goes on, and its result is told", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const b = yield* kind.make({ id: "b", tools: [job("b_job")], sessionRetry: Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 5 })) })
      const a = yield* kind.make({ id: "a", tools: [job("a_job")], sessionRetry: Schedule.recurs(0) })
      yield* session.setBusy
      yield* execute(b, "b1", "b_job")
      yield* execute(a, "a1", "a_job") // a's item is the newest of the reply
      yield* kind.advance("1 second")
      yield* session.setIdle
      yield* kind.advance("3 seconds")
      yield* a.awaitIdle
      yield* b.awaitIdle
      const replies = yield* named(session)
      // The first request (for both) failed; a gave up at once, b asked again, for its own.
      assert.deepStrictEqual(replies.at(-1), ["b1_final"])
      assert.isTrue(replies.slice(1).every((ids) => !ids.includes("a1_final")), "a's items are not asked for again")
    }).pipe(kind.provide(TestSession.layerWith({
      onReply: (request) =>
        Effect.suspend(() =>
          request.instructions.includes("a1_final")
            ? Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "the session is down" }))
            : Effect.void
        )
    }))))

  it.effect("prompts: each toolset's reply text names its own items", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const a = yield* kind.make({ id: "a", tools: [job("a_job")], prompts: { replyAtTail: "A says: {pendingCallIds}." } })
      const b = yield* kind.make({ id: "b", tools: [job("b_job")], prompts: { replyAtTail: "B says: {pendingCallIds}." } })
      yield* session.setBusy
      yield* execute(a, "a1", "a_job")
      yield* execute(b, "b1", "b_job")
      yield* kind.advance("1 second")
      yield* session.setIdle
      yield* a.awaitIdle
      yield* b.awaitIdle
      const replies = yield* session.replies
      assert.strictEqual(replies.length, 1, "one reply for both")
      assert.include(replies[0]!.instructions, "A says: a1_final.")
      assert.include(replies[0]!.instructions, "B says: b1_final.")
    }).pipe(kind.provide(TestSession.layer)))

  it.effect("replyTimeout: a toolset whose time runs out gives its items up; the request goes on for another toolset's", () =>
    Effect.gen(function*() {
      const a = yield* kind.make({ id: "a", tools: [job("a_job")], replyTimeout: "10 seconds" })
      const b = yield* kind.make({ id: "b", tools: [job("b_job")], replyTimeout: "1 minute" })
      const aEvents = yield* replyEvents(a)
      const bEvents = yield* replyEvents(b)
      const session = yield* TestSession.TestSession
      yield* session.setBusy // both results wait for the same reply
      yield* execute(a, "a1", "a_job")
      yield* execute(b, "b1", "b_job")
      yield* kind.advance("1 second")
      yield* session.setIdle // the request for both goes out; the session takes 30 s to take it up
      yield* kind.advance("30 seconds")
      yield* a.awaitIdle
      yield* b.awaitIdle
      yield* a.close
      yield* b.close
      assert.deepStrictEqual((yield* named(session)).map((ids) => ids.slice().sort()), [["a1_final", "b1_final"]], "one request, not repeated")
      assert.deepStrictEqual(yield* Fiber.join(aEvents), ["skipped a1_final (session-failed)"])
      assert.deepStrictEqual(yield* Fiber.join(bEvents), ["delivered b1_final"])
    }).pipe(kind.provide(TestSession.layerWith({ onReply: () => Effect.sleep("30 seconds") }))))
})
