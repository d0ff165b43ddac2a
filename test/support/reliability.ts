/**
 * Helpers for the reliability tests: a session whose every operation can be made to fail, die or
 * hang; a logger that keeps every line with its cause; a count of the fibers a program starts; a
 * way to wait for an effect while the test clock runs; and checks on what the chat holds.
 */
import { Cause, Context, Effect, Fiber, Layer, Logger, Metric, References, Stream } from "effect"
import type { Duration } from "effect"
import { advance, settle } from "./toolsets.ts"
import { AgentSession, AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
import type { AsyncToolset, ToolsetEvent } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"

// --- a session that fails on demand ---------------------------------------------------------------

/**
 * What one attempt of a session operation does: work, fail (a `SessionError`), die, end with an
 * interrupt cause (as an adapter closing an activity does), or never return.
 */
export type Fault = "ok" | "fail" | "die" | "interrupt" | "hang"

/**
 * Decides each attempt of each session operation. `attempt` counts from 1, per operation. An
 * operation without a rule always works.
 */
export interface FaultPlan {
  readonly insert?: ((items: ReadonlyArray<ChatContext.ChatItem>, attempt: number) => Fault) | undefined
  readonly generateReply?: ((request: AgentSession.ReplyRequest, attempt: number) => Fault) | undefined
  readonly chatContext?: ((attempt: number) => Fault) | undefined
  readonly awaitInactive?: ((attempt: number) => Fault) | undefined
}

/** Every attempt the toolset made, per operation, with the fault it met. */
export interface Attempts {
  readonly insert: Array<{ readonly callIds: ReadonlyArray<string>; readonly fault: Fault }>
  readonly generateReply: Array<{ readonly instructions: string; readonly fault: Fault }>
  readonly chatContext: Array<Fault>
  readonly awaitInactive: Array<Fault>
}

/** The text of the injected failures and defects, so a test can find them in a logged cause. */
export const injected = (operation: string, fault: "fail" | "die") => `injected ${fault} in ${operation}`

const inject = <A>(operation: AgentSession.SessionError["operation"] | "awaitInactive", fault: Fault, ok: Effect.Effect<A, AgentSession.SessionError>) => {
  switch (fault) {
    case "ok":
      return ok
    case "fail":
      return operation === "awaitInactive"
        ? Effect.die(new Error(injected(operation, "fail")))
        : Effect.fail(new AgentSession.SessionError({ operation, message: injected(operation, "fail") }))
    case "die":
      return Effect.die(new Error(injected(operation, "die")))
    case "interrupt":
      return Effect.interrupt
    case "hang":
      return Effect.never
  }
}

/**
 * The in-memory test session behind a layer of fault injection: each operation asks `plan` what
 * to do. A failed or hanging attempt never reaches the in-memory session, so `TestSession.chat`,
 * `insertions` and `replies` hold only what really happened.
 */
export const faultySession = (plan: FaultPlan, options: TestSession.Options = {}) => {
  const attempts: Attempts = { insert: [], generateReply: [], chatContext: [], awaitInactive: [] }
  const callIdsOf = (items: ReadonlyArray<ChatContext.ChatItem>) =>
    items.flatMap((item) => item._tag === "FunctionCall" ? [item.callId] : [])
  const layer: Layer.Layer<AgentSession.AgentSession | TestSession.TestSession> = Layer.effectContext(
    Effect.map(TestSession.make(options), ({ controls, session }) => {
      const faulty = AgentSession.AgentSession.of({
        // The toolset reads the chat through `items`; a fault planned for reading the chat hits it too.
        items: Effect.suspend(() => {
          const fault = plan.chatContext?.(attempts.chatContext.length + 1) ?? "ok"
          attempts.chatContext.push(fault)
          return inject("chatContext", fault, session.items)
        }),
        chatContext: Effect.suspend(() => {
          const fault = plan.chatContext?.(attempts.chatContext.length + 1) ?? "ok"
          attempts.chatContext.push(fault)
          return inject("chatContext", fault, session.chatContext)
        }),
        insert: (items) =>
          Effect.suspend(() => {
            const fault = plan.insert?.(items, attempts.insert.filter((a) => a.callIds.join() === callIdsOf(items).join()).length + 1) ?? "ok"
            attempts.insert.push({ callIds: callIdsOf(items), fault })
            return inject("insert", fault, session.insert(items))
          }),
        awaitInactive: Effect.flatMap(session.awaitInactive, () =>
          Effect.suspend(() => {
            const fault = plan.awaitInactive?.(attempts.awaitInactive.length + 1) ?? "ok"
            attempts.awaitInactive.push(fault)
            return fault === "interrupt" ? Effect.interrupt : inject("awaitInactive", fault, Effect.void).pipe(Effect.orDie)
          })),
        generateReply: (request) =>
          Effect.suspend(() => {
            const fault = plan.generateReply?.(request, attempts.generateReply.length + 1) ?? "ok"
            attempts.generateReply.push({ instructions: request.instructions, fault })
            return inject("generateReply", fault, session.generateReply(request))
          })
      })
      return Context.make(AgentSession.AgentSession, faulty).pipe(Context.add(TestSession.TestSession, controls))
    })
  )
  return { layer, attempts }
}

// --- logs -----------------------------------------------------------------------------------------

export interface LoggedLine {
  readonly level: string
  readonly text: string
  readonly cause: Cause.Cause<unknown>
  readonly annotations: Record<string, unknown>
}

/** A logger that keeps every line (Debug and up), with its cause and annotations. */
export const captureLogs = () => {
  const lines: Array<LoggedLine> = []
  const logger = Logger.make((o) => {
    const message = Array.isArray(o.message) ? o.message : [o.message]
    lines.push({
      level: o.logLevel,
      text: message.map((m) => typeof m === "string" ? m : JSON.stringify(m)).join(" "),
      cause: o.cause,
      annotations: { ...o.fiber.getRef(References.CurrentLogAnnotations) }
    })
  })
  const layer = Layer.merge(Logger.layer([logger]), Layer.succeed(References.MinimumLogLevel)("Debug"))
  /** The lines at `levels` whose text, annotations or cause mention every one of `needles`. */
  const find = (levels: ReadonlyArray<string>, ...needles: ReadonlyArray<string>) => findSince(0, levels, ...needles)
  /** Like `find`, among the lines logged since `mark` (a count of lines, e.g. `lines.length` earlier). */
  const findSince = (mark: number, levels: ReadonlyArray<string>, ...needles: ReadonlyArray<string>) =>
    lines.slice(mark).filter((line) => {
      if (!levels.includes(line.level)) return false
      const haystack = `${line.text}\n${JSON.stringify(line.annotations)}\n${Cause.pretty(line.cause)}`
      return needles.every((n) => haystack.includes(n))
    })
  return { lines, layer, find, findSince }
}

/** Levels at which a fault is reported (not hidden in debug output). */
export const reported = ["Warn", "Error", "Fatal"] as const

// --- fibers ---------------------------------------------------------------------------------------

/**
 * Counts the fibers started inside `track`ed effects, through Effect's fiber runtime metrics hook
 * (every fiber forked from a tracked fiber inherits it). `active` is how many have not ended.
 */
export const makeFiberCounter = () => {
  const counter = { started: 0, ended: 0 }
  const service: Metric.FiberRuntimeMetricsService = {
    recordFiberStart: () => {
      counter.started++
    },
    recordFiberEnd: () => {
      counter.ended++
    }
  }
  return {
    get started() {
      return counter.started
    },
    get active() {
      return counter.started - counter.ended
    },
    track: <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
      Effect.provideService(effect, Metric.FiberRuntimeMetrics, service)
  }
}

// --- time -----------------------------------------------------------------------------------------

/**
 * Runs `effect` while the test clock moves on in `step`s, up to `limit`: for effects that wait for
 * retries, timeouts or tools. Dies if it has not finished by then, so a hang is a failure, not a
 * stuck test.
 */
export const whileClockRuns = <A, E>(
  effect: Effect.Effect<A, E>,
  options: { readonly what: string; readonly step?: Duration.Input; readonly steps?: number }
): Effect.Effect<A, E> =>
  Effect.gen(function*() {
    const fiber = yield* Effect.forkChild(effect, { startImmediately: true })
    const steps = options.steps ?? 600
    for (let i = 0; i < steps && fiber.pollUnsafe() === undefined; i++) {
      yield* advance(options.step ?? "1 second")
    }
    if (fiber.pollUnsafe() === undefined) yield* settle
    if (fiber.pollUnsafe() === undefined) {
      yield* Effect.forkChild(Fiber.interrupt(fiber))
      return yield* Effect.die(new Error(`still waiting: ${options.what} did not finish while the clock ran`))
    }
    return yield* Fiber.join(fiber)
  })

// --- the chat -------------------------------------------------------------------------------------

/**
 * What is wrong with the chat's function calls: a call without exactly one output (or an output
 * without its call), or a call id used by more than one call.
 */
export const chatProblems = (chat: ChatContext.ChatContext): ReadonlyArray<string> => {
  const calls = new Map<string, number>()
  const outputs = new Map<string, number>()
  for (const item of chat.items) {
    if (item._tag === "FunctionCall") calls.set(item.callId, (calls.get(item.callId) ?? 0) + 1)
    if (item._tag === "FunctionCallOutput") outputs.set(item.callId, (outputs.get(item.callId) ?? 0) + 1)
  }
  const problems: Array<string> = []
  for (const [callId, n] of calls) {
    if (n > 1) problems.push(`${callId}: ${n} calls`)
    const o = outputs.get(callId) ?? 0
    if (o !== 1) problems.push(`${callId}: ${o} outputs (dangling call)`)
  }
  for (const [callId] of outputs) if (!calls.has(callId)) problems.push(`${callId}: an output without its call`)
  return problems
}

/** The call ids of the function calls in the chat, in chat order. */
export const chatCallIds = (chat: ChatContext.ChatContext): ReadonlyArray<string> =>
  chat.items.flatMap((item) => item._tag === "FunctionCall" ? [item.callId] : [])

/** The synthetic call ids (`<id>_update_<n>`, `<id>_final`) named in reply instructions. */
export const namedCallIds = (instructions: string): ReadonlyArray<string> =>
  instructions.match(/[A-Za-z0-9_-]+(?:_update_\d+|_final)\b/g) ?? []

/** A model call; `args` is JSON text or a value to encode. */
export const modelCall = (callId: string, name: string, args: string | object = {}) =>
  ChatContext.functionCall({ callId, name, arguments: typeof args === "string" ? args : JSON.stringify(args) })

// --- a session port wrapped by hand ------------------------------------------------------------

type Port = AgentSession.AgentSession["Service"]

/** Wraps the in-memory session's port: `wrap` gets the real port and returns the one the toolsets see. */
export const wrappedSession = (wrap: (session: Port) => Partial<Port>, options: TestSession.Options = {}) =>
  Layer.effectContext(Effect.map(TestSession.make(options), ({ controls, session }) => {
    const port = AgentSession.AgentSession.of({ ...session, ...wrap(session) })
    return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
  }))

/** A reply request's failure, as a session reports it. */
export const sessionError = (message: string) => new AgentSession.SessionError({ operation: "generateReply", message })

/** The call ids of the function calls and outputs among `items`, in order. */
export const callIdsOf = (items: ReadonlyArray<ChatContext.ChatItem>): ReadonlyArray<string> =>
  items.flatMap((i) => i._tag === "FunctionCall" || i._tag === "FunctionCallOutput" ? [i.callId] : [])

/** A tool that updates at once and after 1 second, then runs 10 seconds more. */
export const chatty = FunctionTool.make("chatty", { description: "Updates twice, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("half way")
    yield* Effect.sleep("10 seconds")
    return "done"
  }))

