import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Effect, Layer, Logger, Ref, References, Schema } from "effect"
import { AiError, Tool, Toolkit } from "effect/ai"
import { TestClock } from "effect/testing"
import { AsyncRunContext, AsyncToolset, ChatContext, FunctionTool, ToolError } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"

// --- fixtures -------------------------------------------------------------------------------------

const BookFlightParams = Schema.Struct({
  to: Schema.String.annotate({ description: "IATA code of the arrival airport" }),
  passengers: Schema.Int.annotate({ description: "How many people fly" }),
  cabin: Schema.optionalKey(Schema.Literals(["economy", "business"])).annotate({ description: "Cabin class" })
})

/** A booking tool whose every run is counted, and which hands back the arguments it received. */
const countingBookFlight = (runs: Ref.Ref<number>) =>
  FunctionTool.make("book_flight", {
    description: "Book a flight",
    parameters: BookFlightParams
  }, (args) => Effect.as(Ref.update(runs, (n) => n + 1), JSON.stringify(args)))

/** A tool without parameters whose every run is counted. */
const countingNoParams = (runs: Ref.Ref<number>) =>
  FunctionTool.make("list_airports", { description: "List the airports we fly to" }, () =>
    Effect.as(Ref.update(runs, (n) => n + 1), "NRT, CDG"))

const call = (name: string, args: string, callId = "call_1") =>
  ChatContext.functionCall({ callId, name, arguments: args })

/** Runs `tool` on `args` as a plain blocking tool. */
const run = (tool: FunctionTool.Any, args: string) =>
  Effect.flatMap(call(tool.name, args), (c) => FunctionTool.execute(tool, c))

/** The function definition exactly as a provider receives it: JSON. */
const sent = (tool: FunctionTool.Any) => JSON.parse(JSON.stringify(FunctionTool.toJsonSchema(tool)))

interface LoggedLine {
  readonly level: string
  readonly message: ReadonlyArray<unknown>
  readonly cause: Cause.Cause<unknown>
  readonly annotations: Record<string, unknown>
}

/** A logger that keeps every line, with its cause and annotations. */
const captureLogs = () => {
  const lines: Array<LoggedLine> = []
  const logger = Logger.make((o) => {
    lines.push({
      level: o.logLevel,
      message: Array.isArray(o.message) ? o.message : [o.message],
      cause: o.cause,
      annotations: { ...o.fiber.getRef(References.CurrentLogAnnotations) }
    })
  })
  return { lines, layer: Logger.layer([logger]) }
}

class SoldOut extends Schema.TaggedError<SoldOut>()("SoldOut", {
  flight: Schema.String,
  seatsLeft: Schema.Number
}) {}

class Undeclared extends Schema.TaggedError<Undeclared>()("Undeclared", {
  message: Schema.String
}) {}

const secretDefect = new Error("secret stack")

// --- A1: arguments --------------------------------------------------------------------------------

