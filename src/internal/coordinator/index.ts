/**
 * The reply coordinator of a session (see `coordinator.ts` for what it is, `round.ts` for what its
 * fiber does).
 */
import type { Effect } from "effect"
import * as Data from "./coordinator.ts"
import { run } from "./round.ts"

export {
  begin,
  callBegan,
  callPort,
  callEnded,
  claimBase,
  claimSynthetic,
  closeOwner,
  dropped,
  handOver,
  inserted,
  isTaken,
  letGo,
  noteBase,
  noteCallId,
  release,
  settle
} from "./coordinator.ts"
export type { CallState, Coordinator, DropReason, Item, Owner, ReplyHooks, ReplyPolicy } from "./coordinator.ts"

/** The session's coordinator, joined by `owner` (made, and its fiber started, by the first toolset). */
export const acquire = (session: Data.Session, owner: Data.Owner): Effect.Effect<Data.Coordinator> =>
  Data.acquire(session, owner, run)
