// Issue 14 / SPEC 7 "Language": the texts of the reminder or of the shared catalogue, right to
// left without configuration, an explicit dir, dates in the page's locale, an accessible name in
// the item's language.
import { afterEach, describe, expect, it } from 'vitest'
import { act, cleanup, render, screen } from '@testing-library/react'
import { renderToStaticMarkup } from 'react-dom/server'
import { WhatsAppDisconnectNotification, NotificationItem, getMessages, dateLocaleFor, formatDate } from '../src/index.js'
import { CATALOGUE } from './catalogue.js'

const ISO = '2025-01-31T12:00:00.000000Z'
const DATE = new Date(ISO)
const fmt = (locale, timeZone) => new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeStyle: 'short', timeZone }).format(DATE)

// As the Flask kit sends it for a Hebrew business (INTERFACES.md).
const hebrew = { id: 1, type: 'system_whatsapp_disconnect', priority: 'high', title: CATALOGUE.he.title, note: CATALOGUE.he.note, created_at: ISO, lang: 'he' }
const english = { ...hebrew, id: 2, title: CATALOGUE.en.title, note: CATALOGUE.en.note, lang: 'en' }

const part = (name) => screen.getByRole('link').querySelector(`[data-part="${name}"]`)

/** Renders inside a wrapper with the given attributes (a page or panel with lang/dir). */
function renderIn (attrs, element) {
  const host = document.createElement('div')
  for (const [k, v] of Object.entries(attrs)) host.setAttribute(k, v)
  document.body.appendChild(host)
  return render(element, { container: host })
}

afterEach(() => {
  cleanup()
  document.body.innerHTML = ''
  document.documentElement.removeAttribute('lang')
  document.documentElement.removeAttribute('dir')
})

describe('texts', () => {
  it('shows the Hebrew title and note of the reminder exactly, marked as Hebrew', () => {
    render(<WhatsAppDisconnectNotification notification={hebrew} />)
    expect(part('title').textContent).toBe('חיבור הווטסאפ נותק')
    expect(part('note').textContent).toBe('חיבור הווטסאפ לעסק נותק. יש להיכנס להגדרות ווטסאפ ולחבר מחדש את המספר.')
    expect(screen.getByRole('link').getAttribute('lang')).toBe('he')
  })

  it('has the title, in the item\'s language, as its accessible name and the note as its description', () => {
    const { rerender } = render(<WhatsAppDisconnectNotification notification={hebrew} />)
    const link = screen.getByRole('link', { name: CATALOGUE.he.title })
    expect(link.getAttribute('lang')).toBe('he')
    const described = link.getAttribute('aria-describedby').split(' ').map((id) => document.getElementById(id).textContent)
    expect(described[0]).toBe(CATALOGUE.he.note)
    rerender(<WhatsAppDisconnectNotification notification={english} />)
    expect(screen.getByRole('link', { name: CATALOGUE.en.title }).getAttribute('lang')).toBe('en')
  })

  it('takes a missing text from the catalogue in the reminder\'s language', () => {
    render(<WhatsAppDisconnectNotification notification={{ type: 'system_whatsapp_disconnect', lang: 'en', title: 'Custom title' }} />)
    expect(part('title').textContent).toBe('Custom title')
    expect(part('note').textContent).toBe(CATALOGUE.en.note)
    expect(part('note').getAttribute('lang')).toBeNull() // same language as the item
  })

  it('without a language anywhere, falls back to Hebrew, the catalogue\'s default', () => {
    render(<WhatsAppDisconnectNotification notification={{ type: 'system_whatsapp_disconnect' }} />)
    expect(part('title').textContent).toBe(CATALOGUE.he.title)
    expect(screen.getByRole('link').getAttribute('lang')).toBe('he')
  })

  it('uses the `locale` prop, then the page\'s lang, to choose the fallback language', () => {
    const bare = { type: 'system_whatsapp_disconnect' }
    const { unmount } = render(<WhatsAppDisconnectNotification notification={bare} locale='en-US' />)
    expect(part('title').textContent).toBe(CATALOGUE.en.title)
    expect(screen.getByRole('link').getAttribute('lang')).toBe('en-US')
    unmount()
    renderIn({ lang: 'en' }, <WhatsAppDisconnectNotification notification={bare} />)
    expect(part('title').textContent).toBe(CATALOGUE.en.title)
  })

  it('marks a fallback text whose language the catalogue lacks as Hebrew on its own element', () => {
    render(<WhatsAppDisconnectNotification notification={{ type: 'system_whatsapp_disconnect', lang: 'fr', title: 'Connexion WhatsApp perdue' }} />)
    expect(screen.getByRole('link').getAttribute('lang')).toBe('fr')
    expect(part('title').getAttribute('lang')).toBeNull()
    expect(part('note').textContent).toBe(CATALOGUE.he.note)
    expect(part('note').getAttribute('lang')).toBe('he')
  })

  it('lets `messages` override the texts, and `lang` say which language they are in', () => {
    render(<WhatsAppDisconnectNotification notification={hebrew} messages={{ title: 'Your number is offline' }} lang='en' />)
    expect(part('title').textContent).toBe('Your number is offline')
    expect(part('note').textContent).toBe(CATALOGUE.he.note)
    expect(screen.getByRole('link', { name: 'Your number is offline' }).getAttribute('lang')).toBe('en')
  })

  it('ignores hostile or broken fields instead of rendering them', () => {
    render(<WhatsAppDisconnectNotification notification={{ type: 'system_whatsapp_disconnect', lang: '"><script>', title: { evil: 1 }, note: '   ', created_at: 'yesterday' }} dir='sideways' />)
    const link = screen.getByRole('link')
    expect(link.getAttribute('lang')).toBe('he')
    expect(link.getAttribute('dir')).toBeNull()
    expect(part('title').textContent).toBe(CATALOGUE.he.title)
    expect(part('note').textContent).toBe(CATALOGUE.he.note)
    expect(link.querySelector('time')).toBeNull()
  })

  it('getMessages: the catalogue per language tag, Hebrew for the rest', () => {
    expect(getMessages('he-IL')).toEqual({ lang: 'he', ...CATALOGUE.he })
    expect(getMessages('EN-gb')).toEqual({ lang: 'en', ...CATALOGUE.en })
    expect(getMessages('de')).toEqual({ lang: 'he', ...CATALOGUE.he })
    expect(getMessages(undefined)).toEqual({ lang: 'he', ...CATALOGUE.he })
    expect(getMessages('__proto__').lang).toBe('he')
  })
})

