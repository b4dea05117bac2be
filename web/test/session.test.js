// The session rules the browser shares with crates/session: no media before key confirmation,
// the SAS confirmation inside the data channel, key continuity (CHANGED and missing identity),
// and the receiver's replay window and rekey rules (docs/PROTOCOL.md §8).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { utf8 } from '../src/protocol/bytes.js';
import { CallSecurity, Control, encodeControl } from '../src/protocol/session.js';
import { KnownPeers, identityFingerprint } from '../src/protocol/identity.js';
import { FrameSender, FrameReceiver, Direction, EPOCH_FRAMES } from '../src/protocol/frame.js';
import { publicKey } from '../src/protocol/handshake.js';

const rand = (n) => globalThis.crypto.getRandomValues(new Uint8Array(n));

function pair({ aliceId = rand(32), bobId = rand(32), alicePeers = new KnownPeers(), bobPeers = new KnownPeers() } = {}) {
  const base = { roomId: utf8('room-abcdefghijklmnopqrstuv') };
  const fpA = utf8('sha-256 AA'), fpB = utf8('sha-256 BB');
  const alice = new CallSecurity({ ...base, role: 'initiator', localFingerprint: fpA, remoteFingerprint: fpB,
    identitySecret: aliceId, peerName: 'bob', knownPeers: alicePeers });
  const bob = new CallSecurity({ ...base, role: 'responder', localFingerprint: fpB, remoteFingerprint: fpA,
    identitySecret: bobId, peerName: 'alice', knownPeers: bobPeers });
  return { alice, bob };
}

/** Runs the handshake, delivering every event; returns the statuses each side saw. */
function connect(alice, bob) {
  const seen = { alice: [], bob: [] };
  const deliver = (from, to, events) => {
    for (const e of events) {
      if (e.type === 'status') seen[from === alice ? 'alice' : 'bob'].push(e.status);
      if (e.type === 'handshake') deliver(to, from, to.onHandshake(e.bytes, 0, 1000));
      if (e.type === 'data') deliver(to, from, to.onDataFrame(e.bytes, 0, 1000));
    }
  };
  bob.start();
  deliver(alice, bob, alice.start());
  return { seen, deliver };
}

test('no media before key confirmation; both see the same SAS; both confirm → verified', () => {
  const { alice, bob } = pair();
  assert.equal(alice.mediaAllowed, false);
  assert.throws(() => alice.sendApp(utf8('{}')));
  const { deliver } = connect(alice, bob);
  assert.equal(alice.status.state, 'encrypted');
  assert.equal(bob.status.state, 'encrypted');
  assert.equal(alice.status.sas.words, bob.status.sas.words);
  assert.ok(alice.mediaAllowed && bob.mediaAllowed);
  deliver(alice, bob, alice.confirmSas(1000));
  assert.equal(alice.status.state, 'encrypted');
  assert.equal(alice.status.confirmedLocally, true);
  deliver(bob, alice, bob.confirmSas(1000));
  assert.equal(alice.status.state, 'verified');
  assert.equal(bob.status.state, 'verified');
  assert.equal(alice.knownPeers.get('bob').verified, true);
});

test('a verified pinned identity verifies the next call; another key or none is CHANGED', () => {
  const aliceId = rand(32), bobId = rand(32);
  const first = pair({ aliceId, bobId });
  const { deliver } = connect(first.alice, first.bob);
  deliver(first.alice, first.bob, first.alice.confirmSas(1));
  deliver(first.bob, first.alice, first.bob.confirmSas(1));
  const alicePeers = first.alice.knownPeers;

  const again = pair({ aliceId, bobId, alicePeers });
  connect(again.alice, again.bob);
  assert.equal(again.alice.status.state, 'verified');
  assert.equal(again.alice.status.by, 'pinned_identity');

  const other = pair({ aliceId, bobId: rand(32), alicePeers });
  connect(other.alice, other.bob);
  assert.equal(other.alice.status.state, 'identity_changed');
  assert.equal(other.alice.mediaAllowed, false, 'no media while CHANGED');
  assert.throws(() => other.alice.sendApp(utf8('{}')));

  const none = pair({ aliceId, bobId: null, alicePeers });
  connect(none.alice, none.bob);
  assert.equal(none.alice.status.state, 'identity_changed', 'no identity is as alarming as another');
  assert.equal(none.alice.status.presented, null);
  none.alice.overrideIdentityChange(2);
  assert.equal(none.alice.status.state, 'encrypted', 'override asks for the SAS');
  assert.equal(alicePeers.get('bob').identity.length, 64, 'the pin stays');
});

