// The tree the SSR test renders on a "server" (test/ssr-render.mjs, a plain Node process without
// a DOM, in another time zone and locale) and hydrates in jsdom. Plain createElement, so the
// child process needs no JSX transform.
import { createElement as h } from 'react'
import { NotificationItem } from '../src/index.js'

export const SSR_NOTIFICATIONS = [
  { id: 1, type: 'system_whatsapp_disconnect', priority: 'high', title: 'חיבור הווטסאפ נותק', note: 'חיבור הווטסאפ לעסק נותק. יש להיכנס להגדרות ווטסאפ ולחבר מחדש את המספר.', created_at: '2025-01-31T12:00:00.000000Z', lang: 'he' },
  // No lang and no texts: the fallbacks depend on the page's lang, which only the client knows.
  { id: 2, type: 'system_whatsapp_disconnect', priority: 'high', created_at: '2025-02-01T23:30:00Z' }
]

export function ssrTree (notifications = SSR_NOTIFICATIONS) {
  return h('ul', null, notifications.map((n) => h('li', { key: n.id }, h(NotificationItem, { notification: n }))))
}
