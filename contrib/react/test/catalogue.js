// The shared catalogue (contrib/i18n/bell-messages.json), read from disk: what the tests expect
// the kit to show, independent of the kit's generated copy (src/messages.js).
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const TEST_DIR = dirname(fileURLToPath(import.meta.url))
export const CATALOGUE_PATH = join(TEST_DIR, '../../i18n/bell-messages.json')
export const CATALOGUE = JSON.parse(readFileSync(CATALOGUE_PATH, 'utf8'))
