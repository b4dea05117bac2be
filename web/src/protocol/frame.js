// Frame protection (docs/PROTOCOL.md §7-§8): the SFrame-style header, ChaCha20-Poly1305 under
// per-epoch keys, the rekey ratchet, and the receiver's replay window and rejection rules.
import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { concat, wipe } from './bytes.js';
import { epochKeys, nextChain } from './keys.js';

/** Authentication tag length. */
export const TAG_LEN = 16;
/** Largest payload. */
export const MAX_PAYLOAD_LEN = 16384;
/** Largest frame a receiver accepts (payload + maximal 17-byte header + tag). */
export const MAX_FRAME_LEN = MAX_PAYLOAD_LEN + 17 + TAG_LEN;
/** Frames per epoch: a sender rekeys after exactly this many. */
export const EPOCH_FRAMES = 16384;
/** Replay window, in frames. */
export const REPLAY_WINDOW = 512;
/** How long the previous epoch stays usable after a switch, ms. */
export const GRACE_PERIOD_MS = 2000;
/** Rejection reasons, in the order the Rust crate counts them. */
export const REJECT_REASONS = Object.freeze([
  'malformed', 'too_large', 'reflected', 'unknown_key', 'replayed', 'too_old', 'forged',
]);

/** A rejected frame; `reason` is one of REJECT_REASONS. */
export class FrameError extends Error {
  constructor(reason, message = reason) {
    super(message);
    this.name = 'FrameError';
    this.reason = reason;
  }
}

/** `initiator_to_responder` frames have key id low bit 0, the others 1. */
export const Direction = Object.freeze({ I2R: 0, R2I: 1 });

/** Key id of `epoch` in `direction`. */
export const keyId = (epoch, direction) => ((epoch % 4) << 1) | direction;

function encodeValue(v) {
  // Minimal big-endian bytes of a value >= 8 (BigInt-safe for counters up to 2^64 - 1).
  let big = BigInt(v);
  const out = [];
  while (big > 0n) {
    out.unshift(Number(big & 0xffn));
    big >>= 8n;
  }
  return out;
}

/** Encodes the header of (keyId, counter). */
export function encodeHeader(kid, counter) {
  let config = 0;
  const tail = [];
  if (kid < 8) config |= kid << 4;
  else {
    const b = encodeValue(kid);
    config |= 0x80 | ((b.length - 1) << 4);
    tail.push(...b);
  }
  if (counter < 8) config |= counter;
  else {
    const b = encodeValue(counter);
    config |= 0x08 | (b.length - 1);
    tail.push(...b);
  }
  return Uint8Array.of(config, ...tail);
}

/**
 * Parses a header: `{ keyId, counter, length }` (values as BigInt when they exceed 2^53, which
 * the receiver then refuses). Throws FrameError('malformed') for a non-minimal encoding.
 */
