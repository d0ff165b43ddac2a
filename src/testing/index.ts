/**
 * Test kit: an in-memory `AgentSession` a test controls.
 *
 * @since 0.1.0
 */
export * as TestSession from "./TestSession.ts"
