// wa-status-sidecar-baileys: the gateway side of wa-status-sidecar's Baileys contract.
//
// A Baileys gateway calls `track(tenantId, sock)` wherever it creates a socket. This module
// keeps each tenant's merged `connection.update` state and serves it:
//   GET {path}/<tenant>              WebSocket: snapshot frame first, then every update, as
//                                    {"event":"connection.update","data":{...}}
//   GET /sessions/<tenant>/status    JSON of the merged state (the sidecar's gateway.state_url)
// Locked down by default (SPEC section 7): loopback bind, `Authorization: Bearer <token>` required
// (waived only by an explicit `insecureNoToken` on loopback), requests from web pages refused, a
// cap on WebSocket connections, connections without the token unable to crowd out the ones with it,
// and the QR pairing payload never served (only that one is pending).

import http from 'node:http'
import net from 'node:net'
import { createHash, timingSafeEqual } from 'node:crypto'
import { WebSocketServer, WebSocket } from 'ws'

export const EVENT = 'connection.update'

/**
 * What the endpoints serve as `qr` while a QR code waits for a scan, instead of the QR payload:
 * whoever reads the payload can link their own phone as the business. A non-empty string, so
 * every consumer that reads Baileys' "`qr` present means waiting for a scan" (the sidecar does)
 * still sees a session that is not linked.
 */
export const QR_PENDING = 'pending'

const DEFAULT_MAX_FRAME_BYTES = 256 * 1024
const DEFAULT_MAX_BUFFERED_BYTES = 1024 * 1024
const DEFAULT_HEARTBEAT_MS = 30_000
const DEFAULT_MAX_CONNECTIONS = 1024
const DEFAULT_MAX_CONNECTIONS_PER_TENANT = 64
const DEFAULT_HEADERS_TIMEOUT_MS = 5_000
/** Own server: connections that are not an authenticated WebSocket (yet), at most. */
const DEFAULT_MAX_PENDING_CONNECTIONS = 64
/**
 * Own server: a new connection that has sent nothing yet is not closed to make room for this
 * long while another one can be, so a client whose request comes a moment after its connect is
 * not cycled out by a flood of connects. (The sidecar's admin server uses the same 250 ms.)
 */
const FIRST_BYTE_GRACE_MS = 250
const CLOSE_GRACE_MS = 1_000
const WARN_INTERVAL_MS = 60_000

const LOOPBACK = new net.BlockList()
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4')
LOOPBACK.addAddress('::1', 'ipv6')

/** Whether an address or host name is on the loopback interface (127.0.0.0/8, ::1, localhost). */
export function isLoopback (host) {
  if (typeof host !== 'string') return false
  let h = host.toLowerCase()
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1)
  if (h === 'localhost') return true
  if (h.startsWith('::ffff:') && net.isIPv4(h.slice(7))) h = h.slice(7)
  const family = net.isIP(h)
  return family !== 0 && LOOPBACK.check(h, family === 4 ? 'ipv4' : 'ipv6')
}

/** The host name of a Host header (`a:1`, `[::1]:1`, `a`), lower-case. */
function hostOfHeader (value) {
  const v = String(value).trim().toLowerCase()
  if (v.startsWith('[')) {
    const end = v.indexOf(']')
    return end === -1 ? v : v.slice(0, end + 1)
  }
  const colon = v.indexOf(':')
  return colon === -1 ? v : v.slice(0, colon)
}

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
 * A non-empty `qr` becomes `QR_PENDING` (the payload itself is never served); any other `qr`
 * (undefined, null, '', not a string) is left out, and `mergeState` then clears it.
 * A close's Boom error can carry a large `data` (Baileys puts the raw stream-error node there);
 * if the frame would be too big, `lastDisconnect.error.data` becomes null, which keeps the
 * fields a consumer reads (`output.statusCode`, `output.payload.message`) intact.
 */
export function wireUpdate (update, maxBytes = DEFAULT_MAX_FRAME_BYTES) {
  if (update !== null && typeof update === 'object' && Object.hasOwn(update, 'qr')) {
    // Never let the pairing payload leave the gateway: only whether a QR is pending.
    const { qr, ...rest } = update
    update = typeof qr === 'string' && qr !== '' ? { ...rest, qr: QR_PENDING } : rest
  }
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
  if (Object.hasOwn(raw, 'qr') && !Object.hasOwn(wire, 'qr')) delete state.qr
  Object.assign(state, wire)
  if (typeof wire.connection === 'string' && !(typeof wire.qr === 'string')) delete state.qr
  return state
}

function frame (data) {
  return `{"event":"${EVENT}","data":${JSON.stringify(data)}}`
}

