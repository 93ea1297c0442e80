// A typed app using the kit as its README shows. `tsc -p test/types` must accept every line, and
// each `@ts-expect-error` must really be an error (tsc fails on an unused one), so the
// declarations are neither missing nor `any`.
import { useState } from 'react'
import { renderToString } from 'react-dom/server'
import {
  ACCENT,
  COLORS,
  DEFAULT_LANG,
  DEFAULT_SETTINGS_URL,
  MESSAGES,
  NotificationItem,
  WhatsAppDisconnectIcon,
  WhatsAppDisconnectNotification,
  dateLocaleFor,
  formatDate,
  getMessages,
  isWhatsAppDisconnect,
  parseNotifications,
  useNotifications,
  type BellLang,
  type Notification,
  type UseNotificationsResult
} from 'wa-status-notifications'

function MyItem ({ notification }: { notification: Notification }) {
  return <div>{String(notification.title ?? '')}</div>
}

export function Bell () {
  const result: UseNotificationsResult = useNotifications({ url: '/api/notifications', intervalMs: 15000, init: { headers: { Authorization: 'Bearer t' } } })
  const { items, unreadCount, error, loading, lastUpdated, refresh } = result
  const [open, setOpen] = useState(false)
  const count: number = unreadCount
  const message: string | undefined = error?.message
  const when: number | null = lastUpdated
  void refresh().then(() => setOpen(!open && !loading))
  return (
    <div data-count={count} title={message} data-when={when ?? undefined}>
      {items.map((n) => (
        <NotificationItem
          key={String(n.id)}
          notification={n}
          fallback={(other) => <MyItem notification={other} />}
          navigate={(url) => { window.history.pushState(null, '', url) }}
          onSelect={(selected, event) => { if (selected.priority !== 'high') event.preventDefault() }}
          locale='he-IL'
          timeZone='Asia/Jerusalem'
          dir='rtl'
        />
      ))}
    </div>
  )
}

export function Single ({ n }: { n: Notification }) {
  return isWhatsAppDisconnect(n)
    ? <WhatsAppDisconnectNotification notification={n} settingsUrl={DEFAULT_SETTINGS_URL} messages={{ title: 'Custom' }} lang='en' showTime={false} style={{ padding: 4 }} className='x' />
    : <MyItem notification={n} />
}

export const icon = <WhatsAppDisconnectIcon size={16} color={ACCENT} title='WhatsApp' style={{ flex: 'none' }} />

const lang: BellLang = DEFAULT_LANG
const texts: string[] = [MESSAGES.he.title, MESSAGES.en.note, getMessages('he-IL').bell, COLORS.title]
const chosen: BellLang = getMessages(navigator.language).lang
const locale: string | undefined = dateLocaleFor(document.documentElement.lang)
const date: string | null = formatDate('2025-01-31T12:00:00Z', { locale, timeZone: 'UTC' })
const parsed = parseNotifications({ notifications: [], unread_count: 0 })
const first: Notification | undefined = parsed.items[0]
export const html: string = renderToString(<Single n={{ type: 'system_whatsapp_disconnect', title: 'x', note: 'y', lang: 'he', created_at: null }} />)
export const all = [lang, texts, chosen, date, first]

// The wrong uses are errors.
// @ts-expect-error: notification is required
export const noNotification = <WhatsAppDisconnectNotification />
// @ts-expect-error: dir is ltr, rtl or auto
export const badDir = <WhatsAppDisconnectNotification notification={{}} dir='up' />
// @ts-expect-error: messages hold strings
export const badMessages = <WhatsAppDisconnectNotification notification={{}} messages={{ title: 1 }} />
// @ts-expect-error: navigate takes the URL
export const badNavigate = <NotificationItem notification={{}} navigate={(url: number) => url} />
// @ts-expect-error: the catalogue has he and en only
export const noFrench = MESSAGES.fr
// @ts-expect-error: intervalMs is a number
useNotifications({ intervalMs: '15s' })
// @ts-expect-error: the catalogue is read-only
MESSAGES.he.title = 'changed'
