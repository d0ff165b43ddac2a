/**
 * How the Effect sides' drivers hand a value to a waiting fiber in W4, as the peer's driver does
 * with a promise: the taker resumes as soon as the value is offered. An Effect `Queue` resumes its
 * taker through the scheduler (a macrotask hop per hand-over), which would measure the driver, not
 * the delivery.
 */
import { Deferred, Effect, Exit } from "effect"

export interface Mailbox<A> {
  readonly offer: (value: A) => void
  readonly take: Effect.Effect<A>
}

export const make = <A>(): Mailbox<A> => {
  const values: Array<A> = []
  let waiting: Deferred.Deferred<A> | undefined
  return {
    offer: (value) => {
      const taker = waiting
      if (taker === undefined) return void values.push(value)
      waiting = undefined
      Deferred.doneUnsafe(taker, Exit.succeed(value))
    },
    take: Effect.suspend(() =>
      values.length > 0 ? Effect.succeed(values.shift()!) : Deferred.await(waiting = Deferred.makeUnsafe<A>())
    )
  }
}
