// End to end, in a real browser: sim gateway -> wa-status-sidecar -> Flask kit -> the bell, in
// Hebrew right to left and in English left to right.
//
// Starts, all on 127.0.0.1: the Baileys kit's sim gateway (contrib/baileys/sim-gateway.mjs, with a
// token), the Flask kit's demo app (contrib/flask/app.py --demo, SQLite in a temp dir, one Hebrew
// and one English business), the sidecar binary with short graces, and a static server for the
// Vite-built demo page (contrib/react/demo) that proxies /api and /demo to Flask. Headless
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core; no browser download) opens the
// page once per language (?lang=he -> <html lang="he" dir="rtl">, ?lang=en), logged in as that
// language's business. For each: the session opens; a 401 logout puts the red WhatsApp item in
// the bell within seconds with the catalogue's exact texts, the accent and the icon on the
// inline-start side (right in Hebrew, left in English), the date in the page's locale and every
// text at least 4.5:1 (screenshots: artifacts/bell-he.png, artifacts/bell-en.png); clicking it
// lands on the WhatsApp settings; a reconnect takes the item away.
//
// Env: WA_SIDECAR_BIN (default target/debug/wa-status-sidecar, kept up to date with cargo build),
//      CHROMIUM (default /usr/bin/chromium), PYTHON (default .venv/bin/python, with the Flask kit
//      installed), UPDATE_DOCS_SCREENSHOT=1 also copies artifacts/bell-he.png to
//      contrib/react/docs/bell-he.png (the README's picture).
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request as httpRequest } from 'node:http'
import { chromium } from 'playwright-core'
import { decodePng } from './png.mjs'
import { Proc, eventually, json, run } from './procs.mjs'
import { startServer } from './serve.mjs'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const REACT = join(ROOT, 'contrib/react')
const BAILEYS = join(ROOT, 'contrib/baileys')
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'
const PYTHON = process.env.PYTHON ?? join(ROOT, '.venv/bin/python')
const SIDECAR = process.env.WA_SIDECAR_BIN ?? join(ROOT, 'target/debug/wa-status-sidecar')
/** The one catalogue both kits read: the texts the bell must show, byte for byte. */
const CATALOGUE = JSON.parse(readFileSync(join(ROOT, 'contrib/i18n/bell-messages.json'), 'utf8'))
const SETTINGS_PATH = '/app/settings?tab=whatsapp'
const ITEM = '[data-notification-type="system_whatsapp_disconnect"]'
/** "within seconds": a terminal close is reported at once, the page polls every second. */
const BELL_DEADLINE_MS = 10_000
/** The fields GET /api/notifications may send (INTERFACES.md), and no others. */
const NOTIFICATION_FIELDS = ['created_at', 'id', 'lang', 'note', 'priority', 'title', 'type']
const RED = [217, 45, 32]
const ITEM_BACKGROUND = [254, 243, 242]

/** One browser run per direction, each as its own business in that business's locale. */
const RUNS = [
  { lang: 'he', dir: 'rtl', tenant: 'business_he', owner: 1, accent: 'right', dateLocale: 'he-IL', settings: 'הגדרות › ווטסאפ' },
  { lang: 'en', dir: 'ltr', tenant: 'business_en', owner: 2, accent: 'left', dateLocale: 'en', settings: 'Settings › WhatsApp' }
]

const procs = []
let tmp, server, browser, base, gateway, flask, sidecar, adminUrl
const gatewayToken = randomBytes(24).toString('hex')

const npmCi = (cwd) => run('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd })
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, '') // eslint-disable-line no-control-regex

function start (name, command, args, options) {
  const p = new Proc(name, command, args, options)
  procs.push(p)
  return p
}

/** Runs a step; on failure, appends every process's recent output to the error. */
async function step (fn) {
  try {
    return await fn()
  } catch (err) {
    err.message += `\n${procs.map((p) => p.logs()).join('\n')}`
    throw err
  }
}

