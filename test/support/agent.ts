/**
 * Helpers for the agent tests: a flight-booking tool, a readable transcript of the chat, and the
 * wiring of an agent on a scripted model.
 */
import { Effect, Layer, Schema } from "effect"
import type { Duration } from "effect"
import type { Prompt } from "effect/ai"
import { AiAgent, AsyncRunContext, FunctionTool, ToolError } from "effect-async-toolset"
import type { ChatContext } from "effect-async-toolset"
import { ScriptedModel } from "effect-async-toolset/testing"

/**
 * Books a flight: says "Looking up flights to <to>" at once, then after `search` says it found
 * flights, then after `book` returns the confirmation. `to: "Nowhere"` fails after the first update.
 */
export const bookFlight = (timing: { readonly search: Duration.Input; readonly book: Duration.Input } = {
  search: "2 seconds",
  book: "2 seconds"
}) =>
  FunctionTool.make("book_flight", {
    description: "Find and book the best flight to a city",
    parameters: Schema.Struct({ to: Schema.String.annotate({ description: "City of arrival" }) }),
    success: Schema.Struct({ confirmation: Schema.String })
  }, ({ to }) =>
    Effect.gen(function*() {
      yield* AsyncRunContext.update(`Looking up flights to ${to}`)
      yield* Effect.sleep(timing.search)
      if (to === "Nowhere") return yield* new ToolError.ToolError({ message: `No airline flies to ${to}` })
      yield* AsyncRunContext.update(`Found 3 flights to ${to}`)
      yield* Effect.sleep(timing.book)
      return { confirmation: "FL-847293" }
    }))

/** A plain tool: answers at once. */
export const getWeather = FunctionTool.make("get_weather", {
  description: "Current weather in a city",
  parameters: Schema.Struct({ city: Schema.String })
}, ({ city }) => Effect.succeed(`Sunny in ${city}`))

/** The chat as lines a reader can follow. */
export const transcript = (chat: ChatContext.ChatContext): ReadonlyArray<string> =>
  chat.items.map((item) => {
    switch (item._tag) {
      case "ChatMessage":
        return `${item.role}: ${item.content}`
      case "FunctionCall":
        return `call ${item.callId} ${item.name} ${item.arguments}`
      case "FunctionCallOutput":
        return `output ${item.callId}${item.isError ? " (error)" : ""}: ${item.output}`
    }
  })

/** The prompt of a request as lines: roles with their text, tool calls and tool results. */
export const promptLines = (prompt: Prompt.Prompt): ReadonlyArray<string> =>
  prompt.content.flatMap((message): ReadonlyArray<string> => {
    if (typeof message.content === "string") return [`${message.role}: ${message.content}`]
    return message.content.map((part) => {
      switch (part.type) {
        case "text":
          return `${message.role}: ${part.text}`
        case "tool-call":
          return `call ${part.id} ${part.name}`
        case "tool-result":
          return `result ${part.id}: ${String(part.result)}`
        default:
          return `${message.role}: <${part.type}>`
      }
    })
  })

/** An agent on a scripted model: provides `AiAgent`, `AgentSession` and `ScriptedModel`. */
export const agentLayer = (
  script: ScriptedModel.Script,
  options: AiAgent.Options & ScriptedModel.Options = {}
) => AiAgent.layer(options).pipe(Layer.provideMerge(ScriptedModel.layer(script, options)))

