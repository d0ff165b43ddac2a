import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { TestClock } from "effect/testing"
import { ChatContext } from "effect-async-toolset"

const ChatContextJson = Schema.toCodecJson(ChatContext.ChatContext)
const encode = Schema.encodeUnknownSync(ChatContextJson)
const decode = Schema.decodeUnknownSync(ChatContextJson)

/** What each item is, in chat order: its content, output or call id. */
const labels = (chat: ChatContext.ChatContext): ReadonlyArray<string> =>
  chat.items.map((item) => {
    switch (item._tag) {
      case "ChatMessage":
        return item.content
      case "FunctionCall":
        return `call ${item.callId}`
      case "FunctionCallOutput":
        return `output ${item.callId}`
    }
  })

/** A user message stamped `at` milliseconds. */
const userAt = (at: number, content: string) =>
  Effect.gen(function*() {
    yield* TestClock.setTime(at)
    return yield* ChatContext.message("user", content)
  })

describe("ChatContext items", () => {
  it.effect("constructors stamp items with the current Clock time", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(1_000)
      const msg = yield* ChatContext.message("assistant", "Booking now.")
      yield* TestClock.adjust("1 second")
      const call = yield* ChatContext.functionCall({ callId: "call_1", name: "book_flight" })
      const out = yield* ChatContext.functionCallOutput({
        callId: "call_1",
        name: "book_flight",
        output: "FL-1",
        isError: false
      })
      assert.strictEqual(msg.createdAt, 1_000)
      assert.strictEqual(call.createdAt, 2_000)
      assert.strictEqual(out.createdAt, 2_000)
      assert.strictEqual(call.arguments, "{}") // no arguments means an empty object
      assert.isFalse("extra" in call)
      assert.notStrictEqual(call.id, out.id)
    }))

  it.effect("a chat context encodes to JSON and decodes back equal", () =>
    Effect.gen(function*() {
      const chat = ChatContext.ChatContext.fromItems([
        yield* ChatContext.message("system", "You book flights."),
        yield* ChatContext.message("user", "Book me to Tokyo"),
        yield* ChatContext.functionCall({ callId: "call_1", name: "book_flight", arguments: `{"to":"NRT"}` }),
        yield* ChatContext.functionCallOutput({
          callId: "call_1",
          name: "book_flight",
          output: "Looking up flights to NRT",
          isError: false,
          extra: { asyncToolsetPending: true, nested: { list: [1, "two", null] } }
        }),
        yield* ChatContext.functionCallOutput({ callId: "call_2", name: "book_flight", output: "Sold out", isError: true })
      ])

      const json = JSON.stringify(encode(chat))
      const decoded = decode(JSON.parse(json))

      assert.instanceOf(decoded, ChatContext.ChatContext)
      assert.deepStrictEqual(decoded, chat)
      assert.deepStrictEqual(
        decoded.items.map((i) => i._tag),
        ["ChatMessage", "ChatMessage", "FunctionCall", "FunctionCallOutput", "FunctionCallOutput"]
      )
      assert.instanceOf(decoded.items[0], ChatContext.ChatMessage)
      assert.instanceOf(decoded.items[2], ChatContext.FunctionCall)
      assert.instanceOf(decoded.items[3], ChatContext.FunctionCallOutput)
      assert.deepStrictEqual(JSON.parse(json).items[3], {
        _tag: "FunctionCallOutput",
        id: chat.items[3]!.id,
        callId: "call_1",
        name: "book_flight",
        output: "Looking up flights to NRT",
        isError: false,
        createdAt: 0,
        extra: { asyncToolsetPending: true, nested: { list: [1, "two", null] } }
      })
    }))

  it("decoding rejects an item that is not a chat item", () => {
    const message = { _tag: "ChatMessage", id: "msg_1", role: "user", content: "hi", createdAt: 0 }
    assert.instanceOf(decode({ items: [message] }).items[0], ChatContext.ChatMessage)
    const badRole = { items: [{ ...message, role: "robot" }] }
    const unknownTag = { items: [{ ...message, _tag: "Thought" }] }
    const missingField = { items: [{ _tag: "FunctionCall", id: "fc_1", callId: "c1", name: "x", createdAt: 0 }] }
    assert.throws(() => decode(badRole), /role/)
    assert.throws(() => decode(unknownTag))
    assert.throws(() => decode(missingField), /arguments/)
  })
})

