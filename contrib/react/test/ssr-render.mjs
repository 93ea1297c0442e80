// Server side of test/ssr.test.jsx: renders test/ssr-tree.js with react-dom/server in a plain
// Node process (no document, no window) and prints the HTML. The test runs it with another time
// zone and default locale than the client's, as a real server would have.
import { renderToString } from 'react-dom/server'
import { ssrTree } from './ssr-tree.js'

process.stdout.write(JSON.stringify({
  html: renderToString(ssrTree()),
  hasDocument: typeof document !== 'undefined',
  locale: Intl.DateTimeFormat().resolvedOptions().locale,
  timeZone: Intl.DateTimeFormat().resolvedOptions().timeZone
}))
