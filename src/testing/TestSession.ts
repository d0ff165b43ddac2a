/**
 * An in-memory `AgentSession` for tests: the test decides when the agent is busy or idle, and the
 * session records every chat insertion and every reply request.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { TestSession } from "effect-async-toolset/testing"
 *
 * const program = Effect.gen(function*() {
 *   const session = yield* TestSession.TestSession
 *   yield* session.setBusy
 *   // ... run tools ...
 *   yield* session.setIdle
 *   const replies = yield* session.replies
 * }).pipe(Effect.provide(TestSession.layer))
 * ```
 *
 * @since 0.1.0
 */
import { Context, Effect, Latch, Layer } from "effect"
import { AgentSession } from "../AgentSession.ts"
import type { ReplyRequest, SessionError } from "../AgentSession.ts"
import { ChatContext, message } from "../ChatContext.ts"
import type { ChatItem, ChatMessage } from "../ChatContext.ts"
import { insertSorted } from "../internal/ordered.ts"

/**
 * A reply request as the session received it.
 *
 * @since 0.1.0
 * @category models
 */
export interface RecordedReply extends ReplyRequest {
  /** Whether the session was busy when the request came (the toolset must never do that). */
  readonly whileBusy: boolean
  /** How many chat items existed when the request came. */
  readonly chatLength: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Called on every insertion, after the items are in the chat (e.g. to print them). */
  readonly onInsert?: ((items: ReadonlyArray<ChatItem>) => Effect.Effect<void>) | undefined
  /**
   * Called on every reply request, after it is recorded. Its failure is the request's failure, so
   * a test can make the session fail.
   */
  readonly onReply?: ((request: ReplyRequest) => Effect.Effect<void, SessionError>) | undefined
  /**
   * Plays the agent: called on every reply request (after `onReply`); a non-empty answer is added
   * to the chat as an assistant message, as if the agent said it.
   */
  readonly respond?: ((request: ReplyRequest, chat: ChatContext) => Effect.Effect<string | undefined>) | undefined
  /** Fails or delays insertions (fault injection). */
  readonly beforeInsert?: ((items: ReadonlyArray<ChatItem>) => Effect.Effect<void, SessionError>) | undefined
}

/**
 * The controls of the in-memory session.
 *
 * @since 0.1.0
 * @category services
 */
export class TestSession extends Context.Service<TestSession, {
  /** The agent is generating or speaking (or the user is speaking): replies must wait. */
  readonly setBusy: Effect.Effect<void>
  /** The session is inactive: a waiting reply may go. */
  readonly setIdle: Effect.Effect<void>
  readonly isBusy: Effect.Effect<boolean>
  /** The chat as it is now. */
  readonly chat: Effect.Effect<ChatContext>
  /** Every insertion, in order. */
  readonly insertions: Effect.Effect<ReadonlyArray<ReadonlyArray<ChatItem>>>
  /** Every reply request, in order. */
  readonly replies: Effect.Effect<ReadonlyArray<RecordedReply>>
  /** Adds items to the chat as an agent loop would (e.g. a model's call and the output it got). */
  readonly insert: (items: ReadonlyArray<ChatItem>) => Effect.Effect<void>
  /** Adds a message to the chat, as if someone said it. */
  readonly say: (role: ChatMessage["role"], content: string) => Effect.Effect<ChatMessage>
}>()("effect-async-toolset/testing/TestSession") {}

/**
 * Builds the session and its controls.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(options: Options = {}) {
  const items: Array<ChatItem> = []
  const insertions: Array<ReadonlyArray<ChatItem>> = []
  const replies: Array<RecordedReply> = []
  const idle = yield* Latch.make(true)

  const append = (batch: ReadonlyArray<ChatItem>) =>
    Effect.suspend(() => {
      for (const item of batch) insertSorted(items, item)
      insertions.push(batch)
      return options.onInsert ? options.onInsert(batch) : Effect.void
    })

  const insert = (batch: ReadonlyArray<ChatItem>) =>
    options.beforeInsert ? Effect.andThen(options.beforeInsert(batch), append(batch)) : append(batch)

  // A latch wakes its waiters a moment after it opens; by then the session may be busy again, so
  // check again on waking: the port promises the session is inactive when this completes.
  const awaitInactive: Effect.Effect<void> = Effect.suspend(() =>
    idle.isOpen() ? Effect.void : Effect.andThen(idle.await, awaitInactive)
  )

  const say = (role: ChatMessage["role"], content: string) => Effect.tap(message(role, content), (m) => append([m]))

  const session = AgentSession.of({
    chatContext: Effect.sync(() => new ChatContext({ items: items.slice() })),
    items: Effect.sync((): ReadonlyArray<ChatItem> => items),
    insert,
    awaitInactive,
    generateReply: (request) =>
      Effect.suspend(() => {
        replies.push({ ...request, whileBusy: !idle.isOpen(), chatLength: items.length })
        const replied = options.onReply ? options.onReply(request) : Effect.void
        const respond = options.respond
        if (respond === undefined) return replied
        return Effect.andThen(
          replied,
          Effect.flatMap(
            Effect.suspend(() => respond(request, new ChatContext({ items: items.slice() }))),
            (answer) => answer !== undefined && answer !== "" ? Effect.asVoid(say("assistant", answer)) : Effect.void
          )
        )
      })
  })

  const controls = TestSession.of({
    setBusy: Effect.asVoid(idle.close),
    setIdle: Effect.asVoid(idle.open),
    isBusy: Effect.sync(() => !idle.isOpen()),
    chat: Effect.sync(() => new ChatContext({ items: items.slice() })),
    insertions: Effect.sync(() => insertions.slice()),
    replies: Effect.sync(() => replies.slice()),
    insert: append,
    say
  })
  return { session, controls } as const
})

/**
 * The in-memory session with options: provides both `AgentSession` and `TestSession`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerWith = (options: Options): Layer.Layer<AgentSession | TestSession> =>
  Layer.effectContext(
    Effect.map(make(options), ({ controls, session }) =>
      Context.make(AgentSession, session).pipe(Context.add(TestSession, controls)))
  )

/**
 * The in-memory session: provides both `AgentSession` and `TestSession`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<AgentSession | TestSession> = layerWith({})
