// Every ```jsx block of README.md, run as written: each is written to test/.readme/ (imports
// unchanged; 'wa-status-notifications' resolves to src/, './my-app.jsx' to test/readme-app.jsx,
// 'react-router-dom' is the real router), imported, and what it exports is checked below. A block
// whose export has no check here fails the test, so no example goes unexercised.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { act, cleanup, fireEvent, render, renderHook, screen } from '@testing-library/react'
import { MemoryRouter, Route, Routes, useLocation } from 'react-router-dom'
import { CATALOGUE, TEST_DIR } from './catalogue.js'

const README = readFileSync(join(TEST_DIR, '../README.md'), 'utf8')
const BLOCKS = [...README.matchAll(/^```jsx\n([\s\S]*?)^```$/gm)].map((m) => m[1])
const OUT = join(TEST_DIR, '.readme')

const ISO = '2025-01-31T12:00:00Z'
const lost = { id: 1, type: 'system_whatsapp_disconnect', priority: 'high', title: CATALOGUE.he.title, note: CATALOGUE.he.note, created_at: ISO, lang: 'he' }
const other = { id: 2, type: 'task_due', priority: 'normal', title: 'Call the supplier', note: '', created_at: ISO, lang: 'en' }
const fmt = (locale, timeZone) => new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeStyle: 'short', timeZone }).format(new Date(ISO))

/** A fetch answering like the Flask kit's GET /api/notifications, recording its calls. */
function stubFetch (body = { notifications: [lost, other], unread_count: 2 }) {
  const fetch = vi.fn(async () => ({ ok: true, status: 200, json: async () => body }))
  vi.stubGlobal('fetch', fetch)
  return fetch
}

const CHECKS = {
  async Bell ({ Bell }) {
    const fetch = stubFetch()
    render(<Bell />)
    await act(async () => {})
    expect(fetch.mock.calls[0][0]).toBe('/api/notifications')
    expect(screen.getByTestId('my-bell').getAttribute('data-badge')).toBe('2')
    expect(screen.getByRole('link', { name: CATALOGUE.he.title }).getAttribute('href')).toBe('/app/settings?tab=whatsapp')
    expect(screen.getByTestId('my-item').textContent).toBe('Call the supplier')
  },

  async Item ({ Item }) {
    render(<><Item n={lost} /><Item n={other} /></>)
    expect(screen.getByRole('link').textContent).toContain(CATALOGUE.he.note)
    expect(screen.getByTestId('my-item').textContent).toBe('Call the supplier')
  },

  async RoutedItem ({ RoutedItem }) {
    function Where () {
      const { pathname, search } = useLocation()
      return <p data-testid='where'>{pathname + search}</p>
    }
    render(
      <MemoryRouter initialEntries={['/']}>
        <Routes>
          <Route path='/' element={<RoutedItem n={lost} />} />
          <Route path='/settings/channels' element={<Where />} />
        </Routes>
      </MemoryRouter>
    )
    fireEvent.click(screen.getByRole('link'))
    expect(screen.getByTestId('where').textContent).toBe('/settings/channels?tab=whatsapp')
  },

  async ProfileItem ({ ProfileItem }) {
    render(<ProfileItem n={lost} user={{ locale: 'en-GB', timeZone: 'Asia/Jerusalem' }} />)
    await act(async () => {})
    expect(screen.getByRole('link').querySelector('time').textContent).toBe(fmt('en-GB', 'Asia/Jerusalem'))
  },

  async OwnWordsItem ({ OwnWordsItem }) {
    render(<OwnWordsItem n={lost} />)
    const link = screen.getByRole('link', { name: 'WhatsApp is offline' })
    expect(link.getAttribute('lang')).toBe('en')
    expect(link.textContent).toContain('Scan the QR code again in Settings › WhatsApp.')
  },

  async HebrewPanel ({ HebrewPanel }) {
    render(<HebrewPanel items={[{ ...lost, title: null, note: null, lang: null }]} />)
    await act(async () => {})
    const link = screen.getByRole('link', { name: CATALOGUE.he.title })
    expect(link.parentElement.getAttribute('dir')).toBe('rtl')
    expect(link.getAttribute('dir')).toBeNull() // it follows its parent
    expect(link.querySelector('time').textContent).toBe(fmt('he-IL'))
  },

  async toastText ({ toastText }) {
    expect(toastText('he')).toBe(CATALOGUE.he.bell)
    expect(toastText('en-US')).toBe(CATALOGUE.en.bell)
  },

  async useBell ({ useBell }) {
    const fetch = stubFetch()
    const { result, rerender } = renderHook(({ token }) => useBell(token), { initialProps: { token: null } })
    await act(async () => {})
    expect(fetch).not.toHaveBeenCalled()
    rerender({ token: 's3cret' })
    await act(async () => {})
    expect(fetch).toHaveBeenCalledTimes(1)
    expect(fetch.mock.calls[0][1].headers.Authorization).toBe('Bearer s3cret')
    expect(result.current.unreadCount).toBe(2)
    expect(typeof result.current.refresh).toBe('function')
  }
}

const modules = []
beforeAll(async () => {
  rmSync(OUT, { recursive: true, force: true })
  mkdirSync(OUT, { recursive: true })
  writeFileSync(join(OUT, 'my-app.jsx'), "export { MyBell, MyItem } from '../readme-app.jsx'\n")
  for (const [i, code] of BLOCKS.entries()) {
    const file = join(OUT, `example-${i + 1}.jsx`)
    writeFileSync(file, code)
    modules.push(await import(/* @vite-ignore */ file))
  }
})

afterEach(() => {
  cleanup()
  vi.unstubAllGlobals()
})

describe('README.md examples', () => {
  it('has its jsx blocks, each a module with exports', () => {
    expect(BLOCKS.length).toBeGreaterThanOrEqual(5)
    for (const m of modules) expect(Object.keys(m).length).toBeGreaterThan(0)
  })

  it('every export of every block has a check here', () => {
    const exported = modules.flatMap((m) => Object.keys(m)).sort()
    expect(exported).toEqual(Object.keys(CHECKS).sort())
  })

  for (const name of Object.keys(CHECKS)) {
    it(`${name} works as the README says`, async () => {
      const mod = modules.find((m) => name in m)
      expect(mod, `no README block exports ${name}`).toBeDefined()
      await CHECKS[name](mod)
    })
  }
})
