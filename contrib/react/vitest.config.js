import { defineConfig } from 'vitest/config'

// Unit tests: jsdom + @testing-library/react. JSX in the tests is compiled by esbuild
// (no @vitejs/plugin-react needed).
export default defineConfig({
  esbuild: { jsx: 'automatic' },
  test: {
    environment: 'jsdom',
    include: ['test/**/*.test.{js,jsx}']
  }
})
