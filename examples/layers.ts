/**
 * An agent app as layers, composed once: two toolsets (one of `FunctionTool`s, one made from an
 * effect/ai `Toolkit` and its handler layer), the agent they register with, and the model. The
 * program itself only talks to the agent.
 *
 *   npm run example examples/layers.ts
 *
 * It runs offline: the model is the test kit's `ScriptedModel` playing a few rules. Put any
 * `LanguageModel` layer in its place (e.g. `OpenAiCompat.layerConfig()` from
 * effect-async-toolset/openai-compat, over `FetchHttpClient.layer`). It prints what the agent says
 * and what the toolsets report, as it happens.
 */
import { Console, Context, Effect, Layer, Schema, Stream } from "effect"
import { Tool, Toolkit } from "effect/ai"
import { AgentEvent, AiAgent, AsyncRunContext, FunctionTool, ToolsetEvent } from "effect-async-toolset"
import { ScriptedModel } from "effect-async-toolset/testing"

// --- a toolset of FunctionTools ---------------------------------------------------------------------

const bookFlight = FunctionTool.make("book_flight", {
  description: "Book a flight to a city",
  parameters: Schema.Struct({ to: Schema.String }),
  success: Schema.Struct({ flight: Schema.String })
}, ({ to }) =>
  Effect.gen(function*() {
    yield* AsyncRunContext.update(`Looking up flights to ${to}`)
    yield* Effect.sleep("400 millis")
    return { flight: `JL 5 to ${to}` }
  }))

const FlightTools = AiAgent.toolset({ id: "flights", tools: [bookFlight] })

// --- a toolset from an effect/ai Toolkit, whose handlers need a service ------------------------------

class Hotels extends Context.Service<Hotels, { readonly best: (city: string) => string }>()("example/Hotels") {}

const BookHotel = Tool.make("BookHotel", {
  description: "Book the best hotel in a city",
  parameters: Schema.Struct({ city: Schema.String }),
  success: Schema.Struct({ hotel: Schema.String }),
  dependencies: [AsyncRunContext.AsyncRunContext] // the handler may report progress
})
const HotelToolkit = Toolkit.make(BookHotel)

const hotelHandlers = HotelToolkit.toLayer(Effect.gen(function*() {
  const hotels = yield* Hotels
  return {
    BookHotel: ({ city }) =>
      Effect.gen(function*() {
        yield* AsyncRunContext.update(`Asking hotels in ${city}`)
        yield* Effect.sleep("200 millis")
        return { hotel: hotels.best(city) }
      })
  }
}))

const HotelTools = AiAgent.toolset({ id: "hotels", tools: FunctionTool.fromToolkit(HotelToolkit) }).pipe(
  Layer.provide(hotelHandlers),
  Layer.provide(Layer.succeed(Hotels, { best: (city) => `Grand ${city} Hotel` }))
)

// --- the model: a few rules ---------------------------------------------------------------------------

const model = ScriptedModel.layer(({ resultsSinceUser, systemText, toolChoice }) => {
  if (toolChoice === "none") { // a reply: tell the final results its instructions name
    const done = resultsSinceUser.filter((r) => r.id.endsWith("_final") && systemText.includes(r.id))
    const told = done.map((r) => Object.values(JSON.parse(String(r.result)) as object).join(", "))
    return told.length === 0 ? "" : `Booked: ${told.join(" and ")}.`
  }
  if (resultsSinceUser.length > 0) return "On it: I am booking your flight and your hotel."
  return { toolCalls: [{ name: "book_flight", params: { to: "Tokyo" } }, { name: "BookHotel", params: { city: "Tokyo" } }] }
}, { textDeltas: "words" })

// --- the app: its layers, composed once ------------------------------------------------------------

const App = Layer.mergeAll(FlightTools, HotelTools).pipe(
  Layer.provideMerge(AiAgent.layer({ instructions: "You book trips." })),
  Layer.provide(model)
)

// --- the program ------------------------------------------------------------------------------------

const showAgent = AgentEvent.AgentEvent.match({
  TurnStarted: (e) => Console.log(`-- turn ${e.turn} (${e.cause})`),
  TextDelta: () => Effect.void, // a UI would show the words as they come
  ItemAdded: ({ item }) =>
    item._tag === "ChatMessage"
      ? Console.log(`${item.role}: ${item.content}`)
      : item._tag === "FunctionCall" && !/_(update_\d+|final)$/.test(item.callId)
      ? Console.log(`  → ${item.name}(${item.arguments})`)
      : Effect.void,
  TurnEnded: () => Effect.void
})

const showCall = ToolsetEvent.ToolsetEvent.matchOrElse({
  CallUpdated: (e) => Console.log(`  … ${e.name}: ${e.message}`),
  CallEnded: (e) => Console.log(`  ✓ ${e.name} ${e.outcome}`)
}, () => Effect.void)

const program = Effect.gen(function*() {
  const agent = yield* AiAgent.AiAgent
  yield* agent.events.pipe(Stream.runForEach(showAgent), Effect.forkScoped({ startImmediately: true }))
  for (const toolset of yield* agent.toolsets) {
    yield* toolset.events.pipe(Stream.runForEach(showCall), Effect.forkScoped({ startImmediately: true }))
  }
  yield* agent.send("Book me a flight to Tokyo and a hotel there.")
  yield* agent.awaitIdle // every call ended and every result was told
})

Effect.runPromise(program.pipe(Effect.scoped, Effect.provide(App)))
