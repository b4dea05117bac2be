// The page in Firefox (Debian's firefox-esr), driven by puppeteer-core over WebDriver BiDi
// (Playwright cannot drive a stock Firefox): a call with the CLI through a real
// aparte-signaling and its TURN relay, relay-only. Firefox's fake microphone
// (`media.navigator.streams.fake`) is a tone, so the CLI's recording must hold that tone. Both
// show the same SAS; each side decrypts at least 95 % of the other's frames, none rejected.
// Firefox ignores `cbr=1` for its first payloads; the worker's gate (web/src/page/cbr.js) must
// still let out one Opus size only, from the first frame: checked in the worker's counters and
// in a capture of all loopback traffic.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WAIT_MS, binary, newRoom, readWav, dbfs, startServer, startCapture, assertConstantSizeOnTheWire, assertOneSize } from './harness.js';

/** The Firefox to drive. */
const FIREFOX = process.env.APARTE_FIREFOX ?? '/usr/bin/firefox-esr';
const dir = mkdtempSync(path.join(os.tmpdir(), 'aparte-firefox-'));
const p = (name) => path.join(dir, name);
let server;
let browser;
const captures = [];

before(async () => {
  assert.ok(existsSync(FIREFOX), `${FIREFOX} is missing (apt-get install firefox-esr; scripts/install-deps)`);
  server = await startServer(['--turn-listen', '127.0.0.1:0']);
  const { default: puppeteer } = await import('puppeteer-core');
  browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    extraPrefsFirefox: {
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      // Loopback only: ICE may use the loopback interface (the TURN relay is on 127.0.0.1).
      'media.peerconnection.ice.loopback': true,
      'media.autoplay.default': 0,
    },
  });
});
after(async () => {
  for (const c of captures) await c.stop();
  await browser?.close();
  await server?.stop();
  if (process.env.APARTE_KEEP_TEST_FILES !== '1') rmSync(dir, { recursive: true, force: true });
});

/** The frequency with the most energy in `samples` (48 kHz), 100–4000 Hz in 10 Hz steps. */
function dominantHz(samples, rate) {
  let best = { hz: 0, power: -1 };
  for (let hz = 100; hz <= 4000; hz += 10) {
    let re = 0, im = 0;
    const w = (2 * Math.PI * hz) / rate;
    for (let i = 0; i < samples.length; i++) {
      re += samples[i] * Math.cos(w * i);
      im += samples[i] * Math.sin(w * i);
    }
    const power = re * re + im * im;
    if (power > best.power) best = { hz, power };
  }
  return best.hz;
}

async function firefoxCall({ pageOffers }) {
  const tag = pageOffers ? 'page-offers' : 'cli-offers';
  const capture = await startCapture(p(`${tag}.pcap`));
  captures.push(capture);
  const page = await browser.newPage();
  try {
    await callOnPage(page, capture, { pageOffers, tag });
  } finally {
    // Closed even when the call failed: a page left in a call would send into the next test.
    await page.close();
  }
}