test('SAS rejected by the peer fails the call; Bye ends it', () => {
  const { alice, bob } = pair();
  const { deliver } = connect(alice, bob);
  deliver(bob, alice, bob.rejectSas());
  assert.equal(bob.status.state, 'failed');
  assert.equal(alice.status.state, 'failed');
  const p = pair();
  const c = connect(p.alice, p.bob);
  c.deliver(p.alice, p.bob, p.alice.hangUp());
  assert.deepEqual(p.bob.status, { state: 'ended', byPeer: true });
});

test('captions travel as App messages under the data keys; junk data frames are rejected', () => {
  const { alice, bob } = pair();
  connect(alice, bob);
  const [sent] = alice.sendApp(utf8('{"v":1}'));
  const events = bob.onDataFrame(sent.bytes, 0, 1);
  assert.deepEqual(events, [{ type: 'app', body: utf8('{"v":1}') }]);
  assert.throws(() => bob.onDataFrame(sent.bytes, 0, 1), { reason: 'replayed' });
  assert.throws(() => bob.onDataFrame(rand(40), 0, 1));
  assert.deepEqual(encodeControl(Control.Bye), Uint8Array.of(3));
});

test('a tampered handshake (swapped fingerprint) fails key confirmation fatally', () => {
  const base = { roomId: utf8('room-abcdefghijklmnopqrstuv'), knownPeers: new KnownPeers() };
  const alice = new CallSecurity({ ...base, role: 'initiator', localFingerprint: utf8('A'), remoteFingerprint: utf8('B') });
  const bob = new CallSecurity({ ...base, role: 'responder', localFingerprint: utf8('B'), remoteFingerprint: utf8('MITM') });
  bob.start();
  const [commit] = alice.start();
  const [response] = bob.onHandshake(commit.bytes, 0, 1);
  const [reveal] = alice.onHandshake(response.bytes, 0, 1);
  assert.throws(() => bob.onHandshake(reveal.bytes, 0, 1), { code: 'mac_mismatch', fatal: true });
  assert.equal(bob.status.state, 'failed');
  assert.equal(bob.mediaAllowed, false);
});

test('replay window: any order within 512, each once; older is too_old', () => {
  const chain = rand(32);
  const tx = new FrameSender(Direction.I2R, chain);
  const rx = new FrameReceiver(Direction.I2R, chain);
  const frames = Array.from({ length: 600 }, (_, i) => tx.protect(Uint8Array.of(i & 255)));
  rx.open(frames[599], 0);
  rx.open(frames[100], 0); // 499 below the highest: inside the window
  assert.throws(() => rx.open(frames[87], 0), { reason: 'too_old' });
  assert.throws(() => rx.open(frames[100], 0), { reason: 'replayed' });
  assert.equal(rx.accepted, 2);
  assert.equal(rx.rejected.too_old, 1);
});

test('rekey: the receiver follows the sender across epochs; the old epoch lasts its grace period', () => {
  const chain = rand(32);
  const tx = new FrameSender(Direction.R2I, chain, { rekeyAfterFrames: 4 });
  const rx = new FrameReceiver(Direction.R2I, chain);
  const f = Array.from({ length: 10 }, () => tx.protect(Uint8Array.of(1)));
  rx.open(f[0], 0);
  assert.equal(rx.open(f[4], 10).epoch, 1); // the next epoch, followed on authentication
  assert.equal(rx.open(f[1], 100).epoch, 0); // late frame of the previous epoch, in grace
  assert.throws(() => rx.open(f[2], 2100), { reason: 'unknown_key' }); // grace over
  assert.equal(rx.open(f[9], 2200).epoch, 2);
  assert.equal(rx.rekeys, 2);
  assert.throws(() => rx.open(Uint8Array.of(0x0f, 1, 2), 0), { reason: 'malformed' });
  // Key id 1, counter 16384 (two bytes): refused before any cryptography.
  const beyond = Uint8Array.of(0x19, EPOCH_FRAMES >> 8, 0, ...rand(17));
  assert.throws(() => rx.open(beyond, 0), { reason: 'malformed' });
  assert.throws(() => rx.open(Uint8Array.of(0x10, ...rand(16)), 0), { reason: 'forged' });
});

test('identity fingerprints look like the CLI shows them', () => {
  const fp = identityFingerprint(publicKey(rand(32)));
  assert.match(fp, /^([0-9a-f]{4} ){7}[0-9a-f]{4}$/);
});