/** The longest `Authorization` header read: a token is far shorter; a longer header is a 401 unread. */
const MAX_AUTHORIZATION_LENGTH = 1024
/** The longest token that fits: `Bearer <token>` within MAX_AUTHORIZATION_LENGTH. */
const MAX_TOKEN_LENGTH = MAX_AUTHORIZATION_LENGTH - 'Bearer '.length
const VISIBLE_ASCII = /^[\x21-\x7e]+$/

function isBlank (c) {
  return c === ' ' || c === '\t'
}

/**
 * The token of an `Authorization: Bearer <token>` header (scheme in any case, then spaces or
 * tabs), or null. It runs before the token is checked, for whoever reaches the port, so it takes
 * time linear in a header of at most MAX_AUTHORIZATION_LENGTH characters: no backtracking regex
 * (`/^Bearer[ \t]+(.+?)[ \t]*$/i` took ~100 ms of the gateway's event loop on a 16 KB header of
 * spaces).
 */
function bearerToken (header) {
  if (typeof header !== 'string' || header.length > MAX_AUTHORIZATION_LENGTH) return null
  if (header.slice(0, 6).toLowerCase() !== 'bearer' || !isBlank(header[6])) return null
  let start = 7
  while (start < header.length && isBlank(header[start])) start++
  let end = header.length
  while (end > start && isBlank(header[end - 1])) end--
  const token = header.slice(start, end)
  return VISIBLE_ASCII.test(token) ? token : null
}

function sha256 (s) {
  return createHash('sha256').update(s, 'utf8').digest()
}

/**
 * @param {object} [options]
 * @param {string} [options.host='127.0.0.1']  own server's bind address; loopback unless you mean it
 * @param {number} [options.port=3001]        0 picks a free port (see `listening`)
 * @param {string} [options.token]            required: every request needs `Authorization: Bearer <token>`
 * @param {boolean} [options.insecureNoToken=false]  loopback development only: no token; refused for
 *                                            a non-loopback host, and only loopback requests served
 * @param {string[]} [options.allowOrigins=[]] web page origins allowed to call the endpoints; a
 *                                            request from any other page (an `Origin` header, or
 *                                            `Sec-Fetch-Site: cross-site|same-site`) is a 403
 * @param {number} [options.maxConnections=1024]        WebSocket connections in all; more is a 503
 * @param {number} [options.maxConnectionsPerTenant=64] WebSocket connections per tenant; more is a 503
 * @param {number} [options.maxPendingConnections=64]  own server: connections not (yet) an authenticated
 *                                            WebSocket; one more closes the oldest of them
 * @param {number} [options.headersTimeoutMs=5000]      own server: time to send a request's headers
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
 * @param {{warn?: Function, debug?: Function}} [options.logger]  pino-style; else process warnings
 */