describe("FunctionTool arguments (A1)", () => {
  it.effect("valid JSON arguments are decoded and reach the handler", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const out = yield* run(countingBookFlight(runs), `{"to":"NRT","passengers":2,"cabin":"business"}`)
      assert.isFalse(out.isError)
      assert.deepStrictEqual(JSON.parse(out.output), { to: "NRT", passengers: 2, cabin: "business" })
      assert.strictEqual(yield* Ref.get(runs), 1)
    }))

  it.effect("bad JSON gives an error output naming the problem, and the handler does not run", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const out = yield* run(countingBookFlight(runs), `{"to": "NRT", passengers: 2}`)
      assert.isTrue(out.isError)
      assert.include(out.output, "book_flight did not run")
      assert.include(out.output, "not a valid JSON object")
      assert.include(out.output, "position") // where the text broke
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("a wrong type gives an error output with the path and the expected type, and the handler does not run", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const out = yield* run(countingBookFlight(runs), `{"to":42,"passengers":2}`)
      assert.isTrue(out.isError)
      assert.include(out.output, "do not match the tool's parameters")
      assert.include(out.output, `Expected string`)
      assert.include(out.output, `at ["to"]`)
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("a failed constraint names the path and the constraint", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const tool = FunctionTool.make("book_flight", {
        description: "Book a flight",
        parameters: Schema.Struct({ passengers: Schema.Number.check(Schema.isBetween({ minimum: 1, maximum: 9 })) })
      }, () => Effect.as(Ref.update(runs, (n) => n + 1), "booked"))
      const out = yield* run(tool, `{"passengers":12}`)
      assert.isTrue(out.isError)
      assert.include(out.output, `Expected a value between 1 and 9 at ["passengers"], got the number 12`)
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("a non-integer for an integer parameter says that an integer was expected", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const out = yield* run(countingBookFlight(runs), `{"to":"NRT","passengers":1.5}`)
      assert.isTrue(out.isError)
      assert.include(out.output, `at ["passengers"]`)
      assert.notInclude(out.output, "<filter>")
      assert.include(out.output, "Expected an integer")
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("a missing key gives an error output with its path, and every problem is listed", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const out = yield* run(countingBookFlight(runs), `{"to":7}`)
      assert.isTrue(out.isError)
      assert.include(out.output, `Expected string at ["to"], got the number 7`)
      assert.include(out.output, `Missing key "passengers" at ["passengers"]: expected number (an integer)`)
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("a nested mismatch names the full path", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const tool = FunctionTool.make("plan_trip", {
        description: "Plan a trip",
        parameters: Schema.Struct({ leg: Schema.Struct({ from: Schema.String, to: Schema.String }) })
      }, () => Effect.as(Ref.update(runs, (n) => n + 1), "planned"))
      const out = yield* run(tool, `{"leg":{"from":"JFK","to":false}}`)
      assert.isTrue(out.isError)
      assert.include(out.output, `Expected string`)
      assert.include(out.output, `at ["leg"]["to"]`)
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("an unknown extra field gives an error output naming it, and the handler does not run", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const out = yield* run(countingBookFlight(runs), `{"to":"NRT","passengers":1,"seat":"14C"}`)
      assert.isTrue(out.isError)
      assert.include(out.output, `Unexpected key "seat" at ["seat"]: the parameters are "to", "passengers", "cabin"; leave it out`)
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect.each([
    { where: "in a nested object", args: `{"leg":{"from":"JFK","to":"NRT","seat":"14C"}}`, path: `at ["leg"]["seat"]` },
    { where: "in an object inside an array", args: `{"legs":[{"from":"JFK","to":"NRT"},{"from":"NRT","to":"KIX","x":1}]}`, path: `at ["legs"][1]["x"]` },
    { where: "sent as null", args: `{"leg":{"from":"JFK","to":"NRT","seat":null}}`, path: `at ["leg"]["seat"]` },
    { where: "sent as null at the top", args: `{"leg":{"from":"JFK","to":"NRT"},"constructor":null}`, path: `at ["constructor"]` }
  ])("an unknown extra field $where is rejected too, naming its path", ({ args, path }) =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const Leg = Schema.Struct({ from: Schema.String, to: Schema.String })
      const tool = FunctionTool.make("plan_trip", {
        description: "Plan a trip",
        parameters: Schema.Struct({ leg: Schema.optionalKey(Leg), legs: Schema.optionalKey(Schema.Array(Leg)) })
      }, () => Effect.as(Ref.update(runs, (n) => n + 1), "planned"))
      const out = yield* run(tool, args)
      assert.isTrue(out.isError, out.output)
      assert.include(out.output, "Unexpected key")
      assert.include(out.output, path)
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("an optional key sent as null (as strict providers do) is accepted, nested or not", () =>
    Effect.gen(function*() {
      const tool = FunctionTool.make("plan_trip", {
        description: "Plan a trip",
        parameters: Schema.Struct({
          leg: Schema.Struct({ from: Schema.String, via: Schema.optionalKey(Schema.String) }),
          note: Schema.optionalKey(Schema.String)
        })
      }, (args) => Effect.succeed(JSON.stringify(args)))
      const out = yield* run(tool, `{"leg":{"from":"JFK","via":null},"note":null}`)
      assert.isFalse(out.isError, out.output)
      assert.strictEqual(out.output, `{"leg":{"from":"JFK"}}`)
    }))

  it.effect("an unknown extra field is rejected for a tool without parameters too", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const out = yield* run(countingNoParams(runs), `{"country":"JP"}`)
      assert.isTrue(out.isError)
      assert.include(out.output, `at ["country"]`)
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("a JSON value that is not an object gives an error output, and the handler does not run", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const tool = countingBookFlight(runs)
      for (const text of [`["NRT",2]`, `"NRT"`, `42`, `null`, `true`]) {
        const out = yield* run(tool, text)
        assert.isTrue(out.isError, text)
        assert.include(out.output, "not a valid JSON object", text)
        assert.include(out.output, "expected an object", text)
      }
      const noParams = countingNoParams(runs)
      for (const text of [`[]`, `null`, `"x"`]) {
        const out = yield* run(noParams, text)
        assert.isTrue(out.isError, text)
      }
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("a too large argument text gives an error output with the limit, and the handler does not run", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const text = `{"to":"${"X".repeat(FunctionTool.defaultMaxArgumentsLength)}","passengers":1}`
      const out = yield* run(countingBookFlight(runs), text)
      assert.isTrue(out.isError)
      assert.include(out.output, "too large")
      assert.include(out.output, `${text.length} characters, at most ${FunctionTool.defaultMaxArgumentsLength}`)
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("__proto__ and constructor.prototype keys are rejected, and the handler does not run", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const tool = countingBookFlight(runs)
      for (
        const text of [
          `{"to":"NRT","passengers":1,"__proto__":{"isAdmin":true}}`,
          `{"to":"NRT","passengers":1,"constructor":{"prototype":{"isAdmin":true}}}`,
          `{"to":"NRT","passengers":1,"cabin":{"__proto__":{"isAdmin":true}}}`
        ]
      ) {
        const out = yield* run(tool, text)
        assert.isTrue(out.isError, text)
        assert.include(out.output, "prototype", text)
      }
      assert.strictEqual(yield* Ref.get(runs), 0)
      assert.isFalse("isAdmin" in {}) // no prototype was polluted
    }))

  it.effect("empty argument text is accepted as {} for a tool without parameters", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const tool = countingNoParams(runs)
      for (const text of ["", "  ", "{}"]) {
        const out = yield* run(tool, text)
        assert.isFalse(out.isError, JSON.stringify(text))
        assert.strictEqual(out.output, "NRT, CDG")
      }
      assert.strictEqual(yield* Ref.get(runs), 3)
    }))

  it.effect("empty argument text for a tool with required parameters reports the missing keys", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const out = yield* run(countingBookFlight(runs), "")
      assert.isTrue(out.isError)
      assert.include(out.output, `Missing key "to" at ["to"]: expected string`)
      assert.include(out.output, `Missing key "passengers" at ["passengers"]`)
      assert.strictEqual(yield* Ref.get(runs), 0)
    }))

  it.effect("decodeArguments returns a typed InvalidArguments with the reason", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const tool = countingBookFlight(runs)
      const reasonOf = (text: string, maxLength?: number) => {
        const r = FunctionTool.decodeArguments(tool, text, { maxLength })
        return r._tag === "Failure" ? r.failure.reason : "ok"
      }
      assert.strictEqual(reasonOf(`{"to":"NRT","passengers":1}`), "ok")
      assert.strictEqual(reasonOf(`{oops`), "json")
      assert.strictEqual(reasonOf(`[]`), "json")
      assert.strictEqual(reasonOf(`{"to":1,"passengers":1}`), "schema")
      assert.strictEqual(reasonOf(`{"to":"NRT","passengers":1}`, 10), "size")
    }))
})

describe("FunctionTool argument errors in words a model acts on (A1)", () => {
  /** One parameter of each kind; every test sends one wrong value and reads the line about it. */
  const Kinds = Schema.Struct({
    n: Schema.Number,
    count: Schema.Int,
    city: Schema.String,
    direct: Schema.Boolean,
    cabin: Schema.Literals(["economy", "business"]),
    unit: Schema.Enum({ Celsius: "c", Fahrenheit: "f" }),
    tags: Schema.Array(Schema.String),
    leg: Schema.Struct({ to: Schema.String }),
    note: Schema.optionalKey(Schema.String),
    seats: Schema.NullOr(Schema.Number),
    code: Schema.String.check(Schema.isMinLength(3), Schema.isMaxLength(3)),
    iata: Schema.String.check(Schema.isPattern(/^[A-Z]{3}$/)),
    nights: Schema.Number.check(Schema.isGreaterThan(0))
  })
  const valid = {
    n: 1, count: 2, city: "Paris", direct: true, cabin: "economy", unit: "c", tags: ["a"], leg: { to: "NRT" },
    seats: null, code: "ABC", iata: "NRT", nights: 2
  }
  const kinds = FunctionTool.make("kinds", { description: "Every kind of parameter", parameters: Kinds }, () => Effect.succeed("ok"))
  /** What the model reads when `patch` is sent over otherwise valid arguments. */
  const told = (patch: Record<string, unknown>, drop?: string) => {
    const args: Record<string, unknown> = { ...valid, ...patch }
    if (drop !== undefined) delete args[drop]
    const decoded = FunctionTool.decodeArguments(kinds, JSON.stringify(args))
    return decoded._tag === "Failure" ? decoded.failure.message : "accepted"
  }

  it("a word for a number says a number was expected where, and what was sent", () => {
    const one = told({ n: "one" })
    assert.include(one, `Expected number at ["n"], got the string "one"`)
    assert.notInclude(one, "Infinity")
    assert.include(told({ n: true }), `Expected number at ["n"], got the boolean true`)
  })

  it.each([
    { kind: "an integer given a fraction", patch: { count: 1.5 }, line: `Expected an integer at ["count"], got the number 1.5` },
    { kind: "an integer given a string", patch: { count: "2" }, line: `Expected number (an integer) at ["count"], got the string "2"` },
    { kind: "a string given a number", patch: { city: 75 }, line: `Expected string at ["city"], got the number 75` },
    { kind: "a string given null", patch: { city: null }, line: `Expected string at ["city"], got null` },
    { kind: "a boolean given a string", patch: { direct: "yes" }, line: `Expected boolean (true or false) at ["direct"], got the string "yes"` },
    { kind: "literals given another", patch: { cabin: "first" }, line: `Expected one of "economy", "business" at ["cabin"], got the string "first"` },
    { kind: "an enum given another", patch: { unit: "k" }, line: `Expected one of "c", "f" at ["unit"], got the string "k"` },
    { kind: "an array given a string", patch: { tags: "a,b" }, line: `Expected array at ["tags"], got the string "a,b"` },
    { kind: "an array item of the wrong type", patch: { tags: ["a", 2] }, line: `Expected string at ["tags"][1], got the number 2` },
    { kind: "a struct given an array", patch: { leg: [] }, line: `Expected object at ["leg"], got an array of 0 items` },
    { kind: "a struct missing a key", patch: { leg: {} }, line: `Missing key "to" at ["leg"]["to"]: expected string` },
    { kind: "a struct with an extra key", patch: { leg: { to: "NRT", via: "ICN" } }, line: `Unexpected key "via" at ["leg"]["via"]: the parameters are "to"; leave it out` },
    { kind: "an optional key given the wrong type", patch: { note: 3 }, line: `Expected string or null at ["note"], got the number 3` },
    { kind: "a nullable given the wrong type", patch: { seats: "two" }, line: `Expected number or null at ["seats"], got the string "two"` },
    { kind: "a minimum length", patch: { code: "AB" }, line: `Expected a value with a length of at least 3 at ["code"], got the string "AB"` },
    { kind: "a maximum length", patch: { code: "ABCD" }, line: `Expected a value with a length of at most 3 at ["code"], got the string "ABCD"` },
    { kind: "a pattern", patch: { iata: "nrt" }, line: `Expected a string matching the RegExp ^[A-Z]{3}$ at ["iata"], got the string "nrt"` },
    { kind: "a positive number", patch: { nights: 0 }, line: `Expected a value greater than 0 at ["nights"], got the number 0` }
  ])("$kind: one plain line with the path, the expectation and what was sent", ({ patch, line }) => {
    assert.include(told(patch), `\n${line}\n`)
  })

  it("a missing required key says which key and what it takes", () => {
    assert.include(told({}, "count"), `Missing key "count" at ["count"]: expected number (an integer)`)
    assert.include(told({}, "cabin"), `Missing key "cabin" at ["cabin"]: expected one of "economy", "business"`)
  })

  it("an unknown key at the top names the parameters the tool takes", () => {
    assert.include(
      told({ hotel: true }),
      `Unexpected key "hotel" at ["hotel"]: the parameters are "n", "count", "city", "direct", "cabin", "unit", "tags", "leg", "note", "seats", "code", "iata", "nights"; leave it out`
    )
  })
})

describe("FunctionTool optional parameters", () => {
  it.effect("the strict JSON Schema marks an optional key as nullable and required", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const params = sent(countingBookFlight(runs)).parameters
      assert.deepStrictEqual([...params.required].sort(), ["cabin", "passengers", "to"])
      const cabin = params.properties.cabin
      assert.deepInclude(cabin.anyOf, { type: "null" })
      assert.deepInclude(cabin.anyOf, {
        type: "string",
        enum: ["economy", "business"],
        description: "Cabin class"
      })
    }))

  it.effect("null sent for an optional key decodes as an absent key", () =>
    Effect.gen(function*() {
      const seen = yield* Ref.make<ReadonlyArray<string>>([])
      const tool = FunctionTool.make("book_flight", {
        description: "Book a flight",
        parameters: BookFlightParams
      }, (args) => Effect.as(Ref.set(seen, Object.keys(args)), "booked"))
      const out = yield* run(tool, `{"to":"NRT","passengers":1,"cabin":null}`)
      assert.isFalse(out.isError, out.output)
      assert.deepStrictEqual([...(yield* Ref.get(seen))].sort(), ["passengers", "to"])
    }))

  it.effect("an optional key may still be left out, or given a value", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const tool = countingBookFlight(runs)
      const omitted = yield* run(tool, `{"to":"NRT","passengers":1}`)
      assert.isFalse(omitted.isError, omitted.output)
      assert.deepStrictEqual(JSON.parse(omitted.output), { to: "NRT", passengers: 1 })
      const given = yield* run(tool, `{"to":"NRT","passengers":1,"cabin":"economy"}`)
      assert.deepStrictEqual(JSON.parse(given.output), { to: "NRT", passengers: 1, cabin: "economy" })
      const wrong = yield* run(tool, `{"to":"NRT","passengers":1,"cabin":"first"}`)
      assert.isTrue(wrong.isError)
      assert.include(wrong.output, `at ["cabin"]`)
    }))
})

