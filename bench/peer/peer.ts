/**
 * The same workloads on the peer: `@livekit/agents`' `ToolExecutor` (promises), driven the way its
 * own test (`src/voice/tool_executor.test.ts` in the package) drives it: a `ToolExecutor`, a stub
 * session whose current agent holds a chat context, and `executor.execute({ tool, runCtx,
 * rawArguments })`. Reference only: nothing of the peer is copied here, it is imported and driven.
 *
 * As on our side, the model's `FunctionCall` items are made before the clock starts. Timed per call:
 * what the peer's pipeline does before its executor (JSON parse and zod validation of the
 * arguments, a `RunContext`), then the executor. All calls share one `SpeechHandle` (one agent
 * turn), which keeps the peer's memory per call at its lowest.
 *
 * The peer is installed in this folder (its own package.json and lock file; `npm run bench` runs
 * `npm ci` here when it is missing), not with the library: see "The peer as a dependency" in
 * bench/RESULTS.md.
 */
import { initializeLogger, llm, voice } from "@livekit/agents"
import { z } from "zod"
import { collect, expect, tick } from "../harness.ts"

// The peer logs through pino and refuses to run before its logger is set up (its tests do the same).
initializeLogger({ pretty: false, level: "silent" })

/** The class is not exported by name; an `AsyncToolset` holds one. */
type ToolExecutor = llm.AsyncToolset["_executor"]
const ToolExecutor = llm.AsyncToolset.create({ id: "bench_peer", tools: [] })._executor.constructor as new() => ToolExecutor

const Parameters = z.object({ query: z.string() })
const argumentsText = JSON.stringify({ query: "flights" })

/** A promise plus the function that settles it. */
const signal = <A = void>() => {
  let resolve!: (value: A) => void
  const promise = new Promise<A>((r) => {
    resolve = r
  })
  return { promise, resolve }
}

/** The stub session of the peer's test, with a busy/idle switch and counters. */
const makeSession = (hooks: { readonly onChatUpdate?: () => void; readonly onReply?: () => void } = {}) => {
  let idle: Promise<void> = Promise.resolve()
  let setIdle = () => {}
  let replies = 0
  const agent = {
    chatCtx: llm.ChatContext.empty(),
    async updateChatCtx(chatCtx: llm.ChatContext) {
      this.chatCtx = chatCtx
      hooks.onChatUpdate?.()
    }
  }
  const history = new llm.ChatContext()
  const session = {
    userData: {},
    history,
    currentAgent: agent,
    _globalRunState: undefined,
    async waitForIdle() {
      await idle
      return { agent }
    },
    generateReply: () => {
      replies++
      hooks.onReply?.()
      return { id: "speech_reply", addDoneCallback: () => {} }
    }
  } as unknown as voice.AgentSession
  const speech = voice.SpeechHandle.create()
  return {
    agent,
    history,
    session,
    replies: () => replies,
    setBusy: () => {
      const s = signal()
      idle = s.promise
      setIdle = s.resolve
    },
    setIdle: () => setIdle(),
    runContext: (call: llm.FunctionCall) => new voice.RunContext(session, speech, call)
  }
}
type Session = ReturnType<typeof makeSession>

const makeCalls = (n: number, name: string): Array<llm.FunctionCall> =>
  Array.from({ length: n }, (_, i) => llm.FunctionCall.create({ callId: `call_${i}`, name, args: argumentsText }))

/** One model call: what the peer's pipeline does with it, then its executor. */
const execute = (
  executor: ToolExecutor,
  tool: llm.FunctionTool<z.infer<typeof Parameters>>,
  session: Session,
  call: llm.FunctionCall
): Promise<unknown> =>
  executor.execute({ tool, runCtx: session.runContext(call), rawArguments: Parameters.parse(JSON.parse(call.args)) })

const lookup = llm.tool({
  name: "lookup",
  description: "Looks something up",
  parameters: Parameters,
  onDuplicate: "allow",
  execute: async ({ query }, { ctx }) => {
    await ctx.update(`searching ${query}`)
    return `found ${query}`
  }
})

