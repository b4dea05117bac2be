// Cross-check with the Rust crate: a handshake and 100 frames each way (media and data chains)
// between this JavaScript and `aparte-e2ee` (its `interop` example, driven over stdin/stdout),
// with the JavaScript side as initiator and as responder, with and without identities; and
// each side rejects the other's tampered, replayed and reflected frames; and 16,400 frames each
// way follow the first rekey at the protocol's epoch length.
//
// The example binary: $APARTE_INTEROP_BIN, else target/debug/examples/interop under
// $CARGO_TARGET_DIR or the workspace's target/ (build it with
// `cargo build -p aparte-e2ee --example interop`). A missing binary fails the test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { fromHex, toHex, utf8 } from '../src/protocol/bytes.js';
import { Handshake, callParams, publicKey } from '../src/protocol/handshake.js';
import { channels } from '../src/protocol/frame.js';

const root = path.resolve(fileURLToPath(new URL('../..', import.meta.url)));

function interopBinary() {
  const candidates = [
    process.env.APARTE_INTEROP_BIN,
    process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, 'debug/examples/interop'),
    path.join(root, 'target/debug/examples/interop'),
  ].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  assert.ok(found, `the Rust interop example is not built (looked at ${candidates.join(', ')}); run: cargo build -p aparte-e2ee --example interop`);
  return found;
}