// --- A1 through the toolset -------------------------------------------------------------------------

/** A tool that reports progress at once, then works for a minute. */
const slowBooking = (runs: Ref.Ref<number>) =>
  FunctionTool.make("book_flight", {
    description: "Book a flight",
    parameters: Schema.Struct({ to: Schema.String })
  }, ({ to }) =>
    Effect.gen(function*() {
      yield* Ref.update(runs, (n) => n + 1)
      yield* AsyncRunContext.update(`Looking up flights to ${to}`)
      yield* Effect.sleep("1 minute")
      return `Booked to ${to}`
    }))

describe("AsyncToolset.execute with bad input (A1)", () => {
  it.effect("an unknown tool name gives an error output listing the available tools", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const toolset = yield* AsyncToolset.make({ id: "travel", tools: [slowBooking(runs)] })
      const out = yield* toolset.execute(yield* call("book_hotel", `{"city":"Paris"}`))
      assert.isTrue(out.isError)
      assert.strictEqual(out.callId, "call_1")
      assert.include(out.output, `Unknown tool "book_hotel"`)
      assert.include(out.output, "book_flight")
      assert.include(out.output, "get_running_tasks_travel")
      assert.include(out.output, "cancel_task_travel")
      assert.deepStrictEqual(yield* toolset.runningTasks, [])
      assert.strictEqual(yield* Ref.get(runs), 0)
    }).pipe(Effect.provide(TestSession.layer)))

  it.effect("bad arguments do not start a background call, and a good call still works", () =>
    Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const runs = yield* Ref.make(0)
      const toolset = yield* AsyncToolset.make({ id: "travel", tools: [slowBooking(runs)] })

      for (const args of [`{"to":`, `{"to":3}`, `{"to":"NRT","seat":"1A"}`, `[]`, `{"__proto__":{"to":"NRT"}}`]) {
        const out = yield* toolset.execute(yield* call("book_flight", args, "bad_call"))
        assert.isTrue(out.isError, args)
        assert.include(out.output, "did not run", args)
        assert.deepStrictEqual(yield* toolset.runningTasks, [], args)
      }
      const mismatch = yield* toolset.execute(yield* call("book_flight", `{"to":3}`, "bad_call"))
      assert.include(mismatch.output, `at ["to"]`)
      assert.strictEqual(yield* Ref.get(runs), 0)
      assert.deepStrictEqual(yield* session.insertions, [])

      const good = yield* toolset.execute(yield* call("book_flight", `{"to":"NRT"}`, "good_call"))
      assert.isFalse(good.isError)
      assert.isTrue(AsyncToolset.isPending(good))
      assert.include(good.output, "Looking up flights to NRT")
      assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.callId), ["good_call"])
      assert.strictEqual(yield* Ref.get(runs), 1)

      yield* TestClock.adjust("1 minute")
      yield* toolset.awaitIdle
      assert.deepStrictEqual(yield* toolset.runningTasks, [])
      const final = (yield* session.chat).items.find((i) => i._tag === "FunctionCallOutput" && i.callId === "good_call_final")
      assert.strictEqual(final?._tag === "FunctionCallOutput" ? final.output : undefined, "Booked to NRT")
    }).pipe(Effect.provide(TestSession.layer)))

  it.effect("an argument text over maxArgumentsLength is rejected before decoding", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const toolset = yield* AsyncToolset.make({ id: "travel", tools: [slowBooking(runs)], maxArgumentsLength: 20 })
      const text = `{"to":"${"N".repeat(30)}"}`
      const out = yield* toolset.execute(yield* call("book_flight", text))
      assert.isTrue(out.isError)
      assert.include(out.output, `${text.length} characters, at most 20`)
      assert.deepStrictEqual(yield* toolset.runningTasks, [])
      assert.strictEqual(yield* Ref.get(runs), 0)
    }).pipe(Effect.provide(TestSession.layer)))
})

