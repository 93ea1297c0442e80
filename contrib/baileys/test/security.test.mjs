// The kit's lock-down (issue 12, SPEC section 7), probed with real ws clients and real HTTP on
// 127.0.0.1: loopback by default, a token unless explicitly waived for loopback development, the
// QR payload never served, web pages refused, WebSocket connections capped.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { QR_PENDING, createStatusServer, isLoopback } from '../index.mjs'
import { AUTH, TOKEN, connect, eventually, fakeSocket, http, rawHttp, withTimeout } from '../test-support/helpers.mjs'

const T = { timeout: 20_000 }

/** Collects what a pino-style logger is given. */
function recordingLogger () {
  const warnings = []
  return { warnings, warn: (obj, msg) => warnings.push(msg ?? obj) }
}

async function kit (t, options = {}) {
  const k = createStatusServer({ host: '127.0.0.1', port: 0, token: TOKEN, ...options })
  t.after(() => k.close())
  const { port, host } = await k.listening
  const wsUrl = (tenant) => `ws://127.0.0.1:${port}/ws/${encodeURIComponent(tenant)}`
  return { k, port, host, wsUrl, ws: (tenant, headers = AUTH) => connect(wsUrl(tenant), headers) }
}

test('a token is required: no token, an empty one or one that cannot be sent is refused at start', T, () => {
  for (const options of [{}, { token: undefined }, { token: '' }, { token: null }, { insecureNoToken: 'yes' }]) {
    assert.throws(() => createStatusServer({ port: 0, ...options }), (e) => {
      assert.ok(e instanceof TypeError)
      assert.match(e.message, /token is required/)
      assert.match(e.message, /insecureNoToken: true/, 'the error names the explicit opt-out')
      return true
    }, JSON.stringify(options))
  }
  for (const token of ['with space', 'tab\there', 'new\nline', 'é-unicode', 42, { t: 1 }]) {
    assert.throws(() => createStatusServer({ port: 0, token }), (e) => {
      assert.match(e.message, /visible ASCII/)
      assert.equal(e.message.includes(String(token)), false, 'the token is never echoed')
      return true
    })
  }
})

test('a hostile Authorization header costs no event-loop time: no backtracking parse, over 1 KiB a 401 unread', T, async (t) => {
  const { k, port, ws } = await kit(t)
  k.setState('b', { connection: 'open' })
  const hostile = {
    '1 KB of spaces (under the length cap)': 'Bearer x' + ' '.repeat(1000) + 'y',
    '16 KB of spaces': 'Bearer x' + ' '.repeat(16_000) + 'y',
    '64 KB of spaces': 'Bearer x' + ' '.repeat(64_000) + 'y',
    '16 KB of tabs': 'bearer\t' + 'x\t'.repeat(8_000) + 'y',
    'the token, then 16 KB': `Bearer ${TOKEN}` + ' '.repeat(16_000) + 'y'
  }

  // The parse itself, as every request runs it before the token is checked. The regex it
  // replaced took ~100 ms per 16 KB header, so it fails here within about ten rounds; a linear
  // parse takes microseconds, so 200 staying under 1 s leaves a loaded CI machine a margin of
  // hundreds (this is a bound on the work, not a performance measurement).
  const loopback = { remoteAddress: '127.0.0.1', localAddress: '127.0.0.1' }
  const ROUNDS = 200
  for (const [what, authorization] of Object.entries(hostile)) {
    const req = { headers: { authorization }, socket: loopback }
    const t0 = performance.now()
    for (let i = 1; i <= ROUNDS; i++) {
      assert.deepEqual(k.refusal(req), { status: 401, error: 'unauthorized' }, what)
      const ms = performance.now() - t0
      // Checked every round, so a quadratic parse fails at once rather than after 200 slow ones.
      if (ms >= 1000) assert.fail(`${what}: ${i} of ${ROUNDS} parses already took ${ms.toFixed(1)} ms`)
    }
  }
  // The grammar: scheme in any case, then spaces or tabs, a visible-ASCII token, blanks around it.
  for (const authorization of [`Bearer ${TOKEN}`, `bearer\t${TOKEN}`, `BEARER  ${TOKEN} \t`]) {
    assert.equal(k.refusal({ headers: { authorization }, socket: loopback }), null, JSON.stringify(authorization))
  }
  for (const authorization of [`Bearer${TOKEN}`, `Bearer ${TOKEN}x`, `Bearer ${TOKEN} x`, `Bearer ${TOKEN}\u0000`, `Bearer \u00e9${TOKEN}`,
    'Bearer', 'Bearer ', `Basic ${TOKEN}`, `Bearer ${TOKEN}` + ' '.repeat(1024), ['Bearer', TOKEN]]) {
    assert.deepEqual(k.refusal({ headers: { authorization }, socket: loopback }), { status: 401, error: 'unauthorized' }, JSON.stringify(authorization))
  }

  // Over real HTTP and WebSocket upgrades: a 401 (64 KB is over Node's own 16 KiB header limit,
  // which answers 431 before the kit sees it, unless node runs with a larger --max-http-header-size).
  for (const [what, authorization] of Object.entries(hostile)) {
    const expected = what.startsWith('64 KB') ? [401, 431] : [401]
    const r = await rawHttp(port, 'GET', '/sessions/b/status', { authorization })
    assert.ok(expected.includes(r.status), `${what}: HTTP ${r.status}`)
    assert.equal(r.text.includes('open'), false)
    await assert.rejects(ws('b', { authorization }), (e) => expected.includes(e.status), what)
  }
  const c = await ws('b')
  assert.deepEqual((await c.next()).data, { connection: 'open' }, 'the right token still connects')
  await c.close()

  // A token has to fit in the header that is read.
  const longest = 'x'.repeat(1024 - 'Bearer '.length)
  const big = createStatusServer({ host: '127.0.0.1', port: 0, token: longest })
  t.after(() => big.close())
  assert.equal(big.refusal({ headers: { authorization: `Bearer ${longest}` }, socket: loopback }), null)
  assert.throws(() => createStatusServer({ port: 0, token: longest + 'x' }), (e) => {
    assert.match(e.message, /at most 1017 characters/)
    assert.equal(e.message.includes(longest), false, 'the token is never echoed')
    return true
  })
})

