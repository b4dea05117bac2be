// The CLI's 40 and 60 ms packets reach the page and play. At its low bitrate steps the CLI
// gathers 2 or 3 Opus frames into one packet and advances its e2ee counter by the packet's
// 20 ms frames (DECISIONS D12). The CLI has no flag to pick a step: it steps down when the
// peer reports loss. So this call runs on two hosts (network namespaces joined by a veth
// pair): the server and Chromium on one, the CLI on the other, behind a 28 kbit/s uplink
// (`tc tbf`, as tests/src/netns.rs `limit_uplink`; this kernel has no netem). The page's
// receiver reports the loss, the CLI steps down until its stream fits: 12 kbit/s in 60 ms
// packets (22.9 kbit/s on the wire). Then the page must decrypt every packet that arrives
// (counter gaps of 3), reject none, and decode them into sound without concealment. Needs
// root (namespaces, tc).
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WAIT_MS, binary, inNetns, launchChromium, newRoom, openPage, join, sh, startServer, twoHosts } from './harness.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'aparte-long-'));
const p = (name) => path.join(dir, name);
let hosts;
let server;
let browser;

before(async () => {
  hosts = twoHosts('long');
  server = await startServer(['--turn-listen', `${hosts.aAddr}:0`], { netns: hosts.a, listen: '0.0.0.0:0' });
  browser = await launchChromium(null, { netns: hosts.a, dir });
});
after(async () => {
  await browser?.close();
  await server?.stop();
  hosts?.remove();
  if (process.env.APARTE_KEEP_TEST_FILES !== '1') rmSync(dir, { recursive: true, force: true });
});

test('the CLI\'s 60 ms packets (low bitrate step, counter gaps of 3) are decrypted and played by the page', { timeout: 180000 }, async () => {
  const room = newRoom();
  const port = server.addr.split(':').pop();
  const { page, context } = await openPage(browser, `http://127.0.0.1:${port}/r/${room}`);
  await join(page, { relayOnly: true });
  await page.waitForFunction(() => window.aparte.signaling === 'joined', null, { timeout: WAIT_MS });
  // A thin uplink for the CLI: 32 kbit/s in 20 ms packets (44.8 kbit/s on the wire) does not fit.
  sh('ip', ['netns', 'exec', hosts.b, 'tc', 'qdisc', 'add', 'dev', 'eth0', 'root', 'tbf', 'rate', '28kbit', 'burst', '3000', 'latency', '300ms']);
  const cli = spawn(...inNetns(hosts.b, binary('aparte'), [
    'call', '--server', `ws://${hosts.aAddr}:${port}/ws`, `--room=${room}`, '--tofu', '--relay-only',
    '--input', 'tone', '--output', 'null', '--duration', '30', '--stats-json', p('cli.json'),
  ]), { env: { ...process.env, APARTE_HOME: p('cli-home') }, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  cli.stderr.on('data', (d) => (log += d));
  const exited = new Promise((resolve) => cli.on('exit', resolve));
  try {
    await page.waitForFunction(() => window.aparte.security === 'encrypted, not verified', null, { timeout: WAIT_MS });
    const secured = Date.now();
    // Wait for 60 ms packets (a counter gap of 3 between consecutive frames).
    await page.waitForFunction(() => (window.aparte.media?.receivedSpans?.[3] ?? 0) >= 5, null, { timeout: 60000 });
    const sixtyMsAfter = Date.now() - secured;
    // Let the queue of the steps before drain, then measure.
    await page.waitForFunction(() => (window.aparte.media?.receivedSpans?.[3] ?? 0) >= 30, null, { timeout: WAIT_MS });
    const snap = () => page.evaluate(() => JSON.parse(JSON.stringify({ media: window.aparte.media, inbound: window.aparte.inbound })));
    const before = await snap();
    // About 6 s of 60 ms packets.
    await page.waitForFunction((n) => (window.aparte.media?.receivedSpans?.[3] ?? 0) >= n, before.media.receivedSpans[3] + 100, { timeout: WAIT_MS });
    const after = await snap();
    const d = (f) => f(after) - f(before);
    const received = d((s) => s.media.received);
    const decrypted = d((s) => s.media.decrypted);
    const spans3 = d((s) => s.media.receivedSpans[3] ?? 0);
    const rejected = Object.values(after.media.rejected).reduce((a, b) => a + b, 0);
    const samples = d((s) => s.inbound.totalSamplesReceived);
    const concealed = d((s) => s.inbound.concealedSamples);
    const energy = d((s) => s.inbound.totalAudioEnergy);
    const lost = d((s) => s.inbound.packetsLost);
    assert.equal(rejected, 0, `the page rejected frames: ${JSON.stringify(after.media.rejected)}`);
    assert.equal(decrypted, received, 'every packet that arrived was decrypted');
    assert.ok(spans3 >= 0.95 * decrypted, `60 ms packets: ${spans3} of ${decrypted} had a counter gap of 3`);
    assert.equal(lost, 0, 'no loss once the stream fits the uplink');
    // The decoder got 60 ms of audio from each packet: 2880 samples at 48 kHz.
    assert.ok(samples >= 0.8 * decrypted * 2880, `decoded ${samples} samples from ${decrypted} packets`);
    assert.ok(concealed <= 0.05 * samples, `concealed ${concealed} of ${samples} samples`);
    assert.ok(energy > 0, 'the tone is heard (audio energy)');
    const code = await exited;
    assert.equal(code, 0, `aparte call failed:\n${log}`);
    const report = JSON.parse(readFileSync(p('cli.json'), 'utf8'));
    assert.equal(report.packet_lowest_ms, 60, 'the CLI sent 60 ms packets');
    console.log(JSON.stringify({
      secured_to_60ms_packets_ms: sixtyMsAfter,
      cli_lowest_bitrate_bps: report.bitrate_lowest_bps,
      cli_packet_lowest_ms: report.packet_lowest_ms,
      page_received_spans: after.media.receivedSpans,
      clean_phase: { received, decrypted, spans3, lost, samples, concealed },
      page_rejected: rejected,
    }));
  } finally {
    if (cli.exitCode === null) cli.kill();
    await context.close();
  }
});
