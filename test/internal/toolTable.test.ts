/**
 * The tool table on its own: tools prepared once (names, the confirmation flag), and a model's
 * call read against them (which tool with which arguments, or the refusal the model gets). Both
 * toolsets (in memory and durable) read calls through it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Result, Schema } from "effect"
import { FunctionCall } from "../../src/ChatContext.ts"
import * as FunctionTool from "../../src/FunctionTool.ts"
import * as ToolTable from "../../src/internal/toolTable.ts"
import * as Prompts from "../../src/Prompts.ts"

const names = { getRunningTasks: "get_running_tasks_t", cancelTask: "cancel_task_t" }

const book = FunctionTool.make("book", {
  description: "Books",
  parameters: Schema.Struct({ to: Schema.String })
}, ({ to }) => Effect.succeed(to))

const report = FunctionTool.make("report", {
  description: "Reports",
  parameters: Schema.Struct({ topic: Schema.String }),
  onDuplicateCall: "allow"
}, ({ topic }) => Effect.succeed(topic))

const call = (name: string, args: string, callId = "c1") =>
  new FunctionCall({ id: "fc_1", callId, name, arguments: args, createdAt: 0 })

const table = () => {
  const prepared = ToolTable.prepare("test", { tools: [book, report] }, Prompts.defaults, names)
  if (Result.isFailure(prepared)) throw prepared.failure
  return prepared.success
}

const read = (c: FunctionCall, closed = false, maxLength = 1000) => ToolTable.read(table(), names, c, closed, maxLength)

describe("toolTable", () => {
  describe("prepare", () => {
    it("confirm mode (the default) adds the optional flag the model sees; other modes leave the tool as written", () => {
      const tools = table()
      assert.strictEqual(tools.get("book")!.mode, "confirm")
      assert.include(Object.keys(tools.get("book")!.visible.parameters.fields), ToolTable.confirmParameter)
      assert.strictEqual(tools.get("report")!.mode, "allow")
      assert.strictEqual(tools.get("report")!.visible, report)
    })

    it("refuses two tools of one name, a tool named as a management tool, and a parameter named as the flag", () => {
      const twice = ToolTable.prepare("test", { tools: [book, book] }, Prompts.defaults, names)
      assert.isTrue(Result.isFailure(twice) && twice.failure.message === `test: two tools are named "book"`)
      const shadow = FunctionTool.make(names.cancelTask, { description: "x" }, () => Effect.void)
      assert.isTrue(Result.isFailure(ToolTable.prepare("test", { tools: [shadow] }, Prompts.defaults, names)))
      const flagged = FunctionTool.make("flagged", {
        description: "x",
        parameters: Schema.Struct({ [ToolTable.confirmParameter]: Schema.Boolean })
      }, () => Effect.void)
      const refused = ToolTable.prepare("test", { tools: [flagged] }, Prompts.defaults, names)
      assert.isTrue(Result.isFailure(refused) && refused.failure.message.includes("confirm mode adds"))
      assert.isTrue(Result.isSuccess(ToolTable.prepare("test", { tools: [flagged], onDuplicateCall: "allow" }, Prompts.defaults, names)))
    })
  })

  describe("read", () => {
    it("a tool's call: its decoded arguments, the confirmation flag taken out", () => {
      const plain = read(call("book", `{"to":"NRT"}`))
      assert.deepStrictEqual(plain._tag === "Tool" && { args: plain.args, confirmed: plain.confirmed }, {
        args: { to: "NRT" },
        confirmed: false
      })
      const confirmed = read(call("book", `{"to":"NRT","${ToolTable.confirmParameter}":true}`))
      assert.deepStrictEqual(confirmed._tag === "Tool" && { args: confirmed.args, confirmed: confirmed.confirmed }, {
        args: { to: "NRT" },
        confirmed: true
      })
    })

    it("the management tools are named, not decoded", () => {
      assert.strictEqual(read(call(names.getRunningTasks, "not json"))._tag, "GetRunningTasks")
      assert.strictEqual(read(call(names.cancelTask, "{}"))._tag, "CancelTask")
    })

    it("an unknown tool is refused with the names the model can call", () => {
      const r = read(call("fly", "{}"))
      assert.strictEqual(r._tag, "Refused")
      assert.strictEqual(
        r._tag === "Refused" && r.text,
        `Unknown tool "fly". The available tools are: book, report, ${names.getRunningTasks}, ${names.cancelTask}.`
      )
    })

    it("a closed toolset refuses its tools, not its management tools", () => {
      const r = read(call("book", `{"to":"NRT"}`), true)
      assert.isTrue(r._tag === "Refused" && r.text.includes("shut down"))
      assert.strictEqual(read(call(names.getRunningTasks, "{}"), true)._tag, "GetRunningTasks")
    })

    it("arguments that do not decode, or are too long, are refused with the decoder's report", () => {
      const bad = read(call("book", `{"to":1}`))
      assert.isTrue(bad._tag === "Refused" && bad.text.includes("to"))
      const long = read(call("book", JSON.stringify({ to: "x".repeat(100) })), false, 50)
      assert.strictEqual(long._tag, "Refused")
    })

    it("an empty call id is refused (no reply could refer to it)", () => {
      const r = read(call("book", `{"to":"NRT"}`, ""))
      assert.isTrue(r._tag === "Refused" && r.text.includes("no call id"))
    })

    it("model input echoed back is cut at 200 characters", () => {
      const r = read(call("x".repeat(1000), "{}"))
      assert.isTrue(r._tag === "Refused" && r.text.includes("… (1000 characters)") && r.text.length < 400)
      assert.isTrue(ToolTable.inUse(call("book", "{}", "y".repeat(300))).includes("… (300 characters)"))
    })
  })
})
