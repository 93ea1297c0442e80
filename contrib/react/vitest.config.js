import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

// Unit tests: jsdom + @testing-library/react. JSX in the tests is compiled by esbuild
// (no @vitejs/plugin-react needed). The package's own name resolves to src/, so the README's
// examples (test/readme.test.jsx) run with their imports exactly as written.
export default defineConfig({
  esbuild: { jsx: 'automatic' },
  resolve: {
    alias: { 'wa-status-notifications': fileURLToPath(new URL('./src/index.js', import.meta.url)) }
  },
  test: {
    environment: 'jsdom',
    include: ['test/**/*.test.{js,jsx}']
  }
})
