// A broken path does not end a browser call: the page recovers the link as the CLI does
// (docs/CLIENT.md "Link loss and ICE restart"): the offerer restarts ICE, then rebuilds the
// peer connection on the same certificate if the restart has not brought the link back within
// 1.5 s; the answerer answers the restart offer and follows the rebuild. Same keys throughout:
// no second handshake, the same SAS, nothing rejected.
//
// Two hosts (network namespaces on a veth pair): the server (with its TURN relay) and Chromium
// on one, the CLI on the other, relay-only. Once audio flows both ways, the CLI's host drops
// every UDP packet for 8 s (nftables; signaling is TCP and stays up), long enough for the
// offerer to restart ICE and then rebuild while the path is still dead. Run with the CLI
// offering (the page answers and follows) and with the page offering (the page restarts and
// rebuilds). Needs root.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WAIT_MS, binary, inNetns, launchChromium, newRoom, openPage, join, sh, startServer, twoHosts } from './harness.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'aparte-ice-'));
const p = (name) => path.join(dir, name);
let hosts;
let server;
let browser;

before(async () => {
  hosts = twoHosts('ice');
  server = await startServer(['--turn-listen', `${hosts.aAddr}:0`], { netns: hosts.a, listen: '0.0.0.0:0' });
  browser = await launchChromium(null, { netns: hosts.a, dir });
});
after(async () => {
  await browser?.close();
  await server?.stop();
  hosts?.remove();
  if (process.env.APARTE_KEEP_TEST_FILES !== '1') rmSync(dir, { recursive: true, force: true });
});

const nft = (rules) => sh('ip', ['netns', 'exec', hosts.b, 'nft', rules]);
function blockUdp() {
  nft('add table inet cut');
  nft('add chain inet cut in { type filter hook input priority 0 ; }');
  nft('add chain inet cut out { type filter hook output priority 0 ; }');
  nft('add rule inet cut in meta l4proto udp drop');
  nft('add rule inet cut out meta l4proto udp drop');
}
const unblockUdp = () => nft('delete table inet cut');

