/**
 * ChatContext ↔ effect/ai Prompt: messages, tool calls and results (the synthetic update/final
 * pairs included) convert both ways without loss; our tools become effect/ai tools as they are.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { Prompt, Tool } from "effect/ai"
import { AsyncToolset, ChatContext, FunctionTool, PromptConversion } from "effect-async-toolset"

const { ChatMessage, FunctionCall, FunctionCallOutput } = ChatContext

/** A booking conversation: a first update, a later update, the final result, and a parallel call. */
const conversation = ChatContext.ChatContext.fromItems([
  new ChatMessage({ id: "m0", role: "system", content: "You book flights.", createdAt: 0 }),
  new ChatMessage({ id: "m1", role: "developer", content: "Be brief.", createdAt: 0 }),
  new ChatMessage({ id: "m2", role: "user", content: "Book me a flight to Tokyo, and the weather there?", createdAt: 1 }),
  new ChatMessage({ id: "m3", role: "assistant", content: "Sure!", createdAt: 2 }),
  new FunctionCall({ id: "f1", callId: "c1", name: "book_flight", arguments: `{"to":"Tokyo"}`, createdAt: 2 }),
  new FunctionCall({ id: "f2", callId: "c2", name: "get_weather", arguments: `{"city":"Tokyo"}`, createdAt: 2 }),
  new FunctionCallOutput({
    id: "o1",
    callId: "c1",
    name: "book_flight",
    output: "Looking up flights to Tokyo",
    isError: false,
    createdAt: 3,
    extra: { [AsyncToolset.pendingKey]: true }
  }),
  new FunctionCallOutput({ id: "o2", callId: "c2", name: "get_weather", output: "Sunny", isError: false, createdAt: 3 }),
  new ChatMessage({ id: "m4", role: "assistant", content: "Looking now; it is sunny there.", createdAt: 4 }),
  new FunctionCall({ id: "f3", callId: "c1_update_1", name: "book_flight", arguments: `{"to":"Tokyo"}`, createdAt: 5 }),
  new FunctionCallOutput({ id: "o3", callId: "c1_update_1", name: "book_flight", output: "Found 3 flights", isError: false, createdAt: 5 }),
  new FunctionCall({ id: "f4", callId: "c1_final", name: "book_flight", arguments: `{"to":"Tokyo"}`, createdAt: 6 }),
  new FunctionCallOutput({ id: "o4", callId: "c1_final", name: "book_flight", output: "No seats left", isError: true, createdAt: 6 }),
  new ChatMessage({ id: "m5", role: "assistant", content: "Sorry, no seats left.", createdAt: 7 })
])

/** A message's parts as short lines (roles, text, call ids, failure flags). */
const shape = (prompt: Prompt.Prompt): ReadonlyArray<string> =>
  prompt.content.map((message) => {
    if (typeof message.content === "string") return `${message.role}: ${message.content}`
    const parts = message.content.map((part) => {
      switch (part.type) {
        case "text":
          return part.text
        case "tool-call":
          return `call ${part.id} ${part.name} ${JSON.stringify(part.params)}`
        case "tool-result":
          return `result ${part.id}${part.isFailure ? " (failure)" : ""} ${JSON.stringify(part.result)}`
        default:
          return part.type
      }
    })
    return `${message.role}: ${parts.join(" | ")}`
  })

/** The prompt's messages and parts as plain data, without provider options (our bookkeeping). */
const withoutMetadata = (prompt: Prompt.Prompt) =>
  JSON.parse(JSON.stringify(prompt.content, (key, value: unknown) =>
    key === "options" || key.startsWith("~effect") ? undefined : value))

