/**
 * An effect `SqlClient` over PGlite (`@electric-sql/pglite`): PostgreSQL compiled to WebAssembly,
 * running inside the process, its data in a folder. It is the durable toolset's embedded store:
 * no server to run, and the same SQL dialect as a real PostgreSQL, so one set of queries serves
 * both.
 *
 * No published driver loads on effect 4.1 (`@effect/sql-pglite` 4.0 betas import
 * `effect/unstable/*`), so this is a small one of our own: statements and transactions go to
 * PGlite's single session one at a time, errors are classified by their SQLSTATE code, and
 * `driver` is `"pglite"` (effect/cluster's runner storage reads it: it takes its shard locks as
 * table rows there, since a single session has no advisory locks to share).
 *
 * `@electric-sql/pglite` is an optional peer dependency, loaded when a client is made. These
 * declarations do not name its types (`Pglite` and `PgliteOptions` are our own, the part we use):
 * PGlite's declarations need `@types/emscripten`, which it does not install, so naming them would
 * break a consumer's type check with `skipLibCheck: false`.
 *
 * @since 0.1.0
 */
import { mkdirSync } from "node:fs"
import { Context, Effect, Layer, Semaphore, Stream } from "effect"
import type { Scope } from "effect"
import * as Reactivity from "effect/reactivity/Reactivity"
import * as SqlClient from "effect/sql/SqlClient"
import type { Connection } from "effect/sql/SqlConnection"
import {
  AuthenticationError,
  AuthorizationError,
  ConnectionError,
  ConstraintError,
  DeadlockError,
  LockTimeoutError,
  SerializationError,
  SqlError,
  SqlSyntaxError,
  StatementTimeoutError,
  UniqueViolation,
  UnknownError
} from "effect/sql/SqlError"
import * as Statement from "effect/sql/Statement"

/**
 * What the client uses of a PGlite instance: a `PGlite` of `@electric-sql/pglite` (its
 * `PGliteInterface`) has all of it and passes as is.
 *
 * @since 0.1.0
 * @category models
 */
export interface Pglite {
  readonly closed: boolean
  query<T = Record<string, unknown>>(
    sql: string,
    params?: Array<unknown>,
    options?: QueryOptions
  ): Promise<{ readonly rows: Array<T> }>
  /** Text of several statements without parameters, run whole; a result per statement. */
  exec(sql: string, options?: QueryOptions): Promise<Array<{ readonly rows: Array<unknown> }>>
  close(): Promise<void>
}

/**
 * The options of `Pglite.query` the client sets.
 *
 * @since 0.1.0
 * @category models
 */
export interface QueryOptions {
  readonly rowMode?: "array" | "object" | undefined
}

/**
 * Options passed to `new PGlite(...)` as they are (see PGlite's `PGliteOptions`); `dataDir` is
 * set from `Options.dataDir`.
 *
 * @since 0.1.0
 * @category models
 */
export interface PgliteOptions {
  readonly username?: string
  readonly database?: string
  readonly debug?: 0 | 1 | 2 | 3 | 4 | 5
  readonly relaxedDurability?: boolean
  readonly initialMemory?: number
  readonly [option: string]: unknown
}

/**
 * A `SqlClient` on PGlite, with the PGlite instance it runs on.
 *
 * @since 0.1.0
 * @category models
 */
export interface PgliteClient extends SqlClient.SqlClient {
  readonly pglite: Pglite
}

/**
 * @since 0.1.0
 * @category services
 */
export const PgliteClient = Context.Service<PgliteClient>("effect-async-toolset/PgliteClient")

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * The folder PGlite keeps its data in; made (with its parents) if missing. Without it the
   * database lives in memory and is gone when the client closes.
   */
  readonly dataDir?: string | undefined
  /** Further PGlite options (`dataDir` above wins). */
  readonly pglite?: PgliteOptions | undefined
}

// --- errors --------------------------------------------------------------------------------------

const codeOf = (cause: unknown): string =>
  typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string" ? cause.code : ""

