/**
 * Two background tools finish while the agent is busy talking: their results are put into the chat
 * as they arrive, and once the agent is idle it is asked for ONE reply that covers both. Then the
 * model cancels a third call through the toolset's `cancel_task` tool.
 *
 * Run it with `npm run example examples/busy-and-cancel.ts`.
 */
import { Console, Effect, Schema } from "effect"
import { AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"

const bookHotel = FunctionTool.make("book_hotel", {
  description: "Book a hotel room in a city",
  parameters: Schema.Struct({ city: Schema.String })
}, ({ city }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Searching hotels in ${city}...`)
    yield* Effect.sleep("400 millis")
    return `Booked the Park Hotel in ${city}, confirmation HT-1029.`
  }))

const rentCar = FunctionTool.make("rent_car", {
  description: "Rent a car at an airport",
  parameters: Schema.Struct({ airport: Schema.String })
}, ({ airport }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Asking rental desks at ${airport}...`)
    yield* Effect.sleep("500 millis")
    return `Rented a compact car at ${airport}, confirmation CR-5521.`
  }))

const findRestaurant = FunctionTool.make("find_restaurant", {
  description: "Find and reserve a restaurant table",
  parameters: Schema.Struct({ cuisine: Schema.String })
}, ({ cuisine }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Looking for ${cuisine} restaurants...`)
    yield* Effect.sleep("10 seconds")
    return "Table for two at 8pm."
  }).pipe(Effect.onInterrupt(() => Console.log("  [find_restaurant] interrupted: its fiber stopped"))))

const show = (item: ChatContext.ChatItem): string =>
  item._tag === "ChatMessage"
    ? `${item.role}: ${item.content}`
    : item._tag === "FunctionCall"
    ? `call ${item.callId} ${item.name}`
    : `output ${item.callId}: ${item.output}`

const session = TestSession.layerWith({
  onInsert: (items) => Effect.forEach(items, (item) => Console.log(`  [chat] ${show(item)}`), { discard: true }),
  onReply: (request) => Console.log(`  [reply requested] ${request.instructions}`),
  respond: () => Effect.succeed("Your hotel and your car are both booked: Park Hotel (HT-1029) and a compact car (CR-5521).")
})

const program = Effect.gen(function*() {
  const chat = yield* TestSession.TestSession
  const toolset = yield* AsyncToolset.make({ id: "trip", tools: [bookHotel, rentCar, findRestaurant] })

  const call = (callId: string, name: string, args: object) =>
    Effect.gen(function*() {
      const fc = yield* ChatContext.functionCall({ callId, name, arguments: JSON.stringify(args) })
      const out = yield* toolset.execute(fc)
      yield* chat.insert([fc, out])
      yield* Console.log(`  [model got for ${callId}] ${out.output}`)
      return out
    })

  yield* Console.log("The model starts three background calls:")
  yield* call("call_hotel", "book_hotel", { city: "Tokyo" })
  yield* call("call_car", "rent_car", { airport: "NRT" })
  yield* call("call_food", "find_restaurant", { cuisine: "sushi" })

  yield* Console.log("\nThe agent is busy talking for a second; both bookings finish meanwhile:")
  yield* chat.setBusy
  yield* chat.say("assistant", "I'm on it: hotel, car and dinner. Meanwhile, here are some tips for Tokyo...")
  yield* Effect.sleep("1 second")
  yield* Console.log(`  [replies so far] ${(yield* chat.replies).length} (the agent is still busy)`)

  yield* Console.log("\nThe agent goes idle: one reply covers both results:")
  yield* chat.setIdle
  yield* Effect.sleep("100 millis")
  yield* Console.log(`  [replies so far] ${(yield* chat.replies).length}`)

  yield* Console.log("\nThe user changes their mind about dinner; the model calls cancel_task:")
  yield* chat.say("user", "Actually, skip the restaurant.")
  yield* call("call_cancel", `cancel_task_${toolset.id}`, { call_id: "call_food" })

  yield* toolset.awaitIdle
  const replies = yield* chat.replies
  yield* Console.log(`\nDone: ${replies.length} reply in all; nothing from the cancelled call reached the chat: ${
    (yield* chat.chat).items.every((item) => !("callId" in item) || !item.callId.startsWith("call_food_"))
  }`)
})

Effect.runPromise(program.pipe(Effect.scoped, Effect.provide(session))).catch((error) => {
  console.error(error)
  process.exit(1)
})
