// The page's constant-size gate (web/src/page/cbr.js): one size out, whatever the encoder does;
// Opus padding as RFC 6716 §3.2.5 defines it; a dropped frame uses up its e2ee counter.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CbrGate, padOpus } from '../src/page/cbr.js';
import { FrameSender, FrameReceiver, Direction } from '../src/protocol/frame.js';

/** A code 0 Opus packet of `n` bytes (TOC of a 20 ms CELT frame, then `n - 1` frame bytes). */
const packet = (n, fill = 7) => Uint8Array.from({ length: n }, (_, i) => (i === 0 ? 0xfc & ~3 : (fill + i) & 0xff));

/**
 * The frames of an Opus packet, parsed as RFC 6716 §3.2 says (codes 0 and 3 with one frame,
 * which is all padOpus makes): `{ toc, frames, padding }`; throws on a malformed packet.
 */
function parseOpus(p) {
  const code = p[0] & 3;
  if (code === 0) return { toc: p[0], frames: [p.subarray(1)], padding: 0 };
  assert.equal(code, 3, 'code 0 or 3');
  const count = p[1];
  const vbr = (count & 0x80) !== 0;
  const hasPadding = (count & 0x40) !== 0;
  const m = count & 0x3f;
  assert.equal(m, 1, 'one frame');
  assert.ok(!vbr);
  let at = 2;
  let padding = 0;
  if (hasPadding) {
    for (;;) {
      assert.ok(at < p.length, 'padding length truncated');
      const b = p[at++];
      padding += b === 255 ? 254 : b;
      if (b !== 255) break;
    }
  }
  const frameLen = p.length - at - padding;
  assert.ok(frameLen >= 0, 'padding longer than the packet');
  return { toc: p[0] & ~3, frames: [p.subarray(at, at + frameLen)], padding };
}

test('padOpus: every smaller code 0 packet becomes a one-frame code 3 packet of exactly the size, same TOC and frame', () => {
  for (const size of [2, 3, 40, 80, 81, 257, 258, 300, 600, 1275]) {
    for (let n = 1; n < size; n++) {
      const p = packet(n);
      const out = padOpus(p, size);
      assert.equal(out.length, size, `${n} → ${size}`);
      const parsed = parseOpus(out);
      assert.equal(parsed.toc, p[0]);
      assert.deepEqual(parsed.frames[0], p.subarray(1), `${n} → ${size}: the frame`);
    }
  }
  assert.equal(padOpus(packet(80), 80), null, 'not smaller');
  assert.equal(padOpus(packet(90), 80), null, 'larger');
  const code1 = packet(20);
  code1[0] |= 1;
  assert.equal(padOpus(code1, 80), null, 'two frames: not re-framed');
});

test('one size from the first payload: Chromium\'s 80 B padded to 81 B, Firefox\'s ramp-up padded or dropped', () => {
  const chromium = new CbrGate({ bitrate: 32000 });
  const c = Array.from({ length: 50 }, () => chromium.admit(packet(80)));
  assert.ok(c.every((p) => p.length === 81), 'every 80 B payload leaves as 81 B');
  assert.deepEqual([chromium.padded, chromium.dropped, chromium.moves], [50, 0, 0]);
  // Firefox's ramp-up as measured (docs/WEB.md), then 81 B.
  const firefox = new CbrGate({ bitrate: 32000 });
  const ramp = [60, 70, 69, 60, 62, 66, 63, 60, 63, 51, 50, 51, 55, 47, 53, 54, 51, 54, 49, 48, 90, 111, 111, 101,
    67, 67, 67, 68, 67, 67, 67];
  const out = [...ramp, ...Array(30).fill(81), 3, 120, 81].map((n) => firefox.admit(packet(n)));
  assert.deepEqual([...new Set(out.filter(Boolean).map((p) => p.length))], [81], 'one size');
  assert.equal(out.findIndex((p) => p === null), 20, 'the first larger one is the first dropped');
  assert.equal(firefox.beforeFirstSent, 0, 'the first payload is sent');
  assert.equal(firefox.dropped, 4 + 1, '90, 111, 111, 101 and 120 dropped');
  assert.equal(firefox.padded, ramp.length - 4 + 1, 'the smaller ramp-up and the 3 B DTX-like frame padded');
  assert.equal(firefox.moves, 0, 'a few repeats of a smaller size do not move it');
});

test('the size moves to a new steady size (a larger CBR, congestion control); transitional payloads never leave at their size', () => {
  const gate = new CbrGate({ bitrate: 32000 });
  const sizes = [...Array(10).fill(83), ...Array(60).fill(60), ...Array(10).fill(85)];
  const sent = sizes.map((n) => gate.admit(packet(n))).map((p) => p?.length ?? null);
  // 83 B (under 5 % over 80 B) dropped until it has come 5 times in a row, then sent.
  assert.deepEqual(sent.slice(0, 10), [null, null, null, null, 83, 83, 83, 83, 83, 83]);
  assert.equal(gate.beforeFirstSent, 4);
  // 60 B padded to 83 B until it has come 50 times in a row, then 60 B.
  assert.ok(sent.slice(10, 59).every((x) => x === 83));
  assert.ok(sent.slice(59, 70).every((x) => x === 60));
  // 85 B is over the negotiated bitrate: never the size, never sent.
  assert.ok(sent.slice(70).every((x) => x === null));
  assert.equal(gate.moves, 2);
});

test('a size below 6 kbit/s (DTX, comfort noise) never becomes the size: such frames leave padded', () => {
  const gate = new CbrGate({ bitrate: 32000 });
  for (let i = 0; i < 100; i++) assert.equal(gate.admit(packet(3)).length, 81);
  assert.deepEqual([gate.size, gate.moves, gate.padded], [81, 0, 100]);
});

test('payloads seen before the keys teach the gate too', () => {
  const gate = new CbrGate();
  for (const n of [90, 70, 82, 82, 82, 82, 82]) gate.observe(packet(n));
  assert.equal(gate.size, 82);
  assert.equal(gate.admit(packet(82)).length, 82);
  assert.equal(gate.dropped, 0);
});

test('a dropped frame uses up its counter: the receiver opens the next one at the index after', () => {
  const chain = new Uint8Array(32).fill(9);
  const sender = new FrameSender(Direction.I2R, chain, { rekeyAfterFrames: 4 });
  const receiver = new FrameReceiver(Direction.I2R, chain);
  const indices = [];
  for (let i = 0; i < 10; i++) {
    if (i % 3 === 1) {
      sender.skip();
      continue;
    }
    indices.push(receiver.open(sender.protect(packet(80)), 0).index);
  }
  // Indices are 20 ms slots, skipping the dropped ones, across rekeys every 4 counters.
  assert.deepEqual(indices, [0, 2, 3, 5, 6, 8, 9].map((i) => Math.floor(i / 4) * 16384 + (i % 4)));
  assert.equal(sender.epoch, 2);
});
