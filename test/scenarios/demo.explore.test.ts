/**
 * The demo itself, in child processes, as `npm start` runs it: scripted runs (`--script <file>`),
 * `--model openai-compat` against a stand-in server, and the durable demo run twice
 * (`npm start -- --durable`: quit in the middle of a booking, start again). Each starts processes
 * (seconds each), so in the explore tier; how the screen shows what happens is in demo.test.ts.
 */
import { readFileSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { dir, root, runDemo, runScript } from "../support/demo.ts"
import * as OpenAiServer from "../support/openAiServer.ts"
import { freshDataDir } from "../support/pglite.ts"

describe("demo: --durable", () => {
  it("quit in the middle of a booking, start again: the agent tells its result, once", async () => {
    const data = dirname(await freshDataDir())
    const scripts = join(root, "examples")
    const first = await runScript("durable-1.txt", readFileSync(join(scripts, "travel-durable-1.txt"), "utf8"), "--durable", "--data", data)
    assert.strictEqual(first.code, 0, first.stdout)
    assert.include(first.stdout, "On it! Searching flights to Tokyo")
    assert.include(first.stdout, "go on: start the demo again")
    assert.notInclude(first.stdout, "is booked")
    assert.notInclude(first.stdout, "told now", "a new conversation has nothing to tell from before")
    const second = await runScript("durable-2.txt", readFileSync(join(scripts, "travel-durable-2.txt"), "utf8"), "--durable", "--data", data)
    assert.strictEqual(second.code, 0, second.stdout)
    assert.include(second.stdout, "resuming the conversation")
    assert.strictEqual(second.stdout.split("what the bookings did meanwhile is told now").length - 1, 1, "said once, as it is told")
    assert.strictEqual(second.stdout.split("Your confirmation number is FL-").length - 1, 1, second.stdout)
    assert.notInclude(second.stdout, "[error]")
  }, 120_000)
})

describe("demo: a scripted run", () => {
  it("shows a failed turn in one line, goes on, and exits with code 1", async () => {
    const { code, stdout } = await runScript("fail.txt", "Hello!\nSimulate a model error, please.\nThanks!\n")
    const errors = stdout.split("\n").filter((line) => line.includes("[error]"))
    assert.strictEqual(errors.length, 1, stdout)
    assert.include(errors[0], "the turn failed")
    assert.include(errors[0], "AiError: ScriptedModel.generateText: 503 Service Unavailable")
    assert.notInclude(stdout, "    at ", "no stack trace")
    assert.include(stdout, "agent: You're welcome!", "the conversation went on")
    assert.include(stdout, "1 turn failed")
    assert.strictEqual(code, 1)
  }, 60_000)

  it("with --debug, prints the full cause after the one line", async () => {
    const { code, stdout } = await runScript("fail-debug.txt", "Simulate a model error\n", "--debug")
    assert.include(stdout, "[debug] full cause:")
    assert.include(stdout, "    at ", "the stack trace")
    assert.strictEqual(code, 1)
  }, 60_000)

  it("exits with code 0 when every turn answered, and prints a cancellation after the call that caused it", async () => {
    const { code, stdout } = await runScript(
      "cancel.txt",
      "Book a flight to Paris.\nBook a flight to Lisbon as well.\nCancel the Paris flight.\n"
    )
    const transcript = stdout.split("\n")
    const cancelCall = transcript.findIndex((line) => line.includes("→ cancel_task_travel(call_id: call_1_1)"))
    const cancelledLine = transcript.findIndex((line) => line.includes("✗ book_flight call_1_1 cancelled"))
    assert.isAbove(cancelCall, -1, stdout)
    assert.isAbove(cancelledLine, cancelCall, stdout)
    assert.notInclude(stdout, "[error]")
    assert.strictEqual(code, 0)
  }, 60_000)
})

describe("demo: --model", () => {
  /** The model's side on the stand-in server, streamed as a real server streams. */
  const words = (...pieces: ReadonlyArray<string>): OpenAiServer.Reply => ({
    _tag: "Sse",
    events: [...pieces.map((content) => OpenAiServer.chunk({ content })), OpenAiServer.chunk({}, "stop")]
  })
  const rules = (request: OpenAiServer.Received): OpenAiServer.Reply => {
    const { messages, tool_choice } = request.body
    if (tool_choice === "none") {
      // a reply names what it is for (its instructions come last): only the final result is told
      const final = String(messages.at(-1)?.content ?? "").includes("call_abc_final")
      return final ? words("Your flight ", "to Tokyo ", "is booked.") : words()
    }
    if (messages.at(-1)?.role === "tool") return words("On it: ", "searching flights.")
    return OpenAiServer.toolCalls([{ id: "call_abc", name: "book_flight", arguments: `{"to":"Tokyo"}` }])
  }

  it.live("--model openai-compat runs the demo on the OpenAI-compatible model configured by OPENAI_* (here the stand-in server)", () =>
    Effect.gen(function*() {
      const server = yield* OpenAiServer.make(rules)
      const file = join(dir, "openai.txt")
      writeFileSync(file, "Book me a flight to Tokyo.\nwait idle\n")
      const { code, stdout } = yield* Effect.promise(() =>
        runDemo(["--model", "openai-compat", "--script", file], {
          OPENAI_BASE_URL: server.baseUrl,
          OPENAI_API_KEY: server.apiKey,
          OPENAI_MODEL: "test-model"
        })
      )
      assert.include(stdout, `Travel agent demo: test-model at ${server.baseUrl}`)
      assert.include(stdout, "→ book_flight(to: Tokyo)  call_abc")
      assert.include(stdout, "agent: On it: searching flights.")
      assert.include(stdout, "agent: Your flight to Tokyo is booked.")
      assert.notInclude(stdout, "[error]")
      assert.strictEqual(code, 0, stdout)
      assert.deepStrictEqual(server.rejected, [])
      assert.isTrue(server.requests.every((r) => r.body.model === "test-model" && r.body.stream === true))
    }), 60_000)

  it("--model openai-compat with no OPENAI_API_KEY or OPENAI_BASE_URL says what to set; an unknown model is named", async () => {
    const none = await runDemo(["--model", "openai-compat"], { OPENAI_API_KEY: undefined, OPENAI_BASE_URL: undefined })
    assert.strictEqual(none.code, 1)
    assert.include(none.stderr, "set OPENAI_API_KEY")
    const unknown = await runDemo(["--model", "gpt-9"])
    assert.strictEqual(unknown.code, 1)
    assert.include(unknown.stderr, `--model gpt-9: unknown model; the models are "scripted" (the default) and "openai-compat"`)
  }, 60_000)
})
