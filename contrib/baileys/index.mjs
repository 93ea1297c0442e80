// wa-status-sidecar-baileys: the gateway side of wa-status-sidecar's Baileys contract.
//
// A Baileys gateway calls `track(tenantId, sock)` wherever it creates a socket. This module
// keeps each tenant's merged `connection.update` state and serves it:
//   GET {path}/<tenant>              WebSocket: snapshot frame first, then every update, as
//                                    {"event":"connection.update","data":{...}}
//   GET /sessions/<tenant>/status    JSON of the merged state (the sidecar's gateway.state_url)
// Both behind an optional `Authorization: Bearer <token>` check.

import http from 'node:http'
import { createHash, timingSafeEqual } from 'node:crypto'
import { WebSocketServer, WebSocket } from 'ws'

export const EVENT = 'connection.update'

const DEFAULT_MAX_FRAME_BYTES = 256 * 1024
const DEFAULT_MAX_BUFFERED_BYTES = 1024 * 1024
const DEFAULT_HEARTBEAT_MS = 30_000
const CLOSE_GRACE_MS = 1_000

/**
 * JSON text of a value exactly as `JSON.stringify` gives it (so a Boom error keeps
 * `output.statusCode` / `output.payload.message` and loses its own `message`, as on any
 * Baileys gateway). Only if plain JSON.stringify throws (cycles, BigInt) does it fall back to a
 * replacer that prints cycles as "[Circular]" and BigInts as strings.
 */
export function stringifyUpdate (value) {
  try {
    return JSON.stringify(value)
  } catch {
    const seen = new WeakSet()
    return JSON.stringify(value, (_key, v) => {
      if (typeof v === 'bigint') return v.toString()
      if (v !== null && typeof v === 'object') {
        if (seen.has(v)) return '[Circular]'
        seen.add(v)
      }
      return v
    })
  }
}

/**
 * The wire form (plain JSON data) of one partial `connection.update`, kept under `maxBytes`.
 * A close's Boom error can carry a large `data` (Baileys puts the raw stream-error node there);
 * if the frame would be too big, `lastDisconnect.error.data` becomes null, which keeps the
 * fields a consumer reads (`output.statusCode`, `output.payload.message`) intact.
 */
export function wireUpdate (update, maxBytes = DEFAULT_MAX_FRAME_BYTES) {
  let text = stringifyUpdate(update)
  if (text === undefined) return {}
  let wire = JSON.parse(text)
  if (Buffer.byteLength(text) > maxBytes && wire?.lastDisconnect?.error && typeof wire.lastDisconnect.error === 'object') {
    wire.lastDisconnect.error.data = null
    text = JSON.stringify(wire)
    if (Buffer.byteLength(text) > maxBytes) {
      // Still too big: keep only what says what happened.
      const { connection, lastDisconnect } = wire
      const e = lastDisconnect.error
      wire = { connection, lastDisconnect: { error: { data: null, isBoom: e.isBoom, isServer: e.isServer, output: e.output }, date: lastDisconnect.date } }
    }
  }
  return wire && typeof wire === 'object' && !Array.isArray(wire) ? wire : {}
}

/**
 * Merges one partial update into a session's state (both wire form). `raw` is the update as
 * emitted, used to see keys explicitly set to undefined (Baileys clears `qr` that way), which
 * JSON drops.
 *  - a key whose value is undefined is removed;
 *  - a `connection` change without a new `qr` clears `qr` (a QR is only pending while connecting;
 *    a snapshot must never hold both `qr` and `connection: "open"`);
 *  - everything else overwrites (including `lastDisconnect`, which is kept after a reopen: it is
 *    history; `connection` is what says whether the session is up).
 */
export function mergeState (state, wire, raw = wire) {
  for (const key of Object.keys(raw)) {
    if (raw[key] === undefined) delete state[key]
  }
  Object.assign(state, wire)
  if (typeof wire.connection === 'string' && !(typeof wire.qr === 'string')) delete state.qr
  return state
}

function frame (data) {
  return `{"event":"${EVENT}","data":${JSON.stringify(data)}}`
}

