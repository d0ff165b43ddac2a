/**
 * The flight-booking story, offline: a slow tool says "on it" at once, the conversation goes on,
 * and its progress and result reach the user later, one calm reply at a time.
 *
 * The session is the test kit's in-memory one; a few scripted lines play the user and the agent.
 * Run it with `npm run example examples/booking.ts`.
 */
import { Console, Effect, Schema } from "effect"
import { AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"

// --- the tool -------------------------------------------------------------------------------------

const Booking = Schema.Struct({ confirmation: Schema.String, flight: Schema.String })

const bookFlight = FunctionTool.make("book_flight", {
  description: "Find and book the best flight between two cities",
  parameters: Schema.Struct({
    origin: Schema.String.annotate({ description: "City of departure" }),
    destination: Schema.String.annotate({ description: "City of arrival" })
  }),
  success: Booking
}, ({ destination, origin }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Looking up flights from ${origin} to ${destination}...`)
    yield* Effect.sleep("600 millis") // searching
    yield* AsyncRunContext.update("Found 3 flights, picking the best one...")
    yield* Effect.sleep("600 millis") // booking
    return { confirmation: "FL-847293", flight: "JL 5" }
  }))

// --- printing what happens, as it happens --------------------------------------------------------

const show = (item: ChatContext.ChatItem): string => {
  switch (item._tag) {
    case "ChatMessage":
      return `${item.role}: ${item.content}`
    case "FunctionCall":
      return `call ${item.callId} ${item.name}(${item.arguments})`
    case "FunctionCallOutput":
      return `output ${item.callId}${item.isError ? " (error)" : ""}: ${item.output}`
  }
}

// The agent's side of the story: what it says when the toolset asks it for a reply.
const agentAnswer = (chat: ChatContext.ChatContext): string => {
  const last = chat.items.findLast((item) => item._tag === "FunctionCallOutput")
  if (last?.callId.endsWith("_final")) {
    const booking = JSON.parse(last.output) as typeof Booking.Type
    return `All set! You are on flight ${booking.flight}; your confirmation number is ${booking.confirmation}.`
  }
  return "I found 3 flights and I am picking the best one for you now."
}

const session = TestSession.layerWith({
  onInsert: (items) => Effect.forEach(items, (item) => Console.log(`  [chat] ${show(item)}`), { discard: true }),
  onReply: (request) => Console.log(`  [reply requested] tool choice "${request.toolChoice}", because: ${request.instructions}`),
  respond: (_request, chat) => Effect.succeed(agentAnswer(chat))
})

// --- the conversation ----------------------------------------------------------------------------

const program = Effect.gen(function*() {
  const chat = yield* TestSession.TestSession
  const toolset = yield* AsyncToolset.make({ id: "travel", tools: [bookFlight] })

  yield* Console.log("The model sees these tools:")
  for (const tool of toolset.tools) yield* Console.log(`  - ${tool.name}: ${tool.description}`)

  yield* Console.log("\nThe user asks for a flight.")
  yield* chat.say("user", "Book me a flight from New York to Tokyo, please.")

  yield* Console.log("\nThe model calls book_flight; the call returns at the tool's first update:")
  const call = yield* ChatContext.functionCall({
    callId: "call_1",
    name: "book_flight",
    arguments: JSON.stringify({ origin: "New York", destination: "Tokyo" })
  })
  const output = yield* toolset.execute(call)
  yield* chat.insert([call, output]) // what an agent loop does with a tool call and its output
  yield* Console.log(`  [model got] ${output.output}`)
  yield* Console.log(`  [still running in the background] ${AsyncToolset.isPending(output)}`)

  yield* Console.log("\nThe agent answers the user at once, and the user keeps talking while the tool works:")
  yield* chat.setBusy
  yield* chat.say("assistant", "Sure, let me look up flights from New York to Tokyo for you!")
  yield* chat.say("user", "Thanks! Is it going to be a long flight?")
  yield* chat.say("assistant", "About 14 hours nonstop.")
  yield* Console.log(
    `  [running] ${(yield* toolset.runningTasks).map((t) => `${t.name} ${t.callId} (${t.status})`).join(", ")}`
  )
  yield* Effect.sleep("300 millis")
  yield* chat.setIdle

  yield* Console.log("\nThe tool goes on; each result is put into the chat and answered when the agent is idle:")
  yield* toolset.awaitIdle

  yield* Console.log("\nThe whole conversation:")
  for (const item of (yield* chat.chat).items) yield* Console.log(`  ${show(item)}`)
  const replies = yield* chat.replies
  yield* Console.log(`\n${replies.length} follow-up replies, none while the agent was busy: ${replies.every((r) => !r.whileBusy)}`)
})

Effect.runPromise(program.pipe(Effect.scoped, Effect.provide(session))).catch((error) => {
  console.error(error)
  process.exit(1)
})
