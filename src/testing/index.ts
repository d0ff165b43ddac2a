/**
 * Test kit: an in-memory `AgentSession` a test controls, and a scripted `LanguageModel`.
 *
 * @since 0.1.0
 */
export * as ScriptedModel from "./ScriptedModel.ts"
export * as TestSession from "./TestSession.ts"
