// A man in the middle on signaling against two browser pages: a hostile signaling server (this
// test's own, speaking the aparte-signaling protocol) relays SDP and candidates untouched but
// runs its own e2ee handshake with each side, with the right room and fingerprints. Each page
// then shows a different SAS; the audio each sends is sealed under keys the other does not
// have, so every frame is rejected as forged and nothing is played; "they don't match" ends it.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WAIT_MS, binary, launchChromium, newRoom, openPage, join } from './harness.js';
import { Handshake, callParams } from '../src/protocol/handshake.js';
import { fromHex, toHex, utf8 } from '../src/protocol/bytes.js';
import { dtlsFingerprint } from '../src/page/sdp.js';

const dist = fileURLToPath(new URL('../dist/', import.meta.url));
const TYPES = { 'index.html': 'text/html', 'app.js': 'text/javascript', 'worker.js': 'text/javascript', 'style.css': 'text/css' };

/** Sends one text frame (server → client frames are not masked). */
function sendText(socket, obj) {
  const data = Buffer.from(JSON.stringify(obj));
  const head = data.length < 126 ? Buffer.from([0x81, data.length]) : Buffer.from([0x81, 126, data.length >> 8, data.length & 255]);
  socket.write(Buffer.concat([head, data]));
}

/** Reads client frames (masked) from `socket`, calling `onText` with each parsed message. */
function readFrames(socket, onText) {
  let buf = Buffer.alloc(0);
  socket.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (buf.length < 2) return;
      let len = buf[1] & 127;
      let at = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        at = 4;
      }
      if (buf.length < at + 4 + len) return;
      const mask = buf.subarray(at, at + 4);
      const payload = Buffer.from(buf.subarray(at + 4, at + 4 + len));
      for (let i = 0; i < len; i++) payload[i] ^= mask[i % 4];
      const opcode = buf[0] & 15;
      buf = buf.subarray(at + 4 + len);
      if (opcode === 8) return socket.end();
      // A WebSocket ping (the CLI's keepalive) gets its pong.
      if (opcode === 9 && len < 126) socket.write(Buffer.concat([Buffer.from([0x8a, len]), payload]));
      if (opcode === 1) onText(JSON.parse(payload.toString()));
    }
  });
}

/** The hostile server: serves the built page and plays the man in the middle. */
function hostileServer() {
  const peers = [];
  const mitm = { toInitiator: null, toResponder: null, fpI: null, fpR: null, room: null, queued: [] };
  const relay = (from, payload) => {
    for (const p of peers) if (p !== from) sendText(p.socket, { type: 'relay', from: from.id, payload });
  };
  const params = () => callParams(utf8(mitm.room), mitm.fpI, mitm.fpR);
  // Messages Mallory writes herself claim to come from the other peer, as relayed ones do.
  const other = (me) => peers.find((p) => p !== me)?.id ?? 0;
  const onHandshake = (from, bytes) => {
    if (from.role === 'initiator') {
      // We are the responder the initiator thinks it talks to.
      mitm.toInitiator ??= Handshake.responder(params());
      const reply = mitm.toInitiator.receive(bytes);
      if (reply) sendText(from.socket, { type: 'relay', from: other(from), payload: { kind: 'handshake', data: toHex(reply) } });
    } else {
      const reply = mitm.toResponder.receive(bytes);
      if (reply) sendText(from.socket, { type: 'relay', from: other(from), payload: { kind: 'handshake', data: toHex(reply) } });
    }
  };
  const server = http.createServer((req, res) => {
    const name = req.url === '/' || req.url.startsWith('/r/') ? 'index.html' : req.url.slice(1);
    if (!TYPES[name]) {
      res.writeHead(404);
      return res.end();
    }
    res.writeHead(200, { 'content-type': TYPES[name] });
    res.end(readFileSync(dist + name));
  });
  server.on('upgrade', (req, socket) => {
    const accept = crypto.createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    const me = { id: peers.length + 1, socket, role: null };
    socket.on('error', () => {});
    readFrames(socket, (msg) => {
      if (msg.type === 'hello') sendText(socket, { type: 'welcome', version: 1, server: 'hostile', max_message_bytes: 65536, ping_interval_ms: 2000 });
      if (msg.type === 'ping') sendText(socket, { type: 'pong' });
      if (msg.type === 'join') {
        mitm.room = msg.room;
        me.role = peers.length ? 'initiator' : 'responder';
        sendText(socket, { type: 'joined', room: msg.room, peer_id: me.id, capacity: 2, peers: peers.map((p) => ({ peer_id: p.id })), ice_servers: [] });
        for (const p of peers) sendText(p.socket, { type: 'peer_joined', peer_id: me.id });
        peers.push(me);
      }
      if (msg.type !== 'relay') return;
      const payload = msg.payload;
      if (payload.kind === 'offer') mitm.fpI = dtlsFingerprint(payload.sdp);
      if (payload.kind === 'answer') {
        mitm.fpR = dtlsFingerprint(payload.sdp);
        relay(me, payload);
        // The responder is ready: we open our own handshake with it, as its initiator.
        const started = Handshake.initiator(params());
        mitm.toResponder = started.handshake;
        sendText(me.socket, { type: 'relay', from: other(me), payload: { kind: 'handshake', data: toHex(started.commit) } });
        return;
      }
      if (payload.kind === 'handshake') return onHandshake(me, fromHex(payload.data));
      relay(me, payload);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, mitm, url: `http://127.0.0.1:${server.address().port}` })));
}

