import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { act, cleanup, renderHook } from '@testing-library/react'
import { parseNotifications, useNotifications } from '../src/index.js'

const lost = { id: 1, type: 'system_whatsapp_disconnect', priority: 'high', title: 'חיבור הווטסאפ נותק', note: 'n', created_at: '2025-01-31T12:00:00Z', lang: 'he' }
const other = { id: 2, type: 'task_due', title: 'Call back' }

const ok = (body) => ({ ok: true, status: 200, json: async () => body })
const status = (code) => ({ ok: false, status: code, json: async () => ({}) })

/** A fetch stub answering from a queue; the last answer repeats. Records each call. */
function fakeFetch (...answers) {
  const calls = []
  const fn = vi.fn((url, init) => {
    calls.push({ url, init })
    const a = answers.length > 1 ? answers.shift() : answers[0]
    return typeof a === 'function' ? a(init) : Promise.resolve(a)
  })
  fn.calls = calls
  return fn
}

// Lets pending promises (fetch, res.json) settle and timers due by then fire, inside act().
const advance = (ms) => act(() => vi.advanceTimersByTimeAsync(ms))

let visibility = 'visible'
beforeEach(() => {
  vi.useFakeTimers()
  visibility = 'visible'
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => visibility })
})
afterEach(() => {
  cleanup()
  vi.useRealTimers()
  delete document.visibilityState
})

describe('parseNotifications', () => {
  it('takes the items and unread_count of the Flask kit response', () => {
    expect(parseNotifications({ notifications: [lost, other], unread_count: 5 })).toEqual({ items: [lost, other], unreadCount: 5 })
  })
  it('counts the items when unread_count is missing or bad', () => {
    expect(parseNotifications({ notifications: [lost] }).unreadCount).toBe(1)
    expect(parseNotifications({ notifications: [lost, other], unread_count: -1 }).unreadCount).toBe(2)
    expect(parseNotifications({ notifications: [lost, null, 3], unread_count: 'x' })).toEqual({ items: [lost], unreadCount: 1 })
  })
  it('refuses a body without a notifications array', () => {
    expect(() => parseNotifications(null)).toThrow(/notifications/)
    expect(() => parseNotifications({ items: [] })).toThrow(/notifications/)
    expect(() => parseNotifications([])).toThrow(/notifications/)
  })
})

