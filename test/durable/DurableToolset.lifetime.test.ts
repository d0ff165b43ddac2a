/**
 * The durable toolset keeps the in-memory one's rules for duplicates (D1–D6), cancellation,
 * timeouts and lifetime (E1–E7), with what durability changes: a cancellation is recorded before
 * `cancel` returns, and closing the toolset lets its calls go on (a toolset made again for the
 * session follows them).
 */
import { assert, layer } from "@effect/vitest"
import { Deferred, Effect, Fiber, Schema } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool, Prompts } from "effect-async-toolset"
import { DurableChat, DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { eventually, sessionLayer, storeLayer } from "../support/durable.ts"
import { call, callIdsInChat, pairOf } from "../support/replies.ts"

const confirm = AsyncToolset.confirmParameter

/** What the tools of a test did. */
interface Probe {
  readonly started: Array<string>
  readonly finished: Array<string>
  readonly args: Array<Record<string, unknown>>
}

const makeProbe = (): Probe => ({ started: [], finished: [], args: [] })

/**
 * `book_flight`: says it started, waits for `go`, says it found flights, returns. With `hold`, it
 * waits in an uninterruptible region (a cancel cannot stop it until `go`).
 */
const bookingTool = (
  probe: Probe,
  go: Deferred.Deferred<void>,
  options: FunctionTool.Options & { readonly hold?: boolean } = {}
) =>
  FunctionTool.make("book_flight", {
    ...options,
    description: "Book a flight",
    parameters: Schema.Struct({ to: Schema.String })
  }, (args) =>
    Effect.gen(function*() {
      const { callId } = yield* AsyncRunContext.functionCall
      probe.started.push(callId)
      probe.args.push(args)
      yield* AsyncRunContext.update(`looking up flights to ${args.to}`)
      yield* options.hold === true ? Effect.uninterruptible(Deferred.await(go)) : Deferred.await(go)
      yield* AsyncRunContext.update("found 3 flights")
      probe.finished.push(callId)
      return `booked ${args.to}`
    }))

const propertiesOf = (toolset: AsyncToolset.AsyncToolset, name: string): Record<string, unknown> =>
  FunctionTool.toJsonSchema(toolset.tools.find((t) => t.name === name)!).parameters.properties as Record<string, unknown>

const chatIds = TestSession.TestSession.use((session) => Effect.map(session.chat, callIdsInChat))

layer(storeLayer, { timeout: "120 seconds", excludeTestServices: true })("DurableToolset lifetime", (it) => {
  // --- D: duplicates --------------------------------------------------------------------------

  it.effect("D1 D3 by default a second call waits for confirmation; reject names the running call and the cancel tool; allow runs both", () =>
    Effect.gen(function*() {
      for (const mode of ["confirm", "reject", "allow"] as const) {
        const probe = makeProbe()
        const go = yield* Deferred.make<void>()
        const toolset = DurableToolset.define({
          id: "travel",
          tools: [bookingTool(probe, go)],
          ...(mode === "confirm" ? {} : { onDuplicateCall: mode })
        })
        yield* Effect.gen(function*() {
          const t = yield* DurableToolset.make(toolset)
          const first = yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
          const second = yield* t.execute(yield* call("c2", "book_flight", { to: "NRT" }))
          assert.isTrue(AsyncToolset.isPending(first))
          if (mode === "allow") {
            assert.isTrue(AsyncToolset.isPending(second))
            assert.deepStrictEqual(probe.started, ["c1", "c2"])
          } else {
            assert.isTrue(second.isError)
            assert.include(second.output, "call_id c1")
            assert.include(second.output, "cancel_task_travel")
            if (mode === "confirm") assert.include(second.output, confirm)
            assert.deepStrictEqual(probe.started, ["c1"])
          }
          yield* Deferred.succeed(go, undefined)
          yield* t.awaitIdle
        }).pipe(Effect.provide(sessionLayer(toolset)))
      }
    }))

  it.effect("D2 confirm adds an optional flag to the schema; a confirmed call runs, and its handler never sees the flag", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(probe, go)] })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        const properties = propertiesOf(t, "book_flight")
        assert.property(properties, confirm)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        const second = yield* t.execute(yield* call("c2", "book_flight", { to: "NRT", [confirm]: true }))
        assert.isTrue(AsyncToolset.isPending(second))
        assert.deepStrictEqual(probe.args, [{ to: "NRT" }, { to: "NRT" }])
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("D4 replace cancels the running call and starts the new one only once the old one has ended", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(probe, go, { hold: true })], onDuplicateCall: "replace" })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        const second = yield* Effect.forkChild(t.execute(yield* call("c2", "book_flight", { to: "CDG" })))
        // c1 is held in an uninterruptible region: it is being cancelled, and c2 waits for it
        yield* eventually(Effect.map(t.runningTasks, (tasks) => tasks.some((task) => task.callId === "c1" && task.status === "cancelling")), "c1 cancelling")
        yield* Effect.sleep("100 millis")
        assert.deepStrictEqual(probe.started, ["c1"])
        yield* Deferred.succeed(go, undefined)
        const output = yield* Fiber.join(second)
        assert.include(output.output, "CDG")
        assert.deepStrictEqual(probe.started, ["c1", "c2"])
        yield* t.awaitIdle
        // the cancelled call's later update and result never reached the chat
        assert.deepStrictEqual(yield* chatIds, ["c2_update_1", "c2_final"])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("D4 replace does not start when a running call cannot be cancelled, and cancels nothing", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({
        id: "travel",
        tools: [bookingTool(probe, go, { cancellable: false })],
        onDuplicateCall: "replace"
      })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        const second = yield* t.execute(yield* call("c2", "book_flight", { to: "CDG" }))
        assert.isTrue(second.isError)
        assert.include(second.output, "cannot be cancelled")
        assert.deepStrictEqual((yield* t.runningTasks).map((task) => [task.callId, task.status]), [["c1", "running"]])
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
        assert.deepStrictEqual(probe.finished, ["c1"])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("D5 two identical calls at the same instant under reject run exactly one", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(probe, go)], onDuplicateCall: "reject" })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        const calls = [yield* call("c1", "book_flight", { to: "NRT" }), yield* call("c2", "book_flight", { to: "NRT" })]
        const outputs = yield* Effect.forEach(calls, (c) => t.execute(c), { concurrency: "unbounded" })
        assert.strictEqual(outputs.filter((o) => AsyncToolset.isPending(o)).length, 1)
        assert.strictEqual(outputs.filter((o) => o.isError).length, 1)
        assert.strictEqual(probe.started.length, 1)
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("D6 with scope arguments, only a call with the same arguments is a duplicate", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({
        id: "travel",
        tools: [bookingTool(probe, go)],
        onDuplicateCall: "reject",
        duplicateScope: "arguments"
      })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        const same = yield* t.execute(yield* call("c2", "book_flight", { to: "NRT" }))
        const other = yield* t.execute(yield* call("c3", "book_flight", { to: "CDG" }))
        assert.isTrue(same.isError)
        assert.isTrue(AsyncToolset.isPending(other))
        assert.deepStrictEqual(probe.started, ["c1", "c3"])
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  // --- E: cancellation, timeouts, lifetime ----------------------------------------------------

  it.effect("E1 the model sees get_running_tasks_<id> and cancel_task_<id>, and they work", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(probe, go)] })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        assert.deepStrictEqual(t.tools.map((tool) => tool.name), ["book_flight", "get_running_tasks_travel", "cancel_task_travel"])
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        const listed = yield* t.execute(yield* call("m1", "get_running_tasks_travel"))
        assert.deepStrictEqual(JSON.parse(listed.output), [
          { call_id: "c1", name: "book_flight", arguments: `{"to":"NRT"}`, status: "running", cancellable: true }
        ])
        const cancelled = yield* t.execute(yield* call("m2", "cancel_task_travel", { call_id: "c1" }))
        assert.strictEqual(cancelled.output, "Call c1 was cancelled.")
        const missing = yield* t.execute(yield* call("m3", "cancel_task_travel", { call_id: "nope" }))
        assert.include(missing.output, "No running call has id nope")
        yield* t.awaitIdle
        assert.deepStrictEqual(yield* chatIds, [])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("E2 a call cancelled before its first update answers 'cancelled' at once; a cancelled call's later results never reach the chat", () =>
    Effect.gen(function*() {
      const never = FunctionTool.make("slow_start", { description: "Slow" }, () => Effect.never)
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [never, bookingTool(probe, go)] })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        const waiting = yield* Effect.forkChild(t.execute(yield* call("c1", "slow_start")))
        yield* eventually(Effect.map(t.runningTasks, (tasks) => tasks.length === 1), "c1 running")
        assert.strictEqual(yield* t.cancel("c1"), "cancelled")
        const output = yield* Fiber.join(waiting)
        assert.isTrue(output.isError)
        assert.strictEqual(output.output, Prompts.render(Prompts.defaults.cancelled, { functionName: "slow_start", callId: "c1" }))

        yield* t.execute(yield* call("c2", "book_flight", { to: "NRT" }))
        assert.strictEqual(yield* t.cancel("c2"), "cancelled")
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
        assert.deepStrictEqual(yield* chatIds, [])
        assert.strictEqual(yield* t.cancel("c2"), "not-found")
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("E3 a call of a tool that is not cancellable is not cancelled, and cancel_task says why", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(probe, go, { cancellable: false })] })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        assert.strictEqual(yield* t.cancel("c1"), "not-cancellable")
        const told = yield* t.execute(yield* call("m1", "cancel_task_travel", { call_id: "c1" }))
        assert.include(told.output, "cannot be cancelled")
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
        assert.deepStrictEqual(probe.finished, ["c1"])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("E4 cancel returns at once while the tool is in an uninterruptible region; the call shows as cancelling until it stops", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(probe, go, { hold: true })] })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        assert.strictEqual(yield* t.cancel("c1"), "cancelled")
        assert.deepStrictEqual((yield* t.runningTasks).map((task) => [task.status, task.cancellable]), [["cancelling", false]])
        assert.strictEqual(yield* t.cancel("c1"), "cancelled")
        yield* Effect.sleep("100 millis")
        assert.strictEqual((yield* t.runningTasks).length, 1)
        yield* Deferred.succeed(go, undefined)
        yield* t.awaitIdle
        assert.deepStrictEqual(yield* t.runningTasks, [])
        assert.deepStrictEqual(yield* chatIds, [])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("E6 closing the toolset lets its calls go on: a toolset made again for the session tells their results", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(probe, go)] })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const chat = yield* DurableChat.DurableChat
        yield* Effect.scoped(Effect.gen(function*() {
          const t = yield* DurableToolset.make(toolset)
          // as an agent on the durable chat does: the call and its output go into the chat, stored
          const c = yield* call("c1", "book_flight", { to: "NRT" })
          const output = yield* t.execute(c)
          yield* session.insert([c, output])
          yield* chat.save([c, output])
        }))
        yield* Deferred.succeed(go, undefined)
        yield* eventually(Effect.sync(() => probe.finished.length === 1), "c1 finished")
        assert.deepStrictEqual(yield* session.replies, [])
        const again = yield* DurableToolset.make(toolset)
        yield* again.awaitIdle
        assert.deepStrictEqual(yield* chatIds, ["c1", "c1_update_1", "c1_final"])
        assert.strictEqual((yield* session.replies).length, 1)
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("E6 drain cancels the cancellable calls and waits for the others", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const go = yield* Deferred.make<void>()
      const stays = FunctionTool.make("charge", { description: "Charge", cancellable: false }, () =>
        Effect.gen(function*() {
          yield* AsyncRunContext.update("charging")
          yield* Deferred.await(go)
          probe.finished.push("charge")
          return "charged"
        }))
      const toolset = DurableToolset.define({ id: "travel", tools: [bookingTool(probe, go), stays] })
      yield* Effect.gen(function*() {
        const t = yield* DurableToolset.make(toolset)
        yield* t.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        yield* t.execute(yield* call("c2", "charge"))
        const draining = yield* Effect.forkChild(t.drain)
        yield* eventually(Effect.map(t.runningTasks, (tasks) => tasks.length === 1), "c1 gone")
        assert.deepStrictEqual((yield* t.runningTasks).map((task) => task.callId), ["c2"])
        yield* Deferred.succeed(go, undefined)
        yield* Fiber.join(draining)
        assert.deepStrictEqual(probe.finished, ["charge"])
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))

  it.effect("E7 a call past its timeout is stopped and the model is told; a result before it is never told as timed out", () =>
    Effect.gen(function*() {
      const slow = FunctionTool.make("slow", { description: "Slow", timeout: "200 millis" }, () => Effect.never)
      const later = FunctionTool.make("later", { description: "Later", timeout: "200 millis" }, () =>
        Effect.andThen(AsyncRunContext.update("started"), Effect.never))
      const quick = FunctionTool.make("quick", { description: "Quick", timeout: "300 millis" }, () =>
        Effect.andThen(AsyncRunContext.update("started"), Effect.as(Effect.sleep("50 millis"), "done in time")))
      const toolset = DurableToolset.define({ id: "travel", tools: [slow, later, quick] })
      yield* Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const t = yield* DurableToolset.make(toolset)
        const timedOut = yield* t.execute(yield* call("c1", "slow"))
        assert.isTrue(timedOut.isError)
        assert.strictEqual(timedOut.output, Prompts.render(Prompts.defaults.timedOut, { functionName: "slow", callId: "c1", timeout: "200ms" }))
        yield* t.execute(yield* call("c2", "later"))
        yield* t.execute(yield* call("c3", "quick"))
        yield* t.awaitIdle
        const chat = yield* session.chat
        assert.include(pairOf(chat, "c2_final").output.output, "took longer than 200ms")
        assert.strictEqual(pairOf(chat, "c3_final").output.output, "done in time")
      }).pipe(Effect.provide(sessionLayer(toolset)))
    }))
})
