/**
 * Invariants under random schedules, on both toolsets. Seeded property tests: random interleavings
 * of calls, updates, finals, failures, defects, cancels, timeouts, duplicate call ids, busy/idle
 * flips and a close, on the test clock. After each run:
 * - every item a call delivered (while it ran) is in the chat exactly once, or reported in the log;
 * - nothing a call produces after its cancellation is inserted, nor anything produced after close;
 * - every function call in the chat has exactly one output (no dangling call);
 * - every item in the chat is named in one reply, or reported, or the toolset closed before it;
 * - every `execute` returned; the running registry is empty once all calls end;
 * - no fiber outlives `close` (counted through Effect's fiber runtime metrics hook); a durable
 *   toolset's calls go on in the workflow engine after close, so there it is checked after drain.
 *
 * The in-memory toolset gets `RELIABILITY_RUNS` runs (default 40) at the default yield setting and
 * half as many at the others; the durable one (a store's statements per step) 10 per setting by
 * default, `RELIABILITY_DURABLE_RUNS` (or `RELIABILITY_RUNS`) for more.
 * `RELIABILITY_RUNS=2000 npx vitest run test/AsyncToolset/properties.test.ts` runs more (and
 * `RELIABILITY_SEED` picks another seed).
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Clock, Duration, Effect, Exit, Fiber, References, Schedule, Schema, Scope, Stream } from "effect"
import { AsyncRunContext, FunctionTool, ToolError } from "effect-async-toolset"
import type { ChatContext } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import {
  captureLogs,
  chatCallIds,
  chatProblems,
  faultySession,
  makeFiberCounter,
  modelCall,
  namedCallIds,
  whileClockRuns
} from "../support/reliability.ts"
import type { Fault } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"
import type { Kind } from "../support/toolsets.ts"
import { yieldsFor } from "../support/schedules.ts"

const runs = Number(process.env["RELIABILITY_RUNS"] ?? 40)
/** Runs per setting on the durable toolset. */
const durableRuns = Number(process.env["RELIABILITY_DURABLE_RUNS"] ?? process.env["RELIABILITY_RUNS"] ?? 10)
const seed = Number(process.env["RELIABILITY_SEED"] ?? 20251124)
/**
 * The scheduler yield settings (`References.MaxOpsBeforeYield`) each property runs under: fibers
 * that yield every few steps interleave differently. `TEST_YIELDS=3,4,7` picks others; the
 * default setting (2048) gets `runs` runs, the others half as many.
 */

// --- the schedule ---------------------------------------------------------------------------------

const Seconds = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 3 }))

/** What one call does: which tool, when it updates, how it ends. */
const Plan = Schema.Struct({
  tool: Schema.Literals(["job", "stubborn", "timed", "single", "pinned"]),
  /** seconds before the first update (the model waits for it) */
  start: Seconds,
  /** seconds before each later update */
  steps: Schema.Array(Seconds).check(Schema.isMaxLength(3)),
  /** seconds before the tool ends */
  end: Seconds,
  ending: Schema.Literals(["result", "void", "toolError", "defect", "never"])
})
type Plan = typeof Plan.Type

/** What an op does, by weight: calls are the most frequent. */
const kinds = ["call", "call", "call", "call", "duplicateId", "cancel", "cancel", "busy", "idle", "idleThenBusy"] as const

/** Something that happens at `at` half-seconds. `plan` and `target` pick a plan and an earlier call. */
const Op = Schema.Struct({
  at: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 30 })),
  kind: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: kinds.length - 1 })),
  plan: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 5 })),
  target: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 7 }))
})

const Scenario = {
  plans: Schema.Array(Plan).check(Schema.isMinLength(1), Schema.isMaxLength(6)),
  ops: Schema.Array(Op).check(Schema.isMinLength(3), Schema.isMaxLength(16)),
  busyAtStart: Schema.Boolean,
  /** close at this many half-seconds; above 30 (three runs in four), the run ends with drain and close instead */
  closeAt: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 123 }))
}

