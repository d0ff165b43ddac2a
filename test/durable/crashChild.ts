/**
 * The process the crash tests start and kill: a travel agent (`AiAgent` on a scripted model, on a
 * durable chat) with a durable toolset whose `book_flight` searches, polls the airline, charges the
 * card (an activity, with the payment provider deduplicating by idempotency key) and books.
 *
 *   MODE=start   the user asks for a booking; the process runs until everything is said
 *   MODE=resume  the process starts again on the same store and runs until everything is said
 *   MODE=runner  a runner of a cluster on PostgreSQL (no agent): runs calls until killed
 *
 * Store: STORE=pglite with DATA_DIR (the embedded store), or STORE=postgres with PG_URL (then a
 * runner listening on RUNNER_PORT, or a client when RUNNER_PORT is unset).
 *
 * CRASH_AT=<point> stops the process at that point: it prints `CRASH <point>` and freezes (the
 * whole thread waits, so nothing else happens), and the test kills it with SIGKILL. With
 * CRASH_ONCE=<file>, only the first process of several to get there stops. The points:
 *   after-first-update  the tool's first update is recorded; the agent has not got it yet
 *   during-activity     inside charge_card: the provider charged the card, the step's result is not stored
 *   final-stored        the final result is recorded in the store, not yet in the agent's chat
 *   final-inserted      the final result is in the agent's chat, the reply not yet asked for
 *   after-cancel        the call was cancelled (CANCEL=1) and the cancellation recorded
 *   holding             (a runner) the call is between its steps, polling the airline, on this runner
 *   replace-waiting     (REPLACE=1) a second booking replaced the first, which is still stopping (its
 *                       polling cannot be cut short): the second is recorded, waiting for its turn
 *   before-first-update the call is recorded and its tool runs; its caller waits for the first output
 *   update-stored       `_update_1` is recorded; the agent's chat is about to get it
 *   reply-taken         the session took the reply request up (the reply is not stored yet)
 *   after-make          the toolset was made (after a restart: what it picked up is under way)
 *   cancel-requested    (CANCEL_NOWAIT=1) the cancel was asked for; the store has not recorded it
 *   resume-restore      (MODE=resume) the restarted toolset puts a restored call back into the chat
 *   resume-any-insert   (MODE=resume) any insertion into the chat after the restart
 *   resume-reply        (MODE=resume) a reply request after the restart
 *   tool-returned       the tool returned (its execution told this process); its end is not recorded yet
 *   cancel-while-recording  (REFUSE_END=1, CANCEL_AFTER_RETURN=1) the tool returned, the store refused
 *                       its end's record at least once (it is tried again), and the call was asked to
 *                       be cancelled (the answer printed as `CANCEL <answer>`)
 * Several points may be given, comma-separated (a process stops at the first it reaches).
 *
 * REFUSE_END=1: once the tool returned, the store refuses its end's record (the execution tries it
 * again) until the process is killed. CANCEL_AFTER_RETURN=1: then the call is asked to be cancelled.
 * TIMEOUT_MS=<ms>: book_flight's timeout. DRAIN_ON=<file>: once the file exists, the toolset is drained
 * (printed: `DRAINED <ms>`, how long the drain took). After the report the process prints
 * `CLOSED <ms>`: how long closing the toolset and its store took.
 *
 * Everything that must happen once is appended to MARKS (a file shared by the processes):
 * `activity-start`, `activity-done`, `charge <key>`, `reply <call ids>`, `poll <pid>`. At the end the
 * process prints `REPORT <json>`: the chat, the calls still running and the calls' statuses as stored.
 */
import { appendFileSync, closeSync, existsSync, openSync, writeSync } from "node:fs"
import { Duration, Effect, Layer, Redacted, Schedule, Schema } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import { AgentSession, AiAgent, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset } from "effect-async-toolset/durable"
import { ScriptedModel } from "effect-async-toolset/testing"

