/**
 * A text agent on `effect/ai`: it runs real turns on any `LanguageModel` layer and is the
 * `AgentSession` its toolsets talk to.
 *
 * A user message starts a turn: the model is asked, its tool calls go to
 * `AsyncToolset.execute` (an async tool hands back its first update at once), the outputs are
 * fed back, and the model is asked again until it answers in words. Turns run one at a time, in
 * the order they were asked for, whether the user or a toolset's reply fiber asked; "inactive"
 * means no turn is queued or running and the user is not typing.
 *
 * The toolsets need the session when they are made, and the agent needs the toolsets to run
 * calls: the agent's layer provides `AgentSession`, and a toolset declared with `toolset` (a
 * layer) is built on it and added to the agent. `AsyncToolset.make` and `addToolset` do the same
 * step by step, for tests.
 *
 * By default the model is asked with `streamText`: the agent's words reach `events` as
 * `TextDelta`s while the model writes them; each message is stored once, whole.
 *
 * @example
 * ```ts
 * import { Effect, Layer, Schema } from "effect"
 * import { AiAgent, FunctionTool } from "effect-async-toolset"
 *
 * const getWeather = FunctionTool.make("get_weather", {
 *   description: "Current weather in a city",
 *   parameters: Schema.Struct({ city: Schema.String })
 * }, ({ city }) => Effect.succeed(`Sunny in ${city}`))
 *
 * const App = AiAgent.toolset({ id: "weather", tools: [getWeather] }).pipe(
 *   Layer.provideMerge(AiAgent.layer({ instructions: "You are a helpful assistant." }))
 * ) // then provide any LanguageModel layer (effect-async-toolset/openai-compat has an OpenAI-compatible one)
 *
 * const program = Effect.gen(function*() {
 *   const agent = yield* AiAgent.AiAgent
 *   const turn = yield* agent.send("What is the weather in Paris?")
 *   console.log(turn.text)
 * }).pipe(Effect.provide(App))
 * ```
 *
 * @since 0.1.0
 */
import { Cause, Clock, Context, Deferred, Effect, Exit, Layer, PubSub, Queue, Stream } from "effect"
import type { Scope } from "effect"
import { AiError, LanguageModel, Prompt } from "effect/ai"
import type { Toolkit } from "effect/ai"
import type * as AgentEvent from "./AgentEvent.ts"
import { AgentSession } from "./AgentSession.ts"
import type { AsyncRunContext } from "./AsyncRunContext.ts"
import { isPending, make as makeToolset } from "./AsyncToolset.ts"
import type { AsyncToolset, Options as ToolsetOptions } from "./AsyncToolset.ts"
import { ChatContext, ChatMessage, FunctionCall, FunctionCallOutput, functionCallOutput, message } from "./ChatContext.ts"
import type * as FunctionTool from "./FunctionTool.ts"
import type { ChatItem } from "./ChatContext.ts"
import { newId } from "./internal/id.ts"
import { insertSorted } from "./internal/ordered.ts"
import * as Prompts from "./Prompts.ts"
import { argumentsText, toPrompt, toTool } from "./PromptConversion.ts"
import type { AiTool } from "./PromptConversion.ts"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** The agent's standing instructions: the system message at the head of every prompt. */
  readonly instructions?: string | undefined
  /** The conversation so far (default: empty). */
  readonly history?: ChatContext | undefined
  /**
   * Keeps the chat beyond memory (e.g. `DurableChat`): every item the agent adds to its chat (user
   * and assistant messages, its calls and their outputs, the toolsets' insertions) is handed to
   * `save` once it is in the chat, before the agent goes on. `history` is what the store holds.
   */
  readonly store?: ChatStore | undefined
  /**
   * Most model requests in one turn (default 10). The last one may not call tools, so a turn
   * always ends in words.
   */
  readonly maxSteps?: number | undefined
  /**
   * The note the model reads for each call still running in the background, right after that
   * call's first update, so the prompt still ends with what the user said last (never stored in
   * the chat). Default: {@link defaultRunningCall}.
   */
  readonly runningCall?:
    | Prompts.Template<{ readonly functionName: string; readonly callId: string; readonly arguments: string }>
    | undefined
  /**
   * Ask the model with `streamText` (default `true`): the agent's words arrive as `TextDelta`
   * events while the model writes them, and each message is stored once, whole, when the model's
   * answer ends. `false` asks with `generateText`: no deltas, the same chat. Every `LanguageModel`
   * made with `LanguageModel.make` can stream (a provider that cannot sends its answer as one
   * delta), so streaming costs nothing where it is not real; turn it off for a provider whose
   * streamed answers are less reliable than its whole ones.
   */
  readonly stream?: boolean | undefined
}

