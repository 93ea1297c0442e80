// GENERATED from contrib/i18n/bell-messages.json by scripts/sync-messages.mjs; do not edit.
// Change the catalogue, then run `npm run sync:messages`.

/** The bell's texts per language: the shared catalogue of both kits. */
export const MESSAGES = deepFreeze({
  "he": {
    "title": "חיבור הווטסאפ נותק",
    "note": "חיבור הווטסאפ לעסק נותק. יש להיכנס להגדרות ווטסאפ ולחבר מחדש את המספר.",
    "bell": "חיבור הווטסאפ לעסק נותק – יש להתחבר מחדש במסך ההגדרות"
  },
  "en": {
    "title": "WhatsApp connection lost",
    "note": "The business's WhatsApp connection was lost. Open the WhatsApp settings and reconnect the number.",
    "bell": "WhatsApp connection lost - reconnect in the WhatsApp settings"
  }
})

function deepFreeze (o) {
  for (const v of Object.values(o)) if (v && typeof v === 'object') deepFreeze(v)
  return Object.freeze(o)
}
