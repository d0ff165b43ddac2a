/**
 * SQL statements and commits as a client sends them, for `bench/durable.ts`: counts that do not
 * depend on the machine's load.
 *
 * - PGlite: the instance's `query` and `exec` are wrapped (every statement `PgliteClient` sends,
 *   transaction control included, goes through one of them).
 * - PostgreSQL: `@effect/sql-pg` speaks the wire protocol itself (no `pg` driver to hook), so the
 *   frontend messages are read as they are written to a socket (`net.Socket.prototype.write`): a
 *   socket whose first message is PostgreSQL's startup (or SSL) request is followed; each `Execute`
 *   (extended protocol: its statement's text from the `Parse` that named it) and each simple
 *   `Query` is a statement. Nothing is read from the server's logs.
 *
 * A statement is counted when it is sent. Commits: each `COMMIT`, plus each statement outside a
 * transaction block that writes (`INSERT`, `UPDATE`, `DELETE`: autocommit); a read outside a
 * transaction commits nothing durable and is not counted.
 */
import * as net from "node:net"
import type { PgliteClient } from "effect-async-toolset/durable"

/** A statement's text with its literals, numbers and parameter lists folded (for the statement mix). */
export const normalize = (sql: string): string =>
  sql
    .replace(/\s+/g, " ")
    .replace(/'[^']*'/g, "?")
    .replace(/\b\d+\b/g, "N")
    .replace(/\((\?|N)(, ?(\?|N))+\)/g, "(…)")
    .replace(/\$N(, ?\$N)+/g, "$…")
    .trim()

export interface Tally {
  readonly statements: number
  readonly commits: number
  /** Statements by normalized text. */
  readonly byText: ReadonlyMap<string, number>
}

interface Kind {
  /** The text, normalized, as `byText` keys it. */
  readonly key: string
  readonly control: "begin" | "commit" | "rollback" | undefined
  /** An `INSERT`, `UPDATE` or `DELETE` (a commit of its own outside a transaction). */
  readonly writes: boolean
}

/**
 * What a statement's text is, worked out once per distinct text: the texts repeat (parameters
 * travel apart), and the counter runs inside the timed calls, so its cost per statement is a map
 * lookup, not a few regular expressions over a long text.
 */
const kinds = new Map<string, Kind>()

const classify = (sql: string): Kind => {
  let kind = kinds.get(sql)
  if (kind === undefined) {
    const head = sql.trimStart().slice(0, 40).toUpperCase()
    kind = {
      key: normalize(sql).slice(0, 160),
      control: /^(BEGIN|START TRANSACTION)\b/.test(head)
        ? "begin"
        : /^(COMMIT|END)\b/.test(head)
        ? "commit"
        : /^ROLLBACK\b/.test(head) && !/^ROLLBACK\s+TO\b/.test(head)
        ? "rollback"
        : undefined,
      writes: /\b(INSERT|UPDATE|DELETE)\b/i.test(sql)
    }
    if (kinds.size < 10_000) kinds.set(sql, kind)
  }
  return kind
}

/** Every statement sent (by the sources installed below), and when the last one was. */
export class Counter {
  statements = 0
  commits = 0
  /** `performance.now()` of the latest statement. */
  last = 0
  byText = new Map<string, number>()
  private readonly inTransaction = new WeakMap<object, boolean>()

  /** A statement `sql` sent on `connection` (the PGlite instance, or the socket). */
  record(connection: object, sql: string): void {
    this.statements++
    this.last = performance.now()
    const kind = classify(sql)
    this.byText.set(kind.key, (this.byText.get(kind.key) ?? 0) + 1)
    if (kind.control === "begin") this.inTransaction.set(connection, true)
    else if (kind.control === "commit") {
      this.inTransaction.set(connection, false)
      this.commits++
    } else if (kind.control === "rollback") this.inTransaction.set(connection, false)
    else if (kind.writes && !this.inTransaction.get(connection)) this.commits++
  }

  /** The counts so far (a copy). */
  snapshot(): Tally {
    return { statements: this.statements, commits: this.commits, byText: new Map(this.byText) }
  }
}

/** What was sent between two snapshots. */
export const since = (before: Tally, after: Tally): Tally => {
  const byText = new Map<string, number>()
  for (const [key, n] of after.byText) {
    const d = n - (before.byText.get(key) ?? 0)
    if (d > 0) byText.set(key, d)
  }
  return { statements: after.statements - before.statements, commits: after.commits - before.commits, byText }
}

export const counter = new Counter()

// --- PGlite --------------------------------------------------------------------------------------

const wrapped = new WeakSet<object>()

/**
 * BENCH_DURABLE_STATEMENT_MS=1: how long PGlite takes over each kind of statement (from the call
 * until its promise settles; PGlite runs one query at a time, so with several in flight this
 * includes waiting for the others: read it from sequential runs). Off by default: it adds a promise
 * callback to every statement.
 */
