// Checks the JavaScript implementation of docs/PROTOCOL.md byte for byte against
// crates/e2ee/tests/vectors/v1.json (made by an independent Python implementation): every
// handshake message, the transcript hash, every §4 secret, the SAS, every epoch key and salt,
// every protected frame, and that each frame opens again under the receiver's rules.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fromHex, toHex } from '../src/protocol/bytes.js';
import { Handshake, callParams, SUITE, VERSION } from '../src/protocol/handshake.js';
import { epochKeys, nextChain } from '../src/protocol/keys.js';
import { FrameReceiver, Direction, channels } from '../src/protocol/frame.js';

const file = JSON.parse(
  readFileSync(new URL('../../crates/e2ee/tests/vectors/v1.json', import.meta.url), 'utf8'),
);
let checks = 0;
const eq = (actual, expected, what) => {
  assert.equal(actual, expected, what);
  checks += 1;
};

function runCase(c) {
  const room = fromHex(c.room_id);
  const params = callParams(room, fromHex(c.initiator_fingerprint), fromHex(c.responder_fingerprint));
  const id = (s) => (s === null ? null : fromHex(s));
  const { handshake: alice, commit } = Handshake.initiator(
    params,
    id(c.initiator_identity_secret),
    fromHex(c.initiator_ephemeral_secret),
  );
  const bob = Handshake.responder(params, id(c.responder_identity_secret), fromHex(c.responder_ephemeral_secret));
  eq(toHex(commit), c.commit, `${c.name} commit`);
  const response = bob.receive(commit);
  eq(toHex(response), c.response, `${c.name} response`);
  const reveal = alice.receive(response);
  eq(toHex(reveal), c.reveal, `${c.name} reveal`);
  const confirm = bob.receive(reveal);
  eq(toHex(confirm), c.confirm, `${c.name} confirm`);
  assert.equal(alice.receive(confirm), null);
  assert.ok(alice.complete && bob.complete);
  const names = { media_i2r: 'mediaI2r', media_r2i: 'mediaR2i', data_i2r: 'dataI2r', data_r2i: 'dataR2i',
    confirm_i: 'confirmI', confirm_r: 'confirmR', sas: 'sas' };
  for (const [json, js] of Object.entries(names)) {
    eq(toHex(alice.keys[js]), c.secrets[json], `${c.name} initiator ${json}`);
    eq(toHex(bob.keys[js]), c.secrets[json], `${c.name} responder ${json}`);
  }
  eq(toHex(alice.th), c.transcript_hash, `${c.name} TH`);
  eq(toHex(bob.th), c.transcript_hash, `${c.name} TH (responder)`);
  return { alice: alice.finish(), bob: bob.finish() };
}

test('the vector file is the one we implement', () => {
  assert.equal(file.version, VERSION);
  assert.equal(file.suite, SUITE);
  assert.deepEqual(file.cases.map((c) => c.name), ['no-identities', 'both-identities', 'initiator-identity-only']);
});

test('handshake messages, transcript hash, secrets and SAS match byte for byte', () => {
  for (const c of file.cases) {
    const { alice, bob } = runCase(c);
    for (const side of [alice, bob]) {
      eq(side.sas.value, c.sas_value, `${c.name} sas value`);
      eq(side.sas.words, c.sas_words, `${c.name} sas words`);
      eq(side.sas.digits, c.sas_digits, `${c.name} sas digits`);
    }
    // Each side learns the other's identity public key, or none.
    assert.equal(alice.peerIdentity === null, c.responder_identity_secret === null);
    assert.equal(bob.peerIdentity === null, c.initiator_identity_secret === null);
  }
});

function protectAt(sender, epoch, counter, payload) {
  assert.ok(sender.epoch <= epoch, 'vectors in order per chain');
  while (sender.epoch < epoch) sender.rekey();
  assert.ok(sender.counter <= counter, 'vectors in order per chain');
  while (sender.counter < counter) sender.protect(new Uint8Array(0));
  return sender.protect(payload);
}

test('epoch keys and protected frames match byte for byte, and open again', () => {
  for (const c of file.cases) {
    const { alice, bob } = runCase(c);
    const opts = { sender: { rekeyAfterFrames: null } };
    const a = channels(alice, opts);
    const b = channels(bob, opts);
    const senders = { media_i2r: a.mediaSender, media_r2i: b.mediaSender, data_i2r: a.dataSender, data_r2i: b.dataSender };
    let n = 0;
    for (const f of c.frames) {
      const what = `${c.name} ${f.chain} e${f.epoch} c${f.counter}`;
      let chain = fromHex(c.secrets[f.chain]);
      for (let e = 0; e < f.epoch; e++) chain = nextChain(chain);
      const k = epochKeys(chain);
      eq(toHex(k.key), f.key, `${what} key`);
      eq(toHex(k.salt), f.salt, `${what} salt`);
      const frame = protectAt(senders[f.chain], f.epoch, f.counter, fromHex(f.payload));
      eq(toHex(frame), f.frame, `${what} frame`);
      // The receiver of that direction, fresh from the published chain secret, opens it
      // (counters below the epoch length only: a receiver refuses the others, §7).
      if (f.counter < 16384 && f.epoch <= 2) {
        const dir = f.chain.endsWith('i2r') ? Direction.I2R : Direction.R2I;
        const rx = new FrameReceiver(dir, fromHex(c.secrets[f.chain]));
        const opened = rx.open(fromHex(f.frame), 0);
        eq(toHex(opened.payload), f.payload, `${what} opens`);
        eq(opened.epoch, f.epoch, `${what} epoch`);
      }
      n += 1;
    }
    assert.ok(n >= 10, `${c.name}: only ${n} frames`);
  }
});

test('every check of the vector file ran', () => {
  // 3 cases × (4 messages + 14 secrets + 2 TH) in each of two runs, 6 SAS checks, and per
  // frame key, salt and bytes (+ 2 when it opens).
  assert.ok(checks >= 183, `only ${checks} checks`);
  console.log(`${checks} byte-for-byte checks against v1.json`);
});
