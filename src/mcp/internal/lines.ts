/**
 * One session over a pair of line streams (`McpToolsetServer.serveLines`, and through it
 * `serveStdio`): newline-delimited JSON-RPC in, each answer and notification one line out.
 */
import { Cause, Effect, Fiber, FiberMap, Queue, Stream } from "effect"
import type { Server, Session } from "../McpToolsetServer.ts"
import * as McpWire from "../McpWire.ts"
import * as Runs from "./runs.ts"

/** Serves one session of `server`: see `McpToolsetServer.serveLines`. */
export const serve = <E>(server: Server, options: {
  readonly input: Stream.Stream<string, E>
  readonly write: (line: string) => Effect.Effect<void>
  readonly owner?: string | undefined
}): Effect.Effect<void, E> => {
  const owner = options.owner ?? `lines:${Runs.randomHex()}`
  const session: Session = { owner, protocolVersion: undefined }
  return Effect.scoped(Effect.gen(function*() {
    // One writer: messages leave in the order they were made.
    const output = yield* Queue.unbounded<string, Cause.Done>()
    const writer = yield* Stream.fromQueue(output).pipe(
      Stream.runForEach(options.write),
      Effect.forkChild({ startImmediately: true })
    )
    const out = (message: McpWire.Notification | McpWire.Response): void => {
      Queue.offerUnsafe(output, JSON.stringify(message))
    }
    yield* server.attach(owner, out)
    const open = yield* FiberMap.make<string>()
    yield* options.input.pipe(
      Stream.runForEach((line) => {
        if (line.trim() === "") return Effect.void
        const incoming = McpWire.parse(line)
        switch (incoming._tag) {
          case "Invalid":
            return Effect.sync(() => out(McpWire.failure(incoming.id, incoming.error)))
          case "Response":
            return Effect.void // this server sends no requests
          case "Notification": {
            const { method, params } = incoming.message
            const id = params?.requestId
            if (method !== "notifications/cancelled" || (typeof id !== "string" && typeof id !== "number")) return Effect.void
            return Effect.map(FiberMap.get(open, keyOf(id)), (fiber) => {
              if (fiber._tag === "Some") fiber.value.interruptUnsafe()
            })
          }
          case "Request": {
            const request = incoming.message
            if (FiberMap.hasUnsafe(open, keyOf(request.id))) {
              // A reused id would make two answers with one id, and its cancel ambiguous: refused,
              // the open request left alone.
              return Effect.sync(() =>
                out(McpWire.failure(request.id, {
                  code: McpWire.ErrorCode.invalidRequest,
                  message: `Invalid request: the id ${JSON.stringify(request.id)} is already used by a request still open`
                }))
              )
            }
            return Effect.asVoid(FiberMap.run(
              open,
              keyOf(request.id),
              Effect.flatMap(server.handle(session, request, out), (response) => Effect.sync(() => out(response)))
            ))
          }
        }
      })
    )
    // The client closed its side: what is still open is abandoned; what was answered is written.
    yield* FiberMap.clear(open)
    if (options.owner === undefined) yield* server.endSession(owner)
    yield* Queue.end(output)
    yield* Fiber.join(writer)
  }))
}

const keyOf = (id: McpWire.RequestId): string => `${typeof id}:${id}`
