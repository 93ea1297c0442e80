// Type declarations for wa-status-notifications, written by hand next to the plain-JS sources.
// test/types/usage.tsx checks them with `tsc --noEmit` (part of `npm test`).
import type { CSSProperties, MouseEvent, ReactElement, SVGProps } from 'react'

/** The `type` the backend gives the reminder it opens when a tenant's WhatsApp session is lost. */
export declare const WHATSAPP_DISCONNECT_TYPE: 'system_whatsapp_disconnect'
/** `'/app/settings?tab=whatsapp'`: where a click on the item goes unless `settingsUrl` says otherwise. */
export declare const DEFAULT_SETTINGS_URL: string
/** `'/api/notifications'`: the Flask kit's notifications endpoint. */
export declare const DEFAULT_NOTIFICATIONS_URL: string
/** The item's red accent (border and icon), `'#d92d20'`. */
export declare const ACCENT: string
/** The item's colours; every text colour is at least 4.5:1 on `background`. */
export declare const COLORS: Readonly<{ accent: string, background: string, text: string, title: string, muted: string }>
/** Default poll period of `useNotifications`, in milliseconds (30 000). */
export declare const DEFAULT_INTERVAL_MS: number

/**
 * An item of `GET /api/notifications`. The Flask kit sends `id`, `type`, `priority`, `title`,
 * `note`, `created_at` (RFC 3339) and `lang` (the language of title and note); older backends
 * sent `message` instead of `note`. Other types of notifications may carry anything.
 */
export interface Notification {
  id?: string | number
  type?: string
  priority?: string
  title?: string | null
  note?: string | null
  /** The text of older backends; `note` wins when both are present. */
  message?: string | null
  created_at?: string | null
  /** BCP 47 language of `title` and `note`, e.g. `'he'` or `'en'`. */
  lang?: string | null
  [field: string]: unknown
}

/** A language of the shared catalogue (contrib/i18n/bell-messages.json). */
export type BellLang = 'he' | 'en'

/** The bell's texts in one language. */
export interface BellMessages {
  /** The reminder's title. */
  title: string
  /** The reminder's note: what to do. */
  note: string
  /** The one-line text of the bell. */
  bell: string
}

/** The shared catalogue: the bell's texts per language. Frozen. */
export declare const MESSAGES: Readonly<Record<BellLang, Readonly<BellMessages>>>
/** `'he'`: the catalogue's default language. */
export declare const DEFAULT_LANG: 'he'

/** The catalogue's texts for a language tag (`'he-IL'`, `'en'`, ...); Hebrew for a language it lacks. */
export declare function getMessages (lang?: string | null): BellMessages & { lang: BellLang }
/** The locale dates use for a language tag: `'he'` -> `'he-IL'`; a tag with a region is kept; undefined for a non-tag. */
export declare function dateLocaleFor (lang?: string | null): string | undefined
/** `iso` formatted by `Intl.DateTimeFormat` (medium date, short time); null if it does not parse. */
export declare function formatDate (iso: string | null | undefined, options?: { locale?: string, timeZone?: string }): string | null

/** True for the reminder the sidecar's backend opens on a lost WhatsApp session. */
export declare function isWhatsAppDisconnect (notification: Notification | null | undefined): boolean

export interface WhatsAppDisconnectNotificationProps {
  /** The item of `GET /api/notifications`. */
  notification: Notification
  /** Link target; default `DEFAULT_SETTINGS_URL`. */
  settingsUrl?: string
  /** Your router's navigate (react-router's `useNavigate()`, Next's `router.push`): used instead of a full page load. */
  navigate?: (url: string) => unknown
  /** Called first on a click; `event.preventDefault()` cancels the navigation. */
  onSelect?: (notification: Notification, event: MouseEvent<HTMLAnchorElement>) => void
  className?: string
  /** Merged over the inline styles. */
  style?: CSSProperties
  /** Show `created_at`; default true. */
  showTime?: boolean
  /**
   * BCP 47 locale of the date (`'he-IL'`, `'en-GB'`), formatted after mount. Default: the page's
   * `lang` (`'he'` meaning `'he-IL'`), else the item's language. Also picks the fallback texts'
   * language when neither `lang` nor the reminder says one.
   */
  locale?: string
  /** The language of the texts shown (the item's `lang` attribute); default the reminder's `lang`. */
  lang?: string
  /** `dir` attribute of the item; by default it inherits its page's or parent's direction. */
  dir?: 'ltr' | 'rtl' | 'auto'
  /** IANA time zone of the date, e.g. `'Asia/Jerusalem'`; default the browser's. */
  timeZone?: string
  /** Your own texts; each wins over the reminder's and the catalogue's. */
  messages?: Partial<Pick<BellMessages, 'title' | 'note'>>
}

/** The "WhatsApp connection lost" item of a notification panel: a link to the WhatsApp settings. */
export declare function WhatsAppDisconnectNotification (props: WhatsAppDisconnectNotificationProps): ReactElement

export interface NotificationItemProps extends Omit<WhatsAppDisconnectNotificationProps, 'notification'> {
  notification: Notification
  /** Renders every other type of notification; without it they render nothing. */
  fallback?: (notification: Notification) => ReactElement | null
}

/** The WhatsApp item for `system_whatsapp_disconnect`, `fallback(notification)` for any other type. */
export declare function NotificationItem (props: NotificationItemProps): ReactElement | null

export interface WhatsAppDisconnectIconProps extends Omit<SVGProps<SVGSVGElement>, 'ref' | 'color'> {
  /** Width and height in px; default 24. */
  size?: number | string
  /** Stroke colour; default `ACCENT`. */
  color?: string
  /** Makes the icon an image with this accessible name; without it the icon is decorative. */
  title?: string
}

/** The "WhatsApp disconnected" icon, an inline SVG. */
export declare function WhatsAppDisconnectIcon (props: WhatsAppDisconnectIconProps): ReactElement

/** `GET /api/notifications` as a bell needs it. */
export interface ParsedNotifications {
  items: Notification[]
  unreadCount: number
}

/** Turns a `GET /api/notifications` body into `{ items, unreadCount }`; throws without a `notifications` array. */
export declare function parseNotifications (body: unknown): ParsedNotifications

export interface UseNotificationsOptions {
  /** Default `DEFAULT_NOTIFICATIONS_URL`. */
  url?: string
  /** Poll period in ms, counted from the end of the previous request; 0 polls once. Default 30 000. */
  intervalMs?: number
  /** False: no requests (e.g. before login). Default true. */
  enabled?: boolean
  /** No polling while the tab is hidden; poll at once when shown. Default true. */
  pauseWhenHidden?: boolean
  /** A fetch to use instead of the global one. */
  fetch?: typeof globalThis.fetch
  /** Extra fetch options (headers, credentials; default `credentials: 'same-origin'`). */
  init?: RequestInit
}

export interface UseNotificationsResult extends ParsedNotifications {
  /** The last failed poll's error; null after a success. */
  error: Error | null
  /** True until the first poll ends. */
  loading: boolean
  /** `Date.now()` of the last successful poll. */
  lastUpdated: number | null
  /** Polls now (joining a request in flight); resolves when it ends. */
  refresh: () => Promise<void>
}

/** Polls the notifications endpoint for the bell's items and unread count. */
export declare function useNotifications (options?: UseNotificationsOptions): UseNotificationsResult
