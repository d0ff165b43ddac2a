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
import { Clock, Context, Effect, Layer, PubSub, Stream } from "effect"
import type { Scope } from "effect"
import { LanguageModel } from "effect/ai"
import type { AiError } from "effect/ai"
import * as ActivityGate from "./internal/activityGate.ts"
import * as ChatLog from "./internal/chatLog.ts"
import * as ToolsetRegistry from "./internal/toolsetRegistry.ts"
import * as TurnRunner from "./internal/turnRunner.ts"
import type * as AgentEvent from "./AgentEvent.ts"
import { AgentSession } from "../AgentSession.ts"
import type { AsyncRunContext } from "../AsyncRunContext.ts"
import { make as makeToolset } from "../AsyncToolset.ts"
import type { AsyncToolset, Options as ToolsetOptions } from "../AsyncToolset.ts"
import type { ChatContext, ChatItem } from "../ChatContext.ts"
import type * as FunctionTool from "../FunctionTool.ts"
import type * as Prompts from "../Prompts.ts"

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
  const clock = yield* Clock.clockWith(Effect.succeed)
  const now = () => clock.currentTimeMillisUnsafe()
  const pubsub = yield* PubSub.unbounded<Event>()
  yield* Effect.addFinalizer(() => PubSub.shutdown(pubsub))
  const emit = (event: Event) => {
    PubSub.publishUnsafe(pubsub, event)
  }

  const log = ChatLog.make({ history: options.history?.items ?? [], store: options.store, now, emit })
  const gate = ActivityGate.make()
  const chat = Effect.sync(() => ChatLog.chatContext(log))
  const session = AgentSession.of({
    chatContext: chat,
    items: Effect.sync((): ReadonlyArray<ChatItem> => log.items),
    insert: (batch) => Effect.andThen(Effect.sync(() => ChatLog.add(log, batch)), ChatLog.save(log, batch)),
    awaitInactive: gate.awaitInactive,
    // (`runner` is made below, before any toolset can ask.)
    generateReply: (request) => TurnRunner.requestReply(runner, request)
  })
  const toolsets = ToolsetRegistry.make(session)
  for (const callId of log.callIds) ToolsetRegistry.noteCallId(toolsets, callId)
  const runner = yield* TurnRunner.make({
    log,
    toolsets,
    prompts: {
      model,
      instructions: options.instructions,
      runningCall: options.runningCall ?? defaultRunningCall,
      log,
      toolsets
    },
    request: { model, stream: options.stream ?? true, now, emit },
    maxSteps: Math.max(1, Math.floor(options.maxSteps ?? 10)),
    now,
    emit
  }, gate)

  return AiAgent.of({
    send: (text) => TurnRunner.send(runner, text),
    generateReply: (reply = {}) => TurnRunner.generateReply(runner, reply),
    setUserTyping: (typing) => Effect.sync(() => ActivityGate.setTyping(gate, typing)),
    addToolset: (toolset) => ToolsetRegistry.add(toolsets, toolset),
    chat,
    isInactive: Effect.sync(() => ActivityGate.isInactive(gate)),
    awaitInactive: gate.awaitInactive,
    awaitIdle: TurnRunner.awaitIdle(runner),
    toolsets: Effect.sync(() => ToolsetRegistry.list(toolsets)),
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