/** Session faults: every n-th insertion attempt fails; every n-th reply request fails, dies or hangs (0: never). */
const Faults = Schema.Struct({
  insertFailEvery: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 3 })),
  replyFailEvery: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 3 })),
  replyFault: Schema.Literals(["fail", "die", "hang"])
})
type Faults = typeof Faults.Type

const timeout = Duration.seconds(4)

/** What the runs tried, summed (printed with `RELIABILITY_STATS=1`, for docs/reliability.md). */
const stats = {
  runs: 0,
  calls: 0,
  duplicateIds: 0,
  cancelled: 0,
  closedEarly: 0,
  itemsProduced: 0,
  itemsInserted: 0,
  timeoutNotices: 0,
  replies: 0,
  insertAttempts: 0,
  insertFailures: 0,
  replyAttempts: 0,
  replyFailures: 0,
  errorLogs: 0
}

// --- one run --------------------------------------------------------------------------------------

/** What happened, in the order it happened (everything runs on one thread, so the order is exact). */
type Event =
  | { readonly _tag: "produced"; readonly call: string; readonly item: string; readonly ms: number; readonly startedMs: number; readonly timed: boolean }
  | { readonly _tag: "inserted"; readonly item: string }
  | { readonly _tag: "cancelled"; readonly call: string }
  | { readonly _tag: "closing" }

interface Made {
  readonly callId: string
  readonly kind: "call" | "duplicateId"
  /** made after close began: refused as shut down */
  readonly late: boolean
  readonly fiber: Fiber.Fiber<ChatContext.FunctionCallOutput>
}

const everyNth = (n: number, fault: Fault) => (attempt: number): Fault => n > 0 && attempt % n === 0 ? fault : "ok"

