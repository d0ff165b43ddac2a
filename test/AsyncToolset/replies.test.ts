/**
 * Idle-gated, coalesced replies (rules C1–C5): what a background call says later is in the chat at
 * once, and one reply fiber asks the agent for one reply covering everything pending, only when
 * the session is idle.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Schedule, Schema, Stream } from "effect"
import { AgentSession, AsyncRunContext, AsyncToolset, FunctionTool, Prompts, ToolError } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { call, callIdsInChat, insertionsOf, namedCallIds, pairOf } from "../support/replies.ts"
import { forEachKind } from "../support/toolsets.ts"

/**
 * A background tool: says "started", then after each of `steps` seconds one more update, then
 * after `end` seconds returns "done <label>". Called with `{ label, steps, end }`.
 */
const work = FunctionTool.make("work", {
  description: "Works in the background",
  parameters: Schema.Struct({ label: Schema.String, steps: Schema.Array(Schema.Int), end: Schema.Int }),
  onDuplicateCall: "allow"
}, ({ end, label, steps }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`started ${label}`)
    for (const [i, seconds] of steps.entries()) {
      yield* Effect.sleep(Duration.seconds(seconds))
      yield* AsyncRunContext.update(`${label} step ${i + 1}`)
    }
    yield* Effect.sleep(Duration.seconds(end))
    return `done ${label}`
  }))

/** The model calls `work` with id `callId`. */
const startWork = (
  toolset: AsyncToolset.AsyncToolset,
  callId: string,
  plan: { readonly steps: ReadonlyArray<number>; readonly end: number }
) => Effect.flatMap(call(callId, "work", { label: callId, ...plan }), toolset.execute)

