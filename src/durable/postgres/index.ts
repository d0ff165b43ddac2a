/**
 * The durable store on PostgreSQL with several runner processes (`@effect/sql-pg`, and
 * effect/cluster runners over sockets from `@effect/platform-node`).
 *
 * @since 0.1.0
 */
export * as DurablePostgres from "./DurablePostgres.ts"