const scenario = (
  kind: Kind,
  { busyAtStart, closeAt, ops, plans }: {
    readonly plans: ReadonlyArray<Plan>
    readonly ops: ReadonlyArray<typeof Op.Type>
    readonly busyAtStart: boolean
    readonly closeAt: number
  },
  faults: Faults | undefined
) => {
  const timeline: Array<Event> = []
  let insertAttempts = 0
  let replyAttempts = 0
  const faulty = faultySession(
    faults === undefined ? {} : {
      insert: () => everyNth(faults.insertFailEvery, "fail")(++insertAttempts),
      generateReply: () => everyNth(faults.replyFailEvery, faults.replyFault)(++replyAttempts)
    },
    {
      onInsert: (items) =>
        Effect.sync(() => {
          for (const item of items) if (item._tag === "FunctionCall") timeline.push({ _tag: "inserted", item: item.callId })
        })
    }
  )
  const logs = captureLogs()
  const fibers = makeFiberCounter()

  /** Every tool runs the plan it is given, and writes down each item it produces. */
  const scripted = (name: Plan["tool"], options: FunctionTool.Options, uninterruptibleAfterFirst: boolean) =>
    FunctionTool.make(name, { description: `scripted ${name}`, parameters: Schema.Struct({ plan: Schema.Int }), ...options }, ({ plan }) =>
      Effect.gen(function*() {
        const { end, ending, start, steps } = plans[plan]!
        const { callId } = yield* AsyncRunContext.functionCall
        const startedMs = yield* Clock.currentTimeMillis
        const produced = (item: string) =>
          Effect.flatMap(Clock.currentTimeMillis, (ms) =>
            Effect.sync(() => timeline.push({ _tag: "produced", call: callId, item, ms, startedMs, timed: name === "timed" })))
        const pause = (seconds: number) => seconds > 0 ? Effect.sleep(Duration.seconds(seconds)) : Effect.void

        yield* pause(start)
        yield* AsyncRunContext.update(`${callId} started`)
        const rest = Effect.gen(function*() {
          for (const [i, seconds] of steps.entries()) {
            yield* pause(seconds)
            // written down in the same step in which the toolset gets it: no fiber runs between
            yield* Effect.andThen(produced(`${callId}_update_${i + 1}`), AsyncRunContext.update(`${callId} step ${i + 1}`))
              .pipe(Effect.provideService(References.PreventSchedulerYield, true))
          }
          yield* pause(end)
          // stubborn and pinned calls must end by themselves, or close (and drain) would wait forever
          const how = ending === "never" && (uninterruptibleAfterFirst || options.cancellable === false) ? "result" : ending
          switch (how) {
            case "result":
              yield* produced(`${callId}_final`)
              return `${callId} done`
            case "void":
              return undefined
            case "toolError":
              yield* produced(`${callId}_final`)
              return yield* new ToolError.ToolError({ message: `${callId} failed` })
            case "defect":
              yield* produced(`${callId}_final`)
              return yield* Effect.die(new Error(`${callId} crashed`))
            case "never":
              return yield* Effect.never
          }
        })
        return yield* uninterruptibleAfterFirst ? Effect.uninterruptible(rest) : rest
      }))

  const tools = [
    scripted("job", {}, false),
    scripted("stubborn", {}, true),
    scripted("timed", { timeout }, false),
    scripted("single", { onDuplicateCall: "reject" }, false),
    scripted("pinned", { cancellable: false }, false)
  ]

  return fibers.track(Effect.gen(function*() {
    // TestClock's first sleep briefly makes the sleeping fiber interruptible (to start its "the
    // clock did not move" warning), even inside an uninterruptible region: move the clock once.
    yield* kind.advance("0 millis")
    const session = yield* TestSession.TestSession
    if (busyAtStart) yield* session.setBusy
    const scope = yield* Scope.make()
    const toolset = yield* kind.make({
      id: "prop",
      tools,
      onDuplicateCall: "allow",
      sessionRetry: Schedule.recurs(2)
    }).pipe(Scope.provide(scope))

    // How each call ended: a result the tool produced counts as handed over only if its handler
    // returned it to the toolset (the call ended "done" or "error"); a call interrupted first (by
    // close, say) never handed it over.
    const outcomes = new Map<string, string>()
    const listener = yield* toolset.events.pipe(
      Stream.runForEach((e) => Effect.sync(() => e._tag === "CallEnded" && outcomes.set(e.callId, e.outcome))),
      Effect.provideService(References.PreventSchedulerYield, true),
      Effect.forkChild({ startImmediately: true })
    )
    const made: Array<Made> = []
    const calls: Array<string> = []
    const planOf = new Map<string, Plan>()
    let closing: Fiber.Fiber<void> | undefined
    // The close is written down in the same step in which the toolset learns of it (no other
    // fiber runs between), so "after close" means after the toolset knew.
    const startClose = Effect.gen(function*() {
      if (closing !== undefined) return
      closing = yield* Effect.forkChild(
        Effect.suspend(() => {
          timeline.push({ _tag: "closing" })
          return Effect.andThen(toolset.close, Scope.close(scope, Exit.void))
        }).pipe(Effect.provideService(References.PreventSchedulerYield, true)),
        { startImmediately: true }
      )
    })

    // ops at the same instant happen back to back, with no chance for other fibers to run between
    let now = 0
    const timed = [...ops.map((op) => ({ ...op, close: false })), ...(closeAt <= 30 ? [{ at: closeAt, close: true } as const] : [])]
      .sort((a, b) => a.at - b.at)
    for (const op of timed) {
      if (op.at > now) {
        yield* kind.advance(Duration.millis((op.at - now) * 500))
        now = op.at
      }
      if (op.close) {
        yield* startClose
        continue
      }
      const plan = op.plan % plans.length
      switch (kinds[op.kind]) {
        case "call": {
          const callId = `c${calls.length}`
          calls.push(callId)
          planOf.set(callId, plans[plan]!)
          const fiber = yield* Effect.flatMap(modelCall(callId, plans[plan]!.tool, { plan }), toolset.execute).pipe(
            Effect.forkChild({ startImmediately: true })
          )
          made.push({ callId, kind: "call", fiber, late: closing !== undefined })
          break
        }
        case "duplicateId": {
          // the model sends the id of a call that is still running (checked and sent in one step:
          // no fiber may end that call between)
          const sent = yield* Effect.gen(function*() {
            const running = (yield* toolset.runningTasks).filter((t) => t.status === "running")
            if (running.length === 0) return undefined
            const callId = running[op.target % running.length]!.callId
            const call = yield* modelCall(callId, plans[plan]!.tool, { plan })
            const fiber = yield* Effect.forkChild(toolset.execute(call), { startImmediately: true })
            return { callId, fiber }
          }).pipe(Effect.provideService(References.PreventSchedulerYield, true))
          if (sent === undefined) break
          made.push({ callId: sent.callId, kind: "duplicateId", fiber: sent.fiber, late: closing !== undefined })
          break
        }
        case "cancel": {
          if (calls.length === 0) break
          const callId = calls[op.target % calls.length]!
          // cancelled and written down in one step: no fiber runs between
          yield* Effect.map(toolset.cancel(callId), (result) => {
            if (result === "cancelled") timeline.push({ _tag: "cancelled", call: callId })
          }).pipe(Effect.provideService(References.PreventSchedulerYield, true))
          break
        }
        case "busy":
          yield* session.setBusy
          break
        case "idle":
          yield* session.setIdle
          break
        case "idleThenBusy":
          yield* session.setIdle
          yield* session.setBusy
          break
      }
    }

    // the end: the agent goes quiet, finite work finishes, then drain (or the close already begun)
    yield* session.setIdle
    yield* kind.advance("1 minute")
    if (closing === undefined) {
      // drain cancels every cancellable call still running, as the model's cancel would (written
      // down in the same step in which drain stops them: no fiber runs between)
      const draining = yield* Effect.gen(function*() {
        for (const task of yield* toolset.runningTasks) {
          if (task.status === "running" && task.cancellable) timeline.push({ _tag: "cancelled", call: task.callId })
        }
        return yield* Effect.forkChild(toolset.drain, { startImmediately: true })
      }).pipe(Effect.provideService(References.PreventSchedulerYield, true))
      yield* whileClockRuns(Fiber.join(draining), { what: "drain" })
      // a hanging reply request is given up after a bound of minutes: give the clock hours
      yield* whileClockRuns(toolset.awaitIdle, { what: "awaitIdle", step: "10 seconds", steps: 1000 })
    }
    if (closing !== undefined) yield* whileClockRuns(Fiber.join(closing), { what: "close" })

    // every execute returned, for its own call id; a reused id was refused
    for (const m of made) {
      const exit = m.fiber.pollUnsafe()
      assert.isDefined(exit, `execute of ${m.callId} returned`)
      assert.isTrue(exit !== undefined && Exit.isSuccess(exit), `execute of ${m.callId} succeeded`)
      const out = exit !== undefined && Exit.isSuccess(exit) ? exit.value : undefined
      assert.strictEqual(out?.callId, m.callId)
      if (m.late) {
        assert.isTrue(out?.isError, `a call after close is refused: ${out?.output}`)
        assert.include(out?.output, "shut down")
      } else if (m.kind === "duplicateId") {
        assert.isTrue(out?.isError, `a reused call id is refused: ${out?.output}`)
        assert.include(out?.output, "already running")
      }
    }
    // the registry is empty once all calls end
    assert.deepStrictEqual(yield* toolset.runningTasks, [])

    const chat = yield* session.chat
    // every function call in the chat has exactly one output, and no synthetic id is used twice
    assert.deepStrictEqual(chatProblems(chat), [])

    // what each call delivered while it ran: in the chat exactly once, or reported
    const inChat = new Set(chatCallIds(chat))
    const cancelledAt = new Map<string, number>()
    let closedAt = Infinity
    timeline.forEach((e, i) => {
      if (e._tag === "cancelled" && !cancelledAt.has(e.call)) cancelledAt.set(e.call, i)
      if (e._tag === "closing" && closedAt === Infinity) closedAt = i
    })
    // (A durable store keeps an item close left out of the chat, and says so: the toolset made
    // again for the conversation puts it there.)
    const reportedError = (item: string) =>
      logs.find(["Error"], item).length > 0 || logs.find(["Warn"], item, "the store keeps them").length > 0
    /**
     * Whether the call was stopped by the model (cancel) or by its timeout: its items not yet in
     * the chat may be dropped. (Whether the timeout won is read from how the call ended: with
     * fibers yielding every few steps, a tool's own sleep may end after its timeout's.)
     */
    const stopped = (call: string) => cancelledAt.has(call) || outcomes.get(call) === "timed-out"
    const expected = new Set<string>()
    /** Results a timed call produced at its timeout's very instant: either the result or the timeout may win. */
    const atTheInstant = new Set<string>()
    timeline.forEach((e, i) => {
      if (e._tag !== "produced") return
      const live = i < (cancelledAt.get(e.call) ?? Infinity) && i < closedAt
      const beforeTimeout = !e.timed || e.ms < e.startedMs + Duration.toMillis(timeout)
      const atTimeout = e.timed && e.ms === e.startedMs + Duration.toMillis(timeout)
      if (live && atTimeout) atTheInstant.add(e.item)
      const handedOver = !e.item.endsWith("_final") || ["done", "error"].includes(outcomes.get(e.call) ?? "")
      if (live && beforeTimeout && handedOver) {
        expected.add(e.item)
        if (!stopped(e.call)) {
          assert.isTrue(inChat.has(e.item) || reportedError(e.item), `${e.item} was delivered: it is in the chat, or reported`)
        }
      } else if (!(live && atTimeout)) {
        if (!e.item.endsWith("_final") || !e.timed) {
          assert.isFalse(inChat.has(e.item), `${e.item} came after its call was cancelled, timed out or closed`)
        }
      }
    })
    for (const item of chat.items) {
      if (item._tag !== "FunctionCallOutput" || expected.has(item.callId) || atTheInstant.has(item.callId)) continue
      // the only other items: the toolset's own word that a timed call was stopped
      const call = item.callId.replace(/_(update_\d+|final)$/, "")
      assert.strictEqual(planOf.get(call)?.tool, "timed", `${item.callId} in the chat was not delivered by ${call}`)
      assert.strictEqual(item.callId, `${call}_final`)
      assert.include(item.output, "took longer than 4s")
    }

    // nothing a cancelled call produces after its cancellation is inserted, nor anything produced
    // after close (an insertion already under way may finish: a tool in an uninterruptible
    // region cannot be stopped in the middle of one)
    const producedAt = new Map<string, number>()
    timeline.forEach((e, i) => {
      if (e._tag === "produced" && !producedAt.has(e.item)) producedAt.set(e.item, i)
    })
    timeline.forEach((e, i) => {
      if (e._tag !== "inserted") return
      const call = e.item.replace(/_(update_\d+|final)$/, "")
      const produced = producedAt.get(e.item) ?? i
      if (i > (cancelledAt.get(call) ?? Infinity)) {
        assert.isBelow(produced, cancelledAt.get(call)!, `${e.item} was produced after ${call} was cancelled, and inserted`)
      }
      if (i > closedAt) assert.isBelow(produced, closedAt, `${e.item} was produced after close, and inserted`)
    })

    // every item in the chat is named in one reply, or reported, or the toolset closed first
    const replies = yield* session.replies
    assert.deepStrictEqual(replies.filter((r) => r.whileBusy), [], "no reply was requested while busy")
    const named = new Map<string, number>()
    for (const r of replies) for (const id of namedCallIds(r.instructions)) named.set(id, (named.get(id) ?? 0) + 1)
    for (const [id, times] of named) assert.strictEqual(times, 1, `${id} named in ${times} replies`)
    if (closedAt === Infinity) {
      for (const id of inChat) assert.isTrue(named.has(id) || reportedError(id), `${id} got a reply, or its failure was reported`)
    }

    stats.runs++
    stats.calls += made.filter((m) => m.kind === "call").length
    stats.duplicateIds += made.filter((m) => m.kind === "duplicateId").length
    stats.cancelled += cancelledAt.size
    stats.closedEarly += closedAt === Infinity ? 0 : 1
    stats.itemsProduced += timeline.filter((e) => e._tag === "produced").length
    stats.itemsInserted += inChat.size
    stats.timeoutNotices += chat.items.filter((i) => i._tag === "FunctionCallOutput" && i.output.includes("took longer than")).length
    stats.replies += replies.length
    stats.insertAttempts += faulty.attempts.insert.length
    stats.insertFailures += faulty.attempts.insert.filter((a) => a.fault !== "ok").length
    stats.replyAttempts += faulty.attempts.generateReply.length
    stats.replyFailures += faulty.attempts.generateReply.filter((a) => a.fault !== "ok").length
    stats.errorLogs += logs.lines.filter((l) => l.level === "Error").length

    // no fiber outlives close
    if (closing === undefined) yield* whileClockRuns(Scope.close(scope, Exit.void), { what: "close" })
    for (const m of made) yield* Fiber.await(m.fiber)
    yield* Fiber.await(listener) // the event stream ends as the toolset closes
    // (durable: closing leaves the calls running in the workflow engine; drained first, none is left)
    if (!kind.durable || closedAt === Infinity) {
      if (kind.durable) yield* kind.settle // (its executions end as the store tells them)
      assert.strictEqual(fibers.active, 0, "no fiber outlives close")
    }
  })).pipe(kind.provide(faulty.layer), Effect.provide(logs.layer))
}

