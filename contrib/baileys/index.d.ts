// Type declarations for wa-status-sidecar-baileys (hand-written; index.mjs is the implementation).
// Checked by test/types.test.mjs (`tsc --noEmit` on test/types/usage.ts against Baileys' own types).

import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'

/** The Baileys event the kit forwards. */
export declare const EVENT: 'connection.update'

/**
 * What the endpoints serve as `qr` while a QR code waits for a scan; the pairing payload itself is
 * never served (whoever reads it can link their own phone as the business).
 */
export declare const QR_PENDING: 'pending'

/** The listener the kit subscribes to `connection.update`. */
export type ConnectionUpdateListener = (update: any) => void

/**
 * What the kit needs of a Baileys socket: its event emitter. Any `makeWASocket(...)` result fits
 * (Baileys 6.x and 7.x); so does a Node `EventEmitter` in `ev`.
 */
export interface TrackableSocket {
  ev: {
    on(event: 'connection.update', listener: ConnectionUpdateListener): unknown
    off?(event: 'connection.update', listener: ConnectionUpdateListener): unknown
    removeListener?(event: 'connection.update', listener: ConnectionUpdateListener): unknown
  }
}

/** A partial `connection.update` as Baileys emits it (before serialization). */
export interface ConnectionUpdate {
  connection?: 'open' | 'connecting' | 'close'
  /** `error` is a Boom error in Baileys; `date` a Date. */
  lastDisconnect?: { error?: unknown, date?: Date | string }
  /** The QR pairing payload: read by the gateway, never served by the kit. */
  qr?: string
  isNewLogin?: boolean
  isOnline?: boolean
  receivedPendingNotifications?: boolean
  [key: string]: unknown
}

/** A Boom error as JSON (`JSON.stringify(new Boom(...))`): the code is `output.statusCode`. */
export interface WireBoom {
  data: unknown
  isBoom: boolean
  isServer: boolean
  output: {
    statusCode: number
    payload: { statusCode: number, error: string, message: string, [key: string]: unknown }
    headers: Record<string, unknown>
  }
  [key: string]: unknown
}

/** A tenant's merged state (and each frame's `data`) in wire form: plain JSON data. */
export interface WireState {
  connection?: 'open' | 'connecting' | 'close'
  /** `error` is a `WireBoom` when Baileys closed with a Boom error; `date` an ISO string. */
  lastDisconnect?: { error?: WireBoom | Record<string, unknown> | null, date?: string }
  /** Present (always `QR_PENDING`) while a QR code waits for a scan. */
  qr?: typeof QR_PENDING
  isNewLogin?: boolean
  isOnline?: boolean
  receivedPendingNotifications?: boolean
  [key: string]: unknown
}

/** A frame sent on `{path}/<tenant>`: the snapshot first, then every update. */
export interface StatusFrame {
  event: typeof EVENT
  data: WireState
}

/** Pino-style; only `warn` is used. Without a logger the one insecureNoToken warning is a process warning. */
export interface StatusLogger {
  warn?: (obj: unknown, msg?: string) => void
  debug?: (obj: unknown, msg?: string) => void
}

export interface StatusServerOptions {
  /** Own server's bind address. Default `'127.0.0.1'`. */
  host?: string
  /** Default `3001`; `0` picks a free port (see `listening`). */
  port?: number
  /**
   * Required at start (a TypeError otherwise) unless `insecureNoToken`: every request needs
   * `Authorization: Bearer <token>`. Visible ASCII, no spaces, at most 1017 characters (an
   * `Authorization` header over 1 KiB is a 401 unread).
   */
  token?: string
  /** Loopback development only: no token; refused for a non-loopback `host`; warns once. */
  insecureNoToken?: boolean
  /** Web page origins allowed to call the endpoints (`'https://admin.example.com'`). Default none. */
  allowOrigins?: readonly string[]
  /** WebSocket connections in all; more is a 503 before the upgrade. Default 1024. */
  maxConnections?: number
  /** WebSocket connections per tenant; more is a 503 before the upgrade. Default 64. */
  maxConnectionsPerTenant?: number
  /**
   * Own server: connections that are not (yet) an authenticated WebSocket; beyond this the oldest
   * of them are closed (never a WebSocket, never an authorized request being answered), so
   * clients without the token cannot lock out the sidecar. Default 64.
   */
  maxPendingConnections?: number
  /** Own server: time allowed to send a request's headers. Default 5000. */
  headersTimeoutMs?: number
  /** WebSocket at `{path}/<tenant>`. Default `'/ws'`. */
  path?: string
  /** State at `{statePath}/<tenant>/status`. Default `'/sessions'`. */
  statePath?: string
  /** Attach to this server instead of listening (mount `handleRequest` for the state endpoint). */
  server?: Server
  /** Own server only: handler for every other request (default 404). */
  onRequest?: (req: IncomingMessage, res: ServerResponse) => void
  /** A WebSocket for a tenant never tracked: accept and wait (default), or answer 404. */
  unknownTenant?: 'wait' | 'reject'
  /** Ping clients, drop those that miss a pong; `0` = off. Default 30000. */
  heartbeatMs?: number
  /** Default 262144. */
  maxFrameBytes?: number
  /** A client this far behind is dropped. Default 1048576. */
  maxBufferedBytes?: number
  logger?: StatusLogger
}

/** Why a request is refused before it reaches a tenant. */
export interface Refusal {
  status: 401 | 403
  error: string
}

export interface StatusServer {
  /** Subscribe to `sock.ev`'s `connection.update`; a new socket for the tenant replaces the old one. */
  track(tenantId: string, sock: TrackableSocket): void
  /** Unsubscribe and forget the tenant's state. */
  untrack(tenantId: string): void
  /** Merge and broadcast an update that did not come from a socket (creates the tenant). */
  setState(tenantId: string, partial: ConnectionUpdate): void
  /** The merged state in wire form, or undefined for an unknown tenant. */
  state(tenantId: string): WireState | undefined
  /** Resolves once the own server listens (or the attached one does); rejects if it cannot bind. */
  readonly listening: Promise<{ port: number, host: string }>
  /** Unsubscribe everything, close clients with 1001, stop the own server (once it listens, if called before). */
  close(): Promise<void>
  /** Serves the state endpoint; `true` if the request was ours and has been answered. */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean
  /** Handles an upgrade on `{path}/<tenant>`; `false` if the path is not ours (left untouched). */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean
  /** Whether a request passes every check (web page, token, loopback without a token). */
  authorized(req: IncomingMessage): boolean
  /** Why a request is refused, or null to serve it. */
  refusal(req: IncomingMessage): Refusal | null
  /** WebSocket connections held now, in all or for one tenant. */
  connections(tenantId?: string): number
  readonly server: Server
}

export declare function createStatusServer(options: StatusServerOptions): StatusServer
export default createStatusServer

/** Whether an address or host name is loopback (127.0.0.0/8, ::1, localhost). */
export declare function isLoopback(host: unknown): boolean

/** `JSON.stringify`, falling back to "[Circular]" for cycles and strings for BigInts. */
export declare function stringifyUpdate(value: unknown): string | undefined

/** The wire form of one partial update, under `maxBytes`, with any QR payload replaced by `QR_PENDING`. */
export declare function wireUpdate(update: ConnectionUpdate, maxBytes?: number): WireState

/** Merges a wire-form update into `state` (the kit's merge rules); returns `state`. */
export declare function mergeState(state: WireState, wire: WireState, raw?: ConnectionUpdate): WireState
