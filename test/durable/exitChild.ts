/**
 * A process that opens a durable store, optionally starts a call that is still running when it
 * ends, and then ends normally (its scope closes): what it prints at exit is what a user sees.
 *
 *   STORE=pglite DATA_DIR=<folder>            the embedded store
 *   STORE=postgres PG_URL=<url> RUNNER_PORT=n one PostgreSQL runner
 *   RUNNING=1                                 a call is running (its tool waits forever) at exit
 *   FAST=1                                    (PostgreSQL) DurablePostgres.fastFailover's settings
 *
 * It prints `OPENED <ms>` once the store is open, `CLOSING` before its scope closes, and
 * `CLOSED <ms>` (how long closing took) after.
 */
import { writeSync } from "node:fs"
import { Effect, Layer, Redacted } from "effect"
import type { SqlClient } from "effect/sql/SqlClient"
import type { WorkflowEngine } from "effect/workflow/WorkflowEngine"
import { AsyncRunContext, ChatContext, FunctionTool } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset } from "effect-async-toolset/durable"
import { TestSession } from "effect-async-toolset/testing"

const env = (name: string): string | undefined => process.env[name]
const say = (line: string) => writeSync(1, `${line}\n`)

const waitForever = FunctionTool.make("wait_forever", { description: "Starts, says so, and never ends" }, () =>
  Effect.andThen(AsyncRunContext.update("started"), Effect.never))

const toolset = DurableToolset.define({ id: "exit", tools: [waitForever] })

const storeLayer = (): Layer.Layer<DurableStore.DurableStore | WorkflowEngine | SqlClient, unknown> => {
  if (env("STORE") !== "postgres") return DurableStore.layerEmbedded({ dataDir: env("DATA_DIR")! })
  return Layer.unwrap(Effect.promise(async () => {
    const { DurablePostgres } = await import("effect-async-toolset/durable/postgres")
    return DurablePostgres.layer({
      url: Redacted.make(env("PG_URL")!),
      runner: { host: "127.0.0.1", port: Number(env("RUNNER_PORT")) },
      ...(env("FAST") === "1" ? { shardingConfig: DurablePostgres.fastFailover } : {})
    })
  }))
}

const program = Effect.gen(function*() {
  const made = yield* DurableToolset.make(toolset)
  if (env("RUNNING") === "1") {
    const call = yield* ChatContext.functionCall({ callId: `c_${process.pid}`, name: "wait_forever", arguments: "{}" })
    yield* made.execute(call)
    say("RUNNING")
  }
  say("CLOSING")
  closing = performance.now()
})

let closing = 0
const opened = performance.now()
const main = Effect.gen(function*() {
  const context = yield* Layer.build(storeLayer())
  say(`OPENED ${Math.round(performance.now() - opened)}`)
  yield* program.pipe(
    Effect.scoped,
    Effect.provide(Layer.mergeAll(
      DurableToolset.layer(toolset),
      DurableChat.layer({ sessionId: `exit_${process.pid}_${Date.now().toString(36)}` }),
      TestSession.layer
    ).pipe(Layer.provideMerge(Layer.succeedContext(context))))
  )
}).pipe(Effect.scoped)

Effect.runPromise(main).then(
  () => {
    say(`CLOSED ${Math.round(performance.now() - closing)}`)
    process.exit(0)
  },
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