test('bound to loopback by default; a token lets an operator choose another host', T, async (t) => {
  const { host } = await kit(t)
  assert.equal(host, '127.0.0.1')
  assert.equal(createStatusServer.length, 0)
  for (const h of ['127.0.0.1', '127.8.0.1', '::1', '[::1]', '::ffff:127.0.0.1', 'localhost']) assert.equal(isLoopback(h), true, h)
  for (const h of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.10', '::ffff:10.0.0.1', 'example.com', 'localhost.example.com', '', undefined]) {
    assert.equal(isLoopback(h), false, String(h))
  }
})

test('insecureNoToken: refused for a non-loopback host, warns once, serves loopback only', T, async (t) => {
  for (const host of ['0.0.0.0', '::', '192.168.1.10', 'gateway.internal']) {
    assert.throws(() => createStatusServer({ host, port: 0, insecureNoToken: true }), /insecureNoToken is refused for host .*set a token/, host)
  }

  const logger = recordingLogger()
  const { k, port, ws } = await kit(t, { token: undefined, insecureNoToken: true, logger })
  assert.equal(logger.warnings.length, 1)
  assert.match(logger.warnings[0], /insecureNoToken.*without a token/)
  const sock = fakeSocket()
  k.track('b', sock)
  sock.emit({ connection: 'open' })

  // Loopback, no token: served.
  const c = await ws('b', {})
  t.after(() => c.close())
  assert.deepEqual(await c.next(), { event: 'connection.update', data: { connection: 'open' } })
  assert.equal((await http(port, 'GET', '/sessions/b/status')).status, 200)
  assert.equal((await rawHttp(port, 'GET', '/sessions/b/status', { host: `localhost:${port}` })).status, 200)
  assert.equal((await rawHttp(port, 'GET', '/sessions/b/status', { host: `[::1]:${port}` })).status, 200)

  // A Host that is not loopback: a page on a rebound DNS name (DNS rebinding) reads nothing.
  for (const host of [`evil.example:${port}`, 'evil.example', `10.0.0.1:${port}`]) {
    const r = await rawHttp(port, 'GET', '/sessions/b/status', { host })
    assert.equal(r.status, 403, host)
    assert.equal(r.text.includes('open'), false)
    await assert.rejects(ws('b', { host }), (e) => e.status === 403, host)
  }
  // A request that did not come over loopback (it cannot be sent from here: loopback only).
  const remote = { headers: {}, socket: { remoteAddress: '10.1.2.3', localAddress: '10.1.2.1' } }
  assert.deepEqual(k.refusal(remote), { status: 403, error: 'insecureNoToken serves loopback only; configure a token' })
  assert.equal(k.authorized(remote), false)
  assert.equal(k.refusal({ headers: {}, socket: { remoteAddress: '127.0.0.1', localAddress: '127.0.0.1' } }), null)

  assert.equal(logger.warnings.filter((w) => /without a token/.test(w)).length, 1, 'warned once, not per request')
})

