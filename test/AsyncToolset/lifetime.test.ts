/**
 * Cancellation and lifetime (rules E1–E7): management tools, cancel, uninterruptible tools, reused
 * call ids, closing and draining the toolset, and timeouts.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Scope } from "effect"
import type { Duration } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import {
  bookingTool,
  Booking,
  chatCallIds,
  chatOutputs,
  execute,
  finishesAfter,
  makeProbe,
  promptly,
  settle,
  stillWaiting,
  thenLetToolsEnd,
  tracked
} from "../support/lifetime.ts"
import type { Probe } from "../support/lifetime.ts"
import { forEachKind } from "../support/toolsets.ts"

/**
 * A tool that works for `delay` before its first update, so `execute` waits that long; with
 * `uninterruptible`, that work cannot be interrupted.
 */
const quietTool = (
  probe: Probe,
  options: FunctionTool.Options & { readonly delay: Duration.Input; readonly uninterruptible?: boolean }
) => {
  const { delay, uninterruptible = false, ...toolOptions } = options
  return FunctionTool.make("search_hotels", { description: "Search hotels", parameters: Booking, ...toolOptions }, (args) =>
    tracked(
      probe,
      args,
      Effect.gen(function*() {
        yield* uninterruptible ? Effect.uninterruptible(Effect.sleep(delay)) : Effect.sleep(delay)
        yield* AsyncRunContext.update("found 3 hotels")
        return yield* Effect.never
      })
    ))
}

/** What the model reads from get_running_tasks. */
interface ListedTask {
  readonly call_id: string
  readonly name: string
  readonly status: string
  readonly cancellable: boolean
}

const listRunning = (toolset: AsyncToolset.AsyncToolset) =>
  Effect.map(
    execute(toolset, "list", `get_running_tasks_${toolset.id}`),
    (out) => JSON.parse(out.output) as ReadonlyArray<ListedTask>
  )

