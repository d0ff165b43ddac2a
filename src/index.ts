/**
 * effect-async-toolset: long-running tool calls for LLM agents, on Effect.
 *
 * @since 0.1.0
 */
export * as AgentEvent from "./agent/AgentEvent.ts"
export * as AgentSession from "./AgentSession.ts"
export * as AiAgent from "./agent/AiAgent.ts"
export * as AsyncRunContext from "./AsyncRunContext.ts"
export * as AsyncToolset from "./AsyncToolset.ts"
export * as ChatContext from "./ChatContext.ts"
export * as FunctionTool from "./FunctionTool.ts"
export * as PromptConversion from "./agent/PromptConversion.ts"
export * as Prompts from "./Prompts.ts"
export * as ToolError from "./ToolError.ts"
export * as ToolsetEvent from "./ToolsetEvent.ts"