test('insecureNoToken without a logger: one process warning', T, async (t) => {
  const seen = []
  const onWarning = (w) => { if (w.code === 'WA_STATUS_INSECURE_NO_TOKEN') seen.push(w.message) }
  process.on('warning', onWarning)
  t.after(() => process.off('warning', onWarning))
  const { port } = await kit(t, { token: undefined, insecureNoToken: true })
  await http(port, 'GET', '/sessions/x/status')
  await http(port, 'GET', '/sessions/x/status')
  await eventually(() => seen.length > 0, 2000, 'the warning')
  assert.equal(seen.length, 1)
  assert.match(seen[0], /loopback only/)
})

test('the QR pairing payload is never served: only that a QR is pending', T, async (t) => {
  const { k, port, ws } = await kit(t)
  const sock = fakeSocket()
  k.track('b', sock)
  const payloads = ['2@Xq1+first,noiseKeyA==,identityKeyA==,advSecretA==', '2@Yr2+second,noiseKeyB==,identityKeyB==,advSecretB==', '2@Zs3+third,k==,k==,k==']
  const leaks = (text) => payloads.some((p) => text.includes(p) || text.includes(p.split(',')[0]))

  sock.emit({ connection: 'connecting', receivedPendingNotifications: false, qr: undefined })
  sock.emit({ qr: payloads[0] })

  // The snapshot (WebSocket) and the state endpoint.
  const c = await ws('b')
  t.after(() => c.close())
  const snapshot = await c.next()
  assert.deepEqual(snapshot, { event: 'connection.update', data: { connection: 'connecting', receivedPendingNotifications: false, qr: QR_PENDING } })
  const status = await http(port, 'GET', '/sessions/b/status', { headers: AUTH })
  assert.equal(status.status, 200)
  assert.equal(leaks(status.text), false)
  assert.deepEqual(status.json, snapshot.data)
  assert.equal(leaks(JSON.stringify(k.state('b'))), false)
  // What the sidecar reads as "waiting for a scan" (src/observe.rs: `qr` a non-empty string).
  assert.equal(typeof status.json.qr, 'string')
  assert.notEqual(status.json.qr, '')

  // Live updates: Baileys refreshes the QR; a QR can come with a connection change.
  sock.emit({ qr: payloads[1] })
  let f = await c.next()
  assert.deepEqual(f.data, { qr: QR_PENDING })
  sock.emit({ connection: 'connecting', qr: payloads[2] })
  f = await c.next()
  assert.deepEqual(f.data, { connection: 'connecting', qr: QR_PENDING })
  assert.equal(k.state('b').qr, QR_PENDING)

  // Scanned (Baileys clears qr with undefined), or an empty / null / non-string qr: no QR pending.
  for (const clear of [{ isNewLogin: true, qr: undefined }, { qr: '' }, { qr: null }, { qr: 12345 }]) {
    sock.emit({ qr: payloads[0] })
    assert.deepEqual((await c.next()).data, { qr: QR_PENDING })
    sock.emit(clear)
    f = await c.next()
    assert.equal(Object.hasOwn(f.data, 'qr'), false, JSON.stringify(clear))
    assert.equal(Object.hasOwn(k.state('b'), 'qr'), false, JSON.stringify(clear))
  }
  const after = await http(port, 'GET', '/sessions/b/status', { headers: AUTH })
  assert.equal(Object.hasOwn(after.json, 'qr'), false)
  assert.equal(leaks(after.text), false)
})

