#!/usr/bin/env node
// A simulated Baileys gateway for end-to-end tests and demos of wa-status-sidecar.
//
// Serves the kit's endpoints (WebSocket {path}/<tenant>, GET /sessions/<tenant>/status) and, per
// tenant, runs a fake Baileys socket whose `ev` is Baileys' real event buffer (makeEventBuffer)
// and whose closes carry real @hapi/boom errors, emitted exactly the way Baileys' socket does.
//
//   node sim-gateway.mjs --token T [--port 3001] [--host 127.0.0.1] [--initial open|connecting|none]
//                        [--path /ws] [--verbose] [tenant ...]
//   node sim-gateway.mjs --insecure-no-token [...]   loopback only, prints a warning
//   env: GATEWAY_TOKEN (instead of --token), PORT, HOST, SIM_INITIAL, SIM_VERBOSE=1
// A token is required, as by the kit itself: without one the sim refuses to start (exit 2) unless
// --insecure-no-token is given, which is refused for a non-loopback --host.
//
// Control (same token check as the rest):
//   POST /control/<tenant>  {"action":"open"}
//                           {"action":"connecting"}
//                           {"action":"qr"}                   optional "qr": "<string>"
//                           {"action":"close","code":515,"message":"Stream Errored (restart required)"}
//                           {"action":"logout"}               close 401 "Connection Failure"
//                           {"action":"reconnect"}            new socket + track(), then connecting, open
//                           {"action":"emit","update":{...}}  any raw partial connection.update
//                           {"action":"remove"}               untrack the tenant
//   GET  /control/<tenant>  {"tenant","generation","ended","state"}
//   GET  /control           list of the above
// Prints "listening on <port>" on stdout once ready. SIGTERM/SIGINT: close and exit 0.

import { parseArgs } from 'node:util'
import { randomBytes } from 'node:crypto'
import { createStatusServer, isLoopback } from './index.mjs'

const { values: args, positionals: initialTenants } = parseArgs({
  allowPositionals: true,
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    token: { type: 'string' },
    initial: { type: 'string' },
    path: { type: 'string' },
    'insecure-no-token': { type: 'boolean' },
    verbose: { type: 'boolean' }
  }
})

const port = Number(args.port ?? process.env.PORT ?? 3001)
const host = args.host ?? process.env.HOST ?? '127.0.0.1'
const token = args.token || process.env.GATEWAY_TOKEN || undefined
const insecureNoToken = Boolean(args['insecure-no-token'])
const initial = args.initial ?? process.env.SIM_INITIAL ?? 'open'
const verbose = Boolean(args.verbose || process.env.SIM_VERBOSE)
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad port: ${args.port ?? process.env.PORT}`)
if (!['open', 'connecting', 'none'].includes(initial)) fail(`--initial must be open, connecting or none, not ${initial}`)
if (!token && !insecureNoToken) {
  fail('a token is required: --token T or env GATEWAY_TOKEN (the sidecar sends it as "Authorization: Bearer T"); ' +
    'for development on loopback only, --insecure-no-token')
}
if (!token && !isLoopback(host)) fail(`--insecure-no-token is refused for --host ${host}: it serves loopback only; set --token`)

// Baileys' event buffer and Boom: development dependencies of the kit (the kit itself needs neither).
const devDependency = (name) => import(name).catch((err) =>
  fail(`the sim gateway needs the kit's devDependencies (baileys, @hapi/boom): run \`npm ci\` in contrib/baileys (${name}: ${err.code ?? err.message})`))
const { makeEventBuffer } = await devDependency('baileys')
const { Boom } = await devDependency('@hapi/boom')

function fail (msg) {
  process.stderr.write(`sim-gateway: ${msg}\n`)
  process.exit(2)
}
const log = (...a) => { if (verbose) process.stderr.write(`sim-gateway: ${a.join(' ')}\n`) }

// Baileys' event buffer wants a pino-style logger.
const silentLogger = { level: 'silent', trace () {}, debug () {}, info () {}, warn () {}, error () {}, fatal () {}, child () { return silentLogger } }

/** tenant -> { sock, generation } */
const tenants = new Map()
let generations = 0

/** A stand-in for what makeWASocket returns, as far as connection.update goes. */
function makeFakeSocket (tenantId) {
  const ev = makeEventBuffer(silentLogger)
  const sock = {
    generation: ++generations,
    tenantId,
    ev,
    ended: false,
    /** Baileys' `end(error)`: emit the close, then drop every connection.update listener. */
    end (error) {
      if (sock.ended) return
      sock.ended = true
      ev.emit('connection.update', { connection: 'close', lastDisconnect: { error, date: new Date() } })
      ev.removeAllListeners('connection.update')
      ev.destroy()
    }
  }
  return sock
}

/** What a gateway does on (re)connect: make a socket, hand it to track(), Baileys says connecting. */
function newSocket (tenantId) {
  const sock = makeFakeSocket(tenantId)
  tenants.set(tenantId, { sock })
  kit.track(tenantId, sock)
  // A logged-in Baileys socket buffers events until the offline notifications are in.
  sock.ev.buffer()
  sock.ev.emit('connection.update', { connection: 'connecting', receivedPendingNotifications: false, qr: undefined })
  log(tenantId, `socket #${sock.generation} created`)
  return sock
}

/** The tenant's live socket; a gateway reconnects after every close, so an ended one is replaced. */
function liveSocket (tenantId) {
  const t = tenants.get(tenantId)
  return t && !t.sock.ended ? t.sock : newSocket(tenantId)
}

function open (sock) {
  sock.ev.emit('connection.update', { connection: 'open' })
  sock.ev.flush()
  sock.ev.emit('connection.update', { receivedPendingNotifications: true })
}

