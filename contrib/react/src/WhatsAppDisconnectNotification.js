import { createElement as h } from 'react'
import { ACCENT, DEFAULT_SETTINGS_URL, isWhatsAppDisconnect } from './constants.js'
import { WhatsAppDisconnectIcon } from './WhatsAppDisconnectIcon.js'

// Inline styles, so the item looks right with no stylesheet; `className`/`style` override them.
const styles = {
  item: {
    display: 'flex',
    alignItems: 'flex-start',
    gap: '12px',
    padding: '12px 14px',
    borderLeft: `4px solid ${ACCENT}`,
    background: '#fef3f2',
    color: '#101828',
    textDecoration: 'none',
    cursor: 'pointer',
    font: 'inherit'
  },
  icon: { flex: 'none', marginTop: '2px' },
  body: { display: 'flex', flexDirection: 'column', gap: '2px', minWidth: 0 },
  title: { fontWeight: 600, color: ACCENT },
  message: { fontSize: '0.9em' },
  time: { fontSize: '0.8em', color: '#667085' }
}

function formatTime (iso) {
  const d = new Date(iso)
  return Number.isNaN(d.getTime()) ? null : d.toLocaleString()
}

/** A plain left click, which the browser would follow in this tab (no new tab or window asked for). */
function isPlainLeftClick (event) {
  return event.button === 0 && !event.metaKey && !event.ctrlKey && !event.shiftKey && !event.altKey
}

/**
 * The "WhatsApp connection lost" item of a notification panel.
 *
 * It is a real link to the WhatsApp settings, so middle-click and "open in new tab" work.
 * A plain click:
 *   1. calls `onSelect(notification, event)` if given (e.g. to close the panel);
 *      `event.preventDefault()` there cancels the navigation;
 *   2. then, if `navigate` is given (react-router's `useNavigate()`, Next's `router.push`, ...),
 *      calls `navigate(settingsUrl)` instead of a full page load; otherwise the browser follows
 *      the link.
 */
export function WhatsAppDisconnectNotification ({
  notification,
  settingsUrl = DEFAULT_SETTINGS_URL,
  navigate,
  onSelect,
  className,
  style,
  showTime = true
}) {
  const title = notification?.title || 'WhatsApp connection lost'
  const message = notification?.message || 'Reconnect in the WhatsApp settings'
  const time = showTime && notification?.created_at ? formatTime(notification.created_at) : null

  function handleClick (event) {
    if (onSelect) onSelect(notification, event)
    if (event.defaultPrevented || !navigate || !isPlainLeftClick(event)) return
    event.preventDefault()
    navigate(settingsUrl)
  }

  return h('a', {
    href: settingsUrl,
    onClick: handleClick,
    className,
    style: { ...styles.item, ...style },
    'data-notification-type': notification?.type,
    'data-notification-id': notification?.id,
    'data-priority': notification?.priority
  },
  h(WhatsAppDisconnectIcon, { style: styles.icon }),
  h('span', { style: styles.body },
    h('span', { style: styles.title }, title),
    h('span', { style: styles.message }, message),
    time ? h('time', { dateTime: notification.created_at, style: styles.time }, time) : null
  )
  )
}

/**
 * Drop-in for a panel's item renderer: the WhatsApp item for `system_whatsapp_disconnect`,
 * `fallback(notification)` (your own item) for anything else.
 *
 *   items.map(n => <NotificationItem key={n.id} notification={n} fallback={n => <MyItem n={n} />} />)
 */
export function NotificationItem ({ notification, fallback, ...props }) {
  if (isWhatsAppDisconnect(notification)) {
    return h(WhatsAppDisconnectNotification, { notification, ...props })
  }
  return fallback ? fallback(notification) : null
}
