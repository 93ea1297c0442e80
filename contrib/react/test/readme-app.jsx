// What the README's examples call "your own components" (imported there from './my-app.jsx').
export function MyBell ({ badge, children }) {
  return <div data-testid='my-bell' data-badge={badge}>{children}</div>
}

export function MyItem ({ notification }) {
  return <div data-testid='my-item'>{notification.title}</div>
}