test('web pages are refused: a foreign Origin or Sec-Fetch-Site cross-site is a 403, before the token', T, async (t) => {
  const { k, port, ws } = await kit(t, { allowOrigins: ['https://admin.example.com/'] })
  k.setState('b', { connection: 'open' })

  for (const origin of ['https://evil.example', 'http://127.0.0.1:8080', `http://127.0.0.1:${port}`, 'null', 'https://admin.example.com.evil.example']) {
    for (const headers of [{ ...AUTH, origin }, { origin }]) {
      await assert.rejects(ws('b', headers), (e) => e.status === 403, origin)
      const r = await rawHttp(port, 'GET', '/sessions/b/status', headers)
      assert.equal(r.status, 403, origin)
      assert.match(r.text, /web pages/)
      assert.equal(r.text.includes('open'), false)
    }
  }
  for (const site of ['cross-site', 'same-site', 'CROSS-SITE']) {
    const r = await rawHttp(port, 'GET', '/sessions/b/status', { ...AUTH, 'sec-fetch-site': site })
    assert.equal(r.status, 403, site)
  }
  for (const site of ['none', 'same-origin']) {
    assert.equal((await rawHttp(port, 'GET', '/sessions/b/status', { ...AUTH, 'sec-fetch-site': site })).status, 200, site)
  }

  // An allowed origin still needs the token.
  const origin = 'https://ADMIN.example.com'
  await assert.rejects(ws('b', { origin }), (e) => e.status === 401)
  assert.equal((await rawHttp(port, 'GET', '/sessions/b/status', { origin })).status, 401)
  const c = await ws('b', { ...AUTH, origin })
  assert.deepEqual((await c.next()).data, { connection: 'open' })
  await c.close()
  assert.equal((await rawHttp(port, 'GET', '/sessions/b/status', { ...AUTH, origin })).status, 200)

  assert.throws(() => createStatusServer({ port: 0, token: TOKEN, allowOrigins: '*' }), /allowOrigins must be an array/)
})

test('WebSocket caps: over the per-tenant or total cap is a 503 before the upgrade; slots come back', T, async (t) => {
  const logger = recordingLogger()
  const { k, port, ws } = await kit(t, { maxConnectionsPerTenant: 2, maxConnections: 3, logger })
  const open = []
  t.after(() => Promise.all(open.map((c) => c.close())))
  const hold = async (tenant) => { const c = await ws(tenant); open.push(c); return c }

  await hold('a')
  const a2 = await hold('a')
  await assert.rejects(ws('a'), (e) => {
    assert.equal(e.status, 503)
    assert.equal(e.headers['retry-after'], '5')
    return true
  })
  assert.equal(k.connections('a'), 2)
  await hold('b')
  assert.equal(k.connections(), 3)
  await assert.rejects(ws('c'), (e) => e.status === 503, 'the total cap')
  assert.ok(logger.warnings.some((w) => /maxConnectionsPerTenant \(2\) reached/.test(w)))
  assert.equal(logger.warnings.length, 1, 'cap warnings are throttled')

  // Refused and unauthorized attempts hold nothing; the state endpoint is not a WebSocket.
  for (let i = 0; i < 5; i++) await assert.rejects(ws('c', {}), (e) => e.status === 401)
  assert.equal(k.connections(), 3)
  k.setState('c', { connection: 'open' })
  assert.equal((await http(port, 'GET', '/sessions/c/status', { headers: AUTH })).status, 200)

  // A closed connection gives its slot back.
  await a2.close()
  open.splice(open.indexOf(a2), 1)
  await eventually(() => k.connections() === 2, 3000, 'the slot to come back')
  const c = await hold('c')
  assert.deepEqual((await c.next()).data, { connection: 'open' })
  assert.equal(k.connections('c'), 1)

  // A client that vanishes without a close handshake frees its slot too.
  c.ws.terminate()
  open.splice(open.indexOf(c), 1)
  await eventually(() => k.connections('c') === 0, 3000, 'the terminated slot to come back')

  for (const bad of [{ maxConnections: 0 }, { maxConnectionsPerTenant: -1 }, { maxConnections: 'many' }, { maxConnectionsPerTenant: 1.5 }]) {
    assert.throws(() => createStatusServer({ port: 0, token: TOKEN, ...bad }), /must be a positive integer/)
  }
})

