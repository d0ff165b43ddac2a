/**
 * Odd call ids and management-tool arguments, on both toolsets.
 */
import { assert, it } from "@effect/vitest"
import { Effect } from "effect"
import { AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { call } from "../support/lifetime.ts"
import { chatProblems, chatCallIds } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"

const job = FunctionTool.make("job", { description: "job", onDuplicateCall: "allow" }, () =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update("started")
    yield* Effect.sleep("1 second")
    yield* AsyncRunContext.update("half")
    yield* Effect.sleep("1 second")
    return "done"
  }))

/** Runs the model calls in order (each pair the agent loop would insert), then lets everything end. */
const scenario = (ids: ReadonlyArray<string | { readonly id: string; readonly name: string; readonly args?: string }>) =>
(kind: Parameters<Parameters<typeof forEachKind>[1]>[0]) =>
  Effect.gen(function*() {
    const session = yield* TestSession.TestSession
    const toolset = yield* kind.make({ id: "t", tools: [job] })
    const outputs: Array<string> = []
    for (const entry of ids) {
      const { args, id, name } = typeof entry === "string" ? { id: entry, name: "job", args: undefined } : entry
      const c = yield* call(id, name, args)
      const out = yield* toolset.execute(c)
      outputs.push(out.output)
      // as an agent loop does: the model's call and its output go into the chat
      yield* session.insert([c, out])
      yield* kind.advance("100 millis") // every model call comes before any synthetic id is written
    }
    yield* kind.advance("5 seconds")
    yield* toolset.awaitIdle
    return { chat: yield* session.chat, outputs }
  })

forEachKind("odd call ids and management-tool arguments", (kind) => {
  it.effect("B7 a model id equal to a running call's future _update_1 and _final: no two chat items share a call id", () =>
    Effect.gen(function*() {
      const { chat } = yield* scenario(["x", "x_update_1", "x_final", "x_update_2"])(kind)
      assert.deepStrictEqual(chatProblems(chat), [], chatCallIds(chat).join(" "))
    }).pipe(kind.provide(TestSession.layer)))

  it.effect("B7 a model id equal to another call's future _update_1_2 (the renamed one)", () =>
    Effect.gen(function*() {
      const { chat } = yield* scenario(["x", "x_update_1", "x_update_1_2", "x_update_1_update_1", "x_update_1_2_final", "x_run2"])(kind)
      assert.deepStrictEqual(chatProblems(chat), [], chatCallIds(chat).join(" "))
    }).pipe(kind.provide(TestSession.layer)))

  it.effect("B7 a model id equal to a running call's future _update_1, _update_2 or _final, on a call the toolset answers without running a tool (management tools, bad input, an unknown tool): no two chat items share a call id", () =>
    Effect.gen(function*() {
      const { chat } = yield* scenario([
        "x",
        { id: "x_update_1", name: "get_running_tasks_t" },
        { id: "x_update_2", name: "job", args: "{not json" },
        { id: "x_final", name: "no_such_tool" },
        { id: "x_final_2", name: "cancel_task_t", args: "{\"call_id\":\"nobody\"}" }
      ])(kind)
      assert.deepStrictEqual(chatProblems(chat), [], chatCallIds(chat).join(" "))
    }).pipe(kind.provide(TestSession.layer)))

  it.effect("B7 odd ids (space, slash, unicode, __proto__, 10k chars): no id clash, synthetic ids only add [A-Za-z0-9_-]", () =>
    Effect.gen(function*() {
      const odd = ["a b", "a/b", "ü✓", "__proto__", "constructor", "x".repeat(10_000)]
      const { chat } = yield* scenario(odd)(kind)
      assert.deepStrictEqual(chatProblems(chat), [])
      for (const id of chatCallIds(chat)) {
        const base = odd.find((o) => id.startsWith(o))
        assert.isDefined(base, id.slice(0, 50))
        assert.match(id.slice(base!.length), /^[A-Za-z0-9_-]*$/)
      }
    }).pipe(kind.provide(TestSession.layer)))

  it.effect("E1 management tools with odd arguments: clear outputs, no defect", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* kind.make({ id: "t", tools: [job] })
      yield* toolset.execute(yield* call("r1", "job"))
      const odd = ["", "null", "[]", "{\"call_id\":null}", "{\"call_id\":\"\"}", "{\"call_id\":\"r1_update_1\"}", "{\"call_id\":123}", "{\"call_id\":\"r1\",\"x\":1}", "{\"__proto__\":{\"call_id\":\"r1\"}}", "{\"call_id\":\"r1\"}"]
      const outs: Array<string> = []
      for (const args of odd) {
        const out = yield* toolset.execute(yield* call(`m${outs.length}`, "cancel_task_t", args))
        outs.push(`${args} -> ${out.isError} ${out.output.slice(0, 80)}`)
      }
      const tasks = yield* toolset.execute(yield* call("g1", "get_running_tasks_t", "{\"x\":1}"))
      outs.push(`get extra -> ${tasks.isError} ${tasks.output.slice(0, 80)}`)
      // the __proto__ one must not cancel r1; the last one does
      assert.include(outs.at(-2)!, "false")
      yield* kind.advance("5 seconds")
      yield* toolset.awaitIdle
      assert.deepStrictEqual(chatProblems(yield* session.chat), [])
    }).pipe(kind.provide(TestSession.layer)))
})
