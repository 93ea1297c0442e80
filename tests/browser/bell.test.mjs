// End to end, in a real browser: sim gateway -> wa-status-sidecar -> Flask kit -> the bell.
//
// Starts, all on 127.0.0.1: the Baileys kit's sim gateway (contrib/baileys/sim-gateway.mjs), the
// Flask kit (contrib/flask/app.py, SQLite in a temp dir), the sidecar binary with short graces,
// and a static server for the Vite-built demo page (contrib/react/demo) that proxies /api to
// Flask. Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core; no browser
// download) opens the page. Then: the session opens; a 401 logout puts the red WhatsApp item in
// the bell within seconds (screenshot: artifacts/bell.png); clicking it lands on the WhatsApp
// settings; a reconnect takes the item away.
//
// Env: WA_SIDECAR_BIN (default target/debug/wa-status-sidecar, built with cargo if missing),
//      CHROMIUM (default /usr/bin/chromium), PYTHON (default .venv/bin/python),
//      UPDATE_DOCS_SCREENSHOT=1 also copies the screenshot to contrib/react/docs/bell.png.
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { Proc, eventually, json, run } from './procs.mjs'
import { startServer } from './serve.mjs'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const REACT = join(ROOT, 'contrib/react')
const BAILEYS = join(ROOT, 'contrib/baileys')
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'
const PYTHON = process.env.PYTHON ?? join(ROOT, '.venv/bin/python')
const SIDECAR = process.env.WA_SIDECAR_BIN ?? join(ROOT, 'target/debug/wa-status-sidecar')
const TENANT = 'business_1'
const SETTINGS_PATH = '/app/settings?tab=whatsapp'
const ITEM = '[data-notification-type="system_whatsapp_disconnect"]'
/** "within seconds": a terminal close is reported at once, the page polls every second. */
const BELL_DEADLINE_MS = 10_000

const procs = []
let tmp, server, browser, page, base, gateway, flask, sidecar, adminUrl

const npmCi = (cwd) => run('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd })
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, '') // eslint-disable-line no-control-regex

function start (name, command, args, options) {
  const p = new Proc(name, command, args, options)
  procs.push(p)
  return p
}

function allLogs () {
  return procs.map((p) => p.logs()).join('\n')
}

/** Runs a step; on failure, appends every process's recent output to the error. */
async function step (fn) {
  try {
    return await fn()
  } catch (err) {
    err.message += `\n${allLogs()}`
    throw err
  }
}

const control = (body) => json(`${gateway.url}/control/${TENANT}`, { method: 'POST', body })
const tenantView = () => json(`${adminUrl}/tenants/${TENANT}`)
const backendStatus = async () => (await json(`${flask.url}/demo/state`)).statuses.find((s) => s.tenant_id === TENANT)