const control = (tenant, body) => json(`${gateway.url}/control/${tenant}`, { method: 'POST', body, headers: { authorization: `Bearer ${gatewayToken}` } })
const gatewayView = (tenant) => json(`${gateway.url}/control/${tenant}`, { headers: { authorization: `Bearer ${gatewayToken}` } })
const tenantView = (tenant) => json(`${adminUrl}/tenants/${tenant}`)

/** WCAG 2 contrast ratio of two [r, g, b] colours. */
function contrast (a, b) {
  const lum = (rgb) => {
    const [r, g, b] = rgb.map((c) => { c /= 255; return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4 })
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
  }
  const [x, y] = [lum(a), lum(b)]
  return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05)
}
const rgb = (css) => {
  const m = /^rgba?\((\d+), (\d+), (\d+)/.exec(css)
  assert.ok(m, `not an rgb() colour: ${css}`)
  return m.slice(1, 4).map(Number)
}
const near = (px, colour, tolerance = 24) => px.slice(0, 3).every((c, i) => Math.abs(c - colour[i]) <= tolerance)

describe('the bell, end to end in headless Chromium, in Hebrew (RTL) and English (LTR)', { timeout: 600_000 }, () => {
  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium (or set CHROMIUM)`)
    assert.ok(existsSync(PYTHON), `${PYTHON} is missing: python3 -m venv .venv && .venv/bin/pip install ./contrib/flask`)
    if (!existsSync(join(BAILEYS, 'node_modules'))) await npmCi(BAILEYS)
    if (!existsSync(join(REACT, 'node_modules'))) await npmCi(REACT)
    // cargo knows whether the binary is stale; when it is not this takes a second.
    if (!process.env.WA_SIDECAR_BIN) await run('cargo', ['build', '--locked', '--bin', 'wa-status-sidecar'], { cwd: ROOT, timeoutMs: 1_200_000 })
    assert.ok(existsSync(SIDECAR), `${SIDECAR} is missing`)
    // Always rebuild the page, so the test never runs against a stale build.
    await run(process.execPath, [join(REACT, 'node_modules/vite/bin/vite.js'), 'build', '--logLevel', 'warn'], { cwd: REACT, timeoutMs: 120_000 })

    tmp = await mkdtemp(join(tmpdir(), 'wa-bell-e2e-'))
    const secret = randomBytes(24).toString('hex')
    const tenants = RUNS.map((r) => r.tenant)

    gateway = start('sim-gateway', process.execPath, [join(BAILEYS, 'sim-gateway.mjs'), '--port', '0', '--host', '127.0.0.1', '--token', gatewayToken, '--initial', 'none', ...tenants], { cwd: BAILEYS })
    flask = start('flask', PYTHON, [join(ROOT, 'contrib/flask/app.py'), '--demo', '--db', join(tmp, 'backend.db'), '--port', '0', '--host', '127.0.0.1',
      '--seed', RUNS.map((r) => `${r.tenant}:${r.owner}:${r.lang}`).join(',')], {
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
      'token_env = "GATEWAY_TOKEN"',
      '[backend]',
      `url = "${flask.url}"`,
      '[debounce]',
      'connect_grace = "1s"',
      'disconnect_grace = "3s"',
      '[tenants]',
      `ids = ${JSON.stringify(tenants)}`,
      '[state]',
      `dir = "${join(tmp, 'state')}"`,
      '[admin]',
      'listen = "127.0.0.1:0"',
      ''
    ].join('\n'))
    sidecar = start('sidecar', SIDECAR, ['run', '--config', config], {
      cwd: tmp,
      env: { ...process.env, INTERNAL_SHARED_SECRET: secret, GATEWAY_TOKEN: gatewayToken, RUST_LOG: 'info', NO_COLOR: '1' }
    })
    await step(async () => {
      await sidecar.waitFor(/admin API listening/)
      const m = /admin=(127\.0\.0\.1:\d+)/.exec(stripAnsi(sidecar.out + sidecar.err))
      assert.ok(m, 'the sidecar logs its admin address')
      adminUrl = `http://${m[1]}`
    })

    server = await startServer({ dir: join(REACT, 'demo/dist'), api: flask.url })
    base = `http://127.0.0.1:${server.port}`

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      timeout: 30_000
    })
  })

  after(async () => {
    await browser?.close().catch(() => {})
    await server?.close().catch(() => {})
    await Promise.all(procs.map((p) => p.stop()))
    if (tmp) await rm(tmp, { recursive: true, force: true })
  })

  it('refuses, through the page server too, a request addressed to another name (DNS rebinding)', () => step(async () => {
    const status = (host) => new Promise((resolveStatus, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: server.port, path: '/demo/state', headers: { host } }, (res) => {
        res.resume()
        resolveStatus(res.statusCode)
      })
      req.setTimeout(5000, () => req.destroy(new Error('timeout')))
      req.on('error', reject)
      req.end()
    })
    assert.equal(await status(`evil.example:${server.port}`), 403)
    assert.equal(await status(`127.0.0.1:${server.port}`), 200)
  }))

  it('keeps the gateway closed to a caller without its token', () => step(async () => {
    const res = await fetch(`${gateway.url}/control/${RUNS[0].tenant}`, { signal: AbortSignal.timeout(5000) })
    assert.equal(res.status, 401)
  }))

  for (const r of RUNS) {
    const texts = CATALOGUE[r.lang]
    describe(`${r.lang}: <html lang="${r.lang}" dir="${r.dir}">, business ${r.tenant}`, () => {
      let context, page

      before(async () => {
        // The browser itself speaks US English in UTC: what the page shows in Hebrew comes from
        // the page and the backend, not from the browser's defaults.
        context = await browser.newContext({ locale: 'en-US', timezoneId: 'UTC', viewport: { width: 960, height: 340 } })
        page = await context.newPage()
        page.setDefaultTimeout(10_000)
      })
      after(async () => { await context?.close().catch(() => {}) })

      it('reports the opened session as connected, and the bell is empty', () => step(async () => {
        await control(r.tenant, { action: 'open' })
        await eventually(`the sidecar to report ${r.tenant} connected`, async () => {
          const v = await tenantView(r.tenant)
          return v.link === 'up' && v.stable === 'connected' && v.reported?.status === 'connected' && v.owed === null && v
        }, { timeoutMs: 15_000 })

        await page.goto(`${base}/?lang=${r.lang}&tenant=${r.tenant}`)
        await page.getByTestId('home-page').waitFor()
        assert.deepEqual(await page.evaluate(() => [document.documentElement.lang, document.documentElement.dir]), [r.lang, r.dir])
        await eventually('the demo login', async () => (await page.getByTestId('bell').getAttribute('data-login')) === 'ok')
        await page.getByTestId('bell').click()
        await page.getByTestId('empty').waitFor()
        assert.equal(await page.getByTestId('badge').count(), 0)
        assert.equal(await page.locator(ITEM).count(), 0)
      }))

      it('shows the red item within seconds of a 401 logout, with the catalogue\'s exact texts', () => step(async () => {
        const t0 = Date.now()
        await control(r.tenant, { action: 'logout' })
        const item = page.locator(ITEM)
        await eventually('the WhatsApp item in the open panel', async () => (await item.count()) === 1, { timeoutMs: BELL_DEADLINE_MS })
        const elapsed = Date.now() - t0
        assert.ok(elapsed < BELL_DEADLINE_MS, `the item took ${elapsed} ms`)
        console.log(`${r.lang}: logout -> red item in the bell: ${elapsed} ms`)

        assert.equal(await page.getByTestId('badge').textContent(), '1')
        assert.equal(await item.locator('[data-part="title"]').textContent(), texts.title)
        assert.equal(await item.locator('[data-part="note"]').textContent(), texts.note)
        assert.equal(await item.getAttribute('lang'), r.lang)
        assert.equal(await item.getAttribute('data-priority'), 'high')
        assert.equal(await item.getAttribute('href'), SETTINGS_PATH)
        // The accessible name is the title, in the item's language.
        assert.equal(await page.getByRole('link', { name: texts.title, exact: true }).count(), 1)

        // What the backend sent: exactly the pinned fields, the texts as UTF-8 (never \u escapes).
        const res = await context.request.get(`${base}/api/notifications`)
        assert.equal(res.status(), 200)
        const raw = await res.text()
        assert.ok(raw.includes(texts.title) && raw.includes(texts.note), `the texts travel unescaped: ${raw}`)
        const api = JSON.parse(raw)
        assert.equal(api.unread_count, 1)
        assert.deepEqual(Object.keys(api.notifications[0]).sort(), NOTIFICATION_FIELDS)
        assert.deepEqual({ ...api.notifications[0], id: undefined, created_at: undefined },
          { id: undefined, created_at: undefined, type: 'system_whatsapp_disconnect', priority: 'high', title: texts.title, note: texts.note, lang: r.lang })
      }))

      it(`lays the item out ${r.dir}: the accent and the icon on the ${r.accent}`, () => step(async () => {
        const item = page.locator(ITEM)
        const look = await item.evaluate((el) => {
          const box = (e) => { const b = e.getBoundingClientRect(); return { left: b.left, right: b.right, width: b.width, height: b.height } }
          const cs = getComputedStyle(el)
          return {
            item: box(el),
            clientLeft: el.clientLeft,
            clientWidth: el.clientWidth,
            direction: cs.direction,
            textAlign: cs.textAlign,
            borderLeft: [cs.borderLeftWidth, cs.borderLeftColor],
            borderRight: [cs.borderRightWidth, cs.borderRightColor],
            paddingInline: [parseFloat(cs.paddingLeft), parseFloat(cs.paddingRight)],
            icon: box(el.querySelector('svg[data-icon="whatsapp-disconnect"]')),
            iconStroke: getComputedStyle(el.querySelector('svg[data-icon="whatsapp-disconnect"]')).stroke,
            title: box(el.querySelector('[data-part="title"]')),
            note: box(el.querySelector('[data-part="note"]'))
          }
        })
        const { item: b } = look
        // The accent is the border between the item's outer box and its padding box.
        const leftBorder = look.clientLeft
        const rightBorder = Math.round(b.width - look.clientLeft - look.clientWidth)
        assert.equal(look.direction, r.dir)
        assert.equal(look.textAlign, 'start')
        assert.equal(look.iconStroke, 'rgb(217, 45, 32)')
        assert.deepEqual([look.icon.width, look.icon.height], [24, 24])
        if (r.dir === 'rtl') {
          assert.deepEqual([leftBorder, rightBorder], [0, 4], `accent on the right: ${JSON.stringify(look)}`)
          assert.deepEqual(look.borderRight, ['4px', 'rgb(217, 45, 32)'])
          assert.equal(look.borderLeft[0], '0px')
          // The icon at the right, just inside the accent and the padding; the text to its left.
          assert.ok(Math.abs(look.icon.right - (b.right - 4 - look.paddingInline[1])) <= 1, `icon at the right edge: ${JSON.stringify(look)}`)
          assert.ok(look.title.right <= look.icon.left && look.note.right <= look.icon.left, `text left of the icon: ${JSON.stringify(look)}`)
          // Right-aligned text: the title starts (on the right) where the note does.
          assert.ok(Math.abs(look.title.right - look.note.right) <= 1)
        } else {
          assert.deepEqual([leftBorder, rightBorder], [4, 0], `accent on the left: ${JSON.stringify(look)}`)
          assert.deepEqual(look.borderLeft, ['4px', 'rgb(217, 45, 32)'])
          assert.equal(look.borderRight[0], '0px')
          assert.ok(Math.abs(look.icon.left - (b.left + 4 + look.paddingInline[0])) <= 1, `icon at the left edge: ${JSON.stringify(look)}`)
          assert.ok(look.title.left >= look.icon.right && look.note.left >= look.icon.right, `text right of the icon: ${JSON.stringify(look)}`)
          assert.ok(Math.abs(look.title.left - look.note.left) <= 1)
        }

        // And as painted: a column of the item's own screenshot, 1 px from each edge (rows clear
        // of the panel's rounded corners, which clip the last item's bottom corners).
        const shot = decodePng(await item.screenshot())
        const column = (x) => Array.from({ length: shot.height - 20 }, (_, i) => shot.pixel(x, i + 10))
        const [leftColumn, rightColumn] = [column(1), column(shot.width - 2)]
        const [accentColumn, plainColumn] = r.dir === 'rtl' ? [rightColumn, leftColumn] : [leftColumn, rightColumn]
        assert.ok(accentColumn.every((px) => near(px, RED)), `red accent painted on the ${r.accent}`)
        assert.ok(plainColumn.every((px) => near(px, ITEM_BACKGROUND)), `no accent on the other side`)
      }))

      it(`formats the date in ${r.dateLocale} (the page's language), and every text is at least 4.5:1`, () => step(async () => {
        const item = page.locator(ITEM)
        const time = await item.locator('time').evaluate((el, locale) => ({
          text: el.textContent,
          expected: new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(el.dateTime)),
          browserDefault: new Date(el.dateTime).toLocaleString()
        }), r.dateLocale)
        assert.equal(time.text, time.expected)
        assert.notEqual(time.text, time.browserDefault)
        if (r.lang === 'he') assert.match(time.text, /[\u0590-\u05FF]/, 'a Hebrew month name')

        const colours = await item.evaluate((el) => {
          const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT)
          const out = []
          for (let n = walker.nextNode(); n; n = walker.nextNode()) {
            if (n.textContent.trim()) out.push({ text: n.textContent, color: getComputedStyle(n.parentElement).color })
          }
          return { background: getComputedStyle(el).backgroundColor, texts: out }
        })
        assert.equal(colours.texts.length, 3)
        for (const t of colours.texts) {
          const ratio = contrast(rgb(t.color), rgb(colours.background))
          assert.ok(ratio >= 4.5, `${t.text}: ${t.color} on ${colours.background} is ${ratio.toFixed(2)}:1`)
        }
      }))

      it(`saves the screenshot artifacts/bell-${r.lang}.png`, () => step(async () => {
        const png = await page.screenshot({ fullPage: false })
        const image = decodePng(png)
        assert.deepEqual([image.width, image.height], [960, 340])
        await mkdir(join(ROOT, 'artifacts'), { recursive: true })
        const file = join(ROOT, `artifacts/bell-${r.lang}.png`)
        await writeFile(file, png)
        if (r.lang === 'he' && process.env.UPDATE_DOCS_SCREENSHOT === '1') {
          await copyFile(file, join(REACT, 'docs/bell-he.png'))
        }
      }))

      it('takes the owner to the WhatsApp settings on click', () => step(async () => {
        await page.locator(ITEM).click()
        await eventually('the settings URL', () => page.url() === `${base}${SETTINGS_PATH}`, { timeoutMs: 10_000 })
        await page.getByTestId('settings-page').waitFor()
        assert.match(await page.getByTestId('settings-page').textContent(), new RegExp(r.settings))
        assert.deepEqual(await page.evaluate(() => [document.documentElement.lang, document.documentElement.dir]), [r.lang, r.dir])
        // Still disconnected: the bell on the settings page still shows it.
        await eventually('the badge on the settings page', async () => (await page.getByTestId('badge').count()) === 1 && (await page.getByTestId('badge').textContent()) === '1')
      }))

      it('takes the item away once the session is back', () => step(async () => {
        await control(r.tenant, { action: 'reconnect' })
        const gw = await gatewayView(r.tenant)
        // The sim's reconnect opens the new socket; say open again only if it did not.
        if (gw.state?.connection !== 'open') await control(r.tenant, { action: 'open' })
        const t0 = Date.now()
        // connect_grace (1 s) + the webhook + one poll of the page.
        await eventually('the badge to go away', async () => (await page.getByTestId('badge').count()) === 0, { timeoutMs: 15_000 })
        console.log(`${r.lang}: reconnect -> badge gone: ${Date.now() - t0} ms`)
        await page.getByTestId('bell').click()
        await page.getByTestId('empty').waitFor()
        assert.equal(await page.locator(ITEM).count(), 0)
        const api = await (await context.request.get(`${base}/api/notifications`)).json()
        assert.equal(api.unread_count, 0)
        assert.equal((await tenantView(r.tenant)).reported?.status, 'connected')
      }))
    })
  }
})
