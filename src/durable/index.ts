/**
 * Durable background tool calls: a toolset whose calls run as effect/workflow executions and a
 * chat kept in the same SQL store, so a call survives a crash and its result is told exactly once.
 * Its dependencies (effect's workflow, cluster and sql modules; PGlite for the embedded store) are
 * loaded only through this entry point.
 *
 * @since 0.1.0
 */
export * as PgliteClient from "./PgliteClient.ts"
export * as DurableChat from "./DurableChat.ts"
export * as DurableStore from "./DurableStore.ts"
export * as DurableToolset from "./DurableToolset.ts"