describe('direction', () => {
  // Every style the item renders, as the server writes it.
  const markup = (props) => renderToStaticMarkup(<WhatsAppDisconnectNotification notification={hebrew} {...props} />)

  it('uses only logical properties for sides, so an RTL page mirrors it with no configuration', () => {
    const html = markup()
    expect(html).toContain('border-inline-start:4px solid #d92d20')
    expect(html).toContain('text-align:start')
    expect(html).toContain('margin-block-start:2px')
    // No physical side anywhere: left/right in a property name or a value would not mirror.
    const styles = [...html.matchAll(/style="([^"]*)"/g)].map((m) => m[1]).join(';')
    expect(styles).not.toMatch(/left|right/)
    // The icon comes first in a flex row, which puts it at the inline start in either direction.
    expect(html.indexOf('data-icon="whatsapp-disconnect"')).toBeLessThan(html.indexOf('data-part="title"'))
    expect(html).toMatch(/^<a [^>]*style="display:flex;/)
  })

  it('inherits the direction of its page or parent (no dir of its own) unless given `dir`', () => {
    renderIn({ dir: 'rtl', lang: 'he' }, <WhatsAppDisconnectNotification notification={hebrew} />)
    expect(screen.getByRole('link').getAttribute('dir')).toBeNull()
    cleanup()
    render(<WhatsAppDisconnectNotification notification={hebrew} dir='rtl' />)
    expect(screen.getByRole('link').getAttribute('dir')).toBe('rtl')
    cleanup()
    render(<NotificationItem notification={english} dir='ltr' />)
    expect(screen.getByRole('link').getAttribute('dir')).toBe('ltr')
  })
})

describe('dates', () => {
  it('formats created_at after mount with Intl in he-IL when the page\'s lang is he', async () => {
    document.documentElement.setAttribute('lang', 'he')
    render(<WhatsAppDisconnectNotification notification={english} timeZone='UTC' />)
    await act(async () => {})
    const time = part('time')
    expect(time.getAttribute('datetime')).toBe(ISO)
    expect(time.textContent).toBe(fmt('he-IL', 'UTC'))
    expect(time.textContent).not.toBe(fmt('en-US', 'UTC'))
    // The item is English, the date Hebrew: the date says so.
    expect(time.getAttribute('lang')).toBe('he-IL')
  })

  it('formats in the `locale` and `timeZone` props when given', async () => {
    renderIn({ lang: 'he' }, <WhatsAppDisconnectNotification notification={hebrew} locale='en-GB' timeZone='Asia/Jerusalem' />)
    await act(async () => {})
    expect(part('time').textContent).toBe(fmt('en-GB', 'Asia/Jerusalem'))
    expect(part('time').textContent).toContain('14:00') // 12:00 UTC is 14:00 in Jerusalem in winter
  })

  it('uses the item\'s language when the page has none', async () => {
    render(<WhatsAppDisconnectNotification notification={english} timeZone='UTC' />)
    await act(async () => {})
    expect(part('time').textContent).toBe(fmt('en', 'UTC'))
  })

  it('survives an unknown time zone or locale (the browser\'s own are used)', async () => {
    render(<WhatsAppDisconnectNotification notification={hebrew} timeZone='Mars/Olympus_Mons' locale='he-IL' />)
    await act(async () => {})
    expect(part('time').textContent).toBe(fmt('he-IL'))
    expect(formatDate(ISO, { locale: 'not a locale!' })).toBe(fmt(undefined))
    expect(formatDate('nope')).toBeNull()
  })

  it('dateLocaleFor: he means he-IL, a tag with a region stays', () => {
    expect(dateLocaleFor('he')).toBe('he-IL')
    expect(dateLocaleFor('en')).toBe('en')
    expect(dateLocaleFor('en-GB')).toBe('en-GB')
    expect(dateLocaleFor('<x>')).toBeUndefined()
  })
})