/**
 * The default running-call note.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultRunningCall: Prompts.Template<{ readonly functionName: string; readonly callId: string }> =
  "{functionName} (call {callId}) is still running in the background. Its result will be added to the " +
  "conversation when it is ready. Do not call {functionName} again for this; if the user asks, say it is " +
  "still in progress."

/**
 * What one turn did.
 *
 * @since 0.1.0
 * @category models
 */
export interface Turn {
  /** What the agent said in this turn, its messages joined by newlines ("" if it said nothing). */
  readonly text: string
  /** The items the turn added to the chat, in the order it added them. */
  readonly items: ReadonlyArray<ChatItem>
}

/**
 * Options of one turn started without a user message.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReplyOptions {
  /** Instructions for this turn only: the model reads them last; they are not stored. */
  readonly instructions?: string | undefined
  /** `"none"`: the model may not call tools in this turn (default `"auto"`). */
  readonly toolChoice?: "auto" | "none" | undefined
}

/**
 * Where an agent keeps its chat besides memory.
 *
 * @since 0.1.0
 * @category models
 */
export interface ChatStore {
  /**
   * Saves items just added to the chat (a store skips those it holds already). It does not fail:
   * a store that cannot save reports it itself.
   */
  readonly save: (items: ReadonlyArray<ChatItem>) => Effect.Effect<void>
}

/**
 * What the agent does, as it happens: turns starting and ending, the agent's words as they stream
 * in, items added to the chat. The events and their Schemas are in `AgentEvent`.
 *
 * @since 0.1.0
 * @category events
 */
export type Event = AgentEvent.AgentEvent

/**
 * @since 0.1.0
 * @category services
 */
export class AiAgent extends Context.Service<AiAgent, {
  /**
   * The user says `text`: it is in the chat at once, and a turn answers it (after the turns
   * already asked for). Yields what the turn did; fails with the model's error, after logging it.
   * The turn runs in the agent, not in the caller: interrupting the caller does not stop it.
   */
  readonly send: (text: string) => Effect.Effect<Turn, AiError.AiError>
  /** Runs a turn without a user message (a greeting, a nudge), queued like any other. */
  readonly generateReply: (options?: ReplyOptions) => Effect.Effect<Turn, AiError.AiError>
  /** The user started or stopped typing (or speaking): background replies wait while they do. */
  readonly setUserTyping: (typing: boolean) => Effect.Effect<void>
  /**
   * Lets the model call the toolset's tools, until the scope closes. Tool names (management tools
   * included) must be unique across the agent's toolsets. (`toolset`, a layer, does this for you.)
   */
  readonly addToolset: (toolset: AsyncToolset) => Effect.Effect<void, never, Scope.Scope>
  /** The conversation as it is now. */
  readonly chat: Effect.Effect<ChatContext>
  /** No turn queued or running, the user not typing. */
  readonly isInactive: Effect.Effect<boolean>
  /** Completes when the agent is inactive, and only while it is. */
  readonly awaitInactive: Effect.Effect<void>
  /**
   * Completes when everything is said: the agent is inactive, and no call of its toolsets runs
   * and no reply is owed (each toolset's `awaitIdle`), with no turn started meanwhile. For tests,
   * scripts and shutdown.
   */
  readonly awaitIdle: Effect.Effect<void>
  /** The toolsets added (`addToolset`, or a `toolset` layer) and not yet removed, in order. */
  readonly toolsets: Effect.Effect<ReadonlyArray<AsyncToolset>>
  /**
   * Turns, the agent's words as they stream in, and chat items, as they happen (`AgentEvent`). A
   * subscriber sees the events published after it starts; the stream ends when the agent closes.
   */
  readonly events: Stream.Stream<Event>
  /** The agent as the port its toolsets use (what the layer provides as `AgentSession`). */
  readonly session: AgentSession["Service"]
}>()("effect-async-toolset/AiAgent") {}

