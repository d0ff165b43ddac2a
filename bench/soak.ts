/**
 * Soak: one million calls through one toolset, on the real clock, with mixed outcomes (plain
 * success, update + final, failures, defects, cancels, timeouts, duplicate call ids, bad input),
 * while the session turns busy now and then and some insertions and reply requests fail. Every
 * 100k calls it forces a garbage collection and prints the heap; at the end it checks that every
 * call is accounted for: the right output, every delivered item in the chat once and replied to
 * once, nothing left running, no fiber left after close.
 *
 *   npm run soak                      (node --expose-gc, 1,000,000 calls)
 *   SOAK_CALLS=100000 npm run soak    (a shorter run)
 *
 * The session keeps no history (a chat of two million items is not what this measures): it counts
 * what it is given, per call, in fixed-size arrays allocated up front.
 */
import { Effect, Latch, Logger, Metric, Schema } from "effect"
import { AgentSession, AsyncRunContext, AsyncToolset, ChatContext, FunctionTool, ToolError } from "effect-async-toolset"

const total = Number(process.env["SOAK_CALLS"] ?? 1_000_000)
const step = Number(process.env["SOAK_STEP"] ?? 100_000)
/** Every n-th insertion and reply request fails once (0: never); the toolset retries them. */
const insertFailEvery = Number(process.env["SOAK_INSERT_FAIL_EVERY"] ?? 1000)
const replyFailEvery = Number(process.env["SOAK_REPLY_FAIL_EVERY"] ?? 100)
const batch = 1_000
const concurrency = 250

const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) throw new Error("run with node --expose-gc (npm run soak does)")

// --- what each call does ----------------------------------------------------------------------------

const kinds = [
  "plain", "plain", "plain", "plain", "plain", "plain",
  "background", "background", "background", "background",
  "toolError",
  "failAfterUpdate",
  "defectAfterUpdate",
  "defect",
  "cancel", "cancel",
  "timeout",
  "voidFinal",
  "badInput",
  "unknownTool"
] as const
type Kind = typeof kinds[number]
const kindOf = (i: number): Kind => kinds[i % kinds.length]!

/** Which kinds deliver a `<id>_final` item, and which an `<id>_update_1` item. */
const deliversFinal = new Set<Kind>(["background", "failAfterUpdate", "defectAfterUpdate", "timeout"])
const deliversUpdate = new Set<Kind>(["background"])

// --- the session: counts per call, keeps nothing else --------------------------------------------

const finals = new Uint8Array(total)
const updates = new Uint8Array(total)
const repliedFinals = new Uint8Array(total)
const repliedUpdates = new Uint8Array(total)
const counts = {
  insertAttempts: 0,
  insertFailures: 0,
  replyAttempts: 0,
  replyFailures: 0,
  replies: 0,
  logs: { Error: 0, Warn: 0, other: 0 }
}

const indexOf = (syntheticId: string): { readonly i: number; readonly final: boolean } => {
  const final = syntheticId.endsWith("_final")
  const base = final ? syntheticId.slice(0, -"_final".length) : syntheticId.slice(0, syntheticId.indexOf("_update_"))
  return { i: Number(base.slice(1)), final }
}

const makeSession = Effect.gen(function*() {
  const idle = yield* Latch.make(true)
  const awaitInactive: Effect.Effect<void> = Effect.suspend(() =>
    idle.isOpen() ? Effect.void : Effect.andThen(idle.await, awaitInactive)
  )
  const session = AgentSession.AgentSession.of({
    chatContext: Effect.succeed(ChatContext.ChatContext.empty),
    items: Effect.succeed(ChatContext.ChatContext.empty.items),
    insert: (items) =>
      Effect.suspend(() => {
        // every n-th insertion fails once; the reply fiber retries it
        if (++counts.insertAttempts % insertFailEvery === 0 && insertFailEvery > 0) {
          counts.insertFailures++
          return Effect.fail(new AgentSession.SessionError({ operation: "insert", message: "soak: injected failure" }))
        }
        for (const item of items) {
          if (item._tag !== "FunctionCall") continue
          const { final, i } = indexOf(item.callId)
          if (final) finals[i]!++
          else updates[i]!++
        }
        return Effect.void
      }),
    awaitInactive,
    generateReply: (request) =>
      Effect.suspend(() => {
        // every n-th reply request fails once; it is retried
        if (++counts.replyAttempts % replyFailEvery === 0 && replyFailEvery > 0) {
          counts.replyFailures++
          return Effect.fail(new AgentSession.SessionError({ operation: "generateReply", message: "soak: injected failure" }))
        }
        counts.replies++
        // the instructions are "REPLY <ids>" (see the prompts below)
        for (const id of request.instructions.slice("REPLY ".length).split(", ")) {
          const { final, i } = indexOf(id)
          if (final) repliedFinals[i]!++
          else repliedUpdates[i]!++
        }
        return Effect.void
      })
  })
  return { session, idle }
})

