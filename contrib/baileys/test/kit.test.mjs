// The kit driven by Baileys' real event buffer and real Boom errors, read by a real ws client.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { QR_PENDING, createStatusServer, mergeState, wireUpdate } from '../index.mjs'
import { AUTH, Boom, TOKEN, connect, fakeSocket, fixtureFrames, http, withTimeout, withoutDate } from '../test-support/helpers.mjs'

const T = { timeout: 15_000 }

/** A kit on a free loopback port (with a token), closed after the test. */
async function kit (t, options = {}) {
  const k = createStatusServer({ host: '127.0.0.1', port: 0, token: TOKEN, ...options })
  t.after(() => k.close())
  const { port } = await k.listening
  return {
    k,
    port,
    ws: (tenant, headers = AUTH) => connect(`ws://127.0.0.1:${port}/ws/${encodeURIComponent(tenant)}`, headers),
    /** An HTTP request carrying the token unless `headers` says otherwise. */
    req: (method, path, opts = {}) => http(port, method, path, { ...opts, headers: { ...AUTH, ...opts.headers } })
  }
}

test('snapshot first, then every update in order, Boom fields intact', T, async (t) => {
  const { k, ws } = await kit(t)
  const sock = fakeSocket()
  k.track('business_1', sock)
  sock.emit({ connection: 'connecting', receivedPendingNotifications: false, qr: undefined })
  sock.emit({ connection: 'open' })

  const c = await ws('business_1')
  t.after(() => c.close())
  assert.deepEqual(await c.next(), { event: 'connection.update', data: { connection: 'open', receivedPendingNotifications: false } })

  sock.emit({ receivedPendingNotifications: true })
  sock.end(new Boom('Stream Errored (restart required)', { statusCode: 515 }))
  assert.deepEqual(await c.next(), { event: 'connection.update', data: { receivedPendingNotifications: true } })
  const close = await c.next()
  assert.equal(close.event, 'connection.update')
  assert.equal(close.data.connection, 'close')
  const err = close.data.lastDisconnect.error
  assert.equal(err.output.statusCode, 515)
  assert.equal(err.output.payload.message, 'Stream Errored (restart required)')
  assert.equal(err.isBoom, true)
  assert.equal(err.message, undefined, "an Error's own message does not survive JSON.stringify")
  assert.ok(!Number.isNaN(Date.parse(close.data.lastDisconnect.date)))
  // Exactly the fixture's frame (the one Baileys' own buffer + Boom produced), date aside.
  assert.deepEqual(withoutDate(close), withoutDate(fixtureFrames()[4]))
  assert.deepEqual(await c.idle(), [])
})

test('frames match the real fixtures for the same Baileys events', T, async (t) => {
  const { k, ws } = await kit(t)
  const sock = fakeSocket()
  k.track('b', sock)
  const c = await ws('b')
  t.after(() => c.close())
  assert.deepEqual(await c.next(), { event: 'connection.update', data: {} }, 'a tracked tenant always gets a snapshot first')

  const fixtures = fixtureFrames().slice(2)
  const boom = (message, statusCode) => ({ connection: 'close', lastDisconnect: { error: new Boom(message, { statusCode }), date: new Date() } })
  const updates = [
    { qr: '2@abc123,def456==,ghi789==,jkl012==' },
    { isNewLogin: true, qr: undefined },
    boom('Stream Errored (restart required)', 515),
    boom('Connection Failure', 401),
    boom('Stream Errored (conflict)', 440),
    boom('Connection Closed', 428),
    boom('QR refs attempts ended', 408),
    { connection: 'open' },
    { receivedPendingNotifications: true },
    { isOnline: true }
  ]
  assert.equal(updates.length, fixtures.length)
  for (const u of updates) sock.emit(u)
  // The fixtures are what Baileys emits; the kit serves them as they are, except the QR payload,
  // which becomes QR_PENDING (SPEC section 7).
  const served = fixtures.map((f) => typeof f.data.qr === 'string' ? { ...f, data: { ...f.data, qr: QR_PENDING } } : f)
  assert.equal(served.filter((f) => f.data.qr === QR_PENDING).length, 1)
  for (const expected of served) assert.deepEqual(withoutDate(await c.next()), withoutDate(expected))
})

