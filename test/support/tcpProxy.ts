/**
 * A TCP proxy on 127.0.0.1 in front of a server (the test's PostgreSQL), for outage tests: it can
 * refuse new connections for a while (they are closed as soon as they arrive, as a database
 * restarting or out of connection slots does) and drop the open ones.
 */
import { connect, createServer } from "node:net"
import type { Socket } from "node:net"
import { Effect } from "effect"
import type { Scope } from "effect"

export interface TcpProxy {
  /** Where to connect: the proxy's port on 127.0.0.1. */
  readonly port: number
  /**
   * Refuses every new connection from now on, until `accept`; the open ones go on. `close` closes
   * it at once; `fatal` answers its startup as PostgreSQL does when it cannot take it (`FATAL
   * 57P03 the database system is starting up`) and closes it; `hang` never answers it (a host
   * that does not reply), until `accept` closes it.
   */
  readonly refuse: (how?: "close" | "fatal" | "hang") => void
  /** Lets new connections through again. */
  readonly accept: () => void
  /** Closes every open connection (both ends). */
  readonly dropAll: () => void
  /**
   * Closes the open connections whose client has not sent `text` (both ends), and keeps the
   * others: `dropAllBut("advisory")` keeps a runner's shard-lock session (effect/cluster's
   * `pg_advisory_lock` statements), so the runner keeps its shards while its pool loses its
   * connections. How many were closed.
   */
  readonly dropAllBut: (text: string) => number
  /** How many connections were refused so far. */
  readonly refused: () => number
  /** Refuses new connections while `n` are open (a server with few connection slots); `undefined`: no limit. */
  readonly limit: (n: number | undefined) => void
}

/** A proxy to `target` for the scope. */
export const make = (target: { readonly host: string; readonly port: number }): Effect.Effect<TcpProxy, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<{ readonly proxy: TcpProxy; readonly close: () => void }>((resume) => {
      const open = new Set<Socket>()
      // each client's upstream, and what the client sent so far (for `dropAllBut`)
      const pairs = new Map<Socket, { readonly upstream: Socket; sent: string }>()
      let refusing: "close" | "fatal" | "hang" | undefined
      let refused = 0
      let max: number | undefined
      const hanging = new Set<Socket>()
      const server = createServer((client) => {
        const how = refusing ?? (max !== undefined && open.size / 2 >= max ? "close" : undefined)
        if (how !== undefined) {
          refused++
          if (how === "close") return client.destroy()
          if (how === "hang") {
            hanging.add(client)
            client.on("error", () => hanging.delete(client))
            return
          }
          client.on("error", () => {})
          return client.once("data", () => client.end(fatal))
        }
        const upstream = connect(target.port, target.host)
        open.add(client)
        open.add(upstream)
        const pair = { upstream, sent: "" }
        pairs.set(client, pair)
        client.on("data", (chunk: Buffer) => {
          // enough to find a statement's words; the binary parts read as latin1 do no harm
          if (pair.sent.length < 1_000_000) pair.sent += chunk.toString("latin1")
        })
        const close = () => {
          client.destroy()
          upstream.destroy()
          open.delete(client)
          open.delete(upstream)
          pairs.delete(client)
        }
        client.on("error", close).on("close", close)
        upstream.on("error", close).on("close", close)
        client.pipe(upstream)
        upstream.pipe(client)
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as { port: number }
        const dropAll = () => {
          for (const socket of open) socket.destroy()
          open.clear()
        }
        resume(Effect.succeed({
          proxy: {
            port,
            refuse: (how = "close") => {
              refusing = how
            },
            accept: () => {
              refusing = undefined
              for (const socket of hanging) socket.destroy()
              hanging.clear()
            },
            dropAll,
            dropAllBut: (text) => {
              let dropped = 0
              for (const [client, { sent, upstream }] of [...pairs]) {
                if (sent.includes(text)) continue
                dropped++
                client.destroy()
                upstream.destroy()
              }
              return dropped
            },
            refused: () => refused,
            limit: (n) => {
              max = n
            }
          },
          close: () => {
            for (const socket of hanging) socket.destroy()
            dropAll()
            server.close()
          }
        }))
      })
    }),
    ({ close }) => Effect.sync(close)
  ).pipe(Effect.map(({ proxy }) => proxy))

/** A PostgreSQL ErrorResponse: FATAL 57P03, "the database system is starting up". */
const fatal = (() => {
  const fields = Buffer.from("SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0", "utf8")
  const head = Buffer.alloc(5)
  head.write("E", 0)
  head.writeInt32BE(fields.length + 4, 1)
  return Buffer.concat([head, fields])
})()

/** `url` with its host and port replaced by the proxy's. */
export const through = (url: string, proxy: TcpProxy): string => {
  const u = new URL(url)
  u.hostname = "127.0.0.1"
  u.port = String(proxy.port)
  return u.toString()
}