/** Answers at once with an update, then waits for `gate` (or its abort signal) before returning. */
const blocked = (gate: Promise<void>, onStop?: () => void) =>
  llm.tool({
    name: "wait",
    description: "Waits in the background",
    parameters: Parameters,
    onDuplicate: "allow",
    flags: llm.ToolFlag.CANCELLABLE,
    execute: async ({ query }, { abortSignal, ctx }) => {
      await ctx.update(`started ${query}`)
      if (onStop === undefined) {
        await gate
      } else {
        // A cancellable tool stops when aborted, as the peer's own abortable tools do.
        await new Promise<void>((resolve) => {
          if (abortSignal.aborted) return resolve()
          abortSignal.addEventListener("abort", () => resolve(), { once: true })
        })
        onStop()
      }
      return `done ${query}`
    }
  })

const launch = (
  executor: ToolExecutor,
  tool: llm.FunctionTool<z.infer<typeof Parameters>>,
  session: Session,
  calls: ReadonlyArray<llm.FunctionCall>
) => Promise.all(calls.map((call) => execute(executor, tool, session, call)))

const isFirstUpdate = (output: unknown) => typeof output === "string" && output.includes("has updated")

const close = async (executor: ToolExecutor, release?: () => void) => {
  await executor.aclose()
  release?.()
  await tick()
}

/** W1: calls per second, one call at a time, each until its final result was replied to. */
export const w1 = async (calls: number): Promise<number> => {
  const session = makeSession()
  const executor = new ToolExecutor()
  const functionCalls = makeCalls(calls, "lookup")
  let pending = 0
  const t0 = performance.now()
  for (const call of functionCalls) {
    if (isFirstUpdate(await execute(executor, lookup, session, call))) pending++
    await executor.waitForAll()
  }
  const ms = performance.now() - t0
  expect(pending === calls, `peer W1: ${pending} of ${calls} calls returned at their first update`)
  expect(session.replies() === calls, `peer W1: ${session.replies()} replies for ${calls} finals`)
  expect(session.agent.chatCtx.items.length === 2 * calls, "peer W1: every final is in the chat")
  await close(executor)
  return calls / (ms / 1000)
}

/** W2: milliseconds to launch `n` calls at once, each blocked after its first update. */
export const w2 = async (n: number, onProgress?: (launched: number) => void): Promise<number> => {
  const session = makeSession()
  const executor = new ToolExecutor()
  const release = signal()
  const tool = blocked(release.promise)
  const calls = makeCalls(n, "wait")
  let launched = 0
  const t0 = performance.now()
  const outputs = await Promise.all(calls.map((call) =>
    execute(executor, tool, session, call).then((output) => {
      if (++launched % 1000 === 0) onProgress?.(launched)
      return output
    })
  ))
  const ms = performance.now() - t0
  expect(outputs.every(isFirstUpdate), "peer W2: every call returned at its first update")
  expect(executor.hasRunningTasks, "peer W2: the calls are running")
  await close(executor, release.resolve)
  return ms
}

/**
 * W3: bytes per blocked call (heap and RSS, after GC). Run in a fresh process. Above
 * `executorMax` calls the calls are spread over several executors (one executor needs minutes to
 * launch 100k: see W2); the memory each call holds is the same.
 */
export const w3 = async (n: number, executorMax: number): Promise<{ readonly heap: number; readonly rss: number }> => {
  const session = makeSession()
  const release = signal()
  const tool = blocked(release.promise)
  const executors: Array<ToolExecutor> = []
  for (let i = 0; i < Math.ceil(n / executorMax); i++) executors.push(new ToolExecutor())
  collect()
  const before = process.memoryUsage()
  let offset = 0
  for (const executor of executors) {
    const size = Math.min(executorMax, n - offset)
    const calls = Array.from(
      { length: size },
      (_, i) => llm.FunctionCall.create({ callId: `call_${offset + i}`, name: "wait", args: argumentsText })
    )
    await launch(executor, tool, session, calls)
    offset += size
  }
  collect()
  const after = process.memoryUsage()
  expect(executors.every((e) => e.hasRunningTasks), "peer W3: the calls are running")
  for (const executor of executors) await executor.aclose()
  release.resolve()
  return { heap: (after.heapUsed - before.heapUsed) / n, rss: (after.rss - before.rss) / n }
}

