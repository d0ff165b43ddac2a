/**
 * Test layers for the durable toolset: a PGlite store shared by a test file (a fresh copy of the
 * template folder), and per test a session on effect/workflow's in-memory engine with the test kit's
 * session.
 */
import { Effect, Layer } from "effect"
import * as WorkflowEngine from "effect/workflow/WorkflowEngine"
import type { FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset, PgliteClient } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"
import { freshDataDir } from "./pglite.ts"

/** A PGlite store of its own, with a short poll interval. */
export const storeLayer = Layer.unwrap(
  Effect.map(Effect.promise(() => freshDataDir()), (dataDir) =>
    DurableStore.layer({ pollInterval: "50 millis" }).pipe(Layer.provideMerge(PgliteClient.layer({ dataDir }))))
)

let sessions = 0

/** A session id not used before in this process. */
export const newSessionId = (): string => `s${process.pid}_${Date.now().toString(36)}_${sessions++}`

/**
 * A session (the test kit's, with options) with the toolset's workflow registered on a new in-memory
 * engine. `sessionId` names the chat in the store (a new one by default).
 */
export const sessionLayer = <Tools extends ReadonlyArray<FunctionTool.Any>>(
  toolset: DurableToolset.DurableToolset<Tools>,
  options: { readonly sessionId?: string; readonly session?: TestSession.Options } = {}
) =>
  Layer.mergeAll(
    DurableToolset.layer(toolset),
    DurableChat.layer({ sessionId: options.sessionId ?? newSessionId() }),
    TestSession.layerWith(options.session ?? {})
  ).pipe(Layer.provideMerge(WorkflowEngine.layerMemory))

/** Checks `check` every 10 ms until it holds (or fails the test after `seconds`). */
export const eventually = <R>(check: Effect.Effect<boolean, never, R>, what: string, seconds = 10): Effect.Effect<void, never, R> =>
  Effect.gen(function*() {
    const until = Date.now() + seconds * 1000
    while (!(yield* check)) {
      if (Date.now() > until) return yield* Effect.die(new Error(`timed out waiting for: ${what}`))
      yield* Effect.sleep("10 millis")
    }
  })
