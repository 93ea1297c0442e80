import { afterEach, describe, expect, it, vi } from 'vitest'
import { cleanup, fireEvent, render, screen } from '@testing-library/react'
import {
  DEFAULT_SETTINGS_URL,
  NotificationItem,
  WhatsAppDisconnectIcon,
  WhatsAppDisconnectNotification,
  isWhatsAppDisconnect
} from '../src/index.js'

// What the Flask kit's GET /api/notifications returns for a lost session (INTERFACES.md):
// id, type, priority, title, note, created_at, lang.
const reminder = {
  id: 7,
  type: 'system_whatsapp_disconnect',
  priority: 'high',
  title: 'WhatsApp connection lost',
  note: 'WhatsApp connection lost - reconnect in the WhatsApp settings',
  created_at: '2025-01-31T12:00:00.000000Z',
  lang: 'en'
}

// Records whether the click that reached the document was prevented, then prevents it so that
// jsdom does not try to navigate (it cannot).
function watchClicks () {
  const seen = []
  const listener = (e) => { seen.push(e.defaultPrevented); e.preventDefault() }
  document.addEventListener('click', listener)
  return { seen, stop: () => document.removeEventListener('click', listener) }
}

afterEach(cleanup)

describe('isWhatsAppDisconnect', () => {
  it('recognises only the sidecar reminder type', () => {
    expect(isWhatsAppDisconnect(reminder)).toBe(true)
    expect(isWhatsAppDisconnect({ ...reminder, type: 'task_due' })).toBe(false)
    expect(isWhatsAppDisconnect({})).toBe(false)
    expect(isWhatsAppDisconnect(null)).toBe(false)
    expect(isWhatsAppDisconnect(undefined)).toBe(false)
  })
})