const env = (name: string): string | undefined => process.env[name]
const mode = env("MODE") ?? "start"
const crashAt = env("CRASH_AT")
// several crash points may be given, comma-separated
const crashAts = new Set((crashAt ?? "").split(",").filter((x) => x !== ""))
const marks = env("MARKS")!

const mark = (line: string) => appendFileSync(marks, `${line}\n`)

/** With TIMING set, says when the process got where (milliseconds since it started). */
const timing = (what: string) => {
  if (env("TIMING") !== undefined) writeSync(2, `AT ${Math.round(performance.now())} ${what}\n`)
}

/** With CRASH_ONCE (a file path), only the first process to get to the crash point stops there. */
const firstToCrash = (): boolean => {
  const once = env("CRASH_ONCE")
  if (once === undefined) return true
  try {
    closeSync(openSync(once, "wx"))
    return true
  } catch {
    return false
  }
}

/** Stops here if this is the crash point: says so, then freezes the whole process until it is killed. */
const crashPoint = (point: string): void => {
  if (!crashAts.has(point) || !firstToCrash()) return
  writeSync(1, `CRASH ${point}\n`)
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 120_000)
  process.exit(3) // never reached when the test kills it
}

// --- the tool --------------------------------------------------------------------------------------

/** The payment provider: charges a card once per idempotency key. */
const chargeCard = (key: string) =>
  Effect.sync(() => {
    mark(`charge ${key}`)
    return "FL-847293"
  })

const bookFlight = FunctionTool.make("book_flight", {
  description: "Find and book the best flight to a city",
  // REPLACE=1: a second booking replaces the first
  ...(env("REPLACE") === "1" ? { onDuplicateCall: "replace" as const } : {}),
  ...(env("TIMEOUT_MS") === undefined ? {} : { timeout: Duration.millis(Number(env("TIMEOUT_MS"))) }),
  parameters: Schema.Struct({ to: Schema.String }),
  success: Schema.Struct({ confirmation: Schema.String })
}, ({ to }) =>
  Effect.gen(function*() {
    crashPoint("before-first-update")
    yield* AsyncRunContext.update(`Searching flights to ${to}`)
    crashPoint("after-first-update")
    // polling the airline: may run again after a restart
    mark(`poll ${process.pid}`)
    if (mode === "runner") writeSync(1, `POLLING ${process.pid}\n`)
    crashPoint("holding")
    const polling = Effect.sleep(env("POLL_MS") === undefined ? "300 millis" : Number(env("POLL_MS")))
    // REPLACE=1: polling cannot be cut short (a replaced booking stops once it is over)
    yield* env("REPLACE") === "1" ? Effect.uninterruptible(polling) : polling
    yield* AsyncRunContext.update(`Found 3 flights to ${to}; booking the best one`)
    const confirmation = yield* DurableToolset.activity("charge_card", ({ idempotencyKey }) =>
      Effect.gen(function*() {
        mark("activity-start charge_card")
        const confirmation = yield* chargeCard(idempotencyKey)
        crashPoint("during-activity")
        mark("activity-done charge_card")
        return confirmation
      }), { success: Schema.String })
    return { confirmation }
  }))

export const travel = DurableToolset.define({ id: "travel", tools: [bookFlight] })

// --- the model -------------------------------------------------------------------------------------

const model = ScriptedModel.layer(({ lastUserText, resultsSinceUser, systemText, toolChoice }) => {
  if (toolChoice === "none") return `Update (${/new results: ([^.]+)\./.exec(systemText)?.[1] ?? "?"})`
  if (resultsSinceUser.length === 0 && lastUserText.includes("Book")) {
    return { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }] }
  }
  return "On it: looking up flights to Tokyo."
})

// --- the store -------------------------------------------------------------------------------------

