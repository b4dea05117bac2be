// Byte helpers for the protocol code: hex, concatenation, the `u16`, `lp` and `opt` encodings
// of docs/PROTOCOL.md, constant-time comparison and wiping.

const enc = new TextEncoder();

/** ASCII/UTF-8 bytes of a string (labels, room ids). */
export const utf8 = (s) => enc.encode(s);

/** Lowercase hex of bytes. */
export function toHex(bytes) {
  let out = '';
  for (const b of bytes) out += b.toString(16).padStart(2, '0');
  return out;
}

/** Bytes of a hex string; throws on odd length or a non-hex digit. */
export function fromHex(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new TypeError('not a hex string');
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** `a || b || …` */
export function concat(...parts) {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** `u16(x)`: two bytes big-endian. */
export function u16(x) {
  if (!Number.isInteger(x) || x < 0 || x > 0xffff) throw new RangeError('u16 out of range');
  return Uint8Array.of(x >> 8, x & 0xff);
}

/** `lp(x)` = `u16(len(x)) || x`. */
export const lp = (x) => concat(u16(x.length), x);

/** `opt(k)`: `0x00` when absent, `0x01 || k` when present. */
export const opt = (k) => (k ? concat(Uint8Array.of(1), k) : Uint8Array.of(0));

/** Constant-time equality of two byte arrays (length is not secret). */
export function ctEqual(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** Overwrites bytes with zeros (best effort: JavaScript may have made copies). */
export function wipe(bytes) {
  if (bytes) bytes.fill(0);
}
