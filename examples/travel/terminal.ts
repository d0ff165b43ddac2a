/**
 * The travel agent's terminal: a transcript, and under it a live status line per background call
 * (spinner, tool, latest update, elapsed time) kept just above the input prompt. The agent's words
 * are shown as the model streams them.
 *
 * On a terminal (`live`), the status lines are redrawn ten times a second while a call runs, and
 * every transcript line is printed above them; the line being typed is kept as it is. When the
 * terminal is resized they are erased and drawn again at the new width. A message the agent is
 * still saying is drawn with them (its last rows), and printed to the transcript once complete.
 * Without a terminal (a pipe, CI), there is no live area: each update is printed as a line
 * instead, and the agent's words are written as they come, on the message's line.
 */
import * as readline from "node:readline"
import { inspect } from "node:util"
import { Cause } from "effect"
import type { ToolsetEvent } from "effect-async-toolset"

export interface ScreenOptions {
  readonly out: NodeJS.WriteStream
  /** Redraw status lines in place (needs a terminal). */
  readonly live: boolean
  readonly color: boolean
  /** Prefix each transcript line with the seconds since the start. */
  readonly timestamps: boolean
}

interface Running {
  readonly callId: string
  readonly name: string
  readonly arguments: string
  readonly startedAt: number
  message: string
  updates: number
}

const spinner = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"]