test('merged state: qr cleared by open and by qr: undefined, lastDisconnect kept', T, async (t) => {
  const { k, ws, req } = await kit(t)
  const sock = fakeSocket()
  k.track('b', sock)
  sock.emit({ connection: 'connecting', receivedPendingNotifications: false, qr: undefined })
  sock.emit({ qr: 'QR-1' })
  assert.deepEqual(k.state('b'), { connection: 'connecting', receivedPendingNotifications: false, qr: 'pending' })
  sock.emit({ isNewLogin: true, qr: undefined })
  assert.equal(k.state('b').qr, undefined)
  sock.emit({ qr: 'QR-2' })
  sock.emit({ connection: 'open' })
  assert.equal(k.state('b').qr, undefined, 'a snapshot never holds qr together with open')
  sock.end(new Boom('Connection Closed', { statusCode: 428 }))
  const sock2 = fakeSocket()
  k.track('b', sock2)
  sock2.emit({ connection: 'connecting', receivedPendingNotifications: false, qr: undefined })
  sock2.emit({ connection: 'open' })
  const s = k.state('b')
  assert.equal(s.connection, 'open')
  assert.equal(s.lastDisconnect.error.output.statusCode, 428)

  const c = await ws('b')
  t.after(() => c.close())
  assert.deepEqual((await c.next()).data, s)
  const r = await req('GET', '/sessions/b/status')
  assert.deepEqual(r.json, s)

  // The pure helpers.
  assert.deepEqual(mergeState({ qr: 'x', connection: 'connecting' }, { connection: 'close' }), { connection: 'close' })
  assert.deepEqual(mergeState({ connection: 'connecting' }, { connection: 'connecting', qr: 'y' }), { connection: 'connecting', qr: 'y' })
})

test('bearer token: missing or wrong is 401, right (any scheme case) is accepted', T, async (t) => {
  const { k, ws, port } = await kit(t, { token: 's3cret' })
  const sock = fakeSocket()
  k.track('b', sock)
  sock.emit({ connection: 'open' })

  for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: 's3cret' }, { authorization: 'Basic s3cret' }, { authorization: 'Bearer s3cret-and-more' }]) {
    await assert.rejects(ws('b', headers), (e) => e.status === 401 && e.headers['www-authenticate'] === 'Bearer', JSON.stringify(headers))
    const r = await http(port, 'GET', '/sessions/b/status', { headers })
    assert.equal(r.status, 401)
    assert.equal(r.headers.get('www-authenticate'), 'Bearer')
    assert.equal(r.text.includes('open'), false)
  }
  // Unknown tenants are refused before anything else too.
  await assert.rejects(ws('nobody', {}), (e) => e.status === 401)

  for (const authorization of ['Bearer s3cret', 'bearer s3cret']) {
    const c = await ws('b', { authorization })
    assert.deepEqual(await c.next(), { event: 'connection.update', data: { connection: 'open' } })
    await c.close()
    const r = await http(port, 'GET', '/sessions/b/status', { headers: { authorization } })
    assert.equal(r.status, 200)
    assert.deepEqual(r.json, { connection: 'open' })
  }
})

