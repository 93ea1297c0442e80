import { useCallback, useEffect, useRef, useState } from 'react'
import { DEFAULT_NOTIFICATIONS_URL } from './constants.js'

/** Default poll period: a lost session shows up within half a minute without hammering the API. */
export const DEFAULT_INTERVAL_MS = 30_000

/**
 * Turns a `GET /api/notifications` body into `{ items, unreadCount }`.
 * Throws on a body that is not `{ notifications: [...] }`; a missing or bad `unread_count`
 * falls back to the number of items.
 */
export function parseNotifications (body) {
  if (body === null || typeof body !== 'object' || !Array.isArray(body.notifications)) {
    throw new Error('unexpected notifications response: no "notifications" array')
  }
  const items = body.notifications.filter((n) => n !== null && typeof n === 'object')
  const count = body.unread_count
  const unreadCount = Number.isInteger(count) && count >= 0 ? count : items.length
  return { items, unreadCount }
}

function isHidden () {
  return typeof document !== 'undefined' && document.visibilityState === 'hidden'
}

/**
 * Polls the notifications endpoint and returns what a bell and its panel need.
 *
 *   const { items, unreadCount, error, loading, refresh } =
 *     useNotifications({ url: '/api/notifications', intervalMs: 15000 })
 *
 * - One request at a time: the next poll is scheduled `intervalMs` after the previous one ends.
 * - A failed poll sets `error` and keeps the last good `items`; the next success clears it.
 * - While the tab is hidden no poll is made; it polls at once when the tab is shown again
 *   (`pauseWhenHidden: false` to poll anyway).
 * - `refresh()` polls now (e.g. after the user marked something read) and returns a promise.
 * - `fetch` and `init` (the fetch options; default `credentials: 'same-origin'`) can be injected,
 *   e.g. to add an auth header. `enabled: false` stops polling (e.g. before login).
 */
export function useNotifications ({
  url = DEFAULT_NOTIFICATIONS_URL,
  intervalMs = DEFAULT_INTERVAL_MS,
  enabled = true,
  pauseWhenHidden = true,
  fetch: fetchImpl,
  init
} = {}) {
  const [state, setState] = useState({ items: [], unreadCount: 0, error: null, loading: enabled, lastUpdated: null })
  // The latest fetch/init, read at call time, so inline objects/functions do not restart polling.
  const options = useRef({ fetchImpl, init })
  options.current = { fetchImpl, init }
  // Set by the running effect: polls now and reschedules.
  const pollNow = useRef(null)

  useEffect(() => {
    if (!enabled) {
      setState((s) => (s.loading ? { ...s, loading: false } : s))
      pollNow.current = null
      return undefined
    }
    let stopped = false
    let timer = null
    let inFlight = null
    const controller = new AbortController()

    const schedule = () => {
      clearTimeout(timer)
      if (!stopped && intervalMs > 0) timer = setTimeout(() => { poll() }, intervalMs)
    }

    const load = async () => {
      const { fetchImpl: f, init: i } = options.current
      const doFetch = f ?? globalThis.fetch
      try {
        const res = await doFetch(url, {
          credentials: 'same-origin',
          ...i,
          headers: { Accept: 'application/json', ...i?.headers },
          signal: controller.signal
        })
        if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`)
        const { items, unreadCount } = parseNotifications(await res.json())
        if (!stopped) setState({ items, unreadCount, error: null, loading: false, lastUpdated: Date.now() })
      } catch (error) {
        if (!stopped) setState((s) => ({ ...s, error, loading: false }))
      }
    }

    // Runs one request unless one is already running; either way resolves when that one ends.
    const poll = () => {
      clearTimeout(timer)
      if (stopped) return Promise.resolve()
      if (!inFlight) {
        if (pauseWhenHidden && isHidden()) return Promise.resolve() // resumed by visibilitychange
        inFlight = load().finally(() => { inFlight = null; schedule() })
      }
      return inFlight
    }

    const onVisibility = () => { if (!isHidden()) poll() }
    if (pauseWhenHidden && typeof document !== 'undefined') document.addEventListener('visibilitychange', onVisibility)

    pollNow.current = poll
    poll()
    return () => {
      stopped = true
      clearTimeout(timer)
      controller.abort()
      if (pauseWhenHidden && typeof document !== 'undefined') document.removeEventListener('visibilitychange', onVisibility)
      if (pollNow.current === poll) pollNow.current = null
    }
  }, [url, intervalMs, enabled, pauseWhenHidden])

  const refresh = useCallback(() => (pollNow.current ? pollNow.current() : Promise.resolve()), [])
  return { ...state, refresh }
}