export const statementMs = process.env["BENCH_DURABLE_STATEMENT_MS"] === "1"
  ? new Map<string, { ms: number; n: number }>()
  : undefined

const timed = <A>(sql: string, run: () => Promise<A>): Promise<A> => {
  if (statementMs === undefined) return run()
  const t0 = performance.now()
  const done = () => {
    const key = classify(sql).key
    const entry = statementMs.get(key) ?? { ms: 0, n: 0 }
    entry.ms += performance.now() - t0
    entry.n++
    statementMs.set(key, entry)
  }
  const promise = run()
  promise.then(done, done)
  return promise
}

/** Counts the statements of a PGlite instance from now on. */
export const countPglite = (pglite: PgliteClient.Pglite): void => {
  if (wrapped.has(pglite)) return
  wrapped.add(pglite)
  const query = pglite.query.bind(pglite)
  const exec = pglite.exec.bind(pglite)
  Object.defineProperty(pglite, "query", {
    configurable: true,
    writable: true,
    value: (sql: string, ...rest: Array<never>) => {
      counter.record(pglite, sql)
      return timed(sql, () => query(sql, ...rest))
    }
  })
  Object.defineProperty(pglite, "exec", {
    configurable: true,
    writable: true,
    value: (sql: string, ...rest: Array<never>) => {
      counter.record(pglite, sql)
      return timed(sql, () => exec(sql, ...rest))
    }
  })
}

// --- PostgreSQL's wire protocol ------------------------------------------------------------------

interface Wire {
  pending: Buffer
  /** Past the startup message: every message has a type byte. */
  typed: boolean
  /** Prepared statements by name ("" the unnamed one). */
  readonly statements: Map<string, string>
  /** The statement the latest `Bind` bound. */
  bound: string
}

/** Sockets being followed (a PostgreSQL session), or `null`: not one. */
const sockets = new WeakMap<object, Wire | null>()

const STARTUP = 196608
const SSL_REQUEST = 80877103
const GSS_REQUEST = 80877104

const cstring = (body: Buffer, at: number): readonly [string, number] => {
  const end = body.indexOf(0, at)
  const stop = end < 0 ? body.length : end
  return [body.toString("utf8", at, stop), stop + 1]
}

const observe = (socket: object, chunk: Uint8Array): void => {
  let wire = sockets.get(socket)
  if (wire === null) return
  if (wire === undefined) {
    const code = chunk.length >= 8 ? Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).readInt32BE(4) : -1
    if (code !== STARTUP && code !== SSL_REQUEST && code !== GSS_REQUEST) {
      sockets.set(socket, null)
      return
    }
    wire = { pending: Buffer.alloc(0), typed: false, statements: new Map(), bound: "" }
    sockets.set(socket, wire)
  }
  let buf = wire.pending.length === 0
    ? Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
    : Buffer.concat([wire.pending, chunk])
  for (;;) {
    if (!wire.typed) {
      if (buf.length < 8) break
      const length = buf.readInt32BE(0)
      if (buf.length < length) break
      if (buf.readInt32BE(4) === STARTUP) wire.typed = true
      buf = buf.subarray(length)
      continue
    }
    if (buf.length < 5) break
    const length = buf.readInt32BE(1)
    if (buf.length < 1 + length) break
    const type = String.fromCharCode(buf[0]!)
    const body = buf.subarray(5, 1 + length)
    buf = buf.subarray(1 + length)
    if (type === "P") {
      const [name, at] = cstring(body, 0)
      const [text] = cstring(body, at)
      wire.statements.set(name, text)
    } else if (type === "B") {
      const [, at] = cstring(body, 0)
      const [name] = cstring(body, at)
      wire.bound = name
    } else if (type === "E") {
      counter.record(socket, wire.statements.get(wire.bound) ?? "(unknown prepared statement)")
    } else if (type === "Q") {
      counter.record(socket, cstring(body, 0)[0])
    }
  }
  // keep what is left (a message split over writes), copied off the caller's buffer
  wire.pending = buf.length === 0 ? Buffer.alloc(0) : Buffer.from(buf)
}

let installed = false

/** Counts the statements every PostgreSQL client of this process sends from now on. */
export const countPostgres = (): void => {
  if (installed) return
  installed = true
  const write = net.Socket.prototype.write
  net.Socket.prototype.write = function(this: net.Socket, chunk: unknown, ...rest: Array<unknown>) {
    if (chunk instanceof Uint8Array) {
      try {
        observe(this, chunk)
      } catch {
        sockets.set(this, null)
      }
    }
    return (write as (...args: Array<unknown>) => boolean).call(this, chunk, ...rest)
  } as typeof write
}