/** The Rust endpoint: `ask(line)` resolves with the lines of its answer. */
function startRust(args) {
  const child = spawn(interopBinary(), args, { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  const waiting = [];
  let current = [];
  lines.on('line', (line) => {
    if (line !== '.') return current.push(line);
    const answer = current;
    current = [];
    waiting.shift()(answer);
  });
  const next = () => new Promise((resolve) => waiting.push(resolve));
  const first = next();
  return {
    first,
    ask(line) {
      const p = next();
      child.stdin.write(`${line}\n`);
      return p;
    },
    close() {
      if (child.exitCode !== null) return Promise.resolve();
      const exited = new Promise((resolve) => child.on('exit', resolve));
      child.stdin.end('quit\n');
      return exited;
    },
  };
}

const field = (answer, word) => answer.find((l) => l.startsWith(`${word} `))?.slice(word.length + 1);
const randomBytes = (n) => globalThis.crypto.getRandomValues(new Uint8Array(n));

async function call({ jsRole, jsIdentity, rustIdentity }) {
  const room = utf8('interop-room-0123456789abcdef');
  const fpJs = utf8('sha-256 AA:BB:CC:DD');
  const fpRust = utf8('sha-256 11:22:33:44');
  const jsInitiator = jsRole === 'initiator';
  const params = callParams(room, jsInitiator ? fpJs : fpRust, jsInitiator ? fpRust : fpJs);
  const rustArgs = [jsInitiator ? 'responder' : 'initiator', toHex(room), toHex(fpRust), toHex(fpJs)];
  if (rustIdentity) rustArgs.push(toHex(rustIdentity));
  const rust = startRust(rustArgs);
  try {
    await exchange(rust, params, { jsInitiator, jsIdentity, rustIdentity });
  } finally {
    await rust.close();
  }
}

async function exchange(rust, params, { jsInitiator, jsIdentity, rustIdentity }) {
  let fromRust = await rust.first;
  let hs;
  if (jsInitiator) {
    const started = Handshake.initiator(params, jsIdentity);
    hs = started.handshake;
    fromRust = await rust.ask(`hs ${toHex(started.commit)}`); // Response
    const reveal = hs.receive(fromHex(field(fromRust, 'hs')));
    fromRust = await rust.ask(`hs ${toHex(reveal)}`); // Confirm + done
    assert.equal(hs.receive(fromHex(field(fromRust, 'hs'))), null);
  } else {
    hs = Handshake.responder(params, jsIdentity);
    const response = hs.receive(fromHex(field(fromRust, 'hs'))); // the Commit
    fromRust = await rust.ask(`hs ${toHex(response)}`); // Reveal
    const confirm = hs.receive(fromHex(field(fromRust, 'hs')));
    fromRust = await rust.ask(`hs ${toHex(confirm)}`); // done
  }
  assert.ok(hs.complete);
  const done = field(fromRust, 'done');
  assert.ok(done, `Rust finished the handshake: ${fromRust}`);
  const [rustSas, rustSawIdentity] = done.split(' ');
  const finished = hs.finish();
  assert.equal(finished.sas.value, Number(rustSas), 'same SAS on both sides');
  assert.equal(rustSawIdentity, jsIdentity ? toHex(publicKey(jsIdentity)) : '-');
  assert.equal(finished.peerIdentity ? toHex(finished.peerIdentity) : null,
    rustIdentity ? toHex(publicKey(rustIdentity)) : null);

  const js = channels(finished);
  let lastJsFrame;
  let lastRustFrame;
  for (const chain of ['media', 'data']) {
    for (let i = 0; i < 100; i++) {
      // JS → Rust
      const payload = randomBytes(1 + (i * 7) % 160);
      const frame = js[`${chain}Sender`].protect(payload);
      const opened = await rust.ask(`open ${chain} ${toHex(frame)}`);
      assert.equal(field(opened, 'plain'), toHex(payload), `Rust opens JS ${chain} frame ${i}`);
      lastJsFrame = frame;
      // Rust → JS
      const back = randomBytes(1 + (i * 13) % 160);
      const sealed = fromHex(field(await rust.ask(`seal ${chain} ${toHex(back)}`), 'frame'));
      const out = js[`${chain}Receiver`].open(sealed, 0);
      assert.equal(toHex(out.payload), toHex(back), `JS opens Rust ${chain} frame ${i}`);
      assert.equal(out.index, i);
      lastRustFrame = sealed;
    }
    // Each side rejects what it must: a tampered frame (forged), the same frame twice
    // (replayed), our own frame bounced back (reflected).
    const fresh = js[`${chain}Sender`].protect(Uint8Array.of(7, 7));
    const tampered = fresh.slice();
    tampered[tampered.length - 1] ^= 1;
    assert.deepEqual(await rust.ask(`open ${chain} ${toHex(tampered)}`), ['reject forged']);
    assert.deepEqual(await rust.ask(`open ${chain} ${toHex(fresh)}`), ['plain 0707']);
    assert.deepEqual(await rust.ask(`open ${chain} ${toHex(lastJsFrame)}`), ['reject replayed']);
    const reflected = js[`${chain}Sender`].protect(Uint8Array.of(1));
    assert.throws(() => js[`${chain}Receiver`].open(reflected, 0), { reason: 'reflected' });
    assert.throws(() => js[`${chain}Receiver`].open(lastRustFrame, 0), { reason: 'replayed' });
    const forged = fromHex(field(await rust.ask(`seal ${chain} 0909`), 'frame'));
    forged[2] ^= 0x40;
    assert.throws(() => js[`${chain}Receiver`].open(forged, 0), { reason: 'forged' });
  }
  assert.equal(js.mediaReceiver.accepted, 100);
  assert.equal(js.mediaReceiver.rejected.forged, 1);
}

for (const jsRole of ['initiator', 'responder']) {
  for (const ids of ['no identities', 'both identities', 'only the JS side', 'only the Rust side']) {
    test(`JS as ${jsRole}, ${ids}: same SAS, 100 frames each way on both chains`, async () => {
      await call({
        jsRole,
        jsIdentity: ids === 'both identities' || ids === 'only the JS side' ? randomBytes(32) : null,
        rustIdentity: ids === 'both identities' || ids === 'only the Rust side' ? randomBytes(32) : null,
      });
    });
  }
}

test('across a rekey: 16,400 media frames each way, epoch 0 then 1, by the protocol\'s default epoch length', async () => {
  const room = utf8('interop-rekey-0123456789abcdef');
  const fpJs = utf8('sha-256 AA:BB'), fpRust = utf8('sha-256 CC:DD');
  const params = callParams(room, fpJs, fpRust);
  const rust = startRust(['responder', toHex(room), toHex(fpRust), toHex(fpJs)]);
  try {
    await rust.first;
    const { handshake, commit } = Handshake.initiator(params);
    const reveal = handshake.receive(fromHex(field(await rust.ask(`hs ${toHex(commit)}`), 'hs')));
    handshake.receive(fromHex(field(await rust.ask(`hs ${toHex(reveal)}`), 'hs')));
    const js = channels(handshake.finish());
    const n = 16400;
    const payload = (i) => Uint8Array.of(i & 255, i >> 8, 0x42);
    // JS → Rust, pipelined.
    const answers = [];
    for (let i = 0; i < n; i++) answers.push(rust.ask(`open media ${toHex(js.mediaSender.protect(payload(i)))}`));
    const opened = await Promise.all(answers);
    opened.forEach((a, i) => assert.equal(field(a, 'plain'), toHex(payload(i)), `frame ${i}`));
    assert.equal(js.mediaSender.epoch, 1, 'the JS sender rekeyed');
    // Rust → JS.
    const sealed = await Promise.all(Array.from({ length: n }, (_, i) => rust.ask(`seal media ${toHex(payload(i))}`)));
    sealed.forEach((a, i) => {
      const out = js.mediaReceiver.open(fromHex(field(a, 'frame')), i);
      assert.equal(out.index, i, `frame ${i}`);
      assert.equal(out.epoch, i < 16384 ? 0 : 1);
    });
    assert.equal(js.mediaReceiver.rekeys, 1);
  } finally {
    await rust.close();
  }
});

// The CLI's 40 and 60 ms packets (its low bitrate steps, DECISIONS D12): the Rust sender
// advances the counter by the packet's 20 ms frames (`FrameSender::protect_span`), so the
// counters the page receives have gaps of 2 and 3, and near the end of an epoch the sender
// leaves the last counters unused and rekeys early. The JS receiver must take all of that
// (its replay window counts counters, not packets), keep rejecting replays, and give the
// index the sender meant: the 20 ms clock.
test('the CLI\'s long packets: spans of 1, 2 and 3 frames across a rekey, reordered within the window, replays rejected', async () => {
  const room = utf8('interop-spans-0123456789abcdef');
  const fpJs = utf8('sha-256 AA:BB'), fpRust = utf8('sha-256 CC:DD');
  const params = callParams(room, fpJs, fpRust);
  const rust = startRust(['responder', toHex(room), toHex(fpRust), toHex(fpJs)]);
  try {
    await rust.first;
    const { handshake, commit } = Handshake.initiator(params);
    const reveal = handshake.receive(fromHex(field(await rust.ask(`hs ${toHex(commit)}`), 'hs')));
    handshake.receive(fromHex(field(await rust.ask(`hs ${toHex(reveal)}`), 'hs')));
    const js = channels(handshake.finish());
    // The ladder's packet times in turn: 20 ms, then 40, then 60, then back (each a run of
    // packets), enough packets to cross the first epoch (16,384 counters).
    const spans = [];
    for (let total = 0; total < 16384 + 600;) {
      for (const span of [1, 2, 3, 3, 2, 1]) {
        for (let k = 0; k < 50; k++) {
          spans.push(span);
          total += span;
        }
      }
    }
    const payload = (i) => Uint8Array.of(i & 255, (i >> 8) & 255, i >> 16, 0x60);
    const frames = (await Promise.all(spans.map((span, i) => rust.ask(`span ${span} ${toHex(payload(i))}`))))
      .map((a) => fromHex(field(a, 'frame')));
    // Where each packet starts, on the 20 ms clock, as the Rust sender places it: a span that
    // would cross the epoch's end starts the next epoch instead.
    const expected = [];
    let epoch = 0, counter = 0;
    for (const span of spans) {
      if (counter > 0 && counter + span > 16384) {
        epoch += 1;
        counter = 0;
      }
      expected.push({ epoch, counter, index: epoch * 16384 + counter });
      counter += span;
    }
    assert.ok(expected.at(-1).epoch === 1, 'the run crosses the first rekey');
    assert.ok(expected.some((e, i) => i > 0 && e.epoch === 1 && expected[i - 1].counter + spans[i - 1] < 16384),
      'the sender left counters of epoch 0 unused');
    // Delivered with neighbours swapped (jitter), each once.
    const order = frames.map((_, i) => i);
    for (let i = 0; i + 1 < order.length; i += 7) [order[i], order[i + 1]] = [order[i + 1], order[i]];
    for (const i of order) {
      const out = js.mediaReceiver.open(frames[i], i);
      assert.equal(toHex(out.payload), toHex(payload(i)), `packet ${i}`);
      assert.deepEqual({ epoch: out.epoch, counter: out.counter, index: out.index }, expected[i], `packet ${i} (span ${spans[i]})`);
    }
    assert.equal(js.mediaReceiver.accepted, frames.length);
    assert.equal(js.mediaReceiver.rekeys, 1);
    // Replays are still refused, whatever the gaps between counters.
    const last = frames.length - 1;
    assert.throws(() => js.mediaReceiver.open(frames[last], 0), { reason: 'replayed' });
    assert.throws(() => js.mediaReceiver.open(frames[last - 40], 0), { reason: 'replayed' });
    // A 60 ms packet from more than 512 counters back (171 such packets) is too old.
    const late = fromHex(field(await rust.ask(`span 3 ${toHex(payload(0))}`), 'frame'));
    for (let i = 0; i < 171; i++) js.mediaReceiver.open(fromHex(field(await rust.ask(`span 3 ${toHex(payload(i))}`), 'frame')), 0);
    assert.throws(() => js.mediaReceiver.open(late, 0), { reason: 'too_old' });
    assert.equal(js.mediaReceiver.rejected.forged, 0);
  } finally {
    await rust.close();
  }
});
