// WCAG AA: every text of the item is at least 4.5:1 on the item's background (the title used to
// be 4.44:1); the accent border and icon, non-text parts, at least 3:1. The colours are read
// from what renders, so a style change that breaks contrast fails here.
import { afterEach, describe, expect, it } from 'vitest'
import { cleanup, render, screen } from '@testing-library/react'
import { WhatsAppDisconnectNotification } from '../src/index.js'
import { CATALOGUE } from './catalogue.js'

/** "rgb(1, 2, 3)" or "#rrggbb" -> [r, g, b]. */
function parseColor (value) {
  const rgb = /^rgba?\((\d+),\s*(\d+),\s*(\d+)/.exec(value)
  if (rgb) return rgb.slice(1, 4).map(Number)
  const hex = /^#([0-9a-f]{6})$/i.exec(value)
  if (hex) return [0, 2, 4].map((i) => parseInt(hex[1].slice(i, i + 2), 16))
  throw new Error(`not a colour: ${value}`)
}

/** WCAG 2 relative luminance. */
function luminance ([r, g, b]) {
  const lin = (c) => { c /= 255; return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4 }
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
}

/** WCAG 2 contrast ratio of two colours. */
export function contrast (a, b) {
  const [x, y] = [luminance(parseColor(a)), luminance(parseColor(b))]
  return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05)
}

/** The background the element is painted on: its own or its nearest ancestor's. */
function backgroundOf (el) {
  for (let e = el; e; e = e.parentElement) {
    const bg = getComputedStyle(e).backgroundColor
    if (bg && bg !== 'transparent' && bg !== 'rgba(0, 0, 0, 0)') return bg
  }
  return 'rgb(255, 255, 255)'
}

/** Every element holding text inside `root`, with its text. */
function textHolders (root) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT)
  const out = []
  for (let n = walker.nextNode(); n; n = walker.nextNode()) if (n.textContent.trim()) out.push(n.parentElement)
  return out
}

afterEach(cleanup)

describe('contrast', () => {
  it('the formula gives the known WCAG values', () => {
    expect(contrast('#000000', '#ffffff')).toBeCloseTo(21, 5)
    expect(contrast('#777777', '#ffffff')).toBeCloseTo(4.48, 2)
    // The old title colour on this background: the failure issue 13 reported.
    expect(contrast('#d92d20', '#fef3f2')).toBeCloseTo(4.44, 2)
  })

  for (const lang of ['he', 'en']) {
    it(`every text of the ${lang} item is at least 4.5:1 on its background`, () => {
      const n = { type: 'system_whatsapp_disconnect', title: CATALOGUE[lang].title, note: CATALOGUE[lang].note, lang, created_at: '2025-01-31T12:00:00Z' }
      render(<WhatsAppDisconnectNotification notification={n} />)
      const holders = textHolders(screen.getByRole('link'))
      expect(holders.map((e) => e.dataset.part)).toEqual(['title', 'note', 'time'])
      for (const el of holders) {
        const ratio = contrast(getComputedStyle(el).color, backgroundOf(el))
        expect(ratio, `${el.dataset.part}: ${getComputedStyle(el).color} on ${backgroundOf(el)}`).toBeGreaterThanOrEqual(4.5)
      }
    })
  }

  it('the accent border and the icon are at least 3:1 on the item and on a white panel', () => {
    render(<WhatsAppDisconnectNotification notification={{ type: 'system_whatsapp_disconnect' }} />)
    const link = screen.getByRole('link')
    const accent = /solid (#[0-9a-f]{6}|rgb\([^)]*\))/i.exec(link.style.borderInlineStart)[1]
    const stroke = link.querySelector('svg').getAttribute('stroke')
    for (const c of [accent, stroke]) {
      expect(contrast(c, backgroundOf(link))).toBeGreaterThanOrEqual(3)
      expect(contrast(c, '#ffffff')).toBeGreaterThanOrEqual(3)
    }
  })
})
