// What the two peers relay through the signaling server (as crates/client/src/signaling.rs
// `PeerMessage`), strictly parsed and bounded, and the captions the CLI sends inside the
// encrypted data channel (crates/translate/src/caption.rs), checked before anything is shown.

/** Largest SDP accepted from a peer. */
export const MAX_SDP_BYTES = 32 * 1024;
/** Largest candidate line. */
export const MAX_CANDIDATE_BYTES = 1024;
/** Largest handshake message, hex. */
export const MAX_HANDSHAKE_HEX = 202;
/** Largest caption. */
export const MAX_CAPTION_BYTES = 4096;
/** Longest caption text, characters. */
export const MAX_TEXT_CHARS = 1000;

const only = (obj, keys) => Object.keys(obj).every((k) => keys.includes(k)) && keys.every((k) => k in obj);

/** Parses a relayed payload: `{ kind, ... }`; null for anything that is not ours. */
export function parsePeerMessage(payload) {
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) return null;
  const str = (v, max) => typeof v === 'string' && v.length <= max;
  switch (payload.kind) {
    case 'offer':
    case 'answer':
      return only(payload, ['kind', 'sdp']) && str(payload.sdp, MAX_SDP_BYTES) ? payload : null;
    case 'candidate':
      return only(payload, ['kind', 'candidate']) && str(payload.candidate, MAX_CANDIDATE_BYTES) ? payload : null;
    case 'handshake':
      return only(payload, ['kind', 'data']) && str(payload.data, MAX_HANDSHAKE_HEX) && /^[0-9a-f]*$/i.test(payload.data)
        ? payload : null;
    case 'rebuild':
      return only(payload, ['kind']) ? payload : null;
    default:
      return null;
  }
}

const isLang = (s) => typeof s === 'string' && /^[a-z]{2,3}$/.test(s);
// Control characters, as Rust's char::is_control (Unicode Cc).
const isText = (s) => typeof s === 'string' && [...s].length <= MAX_TEXT_CHARS && !/[\u0000-\u001f\u007f-\u009f]/.test(s);
const isU64 = (n) => Number.isSafeInteger(n) && n >= 0;

/** Decodes and checks a caption from the peer's bytes; throws on anything else. */
export function decodeCaption(bytes) {
  if (bytes.length > MAX_CAPTION_BYTES) throw new Error('caption too large');
  if (bytes[0] !== 0x7b) throw new Error('caption is not a JSON object');
  const c = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  const keys = ['v', 'seq', 'final', 'start_ms', 'end_ms', 'lang', 'text'];
  const extra = Object.keys(c).filter((k) => !keys.includes(k) && k !== 'translation');
  if (extra.length || !keys.every((k) => k in c)) throw new Error('caption fields');
  if (c.v !== 1) throw new Error('caption version');
  if (!isU64(c.seq) || typeof c.final !== 'boolean' || !isU64(c.start_ms) || !isU64(c.end_ms)) {
    throw new Error('caption fields');
  }
  if (c.end_ms < c.start_ms) throw new Error('caption timing');
  if (!isLang(c.lang) || !isText(c.text)) throw new Error('caption text');
  if ('translation' in c) {
    const t = c.translation;
    if (typeof t !== 'object' || t === null || !only(t, ['lang', 'text']) || !isLang(t.lang) || !isText(t.text)) {
      throw new Error('caption translation');
    }
  }
  return c;
}

const vttTime = (ms) => {
  const p = (n, w) => String(n).padStart(w, '0');
  return `${p(Math.floor(ms / 3600000), 2)}:${p(Math.floor(ms / 60000) % 60, 2)}:${p(Math.floor(ms / 1000) % 60, 2)}.${p(ms % 1000, 3)}`;
};
const vttText = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Final captions as a WebVTT file, in the CLI's format (`--captions`). */
export function toWebVtt(captions) {
  let out = 'WEBVTT\n\n';
  let n = 0;
  for (const c of captions) {
    if (!c.final || c.text === '') continue;
    n += 1;
    out += `${n}\n${vttTime(c.start_ms)} --> ${vttTime(Math.max(c.end_ms, c.start_ms + 1))}\n`;
    out += c.translation ? `${vttText(c.translation.text)}\n(${vttText(c.text)})` : vttText(c.text);
    out += '\n\n';
  }
  return out;
}
