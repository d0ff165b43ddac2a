/**
 * A travel agent in the terminal: book flights, ask how they are going, cancel them, chat on
 * while they run. The app is layers composed once: the travel toolset (`AiAgent.toolset`, whose
 * `book_flight` runs in the background), the agent (`AiAgent.layer`) and a model layer. A live
 * status line shows each running call and its latest update.
 *
 *   npm start                                        chat (on a terminal); Ctrl+C or "exit" to quit
 *   npm start -- --script examples/travel-script.txt play a conversation from a file, print the transcript
 *   npm start < /dev/null                            no terminal: play the built-in conversation, exit
 *   npm start -- --debug                             also print the full cause of every logged error
 *   npm start -- --model openai-compat               the same on a real model (OPENAI_* variables, below)
 *   npm start -- --durable [--data <folder>]         the durable toolset on the embedded store: quit in the
 *                                                    middle of a booking, start again, and you are told its result
 *
 * A scripted run (a script file, or the built-in one) exits with code 1 if a turn of the agent
 * failed (the model failed), 0 otherwise. A logged error is one line: its message and the error's
 * tag and message; with `--debug` the full cause follows it, and the engine's debug logs show.
 *
 * The agent's words are printed as the model streams them. By default the model is the test kit's
 * `ScriptedModel` playing a few rules (examples/travel/model.ts), streaming its answers word by
 * word: it runs offline and the same every time. `--model openai-compat` runs the demo on the
 * package's OpenAI-compatible model (effect-async-toolset/openai-compat), configured by
 * `OpenAiCompat.layerConfig` from OPENAI_BASE_URL (default https://api.openai.com/v1),
 * OPENAI_API_KEY (may be left out for a local server) and OPENAI_MODEL (default gpt-4o-mini):
 *
 *   OPENAI_API_KEY=sk-... npm start -- --model openai-compat
 *   OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_MODEL=llama3.1 npm start -- --model openai-compat
 *
 * `runDemo` takes any `LanguageModel` layer.
 *
 * A script file has one user message per line, and these commands:
 *   wait <seconds>   the user says nothing for that long (background calls go on)
 *   wait idle        the user waits until no call runs and the agent has said everything
 *   type <seconds>   the user is typing for that long: background replies wait until they stop
 *   quit             the user leaves at once, whatever runs (with --durable: it goes on next time)
 *   # ...            a comment
 * At its end the demo waits until everything is said, then exits.
 */
import { readFileSync, realpathSync } from "node:fs"
import * as readline from "node:readline"
import { pathToFileURL } from "node:url"
import { parseArgs } from "node:util"
import { Cause, Effect, Exit, Fiber, Layer, Logger, Queue, References, Stream } from "effect"
import type { LanguageModel } from "effect/ai"
import { FetchHttpClient } from "effect/http"
import { AiAgent } from "effect-async-toolset"
import type { ChatContext } from "effect-async-toolset"
import { DurableChat, DurableStore, DurableToolset } from "effect-async-toolset/durable"
import { OpenAiCompat } from "effect-async-toolset/openai-compat"
import { ScriptedModel } from "effect-async-toolset/testing"
import { instructions, travelModel } from "./travel/model.ts"
import { causeLine, logText, Screen } from "./travel/terminal.ts"
import { durableTravel, travelTools } from "./travel/tools.ts"
import type { Timing } from "./travel/tools.ts"

// --- scripts --------------------------------------------------------------------------------------

export type Step =
  | { readonly _tag: "Say"; readonly text: string }
  | { readonly _tag: "Wait"; readonly seconds: number }
  | { readonly _tag: "WaitIdle" }
  | { readonly _tag: "Type"; readonly seconds: number }
  | { readonly _tag: "Quit" }

