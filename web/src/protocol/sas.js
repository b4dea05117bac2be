// The short authentication string (docs/PROTOCOL.md §5): 24 bits shown as four words or as
// eight digits. The SAS is secret while the call is live: never log it.

/** The word list of §5, index 0 to 63. */
export const WORDS = Object.freeze([
  'anchor', 'apple', 'badger', 'bamboo', 'basket', 'bishop', 'button', 'cactus',
  'camel', 'candle', 'canyon', 'cobra', 'copper', 'dolphin', 'donkey', 'eagle',
  'engine', 'falcon', 'forest', 'garden', 'ginger', 'hammer', 'harbor', 'helmet',
  'igloo', 'island', 'jacket', 'jungle', 'kettle', 'koala', 'lemon', 'lizard',
  'magnet', 'marble', 'meadow', 'nectar', 'noodle', 'ocean', 'orange', 'oyster',
  'panda', 'pepper', 'pillow', 'pirate', 'puzzle', 'quartz', 'rabbit', 'rocket',
  'saddle', 'salmon', 'silver', 'spider', 'tiger', 'tomato', 'tunnel', 'velvet',
  'violin', 'walnut', 'window', 'winter', 'yellow', 'yogurt', 'zebra', 'zipper',
]);

/** The SAS from the `aparte/v1 sas` output (its first 3 bytes). */
export function sasFromBytes(bytes) {
  const value = (bytes[0] << 16) | (bytes[1] << 8) | bytes[2];
  const words = [18, 12, 6, 0].map((shift) => WORDS[(value >> shift) & 63]).join(' ');
  const d = String(value).padStart(8, '0');
  return Object.freeze({ value, words, digits: `${d.slice(0, 4)} ${d.slice(4)}` });
}

/** Whether `expected` (words or digits; spaces, dashes and case ignored) names `sas`. */
export function sasMatches(expected, sas) {
  const norm = (s) => s.toLowerCase().replace(/[^a-z0-9]/g, '');
  const want = norm(expected);
  return want.length > 0 && (want === norm(sas.words) || want === norm(sas.digits));
}
