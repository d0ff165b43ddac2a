/**
 * The floor of `bench/durable.ts`: a bare effect/workflow `Workflow` with one `Activity`, on the
 * same store (engine, cluster and message storage) as the durable toolset, and no toolset. The
 * activity does the call's work (its update and its result, as the activity's result); the caller
 * waits for the workflow's stored result, as a durable call's caller waits for its reply.
 */
import { Effect, Schema } from "effect"
import * as Activity from "effect/workflow/Activity"
import * as Workflow from "effect/workflow/Workflow"

const Work = Schema.Struct({ update: Schema.String, result: Schema.String })

export const FloorCall = Workflow.make("bench-durable-floor", {
  payload: { id: Schema.String, n: Schema.Number },
  success: Schema.String,
  idempotencyKey: ({ id }) => id
})

/** Registers the floor's workflow with the engine (provide `WorkflowEngine`). */
export const layer = FloorCall.toLayer(({ n }) =>
  Effect.gen(function*() {
    const work = yield* Activity.make({
      name: "work",
      success: Work,
      execute: Effect.sync(() => ({ update: `working on ${n}`, result: `done ${n}` }))
    })
    return work.result
  })
)

/** One call: the workflow run to its stored result. */
export const call = (id: string, n: number) =>
  Effect.flatMap(FloorCall.execute({ id, n }), (result) =>
    result === `done ${n}` ? Effect.void : Effect.die(new Error(`floor: unexpected result ${result}`)))