test('re-track with a new socket replaces the old subscription', T, async (t) => {
  const { k, ws } = await kit(t)
  const old = fakeSocket()
  k.track('b', old)
  old.emit({ connection: 'open' })
  const c = await ws('b')
  t.after(() => c.close())
  assert.equal((await c.next()).data.connection, 'open')

  const fresh = fakeSocket()
  k.track('b', fresh)
  old.emit({ connection: 'close', lastDisconnect: { error: new Boom('Connection Closed', { statusCode: 428 }), date: new Date() } })
  old.emit({ qr: 'stale' })
  assert.deepEqual(await c.idle(), [], "the old socket's events are not forwarded")
  assert.deepEqual(k.state('b'), { connection: 'open' })

  fresh.emit({ connection: 'connecting', receivedPendingNotifications: false, qr: undefined })
  fresh.emit({ connection: 'open' })
  assert.deepEqual((await c.next()).data, { connection: 'connecting', receivedPendingNotifications: false })
  assert.deepEqual((await c.next()).data, { connection: 'open' })

  // track() with the same socket again does not double-subscribe.
  k.track('b', fresh)
  fresh.emit({ isOnline: true })
  assert.deepEqual((await c.next()).data, { isOnline: true })
  assert.deepEqual(await c.idle(), [])

  // After Baileys' end() (which removes every connection.update listener), a new socket works.
  fresh.end(new Boom('Stream Errored (restart required)', { statusCode: 515 }))
  assert.equal((await c.next()).data.lastDisconnect.error.output.statusCode, 515)
  const third = fakeSocket()
  k.track('b', third)
  third.emit({ connection: 'open' })
  assert.deepEqual((await c.next()).data, { connection: 'open' })
})

test('HTTP state endpoint: 200 merged state, 404 unknown, 405, 400, 426, percent-encoded ids', T, async (t) => {
  const { k, port, ws, req } = await kit(t)
  const sock = fakeSocket()
  const id = 'tenant a/b é'
  k.track(id, sock)
  sock.emit({ connection: 'close', lastDisconnect: { error: new Boom('Connection Failure', { statusCode: 401 }), date: new Date() } })

  const r = await req('GET', `/sessions/${encodeURIComponent(id)}/status`)
  assert.equal(r.status, 200)
  assert.match(r.headers.get('content-type'), /application\/json/)
  assert.equal(r.json.connection, 'close')
  assert.equal(r.json.lastDisconnect.error.output.statusCode, 401)
  assert.equal(r.json.lastDisconnect.error.output.payload.message, 'Connection Failure')
  assert.equal((await req('GET', `/sessions/${encodeURIComponent(id)}/status/`)).status, 200)

  const c = await ws(id)
  t.after(() => c.close())
  assert.deepEqual((await c.next()).data, r.json)

  assert.equal((await req('GET', '/sessions/nobody/status')).status, 404)
  assert.equal((await req('POST', `/sessions/${encodeURIComponent(id)}/status`, { body: {} })).status, 405)
  assert.equal((await req('GET', '/sessions/%E0%A4%A/status')).status, 400)
  assert.equal((await req('GET', `/ws/${encodeURIComponent(id)}`)).status, 426)
  assert.equal((await req('GET', '/elsewhere')).status, 404)
  await assert.rejects(connect(`ws://127.0.0.1:${port}/other/b`, AUTH), (e) => e.status === 404)
})

test('unknown tenant: accepted and silent until tracked (default), or 404 with unknownTenant: reject', T, async (t) => {
  const { k, ws } = await kit(t)
  const c = await ws('later')
  t.after(() => c.close())
  assert.deepEqual(await c.idle(), [], 'nothing is sent for a tenant never tracked')
  const sock = fakeSocket()
  k.track('later', sock)
  sock.emit({ connection: 'connecting', receivedPendingNotifications: false, qr: undefined })
  assert.deepEqual((await c.next()).data, { connection: 'connecting', receivedPendingNotifications: false })

  // untrack: state forgotten, events no longer forwarded, a new client gets no snapshot.
  k.untrack('later')
  sock.emit({ connection: 'open' })
  assert.deepEqual(await c.idle(), [])
  assert.equal(k.state('later'), undefined)
  const c2 = await ws('later')
  t.after(() => c2.close())
  assert.deepEqual(await c2.idle(), [])

  const strict = await kit(t, { unknownTenant: 'reject' })
  await assert.rejects(strict.ws('nobody'), (e) => e.status === 404)
  strict.k.track('known', fakeSocket())
  const c3 = await strict.ws('known')
  assert.deepEqual(await c3.next(), { event: 'connection.update', data: {} })
  const closed = new Promise((resolve) => c3.ws.once('close', (code) => resolve(code)))
  strict.k.untrack('known')
  assert.equal(await closed, 1001)
})

