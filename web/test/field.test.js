// Two machines, as a person meets it: the deployment of tests/tests/field_deploy.rs (a VPS
// running aparte-signaling with TLS on 443 and its TURN relay, set up by docs/DEPLOY.md's
// blocks run verbatim, and two homes behind NAT routers, all network namespaces; the
// `field_vps` example of the tests crate holds it up), with headless Chromium in one home
// opening https://VPS/r/ROOM with its token, and `aparte call --server wss://… --ca-file` in the
// other. Chromium trusts the private CA's server certificate by its SPKI hash
// (`--ignore-certificate-errors-spki-list`), as a person would add the CA. Both show the same
// SAS; each decrypts at least 95 % of the other's frames; nothing rejected; the CLI's recording
// holds the browser's speech. Needs root.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import os from 'node:os';
import path from 'node:path';
import { WAIT_MS, binary, example, heardNcc, inNetns, launchChromium, openPage, speak } from './harness.js';

/** The deployment (`field_vps`, with `nat`) and Chromium in home A; `stop()` tears both down. */
async function startField(dir, nat) {
  const p = (name) => path.join(dir, name);
  const holder = spawn(example('field_vps', 'aparte-e2e-tests'), [dir, ...(nat === 'symmetric' ? ['symmetric'] : [])],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => holder.on('exit', resolve));
  const stop = async (browser) => {
    await browser?.close();
    holder.stdin.end();
    await exited;
  };
  try {
    const lines = createInterface({ input: holder.stdout });
    const field = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('field_vps did not start')), 60000);
      lines.once('line', (line) => {
        clearTimeout(timer);
        resolve(JSON.parse(line));
      });
      exited.then((code) => reject(new Error(`field_vps exited with ${code}`)));
    });
    // The server certificate's SPKI hash (what --ignore-certificate-errors-spki-list takes).
    const spki = spawnSync('sh', ['-c',
      'openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64'],
    { cwd: dir, encoding: 'utf8' });
    assert.equal(spki.status, 0, spki.stderr);
    speak('Hello from the browser at home. Can you hear me through two routers?', p('browser.wav'));
    speak('Hi, the command line here, in the other home.', p('cli.wav'));
    const browser = await launchChromium(p('browser.wav'), {
      netns: field.home_a, dir, args: [`--ignore-certificate-errors-spki-list=${spki.stdout.trim()}`],
    });
    return { field, browser, stop: () => stop(browser) };
  } catch (e) {
    await stop(null);
    throw e;
  }
}

async function fieldCall(nat) {
  const dir = mkdtempSync(path.join(os.tmpdir(), `aparte-field-${nat}-`));
  const p = (name) => path.join(dir, name);
  const { field, browser, stop } = await startField(dir, nat);
  try {
    await callFromHomes({ field, browser, dir, p, nat });
  } finally {
    await stop();
    if (process.env.APARTE_KEEP_TEST_FILES !== '1') rmSync(dir, { recursive: true, force: true });
  }
}

async function callFromHomes({ field, browser, dir, p, nat }) {
  const { page, context, requests } = await openPage(browser, `https://${field.vps_ip}/r/${field.room}`);
  await page.fill('#token', field.tokens[0]);
  await page.click('#join-btn');
  await page.waitForFunction(() => window.aparte.signaling === 'joined', null, { timeout: WAIT_MS });
  const cli = spawn(...inNetns(field.home_b, binary('aparte'), [
    'call', '--server', `wss://${field.vps_ip}/ws`, '--ca-file', 'ca.pem', `--room=${field.room}`,
    '--token', field.tokens[1], '--tofu', '--input', 'cli.wav', '--output', 'heard.wav', '--stats-json', 'cli.json',
  ]), { cwd: dir, env: { ...process.env, APARTE_HOME: p('cli-home') }, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  cli.stderr.on('data', (d) => (log += d));
  const code = await new Promise((resolve) => cli.on('exit', resolve));
  assert.equal(code, 0, `aparte call failed:\n${log}`);
  await page.waitForFunction(() => window.aparte.ended !== null, null, { timeout: WAIT_MS });
  const pub = await page.evaluate(() => window.aparte);
  const digits = await page.textContent('#sas-digits');
  const sasLine = /SAS: "([a-z ]+)"\s+\((\d{4} \d{4})\)/.exec(log);
  assert.ok(sasLine, `the CLI showed no SAS:\n${log}`);
  assert.equal(sasLine[2], digits, 'the same SAS on both sides');
  assert.equal(pub.ended, 'the peer hung up');
  const report = JSON.parse(readFileSync(p('cli.json'), 'utf8'));
  const rejected = (r) => Object.values(r).reduce((a, b) => a + b, 0);
  assert.equal(rejected(report.frames_rejected), 0);
  assert.equal(rejected(pub.media.rejected), 0);
  assert.ok(report.frames_decrypted >= 0.95 * pub.media.sent, `CLI decrypted ${report.frames_decrypted} of ${pub.media.sent}`);
  assert.ok(pub.media.decrypted >= 0.95 * report.frames_protected, `page decrypted ${pub.media.decrypted} of ${report.frames_protected}`);
  assert.ok(requests.every((u) => u.startsWith(`https://${field.vps_ip}/`)), `requests elsewhere: ${requests}`);
  const ncc = heardNcc(p('browser.wav'), p('heard.wav'));
  console.log(JSON.stringify({
    nat,
    setup_ms_page: pub.setupMs,
    cli_setup_ms: report.setup_ms,
    relayed: report.relayed,
    cli_local_candidate: report.local_candidate,
    cli_remote_candidate: report.remote_candidate,
    page_candidates: pub.candidates,
    browser_frames_sent: pub.media.sent,
    cli_decrypted: report.frames_decrypted,
    cli_frames_protected: report.frames_protected,
    page_decrypted: pub.media.decrypted,
    overhead_per_frame: pub.media.overheadBytes / pub.media.sent,
    heard_ncc_median: ncc.median,
    heard_ncc_mean: ncc.mean,
  }));
  // The page's default capture processing is on here: the bar of the CLI-offers loopback call.
  assert.ok(ncc.median >= 0.5 && ncc.mean >= 0.4, `NCC per segment ${ncc.nccs}`);
  if (nat === 'symmetric') assert.equal(report.relayed, true, 'symmetric NAT needs the relay');
  await context.close();
}

test('two homes behind NAT (masquerade) and a VPS with TLS: Chromium in one home, the CLI in the other', { timeout: 180000 }, async () => {
  await fieldCall('masquerade');
});

test('two homes behind symmetric NAT and a VPS with TLS: Chromium in one home, the CLI in the other, through the relay', { timeout: 180000 }, async () => {
  await fieldCall('symmetric');
});