forEachKind("AsyncToolset replies", (kind) => {
  describe("C1 items are in the chat when they arrive", () => {
    it.effect("updates and the final result are in the chat while the agent is busy, before any reply", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const agent = yield* AgentSession.AgentSession
        const toolset = yield* kind.make({ id: "jobs", tools: [work] })
        yield* session.setBusy

        yield* startWork(toolset, "c1", { steps: [1], end: 1 })
        yield* kind.advance("1 second")

        // the agent's own next reply (made for another reason) reads the chat through the session
        assert.deepStrictEqual(callIdsInChat(yield* agent.chatContext), ["c1_update_1"])
        yield* kind.advance("1 second")
        assert.deepStrictEqual(callIdsInChat(yield* agent.chatContext), ["c1_update_1", "c1_final"])
        assert.strictEqual(pairOf(yield* agent.chatContext, "c1_final").output.output, "done c1")
        assert.deepStrictEqual(yield* session.replies, [])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("C2 one reply fiber, gated on idle", () => {
    it.effect("no reply is requested while the session is busy; once idle, exactly one reply covers everything", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [work] })
        yield* session.setBusy

        yield* startWork(toolset, "c1", { steps: [1, 1], end: 1 })
        yield* kind.advance("1 minute")

        assert.deepStrictEqual(callIdsInChat(yield* session.chat), ["c1_update_1", "c1_update_2", "c1_final"])
        assert.deepStrictEqual(yield* session.replies, [])

        yield* session.setIdle
        yield* toolset.awaitIdle

        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        const reply = replies[0]!
        assert.isFalse(reply.whileBusy)
        assert.strictEqual(reply.toolChoice, "none")
        assert.deepStrictEqual(namedCallIds(reply.instructions), ["c1_update_1", "c1_update_2", "c1_final"])
        assert.strictEqual(
          reply.instructions,
          Prompts.render(Prompts.defaults.replyAtTail, { pendingCallIds: "c1_update_1, c1_update_2, c1_final" })
        )
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("no reply is requested while busy, even when the session turns busy again as soon as it went idle", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [work] })
        yield* session.setBusy

        yield* startWork(toolset, "c1", { steps: [1], end: 1 })
        yield* kind.advance("2 seconds")
        // the agent stops speaking and the user starts at the same instant, twice
        yield* session.setIdle
        yield* session.setBusy
        yield* kind.advance("1 second")
        yield* session.setIdle
        yield* session.setBusy
        yield* kind.advance("1 second")

        assert.deepStrictEqual((yield* session.replies).filter((r) => r.whileBusy), [])

        yield* session.setIdle
        yield* toolset.awaitIdle
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        assert.isFalse(replies[0]!.whileBusy)
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("items that arrive while the reply waits for idle join that one reply", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [work] })
        yield* session.setBusy

        yield* startWork(toolset, "c1", { steps: [1], end: 2 })
        yield* kind.advance("1 second") // c1_update_1: the reply fiber takes it and waits
        yield* startWork(toolset, "c2", { steps: [1], end: 5 })
        yield* kind.advance("10 seconds")
        yield* session.setIdle
        yield* toolset.awaitIdle

        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        assert.sameMembers([...namedCallIds(replies[0]!.instructions)], ["c1_update_1", "c1_final", "c2_update_1", "c2_final"])
      }).pipe(kind.provide(TestSession.layer)))
  })

  describe("C3 several tools, one reply, nothing twice, nothing lost", () => {
    it.effect("updates from several tools arriving while busy produce one reply, each item inserted once", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [work] })
        yield* session.setBusy

        yield* startWork(toolset, "c1", { steps: [1, 2], end: 1 })
        yield* startWork(toolset, "c2", { steps: [2], end: 2 })
        yield* startWork(toolset, "c3", { steps: [], end: 3 })
        yield* kind.advance("10 seconds")
        yield* session.setIdle
        yield* toolset.awaitIdle

        const expected = ["c1_update_1", "c1_update_2", "c1_final", "c2_update_1", "c2_final", "c3_final"]
        const insertions = yield* session.insertions
        for (const id of expected) assert.deepStrictEqual(insertionsOf(insertions, id), { calls: 1, outputs: 1 })
        assert.sameMembers([...callIdsInChat(yield* session.chat)], expected)
        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        assert.sameMembers([...namedCallIds(replies[0]!.instructions)], expected)
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("an item arriving after a reply was requested gets its own reply; earlier items are not named again", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [work] })

        yield* startWork(toolset, "c1", { steps: [1], end: 1 })
        yield* kind.advance("1 second")
        yield* kind.advance("1 second")
        yield* toolset.awaitIdle

        const replies = yield* session.replies
        assert.deepStrictEqual(replies.map((r) => namedCallIds(r.instructions)), [["c1_update_1"], ["c1_final"]])
        assert.deepStrictEqual(callIdsInChat(yield* session.chat), ["c1_update_1", "c1_final"])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("an item whose insertion failed is retried and replied to, even when it arrives while a reply waits", () => {
      let failed = false
      const flaky = TestSession.layerWith({
        // the first attempt to insert c1_final fails, later ones work
        beforeInsert: (items) =>
          Effect.suspend(() => {
            if (failed || !items.some((item) => item._tag === "FunctionCall" && item.callId === "c1_final")) {
              return Effect.void
            }
            failed = true
            return Effect.fail(new AgentSession.SessionError({ operation: "insert", message: "connection reset" }))
          })
      })
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [work], sessionRetry: Schedule.recurs(3) })
        yield* session.setBusy

        yield* startWork(toolset, "c1", { steps: [1], end: 1 })
        yield* kind.advance("1 second") // c1_update_1 is in the chat; the reply fiber waits for idle
        yield* kind.advance("1 second") // c1_final arrives, its insertion fails
        yield* session.setIdle
        yield* toolset.awaitIdle

        assert.isTrue(failed)
        assert.deepStrictEqual(callIdsInChat(yield* session.chat), ["c1_update_1", "c1_final"])
        const named = (yield* session.replies).flatMap((r) => namedCallIds(r.instructions))
        assert.sameMembers(named, ["c1_update_1", "c1_final"])
      }).pipe(kind.provide(flaky))
    })

    const Seconds = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 3 }))
    const Plan = Schema.Struct({
      /** seconds before the first update (the model waits for it) */
      start: Seconds,
      /** seconds before each later update */
      steps: Schema.Array(Seconds).check(Schema.isMaxLength(3)),
      /** seconds before the tool ends */
      end: Seconds,
      ending: Schema.Literals(["result", "void", "toolError", "defect"])
    })
    /**
     * At `at` half-seconds the session turns busy, or idle, or idle and at once busy again (the
     * agent stops speaking just as the user starts).
     */
    const Flip = Schema.Struct({
      at: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 36 })),
      to: Schema.Literals(["busy", "idle", "idleThenBusy"])
    })

    it.effect.prop(
      "whatever the interleaving of updates and busy/idle flips, every item reaches the chat once and one reply covers the last",
      {
        plans: Schema.Array(Plan).check(Schema.isMinLength(1), Schema.isMaxLength(4)),
        flips: Schema.Array(Flip).check(Schema.isMaxLength(10)),
        busyAtStart: Schema.Boolean
      },
      ({ busyAtStart, flips, plans }) => {
        // the order in which the session saw insertions and reply requests
        const events: Array<{ readonly inserted: string } | { readonly replied: ReadonlyArray<string> }> = []
        const recorded = TestSession.layerWith({
          onInsert: (items) =>
            Effect.sync(() => {
              for (const item of items) if (item._tag === "FunctionCall") events.push({ inserted: item.callId })
            }),
          onReply: (request) => Effect.sync(() => events.push({ replied: namedCallIds(request.instructions) }))
        })
        const pause = (seconds: number) => seconds > 0 ? Effect.sleep(Duration.seconds(seconds)) : Effect.void
        const job = FunctionTool.make("job", {
          description: "A scripted background job",
          parameters: Schema.Struct({ plan: Schema.Int }),
          onDuplicateCall: "allow"
        }, ({ plan }) =>
          Effect.gen(function*() {
            const { end, ending, start, steps } = plans[plan]!
            yield* pause(start)
            yield* AsyncRunContext.update(`job ${plan} started`)
            for (const [i, seconds] of steps.entries()) {
              yield* pause(seconds)
              yield* AsyncRunContext.update(`job ${plan} step ${i + 1}`)
            }
            yield* pause(end)
            switch (ending) {
              case "result":
                return `job ${plan} done`
              case "void":
                return undefined
              case "toolError":
                return yield* new ToolError.ToolError({ message: `job ${plan} failed` })
              case "defect":
                return yield* Effect.die(new Error(`job ${plan} crashed`))
            }
          }))

        return Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          if (busyAtStart) yield* session.setBusy
          const toolset = yield* kind.make({ id: "prop", tools: [job] })
          const calls = yield* Effect.forEach(plans, (_, i) =>
            call(`c${i}`, "job", { plan: i }).pipe(
              Effect.flatMap(toolset.execute),
              Effect.forkChild({ startImmediately: true })
            ))

          // flips at the same instant happen back to back, with no chance for other fibers to run between
          let now = 0
          for (const flip of [...flips].sort((a, b) => a.at - b.at)) {
            if (flip.at > now) {
              yield* kind.advance(Duration.millis((flip.at - now) * 500))
              now = flip.at
            }
            if (flip.to !== "busy") yield* session.setIdle
            if (flip.to !== "idle") yield* session.setBusy
          }
          yield* session.setIdle
          yield* kind.advance("1 minute")
          yield* toolset.awaitIdle

          const firstOutputs = yield* Fiber.joinAll(calls)
          for (const output of firstOutputs) assert.isTrue(AsyncToolset.isPending(output))

          const expected = plans.flatMap(({ ending, steps }, i) => [
            ...steps.map((_, n) => `c${i}_update_${n + 1}`),
            ...(ending === "void" ? [] : [`c${i}_final`])
          ])
          // every item reached the chat exactly once, and nothing else did
          const insertions = yield* session.insertions
          for (const id of expected) assert.deepStrictEqual(insertionsOf(insertions, id), { calls: 1, outputs: 1 }, id)
          const chat = yield* session.chat
          assert.sameMembers([...callIdsInChat(chat)], expected)
          // per call, the updates and the final stand in the chat in the order the tool made them
          plans.forEach(({ ending, steps }, i) => {
            const own = callIdsInChat(chat).filter((id) => id.startsWith(`c${i}_`))
            assert.deepStrictEqual(own, [
              ...steps.map((_, n) => `c${i}_update_${n + 1}`),
              ...(ending === "void" ? [] : [`c${i}_final`])
            ])
            if (ending !== "void") assert.strictEqual(pairOf(chat, `c${i}_final`).output.isError, ending !== "result")
          })

          const replies = yield* session.replies
          assert.deepStrictEqual(replies.filter((r) => r.whileBusy), [], "a reply was requested while busy")
          for (const reply of replies) assert.strictEqual(reply.toolChoice, "none")
          // every item is named in exactly one reply, after it was inserted
          const named = new Map<string, number>()
          const inserted = new Set<string>()
          for (const event of events) {
            if ("inserted" in event) inserted.add(event.inserted)
            else {
              for (const id of event.replied) {
                assert.isTrue(inserted.has(id), `${id} was named before it was in the chat`)
                named.set(id, (named.get(id) ?? 0) + 1)
              }
            }
          }
          assert.sameMembers([...named.keys()], expected)
          for (const [id, times] of named) assert.strictEqual(times, 1, `${id} named ${times} times`)
          // exactly one reply came after the last insertion, and it saw the whole chat
          const lastInsertion = events.findLastIndex((e) => "inserted" in e)
          const repliesAfter = events.slice(lastInsertion + 1).filter((e) => "replied" in e).length
          assert.strictEqual(repliesAfter, expected.length === 0 ? 0 : 1)
          if (expected.length > 0) assert.strictEqual(replies[replies.length - 1]!.chatLength, chat.items.length)
        }).pipe(kind.provide(recorded))
      },
      { arbitrary: { runs: 50, seed: 20250601 } }
    )
  })

  describe("C4e replyTimeout counts how long the session takes to take a request up", () => {
    it.effect("after a failed request, a user who speaks for longer than replyTimeout does not cost the items their reply", () => {
      let requests = 0
      return Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [work], replyTimeout: "10 seconds", sessionRetry: Schedule.spaced("1 second") })
        const skipped = yield* toolset.events.pipe(
          Stream.filter((e) => e._tag === "ReplySkipped"),
          Stream.runCollect,
          Effect.forkChild({ startImmediately: true })
        )
        yield* startWork(toolset, "c1", { steps: [], end: 1 })
        yield* kind.advance("1 second") // the result is in; the request fails
        assert.strictEqual(requests, 1)
        yield* session.setBusy // the user speaks for a minute before the retry can go out
        yield* kind.advance("1 minute")
        yield* session.setIdle
        yield* toolset.awaitIdle
        assert.strictEqual(requests, 2)
        assert.deepStrictEqual((yield* session.replies).map((r) => namedCallIds(r.instructions)), [["c1_final"], ["c1_final"]])
        yield* toolset.close
        assert.deepStrictEqual(yield* Fiber.join(skipped), [], "nothing given up")
      }).pipe(kind.provide(TestSession.layerWith({
        onReply: () =>
          Effect.suspend(() =>
            ++requests === 1
              ? Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "the model provider is down" }))
              : Effect.void
          )
      })))
    })
  })

  describe("C4 when the agent already spoke after the pending items", () => {
    it.effect("the reply lets the model answer empty when the agent spoke after the items", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [work] })
        yield* session.setBusy

        yield* startWork(toolset, "c1", { steps: [], end: 1 })
        yield* kind.advance("1 second")
        yield* kind.advance("1 second")
        yield* session.say("assistant", "Your job c1 is done.")
        yield* session.setIdle
        yield* toolset.awaitIdle

        const replies = yield* session.replies
        assert.strictEqual(replies.length, 1)
        const { instructions } = replies[0]!
        assert.strictEqual(instructions, Prompts.render(Prompts.defaults.replyMaybeCovered, { pendingCallIds: "c1_final" }))
        assert.notStrictEqual(instructions, Prompts.render(Prompts.defaults.replyAtTail, { pendingCallIds: "c1_final" }))
        assert.include(instructions, "empty")
        assert.strictEqual(replies[0]!.toolChoice, "none")
      }).pipe(kind.provide(TestSession.layer)))

    it.effect("with whenAlreadyAnswered skip, no reply is requested when the agent spoke after the items", () =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const toolset = yield* kind.make({ id: "jobs", tools: [work], whenAlreadyAnswered: "skip" })
        yield* session.setBusy

        yield* startWork(toolset, "c1", { steps: [], end: 1 })
        yield* kind.advance("1 second")
        yield* kind.advance("1 second")
        yield* session.say("assistant", "Your job c1 is done.")
        yield* session.setIdle
        yield* toolset.awaitIdle

        assert.deepStrictEqual(callIdsInChat(yield* session.chat), ["c1_final"])
        assert.deepStrictEqual(yield* session.replies, [])
      }).pipe(kind.provide(TestSession.layer)))

    it.effect.each([{ option: "ask" as const }, { option: "skip" as const }])(
      "with whenAlreadyAnswered $option, the at-tail reply is requested when the agent spoke only before the items",
      ({ option }) =>
        Effect.gen(function*() {
          const session = yield* TestSession.TestSession
          const toolset = yield* kind.make({ id: "jobs", tools: [work], whenAlreadyAnswered: option })
          yield* session.setBusy
          yield* session.say("assistant", "I started job c1.")

          yield* kind.advance("1 second")
          yield* startWork(toolset, "c1", { steps: [], end: 1 })
          yield* kind.advance("1 second")
          yield* session.say("user", "Thanks!")
          yield* session.setIdle
          yield* toolset.awaitIdle

          const replies = yield* session.replies
          assert.strictEqual(replies.length, 1)
          assert.strictEqual(
            replies[0]!.instructions,
            Prompts.render(Prompts.defaults.replyAtTail, { pendingCallIds: "c1_final" })
          )
        }).pipe(kind.provide(TestSession.layer))
    )
  })

  describe("C5 every prompt text is an option", () => {
    const stringPrompts = {
      update: "UPDATE {functionName}|{callId}|{message}",
      duplicateReject: "REJECT {functionName}|{cancelTool}|{runningCalls}",
      duplicateConfirm: "CONFIRM {functionName}|{confirmParameter}|{cancelTool}|{runningCalls}",
      replyAtTail: "TAIL {pendingCallIds}",
      replyMaybeCovered: "COVERED {pendingCallIds}"
    }
    const functionPrompts: Partial<Prompts.Prompts> = {
      update: ({ callId, functionName, message }) => `UPDATE ${functionName}|${callId}|${message}`,
      duplicateReject: ({ cancelTool, functionName, runningCalls }) => `REJECT ${functionName}|${cancelTool}|${runningCalls}`,
      duplicateConfirm: ({ cancelTool, confirmParameter, functionName, runningCalls }) =>
        `CONFIRM ${functionName}|${confirmParameter}|${cancelTool}|${runningCalls}`,
      replyAtTail: ({ pendingCallIds }) => `TAIL ${pendingCallIds}`,
      replyMaybeCovered: ({ pendingCallIds }) => `COVERED ${pendingCallIds}`
    }

    it.effect.each([{ form: "strings with {placeholders}", prompts: stringPrompts }, {
      form: "functions",
      prompts: functionPrompts
    }])("prompts given as $form replace the update, duplicate and reply texts", ({ prompts }) =>
      Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        const rejecting = FunctionTool.make("export_data", { description: "Exports", onDuplicateCall: "reject" }, () =>
          Effect.andThen(AsyncRunContext.update("exporting"), Effect.never))
        const confirming = FunctionTool.make("send_report", { description: "Sends" }, () =>
          Effect.andThen(AsyncRunContext.update("sending"), Effect.never))
        const toolset = yield* kind.make({ id: "jobs", tools: [work, rejecting, confirming], prompts })
        yield* session.setBusy

        // update: the first update (the call's output) and a later one (in the chat)
        const first = yield* startWork(toolset, "c1", { steps: [1], end: 1 })
        assert.strictEqual(first.output, "UPDATE work|c1|started c1")
        yield* kind.advance("1 second")
        assert.strictEqual(pairOf(yield* session.chat, "c1_update_1").output.output, "UPDATE work|c1|c1 step 1")

        // duplicateReject and duplicateConfirm
        yield* toolset.execute(yield* call("e1", "export_data"))
        const rejected = yield* toolset.execute(yield* call("e2", "export_data"))
        assert.match(rejected.output, /^REJECT export_data\|cancel_task_jobs\|.*e1/s)
        yield* toolset.execute(yield* call("s1", "send_report"))
        const unconfirmed = yield* toolset.execute(yield* call("s2", "send_report"))
        assert.match(unconfirmed.output, /^CONFIRM send_report\|confirm_duplicate\|cancel_task_jobs\|.*s1/s)

        yield* toolset.cancel("e1")
        yield* toolset.cancel("s1")

        // replyAtTail
        yield* kind.advance("1 second")
        yield* session.setIdle
        yield* toolset.awaitIdle
        assert.deepStrictEqual((yield* session.replies).map((r) => r.instructions), ["TAIL c1_update_1, c1_final"])

        // replyMaybeCovered
        yield* session.setBusy
        yield* startWork(toolset, "c2", { steps: [], end: 1 })
        yield* kind.advance("1 second")
        yield* session.say("assistant", "Job c2 is done.")
        yield* session.setIdle
        yield* toolset.awaitIdle
        assert.deepStrictEqual((yield* session.replies).map((r) => r.instructions), [
          "TAIL c1_update_1, c1_final",
          "COVERED c2_final"
        ])
      }).pipe(kind.provide(TestSession.layer)))
  })
})
