/**
 * The travel agent's scripted model: a few rules on the user's text and on the tool results in the
 * prompt, so the demo runs offline and the same every time. It plays a model that calls tools:
 *
 * - "book ... to Tokyo" → `book_flight`; then it tells the user what the tool said first.
 * - "weather in Paris" → `check_weather` (also with a booking: "... and the weather there").
 * - "status", "how is it going" → `get_running_tasks_<id>`; then it says what runs and the latest
 *   progress of each call (read from the updates in the prompt).
 * - "cancel (the Tokyo flight)" → `cancel_task_<id>`, with the id of a running call it finds in
 *   the prompt (the agent's "still running" notes), or after asking `get_running_tasks_<id>`.
 * - Reply turns (tool choice "none", instructions naming call ids): one sentence per call named,
 *   from its newest result in the prompt; nothing for what it already told the user.
 * - "simulate a model error": the model fails, as a provider does when it is down (to see how the
 *   demo shows a failed turn; a scripted run with one exits with code 1).
 * - Anything else: a plain answer.
 */
import { Effect } from "effect"
import type { AiError, Prompt } from "effect/ai"
import { ScriptedModel } from "effect-async-toolset/testing"

export const instructions = "You are a friendly travel agent. You book flights (book_flight), tell the weather " +
  "(check_weather), and check on or cancel bookings in progress. A booking takes a while and runs in the " +
  "background: tell the user it has started and keep the conversation going. Keep answers short."

// --- what the prompt holds ------------------------------------------------------------------------

interface Call {
  readonly name: string
  readonly params: unknown
}

/** Every tool call in the prompt, by call id (the agent's notes and the toolset's pairs included). */
const callsOf = (request: ScriptedModel.Request): Map<string, Call> => {
  const calls = new Map<string, Call>()
  for (const message of request.prompt.content) {
    if (message.role !== "assistant") continue
    for (const part of message.content) {
      if (part.type === "tool-call") calls.set(part.id, { name: part.name, params: part.params })
    }
  }
  return calls
}

const text = (result: Prompt.ToolResultPart): string =>
  typeof result.result === "string" ? result.result : JSON.stringify(result.result)

const json = (s: string): unknown => {
  try {
    return JSON.parse(s)
  } catch {
    return undefined
  }
}

const field = (value: unknown, key: string): string | undefined => {
  const v = typeof value === "object" && value !== null ? (value as Record<string, unknown>)[key] : undefined
  return typeof v === "string" ? v : undefined
}

/** What a progress update said ("Found 3 flights..."), from the toolset's update text. */
const progress = (output: string): string | undefined => /reports progress: (.*)/.exec(output)?.[1]

/** The call id a synthetic id belongs to: `call_1_1_update_2` and `call_1_1_final` → `call_1_1`. */
const baseId = (id: string): string => id.replace(/_(update_\d+|final|running)$/, "")

const lower = (s: string) => s.charAt(0).toLowerCase() + s.slice(1)

// --- what the user said ---------------------------------------------------------------------------

const stopWords = new Set(["too", "please", "tomorrow", "today", "and", "on", "next", "for", "as", "instead", "then", "now"])

/** "a flight to new york, please" → "New York": up to three words after the keyword. */
const placeAfter = (keywords: RegExp, said: string): string | undefined => {
  const match = new RegExp(String.raw`\b(?:${keywords.source})\s+([^,.!?;]+)`, "i").exec(said)
  if (match === undefined || match === null) return undefined
  const words: Array<string> = []
  for (const word of match[1]!.trim().split(/\s+/)) {
    if (stopWords.has(word.toLowerCase()) || words.length === 3) break
    words.push(word.charAt(0).toUpperCase() + word.slice(1))
  }
  const place = words.join(" ")
  return place === "" || /^(there|it|me|my|the|a)$/i.test(place) ? undefined : place
}

