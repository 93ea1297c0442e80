// wa-status-notifications: the browser end of wa-status-sidecar.
export {
  WHATSAPP_DISCONNECT_TYPE,
  DEFAULT_SETTINGS_URL,
  DEFAULT_NOTIFICATIONS_URL,
  ACCENT,
  COLORS,
  isWhatsAppDisconnect
} from './constants.js'
export { MESSAGES, DEFAULT_LANG, getMessages, dateLocaleFor, formatDate } from './i18n.js'
export { WhatsAppDisconnectIcon } from './WhatsAppDisconnectIcon.js'
export { WhatsAppDisconnectNotification, NotificationItem } from './WhatsAppDisconnectNotification.js'
export { useNotifications, parseNotifications, DEFAULT_INTERVAL_MS } from './useNotifications.js'