let hostile;
let browser;
before(async () => {
  hostile = await hostileServer();
  browser = await launchChromium(null);
});
after(async () => {
  await browser?.close();
  hostile?.server.closeAllConnections();
  hostile?.server.close();
});

test('a signaling MITM running its own handshake: different SAS, every frame rejected, nothing played', async () => {
  const room = 'MitmRoomAbCdEfGhIjKlMnOp';
  const a = await openPage(browser, `${hostile.url}/r/${room}`);
  const b = await openPage(browser, `${hostile.url}/r/${room}`);
  await join(a.page);
  await a.page.waitForFunction(() => window.aparte.signaling === 'joined', null, { timeout: WAIT_MS });
  await join(b.page);
  const encrypted = () => window.aparte.security === 'encrypted, not verified';
  await a.page.waitForFunction(encrypted, null, { timeout: WAIT_MS });
  await b.page.waitForFunction(encrypted, null, { timeout: WAIT_MS });
  assert.ok(hostile.mitm.toInitiator?.complete && hostile.mitm.toResponder?.complete, 'the MITM completed both handshakes');
  const [sasA, sasB] = [await a.page.textContent('#sas-digits'), await b.page.textContent('#sas-digits')];
  assert.notEqual(sasA, sasB, 'the SAS differs: the people comparing it find the MITM');
  // Audio flows over the (untouched) DTLS path, but under keys the other side does not have.
  const rejecting = () => window.aparte.media && window.aparte.media.rejected.forged >= 50;
  await a.page.waitForFunction(rejecting, null, { timeout: WAIT_MS });
  await b.page.waitForFunction(rejecting, null, { timeout: WAIT_MS });
  for (const p of [a.page, b.page]) {
    const m = await p.evaluate(() => window.aparte.media);
    assert.equal(m.decrypted, 0, 'no frame from the MITM-ed peer opened');
    assert.equal(await p.evaluate(() => document.getElementById('remote-audio').muted), true, 'nothing played');
  }
  await a.page.click('#sas-mismatch');
  await a.page.waitForFunction(() => window.aparte.security === 'security failure', null, { timeout: WAIT_MS });
  await a.context.close();
  await b.context.close();
});

// The same attack between the page and the CLI (what tests/tests/call_mitm.rs does to two
// CLIs): the hostile server relays SDP and candidates untouched and runs its own handshake
// with each. Both show a SAS, different ones; the CLI rejects every browser frame as forged and
// ends the call as tampering (exit 3, 0 decrypted); the page rejects every CLI frame as forged
// and plays nothing. Direct over loopback: Chromium is let use loopback candidates, in the clear
// (no mDNS names, which webrtc-rs cannot resolve).
test('a signaling MITM between the page and the CLI: different SAS, every frame rejected on both sides, nothing played, the CLI ends it as tampering', { timeout: 120000 }, async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'aparte-mitm-'));
  const mallory = await hostileServer();
  const loopbackBrowser = await launchChromium(null, {
    args: ['--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns'],
  });
  try {
    const room = newRoom();
    const { page, context } = await openPage(loopbackBrowser, `${mallory.url}/r/${room}`);
    await join(page);
    await page.waitForFunction(() => window.aparte.signaling === 'joined', null, { timeout: WAIT_MS });
    const stats = path.join(dir, 'cli.json');
    const cli = spawn(binary('aparte'), [
      'call', '--server', `${mallory.url.replace('http:', 'ws:')}/ws`, `--room=${room}`, '--loopback-only', '--no-identity',
      '--input', 'tone', '--duration', '10', '--stats-json', stats,
    ], { env: { ...process.env, APARTE_HOME: path.join(dir, 'home') }, stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    cli.stderr.on('data', (d) => (log += d));
    const code = await new Promise((resolve) => cli.on('exit', resolve));
    await page.waitForFunction(() => window.aparte.security === 'encrypted, not verified', null, { timeout: WAIT_MS });
    assert.ok(mallory.mitm.toInitiator?.complete && mallory.mitm.toResponder?.complete, `the MITM completed both handshakes (CLI exit ${code}):\n${log}`);
    const cliSas = /SAS: "([a-z ]+)"\s+\((\d{4} \d{4})\)/.exec(log);
    assert.ok(cliSas, `the CLI showed no SAS:\n${log}`);
    assert.notEqual(cliSas[2], await page.textContent('#sas-digits'), 'the SAS differs: the people comparing it find the MITM');
    assert.equal(code, 3, `the CLI ends the call as a security failure:\n${log}`);
    const report = JSON.parse(readFileSync(stats, 'utf8'));
    assert.equal(report.outcome, 'security');
    assert.match(report.ended_by, /tampering/);
    assert.equal(report.frames_decrypted, 0, 'the CLI opened no browser frame');
    assert.ok(report.frames_rejected.forged > 0, `the CLI rejected the browser's frames as forged: ${JSON.stringify(report.frames_rejected)}`);
    await page.waitForFunction(() => window.aparte.media && window.aparte.media.rejected.forged >= 50, null, { timeout: WAIT_MS });
    const m = await page.evaluate(() => window.aparte.media);
    assert.equal(m.decrypted, 0, 'the page opened no CLI frame');
    assert.equal(await page.evaluate(() => document.getElementById('remote-audio').muted), true, 'nothing played');
    console.log(JSON.stringify({ cli_rejected: report.frames_rejected, page_rejected: m.rejected, page_sent: m.sent }));
    await context.close();
  } finally {
    await loopbackBrowser.close();
    mallory.server.closeAllConnections();
    mallory.server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