const wantsCancel = (said: string) => /\b(cancel|stop|abort|never ?mind)\b/i.test(said)
const wantsStatus = (said: string) =>
  /\b(status|how is it going|how's it going|hows it going|any news|progress|is it (done|booked|ready))\b/i.test(said)
const wantsBooking = (said: string) => /\bbook\b|\b(fly|flight|flights|ticket) to\b/i.test(said)
const wantsWeather = (said: string) => /\b(weather|temperature|forecast)\b/i.test(said)
const wantsAnother = (said: string) => /\b(another|again|anyway|second|yes)\b/i.test(said)

const plainAnswer = (said: string): string => {
  if (/^\s*(hi|hello|hey|good (morning|afternoon|evening))\b/i.test(said)) {
    return "Hello! I'm your travel agent. I can book flights, check how a booking is going, cancel one, " +
      "and tell you the weather. Where would you like to go?"
  }
  if (/\b(thanks|thank you|cheers)\b/i.test(said)) return "You're welcome! Have a great trip."
  if (/\bhow long\b|\blong flight\b/i.test(said)) return "Long-haul flights like that take about 11 to 14 hours nonstop."
  if (/\b(help|what can you do)\b/i.test(said)) {
    return "Try \"book a flight to Tokyo\", \"how is it going?\", \"cancel the Tokyo flight\" or \"weather in Paris\"."
  }
  return "I'm a scripted demo model, so I only know a few things: booking flights (\"book a flight to Tokyo\"), " +
    "checking on them (\"how is it going?\"), cancelling (\"cancel the Tokyo flight\") and the weather " +
    "(\"weather in Paris\")."
}

// --- sentences about tool results -----------------------------------------------------------------

/** What the model says about a call's newest result; `key` is what shows it was said already. */
interface Summary {
  readonly sentence: string
  readonly key: string
}

const summarize = (result: Prompt.ToolResultPart, call: Call | undefined): Summary => {
  const output = text(result)
  const to = field(call?.params, "to") ?? "your destination"
  if (result.name === "book_flight") {
    if (result.isFailure) return { sentence: `Sorry, the booking to ${to} did not work: ${output}`, key: output }
    const booking = json(output)
    const confirmation = field(booking, "confirmation")
    if (confirmation !== undefined) {
      return {
        sentence: `Your flight to ${to} is booked: ${field(booking, "flight")}, leaving ${
          field(booking, "departs")
        }. Your confirmation number is ${confirmation}.`,
        key: confirmation
      }
    }
    const said = progress(output) ?? output
    return { sentence: `Update on your flight to ${to}: ${lower(said)}`, key: said }
  }
  return { sentence: `${result.name}: ${output}`, key: output }
}

/**
 * A reply turn: the instructions name the results to tell. One sentence per call, from its newest
 * result; a result the agent already told the user (it said the key after the result) is skipped,
 * as the toolset's instructions allow.
 */
const reply = (request: ScriptedModel.Request): string => {
  const last = request.prompt.content.at(-1)
  const instructions = last?.role === "system" ? last.content : request.systemText
  const named = new Set(instructions.split(/[^A-Za-z0-9_-]+/))
  const calls = callsOf(request)
  const newest = new Map<string, { result: Prompt.ToolResultPart; index: number }>()
  const saidAfter: Array<{ index: number; text: string }> = []
  request.prompt.content.forEach((message, index) => {
    if (message.role === "assistant") {
      for (const part of message.content) if (part.type === "text") saidAfter.push({ index, text: part.text })
    }
    if (message.role !== "tool") return
    for (const part of message.content) {
      if (part.type === "tool-result" && named.has(part.id)) newest.set(baseId(part.id), { result: part, index })
    }
  })
  const sentences: Array<string> = []
  for (const { index, result } of newest.values()) {
    const summary = summarize(result, calls.get(result.id))
    const key = summary.key.toLowerCase()
    if (saidAfter.some((s) => s.index > index && s.text.toLowerCase().includes(key))) continue
    sentences.push(summary.sentence)
  }
  return sentences.join(" ")
}

// --- cancelling -----------------------------------------------------------------------------------

interface Running {
  readonly callId: string
  readonly name: string
  readonly to: string | undefined
}

/** The calls the agent's notes say are still running (`<callId>_running` pairs in the prompt). */
const runningFromNotes = (request: ScriptedModel.Request): ReadonlyArray<Running> => {
  const calls = callsOf(request)
  return request.toolResults.filter((r) => r.id.endsWith("_running")).map((r) => ({
    callId: baseId(r.id),
    name: r.name,
    to: field(calls.get(r.id)?.params, "to")
  }))
}

/** The calls `get_running_tasks_<id>` listed. */
const runningFromList = (output: string): ReadonlyArray<Running> => {
  const list = json(output)
  if (!Array.isArray(list)) return []
  return list.flatMap((task: unknown) => {
    const callId = field(task, "call_id")
    const name = field(task, "name")
    if (callId === undefined || name === undefined || field(task, "status") === "cancelling") return []
    return [{ callId, name, to: field(json(field(task, "arguments") ?? ""), "to") }]
  })
}

const describe = (task: Running) => task.to === undefined ? task.name : `your flight to ${task.to}`

/** Which running call the user means: the one whose id or city they named, or the only one. */
const pick = (said: string, running: ReadonlyArray<Running>): Running | ReadonlyArray<Running> => {
  const byId = running.find((task) => said.includes(task.callId))
  if (byId !== undefined) return byId
  const named = running.filter((task) => task.to !== undefined && said.toLowerCase().includes(task.to.toLowerCase()))
  if (named.length === 1) return named[0]!
  if (running.length === 1) return running[0]!
  return named.length > 1 ? named : running
}

// --- the script -----------------------------------------------------------------------------------

export const travelModel = (
  request: ScriptedModel.Request
): ScriptedModel.Reply | Effect.Effect<ScriptedModel.Reply, AiError.AiError> => {
  if (request.toolChoice === "none") return reply(request)

  const said = request.lastUserText
  if (/\bsimulate an? (model )?(error|failure)\b/i.test(said)) {
    return Effect.fail(ScriptedModel.error("503 Service Unavailable (a simulated outage: the user asked for one)"))
  }
  // what the tools answered in this turn so far (the agent's "still running" notes are not answers)
  const results = request.resultsSinceUser.filter((r) => !r.id.endsWith("_running"))
  const listTool = request.toolNames.find((name) => name.startsWith("get_running_tasks_"))
  const cancelTool = request.toolNames.find((name) => name.startsWith("cancel_task_"))
  const calls = callsOf(request)

  if (wantsCancel(said) && listTool !== undefined && cancelTool !== undefined) {
    const cancelled = results.find((r) => r.name === cancelTool)
    if (cancelled !== undefined) {
      const callId = field(calls.get(cancelled.id)?.params, "call_id") ?? ""
      const to = field(calls.get(callId)?.params, "to")
      return text(cancelled).includes("was cancelled")
        ? `Done: I cancelled ${to === undefined ? "that call" : `your flight to ${to}`}.`
        : text(cancelled)
    }
    const listed = results.find((r) => r.name === listTool)
    const running = listed === undefined ? runningFromNotes(request) : runningFromList(text(listed))
    if (running.length === 0) {
      // no note in the prompt: ask the toolset what runs (once); if nothing does, say so
      return listed === undefined
        ? { toolCalls: [{ name: listTool }] }
        : "Nothing is running right now, so there is nothing to cancel."
    }
    const target = pick(said, running)
    if ("callId" in target) return { toolCalls: [{ name: cancelTool, params: { call_id: target.callId } }] }
    return `Which one should I cancel: ${target.map((task) => `${describe(task)} (${task.callId})`).join(" or ")}?`
  }

  if (wantsStatus(said) && listTool !== undefined) {
    const listed = results.find((r) => r.name === listTool)
    if (listed === undefined) return { toolCalls: [{ name: listTool }] }
    const running = runningFromList(text(listed))
    if (running.length === 0) return "Nothing is running right now."
    return running.map((task) => {
      const updates = request.toolResults.filter((r) => r.id === task.callId || r.id.startsWith(`${task.callId}_update_`))
      const latest = updates.length === 0 ? undefined : progress(text(updates.at(-1)!))
      const what = describe(task)
      return `${what.charAt(0).toUpperCase()}${what.slice(1)} is still in progress${
        latest === undefined ? "" : `: ${lower(latest)}`
      }`
    }).join(" ")
  }

  const destination = placeAfter(/to/, said)
  const booking = wantsBooking(said)
  const weather = wantsWeather(said)
  if (booking || weather) {
    if (results.length > 0) {
      return results.map((r) => {
        const output = text(r)
        if (r.name === "check_weather") return `Right now in ${output.replace(": ", " it's ")}.`
        if (r.name !== "book_flight") return output
        const to = field(calls.get(r.id)?.params, "to") ?? "there"
        if (r.isFailure && output.includes("already running")) {
          return `A booking to ${to} is already in progress. If you really want a second one, say "book another flight to ${to}".`
        }
        const said = progress(output)
        return said === undefined
          ? summarize(r, calls.get(r.id)).sentence
          : `On it! ${said} I'll tell you when it's booked; meanwhile, ask me anything.`
      }).join(" ")
    }
    const toolCalls: Array<ScriptedModel.ToolCall> = []
    if (booking && destination !== undefined) {
      toolCalls.push({ name: "book_flight", params: { to: destination, ...(wantsAnother(said) ? { confirm_duplicate: true } : {}) } })
    }
    if (weather) {
      const lastBooked = [...calls.values()].findLast((c) => c.name === "book_flight")
      const city = placeAfter(/in|for|at/, said) ?? destination ?? field(lastBooked?.params, "to")
      if (city !== undefined) toolCalls.push({ name: "check_weather", params: { city } })
    }
    if (toolCalls.length > 0) return { toolCalls }
    return booking ? "Sure! Where would you like to fly to?" : "Which city?"
  }

  return plainAnswer(said)
}