const constraintOf = (cause: unknown): string =>
  typeof cause === "object" && cause !== null && "constraint" in cause && typeof cause.constraint === "string"
    ? cause.constraint
    : "unknown"

/**
 * A PostgreSQL error as effect's `SqlError`, by its SQLSTATE code (PGlite's errors carry it in
 * `code`, like a server's).
 *
 * @since 0.1.0
 * @category errors
 */
export const classifyError = (cause: unknown, message: string, operation: string): SqlError => {
  const props = { cause, message, operation }
  const code = codeOf(cause)
  const reason = code === "23505"
    ? new UniqueViolation({ ...props, constraint: constraintOf(cause) })
    : code.startsWith("23")
    ? new ConstraintError(props)
    : code.startsWith("08")
    ? new ConnectionError(props)
    : code.startsWith("28")
    ? new AuthenticationError(props)
    : code === "42501"
    ? new AuthorizationError(props)
    : code.startsWith("42")
    ? new SqlSyntaxError(props)
    : code === "40P01"
    ? new DeadlockError(props)
    : code === "40001"
    ? new SerializationError(props)
    : code === "55P03"
    ? new LockTimeoutError(props)
    : code === "57014"
    ? new StatementTimeoutError(props)
    : new UnknownError(props)
  return new SqlError({ reason })
}

const describe = (cause: unknown, sql: string): string => {
  const text = cause instanceof Error ? cause.message : String(cause)
  return `${text} (in: ${sql.length > 120 ? `${sql.slice(0, 120)}…` : sql})`
}

// --- the connection ------------------------------------------------------------------------------

