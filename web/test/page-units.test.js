// The page's pure helpers: the DTLS fingerprint it binds (as crates/client/src/sdp.rs), the
// Opus CBR rewrite, strict peer-message and caption parsing, and the WebVTT the CLI writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dtlsFingerprint, forceOpusCbr, candidateType } from '../src/page/sdp.js';
import { parsePeerMessage, decodeCaption, toWebVtt } from '../src/page/messages.js';
import { utf8 } from '../src/protocol/bytes.js';

const dec = (b) => new TextDecoder().decode(b);

test('fingerprints are normalised like the CLI does, and must agree', () => {
  const sdp = 'v=0\r\na=fingerprint:SHA-256 ab:cd:ef\r\nm=audio 9\r\na=fingerprint:sha-256 AB:CD:EF \r\n';
  assert.equal(dec(dtlsFingerprint(sdp)), 'sha-256 AB:CD:EF');
  assert.equal(dtlsFingerprint('v=0\na=fingerprint:sha-256 AA\na=fingerprint:sha-256 BB\n'), null);
  assert.equal(dtlsFingerprint('v=0\r\n'), null);
});

test('cbr=1, the page\'s bitrate and usedtx=0 go into every Opus fmtp line, and only there', () => {
  const sdp = [
    'm=audio 9 UDP/TLS/RTP/SAVPF 111 0',
    'a=rtpmap:111 opus/48000/2',
    'a=fmtp:111 minptime=10;useinbandfec=1;cbr=0;maxaveragebitrate=128000;usedtx=1',
    'a=rtpmap:0 PCMU/8000',
    'a=fmtp:0 foo=1',
    '',
  ].join('\r\n');
  const out = forceOpusCbr(sdp);
  assert.match(out, /a=fmtp:111 minptime=10;useinbandfec=1;cbr=1;maxaveragebitrate=32000;usedtx=0\r\n/);
  assert.match(out, /a=fmtp:0 foo=1\r\n/);
  assert.ok(!out.includes('cbr=0') && !out.includes('128000') && !out.includes('usedtx=1'));
  const bare = forceOpusCbr('a=rtpmap:109 opus/48000/2\n');
  assert.equal(bare, 'a=rtpmap:109 opus/48000/2\na=fmtp:109 cbr=1;maxaveragebitrate=32000;usedtx=0\n');
  assert.equal(candidateType('candidate:1 1 udp 1 10.0.0.1 5000 typ relay raddr 0.0.0.0 rport 0'), 'relay');
});

test('peer messages are parsed strictly, as the CLI sends them', () => {
  assert.deepEqual(parsePeerMessage({ kind: 'handshake', data: '0101f0a1' }), { kind: 'handshake', data: '0101f0a1' });
  assert.equal(parsePeerMessage({ kind: 'handshake', data: 'zz' }), null);
  assert.equal(parsePeerMessage({ kind: 'offer', sdp: 'x', extra: 1 }), null);
  assert.equal(parsePeerMessage({ kind: 'offer', sdp: 'x'.repeat(40000) }), null);
  assert.equal(parsePeerMessage({ kind: 'candidate' }), null);
  assert.deepEqual(parsePeerMessage({ kind: 'rebuild' }), { kind: 'rebuild' });
  assert.equal(parsePeerMessage([1]), null);
});

test('captions are checked before they are shown; WebVTT as the CLI writes it', () => {
  const good = { v: 1, seq: 1, final: true, start_ms: 1500, end_ms: 3250, lang: 'es', text: 'Buenos días',
    translation: { lang: 'en', text: 'Good morning' } };
  const c = decodeCaption(utf8(JSON.stringify(good)));
  assert.equal(c.text, 'Buenos días');
  for (const bad of [
    { ...good, v: 2 }, { ...good, extra: 1 }, { ...good, lang: 'EN' }, { ...good, end_ms: 1 },
    { ...good, text: 'a\u0007' }, { ...good, text: 'x'.repeat(1001) }, { ...good, translation: { lang: 'en' } },
  ]) {
    assert.throws(() => decodeCaption(utf8(JSON.stringify(bad))));
  }
  assert.throws(() => decodeCaption(utf8('[1]')));
  assert.throws(() => decodeCaption(new Uint8Array(5000).fill(0x7b)));
  const tricky = { ...good, seq: 2, start_ms: 3723004, end_ms: 3723004, text: 'a --> <b>&', translation: undefined };
  delete tricky.translation;
  assert.equal(
    toWebVtt([good, { ...good, seq: 3, final: false }, tricky]),
    'WEBVTT\n\n1\n00:00:01.500 --> 00:00:03.250\nGood morning\n(Buenos días)\n\n'
      + '2\n01:02:03.004 --> 01:02:03.005\na --&gt; &lt;b&gt;&amp;\n\n',
  );
});