test('default cap: 64 WebSockets per tenant, the 65th is refused', T, async (t) => {
  const { k, ws } = await kit(t)
  const open = []
  t.after(() => Promise.all(open.map((c) => c.close())))
  for (let i = 0; i < 64; i++) open.push(await ws('busy'))
  assert.equal(k.connections('busy'), 64)
  await assert.rejects(ws('busy'), (e) => e.status === 503)
  const other = await ws('other')
  open.push(other)
})

test('own server: a client that never finishes its headers is dropped', T, async (t) => {
  const { port } = await kit(t, { headersTimeoutMs: 300 })
  const sock = net.connect(port, '127.0.0.1')
  sock.on('error', () => {})
  t.after(() => sock.destroy())
  await new Promise((resolve) => sock.once('connect', resolve))
  let answer = ''
  sock.on('data', (d) => { answer += d })
  sock.write('GET /sessions/b/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ')
  await withTimeout(new Promise((resolve) => sock.once('close', resolve)), 5000, 'the server to drop a slow client')
  assert.match(answer, /^HTTP\/1\.1 408 /)
})

/** `n` TCP connections to the port that never send a byte; resolves once each is connected (or closed). */
async function silentSockets (t, port, n) {
  const socks = []
  t.after(() => { for (const s of socks) s.destroy() })
  await Promise.all(Array.from({ length: n }, () => new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.closedByServer = false
    s.on('error', () => {})
    s.once('close', () => { s.closedByServer = true; resolve() })
    s.once('connect', resolve)
    socks.push(s)
  })))
  return socks
}

test('own server: silent connections cannot lock the token out: beyond maxPendingConnections the oldest unauthenticated ones are closed', T, async (t) => {
  const logger = recordingLogger()
  let slowStarted = false
  const { k, port, ws } = await kit(t, {
    maxConnections: 2,
    maxPendingConnections: 4,
    headersTimeoutMs: 30_000, // the flood is trimmed by the pool rule, not by a timeout
    logger,
    onRequest (req, res) { slowStarted = true; setTimeout(() => res.end('done'), 400) }
  })
  k.setState('b', { connection: 'open' })
  const first = await ws('b')
  t.after(() => first.close())
  assert.deepEqual((await first.next()).data, { connection: 'open' })
  // An authorized request being answered (a gateway route behind onRequest) is not closed for the flood.
  const slow = http(port, 'GET', '/slow', { headers: AUTH })
  await eventually(() => slowStarted, 3000, 'the slow request to start')

  const flood = await silentSockets(t, port, 40)
  // The pool: the busy request + at most 3 of the flood (maxPendingConnections 4).
  await eventually(() => flood.filter((s) => !s.closedByServer).length <= 3, 5000, 'the flood to be trimmed to maxPendingConnections')
  assert.ok(logger.warnings.some((w) => /maxPendingConnections \(4\) reached/.test(w)), 'the operator is told')

  // The token still gets a WebSocket, at once; the one already held is untouched.
  const second = await ws('b')
  t.after(() => second.close())
  assert.deepEqual((await second.next()).data, { connection: 'open' })
  assert.equal(k.connections(), 2)
  k.setState('b', { isOnline: true })
  assert.deepEqual((await first.next()).data, { isOnline: true })
  assert.deepEqual((await second.next()).data, { isOnline: true })
  const answered = await slow
  assert.equal(answered.status, 200)
  assert.equal(answered.text, 'done')
  // Authenticated WebSockets are still capped at maxConnections.
  await assert.rejects(ws('b'), (e) => e.status === 503)
  for (const bad of [{ maxPendingConnections: 0 }, { maxPendingConnections: 2.5 }]) {
    assert.throws(() => createStatusServer({ port: 0, token: TOKEN, ...bad }), /maxPendingConnections must be a positive integer/)
  }
})

