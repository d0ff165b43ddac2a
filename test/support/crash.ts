/**
 * Starting and killing the crash tests' child process (test/crash/child.ts), and reading what it
 * left: the marks file (what ran, across processes) and the report of the process that finished.
 */
import { spawn } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"

const root = join(import.meta.dirname, "..", "..")

/** A child process of the crash tests, with its output so far. */
export interface Child {
  readonly process: ChildProcess
  /** Everything it printed (stdout and stderr). */
  output: string
  /** Resolves with its exit code (or signal name) when it ends. */
  readonly exited: Promise<number | string>
}

/** Starts the child with `env` (on top of this process's environment). */
export const start = (env: Record<string, string>): Child => {
  const child = spawn(process.execPath, ["--import", "tsx", "--conditions=effect-async-toolset-source", "test/crash/child.ts"], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  const self: Child = {
    process: child,
    output: "",
    exited: new Promise((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal ?? "unknown")))
  }
  child.stdout!.on("data", (data: Buffer) => self.output += data.toString())
  child.stderr!.on("data", (data: Buffer) => self.output += data.toString())
  return self
}

/** Resolves once the child printed a line matching `pattern`; rejects after `seconds` or if it ends first. */
export const waitFor = (child: Child, pattern: RegExp, seconds = 60): Promise<RegExpExecArray> =>
  new Promise((resolve, reject) => {
    const started = Date.now()
    const check = () => {
      const found = pattern.exec(child.output)
      if (found !== null) return resolve(found)
      if (child.process.exitCode !== null || child.process.signalCode !== null) {
        return reject(new Error(`the child ended before printing ${pattern}:\n${tail(child.output)}`))
      }
      if (Date.now() - started > seconds * 1000) {
        return reject(new Error(`the child did not print ${pattern} within ${seconds} s:\n${tail(child.output)}`))
      }
      setTimeout(check, 20)
    }
    check()
  })

/** Kills the child with SIGKILL and waits until it is gone. */
export const kill = async (child: Child): Promise<void> => {
  child.process.kill("SIGKILL")
  const ended = await child.exited
  if (ended !== "SIGKILL") throw new Error(`the child ended with ${ended}, not by SIGKILL:\n${tail(child.output)}`)
}

/** Waits for the child to end by itself (within `seconds`, else kills it) and returns its report. */
export const finish = async (child: Child, seconds = 120): Promise<Report> => {
  const timer = setTimeout(() => child.process.kill("SIGKILL"), seconds * 1000)
  const ended = await child.exited
  clearTimeout(timer)
  if (ended !== 0) throw new Error(`the child ended with ${ended}:\n${tail(child.output)}`)
  const line = /^REPORT (.*)$/m.exec(child.output)
  if (line === null) throw new Error(`the child printed no report:\n${tail(child.output)}`)
  return JSON.parse(line[1]!) as Report
}

/** What a child that finished saw: the agent's chat and the calls still running. */
export interface Report {
  readonly chat: ReadonlyArray<{
    readonly tag: "ChatMessage" | "FunctionCall" | "FunctionCallOutput"
    readonly id: string
    readonly role?: string
    readonly content?: string
    readonly callId?: string
    readonly output?: string
  }>
  readonly running: ReadonlyArray<{ readonly callId: string }>
}

/** The lines of the marks file (what ran, in order, across the processes). */
export const marks = (path: string): ReadonlyArray<string> =>
  existsSync(path) ? readFileSync(path, "utf8").split("\n").filter((line) => line !== "") : []

/** How many chat items of `tag` have call id `callId`. */
export const count = (report: Report, tag: "FunctionCall" | "FunctionCallOutput", callId: string): number =>
  report.chat.filter((item) => item.tag === tag && item.callId === callId).length

/** The call ids named by the reply requests in the marks, each as often as it was named. */
export const repliedCallIds = (lines: ReadonlyArray<string>): ReadonlyArray<string> =>
  lines.filter((line) => line.startsWith("reply ")).flatMap((line) => line.slice("reply ".length).split(", "))

const tail = (output: string): string => output.split("\n").slice(-40).join("\n")
