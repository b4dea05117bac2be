// Key schedule (docs/PROTOCOL.md §4): the handshake secrets from the transcript hash and the
// Diffie-Hellman outputs, and the per-epoch frame key, salt and next chain secret.
import { sha256 } from '@noble/hashes/sha2.js';
import { extract, expand } from '@noble/hashes/hkdf.js';
import { utf8 } from './bytes.js';

/** The labels of §4 (HKDF `info`). */
export const LABELS = Object.freeze({
  mediaI2r: 'aparte/v1 media i2r',
  mediaR2i: 'aparte/v1 media r2i',
  dataI2r: 'aparte/v1 data i2r',
  dataR2i: 'aparte/v1 data r2i',
  confirmI: 'aparte/v1 confirm i',
  confirmR: 'aparte/v1 confirm r',
  sas: 'aparte/v1 sas',
  frameKey: 'aparte/v1 frame key',
  frameSalt: 'aparte/v1 frame salt',
  nextChain: 'aparte/v1 next chain',
});

/**
 * All secrets of a completed handshake: `PRK = HKDF-Extract(salt = TH, IKM)` and each value
 * `HKDF-Expand(PRK, label, length)`.
 */
export function handshakeSecrets(transcriptHash, ikm) {
  const prk = extract(sha256, ikm, transcriptHash);
  const x = (label, len) => expand(sha256, prk, utf8(label), len);
  const secrets = {
    mediaI2r: x(LABELS.mediaI2r, 32),
    mediaR2i: x(LABELS.mediaR2i, 32),
    dataI2r: x(LABELS.dataI2r, 32),
    dataR2i: x(LABELS.dataR2i, 32),
    confirmI: x(LABELS.confirmI, 32),
    confirmR: x(LABELS.confirmR, 32),
    sas: x(LABELS.sas, 4),
  };
  prk.fill(0);
  return secrets;
}

/** The ChaCha20-Poly1305 key and nonce salt of the epoch whose chain secret is `chain`. */
export function epochKeys(chain) {
  return {
    key: expand(sha256, chain, utf8(LABELS.frameKey), 32),
    salt: expand(sha256, chain, utf8(LABELS.frameSalt), 12),
  };
}

/** `chain_{n+1}` from `chain_n`. */
export const nextChain = (chain) => expand(sha256, chain, utf8(LABELS.nextChain), 32);