describe('WhatsAppDisconnectNotification', () => {
  it('renders the title, the note, its icon and a red accent at the inline start', () => {
    render(<WhatsAppDisconnectNotification notification={reminder} />)
    const link = screen.getByRole('link')
    expect(link.textContent).toContain('WhatsApp connection lost')
    expect(link.textContent).toContain('reconnect in the WhatsApp settings')
    expect(link.getAttribute('data-notification-type')).toBe('system_whatsapp_disconnect')
    expect(link.getAttribute('data-priority')).toBe('high')
    // A logical property: the accent is on the left on an LTR page, on the right on an RTL one.
    expect(link.style.borderInlineStart).toBe('4px solid #d92d20')
    expect(link.style.borderLeft).toBe('')
    expect(link.style.textAlign).toBe('start')
    const icon = link.querySelector('svg[data-icon="whatsapp-disconnect"]')
    expect(icon).not.toBeNull()
    expect(icon.getAttribute('stroke')).toBe('#d92d20')
    expect(icon.getAttribute('aria-hidden')).toBe('true')
    const time = link.querySelector('time')
    expect(time.getAttribute('datetime')).toBe(reminder.created_at)
  })

  it('falls back to the catalogue (Hebrew by default) when the reminder has no title or note', () => {
    render(<WhatsAppDisconnectNotification notification={{ id: 1, type: 'system_whatsapp_disconnect' }} />)
    expect(screen.getByRole('link').textContent).toBe('חיבור הווטסאפ נותק' + 'חיבור הווטסאפ לעסק נותק. יש להיכנס להגדרות ווטסאפ ולחבר מחדש את המספר.')
    expect(screen.getByRole('link').querySelector('time')).toBeNull()
  })

  it('still shows the old `message` field when there is no `note`', () => {
    const { title, note, ...old } = reminder
    render(<WhatsAppDisconnectNotification notification={{ ...old, title, message: 'Reconnect now' }} />)
    expect(screen.getByRole('link').querySelector('[data-part="note"]').textContent).toBe('Reconnect now')
  })

  it('links to the WhatsApp settings by default, or to the given settingsUrl', () => {
    const { rerender } = render(<WhatsAppDisconnectNotification notification={reminder} />)
    expect(DEFAULT_SETTINGS_URL).toBe('/app/settings?tab=whatsapp')
    expect(screen.getByRole('link').getAttribute('href')).toBe('/app/settings?tab=whatsapp')
    rerender(<WhatsAppDisconnectNotification notification={reminder} settingsUrl='/settings/channels#whatsapp' />)
    expect(screen.getByRole('link').getAttribute('href')).toBe('/settings/channels#whatsapp')
  })

  it('without navigate, lets the browser follow the link', () => {
    render(<WhatsAppDisconnectNotification notification={reminder} />)
    const clicks = watchClicks()
    fireEvent.click(screen.getByRole('link'))
    clicks.stop()
    expect(clicks.seen).toEqual([false])
  })

  it('with navigate (react-router), calls it with the settings URL instead of a page load', () => {
    const navigate = vi.fn()
    render(<WhatsAppDisconnectNotification notification={reminder} navigate={navigate} settingsUrl='/s?tab=wa' />)
    const clicks = watchClicks()
    fireEvent.click(screen.getByRole('link'))
    clicks.stop()
    expect(navigate).toHaveBeenCalledTimes(1)
    expect(navigate).toHaveBeenCalledWith('/s?tab=wa')
    expect(clicks.seen).toEqual([true])
  })

  it('leaves ctrl/meta/middle clicks to the browser (new tab)', () => {
    const navigate = vi.fn()
    render(<WhatsAppDisconnectNotification notification={reminder} navigate={navigate} />)
    const clicks = watchClicks()
    fireEvent.click(screen.getByRole('link'), { ctrlKey: true })
    fireEvent.click(screen.getByRole('link'), { metaKey: true })
    fireEvent.click(screen.getByRole('link'), { button: 1 })
    clicks.stop()
    expect(navigate).not.toHaveBeenCalled()
    expect(clicks.seen).toEqual([false, false, false])
  })

  it('calls onSelect with the notification first; preventDefault there cancels the navigation', () => {
    const navigate = vi.fn()
    const onSelect = vi.fn()
    const { rerender } = render(<WhatsAppDisconnectNotification notification={reminder} navigate={navigate} onSelect={onSelect} />)
    fireEvent.click(screen.getByRole('link'))
    expect(onSelect).toHaveBeenCalledTimes(1)
    expect(onSelect.mock.calls[0][0]).toBe(reminder)
    expect(navigate).toHaveBeenCalledTimes(1)

    rerender(<WhatsAppDisconnectNotification notification={reminder} navigate={navigate} onSelect={(n, e) => e.preventDefault()} />)
    fireEvent.click(screen.getByRole('link'))
    expect(navigate).toHaveBeenCalledTimes(1)
  })

  it('takes className and style overrides', () => {
    render(<WhatsAppDisconnectNotification notification={reminder} className='my-item' style={{ padding: '2px' }} />)
    const link = screen.getByRole('link')
    expect(link.className).toBe('my-item')
    expect(link.style.padding).toBe('2px')
    expect(link.style.borderInlineStart).toBe('4px solid #d92d20')
  })
})

describe('WhatsAppDisconnectIcon', () => {
  it('is an image with a name when given a title', () => {
    render(<WhatsAppDisconnectIcon title='WhatsApp disconnected' size={16} />)
    const icon = screen.getByRole('img', { name: 'WhatsApp disconnected' })
    expect(icon.getAttribute('width')).toBe('16')
    expect(icon.getAttribute('aria-hidden')).toBeNull()
  })
})

describe('NotificationItem', () => {
  const other = { id: 8, type: 'task_due', title: 'Call the supplier' }
  const fallback = (n) => <li data-testid='own-item'>{n.title}</li>

  it('renders the WhatsApp item for system_whatsapp_disconnect, with the props passed on', () => {
    const navigate = vi.fn()
    render(<NotificationItem notification={reminder} fallback={fallback} navigate={navigate} settingsUrl='/x' />)
    expect(screen.queryByTestId('own-item')).toBeNull()
    fireEvent.click(screen.getByRole('link'))
    expect(navigate).toHaveBeenCalledWith('/x')
  })

  it("renders the team's own item for any other type, and nothing without a fallback", () => {
    const { container, rerender } = render(<NotificationItem notification={other} fallback={fallback} />)
    expect(screen.getByTestId('own-item').textContent).toBe('Call the supplier')
    expect(screen.queryByRole('link')).toBeNull()
    rerender(<NotificationItem notification={other} />)
    expect(container.innerHTML).toBe('')
  })
})
