/** The `type` the backend gives the reminder it opens when a tenant's WhatsApp session is lost. */
export const WHATSAPP_DISCONNECT_TYPE = 'system_whatsapp_disconnect'

/** Where a click on that reminder goes unless `settingsUrl` says otherwise. */
export const DEFAULT_SETTINGS_URL = '/app/settings?tab=whatsapp'

/** The notifications endpoint of the Flask kit (contrib/flask). */
export const DEFAULT_NOTIFICATIONS_URL = '/api/notifications'

/**
 * Red accent of the item (its border and icon). Not used for text: on the item's background it
 * is 4.44:1, enough for the 3:1 of non-text parts, short of the 4.5:1 text needs.
 */
export const ACCENT = '#d92d20'

/**
 * The item's colours. Every text colour is at least 4.5:1 (WCAG AA) on `background`; the test
 * computes each ratio from what is rendered.
 */
export const COLORS = Object.freeze({
  accent: ACCENT,
  background: '#fef3f2', // 16.3:1 with text, 6.0:1 with title, 7.1:1 with muted
  text: '#101828',
  title: '#b42318',
  muted: '#475467'
})

/** True for the reminder the sidecar's backend opens on a lost WhatsApp session. */
export function isWhatsAppDisconnect (notification) {
  return notification != null && notification.type === WHATSAPP_DISCONNECT_TYPE
}
