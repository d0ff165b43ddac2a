/**
 * The whole system, on both toolsets: several toolsets on one session; calls with updates and
 * finals (results, void, tool errors, defects, never-ending); cancels; closes of single toolsets;
 * busy/idle flips; awaitIdle callers; and a session port whose `insert`, `items`, `awaitInactive`
 * and `generateReply` each answer from a seeded random script of shapes (ok, typed fail, defect,
 * interrupt cause, slow, hang, partial insertion), under every scheduler yield budget. After each
 * run:
 * - every awaitIdle / drain / close returned (the clock runs bounded);
 * - no reply was requested while the session was busy;
 * - the chat has no dangling function call, unless an error line names it;
 * - every item in the chat was named in some reply request, or reported (a log line at Info or
 *   above, or a ReplySkipped event);
 * - no item is named by two requests unless the earlier one failed;
 * - every item a live call handed over is in the chat or reported as an error;
 * - no fiber outlives the closes (a durable toolset's calls go on in the workflow engine after a
 *   close: there it is checked when every toolset was drained before it closed).
 *
 * Seeded (mulberry32): a failure prints the seed and the script. The in-memory toolset gets
 * `SYSTEM_RUNS` runs per yield setting (default 20), the durable one `SYSTEM_DURABLE_RUNS` (default
 * 4; `SYSTEM_RUNS` sets both); `SYSTEM_SEED=n` starts elsewhere, `SYSTEM_ONLY=seed` runs one seed,
 * `TEST_YIELDS=3,64` picks the yield settings, `SYSTEM_NO_HANG=1` leaves hangs out,
 * `SYSTEM_SKIP_KNOWN=1` tolerates a cancelled call's half pair left at close (the test at the end
 * of this file; to look for other defects), `SYSTEM_DEBUG=1` prints the logs, timeline and chat of
 * a run with a dangling call, `SYSTEM_STATS=1` what the runs tried.
 */
import { afterAll, assert, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Fiber, References, Schedule, Schema, Scope, Stream } from "effect"
import { AgentSession, AsyncRunContext, FunctionTool, ToolError } from "effect-async-toolset"
import type { AsyncToolset } from "effect-async-toolset"
import type { ChatContext } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { captureLogs, chatProblems, makeFiberCounter, modelCall, namedCallIds, whileClockRuns } from "../support/reliability.ts"
import { wrappedSession } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"
import type { Kind } from "../support/toolsets.ts"
import { promptlyLong as promptly, settleLong, yieldsFor } from "../support/schedules.ts"

const runs = Number(process.env["SYSTEM_RUNS"] ?? 20)
/** Runs per yield setting on the durable toolset. */
const durableRuns = Number(process.env["SYSTEM_DURABLE_RUNS"] ?? process.env["SYSTEM_RUNS"] ?? 4)
const baseSeed = Number(process.env["SYSTEM_SEED"] ?? 7000)
const only = process.env["SYSTEM_ONLY"] === undefined ? undefined : Number(process.env["SYSTEM_ONLY"])

// --- the script ------------------------------------------------------------------------------------