function sha256 (s) {
  return createHash('sha256').update(s, 'utf8').digest()
}

/**
 * @param {object} [options]
 * @param {string} [options.host='127.0.0.1']
 * @param {number} [options.port=3001]        0 picks a free port (see `listening`)
 * @param {string} [options.token]            if set, every request needs `Authorization: Bearer <token>`
 * @param {string} [options.path='/ws']       WebSocket prefix: `{path}/<tenant>`
 * @param {string} [options.statePath='/sessions']  state endpoint: `{statePath}/<tenant>/status`
 * @param {http.Server} [options.server]      attach to an existing HTTP server instead of listening
 *                                            (mount `handleRequest` yourself for the state endpoint)
 * @param {(req, res) => void} [options.onRequest]  own server only: handler for other requests
 * @param {'wait'|'reject'} [options.unknownTenant='wait']  WebSocket for a tenant never tracked:
 *                                            'wait' accepts and sends nothing until it is tracked;
 *                                            'reject' answers 404
 * @param {number} [options.heartbeatMs=30000] ping clients, drop those that miss a pong (0 = off)
 * @param {number} [options.maxFrameBytes=262144]
 * @param {number} [options.maxBufferedBytes=1048576]  a client this far behind is dropped
 * @param {{warn?: Function, debug?: Function}} [options.logger]
 */
