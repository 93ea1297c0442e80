// @vitest-environment node
// What `npm install` of this kit gets: the sources, their type declarations and the catalogue's
// generated copy, resolved through "exports" with the types first.
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { TEST_DIR } from './catalogue.js'

const ROOT = join(TEST_DIR, '..')

describe('the npm package', () => {
  it('ships the sources, index.d.ts and messages.js, and no tests', () => {
    const [pack] = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' }))
    const files = pack.files.map((f) => f.path).sort()
    expect(files).toEqual(expect.arrayContaining(['src/index.js', 'src/index.d.ts', 'src/messages.js', 'src/i18n.js', 'README.md', 'package.json']))
    expect(files.filter((f) => !f.startsWith('src/') && !['README.md', 'package.json'].includes(f))).toEqual([])
  })

  it('points "types" and the exports\' "types" condition at the declarations', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
    expect(pkg.types).toBe('src/index.d.ts')
    expect(Object.keys(pkg.exports['.'])[0]).toBe('types')
    expect(pkg.exports['.']).toEqual({ types: './src/index.d.ts', default: './src/index.js' })
    expect(Object.keys(pkg.dependencies ?? {})).toEqual([])
    expect(pkg.peerDependencies).toEqual({ react: '>=18' })
  })
})