forEachKind("AsyncToolset lifetime", (kind) => {
  describe("E1 management tools", () => {
    it.effect("the model sees get_running_tasks and cancel_task named after the toolset", () =>
      Effect.gen(function*() {
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(makeProbe())] })

        assert.deepStrictEqual(
          toolset.tools.map((tool) => FunctionTool.toJsonSchema(tool).name),
          ["book_flight", "get_running_tasks_travel", "cancel_task_travel"]
        )
        const cancelTask = FunctionTool.toJsonSchema(toolset.tools[2]!)
        assert.deepStrictEqual(Object.keys(cancelTask.parameters.properties as object), ["call_id"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("two toolsets in one session have no colliding tool names", () =>
      Effect.gen(function*() {
        const travel = yield* kind.make({ id: "travel", tools: [bookingTool(makeProbe())] })
        const hotels = yield* kind.make({ id: "hotels", tools: [bookingTool(makeProbe(), { name: "book_hotel" })] })

        const names = [...travel.tools, ...hotels.tools].map((tool) => tool.name)
        assert.strictEqual(new Set(names).size, names.length, `unique: ${names}`)
        assert.includeMembers(names, [
          "get_running_tasks_travel",
          "cancel_task_travel",
          "get_running_tasks_hotels",
          "cancel_task_hotels"
        ])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("the management tools are present with no call running, and the tool list stays the same as calls come and go", () =>
      Effect.gen(function*() {
        const empty = yield* kind.make({ id: "empty", tools: [] })
        assert.deepStrictEqual(empty.tools.map((tool) => tool.name), ["get_running_tasks_empty", "cancel_task_empty"])

        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(makeProbe(), { work: finishesAfter("1 second", "booked") })]
        })
        const schemas = () => JSON.stringify(toolset.tools.map(FunctionTool.toJsonSchema))
        const before = schemas()
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        assert.strictEqual(schemas(), before)
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle
        assert.strictEqual(schemas(), before)
        assert.include(before, "get_running_tasks_travel")
        assert.include(before, "cancel_task_travel")
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("get_running_tasks lists the running calls with call id, name and status", () =>
      Effect.gen(function*() {
        const toolset = yield* kind.make({
          id: "travel",
          onDuplicateCall: "allow",
          tools: [bookingTool(makeProbe()), bookingTool(makeProbe(), { name: "book_hotel" })]
        })
        assert.deepStrictEqual(yield* listRunning(toolset), [])

        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* execute(toolset, "c2", "book_hotel", { to: "NRT" })

        const listed = yield* listRunning(toolset)
        assert.deepStrictEqual(
          listed.map(({ call_id, name, status }) => ({ call_id, name, status })),
          [
            { call_id: "c1", name: "book_flight", status: "running" },
            { call_id: "c2", name: "book_hotel", status: "running" }
          ]
        )
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("cancel_task cancels a running call when the model calls it", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)] })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })

        const out = yield* execute(toolset, "m1", "cancel_task_travel", { call_id: "c1" })
        yield* toolset.awaitIdle

        assert.isFalse(out.isError)
        assert.include(out.output, "c1")
        assert.include(out.output, "cancelled")
        assert.deepStrictEqual(probe.interrupted, ["c1"])
        assert.deepStrictEqual(yield* toolset.runningTasks, [])

        const unknown = yield* execute(toolset, "m2", "cancel_task_travel", { call_id: "c9" })
        assert.include(unknown.output, "c9")
        assert.include(unknown.output, "get_running_tasks_travel")
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("E2 cancel", () => {
    it.effect("cancel interrupts the call's fiber", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)] })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })

        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        yield* toolset.awaitIdle

        assert.deepStrictEqual(probe.interrupted, ["c1"])
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a call cancelled before its first update returns a cancelled output", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [quietTool(probe, { delay: "10 seconds" })] })
        const waiting = yield* Effect.forkChild(execute(toolset, "c1", "search_hotels", { to: "NRT" }))
        assert.isTrue(yield* stillWaiting(waiting))

        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        const out = yield* promptly(Fiber.join(waiting))

        assert.strictEqual(out.callId, "c1")
        assert.isTrue(out.isError)
        assert.isFalse(AsyncToolset.isPending(out))
        assert.include(out.output, "cancelled")
        yield* toolset.awaitIdle
        assert.deepStrictEqual(probe.interrupted, ["c1"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a cancelled call's later updates and result never reach the chat", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(makeProbe(), {
            work: Effect.gen(function*() {
              yield* Effect.sleep("1 second")
              yield* AsyncRunContext.update("halfway")
              yield* Effect.sleep("1 second")
              return "booked"
            })
          })]
        })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* kind.advance("500 millis")

        yield* toolset.cancel("c1")
        yield* kind.advance("5 seconds")
        yield* toolset.awaitIdle

        assert.deepStrictEqual(yield* session.insertions, [])
        assert.deepStrictEqual(yield* session.replies, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a cancelled call that keeps running uninterruptibly still never reaches the chat", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(makeProbe(), {
            work: Effect.uninterruptible(Effect.gen(function*() {
              yield* Effect.sleep("1 second")
              yield* AsyncRunContext.update("halfway")
              yield* Effect.sleep("1 second")
              return "booked"
            }))
          })]
        })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* settle // the tool is inside its uninterruptible region now

        yield* toolset.cancel("c1")
        yield* settle
        assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.status), ["cancelling"], "it goes on")
        yield* kind.advance("5 seconds")
        yield* toolset.awaitIdle

        assert.deepStrictEqual(yield* session.insertions, [])
        assert.deepStrictEqual(yield* session.replies, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a call cancelled while it waits for the call it replaces to stop returns a cancelled output at once", () =>
      Effect.gen(function*() {
        const toolset = yield* kind.make({
          id: "travel",
          onDuplicateCall: "replace",
          tools: [bookingTool(makeProbe(), { work: Effect.uninterruptible(finishesAfter("10 seconds", "booked")) })]
        })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* settle // c1 is inside its uninterruptible region: c2 must wait for it to stop
        const replacing = yield* Effect.forkChild(execute(toolset, "c2", "book_flight", { to: "HND" }))
        assert.isTrue(yield* stillWaiting(replacing))

        assert.strictEqual(yield* toolset.cancel("c2"), "cancelled")
        const out = yield* promptly(Fiber.join(replacing), "the cancelled call's execute")

        assert.isTrue(out.isError)
        assert.include(out.output, "cancelled")
        yield* kind.advance("10 seconds")
        yield* toolset.awaitIdle
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))

    it.effect("a call cancelled while it waits for the call it replaces to stop never runs", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          onDuplicateCall: "replace",
          tools: [bookingTool(probe, { work: Effect.uninterruptible(finishesAfter("10 seconds", "booked")) })]
        })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* settle // c1 is inside its uninterruptible region: c2 must wait for it to stop
        const replacing = yield* Effect.forkChild(execute(toolset, "c2", "book_flight", { to: "HND" }))
        assert.isTrue(yield* stillWaiting(replacing))

        yield* toolset.cancel("c2")
        yield* kind.advance("10 seconds") // c1 stops
        yield* Fiber.join(replacing)
        yield* kind.advance("10 seconds") // long enough for c2's work, had it started
        yield* toolset.awaitIdle

        assert.deepStrictEqual(probe.started, ["c1"])
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("cancel of an unknown or finished call id is not-found", () =>
      Effect.gen(function*() {
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(makeProbe(), { work: finishesAfter("1 second", "booked") })]
        })
        assert.strictEqual(yield* toolset.cancel("nobody"), "not-found")

        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle
        assert.strictEqual(yield* toolset.cancel("c1"), "not-found")
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("E3 not cancellable", () => {
    it.effect("a call marked not cancellable is not cancelled, cancel_task tells the model why, and it finishes", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(probe, { cancellable: false, work: finishesAfter("2 seconds", "booked") })]
        })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })

        assert.strictEqual(yield* toolset.cancel("c1"), "not-cancellable")
        const out = yield* execute(toolset, "m1", "cancel_task_travel", { call_id: "c1" })
        assert.include(out.output, "c1")
        assert.include(out.output, "cannot be cancelled")
        assert.deepStrictEqual(
          (yield* toolset.runningTasks).map(({ callId, status, cancellable }) => ({ callId, status, cancellable })),
          [{ callId: "c1", status: "running", cancellable: false }]
        )

        yield* kind.advance("2 seconds")
        yield* toolset.awaitIdle
        assert.deepStrictEqual(probe.interrupted, [])
        const final = (yield* chatOutputs(session)).get("c1_final")
        assert.strictEqual(final?.output, "booked")
        assert.isFalse(final?.isError)
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("E4 uninterruptible tools", () => {
    it.effect("cancel returns at once even if the tool is inside an uninterruptible region", () =>
      Effect.gen(function*() {
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(makeProbe(), { work: Effect.uninterruptible(finishesAfter("10 seconds", "booked")) })]
        })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* settle // the tool is inside its uninterruptible region now

        assert.strictEqual(yield* promptly(toolset.cancel("c1")), "cancelled")

        yield* kind.advance("10 seconds")
        yield* toolset.awaitIdle
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a call stopping from an uninterruptible region stays listed as cancelling until it really stops", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(probe, { work: Effect.uninterruptible(finishesAfter("10 seconds", "booked")) })]
        })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* settle // the tool is inside its uninterruptible region now
        yield* toolset.cancel("c1")

        const stopping = [{ callId: "c1", status: "cancelling", cancellable: false }]
        const current = Effect.map(
          toolset.runningTasks,
          (tasks) => tasks.map(({ callId, status, cancellable }) => ({ callId, status, cancellable }))
        )
        assert.deepStrictEqual(yield* current, stopping)
        assert.deepStrictEqual(
          (yield* listRunning(toolset)).map(({ call_id, status, cancellable }) => ({ call_id, status, cancellable })),
          [{ call_id: "c1", status: "cancelling", cancellable: false }]
        )
        const idle = yield* Effect.forkChild(toolset.awaitIdle)
        yield* kind.advance("9 seconds")
        assert.deepStrictEqual(yield* current, stopping)
        assert.isTrue(yield* stillWaiting(idle))

        yield* kind.advance("1 second")
        yield* Fiber.join(idle)
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        assert.deepStrictEqual(probe.interrupted, ["c1"])
        assert.deepStrictEqual(yield* session.insertions, [])
        assert.deepStrictEqual(yield* session.replies, [])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("E5 reused call ids", () => {
    it.effect("a new call reusing a stopping call's id (another tool) is not removed by the old call's clean-up", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const old = makeProbe()
        const fresh = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          tools: [
            bookingTool(old, { name: "pay", work: Effect.uninterruptible(finishesAfter("10 seconds", "paid")) }),
            bookingTool(fresh, {
              work: Effect.gen(function*() {
                yield* Effect.sleep("15 seconds")
                yield* AsyncRunContext.update("halfway")
                return yield* Effect.never
              })
            })
          ]
        })
        yield* execute(toolset, "c1", "pay", { to: "NRT" })
        yield* settle // the tool is inside its uninterruptible region now
        yield* toolset.cancel("c1")
        const out = yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        assert.isTrue(AsyncToolset.isPending(out))

        yield* kind.advance("10 seconds")
        yield* settle
        assert.deepStrictEqual(old.interrupted, ["c1"], "the old call has stopped")
        assert.deepStrictEqual(
          (yield* toolset.runningTasks).map(({ callId, name, status }) => ({ callId, name, status })),
          [{ callId: "c1", name: "book_flight", status: "running" }]
        )

        yield* kind.advance("5 seconds")
        yield* settle
        // (A durable call's base is its record's key: one the stopping call holds is not reused.)
        assert.strictEqual((yield* chatOutputs(session)).get(kind.durable ? "c1_run2_update_1" : "c1_update_1")?.name, "book_flight")

        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        yield* toolset.awaitIdle
        assert.deepStrictEqual(fresh.interrupted, ["c1"])
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a new call reusing a stopping call's id (same tool, allow) is not removed by the old call's clean-up", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          onDuplicateCall: "allow",
          tools: [bookingTool(probe, {
            work: Effect.gen(function*() {
              yield* Effect.uninterruptible(Effect.sleep("10 seconds"))
              yield* Effect.sleep("5 seconds")
              yield* AsyncRunContext.update("halfway")
              return yield* Effect.never
            })
          })]
        })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* settle // the tool is inside its uninterruptible region now
        yield* toolset.cancel("c1")
        yield* kind.advance("5 seconds")
        yield* execute(toolset, "c1", "book_flight", { to: "HND" })

        yield* kind.advance("5 seconds")
        yield* settle
        assert.deepStrictEqual(probe.interrupted, ["c1"], "the old call has stopped")
        assert.deepStrictEqual(
          (yield* toolset.runningTasks).map(({ callId, arguments: args, status }) => ({ callId, args, status })),
          [{ callId: "c1", args: `{"to":"HND"}`, status: "running" }]
        )

        yield* kind.advance("10 seconds")
        yield* settle
        const id = kind.durable ? "c1_run2_update_1" : "c1_update_1"
        assert.deepStrictEqual(yield* chatCallIds(session), [id, id])
        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        yield* toolset.awaitIdle
        assert.deepStrictEqual(probe.interrupted, ["c1", "c1"])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("E6 close and drain", () => {
    it.effect("closing the toolset's scope interrupts every call and the reply fiber", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const flights = makeProbe()
        const hotels = makeProbe()
        const scope = yield* Scope.make()
        const toolset = yield* kind.make({
          id: "travel",
          tools: [
            bookingTool(flights, {
              work: Effect.gen(function*() {
                yield* Effect.sleep("1 second")
                yield* AsyncRunContext.update("halfway")
                return yield* Effect.never
              })
            }),
            quietTool(hotels, { delay: "1 hour" })
          ]
        }).pipe(Scope.provide(scope))

        yield* session.setBusy
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* kind.advance("1 second") // c1_update_1 waits for the agent to be idle
        const waiting = yield* Effect.forkChild(execute(toolset, "c2", "search_hotels", { to: "NRT" }))
        assert.isTrue(yield* stillWaiting(waiting))

        yield* promptly(Scope.close(scope, Exit.void))

        if (kind.durable) {
          // A durable toolset's calls go on in the workflow engine (F2): its own fibers end, a
          // caller still waiting hears that the call goes on, and its result is told later.
          assert.deepStrictEqual([...flights.interrupted, ...hotels.interrupted], [])
          const firstOutput = yield* promptly(Fiber.join(waiting))
          assert.isFalse(firstOutput.isError)
          assert.include(firstOutput.output, "goes on in the background")
        } else {
          assert.deepStrictEqual(flights.interrupted, ["c1"])
          assert.deepStrictEqual(hotels.interrupted, ["c2"])
          const firstOutput = yield* promptly(Fiber.join(waiting))
          assert.isTrue(firstOutput.isError)
        }
        yield* promptly(toolset.awaitIdle)
        assert.deepStrictEqual(yield* toolset.runningTasks, [])

        // The reply fiber is gone: an idle agent is not asked to reply.
        yield* session.setIdle
        yield* kind.advance("1 minute")
        assert.deepStrictEqual(yield* session.replies, [])

        const later = yield* execute(toolset, "c3", "book_flight", { to: "HND" })
        assert.isTrue(later.isError)
        assert.include(later.output, "book_flight")
        assert.deepStrictEqual(flights.started, ["c1"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("toolset.close stops following every call (in memory: interrupts it); later calls get an error output", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)] })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })

        yield* promptly(toolset.close)

        // (A durable toolset's call goes on in the workflow engine: F2.)
        assert.deepStrictEqual(probe.interrupted, kind.durable ? [] : ["c1"])
        yield* promptly(toolset.awaitIdle)
        const later = yield* execute(toolset, "c2", "book_flight", { to: "NRT" })
        assert.isTrue(later.isError)
        assert.deepStrictEqual(probe.started, ["c1"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("after close, awaitIdle completes even when results were still queued for a reply", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(makeProbe(), {
            work: Effect.gen(function*() {
              yield* Effect.sleep("1 second")
              yield* AsyncRunContext.update("first progress")
              yield* Effect.sleep("1 second")
              yield* AsyncRunContext.update("second progress")
              return yield* Effect.never
            })
          })]
        })
        yield* session.setBusy
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        // Both updates arrive while the agent is busy: one is taken by the waiting reply fiber, the
        // other is still queued when the toolset closes.
        yield* kind.advance("1 second")
        yield* settle
        yield* kind.advance("1 second")
        yield* settle
        assert.deepStrictEqual(yield* chatCallIds(session), ["c1_update_1", "c1_update_1", "c1_update_2", "c1_update_2"])

        yield* toolset.close

        yield* promptly(toolset.awaitIdle)
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("drain cancels the cancellable calls and waits for the others to finish", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const flights = makeProbe()
        const payments = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          tools: [
            bookingTool(flights),
            bookingTool(payments, { name: "pay", cancellable: false, work: finishesAfter("10 seconds", "paid") })
          ]
        })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* execute(toolset, "c2", "pay", { to: "NRT" })

        const draining = yield* Effect.forkChild(toolset.drain)
        assert.isTrue(yield* stillWaiting(draining))
        assert.deepStrictEqual(flights.interrupted, ["c1"])
        assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.callId), ["c2"])

        yield* kind.advance("9 seconds")
        assert.isTrue(yield* stillWaiting(draining))

        yield* kind.advance("1 second")
        yield* Fiber.join(draining)
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        assert.deepStrictEqual(payments.interrupted, [])
        yield* toolset.awaitIdle
        assert.strictEqual((yield* chatOutputs(session)).get("c2_final")?.output, "paid")
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("E7 timeouts", () => {
    it.effect("a call that times out before its first update gets a timed-out output", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          tools: [quietTool(probe, { delay: "10 seconds", timeout: "5 seconds" })]
        })
        const waiting = yield* Effect.forkChild(execute(toolset, "c1", "search_hotels", { to: "NRT" }))

        yield* kind.advance("5 seconds")
        const out = yield* Fiber.join(waiting)

        assert.isTrue(out.isError)
        assert.isFalse(AsyncToolset.isPending(out))
        assert.include(out.output, "search_hotels")
        assert.include(out.output, "5s")
        assert.match(out.output, /longer than|timed out/)
        yield* toolset.awaitIdle
        assert.deepStrictEqual(probe.interrupted, ["c1"])
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a call that times out after an update gets a timed-out error as its final result in the chat", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(probe, { timeout: "5 seconds", work: finishesAfter("10 seconds", "booked") })]
        })
        const first = yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        assert.isTrue(AsyncToolset.isPending(first))

        yield* kind.advance("5 seconds")
        yield* toolset.awaitIdle

        assert.deepStrictEqual(probe.interrupted, ["c1"])
        assert.deepStrictEqual(yield* chatCallIds(session), ["c1_final", "c1_final"])
        const final = (yield* chatOutputs(session)).get("c1_final")!
        assert.isTrue(final.isError)
        assert.include(final.output, "5s")
        assert.match(final.output, /longer than|timed out/)
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        assert.include(replies[0]!.instructions, "c1_final")

        yield* kind.advance("10 seconds")
        yield* toolset.awaitIdle
        assert.strictEqual((yield* session.replies).length, 1)
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a call that times out inside an uninterruptible region before its first update gets the timed-out output at expiry", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({
          id: "travel",
          tools: [quietTool(makeProbe(), { delay: "10 seconds", uninterruptible: true, timeout: "5 seconds" })]
        })
        const waiting = yield* Effect.forkChild(execute(toolset, "c1", "search_hotels", { to: "NRT" }))

        yield* kind.advance("5 seconds")
        const out = yield* promptly(Fiber.join(waiting), "the timed-out call's execute")

        assert.isTrue(out.isError)
        assert.match(out.output, /longer than 5s|timed out/)
        yield* kind.advance("5 seconds")
        yield* toolset.awaitIdle
        assert.deepStrictEqual(yield* session.insertions, [], "its late update never reaches the chat")
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))

    it.effect("a timeout does not cut a tool's uninterruptible region short, even at an update", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const steps: Array<string> = []
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(makeProbe(), {
            timeout: "1 second",
            work: Effect.uninterruptible(Effect.gen(function*() {
              yield* Effect.sleep("2 seconds")
              steps.push("card charged")
              yield* AsyncRunContext.update("card charged")
              yield* Effect.sleep("1 second")
              steps.push("booking recorded")
            }))
          })]
        })
        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })

        yield* kind.advance("5 seconds")
        yield* toolset.awaitIdle

        assert.deepStrictEqual(steps, ["card charged", "booking recorded"])
        const final = (yield* chatOutputs(session)).get("c1_final")
        assert.isTrue(final?.isError)
        assert.match(final?.output ?? "", /longer than 1s|timed out/)
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("E7 the timeout of a replacing call counts from when it runs", () => {
    it.effect("a call that waited for the one it replaces has its whole timeout once it runs", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        const job = FunctionTool.make("job", {
          description: "A job with a timeout; a new one replaces the running one",
          onDuplicateCall: "replace",
          timeout: "1.5 seconds"
        }, () =>
          Effect.gen(function*() {
            const { callId } = yield* AsyncRunContext.functionCall
            yield* AsyncRunContext.update(`started ${callId}`)
            // the first call stops slowly (1 s); the second needs 0.8 s of its 1.5 s for its work
            // (with the wait counted, 1.8 s: over its timeout)
            yield* Effect.uninterruptible(Effect.sleep(callId === "a" ? "1 second" : "800 millis"))
            log.push(`done ${callId}`)
            return `done ${callId}`
          }))
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [job] })
        yield* execute(toolset, "a", "job")
        yield* settle
        const b = yield* Effect.forkChild(execute(toolset, "b", "job"), { startImmediately: true })
        yield* kind.advance("1 second") // a stops (it was replaced); b begins
        assert.include((yield* Fiber.join(b)).output, "started b")
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle
        const final = (yield* session.chat).items.find((i) => i._tag === "FunctionCallOutput" && i.callId === "b_final")
        assert.strictEqual(final?._tag === "FunctionCallOutput" ? final.output : undefined, "done b", "b needed 0.8 s of its 1.5 s")
        assert.include(log, "done b")
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("F4 a call whose whole result was returned is over at once", () => {
    it.effect("right after execute returns a whole result the call is not listed, and the same tool runs again at once", () =>
      Effect.gen(function*() {
        const lookup = FunctionTool.make("lookup", { description: "Looks up", onDuplicateCall: "reject" }, () =>
          Effect.succeed("found it"))
        const toolset = yield* kind.make({ id: "weather", tools: [lookup] })
        const first = yield* execute(toolset, "c1", "lookup")
        assert.strictEqual(first.output, "found it")
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        const second = yield* execute(toolset, "c2", "lookup")
        assert.strictEqual(second.output, "found it", "not refused as a duplicate")
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("E2 cancel_task right after the tool returned: the call is over, and its result is told once", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const go = yield* Deferred.make<void>()
        const job = FunctionTool.make("job", { description: "Reports, then ends when told" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("started")
            yield* Deferred.await(go)
            return "finished"
          }))
        const toolset = yield* kind.make({ id: "jobs", tools: [job] })
        yield* execute(toolset, "c1", "job")
        yield* Deferred.succeed(go, undefined)
        const answer = yield* execute(toolset, "x1", "cancel_task_jobs", { call_id: "c1" })
        yield* toolset.awaitIdle
        const final = (yield* session.chat).items.filter((i) => i._tag === "FunctionCallOutput" && i.callId === "c1_final")
        // The model hears either that the call had ended (and its result), or that it was
        // cancelled (and nothing after): never both.
        if (answer.output.includes("was cancelled")) assert.deepStrictEqual(final, [])
        else assert.strictEqual(final.length, 1)
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("F3 a step marked as an activity is never cut short", () => {
    for (const how of ["cancel", "timeout"] as const) {
      it.effect(`a ${how} during an activity waits for it to end, then stops the tool`, () =>
        Effect.gen(function*() {
          const log: Array<string> = []
          const pay = FunctionTool.make("pay", { description: "Charges, then books", ...(how === "timeout" ? { timeout: "1 second" } : {}) }, () =>
            Effect.gen(function*() {
              yield* AsyncRunContext.update("charging")
              yield* DurableToolset.activity("charge", Effect.gen(function*() {
                log.push("charge start")
                yield* Effect.sleep("3 seconds")
                log.push("charge done")
              }))
              log.push("after charge")
              yield* Effect.sleep("10 seconds")
              return "booked"
            }).pipe(Effect.onInterrupt(() => Effect.sync(() => log.push("interrupted")))))
          const toolset = yield* kind.make({ id: "pay", tools: [pay] })
          yield* execute(toolset, "c1", "pay")
          yield* settle
          if (how === "cancel") assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
          yield* kind.advance("1 second")
          assert.deepStrictEqual(log, ["charge start"], "still charging")
          assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.status), ["cancelling"])
          yield* kind.advance("2 seconds")
          yield* toolset.awaitIdle
          assert.deepStrictEqual(log, ["charge start", "charge done", "interrupted"])
        }).pipe(kind.provide(TestSession.layer)))
    }
  })
})

