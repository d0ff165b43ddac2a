/**
 * A timeout across a restart, on the embedded store (the whole runtime closed, then built again on
 * the same data folder): the deadline is in the call's record, so a call whose deadline passed while
 * no process ran it times out as soon as one does, and the model is told once.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { dirname } from "node:path"
import { AsyncRunContext, ChatContext, FunctionTool, Prompts } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { freshDataDir } from "../support/pglite.ts"
import { call, pairOf } from "../support/replies.ts"

const slow = FunctionTool.make("slow_report", { description: "A report that takes too long", timeout: "2 seconds" }, () =>
  Effect.andThen(AsyncRunContext.update("collecting the data"), Effect.never))

const reports = DurableToolset.define({ id: "reports", tools: [slow] })

const processLayer = (dataDir: string) =>
  Layer.mergeAll(DurableToolset.layer(reports), DurableChat.layer({ sessionId: "bob" }), TestSession.layer).pipe(
    Layer.provideMerge(DurableStore.layerEmbedded({ dataDir }))
  )

describe("DurableToolset across a restart", () => {
  it.live("a call whose deadline passed while no process ran it times out as soon as one does", () =>
    Effect.gen(function*() {
      const dataDir = dirname(yield* Effect.promise(() => freshDataDir()))
      const started = Date.now()
      yield* Effect.gen(function*() {
        const chat = yield* DurableChat.DurableChat
        const toolset = yield* DurableToolset.make(reports)
        const c = yield* call("r1", "slow_report")
        const output = yield* toolset.execute(c)
        // as the agent does: the call, its output, and the model's answer to it
        yield* chat.save([c, output, yield* ChatContext.message("assistant", "I am collecting the data.")])
      }).pipe(Effect.scoped, Effect.provide(processLayer(dataDir)))
      // no process runs the call until past its deadline
      yield* Effect.sleep(Math.max(0, started + 2_500 - Date.now()))

      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* DurableToolset.make(reports)
        const ready = Date.now()
        yield* toolset.awaitIdle
        assert.isBelow(Date.now() - ready, 1_900, "it timed out at once, not after another 2 seconds")
        const final = pairOf(yield* session.chat, "r1_final").output
        assert.isTrue(final.isError)
        assert.strictEqual(final.output, Prompts.render(Prompts.defaults.timedOut, { functionName: "slow_report", callId: "r1", timeout: "2s" }))
        assert.strictEqual((yield* session.replies).length, 1)
      }).pipe(Effect.scoped, Effect.provide(processLayer(dataDir)))
    }), { timeout: 120_000 })
})
