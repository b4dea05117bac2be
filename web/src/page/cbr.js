// The constant-size gate of the page's send path (docs/WEB.md "Constant bitrate", DECISIONS
// D17). The browser's Opus encoder is asked for CBR (`cbr=1`, `maxaveragebitrate`, sdp.js) but
// does not always obey: Firefox ramps up with variable sizes for its first ~30 payloads. Sizes
// of variable-bitrate speech leak what is said, so the worker hands every Opus payload to this
// gate before sealing it, and the gate lets out payloads of one size only:
//
// - the size starts at the negotiated bitrate's frame size plus one byte (32 kbit/s: 80 B, so
//   81 B: Chromium's CBR frames are 80 B, Firefox's 81 B), so both leave at one size from the
//   first frame;
// - a payload of that size goes out as it is; a smaller single-frame payload (a quieter VBR
//   frame, Firefox's ramp-up, a DTX or comfort-noise frame) is padded up to it with Opus's own
//   padding (RFC 6716 §3.2.5: a code 3 packet of one frame), which every Opus decoder strips,
//   so neither its size nor silence shows; a larger one, or one that cannot be padded, is
//   dropped (never sent; the receiver conceals it);
// - the size moves only to a size the encoder has produced many times in a row: up after 5
//   (100 ms), at most 5 % over the negotiated bitrate (a browser whose CBR frames are a little
//   larger), or down by 10 % or more after 50 (1 s: the browser's congestion control lowering
//   the bitrate), never below 6 kbit/s; until then those payloads are padded or dropped like
//   any other.
//
// Sans-IO: no clock, no worker API; web/test/cbr.test.js drives it directly.

/** The Opus bitrate the page asks every browser for (`maxaveragebitrate`), bit/s. */
export const PAGE_OPUS_BITRATE = 32000;
/** The page sends 20 ms Opus packets (the browsers' default `ptime`). */
export const FRAME_MS = 20;
/** How many payloads of one larger size in a row move the size up to it (100 ms). */
export const CBR_REPEATS = 5;
/**
 * How many payloads of one smaller size in a row move the size down to it (1 s): a bitrate
 * step of congestion control lasts, while a variable-bitrate encoder can repeat a size a few
 * times (Firefox's ramp-up: 67 67 67 68 67).
 */
export const CBR_REPEATS_DOWN = 50;
/** Smallest size the gate moves to: 6 kbit/s, Opus's lowest useful rate. */
export const MIN_LOCK_BYTES = (6000 * FRAME_MS) / 8000;

/**
 * `packet` (a code 0 Opus packet: one frame) re-framed as a code 3 packet of one frame, padded
 * to exactly `size` bytes; null when it cannot be (another code, or not smaller than `size`).
 */
export function padOpus(packet, size) {
  const n = packet.length;
  if (n < 1 || n >= size || (packet[0] & 3) !== 0) return null;
  const out = new Uint8Array(size);
  out[0] = packet[0] | 3;
  if (n === size - 1) {
    // One frame, CBR, no padding: the frame count byte alone makes up the byte.
    out[1] = 0x01;
    out.set(packet.subarray(1), 2);
    return out;
  }
  // TOC, frame count byte (p = 1, M = 1), k padding-length bytes, the frame, P padding bytes:
  // k + P = size - n - 1. Each length byte of 255 means 254 bytes and another length byte.
  const rest = size - n - 1;
  let k = 1;
  while (rest - k - 254 * (k - 1) > 254) k += 1;
  out[1] = 0x41;
  for (let i = 0; i < k - 1; i++) out[2 + i] = 255;
  out[2 + k - 1] = rest - k - 254 * (k - 1);
  out.set(packet.subarray(1), 2 + k);
  // The P padding bytes at the end stay zero.
  return out;
}

/** The gate; one per outgoing stream. */
export class CbrGate {
  /**
   * @param bitrate the bitrate the page negotiated, bit/s
   * @param repeats, repeatsDown payloads of one larger, smaller size in a row that move the
   *   size to it
   */
  constructor({ bitrate = PAGE_OPUS_BITRATE, repeats = CBR_REPEATS, repeatsDown = CBR_REPEATS_DOWN } = {}) {
    this.repeats = repeats;
    this.repeatsDown = repeatsDown;
    this.expectedBytes = (bitrate * FRAME_MS) / 8000;
    this.maxBytes = Math.ceil(this.expectedBytes * 1.05);
    this.downStep = Math.ceil(this.expectedBytes * 0.1);
    /** The size every payload leaves at. */
    this.size = this.expectedBytes + 1;
    this.candidate = null;
    this.run = 0;
    /** Payloads dropped because they were larger (or not paddable): counted, never sent. */
    this.dropped = 0;
    /** Smaller payloads sent padded to the size. */
    this.padded = 0;
    /** Payloads admitted before the first one was sent (all dropped). */
    this.beforeFirstSent = 0;
    this.sentAny = false;
    /** How many times the size moved (0 in a call without bitrate changes). */
    this.moves = 0;
  }

  /**
   * Learns from a payload that is not to be sent anyway (before the keys are confirmed);
   * nothing is counted.
   */
  observe(payload) {
    this.#learn(payload.length);
  }

  /** The payload to seal: `payload` itself, or padded to the size; null: drop it. */
  admit(payload) {
    const n = payload.length;
    this.#learn(n);
    let out = null;
    if (n === this.size) out = payload;
    else {
      out = padOpus(payload, this.size);
      if (out) this.padded += 1;
    }
    if (out === null) {
      this.dropped += 1;
      if (!this.sentAny) this.beforeFirstSent += 1;
      return null;
    }
    this.sentAny = true;
    return out;
  }

  #learn(n) {
    if (n === this.candidate) this.run += 1;
    else {
      this.candidate = n;
      this.run = 1;
    }
    const up = n > this.size && n <= this.maxBytes && this.run >= this.repeats;
    const down = n <= this.size - this.downStep && n >= MIN_LOCK_BYTES && this.run >= this.repeatsDown;
    if (up || down) {
      this.size = n;
      this.moves += 1;
    }
  }
}
