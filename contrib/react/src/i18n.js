import { MESSAGES } from './messages.js'

export { MESSAGES }

/** The catalogue's default language: the businesses this is built for work in Hebrew. */
export const DEFAULT_LANG = 'he'

// A BCP 47 language tag as far as we need it ("he", "he-IL", "en-GB", "zh-Hant-TW"). Anything
// else (a backend bug, a hostile value) is ignored rather than put into an attribute or Intl.
const LANG_TAG = /^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8}){0,4}$/

/** `value` if it is a plausible language tag, else null. */
export function validLang (value) {
  return typeof value === 'string' && LANG_TAG.test(value) ? value : null
}

/** The primary language of a tag, lower case: "he-IL" -> "he". */
export function baseLang (tag) {
  return validLang(tag) ? tag.split('-')[0].toLowerCase() : null
}

/**
 * The catalogue's texts for a language tag ("he", "he-IL", "en-US", ...), with the catalogue
 * language they are in (`lang`); a language the catalogue lacks gets the default (Hebrew).
 */
export function getMessages (lang) {
  const base = baseLang(lang)
  const chosen = base && Object.hasOwn(MESSAGES, base) ? base : DEFAULT_LANG
  return { lang: chosen, ...MESSAGES[chosen] }
}

// A bare language gets the region its businesses are in, so dates read as they do there.
const DEFAULT_REGION = { he: 'he-IL', iw: 'he-IL' }

/** The locale for dates of a language tag: "he" -> "he-IL"; a tag with a region is kept. */
export function dateLocaleFor (lang) {
  if (!validLang(lang)) return undefined
  return lang.includes('-') ? lang : (DEFAULT_REGION[lang.toLowerCase()] ?? lang)
}

/**
 * `iso` as `Intl.DateTimeFormat` writes it in `locale` and `timeZone` (both optional: the
 * browser's own when missing or invalid). Null for a date that does not parse.
 */
export function formatDate (iso, { locale, timeZone } = {}) {
  const date = new Date(iso)
  if (typeof iso !== 'string' || Number.isNaN(date.getTime())) return null
  const options = { dateStyle: 'medium', timeStyle: 'short' }
  for (const attempt of [{ locale, timeZone }, { locale }, {}]) {
    try {
      return new Intl.DateTimeFormat(attempt.locale, attempt.timeZone ? { ...options, timeZone: attempt.timeZone } : options).format(date)
    } catch {
      // RangeError: an unknown locale or time zone; try with less.
    }
  }
  return null
}

/**
 * `iso` written the same way on every machine ("2025-01-31 12:00 UTC"): what the server renders
 * and the first client render repeats, before `formatDate` runs after mount. Null if it does
 * not parse.
 */
export function neutralDate (iso) {
  const date = new Date(iso)
  if (typeof iso !== 'string' || Number.isNaN(date.getTime())) return null
  const s = date.toISOString()
  return `${s.slice(0, 10)} ${s.slice(11, 16)} UTC`
}
