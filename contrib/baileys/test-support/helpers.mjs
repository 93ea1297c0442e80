// Shared test helpers. Everything binds to 127.0.0.1 and every wait is bounded.
import { readFileSync } from 'node:fs'
import { spawn } from 'node:child_process'
import nodeHttp from 'node:http'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'
import { makeEventBuffer } from 'baileys'
import { Boom } from '@hapi/boom'

export { Boom }

/** The token every test kit and sim is started with (tests only; never a real secret). */
export const TOKEN = 'test-token-7f3a9c'
export const AUTH = Object.freeze({ authorization: `Bearer ${TOKEN}` })

export const SIM = fileURLToPath(new URL('../sim-gateway.mjs', import.meta.url))

const silent = { level: 'silent', trace () {}, debug () {}, info () {}, warn () {}, error () {}, child () { return silent } }

/** A fake Baileys socket: Baileys' real event buffer as `ev`, and Baileys' end() behaviour. */
export function fakeSocket () {
  const ev = makeEventBuffer(silent)
  return {
    ev,
    emit: (update) => ev.emit('connection.update', update),
    end (error) {
      ev.emit('connection.update', { connection: 'close', lastDisconnect: { error, date: new Date() } })
      ev.removeAllListeners('connection.update')
      ev.destroy()
    }
  }
}

/** The fixture frames (a copy of the project's shared/fixtures/baileys-connection-update.jsonl). */
export function fixtureFrames () {
  return readFileSync(new URL('../test/fixtures/baileys-connection-update.jsonl', import.meta.url), 'utf8')
    .split('\n').filter(Boolean).map((l) => JSON.parse(l))
}

export function withTimeout (promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms) })
  ]).finally(() => clearTimeout(timer))
}

/**
 * A WebSocket client that queues every text frame (parsed).
 * Resolves once open; rejects with err.status on an HTTP refusal.
 */
export function connect (url, headers = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers })
    const frames = []
    const waiters = []
    ws.on('message', (data, isBinary) => {
      const frame = isBinary ? { binary: data } : JSON.parse(data.toString())
      const w = waiters.shift()
      if (w) w(frame)
      else frames.push(frame)
    })
    ws.on('unexpected-response', (_req, res) => {
      const err = new Error(`HTTP ${res.statusCode}`)
      err.status = res.statusCode
      err.headers = res.headers
      res.resume()
      ws.terminate()
      reject(err)
    })
    ws.on('error', reject)
    ws.on('open', () => resolve({
      ws,
      /** The next frame, waiting at most `ms`. */
      next (ms = 2000) {
        if (frames.length) return Promise.resolve(frames.shift())
        return withTimeout(new Promise((resolve) => waiters.push(resolve)), ms, 'next frame')
      },
      /** Asserts that no frame arrives within `ms`; returns the frames that did. */
      async idle (ms = 150) {
        await new Promise((resolve) => setTimeout(resolve, ms))
        return frames.splice(0)
      },
      close () {
        if (ws.readyState === WebSocket.CLOSED) return Promise.resolve()
        return withTimeout(new Promise((resolve) => { ws.once('close', resolve); ws.close() }), 2000, 'client close').catch(() => ws.terminate())
      }
    }))
  }), 5000, `connect ${url}`)
}

/** The frame with lastDisconnect.date replaced, for comparison against fixtures. */
export function withoutDate (frame) {
  const copy = structuredClone(frame)
  if (copy?.data?.lastDisconnect?.date) copy.data.lastDisconnect.date = '<date>'
  return copy
}

/** Starts sim-gateway.mjs on a free port; resolves { port, child, stop() }. */
export function startSim (args = [], env = {}) {
  const child = spawn(process.execPath, [SIM, '--host', '127.0.0.1', '--port', '0', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stderr = ''
  child.stderr.on('data', (c) => { stderr += c })
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    const res = await withTimeout(exited, 5000, 'sim exit').catch((e) => { child.kill('SIGKILL'); throw e })
    return res
  }
  return withTimeout(new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (c) => {
      out += c
      const m = /listening on (\d+)\n/.exec(out)
      if (m) resolve({ port: Number(m[1]), child, stop, stderr: () => stderr })
    })
    exited.then(({ code }) => reject(new Error(`sim exited (${code}) before listening: ${stderr}`)))
  }), 10000, 'sim start').catch(async (e) => { await stop().catch(() => {}); throw e })
}

export async function http (port, method, path, { body, headers = {} } = {}) {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
    signal: AbortSignal.timeout(5000)
  })
  const text = await res.text()
  let json
  try { json = JSON.parse(text) } catch {}
  return { status: res.status, headers: res.headers, json, text }
}

/**
 * An HTTP request through node:http, which (unlike fetch) sends any header as given, Host and
 * Origin included. Resolves { status, headers, text }.
 */
export function rawHttp (port, method, path, headers = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const req = nodeHttp.request({ host: '127.0.0.1', port, method, path, headers, agent: false }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c) => { text += c })
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  }), 5000, `${method} ${path}`)
}

/** Polls `check()` every 10 ms until it is true, for at most `ms`. */
export async function eventually (check, ms = 3000, what = 'condition') {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}
