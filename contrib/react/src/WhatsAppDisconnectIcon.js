import { createElement as h } from 'react'
import { ACCENT } from './constants.js'

/**
 * A chat bubble with a slash through it: "the WhatsApp connection is lost".
 * Inline SVG (no asset, no icon font). Decorative, so hidden from screen readers unless a
 * `title` is given. Extra props (style, className, ...) go to the <svg>.
 */
export function WhatsAppDisconnectIcon ({ size = 24, color = ACCENT, title, ...rest }) {
  const labelled = typeof title === 'string' && title !== ''
  return h('svg', {
    width: size,
    height: size,
    viewBox: '0 0 24 24',
    fill: 'none',
    stroke: color,
    strokeWidth: 2,
    strokeLinecap: 'round',
    strokeLinejoin: 'round',
    role: labelled ? 'img' : undefined,
    'aria-hidden': labelled ? undefined : 'true',
    focusable: 'false',
    'data-icon': 'whatsapp-disconnect',
    ...rest
  },
  labelled ? h('title', null, title) : null,
  // The speech bubble with its tail, the shape people read as WhatsApp.
  h('path', { d: 'M20.5 11.5a8.5 8.5 0 0 1-12.6 7.4L3.5 20.5l1.6-4.3A8.5 8.5 0 1 1 20.5 11.5z' }),
  // The cut.
  h('line', { x1: 4, y1: 4, x2: 20, y2: 20 })
  )
}