// --- A2: outcomes ---------------------------------------------------------------------------------

describe("FunctionTool outcomes (A2)", () => {
  it.effect("a success is encoded with the success schema, transformations included", () =>
    Effect.gen(function*() {
      const tool = FunctionTool.make("book_flight", {
        description: "Book a flight",
        success: Schema.Struct({
          confirmation: Schema.String,
          departsAt: Schema.Date,
          price: Schema.NumberFromString
        })
      }, () => Effect.succeed({ confirmation: "FL-1", departsAt: new Date(Date.UTC(2030, 0, 2, 9, 30)), price: 420 }))
      const out = yield* run(tool, "{}")
      assert.isFalse(out.isError)
      assert.strictEqual(out.output, `{"confirmation":"FL-1","departsAt":"2030-01-02T09:30:00.000Z","price":"420"}`)
    }))

  it.effect("a success without a success schema is JSON", () =>
    Effect.gen(function*() {
      const tool = FunctionTool.make("quote", { description: "Quote a fare" }, () =>
        Effect.succeed({ fare: 420, currency: "EUR", legs: ["JFK-NRT"] }))
      const out = yield* run(tool, "{}")
      assert.isFalse(out.isError)
      assert.strictEqual(out.output, `{"fare":420,"currency":"EUR","legs":["JFK-NRT"]}`)
    }))

  it.effect("a string success passes as is, not JSON-quoted", () =>
    Effect.gen(function*() {
      const plain = FunctionTool.make("greet", { description: "Greet" }, () => Effect.succeed(`Say "hello"`))
      assert.strictEqual((yield* run(plain, "{}")).output, `Say "hello"`)
      const withSchema = FunctionTool.make("greet", { description: "Greet", success: Schema.String }, () =>
        Effect.succeed(`Say "hello"`))
      assert.strictEqual((yield* run(withSchema, "{}")).output, `Say "hello"`)
    }))

  it.effect("a void success gives an empty, non-error output", () =>
    Effect.gen(function*() {
      const tool = FunctionTool.make("ping", { description: "Ping" }, () => Effect.void)
      const out = yield* run(tool, "{}")
      assert.isFalse(out.isError)
      assert.strictEqual(out.output, "")
    }))

  it.effect("a declared typed failure becomes an error output with its JSON encoding (tag and fields)", () =>
    Effect.gen(function*() {
      const tool = FunctionTool.make("book_flight", {
        description: "Book a flight",
        parameters: Schema.Struct({ flight: Schema.String }),
        failure: SoldOut
      }, ({ flight }) => Effect.fail(new SoldOut({ flight, seatsLeft: 0 })))
      const out = yield* run(tool, `{"flight":"FL-847"}`)
      assert.isTrue(out.isError)
      assert.deepStrictEqual(JSON.parse(out.output), { _tag: "SoldOut", flight: "FL-847", seatsLeft: 0 })
    }))

  it.effect("a ToolError becomes an error output with exactly its message", () =>
    Effect.gen(function*() {
      const tool = FunctionTool.make("book_flight", {
        description: "Book a flight",
        failure: SoldOut
      }, () => Effect.fail(new ToolError.ToolError({ message: "That flight is sold out." })))
      const out = yield* run(tool, "{}")
      assert.isTrue(out.isError)
      assert.strictEqual(out.output, "That flight is sold out.")
    }))

  it.effect("a defect becomes a generic error output that leaks nothing, and its cause is logged", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const tool = FunctionTool.make("book_flight", { description: "Book a flight" }, () => Effect.die(secretDefect))
      const out = yield* run(tool, "{}").pipe(Effect.provide(logs.layer))
      assert.isTrue(out.isError)
      assert.include(out.output, "book_flight failed")
      assert.notInclude(out.output, "secret")
      assert.notInclude(out.output, "stack")
      assert.notInclude(out.output, "Error")
      const logged = logs.lines.filter((l) => Cause.pretty(l.cause).includes("secret stack"))
      assert.strictEqual(logged.length, 1)
      assert.strictEqual(logged[0]!.level, "Error")
      assert.strictEqual(logged[0]!.annotations["tool"], "book_flight")
      assert.strictEqual(logged[0]!.annotations["callId"], "call_1")
    }))

  it.effect("an undeclared failure becomes a generic error output that leaks nothing, and its cause is logged", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const declared = FunctionTool.make("book_flight", { description: "Book a flight", failure: SoldOut }, () =>
        Effect.fail(new SoldOut({ flight: "FL-1", seatsLeft: 0 })))
      // A tool typed as `Any` (as a toolset holds it) may fail with anything.
      const leaky: FunctionTool.Any = {
        ...declared,
        handler: () => Effect.fail(new Undeclared({ message: "secret database password" }))
      }
      const out = yield* run(leaky, "{}").pipe(Effect.provide(logs.layer))
      assert.isTrue(out.isError)
      assert.include(out.output, "book_flight failed")
      assert.notInclude(out.output, "secret")
      assert.notInclude(out.output, "Undeclared")
      const logged = logs.lines.filter((l) => Cause.pretty(l.cause).includes("secret database password"))
      assert.strictEqual(logged.length, 1)
    }))

  it.effect("a success the success schema cannot encode becomes a generic error output, and is logged", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const tool = FunctionTool.make("quote", {
        description: "Quote a fare",
        success: Schema.Struct({ fare: Schema.Finite })
      }, () => Effect.succeed({ fare: Number.NaN }))
      const out = yield* run(tool, "{}").pipe(Effect.provide(logs.layer))
      assert.isTrue(out.isError)
      assert.include(out.output, "quote failed")
      assert.isAtLeast(logs.lines.filter((l) => l.level === "Error").length, 1)
    }))

  it.effect("a success with no JSON form becomes a generic error output, and is logged", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const tool = FunctionTool.make("count", { description: "Count" }, () => Effect.succeed({ total: 10n }))
      const out = yield* run(tool, "{}").pipe(Effect.provide(logs.layer))
      assert.isTrue(out.isError)
      assert.include(out.output, "count failed")
      assert.isAtLeast(logs.lines.filter((l) => l.level === "Error").length, 1)
    }))

  it.effect("the output answers the call it came from", () =>
    Effect.gen(function*() {
      const tool = FunctionTool.make("ping", { description: "Ping" }, () => Effect.succeed("pong"))
      const out = yield* FunctionTool.execute(tool, yield* call("ping", "{}", "call_xyz"))
      assert.strictEqual(out._tag, "FunctionCallOutput")
      assert.strictEqual(out.callId, "call_xyz")
      assert.strictEqual(out.name, "ping")
    }))
})