const storeLayer = (): Layer.Layer<DurableStore.DurableStore | WorkflowEngine | SqlClient, unknown> => {
  if (env("STORE") !== "postgres") return DurableStore.layerEmbedded({ dataDir: env("DATA_DIR")!, pollInterval: "200 millis" })
  return Layer.unwrap(Effect.promise(async () => {
    const { DurablePostgres } = await import("effect-async-toolset/durable/postgres")
    const port = env("RUNNER_PORT")
    return DurablePostgres.layer({
      url: Redacted.make(env("PG_URL")!),
      runner: port === undefined ? undefined : { host: "127.0.0.1", port: Number(port) },
      pollInterval: "200 millis",
      shardingConfig: DurablePostgres.fastFailover
    })
  }))
}

/**
 * The crash points inside the store's work: the tool's return told in this process (before its
 * end is recorded), and (REFUSE_END=1) the end's record refused from then on. The store's service
 * is patched in place (its hub and its SQL client are read by the call's execution at each use).
 */
const endRefusals = { on: false, count: 0 }

const patchStore = Layer.effectDiscard(Effect.gen(function*() {
  const store = yield* DurableStore.DurableStore
  const hub = store.hub as { returned: typeof store.hub.returned }
  const returned = hub.returned
  hub.returned = (sessionId, base) => {
    const forget = returned(sessionId, base)
    mark(`returned ${process.pid}`)
    if (env("REFUSE_END") === "1") endRefusals.on = true
    crashPoint("tool-returned")
    return forget
  }
  const sql = store.sql
  ;(store as { sql: typeof sql }).sql = new Proxy(sql, {
    apply: (target, self, args: Array<unknown>) => {
      const strings = args[0] as ReadonlyArray<string> | undefined
      if (endRefusals.on && Array.isArray(strings) && strings.some((part) => part.includes("AS no_first"))) {
        endRefusals.count++
        return Effect.fail(new Error("the store refused the end's record (a crash test's fault)"))
      }
      return Reflect.apply(target, self, args)
    }
  })
}))

// --- the agent -------------------------------------------------------------------------------------

/**
 * The agent's session as the toolset sees it, with the crash points of its chat: the final result
 * reaching the agent's chat, and the reply being asked for. Reply requests that go on are marked.
 */
const withCrashPoints = (inner: AgentSession.AgentSession["Service"]) =>
  AgentSession.AgentSession.of({
    ...inner,
    insert: (items) =>
      Effect.suspend(() => {
        if (items.some((item) => item._tag === "FunctionCallOutput" && item.callId.endsWith("_final"))) crashPoint("final-stored")
        if (items.some((item) => item._tag === "FunctionCallOutput" && item.callId.endsWith("_update_1"))) crashPoint("update-stored")
        // the toolset made after a restart puts owed items (or a restored call) back into the chat
        if (mode === "resume" && items.some((item) => item._tag === "FunctionCallOutput" && item.id.endsWith(":first"))) crashPoint("resume-restore")
        if (mode === "resume") crashPoint("resume-any-insert")
        return inner.insert(items)
      }),
    generateReply: (request) =>
      Effect.suspend(() => {
        const named = /new results: ([^.]+)\./.exec(request.instructions)?.[1] ?? ""
        if (named.includes("_final")) crashPoint("final-inserted")
        mark(`reply ${named}`)
        if (mode === "resume") crashPoint("resume-reply")
        return Effect.andThen(inner.generateReply(request), Effect.sync(() => crashPoint("reply-taken")))
      })
  })

