// Child processes and polling for the end-to-end test. Nothing here sleeps to wait for
// something: every wait polls a condition until a deadline.
import { spawn } from 'node:child_process'
import { setTimeout as delay } from 'node:timers/promises'

/**
 * Polls `check` (sync or async; a truthy result ends the wait and is returned) every `everyMs`
 * until `timeoutMs` has passed, then throws with `what` and the last value or error seen.
 * An error with `fatal: true` thrown by `check` ends the wait at once.
 */
export async function eventually (what, check, { timeoutMs = 10_000, everyMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      const value = await check()
      if (value) return value
      last = value
    } catch (err) {
      if (err.fatal) throw err
      last = err
    }
    if (Date.now() >= deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${detail})`)
    }
    await delay(everyMs)
  }
}

// Children still running when this process exits (a crash, a test-runner timeout) are killed.
const live = new Set()
process.on('exit', () => { for (const child of live) child.kill('SIGKILL') })

/**
 * A child process whose stdout and stderr are kept (the last 64 KiB of each) for failure
 * messages, and which can wait for a line matching a pattern.
 */
export class Proc {
  constructor (name, command, args, options = {}) {
    this.name = name
    this.out = ''
    this.err = ''
    this.exited = null
    this.child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options })
    const keep = (key) => (chunk) => { this[key] = (this[key] + chunk.toString('utf8')).slice(-65536) }
    this.child.stdout.on('data', keep('out'))
    this.child.stderr.on('data', keep('err'))
    live.add(this.child)
    this.exitPromise = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => { live.delete(this.child); this.exited = { code, signal }; resolve(this.exited) })
      this.child.on('error', (err) => { live.delete(this.child); this.exited = { error: err.message }; resolve(this.exited) })
    })
  }

  /** Waits until stdout or stderr matches `re`; returns the match. Fails early if the process exits. */
  async waitFor (re, timeoutMs = 15_000) {
    return eventually(`${this.name} to print ${re}`, () => {
      const m = re.exec(this.out) ?? re.exec(this.err)
      if (m) return m
      if (this.exited) throw Object.assign(new Error(`${this.name} exited ${JSON.stringify(this.exited)} before printing ${re}`), { fatal: true })
      return null
    }, { timeoutMs, everyMs: 50 })
  }

  logs () {
    return `--- ${this.name} stdout:\n${this.out}\n--- ${this.name} stderr:\n${this.err}`
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop (graceMs = 3000) {
    if (this.exited) return this.exited
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => { if (!this.exited) this.child.kill('SIGKILL') }, graceMs)
    const result = await this.exitPromise
    clearTimeout(timer)
    return result
  }
}

/** Runs a command to completion (output inherited to stderr); rejects on a non-zero exit or timeout. */
export function run (command, args, { timeoutMs = 300_000, ...options } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'inherit', 'inherit'], ...options })
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${command} ${args.join(' ')}: timed out`)) }, timeoutMs)
    child.on('error', (err) => { clearTimeout(timer); reject(err) })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      if (code === 0) resolve()
      else reject(new Error(`${command} ${args.join(' ')} exited ${code ?? signal}`))
    })
  })
}

/** fetch with a timeout, JSON in and out. */
export async function json (url, { method = 'GET', body, headers = {}, timeoutMs = 5000 } = {}) {
  const res = await fetch(url, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs)
  })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${url}: HTTP ${res.status} ${text}`)
  return text ? JSON.parse(text) : null
}