const mulberry32 = (seed: number) => () => {
  seed |= 0
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

type Shape = "ok" | "fail" | "die" | "interrupt" | "slow1" | "slow3" | "partial" | "hang"
type Ending = "result" | "void" | "toolError" | "defect" | "never"
interface Plan {
  readonly start: number
  readonly steps: ReadonlyArray<number>
  readonly end: number
  readonly ending: Ending
}
type Op =
  | { readonly at: number; readonly kind: "call"; readonly toolset: number; readonly plan: number }
  | { readonly at: number; readonly kind: "cancel"; readonly target: number }
  | { readonly at: number; readonly kind: "close"; readonly toolset: number }
  | { readonly at: number; readonly kind: "awaitIdle"; readonly toolset: number }
  | { readonly at: number; readonly kind: "busy" | "idle" | "idleThenBusy" }

interface Script {
  readonly seed: number
  readonly toolsets: number
  readonly plans: ReadonlyArray<Plan>
  readonly ops: ReadonlyArray<Op>
  readonly port: {
    readonly insert: ReadonlyArray<Shape>
    readonly items: ReadonlyArray<Shape>
    readonly awaitInactive: ReadonlyArray<Shape>
    readonly generateReply: ReadonlyArray<Shape>
  }
  readonly busyAtStart: boolean
}

const makeScript = (seed: number, hangs = process.env["SYSTEM_NO_HANG"] === undefined): Script => {
  const rng = mulberry32(seed)
  const int = (n: number) => Math.floor(rng() * n)
  const pick = <A>(xs: ReadonlyArray<A>): A => xs[int(xs.length)]!
  const faultRate = pick([0, 0.2, 0.4, 0.6])
  const shapes = (partial: boolean, n: number, hang = hangs): Array<Shape> =>
    Array.from({ length: n }, () => {
      if (rng() >= faultRate) return "ok"
      const base: Array<Shape> = partial ? ["fail", "die", "interrupt", "slow1", "slow3", "partial", "partial"] : ["fail", "die", "interrupt", "slow1", "slow3"]
      return pick<Shape>(hang ? [...base, "hang"] : base)
    })
  const toolsets = 1 + int(3)
  const plans = Array.from({ length: 1 + int(5) }, (): Plan => ({
    start: int(3),
    steps: Array.from({ length: int(4) }, () => int(3)),
    end: int(3),
    ending: pick<Ending>(["result", "result", "void", "toolError", "defect", "never"])
  }))
  const kinds = ["call", "call", "call", "call", "cancel", "cancel", "close", "awaitIdle", "busy", "idle", "idleThenBusy"] as const
  const ops = Array.from({ length: 4 + int(14) }, (): Op => {
    const at = int(31)
    const kind = pick(kinds)
    switch (kind) {
      case "call":
        return { at, kind, toolset: int(toolsets), plan: int(plans.length) }
      case "cancel":
        return { at, kind, target: int(8) }
      case "close":
        return { at, kind, toolset: int(toolsets) }
      case "awaitIdle":
        return { at, kind, toolset: int(toolsets) }
      default:
        return { at, kind }
    }
  }).sort((a, b) => a.at - b.at)
  return {
    seed,
    toolsets,
    plans,
    ops,
    port: { insert: shapes(true, 40), items: shapes(false, 40), awaitInactive: shapes(false, 40, false), generateReply: shapes(false, 40) },
    busyAtStart: rng() < 0.5
  }
}

// --- the port --------------------------------------------------------------------------------------

const err = (operation: AgentSession.SessionError["operation"]) => new AgentSession.SessionError({ operation, message: `injected fail in ${operation}` })

interface Request {
  readonly named: ReadonlyArray<string>
  readonly shape: Shape
  /** named ids whose function call was not in the chat when the request came */
  readonly notInChat: ReadonlyArray<string>
  /** how many timeline events had happened when the request came */
  readonly at: number
}

const scriptedPort = (script: Script, requests: Array<Request>, timeline: { readonly length: number }) =>
  wrappedSession((session) => {
    const n = { insert: 0, items: 0, awaitInactive: 0, generateReply: 0 }
    const next = (op: keyof typeof n): Shape => script.port[op][n[op]++] ?? "ok"
    const slow = (shape: Shape) => Duration.seconds(shape === "slow1" ? 1 : 3)
    return {
      insert: (items) =>
        Effect.suspend(() => {
          const shape = next("insert")
          switch (shape) {
            case "ok":
              return session.insert(items)
            case "fail":
              return Effect.fail(err("insert"))
            case "die":
              return Effect.die(new Error("injected die in insert"))
            case "interrupt":
              return Effect.interrupt
            case "partial":
              return Effect.andThen(session.insert(items.slice(0, 1)), Effect.fail(err("insert")))
            case "hang":
              return Effect.never
            default:
              return Effect.andThen(Effect.sleep(slow(shape)), session.insert(items))
          }
        }),
      items: Effect.suspend(() => {
        const shape = next("items")
        switch (shape) {
          case "ok":
          case "partial":
            return session.items
          case "fail":
            return Effect.fail(err("chatContext"))
          case "die":
            return Effect.die(new Error("injected die in items"))
          case "interrupt":
            return Effect.interrupt
          case "hang":
            return Effect.never
          default:
            return Effect.andThen(Effect.sleep(slow(shape)), session.items)
        }
      }),
      awaitInactive: Effect.suspend(() => {
        const shape = next("awaitInactive")
        switch (shape) {
          case "ok":
          case "partial":
            return session.awaitInactive
          case "fail":
          case "die":
            return Effect.die(new Error("injected die in awaitInactive"))
          case "interrupt":
            return Effect.interrupt
          default:
            // waits, then waits for the session to be inactive (completes only while it is)
            return Effect.andThen(Effect.sleep(slow(shape)), session.awaitInactive)
        }
      }),
      generateReply: (request) =>
        Effect.suspend(() => {
          const shape = next("generateReply")
          const named = namedCallIds(request.instructions)
          return Effect.flatMap(session.items, (chat) => {
          const notInChat = named.filter((id) => !chat.some((i) => i._tag === "FunctionCall" && i.callId === id))
          requests.push({ named, shape, notInChat, at: timeline.length })
          switch (shape) {
            case "ok":
            case "partial":
              return session.generateReply(request)
            case "fail":
              return Effect.fail(err("generateReply"))
            case "die":
              return Effect.die(new Error("injected die in generateReply"))
            case "interrupt":
              return Effect.interrupt
            case "hang":
              return Effect.andThen(session.generateReply(request), Effect.never)
            default:
              // the session takes the request at once (recorded, busy state checked), answers late
              return Effect.andThen(session.generateReply(request), Effect.sleep(slow(shape)))
          }
          })
        })
    }
  })

/** `whileClockRuns`, for an effect that needs the test's services. */
const whileClockRunsHere = <A, E, R>(effect: Effect.Effect<A, E, R>, what: string): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.context<R>(), (context) =>
    whileClockRuns(Effect.provideContext(effect, context), { what, step: "10 seconds", steps: 1000 }))

