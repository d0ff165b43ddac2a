/**
 * The first-update hand-off (rules B1–B6): a call returns to the model at its first `update`, the
 * tool goes on in the background, and what it says later reaches the chat as numbered pairs.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, References, Schema } from "effect"
import { AsyncRunContext, AsyncToolset, FunctionTool, Prompts, ToolError } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { call, callIdsInChat, insertionsOf, namedCallIds, pairOf } from "../support/replies.ts"
import { forEachKind } from "../support/toolsets.ts"

class SoldOut extends Schema.TaggedError<SoldOut>()("SoldOut", { flight: Schema.String }) {}

const Booking = Schema.Struct({ to: Schema.String })

/** A booking tool that says where it looks, says two more things a second apart, and books. */
const bookFlight = FunctionTool.make("book_flight", {
  description: "Book a flight",
  parameters: Booking,
  success: Schema.Struct({ confirmation: Schema.String })
}, ({ to }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`looking up flights to ${to}`)
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("found 3 flights")
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("holding seat 12A")
    yield* Effect.sleep("1 second")
    return { confirmation: "FL-847293" }
  }))

forEachKind("AsyncToolset hand-off", (kind) => {
  describe("B1 every call runs in a background fiber with AsyncRunContext", () => {
    it.effect("a tool reads its own call and toolset from AsyncRunContext", () =>
      Effect.gen(function*() {
        const whoAmI = FunctionTool.make("who_am_i", { description: "Reports its call" }, () =>
          Effect.gen(function*() {
            const functionCall = yield* AsyncRunContext.functionCall
            const context = yield* AsyncRunContext.AsyncRunContext
            return `${functionCall.callId} ${functionCall.name} ${functionCall.arguments} ${context.toolsetId}`
          }))
        const toolset = yield* kind.make({ id: "travel", tools: [whoAmI] })

        const output = yield* toolset.execute(yield* call("c1", "who_am_i"))

        assert.strictEqual(output.output, "c1 who_am_i {} travel")
        assert.isFalse(output.isError)
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("execute returns while the tool keeps running, and runningTasks lists the call", () =>
      Effect.gen(function*() {
        const proceed = yield* Deferred.make<void>()
        let finished = false
        const search = FunctionTool.make("search", { description: "Searches" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("searching")
            yield* Deferred.await(proceed)
            finished = true
            return "3 results"
          }))
        const toolset = yield* kind.make({ id: "travel", tools: [search] })

        const output = yield* toolset.execute(yield* call("c1", "search"))

        assert.isTrue(AsyncToolset.isPending(output))
        assert.isFalse(finished)
        const running = yield* toolset.runningTasks
        assert.deepStrictEqual(running.map((t) => [t.callId, t.name, t.status]), [["c1", "search", "running"]])

        yield* Deferred.succeed(proceed, undefined)
        yield* toolset.awaitIdle

        assert.isTrue(finished)
        assert.deepStrictEqual(yield* toolset.runningTasks, [])
        const session = yield* TestSession.TestSession
        assert.strictEqual(pairOf(yield* session.chat, "c1_final").output.output, "3 results")
      }).pipe(kind.provide(TestSession.layer)))
    it.effect("a tool that needs a Scope gets one per call, closed when the call ends, not when the toolset closes", () =>
      Effect.gen(function*() {
        const released: Array<string> = []
        const withConnection = FunctionTool.make("with_connection", { description: "Holds a connection" }, () =>
          Effect.gen(function*() {
            const { callId } = yield* AsyncRunContext.functionCall
            yield* Effect.acquireRelease(Effect.void, () => Effect.sync(() => released.push(callId)))
            yield* AsyncRunContext.update("connected")
            yield* Effect.sleep("1 second")
            return "done"
          }))
        const toolset = yield* kind.make({ id: "db", tools: [withConnection], onDuplicateCall: "allow" })

        yield* toolset.execute(yield* call("c1", "with_connection"))
        yield* toolset.execute(yield* call("c2", "with_connection"))
        assert.deepStrictEqual(released, [])
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle

        assert.deepStrictEqual(released.toSorted(), ["c1", "c2"]) // the toolset is still open
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("B2 the first update completes the call", () => {
    it.effect("the model gets the first update through the update template, marked as still running", () =>
      Effect.gen(function*() {
        const toolset = yield* kind.make({ id: "travel", tools: [bookFlight] })

        const output = yield* toolset.execute(yield* call("c1", "book_flight", { to: "NRT" }))

        assert.strictEqual(output.callId, "c1")
        assert.strictEqual(output.name, "book_flight")
        assert.isFalse(output.isError)
        assert.isTrue(AsyncToolset.isPending(output))
        assert.include(output.output, "book_flight")
        assert.include(output.output, "c1")
        assert.include(output.output, "looking up flights to NRT")
        assert.strictEqual(
          output.output,
          Prompts.render(Prompts.defaults.update, {
            functionName: "book_flight",
            callId: "c1",
            message: "looking up flights to NRT"
          })
        )
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a first update that is not a string reaches the model as its JSON, unwrapped", () =>
      Effect.gen(function*() {
        const search = FunctionTool.make("search", { description: "Searches" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update({ step: "search", found: 3, airlines: ["JL", "NH"] })
            yield* Effect.sleep("1 second")
            return "done"
          }))
        const toolset = yield* kind.make({ id: "travel", tools: [search] })

        const output = yield* toolset.execute(yield* call("c1", "search"))

        assert.strictEqual(output.output, `{"step":"search","found":3,"airlines":["JL","NH"]}`)
        assert.isTrue(AsyncToolset.isPending(output))
        assert.isFalse(output.isError)
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("the tool goes on after its first update and its result arrives later", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "travel", tools: [bookFlight] })

        yield* toolset.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        assert.deepStrictEqual(callIdsInChat(yield* session.chat), [])
        yield* kind.advance("3 seconds")
        yield* toolset.awaitIdle

        const final = pairOf(yield* session.chat, "c1_final").output
        assert.strictEqual(final.output, `{"confirmation":"FL-847293"}`)
        assert.isFalse(final.isError)
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("B3 a tool that never updates is a plain blocking tool", () => {
    const blocking: ReadonlyArray<{ readonly outcome: string; readonly tool: FunctionTool.Any }> = [
      {
        outcome: "a string result",
        tool: FunctionTool.make("lookup", { description: "Looks up" }, () => Effect.succeed("Sunny in Tokyo"))
      },
      {
        outcome: "a result encoded with its success schema",
        tool: FunctionTool.make("lookup", {
          description: "Looks up",
          success: Schema.Struct({ city: Schema.String, celsius: Schema.Number })
        }, () => Effect.succeed({ city: "Tokyo", celsius: 21 }))
      },
      { outcome: "a void result", tool: FunctionTool.make("lookup", { description: "Looks up" }, () => Effect.void) },
      {
        outcome: "a declared typed failure",
        tool: FunctionTool.make("lookup", { description: "Looks up", failure: SoldOut }, () =>
          Effect.fail(new SoldOut({ flight: "FL-1" })))
      },
      {
        outcome: "a ToolError",
        tool: FunctionTool.make("lookup", { description: "Looks up" }, () =>
          Effect.fail(new ToolError.ToolError({ message: "The weather service is down." })))
      },
      {
        outcome: "a defect",
        tool: FunctionTool.make("lookup", { description: "Looks up" }, () => Effect.die(new Error("secret stack detail")))
      },
      {
        // (on the durable toolset too: not taken for its workflow engine's interruption, which
        // would leave the call running for good)
        outcome: "an interruption of its own",
        tool: FunctionTool.make("lookup", { description: "Looks up" }, () => Effect.interrupt)
      }
    ]

    it.effect.each(blocking)("with $outcome the model gets what FunctionTool.execute gives, and nothing else happens", ({ tool }) =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "weather", tools: [tool] })
        const theCall = yield* call("c1", "lookup")

        const output = yield* toolset.execute(theCall)
        const plain = yield* FunctionTool.execute(tool, theCall)
        yield* toolset.awaitIdle

        assert.strictEqual(output.output, plain.output)
        assert.strictEqual(output.isError, plain.isError)
        assert.strictEqual(output.callId, "c1")
        assert.isFalse(AsyncToolset.isPending(output))
        assert.deepStrictEqual(yield* session.insertions, [])
        assert.deepStrictEqual(yield* session.replies, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("execute waits for a tool that never updates, however long it takes", () =>
      Effect.gen(function*() {
        const slow = FunctionTool.make("slow_lookup", { description: "Looks up slowly" }, () =>
          Effect.as(Effect.sleep("10 seconds"), "found it"))
        const toolset = yield* kind.make({ id: "weather", tools: [slow] })

        const fiber = yield* toolset.execute(yield* call("c1", "slow_lookup")).pipe(
          Effect.forkChild({ startImmediately: true })
        )
        yield* kind.advance("9 seconds")
        assert.isUndefined(fiber.pollUnsafe())
        yield* kind.advance("1 second")

        const output = yield* Fiber.join(fiber)
        assert.strictEqual(output.output, "found it")
        assert.isFalse(AsyncToolset.isPending(output))
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("B4 later updates reach the chat at once as numbered pairs", () => {
    it.effect("each later update inserts <callId>_update_<n> while the agent is busy, before any reply", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "travel", tools: [bookFlight] })
        yield* session.setBusy
        const original = yield* call("c1", "book_flight", { to: "NRT" })

        yield* toolset.execute(original)
        yield* kind.advance("1 second")

        const first = pairOf(yield* session.chat, "c1_update_1")
        assert.strictEqual(first.call.name, "book_flight")
        assert.strictEqual(first.call.arguments, original.arguments)
        assert.strictEqual(first.output.name, "book_flight")
        assert.isFalse(first.output.isError)
        assert.strictEqual(
          first.output.output,
          Prompts.render(Prompts.defaults.update, { functionName: "book_flight", callId: "c1", message: "found 3 flights" })
        )
        assert.deepStrictEqual(yield* session.replies, [])

        yield* kind.advance("1 second")

        assert.include(pairOf(yield* session.chat, "c1_update_2").output.output, "holding seat 12A")
        assert.deepStrictEqual(callIdsInChat(yield* session.chat), ["c1_update_1", "c1_update_2"])
        assert.deepStrictEqual(yield* session.replies, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a later update that is not a string is inserted as its JSON", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const search = FunctionTool.make("search", { description: "Searches" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("searching")
            yield* AsyncRunContext.update({ found: 3 })
          }))
        const toolset = yield* kind.make({ id: "travel", tools: [search] })

        yield* toolset.execute(yield* call("c1", "search"))
        yield* toolset.awaitIdle

        assert.strictEqual(pairOf(yield* session.chat, "c1_update_1").output.output, `{"found":3}`)
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("later updates schedule a reply that names them", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const search = FunctionTool.make("search", { description: "Searches" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("searching")
            yield* AsyncRunContext.update("found 3")
          }))
        const toolset = yield* kind.make({ id: "travel", tools: [search] })

        yield* toolset.execute(yield* call("c1", "search"))
        yield* toolset.awaitIdle

        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        assert.deepStrictEqual(namedCallIds(replies[0]!.instructions), ["c1_update_1"])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("B5 the final result after an update", () => {
    it.effect("the final result is inserted as <callId>_final and a reply is requested for it", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "travel", tools: [bookFlight] })
        yield* session.setBusy

        yield* toolset.execute(yield* call("c1", "book_flight", { to: "NRT" }))
        yield* kind.advance("3 seconds")

        const final = pairOf(yield* session.chat, "c1_final")
        assert.strictEqual(final.call.name, "book_flight")
        assert.strictEqual(final.output.output, `{"confirmation":"FL-847293"}`)
        assert.isFalse(final.output.isError)
        assert.deepStrictEqual(callIdsInChat(yield* session.chat), ["c1_update_1", "c1_update_2", "c1_final"])

        yield* session.setIdle
        yield* toolset.awaitIdle
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        assert.include(namedCallIds(replies[0]!.instructions), "c1_final")
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a void final result inserts nothing and, with nothing else pending, requests no reply", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const notify = FunctionTool.make("notify", { description: "Notifies" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("sending")
            yield* Effect.sleep("1 second")
          }))
        const toolset = yield* kind.make({ id: "travel", tools: [notify] })

        const output = yield* toolset.execute(yield* call("c1", "notify"))
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle

        assert.isTrue(AsyncToolset.isPending(output))
        assert.deepStrictEqual(yield* session.insertions, [])
        assert.deepStrictEqual(yield* session.replies, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("a final result of undefined inserts nothing after later updates, and only the updates are replied to", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const notify = FunctionTool.make("notify", { description: "Notifies" }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("sending")
            yield* Effect.sleep("1 second")
            yield* AsyncRunContext.update("sent to 2 of 3")
            yield* Effect.sleep("1 second")
            return undefined
          }))
        const toolset = yield* kind.make({ id: "travel", tools: [notify] })
        yield* session.setBusy

        yield* toolset.execute(yield* call("c1", "notify"))
        yield* kind.advance("2 seconds")
        yield* session.setIdle
        yield* toolset.awaitIdle

        assert.deepStrictEqual(callIdsInChat(yield* session.chat), ["c1_update_1"])
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        assert.deepStrictEqual(namedCallIds(replies[0]!.instructions), ["c1_update_1"])
      }).pipe(kind.provide(TestSession.layer)))

    const failures: ReadonlyArray<{
      readonly outcome: string
      readonly failure: Effect.Effect<never, SoldOut | ToolError.ToolError>
      readonly check: (text: string) => void
    }> = [
      {
        outcome: "a declared typed failure",
        failure: Effect.fail(new SoldOut({ flight: "FL-1" })),
        check: (text) => assert.deepStrictEqual(JSON.parse(text), { _tag: "SoldOut", flight: "FL-1" })
      },
      {
        outcome: "a ToolError",
        failure: Effect.fail(new ToolError.ToolError({ message: "No seats left on FL-1." })),
        check: (text) => assert.strictEqual(text, "No seats left on FL-1.")
      },
      {
        outcome: "a defect",
        failure: Effect.die(new Error("secret stack detail")),
        check: (text) => {
          assert.strictEqual(text, FunctionTool.internalError("book_seat").output)
          assert.notInclude(text, "secret stack detail")
        }
      }
    ]

    it.effect.each(failures)("$outcome after an update is delivered as an error output <callId>_final", ({ failure, check }) =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const bookSeat = FunctionTool.make("book_seat", { description: "Books a seat", failure: SoldOut }, () =>
          Effect.gen(function*() {
            yield* AsyncRunContext.update("booking")
            yield* Effect.sleep("1 second")
            return yield* failure
          }))
        const toolset = yield* kind.make({ id: "travel", tools: [bookSeat] })

        const output = yield* toolset.execute(yield* call("c1", "book_seat"))
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle

        assert.isTrue(AsyncToolset.isPending(output))
        const final = pairOf(yield* session.chat, "c1_final")
        assert.isTrue(final.output.isError)
        check(final.output.output)
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        assert.deepStrictEqual(namedCallIds(replies[0]!.instructions), ["c1_final"])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("B6 synthetic call ids", () => {
    it.effect("synthetic ids add only [A-Za-z0-9_-] to the original id", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "travel", tools: [bookFlight] })
        const original = "call_Ab-9"

        yield* toolset.execute(yield* call(original, "book_flight", { to: "NRT" }))
        yield* kind.advance("3 seconds")
        yield* toolset.awaitIdle

        const ids = callIdsInChat(yield* session.chat)
        assert.deepStrictEqual(ids, [`${original}_update_1`, `${original}_update_2`, `${original}_final`])
        for (const id of ids) {
          assert.isTrue(id.startsWith(original))
          assert.match(id.slice(original.length), /^[A-Za-z0-9_-]+$/)
        }
        for (const id of ids) assert.deepStrictEqual(insertionsOf(yield* session.insertions, id), { calls: 1, outputs: 1 })
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("B7 call ids stay unique in the chat, whatever ids the model sends", () => {
    it.effect("a model call whose id equals a running call's future <id>_update_1 never makes two chat items share it", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "travel", tools: [bookFlight], onDuplicateCall: "allow" })

        const first = yield* call("job", "book_flight", { to: "NRT" })
        yield* session.insert([first, yield* toolset.execute(first)]) // as the agent stores it
        const clash = yield* call("job_update_1", "book_flight", { to: "KIX" }) // a later answer's call id
        yield* session.insert([clash, yield* toolset.execute(clash)])
        yield* kind.advance("3 seconds")
        yield* toolset.awaitIdle

        const calls = (yield* session.chat).items.filter((i) => i._tag === "FunctionCall").map((i) => i.callId)
        assert.strictEqual(new Set(calls).size, calls.length, `a call id twice: ${calls.join(", ")}`)
        const outputs = (yield* session.chat).items.filter((i) => i._tag === "FunctionCallOutput").map((i) => i.callId)
        assert.strictEqual(new Set(outputs).size, outputs.length, `an output id twice: ${outputs.join(", ")}`)
        // job's updates and result are all there, its first later update under an id of its own
        assert.includeMembers(calls, ["job", "job_update_1", "job_update_1_2", "job_update_2", "job_final"])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("B9 a caller interrupted while it waits for the first output gets it, or the call is withdrawn", () => {
    /** Says "started" at once (inline), then "half way" after 1 s, then "done" after 1 s. */
    const worker = FunctionTool.make("w", { description: "w", onDuplicateCall: "allow" }, () =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update("started")
        yield* Effect.sleep("1 second")
        yield* AsyncRunContext.update("half way")
        yield* Effect.sleep("1 second")
        return "done"
      }))
    for (const budget of [1, 2, 3, 5, 8, 16, 64, 2048]) {
      it.effect(`interrupted after any number of its steps, at MaxOpsBeforeYield ${budget}`, () =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* kind.make({ id: "t", tools: [worker] })
          // The caller's fiber has done `spent` operations of its own before it calls execute, so
          // that it reaches its yield budget at each step of execute in turn; it is interrupted
          // after `k` turns of the scheduler.
          const spent = [...new Set(Array.from({ length: Math.min(budget, 24) + 1 }, (_, i) => Math.max(0, budget - i)))]
          const answered = new Set<string>()
          const ids: Array<string> = []
          for (const n of spent) {
            for (const k of [0, 1, 2, 3]) {
              const id = `c${n}x${k}`
              ids.push(id)
              const burn = Effect.forEach(Array.from({ length: n }), () => Effect.void, { discard: true })
              const caller = yield* Effect.forkChild(
                Effect.andThen(
                  burn,
                  Effect.onExit(
                    Effect.flatMap(call(id, "w"), toolset.execute),
                    (exit) => Effect.sync(() => Exit.isSuccess(exit) && answered.add(id))
                  )
                ).pipe(Effect.provideService(References.MaxOpsBeforeYield, budget)),
                { startImmediately: true }
              )
              for (let i = 0; i < k; i++) yield* Effect.yieldNow
              yield* Fiber.interrupt(caller)
            }
          }
          yield* kind.advance("5 seconds")
          yield* toolset.awaitIdle
          const chat = yield* session.chat
          const lost = ids.filter((id) => !answered.has(id) && chat.items.some((i) => i._tag !== "ChatMessage" && i.callId.startsWith(`${id}_`)))
          assert.deepStrictEqual(lost, [], "their callers got no output, yet the calls went on and spoke")
        }).pipe(kind.provide(TestSession.layer)))
    }
  })
})