test('setState without a socket, several clients, ping answered, close() ends clients', T, async (t) => {
  const k = createStatusServer({ host: '127.0.0.1', port: 0, token: TOKEN })
  const { port } = await k.listening
  k.setState('b', { connection: 'close', lastDisconnect: { error: new Boom('Intentional Logout', { statusCode: 401 }), date: new Date() } })
  const url = `ws://127.0.0.1:${port}/ws/b`
  const [c1, c2] = await Promise.all([connect(url, AUTH), connect(url, AUTH)])
  for (const c of [c1, c2]) assert.equal((await c.next()).data.lastDisconnect.error.output.payload.message, 'Intentional Logout')
  k.setState('b', { connection: 'open' })
  for (const c of [c1, c2]) assert.deepEqual((await c.next()).data, { connection: 'open' })
  await c2.close()
  k.setState('b', { isOnline: true })
  assert.deepEqual((await c1.next()).data, { isOnline: true })

  const pong = new Promise((resolve) => c1.ws.once('pong', (data) => resolve(data.toString())))
  c1.ws.ping('hello')
  assert.equal(await pong, 'hello')

  const closed = new Promise((resolve) => c1.ws.once('close', (code) => resolve(code)))
  await k.close()
  assert.equal(await closed, 1001)
  await assert.rejects(http(port, 'GET', '/sessions/b/status', { headers: AUTH }))
})

test('odd Boom data: cycles, BigInt, huge payloads never throw into Baileys and stay readable', T, async (t) => {
  const { k, ws } = await kit(t, { maxFrameBytes: 64 * 1024 })
  const sock = fakeSocket()
  k.track('b', sock)
  const c = await ws('b')
  t.after(() => c.close())
  await c.next()

  const cyclic = { tag: 'stream:error', attrs: { code: '515' } }
  cyclic.self = cyclic
  sock.emit({ connection: 'close', lastDisconnect: { error: new Boom('Stream Errored (restart required)', { statusCode: 515, data: cyclic }), date: new Date() } })
  let f = await c.next()
  assert.equal(f.data.lastDisconnect.error.output.statusCode, 515)
  assert.equal(f.data.lastDisconnect.error.data.self, '[Circular]')

  sock.emit({ connection: 'close', lastDisconnect: { error: new Boom('Connection Failure', { statusCode: 401, data: { n: 10n } }), date: new Date() } })
  f = await c.next()
  assert.equal(f.data.lastDisconnect.error.data.n, '10')

  const big = { content: Buffer.alloc(200 * 1024, 7) }
  sock.emit({ connection: 'close', lastDisconnect: { error: new Boom('Stream Errored (conflict)', { statusCode: 440, data: big }), date: new Date() } })
  f = await c.next()
  assert.equal(f.data.lastDisconnect.error.data, null)
  assert.equal(f.data.lastDisconnect.error.output.statusCode, 440)
  assert.equal(f.data.lastDisconnect.error.output.payload.message, 'Stream Errored (conflict)')

  // Non-object updates are ignored.
  sock.ev.emit('connection.update', null)
  sock.ev.emit('connection.update', 'open')
  assert.deepEqual(await c.idle(), [])
  assert.equal(k.state('b').connection, 'close')

  assert.deepEqual(wireUpdate({ connection: 'open', when: new Date(0) }), { connection: 'open', when: '1970-01-01T00:00:00.000Z' })
})

test('listening rejects when the port is taken', T, async (t) => {
  const { port } = await kit(t)
  const k2 = createStatusServer({ host: '127.0.0.1', port, token: TOKEN })
  await assert.rejects(k2.listening, /EADDRINUSE/)
  await k2.close()
})

test('close() before the server listens still stops it: the port is free afterwards', T, async (t) => {
  const k = createStatusServer({ host: '127.0.0.1', port: 0, token: TOKEN })
  // If close() ever leaks the server again, this test fails instead of keeping the run alive.
  t.after(() => { if (k.server.listening) k.server.close() })
  assert.equal(k.server.listening, false, 'called while the bind is still under way')
  const closing = [k.close(), k.close()]
  await withTimeout(Promise.all(closing), 5000, 'close() before listening')
  assert.equal(k.server.listening, false)
  const { port } = await k.listening
  const refused = await new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('connect', () => { s.destroy(); resolve(null) })
    s.once('error', (e) => resolve(e.code))
  })
  assert.equal(refused, 'ECONNREFUSED', 'nothing listens on the port any more')
})

