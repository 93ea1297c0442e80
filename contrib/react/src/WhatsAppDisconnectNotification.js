import { createElement as h, useEffect, useId, useRef, useState } from 'react'
import { COLORS, DEFAULT_SETTINGS_URL, isWhatsAppDisconnect } from './constants.js'
import { DEFAULT_LANG, baseLang, dateLocaleFor, formatDate, getMessages, neutralDate, validLang } from './i18n.js'
import { WhatsAppDisconnectIcon } from './WhatsAppDisconnectIcon.js'

// Inline styles, so the item looks right with no stylesheet; `className`/`style` override them.
// Only logical properties for anything with a side: on a right-to-left page (or under a
// dir="rtl" parent) the accent, the icon and the text all move to the right by themselves.
const styles = {
  item: {
    display: 'flex', // a row follows the direction: the icon, first, sits at the inline start
    alignItems: 'flex-start',
    gap: '12px',
    padding: '12px 14px',
    borderInlineStart: `4px solid ${COLORS.accent}`,
    background: COLORS.background,
    color: COLORS.text,
    textAlign: 'start',
    textDecoration: 'none',
    cursor: 'pointer',
    font: 'inherit'
  },
  icon: { flex: 'none', marginBlockStart: '2px' },
  body: { display: 'flex', flexDirection: 'column', gap: '2px', minWidth: 0 },
  title: { fontWeight: 600, color: COLORS.title },
  note: { fontSize: '0.9em' },
  time: { fontSize: '0.8em', color: COLORS.muted }
}

const DIRECTIONS = new Set(['ltr', 'rtl', 'auto'])

/** A non-blank string, else null (a missing field, or a backend sending something odd). */
function nonBlank (value) {
  return typeof value === 'string' && value.trim() !== '' ? value : null
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
 *
 * Language: the texts are the reminder's own `title` and `note` (the backend writes them in the
 * business's language and says which in `lang`); `messages` overrides them; a missing one comes
 * from the shared catalogue in that language (`lang` prop, else the reminder's `lang`, else
 * `locale`, else the page's `lang`, else Hebrew). The accessible name is the title, in that
 * language. The date is rendered locale-neutral ("2025-01-31 12:00 UTC") on the server and in
 * the first client render, then formatted with `Intl.DateTimeFormat` in `locale` (default: the
 * page's `lang`, "he" meaning "he-IL"), so server and client render the same markup.
 */
export function WhatsAppDisconnectNotification ({
  notification,
  settingsUrl = DEFAULT_SETTINGS_URL,
  navigate,
  onSelect,
  className,
  style,
  showTime = true,
  locale,
  lang,
  dir,
  timeZone,
  messages
}) {
  const ref = useRef(null)
  const id = useId()

  // The language of the page around the item (the nearest lang= above it). Only the browser knows
  // it, so it is read after mount; until then (and on the server) it is unknown.
  const [pageLang, setPageLang] = useState(null)
  useEffect(() => {
    const holder = ref.current?.parentElement?.closest('[lang]')
    setPageLang(validLang(holder?.getAttribute('lang') ?? null))
  })

  const itemLang = validLang(lang) ?? validLang(notification?.lang) ?? validLang(locale) ?? pageLang ?? DEFAULT_LANG
  const fallback = getMessages(itemLang)
  // A text from the catalogue in another language than the item's says so on its own element.
  const fallbackLang = fallback.lang === baseLang(itemLang) ? undefined : fallback.lang
  const ownTitle = nonBlank(messages?.title) ?? nonBlank(notification?.title)
  const ownNote = nonBlank(messages?.note) ?? nonBlank(notification?.note) ?? nonBlank(notification?.message)

  const iso = showTime ? notification?.created_at : null
  const neutral = neutralDate(iso)
  const dateLocale = validLang(locale) ?? dateLocaleFor(pageLang) ?? dateLocaleFor(itemLang)
  const [formatted, setFormatted] = useState(null)
  useEffect(() => {
    setFormatted(neutral ? { iso, locale: dateLocale, text: formatDate(iso, { locale: dateLocale, timeZone }) } : null)
  }, [iso, neutral, dateLocale, timeZone])
  const isFormatted = formatted !== null && formatted.iso === iso && formatted.text !== null
  const timeText = isFormatted ? formatted.text : neutral
  const timeLang = isFormatted && baseLang(formatted.locale) !== baseLang(itemLang) ? formatted.locale : undefined

  function handleClick (event) {
    if (onSelect) onSelect(notification, event)
    if (event.defaultPrevented || !navigate || !isPlainLeftClick(event)) return
    event.preventDefault()
    navigate(settingsUrl)
  }

  const titleId = `${id}-title`
  const noteId = `${id}-note`
  const timeId = `${id}-time`
  return h('a', {
    ref,
    href: settingsUrl,
    onClick: handleClick,
    className,
    style: { ...styles.item, ...style },
    lang: itemLang,
    dir: DIRECTIONS.has(dir) ? dir : undefined,
    'aria-labelledby': titleId,
    'aria-describedby': timeText ? `${noteId} ${timeId}` : noteId,
    'data-notification-type': notification?.type,
    'data-notification-id': notification?.id,
    'data-priority': notification?.priority
  },
  h(WhatsAppDisconnectIcon, { style: styles.icon }),
  h('span', { style: styles.body },
    h('span', { id: titleId, style: styles.title, lang: ownTitle ? undefined : fallbackLang, 'data-part': 'title' }, ownTitle ?? fallback.title),
    h('span', { id: noteId, style: styles.note, lang: ownNote ? undefined : fallbackLang, 'data-part': 'note' }, ownNote ?? fallback.note),
    timeText ? h('time', { id: timeId, dateTime: iso, lang: timeLang, style: styles.time, 'data-part': 'time' }, timeText) : null
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
