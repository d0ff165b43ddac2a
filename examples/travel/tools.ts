/**
 * The travel agent's tools: `book_flight`, a slow background tool (searching → found 3 flights →
 * booked, a couple of seconds apart), and `check_weather`, a quick plain one.
 */
import { Effect, Schema } from "effect"
import { AiAgent, AsyncRunContext, FunctionTool } from "effect-async-toolset"
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
      yield* Effect.sleep(timing.book)
      const h = hash(to)
      const { callId } = yield* AsyncRunContext.functionCall
      return {
        destination: to,
        flight: `${airlines[h % airlines.length]} ${(h % 900) + 10}`,
        departs: `tomorrow at ${String(7 + (h % 12)).padStart(2, "0")}:${String((h * 7) % 60).padStart(2, "0")}`,
        confirmation: `FL-${String(100000 + (hash(to + callId) % 900000))}`
      }
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
