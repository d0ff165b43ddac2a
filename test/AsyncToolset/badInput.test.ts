/**
 * The bad-input corpus (rule A1, and "Bad input and faults"): malformed model tool calls from
 * `test/corpus/*.json`, each run through `execute` of a fresh toolset, on both toolsets. Every call must give an output for its own call id (never a
 * crash); a malformed call gets a short error output naming the problem and runs nothing; an odd
 * but valid call runs and its handler sees exactly what was sent; no prototype changes. Large
 * inputs are generated at test time from the recipes in the corpus (`test/corpus/README.md`).
 *
 * A durable call's record is keyed by its call id: an id over 200 characters or with a NUL is
 * refused (an error output naming the limit), so such a case expects that on the durable toolset.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Schema } from "effect"
import { readdirSync, readFileSync } from "node:fs"
import { AsyncRunContext, AsyncToolset, ChatContext, FunctionTool } from "effect-async-toolset"
import { TestSession } from "effect-async-toolset/testing"
import { chatCallIds, chatProblems } from "../support/reliability.ts"
import { forEachKind } from "../support/toolsets.ts"
import type { Kind } from "../support/toolsets.ts"

// --- the corpus -----------------------------------------------------------------------------------

/** A piece of generated text: a literal, `text` repeated `times`, or `text` repeated with `{i}` numbered. */
const Piece = Schema.Union([
  Schema.String,
  Schema.Struct({ repeat: Schema.String, times: Schema.Int }),
  Schema.Struct({ sequence: Schema.String, times: Schema.Int })
])
/** Text given as is, or generated from pieces (for inputs too large to store). */
const Text = Schema.Union([Schema.String, Schema.Struct({ generate: Schema.Array(Piece) })])
type Text = typeof Text.Type

const Call = Schema.Struct({ tool: Text, callId: Schema.optionalKey(Text), arguments: Text })

const Case = Schema.Struct({
  name: Schema.String,
  ...Call.fields,
  /** Calls made first and left running (e.g. to make the case's call id a duplicate). */
  before: Schema.optionalKey(Schema.Array(Call)),
  /**
   * `error`: an error output, nothing runs. `runs`: the handler runs. `answers`: a management tool
   * answers (not as an error), no corpus handler runs.
   */
  expect: Schema.Literals(["error", "runs", "answers"]),
  /** For an error or an answer: what the output must say (substrings). */
  mentions: Schema.optionalKey(Schema.Array(Schema.String)),
  /** For a run: the arguments the handler must receive. */
  handlerSees: Schema.optionalKey(Schema.Unknown)
})
type Case = typeof Case.Type

const CorpusFile = Schema.Struct({ description: Schema.String, cases: Schema.Array(Case) })

const corpusDir = new URL("../corpus/", import.meta.url)
const corpus = readdirSync(corpusDir).filter((f) => f.endsWith(".json")).sort().map((file) => ({
  file,
  ...Schema.decodeUnknownSync(CorpusFile)(JSON.parse(readFileSync(new URL(file, corpusDir), "utf8")))
}))

const generate = (text: Text): string => {
  if (typeof text === "string") return text
  return text.generate.map((piece) => {
    if (typeof piece === "string") return piece
    if ("repeat" in piece) return piece.repeat.repeat(piece.times)
    return Array.from({ length: piece.times }, (_, i) => piece.sequence.replaceAll("{i}", String(i))).join("")
  }).join("")
}

// --- the tools the corpus calls -------------------------------------------------------------------

interface Section {
  readonly title: string
  readonly children: ReadonlyArray<Section>
}
const Section: Schema.Codec<Section> = Schema.Struct({
  title: Schema.String,
  children: Schema.Array(Schema.suspend((): Schema.Codec<Section> => Section))
})

/** The arguments each handler received, by call id. */
type Seen = Map<string, unknown>

const sees = (seen: Seen, args: unknown) =>
  Effect.map(AsyncRunContext.functionCall, ({ callId }) => {
    seen.set(callId, args)
  })

const corpusTools = (seen: Seen) => [
  FunctionTool.make("book_flight", {
    description: "Book a flight",
    parameters: Schema.Struct({
      to: Schema.String,
      passengers: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 9 })),
      cabin: Schema.optionalKey(Schema.Literals(["economy", "business"]))
    })
  }, (args) => Effect.as(sees(seen, args), `booked to ${args.to.slice(0, 20)}`)),
  FunctionTool.make("store_note", {
    description: "Store a note with a free-form JSON payload",
    parameters: Schema.Struct({ title: Schema.String, payload: Schema.Unknown }),
    duplicateScope: "arguments"
  }, (args) => Effect.as(sees(seen, args), "stored")),
  FunctionTool.make("outline", {
    description: "Store a document outline",
    parameters: Schema.Struct({ root: Section })
  }, (args) => Effect.as(sees(seen, args), "outlined")),
  FunctionTool.make("quick_job", { description: "A short background job" }, (args) =>
    Effect.gen(function*() {
      yield* sees(seen, args)
      yield* AsyncRunContext.update("started")
      yield* Effect.sleep("1 second")
      return "done"
    })),
  FunctionTool.make("track_flight", {
    description: "Track a flight until cancelled",
    parameters: Schema.Struct({ flight: Schema.String }),
    onDuplicateCall: "reject"
  }, (args) => Effect.andThen(sees(seen, args), Effect.andThen(AsyncRunContext.update("tracking"), Effect.never))),
  FunctionTool.make("ping", { description: "Answers pong" }, (args) => Effect.as(sees(seen, args), "pong"))
]

