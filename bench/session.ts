/**
 * The session the benchmarks run ours on: a minimal in-memory `AgentSession`, as lean as the stub
 * session the peer is driven with (a chat it keeps, an idle gate, a count of replies). The test
 * kit's `TestSession` records every insertion and reply request with details for assertions; that
 * bookkeeping is the test kit's, not the toolset's, so it is left out here
 * (`BENCH_SESSION=testkit` measures with it).
 */
import { Effect, Latch } from "effect"
import { AgentSession, ChatContext } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { insertSorted } from "../src/internal/ordered.ts"

/** What a workload reads and drives of its session. */
export interface Stub {
  readonly session: AgentSession.AgentSession["Service"]
  readonly replies: () => number
  /** Reply requests made while the session was busy (must stay 0). */
  readonly busyReplies: () => number
  readonly chatLength: () => number
  readonly setBusy: Effect.Effect<void>
  readonly setIdle: Effect.Effect<void>
  /** Adds history, as an agent loop would. */
  readonly insert: (items: ReadonlyArray<ChatContext.ChatItem>) => Effect.Effect<void>
}

export interface Hooks {
  readonly onInsert?: (() => void) | undefined
  readonly onReply?: (() => void) | undefined
}

const stub = (hooks: Hooks): Effect.Effect<Stub> =>
  Effect.map(Latch.make(true), (idle) => {
    const items: Array<ChatContext.ChatItem> = []
    let replies = 0
    let busyReplies = 0
    const awaitInactive: Effect.Effect<void> = Effect.suspend(() =>
      idle.isOpen() ? Effect.void : Effect.andThen(idle.await, awaitInactive)
    )
    const insert = (batch: ReadonlyArray<ChatContext.ChatItem>) =>
      Effect.sync(() => {
        for (const item of batch) insertSorted(items, item)
        hooks.onInsert?.()
      })
    const session = AgentSession.AgentSession.of({
      chatContext: Effect.sync(() => new ChatContext.ChatContext({ items: items.slice() })),
      items: Effect.sync((): ReadonlyArray<ChatContext.ChatItem> => items),
      insert,
      awaitInactive,
      generateReply: () =>
        Effect.sync(() => {
          replies++
          if (!idle.isOpen()) busyReplies++
          hooks.onReply?.()
        })
    })
    return {
      session,
      replies: () => replies,
      busyReplies: () => busyReplies,
      chatLength: () => items.length,
      setBusy: Effect.asVoid(idle.close),
      setIdle: Effect.asVoid(idle.open),
      insert
    }
  })

/** The test kit's session behind the same surface (`BENCH_SESSION=testkit`). */
const testKit = (hooks: Hooks): Effect.Effect<Stub> =>
  Effect.map(
    TestSession.make({
      onInsert: () => Effect.sync(() => hooks.onInsert?.()),
      onReply: () => Effect.sync(() => hooks.onReply?.())
    }),
    ({ controls, session }) => {
      const read = () => Effect.runSync(controls.replies)
      return {
        session,
        replies: () => read().length,
        busyReplies: () => read().filter((r) => r.whileBusy).length,
        chatLength: () => Effect.runSync(controls.chat).items.length,
        setBusy: controls.setBusy,
        setIdle: controls.setIdle,
        insert: controls.insert
      }
    }
  )

export const make: (hooks?: Hooks) => Effect.Effect<Stub> = (hooks = {}) =>
  process.env["BENCH_SESSION"] === "testkit" ? testKit(hooks) : stub(hooks)