describe('useNotifications', () => {
  it('fetches /api/notifications on mount and returns the items and the unread count', async () => {
    const fetch = fakeFetch(ok({ notifications: [lost], unread_count: 1 }))
    const { result } = renderHook(() => useNotifications({ fetch }))
    expect(result.current.loading).toBe(true)
    expect(result.current.unreadCount).toBe(0)
    await advance(0)
    expect(result.current).toMatchObject({ items: [lost], unreadCount: 1, error: null, loading: false })
    expect(result.current.lastUpdated).toEqual(expect.any(Number))
    expect(fetch).toHaveBeenCalledTimes(1)
    const { url, init } = fetch.calls[0]
    expect(url).toBe('/api/notifications')
    expect(init.credentials).toBe('same-origin')
    expect(init.headers.Accept).toBe('application/json')
    expect(init.signal).toBeInstanceOf(AbortSignal)
  })

  it('polls every intervalMs, so the badge follows the backend', async () => {
    const fetch = fakeFetch(
      ok({ notifications: [], unread_count: 0 }),
      ok({ notifications: [lost], unread_count: 1 }),
      ok({ notifications: [], unread_count: 0 })
    )
    const { result } = renderHook(() => useNotifications({ url: '/n', intervalMs: 5000, fetch }))
    await advance(0)
    expect(result.current.unreadCount).toBe(0)
    await advance(4999)
    expect(fetch).toHaveBeenCalledTimes(1)
    await advance(1)
    expect(fetch).toHaveBeenCalledTimes(2)
    expect(result.current.items).toEqual([lost])
    expect(result.current.unreadCount).toBe(1)
    await advance(5000)
    expect(fetch).toHaveBeenCalledTimes(3)
    expect(result.current.items).toEqual([])
    expect(result.current.unreadCount).toBe(0)
    expect(fetch.calls.every((c) => c.url === '/n')).toBe(true)
  })

  it('keeps the last good items on a failed poll, reports the error, and clears it on the next success', async () => {
    const fetch = fakeFetch(
      ok({ notifications: [lost], unread_count: 1 }),
      status(503),
      () => Promise.reject(new TypeError('Failed to fetch')),
      ok({ nope: true }),
      ok({ notifications: [], unread_count: 0 })
    )
    const { result } = renderHook(() => useNotifications({ intervalMs: 1000, fetch }))
    await advance(0)
    expect(result.current.items).toEqual([lost])
    await advance(1000)
    expect(result.current.error.message).toMatch(/HTTP 503/)
    expect(result.current.items).toEqual([lost])
    expect(result.current.unreadCount).toBe(1)
    await advance(1000)
    expect(result.current.error.message).toBe('Failed to fetch')
    await advance(1000)
    expect(result.current.error.message).toMatch(/notifications/)
    await advance(1000)
    expect(result.current.error).toBeNull()
    expect(result.current.unreadCount).toBe(0)
  })

  it('never has two requests in flight: the next poll waits for the slow one', async () => {
    let release
    const fetch = fakeFetch(
      () => new Promise((resolve) => { release = () => resolve(ok({ notifications: [lost], unread_count: 1 })) }),
      ok({ notifications: [], unread_count: 0 })
    )
    const { result } = renderHook(() => useNotifications({ intervalMs: 1000, fetch }))
    await advance(10_000)
    expect(fetch).toHaveBeenCalledTimes(1)
    // refresh() joins the request in flight instead of starting another.
    let refreshed = false
    act(() => { result.current.refresh().then(() => { refreshed = true }) })
    await advance(0)
    expect(fetch).toHaveBeenCalledTimes(1)
    expect(refreshed).toBe(false)
    await act(async () => { release() })
    await advance(0)
    expect(refreshed).toBe(true)
    expect(result.current.unreadCount).toBe(1)
    expect(fetch).toHaveBeenCalledTimes(1)
    await advance(1000)
    expect(fetch).toHaveBeenCalledTimes(2)
  })

  it('refresh() polls at once and restarts the period', async () => {
    const fetch = fakeFetch(ok({ notifications: [], unread_count: 0 }), ok({ notifications: [lost], unread_count: 1 }))
    const { result } = renderHook(() => useNotifications({ intervalMs: 60_000, fetch }))
    await advance(0)
    await advance(30_000)
    expect(fetch).toHaveBeenCalledTimes(1)
    await act(() => result.current.refresh())
    expect(fetch).toHaveBeenCalledTimes(2)
    expect(result.current.unreadCount).toBe(1)
    await advance(59_999)
    expect(fetch).toHaveBeenCalledTimes(2)
    await advance(1)
    expect(fetch).toHaveBeenCalledTimes(3)
  })

  it('stops polling and aborts the request in flight on unmount', async () => {
    let signal
    const fetch = fakeFetch(ok({ notifications: [], unread_count: 0 }), (init) => { signal = init.signal; return new Promise(() => {}) })
    const { unmount } = renderHook(() => useNotifications({ intervalMs: 1000, fetch }))
    await advance(1000)
    expect(fetch).toHaveBeenCalledTimes(2)
    expect(signal.aborted).toBe(false)
    unmount()
    expect(signal.aborted).toBe(true)
    await advance(10_000)
    expect(fetch).toHaveBeenCalledTimes(2)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('does not poll while the tab is hidden, and polls as soon as it is shown', async () => {
    const fetch = fakeFetch(ok({ notifications: [], unread_count: 0 }), ok({ notifications: [lost], unread_count: 1 }))
    const { result } = renderHook(() => useNotifications({ intervalMs: 1000, fetch }))
    await advance(0)
    visibility = 'hidden'
    await advance(5000)
    expect(fetch).toHaveBeenCalledTimes(1)
    visibility = 'visible'
    await act(async () => { document.dispatchEvent(new Event('visibilitychange')) })
    await advance(0)
    expect(fetch).toHaveBeenCalledTimes(2)
    expect(result.current.unreadCount).toBe(1)
  })

  it('polls a hidden tab too with pauseWhenHidden: false', async () => {
    visibility = 'hidden'
    const fetch = fakeFetch(ok({ notifications: [lost], unread_count: 1 }))
    const { result } = renderHook(() => useNotifications({ intervalMs: 1000, fetch, pauseWhenHidden: false }))
    await advance(2000)
    expect(fetch).toHaveBeenCalledTimes(3)
    expect(result.current.unreadCount).toBe(1)
  })

  it('makes no request while enabled is false, and starts when it turns true', async () => {
    const fetch = fakeFetch(ok({ notifications: [lost], unread_count: 1 }))
    const { result, rerender } = renderHook((props) => useNotifications({ fetch, intervalMs: 1000, ...props }), { initialProps: { enabled: false } })
    await advance(5000)
    expect(fetch).not.toHaveBeenCalled()
    expect(result.current.loading).toBe(false)
    rerender({ enabled: true })
    await advance(0)
    expect(fetch).toHaveBeenCalledTimes(1)
    expect(result.current.unreadCount).toBe(1)
  })

  it('merges injected fetch options (e.g. an auth header) and reads the latest ones without restarting', async () => {
    const fetch = fakeFetch(ok({ notifications: [], unread_count: 0 }))
    const { rerender } = renderHook((props) => useNotifications({ fetch, intervalMs: 1000, init: { headers: { Authorization: props.auth } } }), { initialProps: { auth: 'Bearer a' } })
    await advance(0)
    rerender({ auth: 'Bearer b' })
    await advance(1000)
    expect(fetch).toHaveBeenCalledTimes(2)
    expect(fetch.calls[0].init.headers).toEqual({ Accept: 'application/json', Authorization: 'Bearer a' })
    expect(fetch.calls[1].init.headers).toEqual({ Accept: 'application/json', Authorization: 'Bearer b' })
  })
})
