// Demo: an app header with a notification bell whose panel uses wa-status-notifications.
// The page polls /api/notifications (served by the Flask kit, proxied by the page's server).
// A click on the WhatsApp item follows its link to /app/settings?tab=whatsapp (a full page
// load: no navigate function is injected here), where the same header keeps polling.
//
// Query parameters: ?interval=MS (poll period, default 1000) and ?open=1 (panel open at load).
import { StrictMode, useState } from 'react'
import { createRoot } from 'react-dom/client'
import { NotificationItem, useNotifications } from '../src/index.js'

const params = new URLSearchParams(window.location.search)
const intervalMs = Number(params.get('interval')) || 1000

function BellIcon () {
  return (
    <svg width='22' height='22' viewBox='0 0 24 24' fill='none' stroke='currentColor' strokeWidth='2' strokeLinecap='round' strokeLinejoin='round' aria-hidden='true'>
      <path d='M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9' />
      <path d='M13.73 21a2 2 0 0 1-3.46 0' />
    </svg>
  )
}

// How the team's panel shows its other notification types; the kit only handles its own.
function PlainItem ({ n }) {
  return (
    <div className='plain-item'>
      <strong>{n.title}</strong>
      {n.message ? <div>{n.message}</div> : null}
    </div>
  )
}

function Bell () {
  const { items, unreadCount, error } = useNotifications({ url: '/api/notifications', intervalMs })
  const [open, setOpen] = useState(params.get('open') === '1')
  return (
    <div className='bell-wrap' data-testid='bell-area'>
      <button
        type='button'
        className='bell'
        aria-label={`Notifications (${unreadCount} unread)`}
        aria-expanded={open}
        onClick={() => setOpen((o) => !o)}
        data-testid='bell'
      >
        <BellIcon />
        {unreadCount > 0 ? <span className='badge' data-testid='badge'>{unreadCount > 99 ? '99+' : unreadCount}</span> : null}
      </button>
      {open
        ? (
          <div className='panel' role='dialog' aria-label='Notifications' data-testid='panel'>
            <h2>Notifications</h2>
            {error ? <div className='error' role='status'>Could not load notifications</div> : null}
            {items.length === 0
              ? <div className='empty' data-testid='empty'>You're all caught up</div>
              : (
                <ul>
                  {items.map((n) => (
                    <li key={n.id}>
                      <NotificationItem notification={n} fallback={(n) => <PlainItem n={n} />} />
                    </li>
                  ))}
                </ul>
                )}
          </div>
          )
        : null}
    </div>
  )
}

function Page () {
  const onSettings = window.location.pathname.startsWith('/app/settings')
  const tab = params.get('tab')
  return (
    <main>
      <div className='card' data-testid={onSettings ? 'settings-page' : 'home-page'}>
        {onSettings
          ? (
            <>
              <h1>Settings{tab === 'whatsapp' ? ' › WhatsApp' : ''}</h1>
              <p>Scan the QR code with the business phone to reconnect WhatsApp.</p>
            </>
            )
          : (
            <>
              <h1>Dashboard</h1>
              <p>The bell polls <code>/api/notifications</code> every {intervalMs} ms.</p>
            </>
            )}
      </div>
    </main>
  )
}

function App () {
  return (
    <>
      <header className='topbar'>
        <a className='brand' href='/'>Acme Bookings</a>
        <Bell />
      </header>
      <Page />
    </>
  )
}

createRoot(document.getElementById('root')).render(<StrictMode><App /></StrictMode>)
