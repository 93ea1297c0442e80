// Typed use of the kit's public API, checked by `tsc --noEmit` (test/types.test.mjs). The import
// is by package name, so it goes through package.json's `exports` to index.d.ts; the sockets are
// Baileys' own types (7.x and 6.x), so the declarations must accept what makeWASocket returns.
import http from 'node:http'
import { EventEmitter } from 'node:events'
import makeWASocket, { useMultiFileAuthState, DisconnectReason } from 'baileys'
import makeWASocket6 from 'baileys-6'
import { Boom } from '@hapi/boom'
import createDefault, {
  createStatusServer,
  EVENT,
  QR_PENDING,
  isLoopback,
  wireUpdate,
  mergeState,
  type StatusFrame,
  type StatusServer,
  type WireBoom,
  type WireState
} from 'wa-status-sidecar-baileys'

// The README's example, as written there.
const status: StatusServer = createStatusServer({ port: 3001, token: process.env.GATEWAY_TOKEN })

async function startSession (tenantId: string): Promise<void> {
  const { state, saveCreds } = await useMultiFileAuthState(`auth/${tenantId}`)
  const sock = makeWASocket({ auth: state })
  status.track(tenantId, sock)
  sock.ev.on('creds.update', saveCreds)
  sock.ev.on('connection.update', ({ connection, lastDisconnect }) => {
    if (connection === 'close' && (lastDisconnect?.error as Boom | undefined)?.output?.statusCode !== DisconnectReason.loggedOut) void startSession(tenantId)
  })
}
void startSession('business_1')
status.untrack('business_1')

// A Baileys 6.x socket fits too, and so does a plain EventEmitter.
status.track('six', makeWASocket6({ auth: { creds: {} as never, keys: {} as never } }))
status.track('emitter', { ev: new EventEmitter() })

// Attach mode.
const httpServer = http.createServer()
const attached = createDefault({ server: httpServer, token: 'x', allowOrigins: ['https://admin.example.com'] })
httpServer.on('request', (req, res) => { if (!attached.handleRequest(req, res)) res.end() })
httpServer.on('upgrade', (req, socket, head) => { attached.handleUpgrade(req, socket, head) })
const refused = attached.refusal(new http.IncomingMessage(null as never))
if (refused !== null) { const code: 401 | 403 = refused.status; void code }
const held: number = attached.connections() + attached.connections('business_1')

// What is served.
const s: WireState | undefined = status.state('b')
const pending: boolean = s?.qr === QR_PENDING
const err = s?.lastDisconnect?.error as WireBoom | undefined
const code: number | undefined = err?.output.statusCode
const frame: StatusFrame = { event: EVENT, data: wireUpdate({ connection: 'open' }) }
mergeState({}, frame.data)
status.setState('b', { connection: 'close', lastDisconnect: { error: new Boom('Logged out', { statusCode: 401 }), date: new Date() } })
void status.listening.then(({ port, host }) => [port.toFixed(), host.toUpperCase(), isLoopback(host)])
void status.close().then(() => [pending, code, held])
void createStatusServer({ token: 'x', maxConnections: 16, maxPendingConnections: 8, headersTimeoutMs: 3000 }).close()

// The declarations are not `any`: each of these must be a type error.
// @ts-expect-error unknownTenant is 'wait' or 'reject'
createStatusServer({ token: 'x', unknownTenant: 'drop' })
// @ts-expect-error a port is a number
createStatusServer({ token: 'x', port: '3001' })
// @ts-expect-error options are required (a token, or insecureNoToken)
createStatusServer()
// @ts-expect-error allowOrigins is a list
createStatusServer({ token: 'x', allowOrigins: '*' })
// @ts-expect-error maxPendingConnections is a number
createStatusServer({ token: 'x', maxPendingConnections: '64' })
// @ts-expect-error track needs a socket with ev.on
status.track('b', {})
// @ts-expect-error the served qr is only ever QR_PENDING
const leaked: WireState = { qr: '2@ref,noise,identity,adv' }
void leaked