export function createStatusServer (options = {}) {
  const {
    host = '127.0.0.1',
    port = 3001,
    token,
    insecureNoToken = false,
    allowOrigins = [],
    maxConnections = DEFAULT_MAX_CONNECTIONS,
    maxConnectionsPerTenant = DEFAULT_MAX_CONNECTIONS_PER_TENANT,
    maxPendingConnections = DEFAULT_MAX_PENDING_CONNECTIONS,
    headersTimeoutMs = DEFAULT_HEADERS_TIMEOUT_MS,
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
  for (const [name, value] of Object.entries({ maxConnections, maxConnectionsPerTenant, maxPendingConnections, headersTimeoutMs })) {
    if (!Number.isSafeInteger(value) || value < 1) throw new TypeError(`${name} must be a positive integer`)
  }
  if (!Array.isArray(allowOrigins) || !allowOrigins.every((o) => typeof o === 'string' && o !== '')) {
    throw new TypeError("allowOrigins must be an array of origins such as 'https://admin.example.com'")
  }
  const allowed = new Set(allowOrigins.map((o) => o.toLowerCase().replace(/\/+$/, '')))

  // The token (never logged, never echoed). Without one, nothing is served unless the operator
  // explicitly waived it for loopback development.
  if (token !== undefined && token !== null && token !== '') {
    if (typeof token !== 'string' || !/^[\x21-\x7e]+$/.test(token)) {
      throw new TypeError('token must be a string of visible ASCII characters (no spaces), as sent in "Authorization: Bearer <token>"')
    }
    if (token.length > MAX_TOKEN_LENGTH) {
      throw new TypeError(`token must be at most ${MAX_TOKEN_LENGTH} characters (an Authorization header longer than ${MAX_AUTHORIZATION_LENGTH} is refused unread)`)
    }
  } else if (insecureNoToken !== true) {
    throw new TypeError('createStatusServer: a token is required: pass token (e.g. process.env.GATEWAY_TOKEN, the token the sidecar sends from gateway.token_env); ' +
      'for development on loopback only, pass insecureNoToken: true instead')
  } else if (!external && !isLoopback(host)) {
    throw new TypeError(`createStatusServer: insecureNoToken is refused for host ${JSON.stringify(host)}: it only serves loopback (127.0.0.1, ::1); set a token to bind elsewhere`)
  }
  const expectedToken = token ? sha256(token) : null

  /** tenantId -> { sock, listener, state } */
  const sessions = new Map()
  /** tenantId -> Set<WebSocket> */
  const clients = new Map()
  /** WebSocket connections held (from the accepted upgrade until the TCP socket closes). */
  let held = 0
  /** tenantId -> connections held for it */
  const heldPerTenant = new Map()
  let closed = false

  const warn = (...args) => { try { logger?.warn?.(...args) } catch {} }
  /** A warning that may repeat with every request: at most one per minute per kind. */
  const lastWarned = new Map()
  const warnThrottled = (kind, ...args) => {
    const now = Date.now()
    if (now - (lastWarned.get(kind) ?? -Infinity) < WARN_INTERVAL_MS) return
    lastWarned.set(kind, now)
    warn(...args)
  }

  if (!expectedToken) {
    const msg = 'wa-status: insecureNoToken: the status endpoints accept requests without a token, from loopback only. For development; set a token in production.'
    if (logger?.warn) warn({ insecureNoToken: true }, msg)
    else process.emitWarning(msg, { code: 'WA_STATUS_INSECURE_NO_TOKEN' })
  }

  /** Whether a browser says this request comes from a web page whose origin is not allowed. */
  function fromForeignPage (req) {
    const origin = req.headers.origin
    if (origin !== undefined) return !allowed.has(String(origin).toLowerCase())
    const site = String(req.headers['sec-fetch-site'] ?? '').toLowerCase()
    return site === 'cross-site' || site === 'same-site'
  }

  function tokenMatches (req) {
    const presented = bearerToken(req.headers.authorization)
    return presented !== null && timingSafeEqual(sha256(presented), expectedToken)
  }

  /**
   * Why a request must be refused before it reaches any tenant, or null to serve it:
   * a foreign web page (403), a missing or wrong token (401), or without a token (insecureNoToken)
   * anything not from loopback, or naming a non-loopback Host (DNS rebinding) (403).
   * @returns {null | { status: number, error: string }}
   */
  function refusal (req) {
    if (fromForeignPage(req)) return { status: 403, error: 'requests from web pages are refused (Origin not in allowOrigins)' }
    if (expectedToken) return tokenMatches(req) ? null : { status: 401, error: 'unauthorized' }
    const hostHeader = req.headers.host
    if (!isLoopback(req.socket?.remoteAddress) || !isLoopback(req.socket?.localAddress) ||
        (hostHeader !== undefined && !isLoopback(hostOfHeader(hostHeader)))) {
      warnThrottled('insecure', 'wa-status: insecureNoToken: refused a request that is not from loopback to a loopback host')
      return { status: 403, error: 'insecureNoToken serves loopback only; configure a token' }
    }
    return null
  }

  /** Whether a request passes every check of `refusal`. */
  function authorized (req) {
    return refusal(req) === null
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
    const refused = refusal(req)
    if (refused) {
      sendJson(res, refused.status, { error: refused.error }, refused.status === 401 ? UNAUTHORIZED : {})
    } else if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendJson(res, 405, { error: 'method not allowed' }, { allow: 'GET, HEAD' })
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
    const refused = refusal(req)
    if (closed) {
      rejectUpgrade(socket, 503, 'Service Unavailable', { error: 'shutting down' })
    } else if (refused) {
      rejectUpgrade(socket, refused.status, refused.status === 401 ? 'Unauthorized' : 'Forbidden', { error: refused.error },
        refused.status === 401 ? { 'WWW-Authenticate': 'Bearer' } : {})
    } else if (unknownTenant === 'reject' && !sessions.has(tenantId)) {
      rejectUpgrade(socket, 404, 'Not Found', { error: 'unknown session', tenant: tenantId })
    } else if (held >= maxConnections || (heldPerTenant.get(tenantId) ?? 0) >= maxConnectionsPerTenant) {
      const which = held >= maxConnections ? `maxConnections (${maxConnections})` : `maxConnectionsPerTenant (${maxConnectionsPerTenant})`
      warnThrottled('cap', { tenantId, held }, `wa-status: refused a WebSocket: ${which} reached`)
      rejectUpgrade(socket, 503, 'Service Unavailable', { error: `too many connections: ${which} reached` }, { 'Retry-After': '5' })
    } else {
      hold(socket, tenantId)
      wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, tenantId))
    }
    return true
  }

  /** Counts a connection against the caps until its TCP socket closes (however it ends). */
  function hold (socket, tenantId) {
    pending.delete(socket) // an authenticated WebSocket now: out of reach of trimPending
    held++
    heldPerTenant.set(tenantId, (heldPerTenant.get(tenantId) ?? 0) + 1)
    socket.once('close', () => {
      held--
      const n = heldPerTenant.get(tenantId) - 1
      if (n > 0) heldPerTenant.set(tenantId, n)
      else heldPerTenant.delete(tenantId)
    })
  }

  /**
   * Own server: the accepted connections that are not an authenticated WebSocket (yet), in
   * accept order: socket -> { accepted: ms, round: the trim that first sees it, busy: authorized
   * requests being answered }.
   * Whoever reaches the port can open connections without the token; they must never keep out
   * the one that has it. So there are at most maxPendingConnections of them, plus those accepted
   * in one loop iteration until they have been read (trimPending closes the oldest); an
   * authenticated WebSocket leaves this pool (hold) and counts against maxConnections instead.
   */
  const pending = new Map()
  /** The trim to come (setImmediate), and its number: connections accepted since the last trim carry it. */
  let trimming = null
  let trimRound = 0

  /**
   * Closes pending connections until at most maxPendingConnections are left, among those that
   * have had a chance to be read: the ones a trim already saw. libuv reads a socket on the loop
   * iteration after its accept, so a client whose request came with its connect is read (and
   * upgraded, leaving the pool) before it can be closed, however many others connect at once.
   * Runs from setImmediate, after the poll phase; again after the next one while connections not
   * yet read keep the pool over the cap. Order: the oldest first, sparing one silent since its
   * accept less than FIRST_BYTE_GRACE_MS ago while there is another; never one answering an
   * authorized request.
   */
  function trimPending () {
    trimming = null
    const unread = trimRound++
    const excess = pending.size - maxPendingConnections
    if (excess <= 0) return
    const now = performance.now()
    const due = []
    const spared = []
    let unreadLeft = false
    for (const [socket, conn] of pending) {
      if (conn.round === unread) unreadLeft = true
      else if (conn.busy === 0) (socket.bytesRead > 0 || now - conn.accepted >= FIRST_BYTE_GRACE_MS ? due : spared).push(socket)
    }
    const victims = due.concat(spared).slice(0, excess)
    for (const socket of victims) {
      pending.delete(socket)
      socket.destroy()
    }
    if (pending.size > maxPendingConnections && unreadLeft) trimming = setImmediate(trimPending)
    if (victims.length > 0) {
      warnThrottled('pending', { maxPendingConnections },
        `wa-status: maxPendingConnections (${maxPendingConnections}) reached: closed the oldest connections without an authenticated WebSocket (many idle or slow clients on the port?)`)
    }
  }

  const server = external ?? http.createServer({
    headersTimeout: headersTimeoutMs,
    requestTimeout: headersTimeoutMs + 5_000,
    connectionsCheckingInterval: Math.min(1_000, headersTimeoutMs)
  }, (req, res) => {
    // A connection answering an authorized request is not closed to make room; a refused one is.
    const conn = pending.get(req.socket)
    if (conn && authorized(req)) {
      conn.busy++
      res.once('close', () => { conn.busy-- })
    }
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
  // Own server: every connection starts pending. No server.maxConnections: Node would refuse a
  // newcomer before the kit could choose whom to close, which is the lock-out this prevents.
  // Connections in all: maxConnections WebSockets + maxPendingConnections, plus authorized
  // requests being answered and one accept burst until it has been read.
  if (!external) {
    server.on('connection', (socket) => {
      pending.set(socket, { accepted: performance.now(), round: trimRound, busy: 0 })
      socket.once('close', () => pending.delete(socket))
      if (pending.size > maxPendingConnections) trimming ??= setImmediate(trimPending)
    })
  }

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

  /** WebSocket connections held now, in all or for one tenant. */
  function connections (tenantId) {
    return tenantId === undefined ? held : (heldPerTenant.get(tenantId) ?? 0)
  }

  async function close () {
    if (closed) return
    closed = true
    if (heartbeat) clearInterval(heartbeat)
    if (trimming) clearImmediate(trimming)
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
    if (!external) {
      // Still binding: stop once it listens (a failed bind leaves nothing to stop).
      waits.push(listening.then(() => {
        if (!server.listening) return
        const stopped = new Promise((resolve) => server.close(() => resolve()))
        server.closeAllConnections?.()
        return stopped
      }, () => {}))
    }
    await Promise.all(waits)
  }

  return { track, untrack, setState, state, listening, close, handleRequest, handleUpgrade, authorized, refusal, connections, server }
}

export default createStatusServer