export const parseScript = (source: string): Array<Step> =>
  source.split(/\r?\n/).flatMap((raw, i): Array<Step> => {
    const line = raw.trim()
    if (line === "" || line.startsWith("#")) return []
    if (/^quit$/i.test(line)) return [{ _tag: "Quit" }]
    const command = /^(wait|type)\s+(\S+)$/i.exec(line)
    if (command === null) return [{ _tag: "Say", text: line }]
    const [, verb, arg] = command
    if (verb!.toLowerCase() === "wait" && arg!.toLowerCase() === "idle") return [{ _tag: "WaitIdle" }]
    const seconds = Number(arg)
    if (!Number.isFinite(seconds) || seconds < 0) {
      throw new Error(`script line ${i + 1}: "${line}": expected "${verb} <seconds>"${verb === "wait" ? ` or "wait idle"` : ""}`)
    }
    return [{ _tag: verb!.toLowerCase() === "wait" ? "Wait" : "Type", seconds }]
  })

/** What `npm start` plays when no terminal is attached (CI): a short conversation. */
export const builtInScript = `
Hi!
Book me a flight to Tokyo, please.
Is it a long flight?
wait 1
How is it going?
wait idle
What's the weather in Tokyo?
Thanks!
`

// --- the session ----------------------------------------------------------------------------------

type Mode =
  | { readonly _tag: "Interactive" }
  | { readonly _tag: "Script"; readonly steps: ReadonlyArray<Step>; readonly source: string }

const isSynthetic = (callId: string) => /_(update_\d+|final)$/.test(callId)

/** What the session counts as it goes. */
interface Tally {
  failedTurns: number
}

/**
 * Prints what the agent says (as the model streams it) and the calls the model makes, as they
 * happen, and counts the turns that failed (the agent logged why: one line, see the logger in
 * `runDemo`).
 */
const showAgent = (screen: Screen, tally: Tally, event: AiAgent.Event) => {
  switch (event._tag) {
    case "TurnStarted":
      return screen.turn(true)
    case "TurnEnded":
      if (event.outcome === "failed") tally.failedTurns++
      return screen.turn(false)
    case "TextDelta":
      return screen.agentDelta(event.itemId, event.delta)
    case "ItemAdded": {
      const item = event.item
      if (item._tag === "ChatMessage") {
        if (item.role === "user") screen.user(item.content)
        if (item.role === "assistant") screen.agentMessage(item.id, item.content)
      } else if (item._tag === "FunctionCall" && !isSynthetic(item.callId)) {
        screen.toolCall(item.name, item.arguments, item.callId)
      }
    }
  }
}

/** Until no call runs, no reply is owed and no turn is queued, or 60 seconds. */
const settle = (agent: AiAgent.AiAgent["Service"]) =>
  agent.awaitIdle.pipe(
    Effect.timeoutOrElse({
      duration: "60 seconds",
      orElse: () => Effect.die(new Error("the conversation did not settle within 60 seconds"))
    })
  )

const playScript = (steps: ReadonlyArray<Step>, agent: AiAgent.AiAgent["Service"], screen: Screen) =>
  Effect.gen(function*() {
    let typing = false
    for (const [i, step] of steps.entries()) {
      if (step._tag === "Quit") {
        screen.note("(you leave: the demo stops now, whatever still runs)")
        return
      }
      switch (step._tag) {
        case "Say": {
          // The message is in the chat and its turn queued before the user stops typing, so a
          // background reply waiting for them comes after it. The user waits for the answer
          // before saying the next thing; a failed turn is logged by the agent.
          const turn = yield* Effect.forkChild(Effect.exit(agent.send(step.text)), { startImmediately: true })
          if (typing) yield* agent.setUserTyping(typing = false)
          yield* Fiber.join(turn)
          break
        }
        case "Wait":
          if (typing) yield* agent.setUserTyping(typing = false)
          yield* Effect.sleep(step.seconds * 1000)
          break
        case "WaitIdle":
          if (typing) yield* agent.setUserTyping(typing = false)
          yield* settle(agent)
          break
        case "Type":
          screen.note(`(you are typing for ${step.seconds}s: the agent does not interrupt)`)
          yield* agent.setUserTyping(typing = true)
          yield* Effect.sleep(step.seconds * 1000)
          // what they typed is the next message, if there is one; otherwise they gave up
          if (steps[i + 1]?._tag !== "Say") yield* agent.setUserTyping(typing = false)
          break
      }
    }
    yield* settle(agent)
  })