function close (sock, code, message) {
  sock.end(new Boom(message, { statusCode: code }))
}

function describe (tenantId) {
  const t = tenants.get(tenantId)
  return { tenant: tenantId, generation: t?.sock.generation ?? null, ended: t?.sock.ended ?? null, state: kit.state(tenantId) ?? null }
}

class BadRequest extends Error {}

function act (tenantId, body) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BadRequest('body must be a JSON object')
  const { action } = body
  switch (action) {
    case 'open':
      open(liveSocket(tenantId))
      break
    case 'connecting': {
      const t = tenants.get(tenantId)
      // A fresh socket already says connecting; say it again only on a live one.
      if (t && !t.sock.ended) t.sock.ev.emit('connection.update', { connection: 'connecting', receivedPendingNotifications: false, qr: undefined })
      else newSocket(tenantId)
      break
    }
    case 'qr': {
      const qr = body.qr ?? `2@${randomBytes(24).toString('base64')},${randomBytes(16).toString('base64')},${randomBytes(16).toString('base64')}`
      if (typeof qr !== 'string') throw new BadRequest('qr must be a string')
      liveSocket(tenantId).ev.emit('connection.update', { qr })
      break
    }
    case 'close':
    case 'logout': {
      const code = action === 'logout' ? 401 : (body.code ?? 428)
      const message = action === 'logout' ? (body.message ?? 'Connection Failure') : (body.message ?? 'Connection Closed')
      if (!Number.isInteger(code) || code < 400 || code > 999) throw new BadRequest('code must be an integer 400..999 (Boom status codes)')
      if (typeof message !== 'string') throw new BadRequest('message must be a string')
      close(liveSocket(tenantId), code, message)
      break
    }
    case 'reconnect': {
      // Baileys makes a new socket on every reconnect; the old one (if still alive) is simply
      // abandoned, so anything it still emits must no longer reach the sidecar.
      const sock = newSocket(tenantId)
      open(sock)
      break
    }
    case 'emit': {
      const { update } = body
      if (update === null || typeof update !== 'object' || Array.isArray(update)) throw new BadRequest('update must be a JSON object')
      liveSocket(tenantId).ev.emit('connection.update', update)
      break
    }
    case 'remove':
      kit.untrack(tenantId)
      tenants.delete(tenantId)
      break
    default:
      throw new BadRequest(`unknown action ${JSON.stringify(action)}; one of open, connecting, qr, close, logout, reconnect, emit, remove`)
  }
  log(tenantId, JSON.stringify(body))
  return describe(tenantId)
}

function send (res, status, body) {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' })
  res.end(text)
}

function readJson (req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    let size = 0
    const chunks = []
    req.on('data', (c) => {
      size += c.length
      if (size > limit) { reject(new BadRequest('body too large')); req.destroy(); return }
      chunks.push(c)
    })
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8')
      try { resolve(text.trim() === '' ? {} : JSON.parse(text)) } catch { reject(new BadRequest('body is not JSON')) }
    })
    req.on('error', reject)
  })
}

async function control (req, res) {
  const path = (req.url ?? '/').split('?')[0]
  if (path === '/control' || path === '/control/') {
    if (req.method !== 'GET') return send(res, 405, { error: 'method not allowed' })
    return send(res, 200, [...tenants.keys()].map(describe))
  }
  const m = /^\/control\/([^/]+)\/?$/.exec(path)
  if (!m) return send(res, 404, { error: 'not found' })
  let tenantId
  try { tenantId = decodeURIComponent(m[1]) } catch { return send(res, 400, { error: 'bad tenant id encoding' }) }
  if (req.method === 'GET') {
    return tenants.has(tenantId) ? send(res, 200, describe(tenantId)) : send(res, 404, { error: 'unknown tenant', tenant: tenantId })
  }
  if (req.method !== 'POST') return send(res, 405, { error: 'method not allowed' })
  try {
    send(res, 200, act(tenantId, await readJson(req)))
  } catch (err) {
    if (err instanceof BadRequest) return send(res, 400, { error: err.message })
    send(res, 500, { error: String(err?.message ?? err) })
  }
}

let kit
try {
  kit = createStatusServer({
    host,
    port,
    token,
    insecureNoToken: !token,
    // The kit warns once that no token is checked, and (throttled) about refusals and caps.
    logger: { warn (obj, msg) { process.stderr.write(`sim-gateway: WARNING: ${msg ?? obj}\n`) } },
    path: args.path ?? '/ws',
    onRequest (req, res) {
      // The same checks as the kit's own endpoints (web pages, token, loopback without a token).
      const refused = kit.refusal(req)
      if (refused) {
        if (refused.status === 401) res.setHeader('www-authenticate', 'Bearer')
        return send(res, refused.status, { error: refused.error })
      }
      control(req, res).catch((err) => send(res, 500, { error: String(err?.message ?? err) }))
    }
  })
} catch (err) {
  fail(err.message)
}

for (const tenantId of initialTenants) {
  if (initial === 'none') {
    const sock = makeFakeSocket(tenantId)
    tenants.set(tenantId, { sock })
    kit.track(tenantId, sock)
  } else {
    const sock = newSocket(tenantId)
    if (initial === 'open') open(sock)
  }
}

kit.listening.then(({ port }) => {
  process.stdout.write(`listening on ${port}\n`)
}, (err) => fail(`cannot listen on ${host}:${port}: ${err.message}`))

let stopping = false
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    if (stopping) process.exit(1)
    stopping = true
    kit.close().then(() => process.exit(0), () => process.exit(1))
    setTimeout(() => process.exit(0), 3000).unref()
  })
}