/** A turn waiting for its go. */
interface Job {
  readonly cause: "user" | "reply"
  readonly instructions: string | undefined
  readonly toolChoice: "auto" | "none"
  /** Completed when the turn begins (the agent took the request up). */
  readonly started: Deferred.Deferred<void>
  readonly done: Deferred.Deferred<Turn, AiError.AiError>
}

/** The same item at another time. */
const withCreatedAt = (item: ChatItem, createdAt: number): ChatItem => {
  switch (item._tag) {
    case "ChatMessage":
      return new ChatMessage({ id: item.id, role: item.role, content: item.content, createdAt })
    case "FunctionCall":
      return new FunctionCall({
        id: item.id,
        callId: item.callId,
        name: item.name,
        arguments: item.arguments,
        createdAt,
        ...(item.extra === undefined ? {} : { extra: item.extra })
      })
    case "FunctionCallOutput":
      return new FunctionCallOutput({
        id: item.id,
        callId: item.callId,
        name: item.name,
        output: item.output,
        isError: item.isError,
        createdAt,
        ...(item.extra === undefined ? {} : { extra: item.extra })
      })
  }
}

/** A tool call in the model's answer. */
interface AnswerCall {
  readonly id: string
  readonly name: string
  readonly params: unknown
  readonly providerExecuted: boolean
}

/** What the model answered in one request: its words (stored under `itemId`) and its calls. */
interface Answer {
  readonly itemId: string
  readonly text: string
  readonly calls: ReadonlyArray<AnswerCall>
}

/** An error part in a streamed answer, as the turn's failure. */
const streamError = (error: unknown): AiError.AiError =>
  AiError.isAiError(error) ? error : AiError.make({
    module: "AiAgent",
    method: "streamText",
    reason: new AiError.UnknownError({
      description: `the model's stream reported an error: ${error instanceof Error ? error.message : String(error)}`
    })
  })

/** The tools the model sees, as a toolkit whose calls the agent dispatches itself. */
type Tools = Toolkit.WithHandler<Record<string, AiTool>>