// --- the tools --------------------------------------------------------------------------------------

const Parameters = Schema.Struct({ i: Schema.Int })

const soakTool = FunctionTool.make("soak", { description: "Does what call i says", parameters: Parameters, onDuplicateCall: "allow" }, ({ i }) =>
  Effect.gen(function*() {
    switch (kindOf(i)) {
      case "plain":
        return `ok ${i}`
      case "background":
        yield* AsyncRunContext.update(`started ${i}`)
        yield* Effect.yieldNow
        yield* AsyncRunContext.update(`halfway ${i}`)
        yield* Effect.yieldNow
        return `done ${i}`
      case "toolError":
        return yield* new ToolError.ToolError({ message: `no ${i}` })
      case "failAfterUpdate":
        yield* AsyncRunContext.update(`started ${i}`)
        yield* Effect.yieldNow
        return yield* new ToolError.ToolError({ message: `failed ${i}` })
      case "defectAfterUpdate":
        yield* AsyncRunContext.update(`started ${i}`)
        yield* Effect.yieldNow
        return yield* Effect.die(new Error(`crashed ${i}`))
      case "defect":
        return yield* Effect.die(new Error(`crashed ${i}`))
      case "cancel":
        yield* AsyncRunContext.update(`started ${i}`)
        return yield* Effect.never
      case "voidFinal":
        yield* AsyncRunContext.update(`started ${i}`)
        yield* Effect.yieldNow
        return undefined
      default:
        return yield* Effect.die(new Error(`soak: call ${i} should not have run`))
    }
  }))

const slowTool = FunctionTool.make("slow", {
  description: "Outlives its timeout",
  parameters: Parameters,
  onDuplicateCall: "allow",
  timeout: "1 millis"
}, ({ i }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`started ${i}`)
    yield* Effect.sleep("20 millis")
    return `too late ${i}`
  }))

// --- one call ---------------------------------------------------------------------------------------

const wrong = (i: number, what: string) => Effect.die(new Error(`call ${i} (${kindOf(i)}): ${what}`))

const runCall = (toolset: AsyncToolset.AsyncToolset, i: number) =>
  Effect.gen(function*() {
    const kind = kindOf(i)
    const callId = `c${i}`
    const name = kind === "timeout" ? "slow" : kind === "unknownTool" ? "nope" : "soak"
    const args = kind === "badInput" ? `{"i":${i},` : `{"i":${i}}`
    const out = yield* toolset.execute(yield* ChatContext.functionCall({ callId, name, arguments: args }))
    if (out.callId !== callId) return yield* wrong(i, `answered ${out.callId}`)
    const pending = AsyncToolset.isPending(out)
    switch (kind) {
      case "plain":
        if (out.isError || out.output !== `ok ${i}`) return yield* wrong(i, out.output)
        break
      case "toolError":
      case "defect":
      case "badInput":
      case "unknownTool":
        if (!out.isError) return yield* wrong(i, `expected an error output, got ${out.output}`)
        break
      case "cancel": {
        if (!pending) return yield* wrong(i, "expected a pending output")
        // the model sends the same call id again while it runs: refused
        const dup = yield* toolset.execute(yield* ChatContext.functionCall({ callId, name, arguments: args }))
        if (!dup.isError || !dup.output.includes("already running")) return yield* wrong(i, `duplicate id: ${dup.output}`)
        const result = yield* toolset.cancel(callId)
        if (result !== "cancelled") return yield* wrong(i, `cancel gave ${result}`)
        break
      }
      default:
        if (!pending) return yield* wrong(i, `expected a pending output, got ${out.output}`)
    }
  })

// --- the run ----------------------------------------------------------------------------------------

const mb = (bytes: number) => (bytes / 1024 / 1024).toFixed(1)

const fibers = { started: 0, ended: 0 }
const fiberCounter: Metric.FiberRuntimeMetricsService = {
  recordFiberStart: () => {
    fibers.started++
  },
  recordFiberEnd: () => {
    fibers.ended++
  }
}

const countingLogger = Logger.make((o) => {
  if (o.logLevel === "Error") counts.logs.Error++
  else if (o.logLevel === "Warn") counts.logs.Warn++
  else counts.logs.other++
})