// --- the provider-facing schema -------------------------------------------------------------------

describe("FunctionTool.toJsonSchema", () => {
  it.effect("gives name, description and the strict JSON Schema of the parameters", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const schema = sent(countingBookFlight(runs))
      assert.strictEqual(schema.type, "function")
      assert.strictEqual(schema.name, "book_flight")
      assert.strictEqual(schema.description, "Book a flight")
      assert.isTrue(schema.strict)
      const params = schema.parameters
      assert.strictEqual(params.type, "object")
      assert.strictEqual(params.additionalProperties, false)
      assert.deepStrictEqual(Object.keys(params.properties).sort(), ["cabin", "passengers", "to"])
      assert.deepStrictEqual([...params.required].sort(), ["cabin", "passengers", "to"])
      assert.deepStrictEqual(params.properties.to, { type: "string", description: "IATA code of the arrival airport" })
      assert.strictEqual(params.properties.passengers.description, "How many people fly")
      assert.strictEqual(params.properties.passengers.type, "integer")
    }))

  it.effect("nested objects are closed too", () =>
    Effect.gen(function*() {
      const tool = FunctionTool.make("plan_trip", {
        description: "Plan a trip",
        parameters: Schema.Struct({ leg: Schema.Struct({ from: Schema.String, note: Schema.optionalKey(Schema.String) }) })
      }, () => Effect.succeed("planned"))
      const leg = sent(tool).parameters.properties.leg
      assert.strictEqual(leg.additionalProperties, false)
      assert.deepStrictEqual([...leg.required].sort(), ["from", "note"])
    }))

  it.effect("a tool without parameters has an empty closed object", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const schema = sent(countingNoParams(runs))
      assert.isTrue(schema.strict)
      assert.deepStrictEqual(schema.parameters, {
        type: "object",
        properties: {},
        required: [],
        additionalProperties: false
      })
    }))

  it.effect("the strict flag matches the tool's own flag", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const tool = countingBookFlight(runs)
      assert.strictEqual(FunctionTool.toJsonSchema(tool).strict, tool.strict)
      assert.strictEqual(FunctionTool.toJsonSchema(tool).parameters, tool.jsonSchema)
    }))
})