const ansi = /\u001b\[[0-9;]*m/g
const width = (s: string) => s.replace(ansi, "").length

/** The string values of a call's JSON arguments (`{"call_id":"call_9_1"}` → `["call_9_1"]`). */
const stringsOf = (json: string): Array<string> => {
  try {
    const value: unknown = JSON.parse(json)
    if (typeof value === "object" && value !== null) {
      return Object.values(value).filter((v): v is string => typeof v === "string")
    }
  } catch {
    // no arguments to read
  }
  return []
}

/** `{"to":"Tokyo"}` → `to: Tokyo`. */
export const showArguments = (json: string): string => {
  try {
    const value: unknown = JSON.parse(json)
    if (typeof value === "object" && value !== null && !Array.isArray(value)) {
      return Object.entries(value).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join(", ")
    }
  } catch {
    // shown as it is
  }
  return json
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)}s`

/** How many rows of a message being streamed are shown above the status lines, at most. */
const draftRows = 6

export class Screen {
  private readonly started = Date.now()
  private readonly running = new Map<string, Running>()
  private input: readline.Interface | undefined
  private footer: ReadonlyArray<number> = [] // the widths of the status lines drawn above the prompt
  private frame = 0
  private turnRunning = false
  /** "cancelled" lines held back until the call that cancelled them is printed (see `call`). */
  private readonly held = new Map<string, string>()
  /** Call ids named by a tool call printed in this turn: their "cancelled" line needs no wait. */
  private readonly named = new Set<string>()
  private readonly onResize = () => this.redraw()
  private timer: ReturnType<typeof setInterval> | undefined
  private closed = false
  /**
   * The agent's message being streamed: its words so far, and (without a terminal) whether its
   * transcript line is still open, so the next delta goes on the same line.
   */
  private draft: { readonly id: string; text: string; open: boolean } | undefined

  private readonly options: ScreenOptions

  constructor(options: ScreenOptions) {
    this.options = options
    // readline redraws the line being typed on a resize; this redraws the status lines above it
    if (options.live) options.out.on("resize", this.onResize)
  }

  private style(code: string, text: string) {
    return this.options.color ? `\u001b[${code}m${text}\u001b[0m` : text
  }

  /** Keeps the line being typed at the bottom, under the status lines. */
  attach(input: readline.Interface) {
    this.input = input
    if (this.options.live) this.draw()
    else input.prompt() // output is not a terminal: no redrawing, just one prompt
  }

  // --- the transcript ------------------------------------------------------------------------------

  private stamp() {
    return this.options.timestamps ? this.style("2", `[${seconds(Date.now() - this.started).padStart(5)}] `) : ""
  }

  private print(line: string) {
    if (this.closed) return
    this.breakDraft()
    this.clear()
    this.options.out.write(`${this.stamp()}${line}\n`)
    this.draw()
  }

  user(text: string) {
    this.print(`${this.style("1", "you:")} ${text}`)
  }

  agent(text: string) {
    this.print(`${this.style("1;36", "agent:")} ${this.style("36", text)}`)
  }

  /**
   * A piece of the agent's message `id`, as the model streams it. On a terminal the message so far
   * is drawn above the status lines (its last rows) until it is complete; without one, each piece
   * is written as it comes, on the message's transcript line.
   */
  agentDelta(id: string, delta: string) {
    if (this.closed) return
    if (this.draft !== undefined && this.draft.id !== id) this.cutDraft()
    const draft = this.draft ??= { id, text: "", open: false }
    draft.text += delta
    if (this.options.live) return this.redraw()
    if (!draft.open) {
      // a new line, or the rest of one that another line interrupted
      const start = draft.text === delta ? "" : "… "
      this.options.out.write(`${this.stamp()}${this.style("1;36", "agent:")} ${start}`)
      draft.open = true
    }
    this.options.out.write(this.style("36", delta))
  }

  /** The agent's message `id` is in the chat: a streamed one is complete, another is printed whole. */
  agentMessage(id: string, text: string) {
    const draft = this.draft
    if (draft === undefined || draft.id !== id) return this.agent(text)
    this.draft = undefined
    if (this.options.live) return this.agent(text)
    if (draft.open) this.options.out.write("\n")
  }

  /** Without a terminal, another line is about to be printed: end the open message line first. */
  private breakDraft() {
    if (this.draft?.open !== true) return
    this.options.out.write("\n")
    this.draft.open = false
  }

  /** A streamed message that never completed (the model failed mid-way): shown as cut off. */
  private cutDraft() {
    const draft = this.draft
    if (draft === undefined) return
    this.draft = undefined
    if (this.options.live) return this.agent(`${draft.text} ${this.style("2", "[cut off]")}`)
    if (draft.open) this.options.out.write(`${this.style("2", " [cut off]")}\n`)
  }

  tool(text: string) {
    this.print(this.style("2", `  ${text}`))
  }

  /**
   * A tool call the model made, once it is in the chat. The agent adds a call to the chat with its
   * output, after it ran: a `cancel_task` call has cancelled its target by then, and that call's
   * "cancelled" line, held back by `call`, is printed now, after the call that caused it.
   */
  toolCall(name: string, args: string, callId: string) {
    this.tool(`→ ${name}(${showArguments(args)})  ${callId}`)
    for (const target of stringsOf(args)) {
      const line = this.held.get(target)
      if (line === undefined) {
        this.named.add(target)
      } else {
        this.held.delete(target)
        this.tool(line)
      }
    }
  }

  /** A turn of the agent started or ended: what it held back is printed at its end, at the latest. */
  turn(running: boolean) {
    this.turnRunning = running
    if (running) return
    this.cutDraft()
    this.named.clear()
    this.releaseHeld()
  }

  private releaseHeld() {
    const lines = [...this.held.values()]
    this.held.clear()
    for (const line of lines) this.tool(line)
  }

  note(text: string) {
    this.print(this.style("2;3", text))
  }

  log(level: string, text: string) {
    this.print(this.style(level === "Error" || level === "Fatal" ? "31" : "33", `[${level.toLowerCase()}] ${text}`))
  }

  /**
   * After Enter, readline has echoed the line and moved to a new one: erase the echo (and the
   * status lines above it); the agent's event prints the line as part of the transcript.
   */
  entered(line: string) {
    if (!this.options.live || this.input === undefined || this.closed) return
    const rows = this.rows(width(this.input.getPrompt() + line))
    readline.moveCursor(this.options.out, 0, -(this.footerRows() + rows))
    readline.cursorTo(this.options.out, 0)
    readline.clearScreenDown(this.options.out)
    this.footer = []
    this.draw()
  }

  // --- the background calls ------------------------------------------------------------------------

  call(event: ToolsetEvent.ToolsetEvent) {
    switch (event._tag) {
      case "CallStarted":
        this.running.set(event.callId, {
          callId: event.callId,
          name: event.name,
          arguments: event.arguments,
          startedAt: event.at,
          message: "starting",
          updates: 0
        })
        break
      case "CallUpdated": {
        const call = this.running.get(event.callId)
        if (call !== undefined) {
          call.message = event.message
          call.updates++
        }
        // the first update is the call's output: the agent tells it; later ones go in the transcript
        // when there is no live status line to show them
        if (!this.options.live && event.step > 0) this.tool(`… ${event.name} ${event.callId}: ${event.message}`)
        break
      }
      case "CallEnded": {
        const call = this.running.get(event.callId)
        this.running.delete(event.callId)
        // a quick call that never updated was not in the background: its result is the answer
        if (event.outcome !== "done" || (call?.updates ?? 0) > 0) {
          const mark = event.outcome === "done" ? "✓" : "✗"
          const line = `${mark} ${event.name} ${event.callId} ${event.outcome} after ${seconds(event.duration)}`
          // Cancelled during a turn: by one of the model's calls in it, most likely, which is not in
          // the chat yet (see `toolCall`). Its line waits for that call, or for the turn's end.
          if (event.outcome === "cancelled" && this.turnRunning && !this.named.has(event.callId)) {
            this.held.set(event.callId, line)
          } else {
            this.tool(line)
          }
        }
        break
      }
      default:
        return
    }
    this.tick()
  }

  /** The last rows of the message being streamed, wrapped to the terminal's width. */
  private draftLines(): Array<string> {
    if (this.draft === undefined) return []
    const columns = Math.max(10, (this.options.out.columns || 80) - 1)
    const rows = `agent: ${this.draft.text}`.split("\n").flatMap((line) => {
      const pieces: Array<string> = []
      for (let i = 0; i < line.length; i += columns) pieces.push(line.slice(i, i + columns))
      return pieces.length === 0 ? [""] : pieces
    })
    return rows.slice(-draftRows).map((row) => this.style("36", row))
  }

  private statusLines(): Array<string> {
    const columns = this.options.out.columns || 80
    const now = Date.now()
    const frame = spinner[this.frame % spinner.length]!
    return [...this.running.values()].map((call) => {
      const line = `${frame} ${call.name}(${showArguments(call.arguments)}) · ${call.message} · ${
        seconds(now - call.startedAt)
      }`
      return this.style("33", line.length > columns - 1 ? `${line.slice(0, columns - 2)}…` : line)
    })
  }

  /** Runs the spinner while calls run. */
  private tick() {
    if (!this.options.live) return
    if (this.running.size > 0 && this.timer === undefined) {
      this.timer = setInterval(() => {
        this.frame++
        this.redraw()
      }, 100)
    } else if (this.running.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer)
      this.timer = undefined
    }
    this.redraw()
  }

  private redraw() {
    if (this.closed) return
    this.clear()
    this.draw()
  }

  /** Rows a line of `w` visible characters takes at the terminal's width now. */
  private rows(w: number) {
    return Math.max(1, Math.ceil(w / (this.options.out.columns || 80)))
  }

  /**
   * Rows the status lines take now. Each was drawn narrower than the terminal, so one row each,
   * unless the terminal got narrower since: then most terminals (tmux, VTE, iTerm2, xterm.js,
   * Windows Terminal) re-wrap it over several rows, and all of them must be erased, or the part
   * left above stays on screen as a stale status line. (A terminal that does not re-wrap, like
   * xterm, loses a transcript line or two above instead.)
   */
  private footerRows() {
    return this.footer.reduce((n, w) => n + this.rows(w), 0)
  }

  /** Erases the status lines and the input line; the cursor ends where they began. */
  private clear() {
    if (!this.options.live) return
    const inputRows = this.input === undefined ? 0 : this.input.getCursorPos().rows
    readline.moveCursor(this.options.out, 0, -(this.footerRows() + inputRows))
    readline.cursorTo(this.options.out, 0)
    readline.clearScreenDown(this.options.out)
    this.footer = []
  }

  /** Draws the status lines, then the prompt with what is being typed. */
  private draw() {
    if (!this.options.live || this.closed) return
    const lines = [...this.draftLines(), ...this.statusLines()]
    for (const line of lines) this.options.out.write(`${line}\n`)
    this.footer = lines.map(width)
    if (this.input === undefined) return
    // readline redraws the input by first moving up as many rows as the cursor was down in it at
    // its last redraw (`prevRows`, not in its typings; after a fast paste it lags behind the
    // cursor): step down that many rows first, so a wrapped input does not eat the lines above
    const prevRows = (this.input as unknown as { readonly prevRows?: number }).prevRows ??
      this.input.getCursorPos().rows
    this.options.out.write("\n".repeat(prevRows))
    this.input.prompt(true)
  }

  /**
   * Stops redrawing; what is on screen stays. `callsGoOn`: the calls still running are durable and
   * go on (they are told next time), rather than stopped.
   */
  close(farewell?: string, callsGoOn = false) {
    if (this.closed) return
    this.cutDraft()
    this.releaseHeld()
    if (this.options.live) this.options.out.off("resize", this.onResize)
    if (this.running.size > 0) {
      this.note(
        callsGoOn
          ? `(${this.running.size} background call(s) go on: start the demo again to hear how they ended)`
          : `(${this.running.size} background call(s) still running were stopped)`
      )
    }
    if (farewell !== undefined) this.note(farewell)
    this.clear()
    this.closed = true
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
  }
}

/** A log line's text: its messages, and the cause (one line) if there is one. */
export const logText = (message: unknown, cause: string): string => {
  const parts = Array.isArray(message) ? message : [message]
  const text = parts.map((m) => typeof m === "string" ? m : inspect(m, { depth: 4, breakLength: Infinity })).join(" ")
  return cause === "" ? text : `${text}: ${cause}`
}

const firstLine = (text: string, max = 240): string => {
  const line = text.split("\n", 1)[0]!.trim()
  return line.length > max ? `${line.slice(0, max - 1)}…` : line
}

/**
 * A cause in one line: its error's tag (or name) and message, e.g. `AiError: ScriptedModel.generateText:
 * rate limited`; a defect's name and message; "interrupted". No stack trace.
 */
export const causeLine = (cause: Cause.Cause<unknown>): string => {
  if (Cause.hasInterruptsOnly(cause)) return "interrupted"
  const error = Cause.squash(cause)
  const more = cause.reasons.filter((r) => !Cause.isInterruptReason(r)).length - 1
  const tail = more > 0 ? ` (and ${more} more)` : ""
  if (typeof error === "object" && error !== null) {
    const { _tag, name, message } = error as { _tag?: unknown; name?: unknown; message?: unknown }
    const label = typeof _tag === "string" ? _tag : typeof name === "string" ? name : "Error"
    if (typeof message === "string" && message !== "") return `${label}: ${firstLine(message)}${tail}`
    return `${label}: ${firstLine(inspect(error, { depth: 2, breakLength: Infinity }))}${tail}`
  }
  return `${firstLine(typeof error === "string" ? error : inspect(error))}${tail}`
}
