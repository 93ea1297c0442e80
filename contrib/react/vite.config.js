import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vite'

// The demo page (demo/): `npm run build:demo` writes it to demo/dist/, served by
// tests/browser/serve.mjs with /api and /demo (the Flask kit's demo login) proxied to the Flask
// kit. `npm run dev:demo` serves it with Vite's dev server, proxying both to FLASK_URL
// (default http://127.0.0.1:8000).
export default defineConfig({
  root: fileURLToPath(new URL('./demo', import.meta.url)),
  esbuild: { jsx: 'automatic' },
  build: { outDir: 'dist', emptyOutDir: true },
  server: {
    host: '127.0.0.1',
    proxy: Object.fromEntries(['/api', '/demo'].map((path) => [path, process.env.FLASK_URL ?? 'http://127.0.0.1:8000']))
  }
})