// --- checks ---------------------------------------------------------------------------------------

/** How long an error output may be: short, whatever the input (the call id is echoed as given). */
const maxErrorLength = (callId: string) => 5000 + callId.length

const preview = (text: string) => text.length <= 400 ? text : `${text.slice(0, 400)}… (${text.length} characters)`

/** Own `__proto__` keys anywhere in a value (iterative: the value may be deep). */
const protoKeys = (value: unknown): number => {
  let found = 0
  const stack: Array<unknown> = [value]
  while (stack.length > 0) {
    const v = stack.pop()
    if (v === null || typeof v !== "object") continue
    if (Object.hasOwn(v, "__proto__")) found++
    if (Array.isArray(v) ? false : Object.getPrototypeOf(v) !== Object.prototype) found++
    for (const key of Object.keys(v)) stack.push((v as Record<string, unknown>)[key])
  }
  return found
}

const prototypeKeys = () => Object.getOwnPropertyNames(Object.prototype).sort().join()
const pristinePrototype = prototypeKeys()

/** Whether the durable toolset refuses `callId` (its record is keyed by it): over 200 characters, or a NUL. */
const refusedDurably = (kind: Kind, callId: string) => kind.durable && (callId.length > 200 || callId.includes("\u0000"))

const runCase = (kind: Kind, c: Case) =>
  Effect.gen(function*() {
    const session = yield* TestSession.TestSession
    const seen: Seen = new Map()
    const toolset = yield* kind.make({ id: "corpus", tools: corpusTools(seen), onDuplicateCall: "allow" })

    const before = (c.before ?? []).map((b) => ({ tool: generate(b.tool), callId: generate(b.callId ?? "before"), arguments: generate(b.arguments) }))
    for (const b of before) {
      const out = yield* toolset.execute(yield* ChatContext.functionCall({ callId: b.callId, name: b.tool, arguments: b.arguments }))
      // (durable: a call id it cannot key a record by is refused)
      assert.strictEqual(out.isError, refusedDurably(kind, b.callId), `the call made first runs: ${preview(out.output)}`)
    }
    const runningBefore = (yield* toolset.runningTasks).map((t) => t.callId)
    seen.clear()

    const callId = generate(c.callId ?? "corpus_call")
    // (durable: a call id it cannot key a record by is refused, whatever the call)
    const refused = refusedDurably(kind, callId)
    const expect = refused ? "error" : c.expect
    const mentions = refused ? ["at most 200 characters"] : c.mentions ?? []
    const call = yield* ChatContext.functionCall({ callId, name: generate(c.tool), arguments: generate(c.arguments) })
    const exit = yield* Effect.exit(toolset.execute(call))
    if (Exit.isFailure(exit)) return assert.fail(`execute crashed instead of answering:\n${preview(Cause.pretty(exit.cause))}`)
    const out = exit.value

    assert.isTrue(out.callId === callId, "the output answers the call's own id")
    if (expect !== "runs") {
      assert.strictEqual(out.isError, expect === "error", `an error output: ${preview(out.output)}`)
      for (const m of mentions) assert.isTrue(out.output.includes(m), `the output names the problem (${m}): ${preview(out.output)}`)
      assert.isFalse(seen.has(callId), "the handler did not run")
      assert.isAtMost(out.output.length, maxErrorLength(callId), `the answer stays short: ${preview(out.output)}`)
      assert.deepStrictEqual((yield* toolset.runningTasks).map((t) => t.callId), runningBefore, "nothing new runs")
    } else {
      assert.isFalse(out.isError, `the call runs: ${preview(out.output)}`)
      assert.isTrue(seen.has(callId), "the handler ran")
      if (c.handlerSees !== undefined) assert.deepStrictEqual(seen.get(callId), c.handlerSees)
      assert.strictEqual(protoKeys(seen.get(callId)), 0, "the handler sees plain data")
    }

    // wind down: the calls made first are cancelled, background calls end
    for (const b of before) {
      assert.strictEqual(yield* toolset.cancel(b.callId), refusedDurably(kind, b.callId) ? "not-found" : "cancelled")
    }
    yield* kind.advance("1 second")
    yield* toolset.awaitIdle
    assert.deepStrictEqual(yield* toolset.runningTasks, [], "the registry is empty once the calls end")
    const chat = yield* session.chat
    assert.deepStrictEqual(chatProblems(chat), [])
    if (expect === "runs" && AsyncToolset.isPending(out)) {
      assert.deepStrictEqual(chatCallIds(chat), [`${callId}_final`], "the final uses the call id as its prefix")
    } else {
      assert.deepStrictEqual(chatCallIds(chat), [])
    }

    assert.strictEqual(prototypeKeys(), pristinePrototype, "Object.prototype is unchanged")
    assert.isUndefined((({}) as Record<string, unknown>)["polluted"], "no prototype was polluted")
  }).pipe(kind.provide(TestSession.layer))

// --- the tests ------------------------------------------------------------------------------------

describe("the bad-input corpus", () => {
  it("holds at least 50 cases, each with a unique name", () => {
    const names = corpus.flatMap(({ cases, file }) => cases.map((c) => `${file}: ${c.name}`))
    assert.isAtLeast(names.length, 50)
    assert.strictEqual(new Set(names).size, names.length)
  })
})

forEachKind("A1 bad input through execute: an output for the call's own id, nothing else affected", (kind) => {
  for (const { cases, file } of corpus) {
    describe(file, () => {
      for (const c of cases) it.effect(c.name, () => runCase(kind, c))
    })
  }
})