// --- one run ---------------------------------------------------------------------------------------

type Event =
  | { readonly _tag: "produced"; readonly call: string; readonly item: string }
  | { readonly _tag: "cancelled"; readonly call: string }
  | { readonly _tag: "closing"; readonly toolset: number }

const baseOf = (id: string) => id.replace(/_(update_\d+|final)$/, "")

const stats = { runs: 0, calls: 0, chatItems: 0, requests: 0, failedRequests: 0, errorLogs: 0 }

const runOne = (kind: Kind, script: Script) => {
  const timeline: Array<Event> = []
  const requests: Array<Request> = []
  const logs = captureLogs()
  const fibers = makeFiberCounter()
  const ownerOf = new Map<string, number>()
  const skippedIds = new Set<string>()
  const outcomes = new Map<string, string>()

  const tool = FunctionTool.make("job", {
    description: "scripted",
    parameters: Schema.Struct({ plan: Schema.Int }),
    onDuplicateCall: "allow"
  }, ({ plan }) =>
    Effect.gen(function*() {
      const { end, ending, start, steps } = script.plans[plan]!
      const { callId } = yield* AsyncRunContext.functionCall
      const pause = (s: number) => s > 0 ? Effect.sleep(Duration.seconds(s)) : Effect.void
      const produced = (item: string) => Effect.sync(() => timeline.push({ _tag: "produced", call: callId, item }))
      yield* pause(start)
      yield* AsyncRunContext.update(`${callId} started`)
      for (const [i, s] of steps.entries()) {
        yield* pause(s)
        yield* Effect.andThen(produced(`${callId}_update_${i + 1}`), AsyncRunContext.update(`${callId} step ${i + 1}`))
          .pipe(Effect.provideService(References.PreventSchedulerYield, true))
      }
      yield* pause(end)
      switch (ending) {
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
    }))

  return fibers.track(Effect.gen(function*() {
    yield* kind.advance("0 millis")
    const session = yield* TestSession.TestSession
    if (script.busyAtStart) yield* session.setBusy
    const retry = Schedule.spaced("1 second").pipe(Schedule.upTo({ times: 3 }))
    const scopes: Array<Scope.Closeable> = []
    const toolsets: Array<AsyncToolset.AsyncToolset> = []
    const listeners: Array<Fiber.Fiber<void>> = []
    for (let i = 0; i < script.toolsets; i++) {
      const scope = yield* Scope.make()
      const making = kind.make({ id: `t${i}`, tools: [tool], sessionRetry: retry, replyTimeout: "10 seconds" })
        .pipe(Scope.provide(scope))
      // (durable: making the toolset reads the agent's chat, through the port: it waits as the port does)
      const toolset = yield* (kind.durable ? whileClockRunsHere(making, `the make of t${i}`) : making)
      scopes.push(scope)
      toolsets.push(toolset)
      listeners.push(
        yield* toolset.events.pipe(
          Stream.runForEach((e) =>
            Effect.sync(() => {
              if (e._tag === "ReplySkipped") for (const id of e.callIds) skippedIds.add(id)
              if (e._tag === "CallEnded") outcomes.set(e.callId, e.outcome)
            })
          ),
          Effect.provideService(References.PreventSchedulerYield, true),
          Effect.forkChild({ startImmediately: true })
        )
      )
    }
    const closing: Array<Fiber.Fiber<void> | undefined> = toolsets.map(() => undefined)
    const startClose = (i: number) =>
      Effect.gen(function*() {
        if (closing[i] !== undefined) return
        // (detached: a close that never returns fails the run, see below, instead of holding its end)
        closing[i] = yield* Effect.forkDetach(
          Effect.suspend(() => {
            timeline.push({ _tag: "closing", toolset: i })
            return Effect.andThen(toolsets[i]!.close, Scope.close(scopes[i]!, Exit.void))
          }).pipe(Effect.provideService(References.PreventSchedulerYield, true)),
          { startImmediately: true }
        )
      })
    const executes: Array<Fiber.Fiber<ChatContext.FunctionCallOutput>> = []
    const waiters: Array<{ readonly what: string; readonly fiber: Fiber.Fiber<void> }> = []
    const calls: Array<string> = []
    let now = 0
    for (const op of script.ops) {
      if (op.at > now) {
        yield* kind.advance(Duration.millis((op.at - now) * 500))
        now = op.at
      }
      switch (op.kind) {
        case "call": {
          const callId = `c${calls.length}`
          calls.push(callId)
          ownerOf.set(callId, op.toolset)
          executes.push(
            yield* Effect.flatMap(modelCall(callId, "job", { plan: op.plan }), toolsets[op.toolset]!.execute).pipe(
              Effect.forkChild({ startImmediately: true })
            )
          )
          break
        }
        case "cancel": {
          if (calls.length === 0) break
          const callId = calls[op.target % calls.length]!
          const toolset = toolsets[ownerOf.get(callId)!]!
          yield* Effect.map(toolset.cancel(callId), (result) => {
            if (result === "cancelled") timeline.push({ _tag: "cancelled", call: callId })
          }).pipe(Effect.provideService(References.PreventSchedulerYield, true))
          break
        }
        case "close":
          yield* startClose(op.toolset)
          break
        case "awaitIdle":
          waiters.push({
            what: `awaitIdle of t${op.toolset} at ${op.at}`,
            fiber: yield* Effect.forkChild(toolsets[op.toolset]!.awaitIdle, { startImmediately: true })
          })
          break
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

    // the end: quiet, finite work finishes, drain and await each open toolset, then close all
    const closedEarly = closing.some((fiber) => fiber !== undefined)
    yield* session.setIdle
    yield* kind.advance("1 minute")
    for (let i = 0; i < toolsets.length; i++) {
      if (closing[i] !== undefined) continue
      const draining = yield* Effect.gen(function*() {
        for (const task of yield* toolsets[i]!.runningTasks) {
          if (task.status === "running" && task.cancellable) timeline.push({ _tag: "cancelled", call: task.callId })
        }
        return yield* Effect.forkChild(toolsets[i]!.drain, { startImmediately: true })
      }).pipe(Effect.provideService(References.PreventSchedulerYield, true))
      yield* whileClockRuns(Fiber.join(draining), { what: `drain of t${i}`, step: "10 seconds", steps: 1000 })
      yield* whileClockRuns(toolsets[i]!.awaitIdle, { what: `awaitIdle of t${i}`, step: "10 seconds", steps: 1000 })
    }
    for (const w of waiters) yield* whileClockRuns(Fiber.join(w.fiber), { what: w.what, step: "10 seconds", steps: 1000 })
    for (let i = 0; i < toolsets.length; i++) yield* startClose(i)
    for (let i = 0; i < toolsets.length; i++) {
      yield* whileClockRuns(Fiber.join(closing[i]!), { what: `close of t${i}`, step: "10 seconds", steps: 1000 })
    }
    for (const e of executes) {
      const exit = yield* whileClockRuns(Fiber.await(e), { what: "an execute", step: "10 seconds", steps: 100 })
      assert.isTrue(Exit.isSuccess(exit), "execute succeeded")
    }
    for (const l of listeners) yield* Fiber.await(l)

    // --- invariants ---
    const chat = yield* session.chat
    const replies = yield* session.replies
    assert.deepStrictEqual(replies.filter((r) => r.whileBusy).map((r) => r.instructions), [], "no reply was requested while busy")

    const errorNames = (id: string) => logs.find(["Error"], id).length > 0
    const reportedAtAll = (id: string) => logs.find(["Info", "Warn", "Error"], id).length > 0 || skippedIds.has(id)
    // SYSTEM_SKIP_KNOWN=1 tolerates a cancelled call's half pair left, unreported, when its toolset
    // closes (the test at the end of this file), to look for other defects
    const knownHalfPair = (id: string) =>
      process.env["SYSTEM_SKIP_KNOWN"] !== undefined &&
      timeline.some((e) => e._tag === "cancelled" && e.call === id.replace(/_(update_\d+|final)$/, ""))
    const dangling = chatProblems(chat).filter((p) => {
      const id = p.slice(0, p.indexOf(":"))
      return !errorNames(id) && !knownHalfPair(id)
    })
    if (dangling.length > 0 && process.env["SYSTEM_DEBUG"]) {
      console.log("DEBUG logs", logs.lines.map((l) => `${l.level} ${l.text} ${JSON.stringify(l.annotations)}`).join("\n"))
      console.log("DEBUG timeline", JSON.stringify(timeline))
      console.log("DEBUG chat", chat.items.map((i) => `${i._tag} ${"callId" in i ? i.callId : ""}`).join("\n"))
    }
    assert.deepStrictEqual(dangling, [], "no dangling call in the chat unless an error line names it")

    const named = new Set(requests.flatMap((r) => r.named))
    const inChat = new Set(chat.items.flatMap((i) => i._tag === "FunctionCall" ? [i.callId] : []))
    for (const id of inChat) {
      assert.isTrue(named.has(id) || reportedAtAll(id), `${id} is in the chat: named in a reply request, or reported`)
    }

    const failedShape = (s: Shape) => s === "fail" || s === "die" || s === "interrupt"
    const firstOk = new Map<string, number>()
    requests.forEach((r, i) => {
      for (const id of r.named) {
        const earlier = firstOk.get(id)
        assert.isUndefined(earlier, `${id} named by request ${earlier} (answered) and again by request ${i}`)
        if (!failedShape(r.shape)) firstOk.set(id, i)
      }
    })

    // a request names only items in the chat, and none of a toolset that had begun to close
    for (const r of requests) {
      assert.deepStrictEqual(r.notInChat, [], `a reply request named items not in the chat`)
      for (const id of r.named) {
        const t = ownerOf.get(baseOf(id))
        const closed = timeline.findIndex((e) => e._tag === "closing" && e.toolset === t)
        assert.isTrue(closed < 0 || closed >= r.at, `${id} named in a request after its toolset t${t} began to close`)
      }
    }

    // every item a live call handed over is in the chat, or reported as an error
    const cancelledAt = new Map<string, number>()
    const closedAt = new Map<number, number>()
    timeline.forEach((e, i) => {
      if (e._tag === "cancelled" && !cancelledAt.has(e.call)) cancelledAt.set(e.call, i)
      if (e._tag === "closing" && !closedAt.has(e.toolset)) closedAt.set(e.toolset, i)
    })
    timeline.forEach((e, i) => {
      if (e._tag !== "produced") return
      const live = i < (cancelledAt.get(e.call) ?? Infinity) && i < (closedAt.get(ownerOf.get(e.call)!) ?? Infinity)
      const handedOver = !e.item.endsWith("_final") || ["done", "error"].includes(outcomes.get(e.call) ?? "")
      if (live && handedOver && !cancelledAt.has(e.call) && !closedAt.has(ownerOf.get(e.call)!)) {
        assert.isTrue(inChat.has(e.item) || errorNames(e.item), `${e.item} was handed over: it is in the chat, or reported`)
      }
    })

    // (durable: a toolset closed before it was drained leaves its calls running in the workflow engine)
    if (!kind.durable || !closedEarly) {
      if (kind.durable) yield* kind.settle // (its executions end as the store tells them)
      assert.strictEqual(fibers.active, 0, "no fiber outlives the closes")
    }
    stats.runs++
    stats.calls += calls.length
    stats.chatItems += inChat.size
    stats.requests += requests.length
    stats.failedRequests += requests.filter((r) => failedShape(r.shape)).length
    stats.errorLogs += logs.lines.filter((l) => l.level === "Error").length
  })).pipe(kind.provide(scriptedPort(script, requests, timeline)), Effect.provide(logs.layer))
}

const describeFailure = (script: Script, cause: Cause.Cause<unknown>) =>
  `seed ${script.seed}: ${Cause.pretty(cause)}\nscript: ${JSON.stringify(script)}`

afterAll(() => {
  if (process.env["SYSTEM_STATS"]) console.log("whole-system stats", stats)
})

forEachKind("several toolsets on one session, a port answering from a random script", (kind) => {
  const n = kind.durable ? durableRuns : runs
  for (const maxOps of yieldsFor(kind)) {
    it.effect(`MaxOpsBeforeYield ${maxOps}: every wait returns, no reply while busy, no dangling call, every item named or reported, none named twice, no fiber left`, () =>
      Effect.gen(function*() {
        const seeds = only !== undefined ? [only] : Array.from({ length: n }, (_, i) => baseSeed + maxOps * 1000 + i)
        const failures: Array<string> = []
        for (const seed of seeds) {
          const script = makeScript(seed)
          const exit = yield* Effect.exit(runOne(kind, script).pipe(Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
          if (Exit.isFailure(exit)) {
            const text = describeFailure(script, exit.cause)
            console.log(`SYSTEM FAILURE (${kind.name}, MaxOpsBeforeYield ${maxOps}) ${text}`)
            failures.push(`seed ${seed}: ${Cause.pretty(exit.cause).split("\n")[0]}`)
            if (failures.length >= 3) break
          }
        }
        assert.deepStrictEqual(failures, [])
      }), { timeout: 60_000 })
  }
})

// Seeds the property found (scripts made without hangs, as they were when found): 71054 and 10092
// leave a cancelled call's half pair in the chat as its toolset closes (the test below); 11020, on
// the durable toolset, has the port answer a read of the chat with an interrupt while a call's
// update is handed over, and the call is left running, unfollowed, its updates untold.
forEachKind("several toolsets on one session: pinned seeds", (kind) => {
  for (const [seed, maxOps] of [[71054, 64], [10092, 3], [11020, 4]] as const) {
    it.effect(`seed ${seed} (no hangs), MaxOpsBeforeYield ${maxOps}: every invariant of the run holds (no dangling call in the chat unless an error line names it, no fiber left)`, () =>
      Effect.gen(function*() {
        const script = makeScript(seed, false)
        const exit = yield* Effect.exit(runOne(kind, script).pipe(Effect.provideService(References.MaxOpsBeforeYield, maxOps)))
        if (Exit.isFailure(exit)) console.log(`SYSTEM FAILURE (${kind.name}) ${describeFailure(script, exit.cause)}`)
        assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause).split("\n")[0] : "")
      }))
  }
})

// --- the half pair left at close ---------------------------------------------------------------------

const halfPairJob = FunctionTool.make("job", { description: "Reports twice, then works on", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("step 1")
    return yield* Effect.never
  }))

/**
 * An update's insertion is cut short after its function call went in (a half pair in the chat);
 * its call is cancelled; its toolset closes while the session is busy (so the coordinator never
 * got to complete the pair). The chat must not be left with a function call without its output
 * that nothing reports.
 */
forEachKind("a cancelled call's half pair, when its toolset closes before the coordinator completes it", (kind) => {
  for (const maxOps of yieldsFor(kind)) {
    it.effect(`c1_update_1 half inserted, c1 cancelled, toolset closed while busy: no dangling call in the chat, or an error names it (MaxOpsBeforeYield ${maxOps})`, () => {
      const logs = captureLogs()
      const fibers = makeFiberCounter()
      return fibers.track(Effect.gen(function*() {
        const session = yield* TestSession.TestSession
        yield* session.setBusy
        const scope = yield* Scope.make()
        const toolset = yield* kind.make({ id: "t", tools: [halfPairJob], sessionRetry: Schedule.recurs(2), replyTimeout: "10 seconds" })
          .pipe(Scope.provide(scope))
        const first = yield* toolset.execute(yield* modelCall("c1", "job"))
        assert.include(first.output, "started")
        yield* kind.advance("1 second") // c1_update_1: its call goes in, its output does not
        yield* settleLong
        assert.strictEqual(yield* toolset.cancel("c1"), "cancelled")
        yield* settleLong
        yield* promptly(Scope.close(scope, Exit.void), "close")
        yield* settleLong
        const chat = yield* session.chat
        const dangling = chatProblems(chat).filter((p) => logs.find(["Error"], p.slice(0, p.indexOf(":"))).length === 0)
        assert.deepStrictEqual(
          dangling,
          [],
          `a function call without its output is left in the chat, and no error names it; logs: ${
            JSON.stringify(logs.lines.map((l) => `${l.level} ${l.text}`))
          }`
        )
        assert.strictEqual(fibers.active, 0)
      })).pipe(
        kind.provide(wrappedSession((session) => {
          let n = 0
          return {
            // the first synthetic insertion is cut short after its function call went in
            insert: (items) =>
              Effect.suspend(() =>
                n++ === 0
                  ? Effect.andThen(
                    session.insert(items.slice(0, 1)),
                    Effect.fail(new AgentSession.SessionError({ operation: "insert", message: "cut short" }))
                  )
                  : session.insert(items)
              )
          }
        })),
        Effect.provide(logs.layer),
        Effect.provideService(References.MaxOpsBeforeYield, maxOps)
      )
    })
  }
})