async function callOnPage(page, capture, { pageOffers, tag }) {
  const room = newRoom();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${server.url}/r/${room}`);
  const runCli = () => spawn(binary('aparte'), [
    'call', '--server', server.wsUrl, `--room=${room}`, '--loopback-only', '--tofu', '--relay-only',
    '--input', 'tone', '--duration', '6', '--output', p(`${tag}-heard.wav`), '--stats-json', p(`${tag}.json`),
  ], { env: { ...process.env, APARTE_HOME: p(`${tag}-home`) }, stdio: ['ignore', 'ignore', 'pipe'] });
  let cli;
  let log = '';
  const joinPage = async () => {
    await page.click('#relay-only');
    await page.click('#join-btn');
  };
  if (pageOffers) {
    // The CLI waits in the room; the page finds it and offers.
    cli = runCli();
    cli.stderr.on('data', (d) => (log += d));
    const deadline = Date.now() + WAIT_MS;
    while (!/waiting/i.test(log) && Date.now() < deadline) await new Promise((resolve) => cli.stderr.once('data', resolve));
    await joinPage();
  } else {
    // The page waits; the CLI finds it and offers.
    await joinPage();
    await page.waitForFunction(() => window.aparte.signaling === 'joined', { timeout: WAIT_MS });
    cli = runCli();
    cli.stderr.on('data', (d) => (log += d));
  }
  const code = await new Promise((resolve) => cli.on('exit', resolve));
  assert.equal(code, 0, `aparte call failed:\n${log}\npage errors: ${errors}`);
  await page.waitForFunction(() => window.aparte.ended !== null, { timeout: WAIT_MS });
  const pub = await page.evaluate(() => JSON.parse(JSON.stringify(window.aparte)));
  const digits = await page.$eval('#sas-digits', (e) => e.textContent);
  const sasLine = /SAS: "([a-z ]+)"\s+\((\d{4} \d{4})\)/.exec(log);
  assert.ok(sasLine, `the CLI showed no SAS:\n${log}`);
  assert.equal(sasLine[2], digits, 'the same SAS on both sides');
  assert.equal(pub.ended, 'the peer hung up');
  await capture.stop();
  const wire = assertConstantSizeOnTheWire(readFileSync(p(`${tag}.pcap`)), server.turnPort);
  const report = JSON.parse(readFileSync(p(`${tag}.json`), 'utf8'));
  assert.equal(report.relayed, true, 'relayed through TURN');
  const rejected = (r) => Object.values(r).reduce((a, b) => a + b, 0);
  assert.equal(rejected(report.frames_rejected), 0, 'the CLI rejected none of the Firefox frames');
  assert.equal(rejected(pub.media.rejected), 0, 'the page rejected none of the CLI frames');
  // Padded frames (the gate's code 3 packets) are Opus like any: libopus decodes every one.
  assert.equal(report.frames_decode_failed, 0, 'the CLI decoded every browser frame');
  assert.ok(report.frames_decrypted >= 0.95 * pub.media.sent, `CLI decrypted ${report.frames_decrypted} of ${pub.media.sent}`);
  assert.ok(pub.media.decrypted >= 0.95 * report.frames_protected, `page decrypted ${pub.media.decrypted} of ${report.frames_protected}`);
  // What the CLI heard is Firefox's tone.
  const heard = readWav(p(`${tag}-heard.wav`));
  const middle = heard.samples.subarray(heard.rate, heard.rate * 2);
  const hz = dominantHz(middle, heard.rate);
  assert.ok(dbfs(middle) > -40, `the recording is silent (${dbfs(middle).toFixed(1)} dBFS)`);
  console.log(JSON.stringify({
    browser: await browser.version(),
    offerer: pageOffers ? 'page' : 'cli',
    setup_ms_page: pub.setupMs,
    page_sent: pub.media.sent,
    cli_decrypted: report.frames_decrypted,
    cli_sent: report.frames_protected,
    page_decrypted: pub.media.decrypted,
    overhead_per_frame: pub.media.overheadBytes / pub.media.sent,
    opus_payload_sizes: pub.media.payloadSizes,
    encoder_payload_sizes: pub.media.encoderPayloadSizes,
    first_encoder_sizes: pub.media.firstEncoderSizes.join(' '),
    frames_dropped_not_cbr: pub.media.framesDroppedNotCbr,
    frames_before_first_sent: pub.media.framesBeforeFirstSent,
    frames_padded: pub.media.framesPadded,
    cli_frames_decode_failed: report.frames_decode_failed,
    cbr_moves: pub.media.cbrMoves,
    first_frame_sent_after_ms: 20 * pub.media.framesBeforeFirstSent,
    relayed_opus_sizes_on_the_wire: wire,
    heard_dbfs: dbfs(middle),
    heard_hz: hz,
  }));
  assert.ok(Math.abs(hz - 1000) <= 20, `the CLI heard ${hz} Hz, not Firefox's 1 kHz tone`);
  // Constant bitrate from the first frame: Firefox's encoder varies the size of its first
  // payloads (docs/WEB.md); the gate pads the smaller and drops the larger, so every payload
  // sealed has one size, the same whichever side offers: 81 B, the page's 32 kbit/s.
  assert.equal(assertOneSize(pub.media), 81, 'Firefox sends the page\'s 32 kbit/s');
  assert.ok(pub.media.framesPadded > 0, 'Firefox\'s ramp-up (smaller payloads) went out padded');
}

test('Firefox ↔ CLI through the TURN relay (the CLI offers): same SAS, frames both ways, the tone arrives', { timeout: 120000 }, async () => {
  await firefoxCall({ pageOffers: false });
});

test('Firefox ↔ CLI through the TURN relay (the page offers): same SAS, frames both ways, the tone arrives', { timeout: 120000 }, async () => {
  await firefoxCall({ pageOffers: true });
});
