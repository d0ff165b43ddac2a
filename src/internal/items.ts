/**
 * Chat items the library builds from values it made itself (ids, clock times, texts): they are
 * valid by construction, so they skip the schema pass a public constructor runs (about half the
 * cost of an item, and items are made on every call). The result is the same as `new X(...)`:
 * same prototype, same own fields in the schema's order, so equality, guards and encoding agree.
 */
import { ChatMessage, FunctionCall, FunctionCallOutput } from "../ChatContext.ts"
import type { ChatItem } from "../ChatContext.ts"

const build = <A>(proto: object, fields: object): A => Object.assign(Object.create(proto), fields) as A

/** A function call, with `_tag` and fields in the schema's order. */
export const functionCall = (
  id: string,
  callId: string,
  name: string,
  args: string,
  createdAt: number
): FunctionCall =>
  build(FunctionCall.prototype, { _tag: "FunctionCall", id, callId, name, arguments: args, createdAt })

/** A function call output; `extra` only when given. */
export const functionCallOutput = (
  id: string,
  callId: string,
  name: string,
  output: string,
  isError: boolean,
  createdAt: number,
  extra?: Record<string, unknown>
): FunctionCallOutput =>
  build(
    FunctionCallOutput.prototype,
    extra === undefined
      ? { _tag: "FunctionCallOutput", id, callId, name, output, isError, createdAt }
      : { _tag: "FunctionCallOutput", id, callId, name, output, isError, createdAt, extra }
  )

/** The same item, stamped with another creation time. */
export const withCreatedAt = (item: ChatItem, createdAt: number): ChatItem => {
  switch (item._tag) {
    case "ChatMessage":
      return build<ChatMessage>(ChatMessage.prototype, {
        _tag: "ChatMessage",
        id: item.id,
        role: item.role,
        content: item.content,
        createdAt
      })
    case "FunctionCall":
      return build<FunctionCall>(FunctionCall.prototype, {
        _tag: "FunctionCall",
        id: item.id,
        callId: item.callId,
        name: item.name,
        arguments: item.arguments,
        createdAt,
        ...(item.extra === undefined ? {} : { extra: item.extra })
      })
    case "FunctionCallOutput":
      return build<FunctionCallOutput>(FunctionCallOutput.prototype, {
        _tag: "FunctionCallOutput",
        id: item.id,
        callId: item.callId,
        name: item.name,
        output: item.output,
        isError: item.isError,
        createdAt,
        ...(item.extra === undefined ? {} : { extra: item.extra })
      })
  }
}