export function createStatusServer (options = {}) {
  const {
    host = '127.0.0.1',
    port = 3001,
    token,
    server: external,
    onRequest,
    unknownTenant = 'wait',
    heartbeatMs = DEFAULT_HEARTBEAT_MS,
    maxFrameBytes = DEFAULT_MAX_FRAME_BYTES,
    maxBufferedBytes = DEFAULT_MAX_BUFFERED_BYTES,
    logger
  } = options
  const wsPrefix = String(options.path ?? '/ws').replace(/\/+$/, '') + '/'
  const statePrefix = String(options.statePath ?? '/sessions').replace(/\/+$/, '') + '/'
  if (unknownTenant !== 'wait' && unknownTenant !== 'reject') throw new TypeError("unknownTenant must be 'wait' or 'reject'")
  const expectedToken = token ? sha256(String(token)) : null

  /** tenantId -> { sock, listener, state } */
  const sessions = new Map()
  /** tenantId -> Set<WebSocket> */
  const clients = new Map()
  let closed = false

  const warn = (...args) => { try { logger?.warn?.(...args) } catch {} }

  function authorized (req) {
    if (!expectedToken) return true
    const m = /^Bearer[ \t]+(.+?)[ \t]*$/i.exec(req.headers.authorization ?? '')
    if (!m) return false
    return timingSafeEqual(sha256(m[1]), expectedToken)
  }

  // ---- state -------------------------------------------------------------------------------

  function broadcast (tenantId, text) {
    const set = clients.get(tenantId)
    if (!set) return
    for (const ws of set) {
      if (ws.readyState !== WebSocket.OPEN) continue
      if (ws.bufferedAmount > maxBufferedBytes) {
        // A stuck consumer: drop it; on reconnect it gets a fresh snapshot.
        warn({ tenantId }, 'wa-status: dropping a WebSocket client that does not read')
        ws.terminate()
        continue
      }
      ws.send(text)
    }
  }

  function apply (tenantId, session, update) {
    try {
      if (update === null || typeof update !== 'object' || Array.isArray(update)) return
      const wire = wireUpdate(update, maxFrameBytes)
      mergeState(session.state, wire, update)
      broadcast(tenantId, frame(wire))
    } catch (err) {
      // Never throw into Baileys' event emitter.
      warn({ tenantId, err }, 'wa-status: failed to handle connection.update')
    }
  }

  function detach (session) {
    const { sock, listener } = session
    session.sock = null
    session.listener = null
    if (!sock || !listener) return
    try {
      if (typeof sock.ev.off === 'function') sock.ev.off(EVENT, listener)
      else sock.ev.removeListener?.(EVENT, listener)
    } catch {}
  }

  function session (tenantId) {
    let s = sessions.get(tenantId)
    if (!s) {
      s = { sock: null, listener: null, state: {} }
      sessions.set(tenantId, s)
    }
    return s
  }

  function checkTenant (tenantId) {
    if (typeof tenantId !== 'string' || tenantId === '') throw new TypeError('tenantId must be a non-empty string')
  }

  function track (tenantId, sock) {
    checkTenant(tenantId)
    if (!sock || !sock.ev || typeof sock.ev.on !== 'function') throw new TypeError('track(tenantId, sock): sock.ev.on is missing')
    if (closed) return
    const s = session(tenantId)
    if (s.sock === sock) return
    detach(s)
    const listener = (update) => {
      // Ignore a socket that was replaced or untracked (belt and braces: detach() unsubscribes).
      if (sessions.get(tenantId) !== s || s.sock !== sock) return
      apply(tenantId, s, update)
    }
    sock.ev.on(EVENT, listener)
    s.sock = sock
    s.listener = listener
  }

  function untrack (tenantId) {
    const s = sessions.get(tenantId)
    if (!s) return
    detach(s)
    sessions.delete(tenantId)
    if (unknownTenant === 'reject') {
      for (const ws of clients.get(tenantId) ?? []) ws.close(1001, 'session removed')
    }
  }

  function setState (tenantId, partial) {
    checkTenant(tenantId)
    if (closed) return
    apply(tenantId, session(tenantId), partial)
  }

  function state (tenantId) {
    const s = sessions.get(tenantId)
    return s ? structuredClone(s.state) : undefined
  }

  // ---- HTTP / WebSocket ----------------------------------------------------------------------

  function pathname (req) {
    const url = req.url ?? '/'
    const q = url.indexOf('?')
    return q === -1 ? url : url.slice(0, q)
  }

  /** The tenant in `prefix<segment>suffix`, or null if the path is not that; throws URIError. */
  function tenantOf (path, prefix, suffix = '') {
    if (!path.startsWith(prefix)) return null
    let rest = path.slice(prefix.length)
    if (suffix) {
      if (rest.endsWith(suffix + '/')) rest = rest.slice(0, -1)
      if (!rest.endsWith(suffix)) return null
      rest = rest.slice(0, -suffix.length)
    }
    if (rest === '' || rest.includes('/')) return null
    return decodeURIComponent(rest)
  }

  function sendJson (res, status, body, headers = {}) {
    const text = JSON.stringify(body)
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
      'cache-control': 'no-store',
      ...headers
    })
    res.end(res.req?.method === 'HEAD' ? undefined : text)
  }

  const UNAUTHORIZED = { 'www-authenticate': 'Bearer' }

  /**
   * Serves the state endpoint (and a 426 for a plain GET on the WebSocket path).
   * @returns {boolean} true if the request was ours and has been answered.
   */
  function handleRequest (req, res) {
    const path = pathname(req)
    let tenantId
    try {
      tenantId = tenantOf(path, statePrefix, '/status')
      if (tenantId === null && tenantOf(path, wsPrefix) !== null) {
        sendJson(res, 426, { error: 'WebSocket upgrade required' }, { upgrade: 'websocket', connection: 'Upgrade' })
        return true
      }
    } catch {
      sendJson(res, 400, { error: 'bad tenant id encoding' })
      return true
    }
    if (tenantId === null) return false
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendJson(res, 405, { error: 'method not allowed' }, { allow: 'GET, HEAD' })
    } else if (!authorized(req)) {
      sendJson(res, 401, { error: 'unauthorized' }, UNAUTHORIZED)
    } else if (!sessions.has(tenantId)) {
      sendJson(res, 404, { error: 'unknown session', tenant: tenantId })
    } else {
      sendJson(res, 200, sessions.get(tenantId).state)
    }
    return true
  }

  function rejectUpgrade (socket, status, text, body, headers = {}) {
    const json = JSON.stringify(body)
    let head = `HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(json)}\r\n`
    for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`
    try {
      socket.end(head + '\r\n' + json)
    } catch {}
    socket.destroySoon?.()
  }

  const wss = new WebSocketServer({ noServer: true, clientTracking: false, maxPayload: 64 * 1024 })

  function onConnection (ws, tenantId) {
    ws.isAlive = true
    ws.on('pong', () => { ws.isAlive = true })
    ws.on('message', () => {}) // clients have nothing to say; ignore
    ws.on('error', () => {})
    let set = clients.get(tenantId)
    if (!set) clients.set(tenantId, (set = new Set()))
    ws.on('close', () => {
      set.delete(ws)
      if (set.size === 0 && clients.get(tenantId) === set) clients.delete(tenantId)
    })
    if (closed) {
      ws.close(1001, 'server shutting down')
      return
    }
    // Snapshot first, then live updates: both happen on this tick, so nothing can slip between.
    const s = sessions.get(tenantId)
    if (s) ws.send(frame(s.state))
    set.add(ws)
  }

  /**
   * Handles an HTTP upgrade on `{path}/<tenant>`.
   * @returns {boolean} false if the request is for another path (left untouched).
   */
  function handleUpgrade (req, socket, head) {
    let tenantId
    try {
      tenantId = tenantOf(pathname(req), wsPrefix)
    } catch {
      rejectUpgrade(socket, 400, 'Bad Request', { error: 'bad tenant id encoding' })
      return true
    }
    if (tenantId === null) return false
    if (closed) {
      rejectUpgrade(socket, 503, 'Service Unavailable', { error: 'shutting down' })
    } else if (!authorized(req)) {
      rejectUpgrade(socket, 401, 'Unauthorized', { error: 'unauthorized' }, { 'WWW-Authenticate': 'Bearer' })
    } else if (unknownTenant === 'reject' && !sessions.has(tenantId)) {
      rejectUpgrade(socket, 404, 'Not Found', { error: 'unknown session', tenant: tenantId })
    } else {
      wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, tenantId))
    }
    return true
  }

  const server = external ?? http.createServer((req, res) => {
    if (handleRequest(req, res)) return
    if (onRequest) return onRequest(req, res)
    sendJson(res, 404, { error: 'not found' })
  })
  const onUpgrade = (req, socket, head) => {
    socket.on('error', () => {})
    if (!handleUpgrade(req, socket, head) && !external) {
      rejectUpgrade(socket, 404, 'Not Found', { error: 'not found' })
    }
  }
  server.on('upgrade', onUpgrade)

  const address = () => {
    const a = server.address()
    return { port: a.port, host: a.address }
  }
  const listening = new Promise((resolve, reject) => {
    if (server.listening) return resolve(address())
    const onError = (err) => { server.off('listening', onListening); reject(err) }
    const onListening = () => { server.off('error', onError); resolve(address()) }
    server.once('error', onError)
    server.once('listening', onListening)
    if (!external) server.listen(port, host)
  })
  listening.catch(() => {}) // the caller sees the rejection; never an unhandled one
  if (!external) server.on('error', (err) => warn({ err }, 'wa-status: server error'))

  const heartbeat = heartbeatMs > 0
    ? setInterval(() => {
      for (const set of clients.values()) {
        for (const ws of set) {
          if (!ws.isAlive) { ws.terminate(); continue }
          ws.isAlive = false
          try { ws.ping() } catch {}
        }
      }
    }, heartbeatMs)
    : null
  heartbeat?.unref()

  async function close () {
    if (closed) return
    closed = true
    if (heartbeat) clearInterval(heartbeat)
    for (const s of sessions.values()) detach(s)
    server.off('upgrade', onUpgrade)
    const waits = []
    for (const set of clients.values()) {
      for (const ws of set) {
        waits.push(new Promise((resolve) => {
          if (ws.readyState === WebSocket.CLOSED) return resolve()
          ws.once('close', resolve)
          ws.close(1001, 'server shutting down')
          setTimeout(() => ws.terminate(), CLOSE_GRACE_MS).unref()
        }))
      }
    }
    if (!external && server.listening) {
      waits.push(new Promise((resolve) => server.close(() => resolve())))
      server.closeAllConnections?.()
    }
    await Promise.all(waits)
  }

  return { track, untrack, setState, state, listening, close, handleRequest, handleUpgrade, authorized, server }
}

export default createStatusServer
