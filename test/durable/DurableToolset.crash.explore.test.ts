/**
 * Proof by killing processes, on the embedded store (PGlite, effect/cluster's SingleRunner): a
 * real child process runs a travel agent with a durable toolset; the user asks for a booking; the
 * process stops at a crash point and is killed with SIGKILL; a new process starts on the same data
 * folder. Then the booking's charge happened once, each update and the final result are in the
 * chat exactly once, each was asked about in exactly one reply, and no call is left running.
 *
 * The child stops at a crash point by freezing its thread (so the state is exactly that point's),
 * and the test kills it from outside. These tests take real time: about 10 to 20 seconds each.
 */
import { describe } from "@effect/vitest"
import { crashTests } from "../support/crash.ts"

describe("DurableToolset crash tests (embedded store, SIGKILL)", () => crashTests({ _tag: "pglite" }))
