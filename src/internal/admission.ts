/**
 * Admission: may a new call start, given the calls of its duplicate key that are running?
 *
 * Pure functions over plain data, so the policy can be read and tested on its own. The engine
 * applies a decision in the same synchronous step in which it was made, so the check and the
 * registration of the new call are one atomic step (rule D5).
 */
import type { DuplicateMode } from "../FunctionTool.ts"

/** What admission needs to know of a running call. */
export interface Running {
  readonly cancellable: boolean
}

/**
 * - `Start`: run the new call now, alongside the others (`allow`, a confirmed duplicate, or
 *   nothing running).
 * - `Replace`: stop `replaced` first; the new call starts once every call of its key has stopped.
 * - `Reject`: do not run it. `duplicate` (mode `reject`), `unconfirmed` (mode `confirm` without the
 *   flag), `not-cancellable` (mode `replace`, but some running call may not be cancelled:
 *   `running` lists those).
 */
export type Decision<C> =
  | { readonly _tag: "Start" }
  | { readonly _tag: "Replace"; readonly replaced: ReadonlyArray<C> }
  | {
    readonly _tag: "Reject"
    readonly reason: "duplicate" | "unconfirmed" | "not-cancellable"
    readonly running: ReadonlyArray<C>
  }

const start: Decision<never> = { _tag: "Start" }

/**
 * Decides what happens to a new call of a key whose `running` calls (admitted and not cancelled,
 * oldest first) are still going, under the tool's duplicate `mode`. `confirmed`: the model set the
 * confirmation flag.
 */
export const decide = <C extends Running>(
  mode: DuplicateMode,
  confirmed: boolean,
  running: ReadonlyArray<C>
): Decision<C> => {
  if (running.length === 0) return start
  switch (mode) {
    case "allow":
      return start
    case "reject":
      return { _tag: "Reject", reason: "duplicate", running }
    case "confirm":
      return confirmed ? start : { _tag: "Reject", reason: "unconfirmed", running }
    case "replace": {
      const stuck = running.filter((call) => !call.cancellable)
      return stuck.length > 0
        ? { _tag: "Reject", reason: "not-cancellable", running: stuck }
        : { _tag: "Replace", replaced: running }
    }
  }
}
