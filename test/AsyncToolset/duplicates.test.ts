/**
 * Duplicate calls (rules D1–D6): what happens when the model calls a tool that is still running.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import {
  bookingTool,
  chatCallIds,
  execute,
  finishesAfter,
  makeProbe,
  promptly,
  settle,
  stillWaiting,
  thenLetToolsEnd
} from "../support/lifetime.ts"
import { forEachKind } from "../support/toolsets.ts"

const confirm = AsyncToolset.confirmParameter

/** The JSON Schema properties the model sees for one of the toolset's tools. */
const propertiesOf = (toolset: AsyncToolset.AsyncToolset, name: string): Record<string, unknown> => {
  const tool = toolset.tools.find((t) => t.name === name)
  assert.isDefined(tool, `the model sees ${name}`)
  const properties = FunctionTool.toJsonSchema(tool!).parameters.properties
  assert.isDefined(properties)
  return properties as Record<string, unknown>
}

forEachKind("AsyncToolset duplicates", (kind) => {
  describe("D1 duplicate modes", () => {
    it.effect("by default a second call of a running tool waits for the user's confirmation", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)] })

        const first = yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        const second = yield* execute(toolset, "c2", "book_flight", { to: "NRT" })

        assert.isTrue(AsyncToolset.isPending(first))
        assert.isTrue(second.isError)
        assert.include(second.output, confirm)
        assert.deepStrictEqual(probe.started, ["c1"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("allow runs a second call alongside the first", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)], onDuplicateCall: "allow" })

        const first = yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        const second = yield* execute(toolset, "c2", "book_flight", { to: "NRT" })

        assert.isTrue(AsyncToolset.isPending(first))
        assert.isTrue(AsyncToolset.isPending(second))
        assert.deepStrictEqual(probe.started, ["c1", "c2"])
        assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.callId), ["c1", "c2"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a tool's own onDuplicateCall overrides a stricter toolset default", () =>
      Effect.gen(function*() {
        const flights = makeProbe()
        const hotels = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          onDuplicateCall: "reject",
          tools: [
            bookingTool(flights, { onDuplicateCall: "allow" }),
            bookingTool(hotels, { name: "book_hotel" })
          ]
        })

        yield* execute(toolset, "f1", "book_flight", { to: "NRT" })
        const secondFlight = yield* execute(toolset, "f2", "book_flight", { to: "NRT" })
        yield* execute(toolset, "h1", "book_hotel", { to: "NRT" })
        const secondHotel = yield* execute(toolset, "h2", "book_hotel", { to: "NRT" })

        assert.isTrue(AsyncToolset.isPending(secondFlight))
        assert.deepStrictEqual(flights.started, ["f1", "f2"])
        assert.isTrue(secondHotel.isError)
        assert.deepStrictEqual(hotels.started, ["h1"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a tool's own onDuplicateCall overrides a looser toolset default", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          onDuplicateCall: "allow",
          tools: [bookingTool(probe, { onDuplicateCall: "reject" })]
        })

        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        const second = yield* execute(toolset, "c2", "book_flight", { to: "NRT" })

        assert.isTrue(second.isError)
        assert.deepStrictEqual(probe.started, ["c1"])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("D2 the confirmation flag", () => {
    it.effect("confirm mode adds an optional, described confirm_duplicate boolean to the tool's JSON schema", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)] })

        assert.strictEqual(confirm, "confirm_duplicate")
        const flag = propertiesOf(toolset, "book_flight")[confirm] as {
          readonly type?: unknown
          readonly description?: unknown
          readonly anyOf?: ReadonlyArray<{ readonly type?: unknown; readonly description?: unknown }>
        }
        assert.isDefined(flag, "the model sees confirm_duplicate")
        // Strict schemas express "optional" as "boolean or null"; plain ones leave the key out of `required`.
        const boolean = flag.type === "boolean" ? flag : flag.anyOf?.find((branch) => branch.type === "boolean")
        assert.isDefined(boolean, "confirm_duplicate is a boolean")
        const required = FunctionTool.toJsonSchema(toolset.tools[0]!).parameters.required as ReadonlyArray<string>
        assert.isTrue(
          !required.includes(confirm) || flag.anyOf?.some((branch) => branch.type === "null") === true,
          "confirm_duplicate may be left out"
        )
        const description = flag.description ?? boolean!.description
        assert.isString(description)
        assert.include(description as string, "confirm")

        // The model leaves it out (or null) on a normal call, and the call runs.
        const out = yield* execute(toolset, "c1", "book_flight", `{"to":"NRT","${confirm}":null}`)
        assert.isTrue(AsyncToolset.isPending(out))
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("the handler never sees confirm_duplicate", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)] })

        yield* execute(toolset, "c1", "book_flight", `{"to":"NRT","${confirm}":null}`)
        yield* execute(toolset, "c2", "book_flight", `{"to":"HND","${confirm}":true}`)

        assert.deepStrictEqual(probe.started, ["c1", "c2"])
        assert.deepStrictEqual(probe.args, [{ to: "NRT" }, { to: "HND" }])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("tools not in confirm mode have no confirm_duplicate parameter", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          onDuplicateCall: "allow",
          tools: [
            bookingTool(probe, { name: "allowed" }),
            bookingTool(probe, { name: "rejected", onDuplicateCall: "reject" }),
            bookingTool(probe, { name: "replaced", onDuplicateCall: "replace" }),
            bookingTool(probe, { name: "confirmed", onDuplicateCall: "confirm" })
          ]
        })

        for (const name of ["allowed", "rejected", "replaced", "get_running_tasks_travel", "cancel_task_travel"]) {
          assert.notProperty(propertiesOf(toolset, name), confirm, name)
        }
        assert.property(propertiesOf(toolset, "confirmed"), confirm)
        // It is not a parameter the model may send either.
        const out = yield* execute(toolset, "c1", "rejected", `{"to":"NRT","${confirm}":true}`)
        assert.isTrue(out.isError)
        assert.deepStrictEqual(probe.started, [])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("D3 reject and confirm", () => {
    it.effect("a second call under reject does not run and names the running call and the cancel tool", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)], onDuplicateCall: "reject" })

        yield* execute(toolset, "call_first", "book_flight", { to: "NRT" })
        const second = yield* execute(toolset, "call_second", "book_flight", { to: "HND" })

        assert.deepStrictEqual(probe.started, ["call_first"])
        assert.isTrue(second.isError)
        assert.strictEqual(second.callId, "call_second")
        assert.include(second.output, "call_first")
        assert.include(second.output, "cancel_task_travel")
        assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.callId), ["call_first"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a second call under confirm without the flag does not run and says how to confirm or cancel", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)], onDuplicateCall: "confirm" })

        yield* execute(toolset, "call_first", "book_flight", { to: "NRT" })
        const outputs = [
          yield* execute(toolset, "c2", "book_flight", { to: "NRT" }),
          yield* execute(toolset, "c3", "book_flight", { to: "NRT", [confirm]: null }),
          yield* execute(toolset, "c4", "book_flight", { to: "NRT", [confirm]: false })
        ]

        assert.deepStrictEqual(probe.started, ["call_first"])
        for (const out of outputs) {
          assert.isTrue(out.isError, out.callId)
          assert.include(out.output, "call_first")
          assert.include(out.output, "cancel_task_travel")
          assert.include(out.output, confirm)
        }
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a second call under confirm with confirm_duplicate true runs", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)] })

        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        const second = yield* execute(toolset, "c2", "book_flight", { to: "NRT", [confirm]: true })

        assert.isTrue(AsyncToolset.isPending(second))
        assert.deepStrictEqual(probe.started, ["c1", "c2"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("the rejection names every running call of the tool", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)] })

        yield* execute(toolset, "call_one", "book_flight", { to: "NRT" })
        yield* execute(toolset, "call_two", "book_flight", { to: "HND", [confirm]: true })
        const third = yield* execute(toolset, "call_three", "book_flight", { to: "KIX" })

        assert.isTrue(third.isError)
        assert.include(third.output, "call_one")
        assert.include(third.output, "call_two")
        assert.deepStrictEqual(probe.started, ["call_one", "call_two"])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("D4 replace", () => {
    it.effect("replace cancels the running call, runs the new one, and only the new call's results reach the chat", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          onDuplicateCall: "replace",
          tools: [bookingTool(probe, {
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
        const second = yield* execute(toolset, "c2", "book_flight", { to: "HND" })

        assert.isTrue(AsyncToolset.isPending(second))
        assert.deepStrictEqual(probe.started, ["c1", "c2"])
        assert.deepStrictEqual(probe.interrupted, ["c1"])
        assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.callId), ["c2"])

        yield* kind.advance("5 seconds")
        yield* toolset.awaitIdle
        const ids = yield* chatCallIds(session)
        assert.includeMembers(ids, ["c2_update_1", "c2_final"])
        assert.isTrue(ids.every((id) => id.startsWith("c2_")), `only c2 reached the chat: ${ids}`)
        for (const reply of yield* session.replies) assert.notInclude(reply.instructions, "c1")
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a replaced call that is inside an uninterruptible region stops before the new one starts, and says nothing more", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          onDuplicateCall: "replace",
          tools: [bookingTool(probe, {
            work: Effect.uninterruptible(Effect.gen(function*() {
              yield* Effect.sleep("1 second")
              yield* AsyncRunContext.update("halfway")
              yield* Effect.sleep("1 second")
              return "booked"
            }))
          })]
        })

        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        yield* settle // c1 is inside its uninterruptible region
        const second = yield* Effect.forkChild(execute(toolset, "c2", "book_flight", { to: "HND" }))
        assert.isTrue(yield* stillWaiting(second))
        assert.deepStrictEqual(probe.started, ["c1"])

        yield* kind.advance("2 seconds")
        assert.isTrue(AsyncToolset.isPending(yield* Fiber.join(second)))
        assert.deepStrictEqual(probe.started, ["c1", "c2"])
        yield* toolset.cancel("c2")
        yield* kind.advance("2 seconds")
        yield* toolset.awaitIdle
        assert.deepStrictEqual(yield* chatCallIds(session), [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a replacing call whose caller stops waiting for it leaves nothing behind", () =>
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

        yield* Fiber.interrupt(replacing) // e.g. the agent's turn was cut short
        yield* kind.advance("10 seconds")
        yield* promptly(toolset.awaitIdle, "awaitIdle")

        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        const later = yield* promptly(execute(toolset, "c3", "book_flight", { to: "KIX" }), "a later call")
        assert.isTrue(AsyncToolset.isPending(later))
        assert.deepStrictEqual(probe.started, ["c1", "c3"])
      }).pipe(thenLetToolsEnd, kind.provide(TestSession.layer)))

    it.effect("replace does not cancel a call that cannot be cancelled; the new call gets an error output", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(probe, {
            onDuplicateCall: "replace",
            cancellable: false,
            work: finishesAfter("2 seconds", "booked")
          })]
        })

        yield* execute(toolset, "call_first", "book_flight", { to: "NRT" })
        const second = yield* execute(toolset, "call_second", "book_flight", { to: "HND" })

        assert.isTrue(second.isError)
        assert.include(second.output, "call_first")
        assert.deepStrictEqual(probe.started, ["call_first"])
        assert.deepStrictEqual(probe.interrupted, [])
        assert.deepStrictEqual(
          (yield* toolset.runningTasks).map((t) => [t.callId, t.status]),
          [["call_first", "running"]]
        )

        yield* kind.advance("2 seconds")
        yield* toolset.awaitIdle
        const chat = yield* session.chat
        assert.isTrue(
          chat.items.some((item) =>
            item._tag === "FunctionCallOutput" && item.callId === "call_first_final" && item.output === "booked"
          )
        )
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("D5 atomic admission", () => {
    it.effect("identical calls at the same instant under reject run exactly once", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)], onDuplicateCall: "reject" })

        const outputs = yield* Effect.all(
          ["c1", "c2", "c3", "c4", "c5"].map((callId) => execute(toolset, callId, "book_flight", { to: "NRT" })),
          { concurrency: "unbounded" }
        )

        assert.strictEqual(probe.started.length, 1)
        assert.strictEqual(outputs.filter(AsyncToolset.isPending).length, 1)
        assert.strictEqual(outputs.filter((out) => out.isError).length, 4)
        assert.strictEqual((yield* toolset.runningTasks).length, 1)
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("D6 duplicate scope", () => {
    it.effect("by default any second call of a running tool is a duplicate, whatever its arguments", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({ id: "travel", tools: [bookingTool(probe)], onDuplicateCall: "reject" })

        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        const other = yield* execute(toolset, "c2", "book_flight", { to: "HND" })

        assert.isTrue(other.isError)
        assert.deepStrictEqual(probe.started, ["c1"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("under duplicateScope arguments, the same tool with other arguments runs", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(probe, { onDuplicateCall: "reject", duplicateScope: "arguments" })]
        })

        yield* execute(toolset, "c1", "book_flight", { to: "NRT", passengers: 2 })
        const otherCity = yield* execute(toolset, "c2", "book_flight", { to: "HND", passengers: 2 })
        const otherCount = yield* execute(toolset, "c3", "book_flight", { to: "NRT", passengers: 3 })

        assert.isTrue(AsyncToolset.isPending(otherCity))
        assert.isTrue(AsyncToolset.isPending(otherCount))
        assert.deepStrictEqual(probe.started, ["c1", "c2", "c3"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("under duplicateScope arguments, the same arguments in another key order and spacing are a duplicate", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          tools: [bookingTool(probe, { onDuplicateCall: "reject", duplicateScope: "arguments" })]
        })

        yield* execute(toolset, "call_first", "book_flight", `{"to":"NRT","passengers":2}`)
        const same = yield* execute(toolset, "call_second", "book_flight", `{ "passengers": 2, "to": "NRT" }`)

        assert.isTrue(same.isError)
        assert.include(same.output, "call_first")
        assert.deepStrictEqual(probe.started, ["call_first"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("the toolset's duplicateScope applies to tools that set none, and the confirmation flag is not compared", () =>
      Effect.gen(function*() {
        const probe = makeProbe()
        const toolset = yield* kind.make({
          id: "travel",
          duplicateScope: "arguments",
          tools: [bookingTool(probe)]
        })

        yield* execute(toolset, "c1", "book_flight", { to: "NRT" })
        const other = yield* execute(toolset, "c2", "book_flight", { to: "HND", [confirm]: null })
        const same = yield* execute(toolset, "c3", "book_flight", { to: "NRT", [confirm]: null })

        assert.isTrue(AsyncToolset.isPending(other))
        assert.isTrue(same.isError)
        assert.include(same.output, confirm)
        assert.deepStrictEqual(probe.started, ["c1", "c2"])
      }).pipe(kind.provide(TestSession.layer)))
  })
})