/** A resumed conversation: what was said before, the last few lines of it. */
const showHistory = (screen: Screen, history: ChatContext.ChatContext, dataDir: string) => {
  const said = history.items.filter((item) => item._tag === "ChatMessage")
  if (said.length === 0) {
    screen.note(`Durable mode: a new conversation, stored in ${dataDir}. Quit in the middle of a booking and start again.`)
    return
  }
  screen.note(`Durable mode: resuming the conversation stored in ${dataDir} (${history.items.length} items). It ended with:`)
  for (const item of said.slice(-4)) {
    if (item.role === "user") screen.user(item.content)
    else if (item.role === "assistant") screen.agent(item.content)
  }
}

/** How long after the last keystroke the user counts as no longer typing. */
const typingPause = 3000

const chat = (agent: AiAgent.AiAgent["Service"], screen: Screen) =>
  Effect.gen(function*() {
    const lines = yield* Queue.unbounded<string | undefined>()
    const input = readline.createInterface({ input: process.stdin, output: process.stdout, prompt: "you> ", terminal: true })
    let typing = false
    let pause: ReturnType<typeof setTimeout> | undefined
    const setTyping = (value: boolean) => {
      if (pause !== undefined) clearTimeout(pause)
      pause = value ? setTimeout(() => setTyping(false), typingPause) : undefined
      if (value === typing) return
      typing = value
      Effect.runSync(agent.setUserTyping(value))
    }
    // readline emits keypress events on a terminal; this listener runs after readline's own, so
    // `input.line` already has the key in it
    const onKey = () => setTyping(input.line.length > 0)
    process.stdin.on("keypress", onKey)
    // the user stops typing once their message is in the chat (see below)
    input.on("line", (line) => {
      screen.entered(line)
      Queue.offerUnsafe(lines, line)
    })
    input.on("SIGINT", () => input.close())
    input.on("close", () => Queue.offerUnsafe(lines, undefined))
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        if (pause !== undefined) clearTimeout(pause)
        process.stdin.off("keypress", onKey)
        input.close()
      })
    )
    screen.note(
      `Try: "Book me a flight to Tokyo", "How is it going?", "What's the weather in Paris?", ` +
        `"Cancel the Tokyo flight". Ctrl+C or "exit" to quit.`
    )
    screen.attach(input)
    while (true) {
      const line = yield* Queue.take(lines)
      if (line === undefined || /^(exit|quit|bye)$/i.test(line.trim())) break
      if (line.trim() !== "") {
        // The message goes into the chat and its turn is queued at once (the fork starts right
        // away), before the user counts as done typing: a background reply that was waiting for
        // them comes after their message, not before it. The user may go on typing while the
        // agent answers: the turn runs on its own.
        yield* Effect.forkScoped(Effect.exit(agent.send(line.trim())), { startImmediately: true })
      }
      setTyping(input.line.length > 0)
    }
  })

const session = (mode: Mode, screen: Screen, tally: Tally, resumed = false) =>
  Effect.gen(function*() {
    const agent = yield* AiAgent.AiAgent
    yield* agent.events.pipe(
      Stream.runForEach((event) => Effect.sync(() => showAgent(screen, tally, event))),
      Effect.forkScoped({ startImmediately: true })
    )
    // What a resumed conversation picks up: calls still running from before show on the status
    // line; the first reply about what they did meanwhile, before the user says anything, is
    // announced as such.
    let resuming = resumed
    for (const toolset of yield* agent.toolsets) {
      for (const task of yield* toolset.runningTasks) {
        screen.call({ _tag: "CallStarted", toolsetId: toolset.id, callId: task.callId, name: task.name, arguments: task.arguments, at: task.startedAt })
      }
      yield* toolset.events.pipe(
        Stream.runForEach((event) =>
          Effect.sync(() => {
            if (resuming && event._tag === "ReplyDelivered") screen.note("(what the bookings did meanwhile is told now)")
            if (event._tag === "ReplyDelivered") resuming = false
            screen.call(event)
          })
        ),
        Effect.forkScoped({ startImmediately: true })
      )
    }
    if (mode._tag === "Interactive") return yield* chat(agent, screen)
    screen.note(`Playing ${mode.source}: ${mode.steps.length} steps`)
    yield* playScript(mode.steps, agent, screen)
    // Every turn has ended by now, and its TurnEnded event has reached `showAgent`: the event was
    // published before the turn counted as over, and the subscriber was woken first.
    const chatNow = yield* agent.chat
    const calls = chatNow.items.filter((item) => item._tag === "FunctionCall" && !isSynthetic(item.callId)).length
    const failed = tally.failedTurns === 0
      ? ""
      : `; ${tally.failedTurns} ${tally.failedTurns === 1 ? "turn" : "turns"} failed`
    screen.note(`End of the script: ${chatNow.items.length} chat items, ${calls} tool calls${failed}.`)
  })

