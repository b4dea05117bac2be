// The page in a real headless Chromium against a real `aparte-signaling`: served with a strict
// Content-Security-Policy, nothing fetched from elsewhere, the WebSocket refused to other
// origins; and a call between two browser pages through the server's TURN relay (relay-only):
// the same SAS on both, frames sealed and opened in the workers, verified once both confirm.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { WAIT_MS, binary, startServer, newRoom, speak, launchChromium, openPage, join } from './harness.js';

let server;
let browser;
const dir = mkdtempSync(path.join(os.tmpdir(), 'aparte-page-'));

before(async () => {
  server = await startServer(['--turn-listen', '127.0.0.1:0']);
  speak('Testing the browser peer of aparte, one two three.', path.join(dir, 'speech.wav'));
  browser = await launchChromium(path.join(dir, 'speech.wav'));
});
after(async () => {
  await browser?.close();
  await server?.stop();
  // Speech, recordings and captures of the run (APARTE_KEEP_TEST_FILES=1 keeps them).
  if (process.env.APARTE_KEEP_TEST_FILES !== '1') rmSync(dir, { recursive: true, force: true });
});

function upgrade(origin) {
  return new Promise((resolve, reject) => {
    const headers = { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13',
      'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' };
    if (origin) headers.Origin = origin;
    const req = http.request(`${server.url}/ws`, { headers });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', reject);
    req.end();
  });
}

test('the page is served with a strict CSP, and the WebSocket only to its own origin', async () => {
  for (const p of ['/', `/r/${newRoom()}`, '/app.js', '/worker.js', '/style.css']) {
    const res = await fetch(server.url + p);
    assert.equal(res.status, 200, p);
    const csp = res.headers.get('content-security-policy');
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self';/);
    assert.match(csp, /connect-src 'self';/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    await res.arrayBuffer();
  }
  assert.equal((await fetch(`${server.url}/r/not-a-room`)).status, 404);
  assert.equal(await upgrade(null), 101, 'no Origin: a CLI');
  assert.equal(await upgrade(server.url), 101, 'same origin');
  assert.equal(await upgrade('https://evil.example'), 403, 'another origin');
  assert.equal(await upgrade('null'), 403, 'an opaque origin');
});

test('joining shows live state; nothing is requested from another origin; no inline script', async () => {
  const room = newRoom();
  const { page, context, requests, errors } = await openPage(browser, `${server.url}/r/${room}`);
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  assert.equal(await page.inputValue('#room'), room);
  await join(page);
  await page.waitForFunction(() => window.aparte.signaling === 'joined', null, { timeout: WAIT_MS });
  assert.match(await page.textContent('#message'), /Waiting for the other person/);
  assert.ok(requests.length >= 3, `requests: ${requests}`);
  for (const url of requests) assert.ok(url.startsWith(server.url), `request to ${url}`);
  assert.deepEqual(sockets, [`${server.wsUrl}`]);
  assert.deepEqual(errors.filter((e) => /Content Security Policy|Refused/.test(e)), []);
  await context.close();
});

test('two browser pages call each other through the TURN relay: same SAS, frames both ways, verified', async () => {
  const room = newRoom();
  const a = await openPage(browser, `${server.url}/r/${room}`);
  const b = await openPage(browser, `${server.url}/r/${room}`);
  await join(a.page, { relayOnly: true, peerName: 'bob' });
  await a.page.waitForFunction(() => window.aparte.signaling === 'joined', null, { timeout: WAIT_MS });
  await join(b.page, { relayOnly: true, peerName: 'alice' });
  const encrypted = () => window.aparte.security === 'encrypted, not verified';
  await a.page.waitForFunction(encrypted, null, { timeout: WAIT_MS });
  await b.page.waitForFunction(encrypted, null, { timeout: WAIT_MS });
  const sas = async (p) => [await p.textContent('#sas-words'), await p.textContent('#sas-digits')];
  const [sa, sb] = [await sas(a.page), await sas(b.page)];
  assert.deepEqual(sa, sb, 'the same SAS on both pages');
  assert.match(sa[0], /^[a-z]+ [a-z]+ [a-z]+ [a-z]+$/);
  assert.match(sa[1], /^\d{4} \d{4}$/);
  // Audio flows both ways, sealed and opened in the workers.
  const flowing = () => window.aparte.media && window.aparte.media.decrypted >= 100 && window.aparte.media.sent >= 100;
  await a.page.waitForFunction(flowing, null, { timeout: WAIT_MS });
  await b.page.waitForFunction(flowing, null, { timeout: WAIT_MS });
  for (const p of [a.page, b.page]) {
    const pub = await p.evaluate(() => window.aparte);
    assert.ok(pub.candidates.local.length > 0 && pub.candidates.local.every((t) => t === 'relay'), 'relay-only');
    assert.equal(Object.values(pub.media.rejected).reduce((x, y) => x + y, 0), 0, 'no frame rejected');
    assert.ok(pub.media.overheadBytes / pub.media.sent <= 19, 'overhead per frame');
  }
  await a.page.click('#sas-match');
  await b.page.click('#sas-match');
  const verified = () => window.aparte.security === 'encrypted and verified';
  await a.page.waitForFunction(verified, null, { timeout: WAIT_MS });
  await b.page.waitForFunction(verified, null, { timeout: WAIT_MS });
  await a.page.click('#hangup');
  await b.page.waitForFunction(() => window.aparte.ended === 'the peer hung up', null, { timeout: WAIT_MS });
  await a.context.close();
  await b.context.close();
});

test('a server that requires a token: the page says so, and joins with one', async () => {
  const secret = 'a-token-secret-of-at-least-32-bytes-0123456789';
  const guarded = await startServer(['--token-secret', secret]);
  try {
    const room = newRoom();
    const { page, context } = await openPage(browser, `${guarded.url}/r/${room}`);
    await join(page);
    await page.waitForFunction(() => window.aparte.ended !== null, null, { timeout: WAIT_MS });
    assert.match(await page.textContent('#message'), /token required/);
    assert.equal(await page.isVisible('#join'), true, 'the form is back');
    const token = spawnSync(binary('aparte-signaling'), ['token', '--room', room, '--ttl', '10m', '--token-secret', secret],
      { encoding: 'utf8' });
    assert.equal(token.status, 0, token.stderr);
    await page.fill('#token', token.stdout.trim());
    await join(page);
    await page.waitForFunction(() => window.aparte.signaling === 'joined', null, { timeout: WAIT_MS });
    await context.close();
  } finally {
    await guarded.stop();
  }
});