const agentProgram = Effect.gen(function*() {
  timing("ready")
  const agent = yield* AiAgent.AiAgent
  const session = withCrashPoints(yield* AgentSession.AgentSession)
  const toolset = yield* DurableToolset.make(travel).pipe(Effect.provideService(AgentSession.AgentSession, session))
  yield* agent.addToolset(toolset)
  crashPoint("after-make")
  if (mode === "start") {
    yield* agent.send("Book me a flight to Tokyo")
    if (env("CANCEL") === "1") {
      const [task] = yield* toolset.runningTasks
      if (env("CANCEL_NOWAIT") === "1") {
        // the cancel is asked for; the store has not recorded it yet
        yield* Effect.forkChild(toolset.cancel(task!.callId), { startImmediately: true })
        crashPoint("cancel-requested")
      }
      yield* toolset.cancel(task!.callId)
      crashPoint("after-cancel")
    }
    const drainOn = env("DRAIN_ON")
    if (drainOn !== undefined) {
      // the test says when (it creates the file): the toolset is drained then
      yield* Effect.sleep("20 millis").pipe(Effect.repeat({ until: () => existsSync(drainOn) }))
      const began = performance.now()
      yield* toolset.drain
      writeSync(1, `DRAINED ${Math.round(performance.now() - began)}\n`)
    }
    if (env("CANCEL_AFTER_RETURN") === "1") {
      const [booking] = yield* toolset.runningTasks
      // the tool returned, and the store refused its end's record at least once (it is tried again)
      yield* Effect.sleep("20 millis").pipe(Effect.repeat({ until: () => endRefusals.count > 0 }))
      const answer = yield* toolset.cancel(booking!.callId)
      writeSync(1, `CANCEL ${JSON.stringify(answer)}\n`)
      crashPoint("cancel-while-recording")
    }
    if (env("REPLACE") === "1") {
      // the user asks again: the new booking replaces the first, which is still polling
      yield* Effect.forkChild(agent.send("Book me a flight to Tokyo, please"))
      const sql = yield* SqlClient
      yield* Effect.repeat(sql`SELECT count(*)::int AS n FROM async_toolset_call WHERE status = 'waiting'`, {
        until: (rows) => Number(rows[0]!["n"]) > 0,
        schedule: Schedule.spaced("20 millis")
      })
      crashPoint("replace-waiting")
    }
  }
  timing("toolset made")
  // until everything is said: no call running, no reply owed, no turn left
  yield* Effect.gen(function*() {
    yield* toolset.awaitIdle
    timing("idle")
    yield* agent.awaitInactive
    yield* toolset.awaitIdle
  }).pipe(Effect.timeout("90 seconds"))
  const chat = (yield* agent.chat).items.map((item) =>
    item._tag === "ChatMessage"
      ? { tag: item._tag, id: item.id, role: item.role, content: item.content }
      : item._tag === "FunctionCall"
      ? { tag: item._tag, id: item.id, callId: item.callId }
      : { tag: item._tag, id: item.id, callId: item.callId, output: item.output }
  )
  // the calls' statuses as stored
  const sql = yield* SqlClient
  const stored = (yield* sql<{ base: string; status: string }>`SELECT base, status FROM async_toolset_call ORDER BY base`)
    .map((row) => ({ base: row.base, status: row.status }))
  writeSync(1, `REPORT ${JSON.stringify({ chat, running: yield* toolset.runningTasks, stored })}\n`)
  reported = performance.now()
})

const isClient = env("STORE") === "postgres" && env("RUNNER_PORT") === undefined

const main = mode === "runner"
  ? Effect.andThen(Effect.sync(() => writeSync(1, `RUNNER READY ${process.pid}\n`)), Effect.never).pipe(
    Effect.provide(DurableToolset.layer(travel).pipe(Layer.provideMerge(patchStore), Layer.provideMerge(storeLayer())))
  )
  : agentProgram.pipe(
    Effect.provide(
      DurableChat.agentLayer({ instructions: "You book flights." }).pipe(
        Layer.provideMerge(DurableChat.layer({ sessionId: env("SESSION") ?? "crash" })),
        // a cluster client (PostgreSQL without RUNNER_PORT) runs no calls: the runners do
        Layer.provideMerge(isClient ? Layer.empty : DurableToolset.layer(travel)),
        Layer.provide(model),
        Layer.provideMerge(patchStore),
        Layer.provideMerge(storeLayer())
      )
    )
  )

timing("main")
/** When the report was printed: the process then closes the toolset and its store, and says how long that took. */
let reported: number | undefined

Effect.runPromise(Effect.scoped(main)).then(
  () => {
    if (reported !== undefined) writeSync(1, `CLOSED ${Math.round(performance.now() - reported)}\n`)
    process.exit(0)
  },
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)