// --- the properties -------------------------------------------------------------------------------

describe("the fiber counter", () => {
  it.effect("sees a fiber left running, and sees it end", () => {
    const fibers = makeFiberCounter()
    return fibers.track(Effect.gen(function*() {
      const fiber = yield* Effect.forkDetach(Effect.never)
      yield* Effect.yieldNow
      assert.strictEqual(fibers.active, 1)
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(fibers.active, 0)
    }))
  })
})

forEachKind("invariants under random schedules", (kind) => {
  afterAll(() => {
    if (process.env["RELIABILITY_STATS"]) console.log(`reliability stats (${kind.name}, seed ${seed}):`, stats)
  })

  for (const maxOps of yieldsFor(kind)) {
    const n = kind.durable ? durableRuns : maxOps === 2048 ? runs : Math.max(1, Math.round(runs / 2))
    // (a durable run waits for its store's statements at each step)
    const timeout = 10_000 + n * (kind.durable ? 5_000 : 40)
    const underSetting = Effect.provideService(References.MaxOpsBeforeYield, maxOps)
    describe(`MaxOpsBeforeYield ${maxOps}`, () => {
      it.effect.prop(
        "calls, updates, finals, failures, defects, cancels, timeouts, duplicate ids, busy/idle flips and close: nothing lost, nothing twice, nothing leaks",
        Scenario,
        (values) => underSetting(scenario(kind, values, undefined)),
        { arbitrary: { runs: n, seed: seed + maxOps, size: 16 }, timeout }
      )

      it.effect.prop(
        "the same, while the session's insertions and reply requests fail now and then",
        { ...Scenario, faults: Faults },
        ({ faults, ...values }) => underSetting(scenario(kind, values, faults)),
        { arbitrary: { runs: n, seed: seed + maxOps + 1, size: 16 }, timeout }
      )
    })
  }
})