// Both Baileys lines of the peer range: 7.x (`baileys`) and 6.x (`baileys-6`, an npm alias).
for (const [line, name] of [['7.x', 'baileys'], ['6.x', 'baileys-6']]) {
  test(`a genuine Baileys ${line} makeWASocket (pointed at a closed loopback port) is tracked like the fixtures`, T, async (t) => {
    const { default: makeWASocket, initAuthCreds } = await import(name)
    const { createServer } = await import('node:net')
    // A loopback port that refuses connections: bind one, then free it.
    const probe = createServer()
    await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve))
    const deadPort = probe.address().port
    await new Promise((resolve) => probe.close(resolve))

    const { k, ws } = await kit(t)
    const c = await ws('real')
    t.after(() => c.close())
    const silent = { level: 'silent', trace () {}, debug () {}, info () {}, warn () {}, error () {}, fatal () {}, child () { return silent } }
    const sock = makeWASocket({
      auth: { creds: initAuthCreds(), keys: { get: async () => ({}), set: async () => {} } },
      logger: silent,
      waWebSocketUrl: `ws://127.0.0.1:${deadPort}/ws/chat`,
      connectTimeoutMs: 3000
    })
    k.track('real', sock) // synchronously after creation, as a gateway must

    const [connecting, close] = fixtureFrames()
    assert.deepEqual(await c.next(5000), connecting)
    const f = await c.next(5000)
    assert.equal(f.data.connection, 'close')
    const err = f.data.lastDisconnect.error
    assert.equal(err.output.statusCode, 408)
    assert.equal(err.output.payload.message, `WebSocket Error (connect ECONNREFUSED 127.0.0.1:${deadPort})`)
    assert.equal(err.data.code, 'ECONNREFUSED')
    // Same shape as the fixture frame from a genuine Baileys 7 socket (there: ENOTFOUND).
    const keys = (o) => Object.keys(o).sort()
    assert.deepEqual(keys(f.data), keys(close.data))
    assert.deepEqual(keys(err), keys(close.data.lastDisconnect.error))
    assert.deepEqual(keys(err.output), keys(close.data.lastDisconnect.error.output))
    assert.deepEqual(keys(err.output.payload), keys(close.data.lastDisconnect.error.output.payload))
  })
}

test('attached to an existing HTTP server (the README\'s Express-style mount), with the same checks', T, async (t) => {
  const { createServer } = await import('node:http')
  let status
  const app = createServer((req, res) => status.handleRequest(req, res) || res.end('the app'))
  status = createStatusServer({ server: app, token: TOKEN })
  t.after(async () => { await status.close(); await new Promise((resolve) => app.close(resolve)) })
  app.listen(0, '127.0.0.1')
  const { port, host } = await status.listening
  assert.equal(host, '127.0.0.1')
  status.setState('b', { connection: 'open' })

  const c = await connect(`ws://127.0.0.1:${port}/ws/b`, AUTH)
  t.after(() => c.close())
  assert.deepEqual((await c.next()).data, { connection: 'open' })
  await assert.rejects(connect(`ws://127.0.0.1:${port}/ws/b`), (e) => e.status === 401)
  await assert.rejects(connect(`ws://127.0.0.1:${port}/ws/b`, { ...AUTH, origin: 'https://evil.example' }), (e) => e.status === 403)
  assert.deepEqual((await http(port, 'GET', '/sessions/b/status', { headers: AUTH })).json, { connection: 'open' })
  assert.equal((await http(port, 'GET', '/sessions/b/status')).status, 401)
  assert.equal((await http(port, 'GET', '/elsewhere')).text, 'the app')
  assert.equal(status.connections('b'), 1)
})
