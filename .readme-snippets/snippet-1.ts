import { Console, Effect, Schema } from "effect"
import { AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"

const runReport = FunctionTool.make("run_report", {
  description: "Build the sales report for a quarter",
  parameters: Schema.Struct({ quarter: Schema.Literals(["Q1", "Q2", "Q3", "Q4"]) }),
  success: Schema.Struct({ total: Schema.Number, url: Schema.String })
}, ({ quarter }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Collecting ${quarter} sales`) // the model gets this at once
    yield* Effect.sleep("200 millis")
    yield* AsyncRunContext.update("Sales collected, drawing charts") // reaches the chat later
    yield* Effect.sleep("200 millis")
    return { total: 1250000, url: `https://reports.example/${quarter}` } // reaches the chat last
  }))

const program = Effect.gen(function*() {
  const session = yield* TestSession.TestSession
  const toolset = yield* AsyncToolset.make({ id: "reports", tools: [runReport] })

  // What an agent loop does when the model calls a tool:
  const call = yield* ChatContext.functionCall({ callId: "call_1", name: "run_report", arguments: `{"quarter":"Q3"}` })
  const output = yield* toolset.execute(call)
  yield* Console.log("the model got:", output.output)

  yield* toolset.awaitIdle // the tool finished and its results were replied to
  for (const reply of yield* session.replies) yield* Console.log("reply requested:", reply.instructions)
  for (const item of (yield* session.chat).items) {
    if (item._tag === "FunctionCallOutput") yield* Console.log(item.callId, "→", item.output)
  }
})

Effect.runPromise(program.pipe(Effect.scoped, Effect.provide(TestSession.layer)))