async function pathBreak({ pageOffers }) {
  const tag = pageOffers ? 'page-offers' : 'cli-offers';
  const room = newRoom();
  const port = server.addr.split(':').pop();
  const { page, context } = await openPage(browser, `http://127.0.0.1:${port}/r/${room}`);
  const runCli = () => {
    const child = spawn(...inNetns(hosts.b, binary('aparte'), [
      'call', '--server', `ws://${hosts.aAddr}:${port}/ws`, `--room=${room}`, '--tofu', '--relay-only',
      '--input', 'tone', '--output', 'null', '--duration', '22', '--stats-json', p(`${tag}.json`),
    ]), { env: { ...process.env, APARTE_HOME: p(`${tag}-home`) }, stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr.on('data', (d) => (log += d));
    const exited = new Promise((resolve) => child.on('exit', resolve));
    return { child, exited, log: () => log };
  };
  let cli;
  if (pageOffers) {
    cli = runCli();
    const deadline = Date.now() + WAIT_MS;
    while (!/waiting/i.test(cli.log()) && Date.now() < deadline) await new Promise((resolve) => cli.child.stderr.once('data', resolve));
    await join(page, { relayOnly: true });
  } else {
    await join(page, { relayOnly: true });
    await page.waitForFunction(() => window.aparte.signaling === 'joined', null, { timeout: WAIT_MS });
    cli = runCli();
  }
  let cut = false;
  try {
    await page.waitForFunction(() => window.aparte.security === 'encrypted, not verified', null, { timeout: WAIT_MS });
    const sas = await page.textContent('#sas-digits');
    await page.waitForFunction(() => (window.aparte.media?.decrypted ?? 0) >= 100, null, { timeout: WAIT_MS });
    const sentAtCut = await page.evaluate(() => window.aparte.media.sent);
    blockUdp();
    cut = true;
    const cutAt = Date.now();
    // The link goes down on the page's side too (no packet for a few seconds).
    await page.waitForFunction(() => window.aparte.link !== 'connected', null, { timeout: WAIT_MS });
    // The offerer rebuilds while the path is still dead (restart, then 1.5 s later a rebuild),
    // and the page has a new peer connection: its own rebuild, or the one it followed.
    await page.waitForFunction(() => window.aparte.rebuilds >= 1, null, { timeout: WAIT_MS });
    const wait = 8000 - (Date.now() - cutAt);
    if (wait > 0) await page.waitForTimeout(wait); // the outage's length is the test's input, not a wait for an event
    unblockUdp();
    cut = false;
    const backFrom = await page.evaluate(() => window.aparte.media.decrypted);
    await page.waitForFunction(() => window.aparte.link === 'connected', null, { timeout: WAIT_MS });
    const backMs = Date.now() - cutAt;
    const sentAtBack = await page.evaluate(() => window.aparte.media.sent);
    // Audio flows again, both ways, under the same keys.
    await page.waitForFunction((n) => window.aparte.media.decrypted >= n + 100, backFrom, { timeout: WAIT_MS });
    const code = await cli.exited;
    const log = cli.log();
    assert.equal(code, 0, `aparte call failed:\n${log}`);
    const shown = [...log.matchAll(/SAS: "[a-z ]+"\s+\((\d{4} \d{4})\)/g)].map((m) => m[1]);
    assert.ok(shown.length >= 1 && shown.every((s) => s === sas), `the same SAS throughout: page ${sas}, CLI ${shown}`);
    await page.waitForFunction(() => window.aparte.ended !== null, null, { timeout: WAIT_MS });
    const pub = await page.evaluate(() => window.aparte);
    assert.equal(pub.ended, 'the peer hung up');
    const report = JSON.parse(readFileSync(p(`${tag}.json`), 'utf8'));
    const figures = {
      offerer: pageOffers ? 'page' : 'cli',
      cut_ms: 8000,
      link_back_after_cut_ms: backMs,
      page_ice_restarts: pub.iceRestarts,
      page_rebuilds: pub.rebuilds,
      cli_ice_restarts: report.ice_restarts,
      cli_rebuilds: report.transport_rebuilds,
      cli_link_down_ms: report.link_down_ms,
      page_sent: pub.media.sent,
      page_sent_during_outage: sentAtBack - sentAtCut,
      cli_decrypted: report.frames_decrypted,
      cli_sent: report.frames_protected,
      page_decrypted: pub.media.decrypted,
    };
    console.log(JSON.stringify(figures));
    const rejected = (r) => Object.values(r).reduce((a, b) => a + b, 0);
    assert.equal(rejected(report.frames_rejected), 0, 'the CLI rejected nothing');
    assert.equal(rejected(pub.media.rejected), 0, 'the page rejected nothing');
    // Frames the page sent into the dead path (before its link state went down) are lost.
    const deliverable = pub.media.sent - (sentAtBack - sentAtCut);
    assert.ok(report.frames_decrypted >= 0.95 * deliverable, `CLI decrypted ${report.frames_decrypted} of the ${deliverable} frames the page sent outside the outage`);
    assert.ok(report.link_recoveries >= 1, `the CLI saw the link come back: ${report.link_recoveries}`);
    if (pageOffers) assert.ok(pub.iceRestarts >= 1 && pub.rebuilds >= 1, `the page restarted ICE (${pub.iceRestarts}) and rebuilt (${pub.rebuilds})`);
    else assert.ok(report.ice_restarts >= 1 && report.transport_rebuilds >= 1 && pub.rebuilds >= 1,
      `the CLI restarted ICE (${report.ice_restarts}) and rebuilt (${report.transport_rebuilds}), the page followed (${pub.rebuilds})`);
  } finally {
    if (cut) unblockUdp();
    if (cli.child.exitCode === null) cli.child.kill();
    await context.close();
  }
}

test('a path break with the CLI offering: the page answers its ICE restart and follows its rebuild; same keys, nothing rejected', { timeout: 120000 }, async () => {
  await pathBreak({ pageOffers: false });
});

test('a path break with the page offering: the page restarts ICE and rebuilds; same keys, nothing rejected', { timeout: 120000 }, async () => {
  await pathBreak({ pageOffers: true });
});