// --- running it -----------------------------------------------------------------------------------

export interface DemoOptions {
  /** Shown in the banner: which model plays the agent. */
  readonly modelName: string
  /** Command-line arguments (default: the process's). */
  readonly argv?: ReadonlyArray<string> | undefined
  /** Real time between the booking's steps (default 2 s each). */
  readonly timing?: Timing | undefined
}

export interface DemoResult {
  /** Turns of the agent that failed (the model failed). */
  readonly failedTurns: number
  /** What the process should exit with: 1 for a scripted run in which a turn failed, else 0. */
  readonly exitCode: 0 | 1
}

/** The demo's command-line options. */
const demoArgs = {
  script: { type: "string" },
  debug: { type: "boolean" },
  model: { type: "string" },
  durable: { type: "boolean" },
  data: { type: "string" }
} as const

/**
 * Runs the demo on a model layer: interactive on a terminal, or a script (`--script <file>`, or
 * the built-in one when no terminal is attached). Resolves when the conversation is over.
 */
export const runDemo = async <E>(
  model: Layer.Layer<LanguageModel.LanguageModel, E>,
  options: DemoOptions
): Promise<DemoResult> => {
  const { values } = parseArgs({ args: [...(options.argv ?? process.argv.slice(2))], options: demoArgs })
  const debug = values.debug === true
  const durable = values.durable === true
  const dataDir = values.data ?? ".travel-agent-data"
  const mode: Mode = values.script !== undefined
    ? { _tag: "Script", steps: parseScript(readFileSync(values.script, "utf8")), source: values.script }
    : process.stdin.isTTY
    ? { _tag: "Interactive" }
    : { _tag: "Script", steps: parseScript(builtInScript), source: "the built-in script (no terminal attached)" }

  const out = process.stdout
  const live = out.isTTY === true
  const screen = new Screen({
    out,
    live,
    color: live && process.env.NO_COLOR === undefined,
    timestamps: mode._tag === "Script"
  })
  screen.note(`Travel agent demo: ${options.modelName}`)

  // A logged error is one line in the transcript (a stack trace there tells the user nothing); the
  // full cause is for debugging: printed only with --debug, as a debug line after it.
  const logger = Logger.make((log) => {
    const failed = log.cause.reasons.length > 0
    screen.log(log.logLevel, logText(log.message, failed ? causeLine(log.cause) : ""))
    if (failed && debug) screen.log("Debug", `full cause:\n${Cause.pretty(log.cause)}`)
  })
  const logging = Layer.mergeAll(
    Logger.layer([logger]),
    Layer.succeed(References.MinimumLogLevel, debug ? "Debug" : "Info")
  )
  const timing = options.timing ?? { search: "2 seconds", book: "2 seconds" }
  const tally: Tally = { failedTurns: 0 }
  let exit: Exit.Exit<void, unknown>
  if (durable) {
    // The conversation and the calls are kept in the embedded store, in `dataDir`; the durable
    // toolset is added to the agent once the store has given back the conversation.
    screen.note(`Opening the store in ${dataDir} (the first time takes several seconds)...`)
    const travel = durableTravel(timing)
    const app = DurableChat.agentLayer({ instructions }).pipe(
      Layer.provideMerge(DurableChat.layer({ sessionId: "travel-demo" })),
      Layer.provideMerge(DurableToolset.layer(travel)),
      Layer.provide(model),
      Layer.provideMerge(DurableStore.layerEmbedded({ dataDir })),
      Layer.provideMerge(logging)
    )
    exit = await Effect.runPromiseExit(
      Effect.gen(function*() {
        const history = (yield* DurableChat.DurableChat).history
        showHistory(screen, history, dataDir)
        const agent = yield* AiAgent.AiAgent
        yield* agent.addToolset(yield* DurableToolset.make(travel))
        yield* session(mode, screen, tally, history.items.length > 0)
      }).pipe(Effect.scoped, Effect.provide(app))
    )
  } else {
    // The app is its layers, composed once: the toolset, the agent it registers with, the model.
    // The logger goes under them all: the agent's turns run in fibers it starts when it is built.
    const app = travelTools(timing).pipe(
      Layer.provideMerge(AiAgent.layer({ instructions })),
      Layer.provide(model),
      Layer.provideMerge(logging)
    )
    exit = await Effect.runPromiseExit(session(mode, screen, tally).pipe(Effect.scoped, Effect.provide(app)))
  }
  screen.close(mode._tag === "Interactive" ? "Bye!" : undefined, durable)
  if (Exit.isFailure(exit)) throw new Error(Cause.pretty(exit.cause))
  return { failedTurns: tally.failedTurns, exitCode: mode._tag === "Script" && tally.failedTurns > 0 ? 1 : 0 }
}

