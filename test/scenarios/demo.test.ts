/**
 * The terminal demo (examples/travel-agent.ts): how it shows what happens. The screen is driven
 * with events directly. The demo itself in a child process (scripted runs, `--model`, the durable
 * demo) is in demo.explore.test.ts.
 */
import { EventEmitter } from "node:events"
import { assert, describe, it } from "@effect/vitest"
import type { ToolsetEvent } from "effect-async-toolset"
import { Screen } from "../../examples/travel/terminal.ts"

/** Enough of a terminal for the screen: its width, what is written to it, `resize` events. */
class FakeTerminal extends EventEmitter {
  columns: number
  readonly isTTY = true
  written = ""
  constructor(columns: number) {
    super()
    this.columns = columns
  }
  write(chunk: string, callback?: () => void): boolean {
    this.written += chunk
    callback?.()
    return true
  }
}

const screenOn = (out: FakeTerminal, live: boolean) =>
  new Screen({ out: out as unknown as NodeJS.WriteStream, live, color: false, timestamps: false })

const started = (callId: string, args = `{"to":"Paris"}`): ToolsetEvent.ToolsetEvent => ({
  _tag: "CallStarted",
  toolsetId: "travel",
  callId,
  name: "book_flight",
  arguments: args,
  at: Date.now()
})

const cancelled = (callId: string): ToolsetEvent.ToolsetEvent => ({
  _tag: "CallEnded",
  toolsetId: "travel",
  callId,
  name: "book_flight",
  outcome: "cancelled",
  duration: 1200,
  at: Date.now()
})

const lines = (out: FakeTerminal) => out.written.split("\n").filter((line) => line !== "")

describe("demo: the screen", () => {
  it("prints a call's 'cancelled' line after the cancel_task call that cancelled it", () => {
    // The agent puts a call into the chat with its output, after it ran: the toolset reports the
    // cancelled call first. The screen holds that line until the cancel call is printed.
    const out = new FakeTerminal(80)
    const screen = screenOn(out, false)
    screen.turn(true)
    screen.call(started("call_9_1"))
    screen.call(cancelled("call_9_1"))
    assert.deepStrictEqual(lines(out), [])
    screen.toolCall("cancel_task_travel", `{"call_id":"call_9_1"}`, "call_15_1")
    screen.agent("Done: I cancelled your flight to Paris.")
    screen.turn(false)
    assert.deepStrictEqual(lines(out), [
      "  → cancel_task_travel(call_id: call_9_1)  call_15_1",
      "  ✗ book_flight call_9_1 cancelled after 1.2s",
      "agent: Done: I cancelled your flight to Paris."
    ])
    screen.close()
  })

  it("prints the 'cancelled' line at once when the cancel call came first, or outside a turn; at the turn's end at the latest", () => {
    const out = new FakeTerminal(80)
    const screen = screenOn(out, false)
    screen.turn(true)
    screen.call(started("call_1_1"))
    screen.toolCall("cancel_task_travel", `{"call_id":"call_1_1"}`, "call_2_1")
    screen.call(cancelled("call_1_1")) // the cancel call is printed already
    screen.call(started("call_3_1"))
    screen.call(cancelled("call_3_1")) // no call in this turn names it: printed when the turn ends
    screen.turn(false)
    screen.call(started("call_4_1"))
    screen.call(cancelled("call_4_1")) // no turn running
    assert.deepStrictEqual(lines(out), [
      "  → cancel_task_travel(call_id: call_1_1)  call_2_1",
      "  ✗ book_flight call_1_1 cancelled after 1.2s",
      "  ✗ book_flight call_3_1 cancelled after 1.2s",
      "  ✗ book_flight call_4_1 cancelled after 1.2s"
    ])
    screen.close()
  })

  it("without a terminal, writes the agent's words as they stream in, on the message's line", () => {
    const out = new FakeTerminal(80)
    const screen = screenOn(out, false)
    screen.turn(true)
    screen.agentDelta("msg_1", "Let me ")
    assert.strictEqual(out.written, "agent: Let me ")
    screen.agentDelta("msg_1", "look.")
    assert.strictEqual(out.written, "agent: Let me look.")
    screen.agentMessage("msg_1", "Let me look.")
    screen.toolCall("book_flight", `{"to":"Paris"}`, "call_1_1")
    // a line printed while a message streams ends its line; the rest goes on after "…"
    screen.agentDelta("msg_2", "Booking ")
    screen.tool("… book_flight call_1_1: Found 3 flights")
    screen.agentDelta("msg_2", "your flight.")
    screen.agentMessage("msg_2", "Booking your flight.")
    // a message the model never finished is marked at the turn's end
    screen.agentDelta("msg_3", "And the wea")
    screen.turn(false)
    assert.deepStrictEqual(lines(out), [
      "agent: Let me look.",
      "  → book_flight(to: Paris)  call_1_1",
      "agent: Booking ",
      "  … book_flight call_1_1: Found 3 flights",
      "agent: … your flight.",
      "agent: And the wea [cut off]"
    ])
    screen.close()
  })

  it("on a terminal, draws the message being streamed above the status lines, and prints it once complete", () => {
    const out = new FakeTerminal(80)
    const screen = screenOn(out, true)
    screen.call(started("call_1_1"))
    screen.agentDelta("msg_1", "Still ")
    screen.agentDelta("msg_1", "searching.")
    const drawn = lines(out)
    const draft = drawn.findLastIndex((line) => line.includes("agent: Still searching."))
    const status = drawn.findLastIndex((line) => line.includes("book_flight(to: Paris)"))
    assert.isAbove(draft, -1, out.written)
    assert.isAbove(status, draft, "the message so far is drawn above the status line")

    out.written = ""
    screen.agentMessage("msg_1", "Still searching.")
    const after = out.written.replace(/\u001b\[[0-9;]*[A-Za-z]/g, "")
    assert.include(after, "agent: Still searching.\n", "printed to the transcript")
    assert.strictEqual(after.split("agent: Still searching.").length - 1, 1, "and no longer drawn as a draft")
    screen.close()
  })

  it("erases the status line as the terminal re-wrapped it when it got narrower, and redraws it at once", () => {
    const out = new FakeTerminal(100)
    const screen = screenOn(out, true)
    screen.call(started("call_1_1", `{"to":"a city with a rather long name"}`))
    const drawn = lines(out).at(-1)!
    assert.include(drawn, "book_flight(to: a city with a rather long name)")
    const w = drawn.length
    assert.isAbove(w, 40) // one row at 100 columns; two at 40 once the terminal re-wraps it

    out.written = ""
    out.columns = 40
    out.emit("resize")
    // node:readline's cursor moves, as written: up n rows, column 1, erase to the end of the screen
    assert.isTrue(
      out.written.startsWith(`\u001b[${Math.ceil(w / 40)}A\u001b[1G\u001b[0J`),
      `erased from the first row the old line takes now: ${JSON.stringify(out.written)}`
    )
    const redrawn = lines(out).filter((line) => line.includes("book_flight"))
    assert.strictEqual(redrawn.length, 1)
    assert.isAtMost(redrawn[0]!.replace(/^.*\u001b\[0J/, "").length, 39, "redrawn to fit the new width")
    screen.close()
    assert.strictEqual(out.listenerCount("resize"), 0, "close stops listening")
  })
})