describe('the bell, end to end in headless Chromium', { timeout: 110_000 }, () => {
  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`)
    assert.ok(existsSync(PYTHON), `${PYTHON} is missing: python3 -m venv .venv && .venv/bin/pip install -r contrib/flask/requirements.txt`)
    if (!existsSync(join(BAILEYS, 'node_modules'))) await npmCi(BAILEYS)
    if (!existsSync(join(REACT, 'node_modules'))) await npmCi(REACT)
    if (!process.env.WA_SIDECAR_BIN && !existsSync(SIDECAR)) {
      await run('cargo', ['build', '--locked', '--bin', 'wa-status-sidecar'], { cwd: ROOT })
    }
    // Always rebuild the page, so the test never runs against a stale build.
    await run(process.execPath, [join(REACT, 'node_modules/vite/bin/vite.js'), 'build', '--logLevel', 'warn'], { cwd: REACT, timeoutMs: 60_000 })

    tmp = await mkdtemp(join(tmpdir(), 'wa-bell-e2e-'))
    const secret = randomBytes(24).toString('hex')

    gateway = start('sim-gateway', process.execPath, [join(BAILEYS, 'sim-gateway.mjs'), '--port', '0', '--host', '127.0.0.1', '--initial', 'none', TENANT], { cwd: BAILEYS })
    flask = start('flask', PYTHON, [join(ROOT, 'contrib/flask/app.py'), '--db', join(tmp, 'backend.db'), '--port', '0', '--seed', TENANT, '--log-level', 'WARNING'], {
      cwd: ROOT,
      env: { ...process.env, INTERNAL_SHARED_SECRET: secret }
    })
    const [gwPort, flaskPort] = await step(() => Promise.all([gateway.waitFor(/listening on (\d+)/), flask.waitFor(/listening on (\d+)/)]))
    gateway.url = `http://127.0.0.1:${gwPort[1]}`
    flask.url = `http://127.0.0.1:${flaskPort[1]}`

    const config = join(tmp, 'sidecar.toml')
    await writeFile(config, [
      '[gateway]',
      `url = "ws://127.0.0.1:${gwPort[1]}/ws/{tenant}"`,
      '[backend]',
      `url = "${flask.url}"`,
      '[debounce]',
      'connect_grace = "1s"',
      'disconnect_grace = "3s"',
      '[tenants]',
      `ids = ["${TENANT}"]`,
      '[state]',
      `dir = "${join(tmp, 'state')}"`,
      '[admin]',
      'listen = "127.0.0.1:0"',
      ''
    ].join('\n'))
    sidecar = start('sidecar', SIDECAR, ['run', '--config', config], {
      cwd: tmp,
      env: { ...process.env, INTERNAL_SHARED_SECRET: secret, RUST_LOG: 'info', NO_COLOR: '1' }
    })
    await step(async () => {
      await sidecar.waitFor(/admin API listening/)
      const m = /admin=(127\.0\.0\.1:\d+)/.exec(stripAnsi(sidecar.out + sidecar.err))
      assert.ok(m, 'the sidecar logs its admin address')
      adminUrl = `http://${m[1]}`
    })

    server = await startServer({ dir: join(REACT, 'demo/dist'), api: flask.url })
    base = `http://127.0.0.1:${server.port}`

    browser = await chromium.launchPersistentContext(join(tmp, 'chromium-profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 960, height: 300 },
      locale: 'en-US',
      timezoneId: 'UTC',
      timeout: 30_000
    })
    page = browser.pages()[0] ?? await browser.newPage()
    page.setDefaultTimeout(10_000)
  })

  after(async () => {
    await browser?.close().catch(() => {})
    await server?.close().catch(() => {})
    await Promise.all(procs.map((p) => p.stop()))
    if (tmp) await rm(tmp, { recursive: true, force: true })
  })

  it('reports the opened session as connected to the backend, and the bell is empty', () => step(async () => {
    await control({ action: 'open' })
    await eventually('the sidecar to report business_1 connected', async () => {
      const v = await tenantView()
      return v.link === 'up' && v.stable === 'connected' && v.reported?.status === 'connected' && v.owed === null && v
    }, { timeoutMs: 15_000 })
    assert.equal((await backendStatus())?.status, 'connected')

    await page.goto(`${base}/`)
    await page.getByTestId('home-page').waitFor()
    await page.getByTestId('bell').click()
    await page.getByTestId('empty').waitFor()
    assert.equal(await page.getByTestId('badge').count(), 0)
    assert.equal(await page.locator(ITEM).count(), 0)
  }))

  it('shows the red WhatsApp item in the bell within seconds of a 401 logout', () => step(async () => {
    const t0 = Date.now()
    await control({ action: 'logout' })
    const item = page.locator(ITEM)
    await eventually('the WhatsApp item in the open panel', async () => (await item.count()) === 1, { timeoutMs: BELL_DEADLINE_MS })
    const elapsed = Date.now() - t0
    assert.ok(elapsed < BELL_DEADLINE_MS, `the item took ${elapsed} ms`)
    console.log(`logout -> red item in the bell: ${elapsed} ms`)

    assert.equal(await page.getByTestId('badge').textContent(), '1')
    assert.match(await page.getByTestId('bell').getAttribute('aria-label'), /1 unread/)
    assert.match(await item.textContent(), /WhatsApp connection lost/)
    assert.match(await item.textContent(), /reconnect in the WhatsApp settings/)
    assert.equal(await item.getAttribute('data-priority'), 'high')
    assert.equal(await item.getAttribute('href'), SETTINGS_PATH)
    // The red accent and the icon, as the browser renders them.
    const look = await item.evaluate((el) => {
      const icon = el.querySelector('svg[data-icon="whatsapp-disconnect"]')
      const box = icon?.getBoundingClientRect()
      return { border: getComputedStyle(el).borderLeftColor, width: getComputedStyle(el).borderLeftWidth, icon: icon && { stroke: getComputedStyle(icon).stroke, w: box.width, h: box.height } }
    })
    assert.deepEqual(look, { border: 'rgb(217, 45, 32)', width: '4px', icon: { stroke: 'rgb(217, 45, 32)', w: 24, h: 24 } })
    assert.ok(await item.isVisible())

    // The reminder the backend holds is what the page shows.
    const api = await json(`${flask.url}/api/notifications`)
    assert.equal(api.unread_count, 1)
    assert.equal(api.notifications[0].type, 'system_whatsapp_disconnect')
    assert.match(api.notifications[0].details?.reason ?? '', /401/)

    const png = await page.screenshot({ fullPage: false })
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
    await mkdir(join(ROOT, 'artifacts'), { recursive: true })
    await writeFile(join(ROOT, 'artifacts/bell.png'), png)
    if (process.env.UPDATE_DOCS_SCREENSHOT === '1') {
      await mkdir(join(REACT, 'docs'), { recursive: true })
      await copyFile(join(ROOT, 'artifacts/bell.png'), join(REACT, 'docs/bell.png'))
    }
    assert.ok((await readFile(join(ROOT, 'artifacts/bell.png'))).length > 1000)
  }))

  it('takes the owner to the WhatsApp settings on click', () => step(async () => {
    await page.locator(ITEM).click()
    await eventually('the settings URL', () => page.url() === `${base}${SETTINGS_PATH}`, { timeoutMs: 10_000 })
    await page.getByTestId('settings-page').waitFor()
    assert.match(await page.getByTestId('settings-page').textContent(), /Settings › WhatsApp/)
    // Still disconnected: the bell on the settings page still shows it.
    await eventually('the badge on the settings page', async () => (await page.getByTestId('badge').count()) === 1 && (await page.getByTestId('badge').textContent()) === '1')
  }))

  it('takes the item away once the session is back', () => step(async () => {
    await control({ action: 'reconnect' })
    const gw = await json(`${gateway.url}/control/${TENANT}`)
    // The sim's reconnect opens the new socket; say open again only if it did not.
    if (gw.state?.connection !== 'open') await control({ action: 'open' })
    const t0 = Date.now()
    // connect_grace (1 s) + the webhook + one poll of the page.
    await eventually('the badge to go away', async () => (await page.getByTestId('badge').count()) === 0, { timeoutMs: 15_000 })
    console.log(`reconnect -> badge gone: ${Date.now() - t0} ms`)
    await page.getByTestId('bell').click()
    await page.getByTestId('empty').waitFor()
    assert.equal(await page.locator(ITEM).count(), 0)
    assert.match(await page.getByTestId('bell').getAttribute('aria-label'), /0 unread/)
    assert.equal((await json(`${flask.url}/api/notifications`)).unread_count, 0)
    assert.equal((await backendStatus())?.status, 'connected')
    const v = await tenantView()
    assert.equal(v.reported?.status, 'connected')
  }))
})