/** Whether this file is the program being run (not imported). */
export const isMain = (url: string): boolean => {
  const entry = process.argv[1]
  if (entry === undefined) return false
  try {
    return url === pathToFileURL(realpathSync(entry)).href
  } catch {
    return false
  }
}

/**
 * The offline model: the travel rules, each answer streamed word by word. In a chat on a terminal
 * the words come 30 ms apart, as a model writes; a scripted run gets them at once, so that its
 * timing stays the script's (its `wait` and `type` lines are timed against the bookings).
 */
export const scriptedModel = (chat: boolean) =>
  ScriptedModel.layer(travelModel, { textDeltas: "words", ...(chat ? { deltaDelay: "30 millis" } : {}) })

/**
 * The real model: `OPENAI_*` from the environment (the environment's `OPENAI_MODEL` wins over
 * gpt-4o-mini), over `fetch`.
 */
export const openAiCompatModel = OpenAiCompat.layerConfig({ model: "gpt-4o-mini" }).pipe(
  Layer.provide(FetchHttpClient.layer)
)

const start = (): Promise<DemoResult> => {
  const { values } = parseArgs({ args: process.argv.slice(2), options: demoArgs })
  switch (values.model ?? "scripted") {
    case "scripted":
      return runDemo(scriptedModel(values.script === undefined && process.stdin.isTTY === true), {
        modelName: "scripted model (offline)"
      })
    case "openai-compat": {
      const { OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL } = process.env
      if (OPENAI_API_KEY === undefined && OPENAI_BASE_URL === undefined) {
        throw new Error("--model openai-compat: set OPENAI_API_KEY (and OPENAI_BASE_URL for a server other than OpenAI's).")
      }
      const modelName = `${OPENAI_MODEL ?? "gpt-4o-mini"} at ${OPENAI_BASE_URL ?? OpenAiCompat.defaultBaseUrl}`
      return runDemo(openAiCompatModel, { modelName })
    }
    default:
      throw new Error(`--model ${values.model}: unknown model; the models are "scripted" (the default) and "openai-compat"`)
  }
}

if (isMain(import.meta.url)) {
  Promise.resolve().then(start).then(
    (result) => process.exit(result.exitCode),
    (error: unknown) => {
      console.error(error instanceof Error ? error.message : error)
      process.exit(1)
    }
  )
}