const program = Effect.gen(function*() {
  const { idle, session } = yield* makeSession
  const startedAt = Date.now()
  const report: Array<string> = []

  yield* Effect.scoped(Effect.gen(function*() {
    const toolset = yield* AsyncToolset.make({
      id: "soak",
      tools: [soakTool, slowTool],
      prompts: { replyAtTail: "REPLY {pendingCallIds}", replyMaybeCovered: "REPLY {pendingCallIds}" }
    })

    const line = (done: number) => {
      gc!()
      gc!()
      const m = process.memoryUsage()
      const text = `${String(done).padStart(9)} calls | heap ${mb(m.heapUsed).padStart(6)} MB | rss ${mb(m.rss).padStart(6)} MB | fibers alive ${
        String(fibers.started - fibers.ended).padStart(4)
      } | ${((Date.now() - startedAt) / 1000).toFixed(1).padStart(6)} s`
      report.push(text)
      console.log(text)
    }
    line(0)

    for (let from = 0; from < total; from += batch) {
      // one batch in ten runs while the agent speaks: replies wait for it, then cover it all
      const speaking = from % (10 * batch) === 5 * batch
      if (speaking) yield* idle.close
      const indices = Array.from({ length: Math.min(batch, total - from) }, (_, k) => from + k)
      yield* Effect.forEach(indices, (i) => runCall(toolset, i), { concurrency, discard: true })
      if (speaking) yield* idle.open
      // calls come from the network in a real agent: let the event loop (timers, the reply fiber) run
      yield* Effect.sleep("0 millis")
      const done = from + indices.length
      if (done % step === 0 || done === total) {
        yield* idle.open
        yield* toolset.awaitIdle
        line(done)
      }
    }
    yield* idle.open
    yield* toolset.awaitIdle
    const running = yield* toolset.runningTasks
    if (running.length > 0) return yield* Effect.die(new Error(`${running.length} calls still running`))
  })).pipe(Effect.provideService(AgentSession.AgentSession, session))

  // --- every call accounted for ---
  const problems: Array<string> = []
  const byKind = new Map<Kind, number>()
  let itemsDelivered = 0
  for (let i = 0; i < total; i++) {
    const kind = kindOf(i)
    byKind.set(kind, (byKind.get(kind) ?? 0) + 1)
    const wantFinal = deliversFinal.has(kind) ? 1 : 0
    const wantUpdate = deliversUpdate.has(kind) ? 1 : 0
    itemsDelivered += wantFinal + wantUpdate
    if (finals[i] !== wantFinal) problems.push(`c${i} (${kind}): ${finals[i]} finals in the chat, expected ${wantFinal}`)
    if (updates[i] !== wantUpdate) problems.push(`c${i} (${kind}): ${updates[i]} updates in the chat, expected ${wantUpdate}`)
    if (repliedFinals[i] !== wantFinal) problems.push(`c${i} (${kind}): final named in ${repliedFinals[i]} replies`)
    if (repliedUpdates[i] !== wantUpdate) problems.push(`c${i} (${kind}): update named in ${repliedUpdates[i]} replies`)
    if (problems.length > 20) break
  }
  const alive = fibers.started - fibers.ended
  if (alive !== 0) problems.push(`${alive} fibers outlived close`)

  console.log("")
  console.log(`calls: ${total} in ${((Date.now() - startedAt) / 1000).toFixed(1)} s (node ${process.version}, ${process.arch})`)
  console.log(`by kind: ${[...byKind].map(([k, n]) => `${k} ${n}`).join(", ")}`)
  console.log(`items delivered into the chat: ${itemsDelivered}; reply requests made: ${counts.replies}`)
  console.log(
    `injected: ${counts.insertFailures} insertion failures (of ${counts.insertAttempts} attempts), ${counts.replyFailures} reply failures (of ${counts.replyAttempts} attempts)`
  )
  console.log(`logs: ${counts.logs.Error} errors, ${counts.logs.Warn} warnings, ${counts.logs.other} other`)
  console.log(`fibers started: ${fibers.started}, alive after close: ${alive}`)
  if (problems.length > 0) {
    console.log(`\nNOT ACCOUNTED FOR:\n${problems.join("\n")}`)
    process.exitCode = 1
  } else {
    console.log("every call accounted for")
  }
})

Effect.runPromise(
  program.pipe(
    Effect.provide(Logger.layer([countingLogger])),
    Effect.provideService(Metric.FiberRuntimeMetrics, fiberCounter)
  )
).catch((e) => {
  console.error(e)
  process.exitCode = 1
})
