// Demo: an app header with a notification bell whose panel uses wa-status-notifications.
// The page polls /api/notifications (served by the Flask kit, proxied by the page's server).
// A click on the WhatsApp item follows its link to /app/settings?tab=whatsapp (a full page
// load: no navigate function is injected here), where the same header keeps polling.
//
// Query parameters (each remembered for the next pages of this tab's origin):
//   ?lang=he|en     the page's language: he gives <html lang="he" dir="rtl">, en (default) LTR.
//                   The kit's item needs no configuration: it follows the page.
//   ?tenant=ID      the business to log in as, through the Flask kit's demo login
//                   (POST /demo/login; default business_1).
//   ?interval=MS    poll period (default 1000);  ?open=1  the panel open at load.
import { StrictMode, useEffect, useState } from 'react'
import { createRoot } from 'react-dom/client'
import { NotificationItem, useNotifications } from '../src/index.js'

const params = new URLSearchParams(window.location.search)
const intervalMs = Number(params.get('interval')) || 1000

/** A query parameter, else what this tab last chose, else `fallback`; remembered. */
function setting (name, fallback, valid = () => true) {
  const key = `wa-demo-${name}`
  const given = params.get(name)
  const value = [given, sessionStorage.getItem(key)].find((v) => v != null && valid(v)) ?? fallback
  sessionStorage.setItem(key, value)
  return value
}

// The demo's own words (the kit's item brings its own, from the shared catalogue).
const UI = {
  en: {
    dir: 'ltr',
    title: 'wa-status-sidecar: notification bell demo',
    bell: (n) => `Notifications (${n} unread)`,
    panel: 'Notifications',
    empty: "You're all caught up",
    error: 'Could not load notifications',
    login: (t) => `Could not log in as ${t}`,
    dashboard: 'Dashboard',
    polls: (ms) => <>The bell polls <code dir='ltr'>/api/notifications</code> every {ms} ms.</>,
    settings: 'Settings',
    whatsapp: 'WhatsApp',
    scan: 'Scan the QR code with the business phone to reconnect WhatsApp.'
  },
  he: {
    dir: 'rtl',
    title: 'wa-status-sidecar: הדגמת פעמון ההתראות',
    bell: (n) => `התראות (${n} שלא נקראו)`,
    panel: 'התראות',
    empty: 'אין התראות חדשות',
    error: 'לא ניתן לטעון את ההתראות',
    login: (t) => `לא ניתן להתחבר בתור ${t}`,
    dashboard: 'לוח בקרה',
    polls: (ms) => <>הפעמון בודק את <code dir='ltr'>/api/notifications</code> כל {ms} אלפיות שנייה.</>,
    settings: 'הגדרות',
    whatsapp: 'ווטסאפ',
    scan: 'יש לסרוק את קוד ה-QR בטלפון של העסק כדי לחבר מחדש את הווטסאפ.'
  }
}

const lang = setting('lang', 'en', (v) => Object.hasOwn(UI, v))
const tenant = setting('tenant', 'business_1', (v) => /^[\w.-]{1,64}$/.test(v))
const t = UI[lang]
document.documentElement.lang = lang
document.documentElement.dir = t.dir
document.title = t.title

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
      {n.note ? <div>{n.note}</div> : null}
    </div>
  )
}

/** Logs in as `tenant` with the Flask kit's demo login; 'ok', 'failed' or null while pending. */
function useDemoLogin () {
  const [state, setState] = useState(null)
  useEffect(() => {
    fetch('/demo/login', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ tenant_id: tenant })
    }).then((res) => setState(res.ok ? 'ok' : 'failed'), () => setState('failed'))
  }, [])
  return state
}

function Bell () {
  const login = useDemoLogin()
  const { items, unreadCount, error } = useNotifications({ url: '/api/notifications', intervalMs, enabled: login === 'ok' })
  const [open, setOpen] = useState(params.get('open') === '1')
  return (
    <div className='bell-wrap' data-testid='bell-area'>
      <button
        type='button'
        className='bell'
        aria-label={t.bell(unreadCount)}
        aria-expanded={open}
        onClick={() => setOpen((o) => !o)}
        data-testid='bell'
        data-login={login ?? 'pending'}
      >
        <BellIcon />
        {unreadCount > 0 ? <span className='badge' data-testid='badge'>{unreadCount > 99 ? '99+' : unreadCount}</span> : null}
      </button>
      {open
        ? (
          <div className='panel' role='dialog' aria-label={t.panel} data-testid='panel'>
            <h2>{t.panel}</h2>
            {login === 'failed' ? <div className='error' role='status'>{t.login(tenant)}</div> : null}
            {error ? <div className='error' role='status'>{t.error}</div> : null}
            {items.length === 0
              ? <div className='empty' data-testid='empty'>{t.empty}</div>
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

function Languages () {
  const link = (code, label) => (
    <a href={`?lang=${code}`} lang={code} aria-current={code === lang ? 'true' : undefined}>{label}</a>
  )
  return <nav className='langs' aria-label='Language / שפה'>{link('he', 'עברית')} {link('en', 'English')}</nav>
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
              <h1>{t.settings}{tab === 'whatsapp' ? ` › ${t.whatsapp}` : ''}</h1>
              <p>{t.scan}</p>
            </>
            )
          : (
            <>
              <h1>{t.dashboard}</h1>
              <p>{t.polls(intervalMs)}</p>
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
        <div className='tools'>
          <Languages />
          <Bell />
        </div>
      </header>
      <Page />
    </>
  )
}

createRoot(document.getElementById('root')).render(<StrictMode><App /></StrictMode>)
