// sim-gateway.mjs as a child process: control endpoint in, kit frames out.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { AUTH, TOKEN, connect, fixtureFrames, http, rawHttp, startSim, withoutDate } from '../test-support/helpers.mjs'

const T = { timeout: 30_000 }

/** The sim with `--token TOKEN` (unless args/env say otherwise), stopped after the test. */
async function sim (t, args = [], env = {}) {
  const explicit = args.includes('--token') || args.includes('--insecure-no-token') || 'GATEWAY_TOKEN' in env
  const s = await startSim(explicit ? args : ['--token', TOKEN, ...args], env)
  t.after(() => s.stop().catch(() => {}))
  return { ...s, req: (method, path, opts = {}) => http(s.port, method, path, { ...opts, headers: { ...AUTH, ...opts.headers } }) }
}

test('sim gateway: control actions reach a WebSocket client as real Baileys frames', T, async (t) => {
  const { port, stop, req } = await sim(t, ['business_1'])
  const ctl = (tenant, body) => req('POST', `/control/${tenant}`, { body })

  let r = await req('GET', '/control/business_1')
  assert.equal(r.status, 200)
  assert.deepEqual(r.json, { tenant: 'business_1', generation: 1, ended: false, state: { connection: 'open', receivedPendingNotifications: true } })

  const c = await connect(`ws://127.0.0.1:${port}/ws/business_1`, AUTH)
  t.after(() => c.close())
  assert.deepEqual(await c.next(), { event: 'connection.update', data: { connection: 'open', receivedPendingNotifications: true } })

  r = await ctl('business_1', { action: 'close', code: 515, message: 'Stream Errored (restart required)' })
  assert.equal(r.status, 200)
  assert.equal(r.json.ended, true)
  assert.deepEqual(withoutDate(await c.next()), withoutDate(fixtureFrames()[4]))

  r = await ctl('business_1', { action: 'reconnect' })
  assert.equal(r.json.generation, 2)
  assert.deepEqual((await c.next()).data, { connection: 'connecting', receivedPendingNotifications: false })
  assert.deepEqual((await c.next()).data, { connection: 'open' })
  assert.deepEqual((await c.next()).data, { receivedPendingNotifications: true })

  r = await ctl('business_1', { action: 'logout' })
  assert.deepEqual(withoutDate(await c.next()), withoutDate(fixtureFrames()[5]))
  assert.equal(r.json.state.lastDisconnect.error.output.statusCode, 401)

  // After a close, the next action runs on a new socket (a gateway reconnects), which says connecting first.
  r = await ctl('business_1', { action: 'qr', qr: '2@abc123,def456==,ghi789==,jkl012==' })
  assert.equal(r.json.generation, 3)
  assert.deepEqual((await c.next()).data, { connection: 'connecting', receivedPendingNotifications: false })
  // Baileys emitted the fixture's QR; the gateway serves only that one is pending, everywhere.
  assert.deepEqual(await c.next(), { event: 'connection.update', data: { qr: 'pending' } })
  assert.equal(r.json.state.connection, 'connecting')
  assert.equal(r.json.state.qr, 'pending')
  assert.equal(JSON.stringify(r.json).includes('abc123'), false)
  assert.deepEqual((await req('GET', '/sessions/business_1/status')).json, r.json.state)
  r = await ctl('business_1', { action: 'connecting' })
  assert.equal(r.json.generation, 3)
  assert.deepEqual((await c.next()).data, { connection: 'connecting', receivedPendingNotifications: false })
  assert.equal(r.json.state.qr, undefined)

  r = await ctl('business_1', { action: 'emit', update: { isOnline: true } })
  assert.deepEqual((await c.next()).data, { isOnline: true })
  r = await ctl('business_1', { action: 'close' })
  const close = await c.next()
  assert.equal(close.data.lastDisconnect.error.output.statusCode, 428)
  assert.equal(close.data.lastDisconnect.error.output.payload.message, 'Connection Closed')
  assert.deepEqual(await c.idle(), [])

  // The kit's state endpoint and the control view agree.
  const state = await req('GET', '/sessions/business_1/status')
  assert.deepEqual(state.json, (await req('GET', '/control/business_1')).json.state)

  // Tenants are created on demand; unknown ones are 404 until then.
  assert.equal((await req('GET', '/control/business_2')).status, 404)
  assert.equal((await req('GET', '/sessions/business_2/status')).status, 404)
  r = await ctl('business_2', { action: 'open' })
  assert.equal(r.status, 200)
  assert.deepEqual(r.json.state, { connection: 'open', receivedPendingNotifications: true })
  r = await req('GET', '/control')
  assert.deepEqual(r.json.map((x) => x.tenant).sort(), ['business_1', 'business_2'])

  // Bad requests.
  assert.equal((await ctl('business_1', { action: 'explode' })).status, 400)
  assert.equal((await ctl('business_1', { action: 'close', code: 200 })).status, 400)
  assert.equal((await ctl('business_1', '{not json')).status, 400)
  assert.equal((await ctl('business_1', [])).status, 400)
  assert.equal((await req('DELETE', '/control/business_1')).status, 405)

  r = await ctl('business_2', { action: 'remove' })
  assert.equal((await req('GET', '/sessions/business_2/status')).status, 404)

  // SIGTERM: graceful exit 0, client told the server is going away.
  const closed = new Promise((resolve) => c.ws.once('close', (code) => resolve(code)))
  assert.deepEqual(await stop(), { code: 0, signal: null })
  assert.equal(await closed, 1001)
})

