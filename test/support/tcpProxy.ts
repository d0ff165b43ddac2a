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
  /** Closes every new connection from now on, until `accept`. The open ones go on. */
  readonly refuse: () => void
  /** Lets new connections through again. */
  readonly accept: () => void
  /** Closes every open connection (both ends). */
  readonly dropAll: () => void
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
      let refusing = false
      let refused = 0
      let max: number | undefined
      const server = createServer((client) => {
        if (refusing || (max !== undefined && open.size / 2 >= max)) {
          refused++
          client.destroy()
          return
        }
        const upstream = connect(target.port, target.host)
        open.add(client)
        open.add(upstream)
        const close = () => {
          client.destroy()
          upstream.destroy()
          open.delete(client)
          open.delete(upstream)
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
            refuse: () => {
              refusing = true
            },
            accept: () => {
              refusing = false
            },
            dropAll,
            refused: () => refused,
            limit: (n) => {
              max = n
            }
          },
          close: () => {
            dropAll()
            server.close()
          }
        }))
      })
    }),
    ({ close }) => Effect.sync(close)
  ).pipe(Effect.map(({ proxy }) => proxy))

/** `url` with its host and port replaced by the proxy's. */
export const through = (url: string, proxy: TcpProxy): string => {
  const u = new URL(url)
  u.hostname = "127.0.0.1"
  u.port = String(proxy.port)
  return u.toString()
}