// --- names ----------------------------------------------------------------------------------------

describe("FunctionTool.make", () => {
  it("rejects tool names providers reject", () => {
    for (const name of ["book/flight", "book flight", "book.flight", "", "b".repeat(65), "réserver"]) {
      assert.throws(() => FunctionTool.make(name, { description: "x" }, () => Effect.void), /tool name/, name)
    }
  })

  it("accepts letters, digits, underscores and dashes up to 64 characters", () => {
    for (const name of ["book_flight", "Book-Flight-2", "b".repeat(64)]) {
      assert.strictEqual(FunctionTool.make(name, { description: "x" }, () => Effect.void).name, name)
    }
  })
})

// --- effect/ai tools --------------------------------------------------------------------------------

describe("FunctionTool.fromToolkit: effect/ai tools as background tools", () => {
  class Airline extends Context.Service<Airline, { readonly name: string }>()("test/Airline") {}

  const BookFlight = Tool.make("BookFlight", {
    description: "Book a flight to a city",
    parameters: Schema.Struct({ to: Schema.String.annotate({ description: "City of arrival" }) }),
    success: Schema.Struct({ confirmation: Schema.String, airline: Schema.String }),
    failure: Schema.Union([SoldOut, ToolError.ToolError]),
    dependencies: [AsyncRunContext.AsyncRunContext]
  })
  const Progress = Tool.make("Progress", {
    description: "Reports progress with preliminary results",
    success: Schema.String
  })
  const Travel = Toolkit.make(BookFlight, Progress)

  /** The handlers, built with an `Airline` in their layer. */
  const handlers = Travel.toLayer(Effect.gen(function*() {
    const airline = yield* Airline
    return Travel.of({
      BookFlight: ({ to }) =>
        Effect.gen(function*() {
          if (to === "Atlantis") return yield* new SoldOut({ flight: "AT-1", seatsLeft: 0 })
          if (to === "Nowhere") return yield* new ToolError.ToolError({ message: "No airline flies to Nowhere." })
          if (to === "Moon") return yield* Effect.die(secretDefect)
          if (to === "Mars") {
            return yield* AiError.make({ module: "Airline", method: "book", reason: new AiError.UnknownError({ description: "secret api" }) })
          }
          yield* AsyncRunContext.update(`Looking up flights to ${to}`)
          yield* Effect.sleep("1 minute")
          return { confirmation: "FL-847293", airline: airline.name }
        }),
      Progress: (_, { preliminary }) =>
        Effect.gen(function*() {
          yield* preliminary("a third done")
          yield* Effect.sleep("1 minute")
          yield* preliminary("two thirds done")
          yield* Effect.sleep("1 minute")
          return "all done"
        })
    })
  })).pipe(Layer.provide(Layer.succeed(Airline, { name: "Effect Air" })))

  const tools = FunctionTool.fromToolkit(Travel, { BookFlight: { onDuplicateCall: "allow" } })

  /** A toolset of the toolkit's tools, on the test session, with the handler layer. */
  const provide = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    effect.pipe(Effect.provide(Layer.merge(handlers, TestSession.layer)))

  const book = (toolset: AsyncToolset.AsyncToolset, to: string, callId = "call_1") =>
    Effect.flatMap(call("BookFlight", JSON.stringify({ to }), callId), toolset.execute)

  it.effect("the tools keep their names, descriptions and parameters; the model sees a strict JSON Schema", () =>
    Effect.gen(function*() {
      assert.deepStrictEqual(tools.map((tool) => tool.name), ["BookFlight", "Progress"])
      assert.deepStrictEqual(sent(tools[0]!), {
        type: "function",
        name: "BookFlight",
        description: "Book a flight to a city",
        parameters: {
          type: "object",
          properties: { to: { type: "string", description: "City of arrival" } },
          required: ["to"],
          additionalProperties: false
        },
        strict: true
      })
      assert.deepStrictEqual(sent(tools[1]!).parameters, { type: "object", properties: {}, required: [], additionalProperties: false })
      assert.strictEqual(tools[0]!.options.onDuplicateCall, "allow")
    }))

  it.effect("a handler from toLayer runs in the toolset: its AsyncRunContext.update makes it a background call, with its layer's services", () =>
    provide(Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* AsyncToolset.make({ id: "travel", tools })

      const first = yield* book(toolset, "Tokyo")
      assert.include(first.output, "Looking up flights to Tokyo")
      assert.isTrue(AsyncToolset.isPending(first))

      yield* TestClock.adjust("1 minute")
      yield* toolset.awaitIdle
      const final = (yield* session.chat).items.find((item) => item._tag === "FunctionCallOutput" && item.callId === "call_1_final")
      assert.deepStrictEqual(
        final?._tag === "FunctionCallOutput" ? JSON.parse(final.output) : undefined,
        { confirmation: "FL-847293", airline: "Effect Air" }
      )
      assert.strictEqual((yield* session.replies).length, 1)
    })))

  it.effect("preliminary results are updates: the first is the call's output, the next ones reach the chat", () =>
    provide(Effect.gen(function*() {
      const session = yield* TestSession.TestSession
      const toolset = yield* AsyncToolset.make({ id: "travel", tools })

      const first = yield* Effect.flatMap(call("Progress", "{}", "p1"), toolset.execute)
      assert.include(first.output, "a third done")
      yield* TestClock.adjust("2 minutes")
      yield* toolset.awaitIdle
      const outputs = (yield* session.chat).items.flatMap((item) =>
        item._tag === "FunctionCallOutput" ? [`${item.callId}: ${item.output}`] : []
      )
      assert.strictEqual(outputs.length, 2)
      assert.include(outputs[0], "p1_update_1:")
      assert.include(outputs[0], "two thirds done")
      assert.strictEqual(outputs[1], "p1_final: all done")
    })))

  it.effect("failures follow the A2 rules: the Tool's failure encoded with its tag and fields; a ToolError its message; an AiError or a defect a generic error, logged", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const outputs = yield* provide(Effect.gen(function*() {
        const toolset = yield* AsyncToolset.make({ id: "travel", tools })
        return yield* Effect.forEach(["Atlantis", "Nowhere", "Moon", "Mars"], (to, i) => book(toolset, to, `c${i}`))
      })).pipe(Effect.provide(logs.layer))

      assert.isTrue(outputs.every((out) => out.isError))
      assert.deepStrictEqual(JSON.parse(outputs[0]!.output), { _tag: "SoldOut", flight: "AT-1", seatsLeft: 0 })
      assert.strictEqual(outputs[1]!.output, "No airline flies to Nowhere.")
      for (const out of outputs.slice(2)) {
        assert.include(out.output, "BookFlight failed because of an internal error")
        assert.notInclude(out.output, "secret")
      }
      const logged = logs.lines.filter((l) => l.level === "Error").map((l) => Cause.pretty(l.cause))
      assert.strictEqual(logged.length, 2)
      assert.include(logged[0], "secret stack")
      assert.include(logged[1], "secret api")
    }))

  it.effect("the Tool's parameters check the model's arguments: bad ones never reach the handler", () =>
    provide(Effect.gen(function*() {
      const toolset = yield* AsyncToolset.make({ id: "travel", tools })
      const out = yield* Effect.flatMap(call("BookFlight", `{"to":7,"extra":true}`), toolset.execute)
      assert.isTrue(out.isError)
      assert.include(out.output, "do not match the tool's parameters")
      assert.include(out.output, `["to"]`)
      assert.include(out.output, `["extra"]`)
      assert.deepStrictEqual(yield* toolset.runningTasks, [])
    })))

  it("tools a toolset cannot run are refused at conversion, saying why", () => {
    const approval = Tool.make("Approve", { description: "Needs a yes", needsApproval: true })
    assert.throws(() => FunctionTool.fromTool(approval), /Approve cannot run in an AsyncToolset: it needs approval/)
    const unionParams = Tool.make("Either", {
      parameters: Schema.Union([Schema.Struct({ a: Schema.String }), Schema.Struct({ b: Schema.String })])
    })
    assert.throws(() => FunctionTool.fromTool(unionParams), /Either cannot run in an AsyncToolset: its parameters are not a Schema.Struct/)
    const search = Tool.providerDefined({ id: "openai.web_search", customName: "WebSearch", providerName: "web_search" })()
    assert.throws(() => FunctionTool.fromTool(search), /WebSearch cannot run in an AsyncToolset: it is provider-defined/)
  })
})