test('sim gateway: token guards WebSocket, state and control; --initial none', T, async (t) => {
  const { port } = await sim(t, ['--initial', 'none', 'b1', 'b2'], { GATEWAY_TOKEN: 'tok' })
  const auth = { authorization: 'Bearer tok' }

  assert.equal((await http(port, 'GET', '/control/b1')).status, 401)
  assert.equal((await http(port, 'POST', '/control/b1', { body: { action: 'open' } })).status, 401)
  assert.equal((await http(port, 'GET', '/sessions/b1/status')).status, 401)
  // The kit's bearer parse guards the control routes too: no backtracking on a long header.
  const hostile = { authorization: 'Bearer x' + ' '.repeat(16_000) + 'y' }
  assert.equal((await http(port, 'GET', '/control/b1', { headers: hostile })).status, 401)
  await assert.rejects(connect(`ws://127.0.0.1:${port}/ws/b1`), (e) => e.status === 401)

  const r = await http(port, 'GET', '/control/b1', { headers: auth })
  assert.deepEqual(r.json.state, {})
  const c = await connect(`ws://127.0.0.1:${port}/ws/b1`, auth)
  t.after(() => c.close())
  assert.deepEqual(await c.next(), { event: 'connection.update', data: {} })
  assert.equal((await http(port, 'POST', '/control/b1', { body: { action: 'open' }, headers: auth })).status, 200)
  assert.deepEqual((await c.next()).data, { connection: 'open' })
  assert.deepEqual((await c.next()).data, { receivedPendingNotifications: true })
})

test('sim gateway: a taken port is an error exit, not a hang', T, async (t) => {
  const { port } = await sim(t)
  await assert.rejects(startSim(['--token', TOKEN, '--port', String(port)]), /exited \(2\)/)
})

test('sim gateway: no token is a refusal to start that names both fixes', T, async () => {
  await assert.rejects(startSim([], { GATEWAY_TOKEN: '' }), (e) => {
    assert.match(e.message, /exited \(2\)/)
    assert.match(e.message, /a token is required: --token T or env GATEWAY_TOKEN/)
    assert.match(e.message, /--insecure-no-token/)
    return true
  })
  // The waiver is for loopback only: no bind elsewhere is even attempted.
  await assert.rejects(startSim(['--insecure-no-token', '--host', '0.0.0.0'], { GATEWAY_TOKEN: '' }),
    /exited \(2\).*--insecure-no-token is refused for --host 0\.0\.0\.0/s)
})

test('sim gateway: --insecure-no-token on loopback serves without a token, warns, refuses pages and foreign Hosts', T, async (t) => {
  const { port, req, stderr } = await sim(t, ['--insecure-no-token', '--initial', 'connecting', 'b1'], { GATEWAY_TOKEN: '' })
  assert.match(stderr(), /WARNING: .*insecureNoToken.*without a token/)
  assert.equal(stderr().match(/without a token/g).length, 1)

  assert.equal((await http(port, 'POST', '/control/b1', { body: { action: 'qr' } })).status, 200)
  const status = await http(port, 'GET', '/sessions/b1/status')
  assert.equal(status.status, 200)
  assert.deepEqual(status.json, { connection: 'connecting', receivedPendingNotifications: false, qr: 'pending' })
  const c = await connect(`ws://127.0.0.1:${port}/ws/b1`)
  t.after(() => c.close())
  assert.equal((await c.next()).data.qr, 'pending')

  // The control API answers to the same rules as the kit's endpoints.
  for (const headers of [{ origin: 'https://evil.example' }, { host: `evil.example:${port}` }]) {
    assert.equal((await rawHttp(port, 'POST', '/control/b1', headers)).status, 403, JSON.stringify(headers))
    assert.equal((await rawHttp(port, 'GET', '/control', headers)).status, 403, JSON.stringify(headers))
    assert.equal((await rawHttp(port, 'GET', '/sessions/b1/status', headers)).status, 403, JSON.stringify(headers))
    await assert.rejects(connect(`ws://127.0.0.1:${port}/ws/b1`, headers), (e) => e.status === 403)
  }
  assert.equal((await req('GET', '/control/b1')).status, 200, 'a token sent anyway does no harm')
})

test('sim gateway: with a token, a web page is refused even with the token', T, async (t) => {
  const { port } = await sim(t, ['b1'])
  const headers = { ...AUTH, origin: 'http://localhost:3000' }
  assert.equal((await rawHttp(port, 'POST', '/control/b1', headers)).status, 403)
  assert.equal((await rawHttp(port, 'GET', '/control/b1', headers)).status, 403)
  assert.equal((await rawHttp(port, 'GET', '/control/b1', AUTH)).status, 200)
  const r = await rawHttp(port, 'GET', '/control/b1', { authorization: 'Bearer nope' })
  assert.equal(r.status, 401)
  assert.equal(r.headers['www-authenticate'], 'Bearer')
})