describe("PromptConversion", () => {
  describe("toPrompt", () => {
    it("words and calls form assistant messages; the outputs after them form one tool message", () => {
      assert.deepStrictEqual(shape(PromptConversion.toPrompt(conversation.items)), [
        "system: You book flights.",
        "system: Be brief.",
        "user: Book me a flight to Tokyo, and the weather there?",
        `assistant: Sure! | call c1 book_flight {"to":"Tokyo"} | call c2 get_weather {"city":"Tokyo"}`,
        `tool: result c1 "Looking up flights to Tokyo" | result c2 "Sunny"`,
        `assistant: Looking now; it is sunny there. | call c1_update_1 book_flight {"to":"Tokyo"}`,
        `tool: result c1_update_1 "Found 3 flights"`,
        `assistant: call c1_final book_flight {"to":"Tokyo"}`,
        `tool: result c1_final (failure) "No seats left"`,
        "assistant: Sorry, no seats left."
      ])
    })

    it("every call is answered by the tool message right after it", () => {
      const prompt = PromptConversion.toPrompt(conversation.items)
      prompt.content.forEach((message, i) => {
        if (message.role !== "assistant") return
        const calls = message.content.flatMap((p) => p.type === "tool-call" ? [p.id] : [])
        if (calls.length === 0) return
        const next = prompt.content[i + 1]
        assert.strictEqual(next?.role, "tool")
        assert.sameMembers(next!.role === "tool" ? next!.content.map((p) => p.type === "tool-result" ? p.id : "") : [], calls)
      })
    })

    it("arguments that are not JSON are passed on as text", () => {
      const prompt = PromptConversion.toPrompt([
        new FunctionCall({ id: "f", callId: "c", name: "t", arguments: "{oops", createdAt: 0 }),
        new FunctionCall({ id: "g", callId: "d", name: "t", arguments: "", createdAt: 0 })
      ])
      assert.deepStrictEqual(shape(prompt), [`assistant: call c t "{oops" | call d t {}`])
    })

    it("tool-call parameters become JSON text; parameters with no JSON form become text the toolset rejects", () => {
      const cyclic: Record<string, unknown> = {}
      cyclic["self"] = cyclic
      assert.strictEqual(PromptConversion.argumentsText({ to: "Tokyo" }), `{"to":"Tokyo"}`)
      assert.strictEqual(PromptConversion.argumentsText(undefined), "{}")
      assert.strictEqual(PromptConversion.argumentsText(`{"raw":true}`), `{"raw":true}`)
      assert.match(PromptConversion.argumentsText(cyclic), /^<arguments with no JSON form: /)
    })

    it("the prompt a provider reads is plain effect/ai data", () => {
      const messages = withoutMetadata(PromptConversion.toPrompt(conversation.items.slice(2, 8)))
      assert.deepStrictEqual(messages[1], {
        role: "assistant",
        content: [
          { type: "text", text: "Sure!" },
          { type: "tool-call", id: "c1", name: "book_flight", params: { to: "Tokyo" }, providerExecuted: false },
          { type: "tool-call", id: "c2", name: "get_weather", params: { city: "Tokyo" }, providerExecuted: false }
        ]
      })
    })
  })

  describe("round trips", () => {
    it.effect("ChatContext → Prompt → ChatContext gives back the same items", () =>
      Effect.gen(function*() {
        const back = yield* PromptConversion.fromPrompt(PromptConversion.toPrompt(conversation.items))
        assert.deepStrictEqual(back, conversation)
        assert.isTrue(AsyncToolset.isPending(back.items[6] as ChatContext.FunctionCallOutput))
      }))

    it.effect("through effect/ai's own encoding (a persisted Chat, say) and back, the chat is the same", () =>
      Effect.gen(function*() {
        const encoded = Schema.encodeSync(Prompt.Prompt)(PromptConversion.toPrompt(conversation.items))
        const decoded = Schema.decodeSync(Prompt.Prompt)(JSON.parse(JSON.stringify(encoded)))
        assert.deepStrictEqual(yield* PromptConversion.fromPrompt(decoded), conversation)
      }))

    it.effect("Prompt → ChatContext → Prompt gives back the same messages", () =>
      Effect.gen(function*() {
        const prompt = Prompt.make([
          { role: "system", content: "You book flights." },
          { role: "user", content: [{ type: "text", text: "Book me a flight" }] },
          {
            role: "assistant",
            content: [
              { type: "text", text: "On it." },
              { type: "tool-call", id: "c1", name: "book_flight", params: { to: "Tokyo" } }
            ]
          },
          { role: "tool", content: [{ type: "tool-result", id: "c1", name: "book_flight", isFailure: false, result: "Looking" }] },
          { role: "assistant", content: [{ type: "tool-call", id: "c1_final", name: "book_flight", params: { to: "Tokyo" } }] },
          { role: "tool", content: [{ type: "tool-result", id: "c1_final", name: "book_flight", isFailure: true, result: "Sold out" }] },
          { role: "assistant", content: [{ type: "text", text: "Sorry." }] }
        ])
        const chat = yield* PromptConversion.fromPrompt(prompt)
        assert.deepStrictEqual(withoutMetadata(PromptConversion.toPrompt(chat.items)), withoutMetadata(prompt))
      }))

    it.effect.prop(
      "any chat of messages and call/output pairs survives the round trip",
      {
        steps: Schema.Array(Schema.Struct({
          kind: Schema.Literals(["system", "developer", "user", "assistant", "pair", "failure"]),
          text: Schema.String,
          gap: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 2 }))
        }))
      },
      ({ steps }) =>
        Effect.gen(function*() {
          let time = 0
          const items = steps.flatMap(({ gap, kind, text }, i): ReadonlyArray<ChatContext.ChatItem> => {
            time += gap
            if (kind !== "pair" && kind !== "failure") {
              return [new ChatMessage({ id: `m${i}`, role: kind, content: text, createdAt: time })]
            }
            const callId = `c${i}${i % 3 === 0 ? "_final" : ""}`
            return [
              new FunctionCall({ id: `f${i}`, callId, name: "tool", arguments: JSON.stringify({ text }), createdAt: time }),
              new FunctionCallOutput({ id: `o${i}`, callId, name: "tool", output: text, isError: kind === "failure", createdAt: time })
            ]
          })
          const chat = ChatContext.ChatContext.fromItems(items)
          assert.deepStrictEqual(yield* PromptConversion.fromPrompt(PromptConversion.toPrompt(chat.items)), chat)
        })
    )
  })

  describe("fromPrompt", () => {
    it.effect("items from a foreign prompt get new ids, the current time, and keep the prompt's order", () =>
      Effect.gen(function*() {
        const chat = yield* PromptConversion.fromPrompt(Prompt.make([
          { role: "user", content: "hi" },
          { role: "assistant", content: [{ type: "tool-call", id: "c1", name: "lookup", params: { q: "x" } }] },
          { role: "tool", content: [{ type: "tool-result", id: "c1", name: "lookup", isFailure: false, result: { hits: 2 } }] },
          { role: "assistant", content: [{ type: "text", text: "Two hits." }] }
        ]))
        assert.deepStrictEqual(chat.items.map((item) => item._tag), [
          "ChatMessage",
          "FunctionCall",
          "FunctionCallOutput",
          "ChatMessage"
        ])
        const [, call, output] = chat.items
        assert.strictEqual(call?._tag === "FunctionCall" && call.arguments, `{"q":"x"}`)
        assert.strictEqual(output?._tag === "FunctionCallOutput" && output.output, `{"hits":2}`)
        assert.strictEqual(new Set(chat.items.map((item) => item.id)).size, 4)
      }))

    it.effect("an item without metadata after an older one keeps the chat in time order", () =>
      Effect.gen(function*() {
        const later = new ChatMessage({ id: "m1", role: "user", content: "old", createdAt: 5_000 })
        const prompt = Prompt.fromMessages([
          ...PromptConversion.toPrompt([later]).content,
          Prompt.makeMessage("assistant", { content: [Prompt.makePart("text", { text: "new" })] })
        ])
        const chat = yield* PromptConversion.fromPrompt(prompt) // the clock is at 0
        assert.deepStrictEqual(chat.items.map((item) => item.createdAt), [5_000, 5_000])
      }))
  })

  describe("toTool", () => {
    const search = FunctionTool.make("search_flights", {
      description: "Search flights",
      parameters: Schema.Struct({ to: Schema.String, max: Schema.optionalKey(Schema.Int) })
    }, () => Effect.succeed("ok"))

    it("the effect/ai tool has the name, description and JSON Schema of ours, strict as ours", () => {
      const tool = PromptConversion.toTool(search)
      assert.strictEqual(tool.name, "search_flights")
      assert.strictEqual(Tool.getDescription(tool), "Search flights")
      assert.deepStrictEqual(Tool.getJsonSchema(tool), search.jsonSchema)
      assert.strictEqual(Tool.getStrictMode(tool), true)
    })

    it("the same tool gives the same effect/ai tool", () => {
      assert.strictEqual(PromptConversion.toTool(search), PromptConversion.toTool(search))
    })
  })
})