// --- the reply tests' common parts --------------------------------------------------------------

/** A tool that reports "started", then ends after a second with "done". */
export const reportingJob = FunctionTool.make("job", { description: "Reports, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    return "done"
  }))

/** Collects a toolset's events in the background (joined once the toolset closed). */
export const recordEvents = (toolset: AsyncToolset.AsyncToolset) =>
  toolset.events.pipe(Stream.runCollect, Effect.forkChild({ startImmediately: true }))

/** The reply events among `events`, as lines: `delivered <ids>`, `skipped <ids> <reason>`. */
export const replyEvents = (events: ReadonlyArray<ToolsetEvent.ToolsetEvent>) =>
  events.flatMap((e) =>
    e._tag === "ReplyDelivered" ? [`delivered ${e.callIds.join(",")}`] : e._tag === "ReplySkipped" ? [`skipped ${e.callIds.join(",")} ${e.reason}`] : []
  )

/** Reply requests fail while `failing()` says so (each is recorded by the in-memory session first). */
export const failingWhile = (failing: (n: number) => boolean) =>
  wrappedSession((session) => {
    let n = 0
    return {
      generateReply: (request) =>
        Effect.andThen(session.generateReply(request), Effect.suspend(() => failing(++n) ? Effect.fail(sessionError(`injected fail ${n}`)) : Effect.void))
    }
  })