/** An unbounded async queue: the tool of W4 takes its next progress message from it. */
const mailbox = () => {
  const buffered: Array<string> = []
  let waiting: ((message: string) => void) | undefined
  return {
    offer: (message: string) => {
      if (waiting === undefined) buffered.push(message)
      else {
        const w = waiting
        waiting = undefined
        w(message)
      }
    },
    take: (): Promise<string> => {
      const message = buffered.shift()
      if (message !== undefined) return Promise.resolve(message)
      return new Promise((resolve) => {
        waiting = resolve
      })
    }
  }
}

/**
 * W4: microseconds to deliver one later update (into the chat, then one reply) with `history`
 * items already in the chat (the agent's chat context and the session history both hold them).
 */
export const w4 = async (history: number, updates: number): Promise<number> => {
  let replied = signal()
  const session = makeSession({ onReply: () => replied.resolve() })
  const items = Array.from(
    { length: history },
    (_, i) => llm.ChatMessage.create({ role: i % 2 === 0 ? "user" : "assistant", content: [`message ${i}`] })
  )
  session.agent.chatCtx = new llm.ChatContext(items.slice())
  session.history.items = items.slice()
  const executor = new ToolExecutor()
  const messages = mailbox()
  const stream = llm.tool({
    name: "stream",
    description: "Streams progress",
    parameters: Parameters,
    execute: async (_, { ctx }) => {
      await ctx.update("started")
      while (true) await ctx.update(await messages.take())
    }
  })
  const [call] = makeCalls(1, "stream")
  expect(isFirstUpdate(await execute(executor, stream, session, call!)), "peer W4: the call runs in the background")
  const t0 = performance.now()
  for (let i = 0; i < updates; i++) {
    messages.offer(`progress ${i}`)
    await replied.promise
    replied = signal()
  }
  const us = ((performance.now() - t0) * 1000) / updates
  expect(session.agent.chatCtx.items.length === history + 2 * updates, "peer W4: every update is in the chat")
  await close(executor)
  return us
}

/**
 * W5: `n` final results arrive while the agent is busy; the agent becomes idle once they are all in
 * the chat. Milliseconds from the results' release to the end of the reply, and the reply count.
 */
export const w5 = async (n: number): Promise<{ readonly ms: number; readonly replies: number }> => {
  let updated = 0
  const allUpdated = signal()
  const session = makeSession({
    onChatUpdate: () => {
      if (++updated === n) allUpdated.resolve()
    }
  })
  const executor = new ToolExecutor()
  const release = signal()
  const outputs = await launch(executor, blocked(release.promise), session, makeCalls(n, "wait"))
  expect(outputs.every(isFirstUpdate), "peer W5: every call returned at its first update")
  session.setBusy()
  const t0 = performance.now()
  release.resolve()
  await allUpdated.promise
  while (session.history.items.length < 2 * n) await tick() // the last insertions settle
  session.setIdle()
  await executor.waitForAll()
  const ms = performance.now() - t0
  expect(session.agent.chatCtx.items.length === 2 * n, "peer W5: every final is in the chat")
  await close(executor)
  return { ms, replies: session.replies() }
}

/** W6: milliseconds to cancel `n` running calls one by one, until every tool has stopped. */
export const w6 = async (n: number): Promise<number> => {
  const session = makeSession()
  const executor = new ToolExecutor()
  let stopped = 0
  const allStopped = signal()
  const tool = blocked(new Promise(() => {}), () => {
    if (++stopped === n) allStopped.resolve()
  })
  const calls = makeCalls(n, "wait")
  await launch(executor, tool, session, calls)
  let cancelled = 0
  const t0 = performance.now()
  for (const call of calls) {
    if (await executor.cancel(call.callId)) cancelled++
  }
  await allStopped.promise
  const ms = performance.now() - t0
  expect(cancelled === n, `peer W6: ${cancelled} of ${n} cancelled`)
  expect(!executor.hasRunningTasks, "peer W6: nothing left running")
  await close(executor)
  return ms
}
