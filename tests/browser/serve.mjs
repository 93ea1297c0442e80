#!/usr/bin/env node
// A tiny static server for the built demo page (contrib/react/demo/dist) that proxies /api/* and
// /demo/* (the Flask kit's demo login) to the Flask kit, so the page, its API and the session
// cookie share one origin (no CORS needed).
//
//   node tests/browser/serve.mjs --dir contrib/react/demo/dist --api http://127.0.0.1:8000 [--port 0] [--host 127.0.0.1]
//
// Paths without a file (e.g. /app/settings) get index.html, as a single-page app's host does.
// Prints "listening on <port>" once ready.
import { createServer, request as httpRequest } from 'node:http'
import { readFile, stat } from 'node:fs/promises'
import { extname, join, normalize, resolve, sep } from 'node:path'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'

/** Paths that belong to the Flask kit: its API and its demo login (POST /demo/login). */
const PROXIED = ['/api', '/demo']

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.json': 'application/json',
  '.ico': 'image/x-icon'
}

/**
 * Starts the server. Resolves to { port, close() }.
 * @param {{ dir: string, api: string, port?: number, host?: string }} options
 */
export function startServer ({ dir, api, port = 0, host = '127.0.0.1' }) {
  const root = resolve(dir)
  const apiUrl = new URL(api)

  async function serveFile (req, res, pathname) {
    let rel
    try { rel = normalize(decodeURIComponent(pathname)) } catch { rel = '/' }
    let file = join(root, rel)
    if (file !== root && !file.startsWith(root + sep)) file = join(root, 'index.html')
    let info = await stat(file).catch(() => null)
    if (!info || info.isDirectory()) {
      file = info?.isDirectory() ? join(file, 'index.html') : null
      info = file ? await stat(file).catch(() => null) : null
      if (!info) file = join(root, 'index.html') // single-page app fallback
    }
    const body = await readFile(file)
    res.writeHead(200, {
      'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
      'content-length': body.length,
      'cache-control': 'no-store'
    })
    res.end(req.method === 'HEAD' ? undefined : body)
  }

  function proxy (req, res) {
    const upstream = httpRequest({
      host: apiUrl.hostname,
      port: apiUrl.port || 80,
      method: req.method,
      path: req.url,
      // The browser's own Host goes through unchanged: the Flask demo answers loopback names
      // only, and a page that reached this port by DNS rebinding (Host: evil.example) must be
      // refused there, not vouched for by a Host rewritten to 127.0.0.1.
      headers: { ...req.headers }
    }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers)
      up.pipe(res)
    })
    upstream.setTimeout(10_000, () => upstream.destroy(new Error('upstream timeout')))
    upstream.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: 'bad gateway', message: err.message }))
    })
    req.pipe(upstream)
  }

  const server = createServer((req, res) => {
    const { pathname } = new URL(req.url ?? '/', 'http://x')
    if (PROXIED.some((p) => pathname === p || pathname.startsWith(`${p}/`))) return proxy(req, res)
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end()
      return
    }
    serveFile(req, res, pathname).catch((err) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' })
      res.end(String(err.message))
    })
  })

  return new Promise((resolvePromise, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      resolvePromise({
        port: server.address().port,
        close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()) })
      })
    })
  })
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { dir: { type: 'string' }, api: { type: 'string' }, port: { type: 'string' }, host: { type: 'string' } } })
  if (!values.dir || !values.api) {
    process.stderr.write('usage: serve.mjs --dir DIST --api http://127.0.0.1:8000 [--port 0] [--host 127.0.0.1]\n')
    process.exit(2)
  }
  const { port, close } = await startServer({ dir: values.dir, api: values.api, port: Number(values.port ?? 0), host: values.host })
  process.stdout.write(`listening on ${port}\n`)
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => close().then(() => process.exit(0)))
}