/**
 * Builds an agent in the current scope; closing the scope stops its turns.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(
  options: Options = {}
): Effect.fn.Return<AiAgent["Service"], never, LanguageModel.LanguageModel | Scope.Scope> {
  const model = yield* LanguageModel.LanguageModel
  const maxSteps = Math.max(1, Math.floor(options.maxSteps ?? 10))
  const runningCall = options.runningCall ?? defaultRunningCall
  const clock = yield* Clock.clockWith(Effect.succeed)
  const now = () => clock.currentTimeMillisUnsafe()
  const save = options.store === undefined
    ? () => Effect.void
    : (batch: ReadonlyArray<ChatItem>) => batch.length === 0 ? Effect.void : options.store!.save(batch)

  const pubsub = yield* PubSub.unbounded<Event>()
  yield* Effect.addFinalizer(() => PubSub.shutdown(pubsub))
  const emit = (event: Event) => {
    PubSub.publishUnsafe(pubsub, event)
  }

  // --- the chat: one array kept in creation order; an insert costs O(k) for k items at the tail --
  const items: Array<ChatItem> = []
  let snapshot: ChatContext | undefined // the last ChatContext handed out, until the chat changes
  const firstUpdates = new Set<string>() // call ids whose output in the chat is a first update
  const callIds = new Set<string>() // the call ids of the chat's function calls
  const added = (batch: ReadonlyArray<ChatItem>) => {
    snapshot = undefined
    for (const item of batch) {
      if (item._tag === "FunctionCall") callIds.add(item.callId)
      else if (item._tag === "FunctionCallOutput" && isPending(item)) firstUpdates.add(item.callId)
    }
    // Subscribers may run at once, inside `emit`: the whole batch is in the chat by then.
    const at = now()
    for (const item of batch) emit({ _tag: "ItemAdded", item, at })
  }
  /** Adds items by creation time: at the tail, nearly always. */
  const add = (batch: ReadonlyArray<ChatItem>) => {
    if (batch.length === 0) return
    for (const item of batch) insertSorted(items, item)
    added(batch)
  }
  /**
   * Adds what the model produced right after the newest item it read (`anchor`), so that whatever
   * reached the chat while it thought stands after its words: they did not cover it (the
   * toolset's "did the agent already speak after these results?" check relies on that). Times are
   * clamped to keep the chat in creation order. Costs O(k + d) for k items placed d items from the
   * tail (d: what arrived meanwhile). Returns the items as placed.
   */
  const addAfter = (anchor: ChatItem | undefined, batch: ReadonlyArray<ChatItem>): ReadonlyArray<ChatItem> => {
    const at = anchor === undefined ? -1 : items.lastIndexOf(anchor)
    let i = anchor !== undefined && at < 0 ? items.length : at + 1
    const placed = batch.map((item) => {
      const createdAt = Math.min(
        Math.max(item.createdAt, items[i - 1]?.createdAt ?? Number.NEGATIVE_INFINITY),
        items[i]?.createdAt ?? Number.POSITIVE_INFINITY
      )
      const stamped = createdAt === item.createdAt ? item : withCreatedAt(item, createdAt)
      items.splice(i++, 0, stamped)
      return stamped
    })
    added(placed)
    return placed
  }
  add(options.history?.items ?? [])
  const chat = Effect.sync(() => snapshot ??= new ChatContext({ items: items.slice() }))

  // --- activity: inactive = no turn queued or running, the user not typing ----------------------
  let pendingTurns = 0
  let typing = false
  let closed = false
  const waiters = new Set<Deferred.Deferred<void>>()
  const inactive = () => pendingTurns === 0 && !typing
  // A waiter resumes at once, inside `Deferred.doneUnsafe`, and may queue a turn (a toolset's
  // reply fiber does): so the set is emptied first, and each waiter checks again on waking (the
  // port promises the session is inactive when `awaitInactive` completes).
  const notify = () => {
    if (!inactive() || waiters.size === 0) return
    const ready = [...waiters]
    waiters.clear()
    for (const waiter of ready) Deferred.doneUnsafe(waiter, Exit.void)
  }
  const awaitInactive: Effect.Effect<void> = Effect.suspend(() => {
    if (inactive()) return Effect.void
    const waiter = Deferred.makeUnsafe<void>()
    waiters.add(waiter)
    return Deferred.await(waiter).pipe(
      Effect.onInterrupt(() => Effect.sync(() => waiters.delete(waiter))),
      Effect.andThen(awaitInactive)
    )
  })

  // --- toolsets ----------------------------------------------------------------------------------
  const toolsets = new Map<string, AsyncToolset>() // by id, in registration order
  const owners = new Map<string, AsyncToolset>() // tool name -> the toolset that runs it
  let toolkit: Tools | undefined // rebuilt when the toolsets change
  const addToolset = (toolset: AsyncToolset) =>
    Effect.acquireRelease(
      Effect.suspend(() => {
        if (toolsets.has(toolset.id)) {
          return Effect.die(new Error(`AiAgent.addToolset: a toolset with id "${toolset.id}" is already added`))
        }
        const clash = toolset.tools.find((tool) => owners.has(tool.name))
        if (clash !== undefined) {
          return Effect.die(new Error(`AiAgent.addToolset: two toolsets have a tool named "${clash.name}"`))
        }
        toolsets.set(toolset.id, toolset)
        for (const tool of toolset.tools) owners.set(tool.name, toolset)
        toolkit = undefined
        return Effect.void
      }),
      () =>
        Effect.sync(() => {
          if (toolsets.get(toolset.id) !== toolset) return
          toolsets.delete(toolset.id)
          for (const tool of toolset.tools) owners.delete(tool.name)
          toolkit = undefined
        })
    )
  const currentToolkit = (): Tools => {
    if (toolkit !== undefined) return toolkit
    const tools: Record<string, AiTool> = {}
    for (const toolset of toolsets.values()) {
      for (const tool of toolset.tools) Object.defineProperty(tools, tool.name, { value: toTool(tool), enumerable: true })
    }
    return toolkit = {
      tools,
      // never called: generateText runs with `disableToolCallResolution`
      handle: () => Effect.die(new Error("AiAgent dispatches tool calls to its toolsets"))
    }
  }
  const dispatch = (call: FunctionCall): Effect.Effect<FunctionCallOutput> => {
    const toolset = owners.get(call.name)
    if (toolset !== undefined) return toolset.execute(call)
    return functionCallOutput({
      callId: call.callId,
      name: call.name,
      output: `Unknown tool "${call.name}". The available tools are: ${[...owners.keys()].join(", ")}.`,
      isError: true
    })
  }

  // --- the prompt of one model request -----------------------------------------------------------
  /**
   * For each call still running whose output in the chat is its first update, a call/output pair
   * `<callId>_running` saying so, so that the model does not start it again (LiveKit added these
   * after models re-issued running calls, e.g. booked a flight twice). Keyed by the call id whose
   * first update it follows. Left out: calls made in the current turn (their first update is the
   * newest thing the model read), and a call whose note id the chat already holds (call ids stay
   * unique in what the model reads). Prompt only, never stored.
   */
  const runningNotes = Effect.fnUntraced(function*(madeThisTurn: ReadonlySet<string>) {
    const notes = new Map<string, readonly [FunctionCall, FunctionCallOutput]>()
    const running = new Set<string>()
    for (const toolset of toolsets.values()) {
      for (const task of yield* toolset.runningTasks) {
        running.add(task.callId)
        const callId = `${task.callId}_running`
        if (
          task.status !== "running" || !firstUpdates.has(task.callId) || madeThisTurn.has(task.callId) ||
          callIds.has(callId)
        ) continue
        notes.set(task.callId, [
          new FunctionCall({ id: newId("fc"), callId, name: task.name, arguments: task.arguments, createdAt: 0 }),
          new FunctionCallOutput({
            id: newId("fco"),
            callId,
            name: task.name,
            output: Prompts.render(runningCall, { functionName: task.name, callId: task.callId, arguments: task.arguments }),
            isError: false,
            createdAt: 0
          })
        ])
      }
    }
    // Calls that ended need no note again: forget them, so the set stays as small as what runs.
    for (const callId of firstUpdates) if (!running.has(callId)) firstUpdates.delete(callId)
    return notes
  })

  /**
   * The chat as the model reads it: each running call's note right after the call's first update,
   * at the call's own place in the history. Never at the end: a request must end with what the
   * user said last, or the model answers the note instead of the user (rule G1).
   */
  function* withNotes(notes: ReadonlyMap<string, readonly [FunctionCall, FunctionCallOutput]>): Iterable<ChatItem> {
    for (const item of items) {
      yield item
      if (item._tag !== "FunctionCallOutput" || !isPending(item)) continue
      const note = notes.get(item.callId)
      if (note !== undefined) yield* note.map((part) => withCreatedAt(part, item.createdAt))
    }
  }

  const buildPrompt = Effect.fnUntraced(function*(instructions: string | undefined, madeThisTurn: ReadonlySet<string>) {
    const notes = yield* runningNotes(madeThisTurn)
    // No copy of the history: the conversion reads the items, and the notes in their places, in
    // one pass, and nothing can change the array meanwhile (it does not suspend). `read` is the
    // newest item the model reads: what it says goes right after it.
    const history = toPrompt(notes.size === 0 ? items : withNotes(notes)).content
    const read = items.at(-1)
    // The turn's instructions come last, where the model weighs them most; a provider that takes
    // no system message inside the history gets them in the leading one.
    const inHistory = model.supportsSystemMessagesInHistory === undefined ||
      (yield* model.supportsSystemMessagesInHistory)
    const last = inHistory ? instructions : undefined
    const leading = [options.instructions, inHistory ? undefined : instructions].filter((s) => s !== undefined)
    const prompt = Prompt.fromMessages([
      ...(leading.length === 0 ? [] : [Prompt.makeMessage("system", { content: leading.join("\n\n") })]),
      ...history,
      ...(last === undefined ? [] : [Prompt.makeMessage("system", { content: last })])
    ])
    return { prompt, read } as const
  })

  // --- one model request ---------------------------------------------------------------------------
  const stream = options.stream ?? true
  /** The whole answer at once. */
  const generateAnswer = (_turn: number, prompt: Prompt.Prompt, toolChoice: "auto" | "none") =>
    Effect.map(
      model.generateText({
        prompt,
        toolkit: currentToolkit(),
        toolChoice,
        disableToolCallResolution: true,
        toolCallValidation: "deferred"
      }),
      (response): Answer => ({ itemId: newId("msg"), text: response.text, calls: response.toolCalls })
    )
  /**
   * The answer as the model streams it: each non-empty text delta is published at once (a
   * `TextDelta` of the message the answer's words will be stored as); the words and the calls
   * are kept for the end. A failure mid-way (the stream fails, or sends an error part) fails the
   * request: nothing of the answer is stored and none of its calls runs.
   */
  const streamAnswer = (turn: number, prompt: Prompt.Prompt, toolChoice: "auto" | "none") =>
    Effect.suspend(() => {
      const itemId = newId("msg")
      let text = ""
      const calls: Array<AnswerCall> = []
      return model.streamText({
        prompt,
        toolkit: currentToolkit(),
        toolChoice,
        disableToolCallResolution: true,
        toolCallValidation: "deferred"
      }).pipe(
        Stream.runForEach((part): Effect.Effect<void, AiError.AiError> => {
          switch (part.type) {
            case "text-delta":
              if (part.delta !== "") {
                text += part.delta
                emit({ _tag: "TextDelta", turn, itemId, delta: part.delta, at: now() })
              }
              return Effect.void
            case "tool-call":
              calls.push(part)
              return Effect.void
            case "error":
              return Effect.fail(streamError(part.error))
            default:
              return Effect.void
          }
        }),
        Effect.map((): Answer => ({ itemId, text, calls }))
      )
    })

  // --- turns: one worker takes them in order, so generations never overlap ----------------------
  let turns = 0
  const runTurn = (job: Job, turn: number): Effect.Effect<Turn, AiError.AiError> => {
    const stored: Array<ChatItem> = []
    const said: Array<string> = []
    const madeThisTurn = new Set<string>()
    let anchor: ChatItem | undefined // the newest item the model read in this step, then the last it added
    const store = (batch: ReadonlyArray<ChatItem>) => {
      const placed = addAfter(anchor, batch)
      anchor = placed.at(-1) ?? anchor
      stored.push(...placed)
      return save(placed)
    }
    return Effect.gen(function*() {
      emit({ _tag: "TurnStarted", turn, cause: job.cause, at: now() })
      for (let step = 0; step < maxSteps; step++) {
        const toolChoice = job.toolChoice === "none" || step === maxSteps - 1 ? "none" : "auto"
        const askedAt = now()
        const { prompt, read } = yield* buildPrompt(job.instructions, madeThisTurn)
        anchor = read
        const answer = yield* (stream ? streamAnswer : generateAnswer)(turn, prompt, toolChoice)
        const text = answer.text
        if (text.trim() !== "") {
          yield* store([new ChatMessage({ id: answer.itemId, role: "assistant", content: text, createdAt: askedAt })])
          said.push(text)
        }
        const calls = answer.calls.filter((call) => !call.providerExecuted)
        if (calls.length === 0) break
        if (toolChoice === "none") {
          yield* Effect.logWarning("the model called tools in a turn that allows none; the calls were not run", {
            tools: calls.map((call) => call.name)
          })
          break
        }
        // Provider call ids must stay unique in the chat: a model that repeats one (or sends none)
        // gets its call stored under a fresh id, which its output answers.
        const taken = new Set<string>()
        const uniqueId = (id: string) => {
          let unique = id === "" ? "call_1" : id
          for (let k = 2; callIds.has(unique) || taken.has(unique); k++) unique = `${id === "" ? "call" : id}_${k}`
          taken.add(unique)
          return unique
        }
        yield* Effect.forEach(calls, (part) => {
          const call = new FunctionCall({
            id: newId("fc"),
            callId: uniqueId(part.id),
            name: part.name,
            arguments: argumentsText(part.params),
            createdAt: askedAt
          })
          madeThisTurn.add(call.callId)
          return Effect.flatMap(dispatch(call), (output) => store([call, output]))
        }, { concurrency: "unbounded", discard: true })
      }
      return { text: said.join("\n"), items: stored } satisfies Turn
    }).pipe(
      Effect.tapCause((cause) =>
        Cause.hasInterruptsOnly(cause)
          ? Effect.void
          : Effect.logError("the turn failed; the conversation goes on", cause)
      ),
      Effect.onExit((exit) =>
        Effect.sync(() => {
          if (Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause)) return
          const text = said.join("\n")
          const outcome = Exit.isFailure(exit) ? "failed" : text === "" ? "silent" : "answered"
          emit({ _tag: "TurnEnded", turn, outcome, text, at: now() })
        })
      ),
      Effect.withSpan("AiAgent.turn", { attributes: { "agent.turn": turn, "agent.turn.cause": job.cause } }),
      Effect.annotateLogs({ turn })
    )
  }

  // --- idle: inactive, and nothing running or owed in the toolsets -------------------------------
  const toolsetsIdle = Effect.suspend(() =>
    Effect.forEach(Array.from(toolsets.values()), (toolset) => toolset.awaitIdle, { discard: true })
  )
  // A toolset's call starts only in a turn, and its reply is a turn: so once the toolsets were idle
  // and the agent inactive, with no turn started since the look began, nothing is left to say.
  // Otherwise look again: a turn may have started calls, and a reply a turn.
  const awaitIdle: Effect.Effect<void> = Effect.suspend(() => {
    const started = turns
    return toolsetsIdle.pipe(
      Effect.andThen(awaitInactive),
      Effect.andThen(toolsetsIdle),
      Effect.andThen(Effect.suspend(() => turns === started && inactive() ? Effect.void : awaitIdle))
    )
  })

  const jobs = yield* Queue.unbounded<Job>()
  // Runs after the worker is interrupted (finalizers run last-added first): turns still queued
  // are interrupted, so their callers do not wait forever.
  yield* Effect.addFinalizer(() =>
    Effect.flatMap(Queue.clear(jobs), (left) =>
      Effect.sync(() => {
        closed = true
        pendingTurns -= left.length
        for (const job of left) {
          Deferred.doneUnsafe(job.started, Exit.interrupt())
          Deferred.doneUnsafe(job.done, Exit.interrupt())
        }
        notify()
      }))
  )
  const worker = Queue.take(jobs).pipe(
    Effect.flatMap((job) =>
      Effect.andThen(Effect.sync(() => Deferred.doneUnsafe(job.started, Exit.void)), runTurn(job, ++turns)).pipe(
        // The caller resumes inside `doneUnsafe`: count the turn as over before that.
        Effect.onExit((exit) =>
          Effect.sync(() => {
            pendingTurns--
            Deferred.doneUnsafe(job.done, exit)
            notify()
          })
        ),
        Effect.exit
      )
    ),
    Effect.forever
  )
  yield* Effect.forkScoped(worker, { startImmediately: true })

  /** Queues a turn; `before` runs once it is queued, before waiting for the turn. */
  /** Queues a turn; returns the queued job (its `started` and `done`). */
  const queue = (job: Omit<Job, "done" | "started">): Job => {
    const queued: Job = { ...job, started: Deferred.makeUnsafe(), done: Deferred.makeUnsafe() }
    pendingTurns++
    Queue.offerUnsafe(jobs, queued)
    return queued
  }
  const enqueue = (job: Omit<Job, "done" | "started">, before: Effect.Effect<void> = Effect.void): Effect.Effect<Turn, AiError.AiError> =>
    Effect.suspend(() => {
      if (closed) return Effect.interrupt
      const queued = queue(job)
      return Effect.andThen(before, Deferred.await(queued.done))
    })

  const session = AgentSession.of({
    chatContext: chat,
    items: Effect.sync((): ReadonlyArray<ChatItem> => items),
    insert: (batch) => Effect.andThen(Effect.sync(() => add(batch)), save(batch)),
    awaitInactive,
    // Completes once the reply's turn begins: the agent took the request up (the port's
    // contract). The turn may go on for minutes, speaking; a model error in it is the turn's
    // (logged), and the toolset's items stay in the chat for the next reply.
    generateReply: (request) =>
      Effect.suspend(() => {
        if (closed) return Effect.interrupt
        return Deferred.await(queue({ cause: "reply", instructions: request.instructions, toolChoice: request.toolChoice }).started)
      })
  })

  return AiAgent.of({
    send: (text) =>
      Effect.suspend(() => {
        if (closed) return Effect.interrupt
        return Effect.flatMap(message("user", text), (user) => {
          // In the chat and queued in one step (a background reply cannot come between); saved after.
          add([user])
          return enqueue({ cause: "user", instructions: undefined, toolChoice: "auto" }, save([user]))
        })
      }),
    generateReply: (reply = {}) =>
      enqueue({ cause: "reply", instructions: reply.instructions, toolChoice: reply.toolChoice ?? "auto" }),
    setUserTyping: (value) =>
      Effect.sync(() => {
        typing = value
        notify()
      }),
    addToolset,
    chat,
    isInactive: Effect.sync(inactive),
    awaitInactive,
    awaitIdle,
    toolsets: Effect.sync(() => Array.from(toolsets.values())),
    events: Stream.fromPubSub(pubsub),
    session
  })
})

