// SSR-safe dates (issue 13): render on a server with react-dom/server, hydrate on the client with
// hydrateRoot, and React sees no mismatch, although server and client differ in time zone, in
// default locale and in the page's lang. The date is formatted after mount, in the page's locale.
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { act } from '@testing-library/react'
import { hydrateRoot } from 'react-dom/client'
import { CATALOGUE, TEST_DIR } from './catalogue.js'
import { SSR_NOTIFICATIONS, ssrTree } from './ssr-tree.js'

/** The server's HTML, rendered by a separate Node process in Kiribati (UTC+14) with German defaults. */
function serverRender () {
  const out = spawnSync(process.execPath, [join(TEST_DIR, 'ssr-render.mjs')], {
    cwd: join(TEST_DIR, '..'),
    env: { ...process.env, TZ: 'Pacific/Kiritimati', LC_ALL: 'de_DE.UTF-8', LANG: 'de_DE.UTF-8' },
    encoding: 'utf8',
    timeout: 30_000
  })
  if (out.status !== 0) throw new Error(`ssr-render.mjs failed: ${out.stderr}`)
  return JSON.parse(out.stdout)
}

/** Hydrates `html` in a fresh container; resolves to the container and every error React reported. */
async function hydrate (html, tree = ssrTree()) {
  const container = document.createElement('div')
  container.innerHTML = html
  document.body.appendChild(container)
  const errors = []
  const consoleError = vi.spyOn(console, 'error').mockImplementation((...args) => { errors.push(args.map(String).join(' ')) })
  let root
  await act(async () => {
    root = hydrateRoot(container, tree, { onRecoverableError: (err) => errors.push(`recoverable: ${err.message}`) })
  })
  await act(async () => {})
  consoleError.mockRestore()
  return { container, errors, root }
}

let roots = []
afterEach(() => {
  for (const r of roots) act(() => r.unmount())
  roots = []
  document.body.innerHTML = ''
  document.documentElement.removeAttribute('lang')
  document.documentElement.removeAttribute('dir')
})

describe('server rendering and hydration', () => {
  it('renders on a server with no DOM, writing the date the same way on every machine', () => {
    const server = serverRender()
    expect(server).toMatchObject({ hasDocument: false, locale: 'de-DE', timeZone: 'Pacific/Kiritimati' })
    expect(server.html).toContain('<time id="')
    expect(server.html).toContain('dateTime="2025-01-31T12:00:00.000000Z"')
    expect(server.html).toContain('>2025-01-31 12:00 UTC</time>')
    expect(server.html).toContain('>2025-02-01 23:30 UTC</time>')
    expect(server.html).toContain(CATALOGUE.he.title)
  })

  it('hydrates on a Hebrew RTL page without a mismatch, then formats the date in he-IL', async () => {
    const { html } = serverRender()
    document.documentElement.setAttribute('lang', 'he')
    document.documentElement.setAttribute('dir', 'rtl')
    const { container, errors, root } = await hydrate(html)
    roots.push(root)
    expect(errors).toEqual([])
    const times = [...container.querySelectorAll('time')]
    const fmt = (iso) => new Intl.DateTimeFormat('he-IL', { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(iso))
    expect(times.map((t) => t.textContent)).toEqual(SSR_NOTIFICATIONS.map((n) => fmt(n.created_at)))
    expect(times[0].textContent).not.toContain('UTC')
  })

  it('hydrates on an English page without a mismatch; the bare item then takes English fallbacks', async () => {
    const { html } = serverRender()
    document.documentElement.setAttribute('lang', 'en')
    const { container, errors, root } = await hydrate(html)
    roots.push(root)
    expect(errors).toEqual([])
    const [hebrew, bare] = container.querySelectorAll('a')
    expect(hebrew.querySelector('[data-part="title"]').textContent).toBe(CATALOGUE.he.title)
    expect(bare.querySelector('[data-part="title"]').textContent).toBe(CATALOGUE.en.title)
    const fmt = new Intl.DateTimeFormat('en', { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(SSR_NOTIFICATIONS[1].created_at))
    expect(bare.querySelector('time').textContent).toBe(fmt)
  })

  it('the check sees a mismatch when there is one (a date formatted during render on the server)', async () => {
    const { html } = serverRender()
    const { errors, root } = await hydrate(html.replace('2025-01-31 12:00 UTC', '1.2.2025, 02:00:00'))
    roots.push(root)
    expect(errors.join('\n')).toMatch(/hydrat/i)
  })
})
