/**
 * Run before each test file (vitest's `setupFiles`). The test files of a worker share their modules
 * (`isolate: false` in vitest.config.ts: importing Effect and src/ once per worker, not once per
 * file, halves the quick tier's time), so what test/support keeps per file is reset here: the
 * durable kind's store (test/support/toolsets.ts) is closed after the file's tests.
 */
import { afterAll } from "@effect/vitest"
import { closeFileStore } from "./toolsets.ts"

afterAll(() => closeFileStore())