type Rows = ReadonlyArray<any>
type Transform = (<A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined

const run = (pg: Pglite, operation: string, sql: string, params: ReadonlyArray<unknown>, array = false) =>
  Effect.tryPromise({
    try: () => pg.query<any>(sql, params as Array<unknown>, array ? { rowMode: "array" } : undefined),
    catch: (cause) => classifyError(cause, describe(cause, sql), operation)
  })

/** Text of several statements (a migration) without parameters: PGlite's `exec` runs it whole. */
const runScript = (pg: Pglite, sql: string) =>
  Effect.tryPromise({
    try: () => pg.exec(sql),
    catch: (cause) => classifyError(cause, describe(cause, sql), "executeUnprepared")
  })

const rowsOf = (result: { readonly rows: Rows }): Rows => result.rows
const transformed = (rows: Rows, transform: Transform): Rows => transform === undefined ? rows : transform(rows)

const makeConnection = (pg: Pglite): Connection => ({
  execute: (sql, params, transform) =>
    Effect.map(run(pg, "execute", sql, params), (r) => transformed(rowsOf(r), transform)),
  executeRaw: (sql, params) => run(pg, "executeRaw", sql, params),
  executeValues: (sql, params) => Effect.map(run(pg, "executeValues", sql, params, true), rowsOf),
  executeValuesUnprepared: (sql, params) => Effect.map(run(pg, "executeValuesUnprepared", sql, params, true), rowsOf),
  executeUnprepared: (sql, params, transform) =>
    // PGlite's `query` takes one statement; a parameterless text with several goes to `exec`.
    params.length === 0 && sql.includes(";")
      ? Effect.map(runScript(pg, sql), (results) => transformed(results.at(-1)?.rows ?? [], transform))
      : Effect.map(run(pg, "executeUnprepared", sql, params), (r) => transformed(rowsOf(r), transform)),
  // PGlite answers a query whole: the stream is its rows.
  executeStream: (sql, params, transform) =>
    Stream.fromArrayEffect(Effect.map(run(pg, "executeStream", sql, params), (r) => transformed(rowsOf(r), transform)))
})

// --- the client ----------------------------------------------------------------------------------

/**
 * The statement compiler for PostgreSQL's dialect (`$1` placeholders, double-quoted identifiers).
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeCompiler = (): Statement.Compiler =>
  Statement.makeCompiler({
    dialect: "pg",
    placeholder: (i) => `$${i}`,
    onIdentifier: escape,
    onRecordUpdate: (placeholders, alias, columns, values, returning) => [
      `(values ${placeholders}) AS ${alias}${columns}${returning ? ` RETURNING ${returning[0]}` : ""}`,
      returning ? values.flat().concat(returning[1]) : values.flat()
    ],
    onCustom: (type) => {
      throw new Error(`PgliteClient: the custom fragment "${String(type.kind)}" is not supported`)
    }
  })

const escape = Statement.defaultEscape("\"")

/**
 * A client on a PGlite instance the caller opened (and closes).
 *
 * PGlite is one database session: a transaction started by one fiber would take in the statements
 * of every other. So the session is leased: a transaction holds it from `BEGIN` to its end, and a
 * statement outside one holds it while it runs.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromPglite = (pglite: Pglite): Effect.Effect<PgliteClient, never, Reactivity.Reactivity> =>
  Effect.gen(function*() {
    const connection = makeConnection(pglite)
    const session = Semaphore.makeUnsafe(1)
    const lease = Effect.uninterruptibleMask((restore) => Effect.as(restore(session.takeScoped(1)), connection))
    const client = yield* SqlClient.make({
      acquirer: lease,
      transactionAcquirer: lease,
      borrower: (f) => session.withPermit(f(connection)),
      compiler: makeCompiler(),
      driver: "pglite",
      spanAttributes: [["db.system.name", "postgresql"]]
    })
    return Object.assign(client, { pglite })
  })

/**
 * Opens PGlite (in `dataDir`, or in memory) and a client on it; both close with the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<PgliteClient, SqlError, Reactivity.Reactivity | Scope.Scope> =>
  Effect.flatMap(
    Effect.acquireRelease(open(options), (pglite) => Effect.ignore(Effect.tryPromise(() => pglite.close()))),
    fromPglite
  )

const open = (options: Options): Effect.Effect<Pglite, SqlError> =>
  Effect.tryPromise({
    try: async () => {
      const { PGlite } = await import("@electric-sql/pglite")
      if (options.dataDir !== undefined) mkdirSync(options.dataDir, { recursive: true })
      const pglite = new PGlite({ ...options.pglite, ...(options.dataDir === undefined ? {} : { dataDir: options.dataDir }) })
      await pglite.waitReady
      return pglite
    },
    catch: (cause) =>
      new SqlError({
        reason: new ConnectionError({
          cause,
          message: `PGlite could not open ${options.dataDir ?? "an in-memory database"}: ${
            cause instanceof Error ? cause.message : String(cause)
          }`,
          operation: "connect"
        })
      })
  })

/**
 * The client as a layer: provides `PgliteClient` and `SqlClient`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { SqlClient } from "effect/sql"
 * import { PgliteClient } from "effect-async-toolset/durable"
 *
 * const program = Effect.gen(function*() {
 *   const sql = yield* SqlClient.SqlClient
 *   return yield* sql`SELECT 1 + 1 AS two`
 * }).pipe(Effect.provide(PgliteClient.layer({ dataDir: "./data/db" })))
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<PgliteClient | SqlClient.SqlClient, SqlError> =>
  Layer.effectContext(
    Effect.map(make(options), (client) => Context.make(PgliteClient, client).pipe(Context.add(SqlClient.SqlClient, client)))
  ).pipe(Layer.provide(Reactivity.layer))

/**
 * A client as a layer on a PGlite instance the caller opened (and closes): provides
 * `PgliteClient` and `SqlClient`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerFromPglite = (pglite: Pglite): Layer.Layer<PgliteClient | SqlClient.SqlClient> =>
  Layer.effectContext(
    Effect.map(fromPglite(pglite), (client) => Context.make(PgliteClient, client).pipe(Context.add(SqlClient.SqlClient, client)))
  ).pipe(Layer.provide(Reactivity.layer))
