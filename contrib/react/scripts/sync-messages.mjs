#!/usr/bin/env node
// Writes src/messages.js from the shared catalogue contrib/i18n/bell-messages.json, the one file
// the Flask kit and this kit both read. The npm tarball holds only src/, so the texts travel as
// this generated copy; test/messages.test.js fails whenever the copy and the catalogue differ.
//
//   npm run sync:messages
import { readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const HERE = dirname(fileURLToPath(import.meta.url))
export const CATALOGUE = join(HERE, '../../i18n/bell-messages.json')
export const GENERATED = join(HERE, '../src/messages.js')

/** The source of src/messages.js for a catalogue's JSON text. */
export function renderMessages (json) {
  const catalogue = JSON.parse(json)
  return [
    '// GENERATED from contrib/i18n/bell-messages.json by scripts/sync-messages.mjs; do not edit.',
    '// Change the catalogue, then run `npm run sync:messages`.',
    '',
    '/** The bell\'s texts per language: the shared catalogue of both kits. */',
    `export const MESSAGES = deepFreeze(${JSON.stringify(catalogue, null, 2)})`,
    '',
    'function deepFreeze (o) {',
    '  for (const v of Object.values(o)) if (v && typeof v === \'object\') deepFreeze(v)',
    '  return Object.freeze(o)',
    '}',
    ''
  ].join('\n')
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(GENERATED, renderMessages(readFileSync(CATALOGUE, 'utf8')))
  process.stdout.write(`wrote ${GENERATED}\n`)
}