/**
 * The agent as a layer: provides `AiAgent` and `AgentSession` (for `AsyncToolset.make`), and needs
 * a `LanguageModel`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<AiAgent | AgentSession, never, LanguageModel.LanguageModel> =>
  Layer.effectContext(
    Effect.map(make(options), (agent) => Context.make(AiAgent, agent).pipe(Context.add(AgentSession, agent.session)))
  )

/**
 * A toolset as a layer: builds it on the agent's session and adds it to the agent, for the life of
 * the layer. An app declares its toolsets this way and composes them with the agent and the model
 * once (`AsyncToolset.make` and `addToolset` stay, for tests and for toolsets made on the fly).
 * The layer needs the agent, and the services the tools need besides `AsyncRunContext`.
 *
 * @example
 * ```ts
 * import { Effect, Layer, Schema } from "effect"
 * import { AiAgent, FunctionTool } from "effect-async-toolset"
 * import { ScriptedModel } from "effect-async-toolset/testing"
 *
 * const getWeather = FunctionTool.make("get_weather", {
 *   description: "Current weather in a city",
 *   parameters: Schema.Struct({ city: Schema.String })
 * }, ({ city }) => Effect.succeed(`Sunny in ${city}`))
 *
 * const WeatherTools = AiAgent.toolset({ id: "weather", tools: [getWeather] })
 * const App = WeatherTools.pipe(
 *   Layer.provideMerge(AiAgent.layer({ instructions: "You answer about the weather." })),
 *   Layer.provide(ScriptedModel.layer(["Sunny."])) // any LanguageModel layer
 * )
 * const program = Effect.gen(function*() {
 *   const agent = yield* AiAgent.AiAgent
 *   yield* agent.send("Weather in Paris?")
 * }).pipe(Effect.provide(App))
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const toolset = <const Tools extends ReadonlyArray<FunctionTool.Any>>(
  options: ToolsetOptions<Tools>
): Layer.Layer<never, never, AiAgent | Exclude<FunctionTool.Services<Tools[number]>, AsyncRunContext>> =>
  Layer.effectDiscard(Effect.gen(function*() {
    const agent = yield* AiAgent
    const made = yield* makeToolset(options).pipe(Effect.provideService(AgentSession, agent.session))
    yield* agent.addToolset(made)
  }))
