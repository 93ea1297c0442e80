// @vitest-environment node
// The kit reads the one shared catalogue, contrib/i18n/bell-messages.json. npm packs only src/,
// so the texts travel in a generated copy (src/messages.js); this fails when the two differ.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { renderMessages } from '../scripts/sync-messages.mjs'
import { MESSAGES } from '../src/index.js'
import { CATALOGUE, CATALOGUE_PATH, TEST_DIR } from './catalogue.js'

describe('the shared catalogue', () => {
  it('src/messages.js is exactly what scripts/sync-messages.mjs makes of it (run `npm run sync:messages`)', () => {
    const generated = readFileSync(join(TEST_DIR, '../src/messages.js'), 'utf8')
    expect(generated).toBe(renderMessages(readFileSync(CATALOGUE_PATH, 'utf8')))
  })

  it('the kit serves the same texts, Hebrew and English', () => {
    expect(MESSAGES).toEqual(CATALOGUE)
    expect(Object.keys(MESSAGES).sort()).toEqual(['en', 'he'])
    for (const lang of ['he', 'en']) expect(Object.keys(MESSAGES[lang])).toEqual(expect.arrayContaining(['title', 'note', 'bell']))
  })

  it('holds the original Hebrew texts of the request', () => {
    expect(MESSAGES.he.title).toBe('חיבור הווטסאפ נותק')
    expect(MESSAGES.he.note).toBe('חיבור הווטסאפ לעסק נותק. יש להיכנס להגדרות ווטסאפ ולחבר מחדש את המספר.')
    expect(MESSAGES.he.bell).toBe('חיבור הווטסאפ לעסק נותק – יש להתחבר מחדש במסך ההגדרות')
  })

  it('is frozen, so an app cannot change another component\'s texts by accident', () => {
    expect(Object.isFrozen(MESSAGES) && Object.isFrozen(MESSAGES.he)).toBe(true)
  })

  it('a changed catalogue gives a different file (the check above can fail)', () => {
    const changed = JSON.stringify({ ...CATALOGUE, he: { ...CATALOGUE.he, title: 'x' } })
    expect(renderMessages(changed)).not.toBe(renderMessages(JSON.stringify(CATALOGUE)))
  })
})
