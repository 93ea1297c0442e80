// The kit as a user installs it (issue 13): the packed tarball holds only what a user needs, its
// package.json says what it depends on, the README's example runs as written from the installed
// package, and the type declarations check against Baileys' own types.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { mkdtemp, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import semver from 'semver'
import { Boom, connect, http } from '../test-support/helpers.mjs'

const run = promisify(execFile)
const KIT = fileURLToPath(new URL('..', import.meta.url))
const T = { timeout: 60_000 }
const pkg = JSON.parse(await readFile(join(KIT, 'package.json'), 'utf8'))

/** `npm pack` into `dir`; resolves npm's JSON report of the tarball. */
async function pack (dir, ...flags) {
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir, ...flags], { cwd: KIT, timeout: 30_000 })
  const [report] = JSON.parse(stdout)
  return report
}

test('npm pack ships only what a user needs', T, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'wa-kit-pack-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const report = await pack(dir, '--dry-run')
  assert.deepEqual(report.files.map((f) => f.path).sort(), ['README.md', 'index.d.ts', 'index.mjs', 'package.json'])
})

test('package.json: ws the only runtime dependency, baileys a peer of the 6.x and 7.x lines, an exports map', T, () => {
  assert.deepEqual(Object.keys(pkg.dependencies), ['ws'])
  assert.equal(pkg.dependencies['@hapi/boom'], undefined)
  assert.equal(pkg.dependencies.baileys, undefined)
  const range = pkg.peerDependencies.baileys
  for (const v of ['6.0.0', '6.7.21', '6.17.16', '7.0.0-rc.9', '7.0.0-rc14', '7.0.0', '7.4.1']) {
    assert.ok(semver.satisfies(v, range), `${v} is in the peer range ${range}`)
  }
  for (const v of ['5.0.8', '8.0.0', '8.0.0-rc.1', '4.5.8']) assert.ok(!semver.satisfies(v, range), `${v} is outside ${range}`)
  assert.equal(pkg.peerDependenciesMeta.baileys.optional, true, 'no second Baileys is pulled into a gateway that uses a fork')
  // The Baileys releases the tests run against are in the range.
  for (const name of ['baileys', 'baileys-6']) {
    const installed = JSON.parse(readFileSync(join(KIT, 'node_modules', name, 'package.json'), 'utf8')).version
    assert.ok(semver.satisfies(installed, range), `${name}@${installed}`)
  }
  assert.deepEqual(pkg.exports['.'], { types: './index.d.ts', default: './index.mjs' })
  assert.equal(pkg.types, './index.d.ts')
  assert.equal(pkg.bin, undefined, 'the sim gateway is a development tool of this repo, not part of the package')
})

test('types: tsc --noEmit on a typed usage (README example, Baileys 6 and 7 sockets, expected errors)', T, async () => {
  const tsc = join(KIT, 'node_modules', 'typescript', 'bin', 'tsc')
  const res = await run(process.execPath, [tsc, '-p', join(KIT, 'test', 'types', 'tsconfig.json')], { cwd: KIT, timeout: 60_000 })
    .then(() => ({ code: 0, out: '' }), (e) => ({ code: e.code, out: `${e.stdout}${e.stderr}` }))
  assert.equal(res.code, 0, res.out)
})

/** The README's first ```js block. */
async function readmeExample () {
  const readme = await readFile(join(KIT, 'README.md'), 'utf8')
  const m = /```js\n([\s\S]*?)```/.exec(readme)
  assert.ok(m, 'the README has a js example')
  return m[1]
}

/**
 * A stand-in for the `baileys` package: makeWASocket returns a socket whose `ev` is Baileys' real
 * event buffer and that says "connecting" on the next tick, as Baileys does; end() closes the way
 * Baileys' does (emit the close, then drop every connection.update listener).
 */
function fakeBaileys (realBaileysUrl) {
  return `import { makeEventBuffer, DisconnectReason, initAuthCreds } from ${JSON.stringify(realBaileysUrl)}
export { DisconnectReason }
const silent = { level: 'silent', trace () {}, debug () {}, info () {}, warn () {}, error () {}, fatal () {}, child () { return silent } }
export const sockets = []
export const authFolders = []
export async function useMultiFileAuthState (folder) {
  authFolders.push(folder)
  return { state: { creds: initAuthCreds(), keys: { get: async () => ({}), set: async () => {} } }, saveCreds: async () => {} }
}
export default function makeWASocket (config) {
  const ev = makeEventBuffer(silent)
  const sock = {
    ev,
    config,
    end (error) {
      ev.emit('connection.update', { connection: 'close', lastDisconnect: { error, date: new Date() } })
      ev.removeAllListeners('connection.update')
    }
  }
  sockets.push(sock)
  process.nextTick(() => ev.emit('connection.update', { connection: 'connecting', receivedPendingNotifications: false, qr: undefined }))
  return sock
}
`
}