export function parseHeader(frame) {
  if (frame.length < 1) throw new FrameError('malformed', 'empty frame');
  const config = frame[0];
  let at = 1;
  const field = (extended, bits) => {
    if (!extended) return bits;
    const n = bits + 1;
    if (frame.length < at + n) throw new FrameError('malformed', 'header truncated');
    if (frame[at] === 0) throw new FrameError('malformed', 'non-minimal header');
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(frame[at + i]);
    at += n;
    if (v < 8n) throw new FrameError('malformed', 'non-minimal header');
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const kid = field((config & 0x80) !== 0, (config >> 4) & 7);
  const counter = field((config & 0x08) !== 0, config & 7);
  return { keyId: kid, counter, length: at };
}

/** One epoch's key material. */
class EpochCipher {
  constructor(epoch, chain) {
    this.epoch = epoch;
    this.chain = chain;
    const { key, salt } = epochKeys(chain);
    this.key = key;
    this.salt = salt;
  }

  next() {
    return new EpochCipher(this.epoch + 1, nextChain(this.chain));
  }

  nonce(counter) {
    const nonce = this.salt.slice();
    let c = BigInt(counter);
    for (let i = 11; i >= 4; i--) {
      nonce[i] ^= Number(c & 0xffn);
      c >>= 8n;
    }
    return nonce;
  }

  wipe() {
    wipe(this.chain);
    wipe(this.key);
    wipe(this.salt);
  }
}

/** Protects the outgoing frames of one direction. */
export class FrameSender {
  /**
   * @param direction Direction.I2R or Direction.R2I
   * @param chain the chain secret of epoch 0 (32 bytes; copied)
   * @param rekeyAfterFrames frames per epoch (null: only `rekey()`; only tests change it)
   */
  constructor(direction, chain, { rekeyAfterFrames = EPOCH_FRAMES } = {}) {
    this.direction = direction;
    this.rekeyAfterFrames = rekeyAfterFrames;
    this.cipher = new EpochCipher(0, chain.slice());
    this.counter = 0;
  }

  /** The current epoch. */
  get epoch() {
    return this.cipher.epoch;
  }

  /** Frames protected so far, as the peer numbers them (`epoch × 16384 + counter`). */
  get protectedCount() {
    return this.cipher.epoch * EPOCH_FRAMES + this.counter;
  }

  /** Protects `payload` into a new frame. */
  protect(payload) {
    if (payload.length > MAX_PAYLOAD_LEN) throw new FrameError('too_large', 'payload too large');
    if (this.rekeyAfterFrames !== null && this.counter >= this.rekeyAfterFrames) this.rekey();
    if (this.counter >= Number.MAX_SAFE_INTEGER) throw new FrameError('malformed', 'counter exhausted');
    const header = encodeHeader(keyId(this.cipher.epoch, this.direction), this.counter);
    const sealed = chacha20poly1305(this.cipher.key, this.cipher.nonce(this.counter), header).encrypt(
      payload,
    );
    this.counter += 1;
    return concat(header, sealed);
  }

  /**
   * Uses up the next counter without protecting anything: the sender dropped one 20 ms frame
   * (the page's constant-size gate). The peer's frame index stays a 20 ms clock (§7) and the
   * peer treats the frame as lost, concealing it in its place.
   */
  skip() {
    if (this.rekeyAfterFrames !== null && this.counter >= this.rekeyAfterFrames) this.rekey();
    if (this.counter >= Number.MAX_SAFE_INTEGER) throw new FrameError('malformed', 'counter exhausted');
    this.counter += 1;
  }

  /** Moves to the next epoch now; the old chain, key and salt are wiped. */
  rekey() {
    const next = this.cipher.next();
    this.cipher.wipe();
    this.cipher = next;
    this.counter = 0;
  }
}

/** Accepted counters of one epoch: counters are below EPOCH_FRAMES, so a bitmap is exact. */
class ReplayWindow {
  constructor() {
    this.seen = new Uint8Array(EPOCH_FRAMES / 8);
    this.highest = -1;
  }

  check(counter) {
    if (this.seen[counter >> 3] & (1 << (counter & 7))) throw new FrameError('replayed');
    if (counter + REPLAY_WINDOW <= this.highest) throw new FrameError('too_old');
  }

  mark(counter) {
    this.seen[counter >> 3] |= 1 << (counter & 7);
    if (counter > this.highest) this.highest = counter;
  }
}

/** Verifies and decrypts the incoming frames of one direction (the peer's). */
export class FrameReceiver {
  /**
   * @param direction the direction the peer sends in
   * @param chain its chain secret of epoch 0 (copied)
   */
  constructor(direction, chain, { gracePeriodMs = GRACE_PERIOD_MS } = {}) {
    this.direction = direction;
    this.gracePeriodMs = gracePeriodMs;
    this.current = { cipher: new EpochCipher(0, chain.slice()), window: new ReplayWindow() };
    this.previous = null; // { cipher, window, until }
    /** Frames accepted. */
    this.accepted = 0;
    /** Frames rejected, by reason. */
    this.rejected = Object.fromEntries(REJECT_REASONS.map((r) => [r, 0]));
    /** Epoch switches followed. */
    this.rekeys = 0;
  }

  /** Total rejections. */
  get rejectedTotal() {
    return Object.values(this.rejected).reduce((a, b) => a + b, 0);
  }

  /**
   * Verifies and decrypts `frame` (`nowMs`: a monotonic clock, for the grace period):
   * `{ payload, epoch, counter, index }`. Throws FrameError; a rejected frame changes nothing
   * but the counts.
   */
  open(frame, nowMs) {
    try {
      const out = this.#open(frame, nowMs);
      this.accepted += 1;
      return out;
    } catch (e) {
      if (e instanceof FrameError) this.rejected[e.reason] += 1;
      throw e;
    }
  }

  #open(frame, nowMs) {
    if (frame.length > MAX_FRAME_LEN) throw new FrameError('too_large');
    const h = parseHeader(frame);
    if (frame.length < h.length + TAG_LEN) throw new FrameError('malformed', 'shorter than header and tag');
    if (typeof h.keyId !== 'number' || h.keyId > 7) throw new FrameError('unknown_key');
    if ((h.keyId & 1) !== this.direction) throw new FrameError('reflected');
    if (typeof h.counter !== 'number' || h.counter >= EPOCH_FRAMES) {
      throw new FrameError('malformed', 'counter beyond the epoch length');
    }
    if (this.previous && nowMs >= this.previous.until) {
      this.previous.cipher.wipe();
      this.previous = null;
    }
    const aad = frame.subarray(0, h.length);
    const sealed = frame.subarray(h.length);
    const ahead = ((h.keyId >> 1) - (this.current.cipher.epoch % 4) + 4) % 4;
    let slot;
    if (ahead === 0) slot = this.current;
    else if (ahead === 3 && this.previous) slot = this.previous;
    else if (ahead === 1 || ahead === 2) {
      let cipher = this.current.cipher.next();
      if (ahead === 2) {
        const skipped = cipher;
        cipher = cipher.next();
        skipped.wipe();
      }
      slot = { cipher, window: new ReplayWindow() };
    } else throw new FrameError('unknown_key');
    let payload;
    try {
      slot.window.check(h.counter);
      payload = chacha20poly1305(slot.cipher.key, slot.cipher.nonce(h.counter), aad).decrypt(sealed);
    } catch (e) {
      if (slot !== this.current && slot !== this.previous) slot.cipher.wipe();
      if (e instanceof FrameError) throw e;
      throw new FrameError('forged', 'authentication failed');
    }
    slot.window.mark(h.counter);
    if (slot !== this.current && slot !== this.previous) {
      if (this.previous) this.previous.cipher.wipe();
      if (ahead === 1) this.previous = { ...this.current, until: nowMs + this.gracePeriodMs };
      else {
        this.current.cipher.wipe();
        this.previous = null;
      }
      this.current = slot;
      this.rekeys += 1;
    }
    const epoch = slot.cipher.epoch;
    return { payload, epoch, counter: h.counter, index: epoch * EPOCH_FRAMES + h.counter };
  }
}

/** The four directions' senders and receivers of a finished handshake (`Handshake.finish`). */
export function channels(finished, options = {}) {
  const s = finished.secrets;
  const initiator = finished.role === 'initiator';
  const mine = initiator ? Direction.I2R : Direction.R2I;
  const theirs = initiator ? Direction.R2I : Direction.I2R;
  const out = {
    mediaSender: new FrameSender(mine, initiator ? s.mediaI2r : s.mediaR2i, options.sender),
    mediaReceiver: new FrameReceiver(theirs, initiator ? s.mediaR2i : s.mediaI2r, options.receiver),
    dataSender: new FrameSender(mine, initiator ? s.dataI2r : s.dataR2i, options.sender),
    dataReceiver: new FrameReceiver(theirs, initiator ? s.dataR2i : s.dataI2r, options.receiver),
  };
  for (const k of ['mediaI2r', 'mediaR2i', 'dataI2r', 'dataR2i']) wipe(s[k]);
  return out;
}
