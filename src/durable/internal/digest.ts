/**
 * The Web Crypto the workflow engine hashes with (execution ids, activity keys), with SHA digests
 * computed by `node:crypto` at once: the same digests as `crypto.subtle`, without its round trip
 * to a worker thread on every call started.
 */
import { createHash } from "node:crypto"
import { WebCrypto } from "effect/crypto/WebCrypto"

type Crypto = typeof globalThis.crypto

const algorithms: Record<string, string> = { "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512" }

const digest = (algorithm: string | { readonly name: string }, data: ArrayBufferView | ArrayBuffer): Promise<ArrayBuffer> => {
  const name = typeof algorithm === "string" ? algorithm : algorithm.name
  const node = algorithms[name.toUpperCase()]
  if (node === undefined) return globalThis.crypto.subtle.digest(algorithm as never, data as never)
  const bytes = ArrayBuffer.isView(data)
    ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    : new Uint8Array(data)
  const out = createHash(node).update(bytes).digest()
  return Promise.resolve(out.buffer.slice(out.byteOffset, out.byteOffset + out.byteLength) as ArrayBuffer)
}

const subtle = new Proxy(globalThis.crypto.subtle, {
  get: (target, property) => property === "digest" ? digest : Reflect.get(target, property, target)
})

/** `globalThis.crypto`, its SHA digests computed at once. */
export const crypto: Crypto = new Proxy(globalThis.crypto, {
  get: (target, property) => property === "subtle" ? subtle : Reflect.get(target, property, target)
})

export { WebCrypto }
