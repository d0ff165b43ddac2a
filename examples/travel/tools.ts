/**
 * The travel agent's tools: `book_flight`, a slow background tool (searching → found 3 flights →
 * booked, a couple of seconds apart), and `check_weather`, a quick plain one; as an in-memory
 * toolset layer (`travelTools`) or a durable one (`durableTravel`, for `npm start -- --durable`).
 */
import { Effect, Schema } from "effect"
import { AiAgent, AsyncRunContext, FunctionTool } from "effect-async-toolset"
import { DurableToolset } from "effect-async-toolset/durable"
import type { Duration } from "effect"

/** Real time between the booking's steps. */
export interface Timing {
  readonly search: Duration.Input
  readonly book: Duration.Input
}

/** A small deterministic number from a text, so the same city always gets the same answers. */
const hash = (text: string): number => {
  let h = 7
  for (const c of text.toLowerCase()) h = (h * 31 + c.charCodeAt(0)) % 1_000_003
  return h
}

export const Booking = Schema.Struct({
  destination: Schema.String,
  flight: Schema.String,
  departs: Schema.String,
  confirmation: Schema.String
})

const airlines = ["JL", "NH", "AF", "LH", "BA", "TP", "UA"]

/** The seat the airline books: the same city always gets the same flight. */
const seat = (to: string, callId: string): typeof Booking.Type => {
  const h = hash(to)
  return {
    destination: to,
    flight: `${airlines[h % airlines.length]} ${(h % 900) + 10}`,
    departs: `tomorrow at ${String(7 + (h % 12)).padStart(2, "0")}:${String((h * 7) % 60).padStart(2, "0")}`,
    confirmation: `FL-${String(100000 + (hash(to + callId) % 900000))}`
  }
}

export const bookFlight = (timing: Timing) =>
  FunctionTool.make("book_flight", {
    description: "Find and book the best flight to a city. Takes a few seconds; it runs in the background.",
    parameters: Schema.Struct({ to: Schema.String.annotate({ description: "City of arrival" }) }),
    success: Booking
  }, ({ to }) =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update(`Searching flights to ${to}...`) // the model gets this at once
      yield* Effect.sleep(timing.search)
      yield* AsyncRunContext.update(`Found 3 flights to ${to}; booking the best one...`)
      const { callId } = yield* AsyncRunContext.functionCall
      // Booking the seat must not happen twice: in a durable toolset it is a step that runs once
      // (its result is stored); searching above may run again after a restart. In memory it just runs.
      return yield* DurableToolset.activity(
        "book_seat",
        Effect.as(Effect.sleep(timing.book), seat(to, callId)),
        { success: Booking }
      )
    }))

const skies = ["sunny", "partly cloudy", "cloudy", "rainy", "windy"]

export const checkWeather = FunctionTool.make("check_weather", {
  description: "Current weather in a city",
  parameters: Schema.Struct({ city: Schema.String })
}, ({ city }) =>
  Effect.as(
    Effect.sleep("300 millis"), // a quick call: it never updates, so the model waits for its result
    `${city}: ${8 + (hash(city) % 22)}°C and ${skies[hash(city) % skies.length]}`
  ))

/**
 * The toolset, as a layer that adds it to the agent: a second booking to the same city needs the
 * user's confirmation (another city is fine), and the model also gets `get_running_tasks_travel`
 * and `cancel_task_travel`.
 */
export const travelTools = (timing: Timing) =>
  AiAgent.toolset({
    id: "travel",
    tools: [bookFlight(timing), checkWeather],
    duplicateScope: "arguments"
  })

/** The same tools as a durable toolset: its calls survive the process (see `npm start -- --durable`). */
export const durableTravel = (timing: Timing) =>
  DurableToolset.define({
    id: "travel",
    tools: [bookFlight(timing), checkWeather],
    duplicateScope: "arguments"
  })