test('the README example runs as written, from the packed package, against a Baileys-like socket', T, async (t) => {
  // A gateway project: the kit installed from its tarball, ws beside it, and a stand-in Baileys.
  const app = await mkdtemp(join(tmpdir(), 'wa-kit-readme-'))
  t.after(() => rm(app, { recursive: true, force: true }))
  const modules = join(app, 'node_modules')
  await mkdir(join(modules, 'baileys'), { recursive: true })
  const report = await pack(app)
  await run('tar', ['-xzf', join(app, report.filename), '-C', modules])
  await rename(join(modules, 'package'), join(modules, 'wa-status-sidecar-baileys'))
  await symlink(join(KIT, 'node_modules', 'ws'), join(modules, 'ws'), 'dir')
  await writeFile(join(modules, 'baileys', 'package.json'), JSON.stringify({ name: 'baileys', version: '7.0.0', type: 'module', exports: './index.mjs' }))
  await writeFile(join(modules, 'baileys', 'index.mjs'), fakeBaileys(import.meta.resolve('baileys')))
  await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'gateway', private: true, type: 'module' }))

  // The snippet exactly as in the README, except a free port instead of 3001; then a handle for the test.
  const snippet = await readmeExample()
  assert.match(snippet, /port: 3001/)
  await writeFile(join(app, 'gateway.mjs'), snippet.replace('port: 3001', 'port: 0') + '\nexport { status, startSession }\n')

  const token = 'readme-example-token'
  const saved = process.env.GATEWAY_TOKEN
  process.env.GATEWAY_TOKEN = token
  t.after(() => { if (saved === undefined) delete process.env.GATEWAY_TOKEN; else process.env.GATEWAY_TOKEN = saved })
  const { status, startSession } = await import(pathToFileURL(join(app, 'gateway.mjs')))
  const { sockets, authFolders } = await import(pathToFileURL(join(modules, 'baileys', 'index.mjs')))
  t.after(() => status.close())
  const { port, host } = await status.listening
  assert.equal(host, '127.0.0.1', 'the README example binds loopback')
  const auth = { authorization: `Bearer ${token}` }

  const c = await connect(`ws://127.0.0.1:${port}/ws/business_1`, auth)
  t.after(() => c.close())
  await assert.rejects(connect(`ws://127.0.0.1:${port}/ws/business_1`), (e) => e.status === 401)

  await startSession('business_1')
  assert.deepEqual(authFolders, ['auth/business_1'])
  assert.equal(sockets.length, 1)
  assert.deepEqual(await c.next(), { event: 'connection.update', data: { connection: 'connecting', receivedPendingNotifications: false } },
    'tracked before Baileys said connecting')
  sockets[0].ev.emit('connection.update', { qr: '2@pairing-ref,noise==,identity==,adv==' })
  assert.deepEqual((await c.next()).data, { qr: 'pending' })
  sockets[0].ev.emit('connection.update', { connection: 'open' })
  assert.deepEqual((await c.next()).data, { connection: 'open' })

  // A restart-required close: the example reconnects with a new socket, which the kit follows.
  sockets[0].end(new Boom('Stream Errored (restart required)', { statusCode: 515 }))
  assert.equal((await c.next()).data.lastDisconnect.error.output.statusCode, 515)
  assert.deepEqual((await c.next()).data, { connection: 'connecting', receivedPendingNotifications: false })
  assert.equal(sockets.length, 2)
  sockets[1].ev.emit('connection.update', { connection: 'open' })
  assert.deepEqual((await c.next()).data, { connection: 'open' })
  const r = await http(port, 'GET', '/sessions/business_1/status', { headers: auth })
  assert.equal(r.json.connection, 'open')

  // A logout: the example does not reconnect; the sidecar is told.
  sockets[1].end(new Boom('Connection Failure', { statusCode: 401 }))
  const close = await c.next()
  assert.equal(close.data.lastDisconnect.error.output.statusCode, 401)
  assert.deepEqual(await c.idle(100), [])
  assert.equal(sockets.length, 2)

  // "When a session is deleted for good" and "On shutdown", as the README says next.
  status.untrack('business_1')
  assert.equal(status.state('business_1'), undefined)
  const closed = new Promise((resolve) => c.ws.once('close', resolve))
  await status.close()
  assert.equal(await closed, 1001)
})
