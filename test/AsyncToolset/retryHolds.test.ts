/**
 * C4c: a toolset waiting out its own retry delay holds nobody else's items. A result of another
 * toolset that arrives while it waits (its toolset never had a request fail) is asked for when it
 * arrives, not when the waiting toolset's retry is due; the waiting toolset's item is still told
 * once, at its own retry.
 */
import { assert, it } from "@effect/vitest"
import { Clock, Effect, Schedule } from "effect"
import { AgentSession, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { execute } from "../support/lifetime.ts"
import { namedCallIds } from "../support/replies.ts"
import { forEachKind } from "../support/toolsets.ts"

const job = (name: string, seconds: number) =>
  FunctionTool.make(name, { description: name, onDuplicateCall: "allow" }, () =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep(`${seconds} seconds`)
      return "done"
    }))

/** The instructions of the reply requests that worked (the session made those replies). */
const answered: Array<string> = []

/** Every reply request fails until the clock reaches `until` ms. */
const downUntil = (until: number) =>
  TestSession.layerWith({
    onReply: (request) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        now < until
          ? Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "down" }))
          : Effect.sync(() => void answered.push(request.instructions)))
  })

/** How many replies the session made for `callId`. */
const told = (callId: string) => answered.filter((instructions) => namedCallIds(instructions).includes(callId)).length

forEachKind("C4c a toolset's retry delay holds no other toolset's items", (kind) => {
  it.effect("a result of another toolset arriving during the delay is asked for at once; both are told once", () =>
    Effect.gen(function*() {
      answered.length = 0
      const session = yield* TestSession.TestSession
      // a: its result at 1 s meets the outage; its next try is 10 s later (at 11 s)
      const a = yield* kind.make({ id: "a", tools: [job("a_job", 1)], sessionRetry: Schedule.spaced("10 seconds").pipe(Schedule.upTo({ times: 3 })) })
      // c: its result at 3 s, after the outage; no request of its own ever failed
      const c = yield* kind.make({ id: "c", tools: [job("c_job", 3)] })
      yield* execute(a, "a1", "a_job")
      yield* execute(c, "c1", "c_job")
      yield* kind.advance("5 seconds")
      // before a's retry is due, c's result was asked for
      assert.strictEqual(told("c1_final"), 1, "c1 was held for a's retry")
      assert.strictEqual(told("a1_final"), 0)
      yield* kind.advance("30 seconds")
      yield* a.awaitIdle
      yield* c.awaitIdle
      assert.strictEqual(told("a1_final"), 1)
      assert.strictEqual(told("c1_final"), 1)
      assert.isTrue((yield* session.replies).every((r) => !r.whileBusy))
    }).pipe(kind.provide(downUntil(2_000))))
})