test('own server: clients reconnecting as fast as they can, without a token, do not keep the token out', T, async (t) => {
  const { k, port, ws } = await kit(t, { maxConnections: 4, maxPendingConnections: 8 })
  k.setState('b', { connection: 'open' })
  // 100 silent clients (more than the WebSockets and the pool together), each reconnecting as soon
  // as the server closes it: bounded to 5000 connects.
  const MAX_CONNECTS = 5000
  let stop = false
  let connects = 0
  let closedByServer = 0
  const live = new Set()
  const open = () => {
    if (stop || connects >= MAX_CONNECTS) return
    connects++
    const s = net.connect(port, '127.0.0.1')
    live.add(s)
    s.on('error', () => {})
    s.once('close', () => {
      live.delete(s)
      if (stop) return
      closedByServer++
      setImmediate(open)
    })
  }
  const halt = () => { stop = true; for (const s of live) s.destroy() }
  t.after(halt)
  for (let i = 0; i < 100; i++) open()
  await eventually(() => connects >= 300, 10_000, 'the flood to be running')

  let c = null
  let attempts = 0
  let lastError
  while (c === null && attempts < 10) {
    attempts++
    c = await ws('b').catch((e) => { lastError = e; return null })
  }
  const during = connects
  halt()
  assert.ok(c !== null, `no WebSocket in ${attempts} attempts during the flood: ${lastError}`)
  t.after(() => c.close())
  assert.deepEqual((await c.next()).data, { connection: 'open' })
  assert.ok(during > 200 && closedByServer > 200, `the flood ran (${during} connects, ${closedByServer} closed by the server)`)
})

/**
 * The pool's first-byte grace, on a hand-moved clock (the kit reads `performance.now()`), so
 * nothing here depends on how fast this machine runs: the pool (maxPendingConnections 3) holds
 * a silent client A, then two clients that have each had a request refused (401, kept alive:
 * bytes read, newer than A); one more connection makes the pool trim one. The oldest goes first,
 * unless it is A and A has been silent for less than the grace: then a refused one goes instead.
 * Returns which of the four the server closed, and whether A was then served.
 */
async function trimWithSilentFor (t, silentMs) {
  let clock = 1_000_000
  t.mock.method(performance, 'now', () => clock)
  const { k, port } = await kit(t, { maxPendingConnections: 3, headersTimeoutMs: 60_000 })
  k.setState('b', { connection: 'open' })
  let accepted = 0
  k.server.on('connection', () => { accepted++ })

  const all = []
  t.after(() => { for (const c of all) c.socket.destroy() })
  const open = async (label) => {
    const c = { label, socket: net.connect(port, '127.0.0.1'), gone: false, received: '' }
    c.socket.on('error', () => {})
    c.socket.on('data', (d) => { c.received += d })
    c.socket.once('close', () => { c.gone = true })
    all.push(c)
    const n = accepted + 1
    await eventually(() => accepted >= n, 5000, `the server to accept ${label}`)
    return c
  }
  const roundTrip = async (c, headers, status) => {
    const from = c.received.length
    c.socket.write(`GET /sessions/b/status HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers}\r\n`)
    await eventually(() => c.received.includes(`HTTP/1.1 ${status} `, from) || c.gone, 5000, `${c.label}: HTTP ${status}`)
    return c.received.includes(`HTTP/1.1 ${status} `, from)
  }

  const a = await open('A (silent)')
  for (const label of ['B1 (refused)', 'B2 (refused)']) {
    assert.equal(await roundTrip(await open(label), '', 401), true, label)
  }
  clock += silentMs
  await open('C (new, silent)') // the fourth: over maxPendingConnections, a trim closes one
  await eventually(() => all.some((c) => c.gone), 5000, 'the pool to close one connection')
  // The trim closes all it chose at once: a round trip on a survivor comes after every close.
  const survivor = a.gone ? all[2] : a
  const served = await roundTrip(survivor, a.gone ? '' : `Authorization: ${AUTH.authorization}\r\n`, a.gone ? 401 : 200)
  assert.equal(served, true, `${survivor.label} was served`)
  return all.filter((c) => c.gone).map((c) => c.label)
}

test('own server: a new connection silent for less than 250 ms is spared by the pool while one that has sent bytes can go', T, async (t) => {
  // A is the oldest: without the grace it would be the one closed.
  assert.deepEqual(await trimWithSilentFor(t, 0), ['B1 (refused)'])
  // The grace is measured: at 200 ms A is still spared.
  assert.deepEqual(await trimWithSilentFor(t, 200), ['B1 (refused)'])
})

test('own server: a connection silent for 250 ms or more has had its grace: the oldest goes first', T, async (t) => {
  assert.deepEqual(await trimWithSilentFor(t, 300), ['A (silent)'])
})
