/** The `type` the backend gives the reminder it opens when a tenant's WhatsApp session is lost. */
export const WHATSAPP_DISCONNECT_TYPE = 'system_whatsapp_disconnect'

/** Where a click on that reminder goes unless `settingsUrl` says otherwise. */
export const DEFAULT_SETTINGS_URL = '/app/settings?tab=whatsapp'

/** The notifications endpoint of the Flask kit (contrib/flask). */
export const DEFAULT_NOTIFICATIONS_URL = '/api/notifications'

/** Red accent of the item; strong enough on white for the 3:1 contrast of non-text UI parts. */
export const ACCENT = '#d92d20'

/** True for the reminder the sidecar's backend opens on a lost WhatsApp session. */
export function isWhatsAppDisconnect (notification) {
  return notification != null && notification.type === WHATSAPP_DISCONNECT_TYPE
}
