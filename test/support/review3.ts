/**
 * Helpers for the Review3 tests (2b010d5: `execute` without `uninterruptibleMask`, the request step
 * tracked on the coordinator, `retryInsertions` reading the chat before it inserts what is missing).
 */
import { Context, Effect, Layer } from "effect"
import { AgentSession, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import type { ChatContext } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"

export const yieldSettings = [3, 4, 16, 64, 2048] as const

type Session = AgentSession.AgentSession["Service"]

/** Wraps the in-memory session's port: `wrap` gets the real port and returns the one the toolsets see. */
export const wrappedSession = (wrap: (session: Session) => Partial<Session>, options: TestSession.Options = {}) =>
  Layer.effectContext(Effect.map(TestSession.make(options), ({ controls, session }) => {
    const port = AgentSession.AgentSession.of({ ...session, ...wrap(session) })
    return Context.make(AgentSession.AgentSession, port).pipe(Context.add(TestSession.TestSession, controls))
  }))

/** The synthetic call ids among the function calls of `items`. */
export const callIdsOf = (items: ReadonlyArray<ChatContext.ChatItem>): ReadonlyArray<string> =>
  items.flatMap((i) => i._tag === "FunctionCall" || i._tag === "FunctionCallOutput" ? [i.callId] : [])

export const sessionError = (message: string) => new AgentSession.SessionError({ operation: "generateReply", message })

/** A tool that updates at once and after 1 second, then runs 10 seconds more. */
export const chatty = FunctionTool.make("chatty", { description: "Updates twice, then ends", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("half way")
    yield* Effect.sleep("10 seconds")
    return "done"
  }))