describe("ChatContext.insert", () => {
  it.effect("insert returns a new context and leaves the old one unchanged", () =>
    Effect.gen(function*() {
      const hello = yield* ChatContext.message("user", "hello")
      const before = ChatContext.ChatContext.fromItems([hello])
      const after = before.insert([yield* ChatContext.message("assistant", "hi there")])

      assert.notStrictEqual(after, before)
      assert.deepStrictEqual(labels(before), ["hello"])
      assert.deepStrictEqual(labels(after), ["hello", "hi there"])
      assert.strictEqual(after.items[0], hello)
    }))

  it.effect("the empty context stays empty after an insert into it", () =>
    Effect.gen(function*() {
      const chat = ChatContext.ChatContext.empty.insert([yield* ChatContext.message("user", "hello")])
      assert.strictEqual(chat.items.length, 1)
      assert.strictEqual(ChatContext.ChatContext.empty.items.length, 0)
    }))

  it.effect("items are ordered by createdAt: an older item inserted later goes into the middle", () =>
    Effect.gen(function*() {
      const first = yield* userAt(1_000, "first")
      const third = yield* userAt(3_000, "third")
      const fourth = yield* userAt(4_000, "fourth")
      const second = yield* userAt(2_000, "second")

      const chat = ChatContext.ChatContext.fromItems([first, third, fourth]).insert([second])
      assert.deepStrictEqual(labels(chat), ["first", "second", "third", "fourth"])

      const oldest = yield* userAt(500, "oldest")
      assert.deepStrictEqual(labels(chat.insert([oldest])), ["oldest", "first", "second", "third", "fourth"])
    }))

  it.effect("items created at the same time keep their insertion order", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(1_000)
      const call = yield* ChatContext.functionCall({ callId: "call_1", name: "book_flight" })
      const output = yield* ChatContext.functionCallOutput({
        callId: "call_1",
        name: "book_flight",
        output: "FL-1",
        isError: false
      })
      const reply = yield* ChatContext.message("assistant", "Booked.")

      const oneByOne = ChatContext.ChatContext.empty.insert([call]).insert([output]).insert([reply])
      assert.deepStrictEqual(labels(oneByOne), ["call call_1", "output call_1", "Booked."])
      const atOnce = ChatContext.ChatContext.fromItems([call, output, reply])
      assert.deepStrictEqual(labels(atOnce), ["call call_1", "output call_1", "Booked."])
    }))

  it.effect("an item inserted among equal times goes after them, before newer items", () =>
    Effect.gen(function*() {
      const early = yield* userAt(0, "early")
      const tieA = yield* userAt(1_000, "tie A")
      const tieB = yield* userAt(1_000, "tie B")
      const late = yield* userAt(2_000, "late")
      const tieC = yield* userAt(1_000, "tie C")

      const chat = ChatContext.ChatContext.fromItems([early, tieA, tieB, late]).insert([tieC])
      assert.deepStrictEqual(labels(chat), ["early", "tie A", "tie B", "tie C", "late"])
    }))

  it.effect("fromItems sorts items given out of order, ties in the given order", () =>
    Effect.gen(function*() {
      const late = yield* userAt(3_000, "late")
      const tieA = yield* userAt(1_000, "tie A")
      const tieB = yield* userAt(1_000, "tie B")
      const early = yield* userAt(0, "early")

      const chat = ChatContext.ChatContext.fromItems([late, tieA, early, tieB])
      assert.deepStrictEqual(labels(chat), ["early", "tie A", "tie B", "late"])
    }))
})

describe("ChatContext.last", () => {
  it.effect("last is the newest item, even when an older one was inserted after it", () =>
    Effect.gen(function*() {
      const newest = yield* userAt(2_000, "newest")
      const older = yield* userAt(1_000, "older")
      const chat = ChatContext.ChatContext.fromItems([newest]).insert([older])
      assert.strictEqual(chat.last, newest)
    }))

  it("the empty context has no last item", () => {
    assert.isUndefined(ChatContext.ChatContext.empty.last)
  })
})
