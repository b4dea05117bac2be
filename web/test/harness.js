// Helpers for the browser tests: the workspace binaries, a real `aparte-signaling` process,
// headless Debian Chromium through playwright-core, speech WAVs, and WAV reading.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const root = path.resolve(fileURLToPath(new URL('../..', import.meta.url)));
/** How long a test waits for something a process or the page should do. */
export const WAIT_MS = 30000;

/** A workspace binary (debug build); fails with how to build it. */
export function binary(name) {
  const dirs = [
    process.env.APARTE_BIN_DIR,
    process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, 'debug'),
    path.join(root, 'target/debug'),
  ].filter(Boolean);
  const found = dirs.map((d) => path.join(d, name)).find((p) => existsSync(p));
  assert.ok(found, `${name} is not built (looked in ${dirs.join(', ')}): run bash scripts/test, or cargo build --bins`);
  return found;
}

/** A workspace example binary (debug build); fails with how to build it (`crate`: its package). */
export function example(name, crate) {
  const dirs = [
    process.env.APARTE_BIN_DIR && path.join(process.env.APARTE_BIN_DIR, 'examples'),
    process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, 'debug/examples'),
    path.join(root, 'target/debug/examples'),
  ].filter(Boolean);
  const found = dirs.map((d) => path.join(d, name)).find((p) => existsSync(p));
  assert.ok(found, `the example ${name} is not built (looked in ${dirs.join(', ')}): run cargo build -p ${crate} --example ${name}`);
  return found;
}

/**
 * Per-segment NCC of the recording `heard` against the looping source `said` (the CLI tests'
 * `segment_nccs`, through the `heard_ncc` example of the tests crate): `{ lag, global_ncc,
 * nccs, mean, median }`.
 */
export function heardNcc(said, heard) {
  const out = spawnSync(example('heard_ncc', 'aparte-e2e-tests'), [said, heard], { encoding: 'utf8' });
  assert.equal(out.status, 0, `heard_ncc failed: ${out.stderr}`);
  return JSON.parse(out.stdout);
}

/** The Chromium to drive. */
export const CHROMIUM = process.env.APARTE_CHROMIUM ?? '/usr/bin/chromium';

/**
 * `[program, args]` that run `bin args` inside network namespace `netns` (`ip netns exec`,
 * which execs it: the pid is the program's), or as is without one.
 */
export function inNetns(netns, bin, args) {
  return netns ? ['ip', ['netns', 'exec', netns, bin, ...args]] : [bin, args];
}

/**
 * Starts `aparte-signaling` on loopback (or `listen`, in `netns`) with `args`; resolves
 * `{ url, wsUrl, addr, turnPort, stop }`.
 */
export async function startServer(args = [], { netns = null, listen = '127.0.0.1:0' } = {}) {
  const child = spawn(...inNetns(netns, binary('aparte-signaling'), [
    '--listen', listen, '--metrics-listen', 'off', '--log', 'warn,turn=off', ...args,
  ]), { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  let turnPort = null;
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('aparte-signaling did not start')), WAIT_MS);
    lines.on('line', (line) => {
      const t = /^turn listening on udp \S+:(\d+)$/.exec(line);
      if (t) turnPort = Number(t[1]);
      const m = /^listening on http:\/\/(\S+)$/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`aparte-signaling exited with ${code}`)));
  });
  return {
    addr,
    turnPort,
    url: `http://${addr}`,
    wsUrl: `ws://${addr}/ws`,
    stop() {
      child.kill();
      return new Promise((resolve) => (child.exitCode !== null ? resolve() : child.on('exit', resolve)));
    },
  };
}

/** A fresh room id (`aparte-signaling room new`). */
export function newRoom() {
  const out = spawnSync(binary('aparte-signaling'), ['room', 'new'], { encoding: 'utf8' });
  assert.equal(out.status, 0, out.stderr);
  return out.stdout.trim().split(/\s+/).pop();
}

/** Speaks `text` into a WAV file (espeak-ng, 22.05 kHz mono). */
export function speak(text, file) {
  const out = spawnSync('espeak-ng', ['-v', 'en-us', '-s', '150', '-w', file, text]);
  assert.equal(out.status, 0, 'espeak-ng is required (scripts/install-deps installs it)');
}

/**
 * Launches headless Chromium with a fake microphone playing `wav` (looped); with `netns`, inside
 * that network namespace (through a wrapper script written to `dir`); `args`: more switches.
 */
export async function launchChromium(wav, { netns = null, dir = null, args = [] } = {}) {
  const { chromium } = await import('playwright-core');
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium; scripts/install-deps)`);
  let executablePath = CHROMIUM;
  if (netns) {
    executablePath = path.join(dir, 'chromium-in-netns');
    writeFileSync(executablePath, `#!/bin/sh\nexec ip netns exec '${netns}' '${CHROMIUM}' "$@"\n`);
    chmodSync(executablePath, 0o755);
  }
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--no-sandbox',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      ...(wav ? [`--use-file-for-fake-audio-capture=${wav}`] : []),
      '--autoplay-policy=no-user-gesture-required',
      ...args,
    ],
  });
}

/**
 * Opens the page in a new browser context (its own IndexedDB), records every request and
 * console error, and returns `{ page, context, requests, errors }`. `rawMicrophone`: see below.
 */
export async function openPage(browser, url, contextOptions = {}, { rawMicrophone = false, tapPlaintext = false } = {}) {
  const context = await browser.newContext({ acceptDownloads: true, ...contextOptions });
  const page = await context.newPage();
  if (tapPlaintext) await context.route('**/worker.js', tapWorker);
  if (rawMicrophone) {
    // Test only: the page's own getUserMedia call, with Chromium's capture processing (echo
    // cancellation, noise suppression, gain control) off, so the waveform the peer records
    // can be compared with the fake microphone's file sample by sample.
    await page.addInitScript(() => {
      const md = navigator.mediaDevices;
      const gum = md.getUserMedia.bind(md);
      md.getUserMedia = (c) => gum({
        ...c,
        audio: { ...(typeof c.audio === 'object' ? c.audio : {}), echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    });
  }
  const requests = [];
  const errors = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  return { page, context, requests, errors };
}

// Test only, never in the product: a prologue for the page's media worker that keeps a copy of
// every Opus frame the encoder hands to the send transform, before the worker seals it, in
// `self.__aparteTestPlaintext` (read with `plaintextFrames`). It takes the worker's
// `onrtctransform` handler and gives it the same transformer with the send side's readable
// piped through the tap; the worker's own code runs unchanged after it.
const TAP_PROLOGUE = `(() => {
  const frames = [];
  self.__aparteTestPlaintext = frames;
  let handler = null;
  Object.defineProperty(self, 'onrtctransform', { configurable: true, get: () => handler, set: (fn) => { handler = fn; } });
  self.addEventListener('rtctransform', (event) => {
    const t = event.transformer;
    let readable = t.readable;
    if (t.options.side === 'send') {
      readable = readable.pipeThrough(new TransformStream({
        transform(frame, controller) {
          if (frames.length < 10000) frames.push(new Uint8Array(frame.data).slice());
          controller.enqueue(frame);
        },
      }));
    }
    handler({ transformer: { readable, writable: t.writable, options: t.options } });
  });
})();
`;

async function tapWorker(route) {
  const response = await route.fetch();
  await route.fulfill({ response, body: TAP_PROLOGUE + (await response.text()) });
}

/** The plaintext Opus frames the tapped worker saw (`tapPlaintext`), in hex. */
export async function plaintextFrames(page) {
  const workers = page.workers();
  assert.equal(workers.length, 1, 'one media worker');
  const frames = await workers[0].evaluate(() => (self.__aparteTestPlaintext ?? null)
    ?.map((f) => Array.from(f, (b) => b.toString(16).padStart(2, '0')).join('')));
  assert.ok(frames, 'the worker was not tapped');
  return frames;
}

/**
 * Scans `capture` for the `frames` (hex) with the CLI tests' PlaintextScanner (the
 * `plaintext_scan` example): `{ frames, scannable, found }`.
 */
export function scanForPlaintext(frames, framesFile, capture) {
  writeFileSync(framesFile, `${frames.join('\n')}\n`);
  const out = spawnSync(example('plaintext_scan', 'aparte-e2e-tests'), [framesFile, capture], { encoding: 'utf8' });
  assert.equal(out.status, 0, `plaintext_scan failed: ${out.stderr}`);
  return JSON.parse(out.stdout);
}

/** Joins the room shown in the form; `relayOnly` ticks the box. */
export async function join(page, { relayOnly = false, peerName = '' } = {}) {
  if (relayOnly) await page.check('#relay-only');
  if (peerName) await page.fill('#peer-name', peerName);
  await page.click('#join-btn');
}

/** Mono 16-bit PCM samples and rate of a WAV file (as `aparte --output` and espeak write). */
export function readWav(file) {
  const b = readFileSync(file);
  assert.equal(b.toString('ascii', 0, 4), 'RIFF');
  let at = 12;
  let rate = 0, channels = 1, bits = 16;
  while (at + 8 <= b.length) {
    const id = b.toString('ascii', at, at + 4);
    const size = b.readUInt32LE(at + 4);
    if (id === 'fmt ') {
      channels = b.readUInt16LE(at + 10);
      rate = b.readUInt32LE(at + 12);
      bits = b.readUInt16LE(at + 22);
    } else if (id === 'data') {
      assert.equal(bits, 16, '16-bit WAV expected');
      const n = Math.floor(Math.min(size, b.length - at - 8) / 2 / channels);
      const samples = new Float32Array(n);
      for (let i = 0; i < n; i++) samples[i] = b.readInt16LE(at + 8 + i * 2 * channels) / 32768;
      return { rate, samples };
    }
    at += 8 + size + (size % 2);
  }
  throw new Error('no data chunk');
}

/** RMS level of samples, dBFS. */
export function dbfs(samples) {
  let sum = 0;
  for (const s of samples) sum += s * s;
  return 10 * Math.log10(sum / Math.max(1, samples.length) + 1e-12);
}

/** Captures all loopback traffic into `file` (tcpdump, needs root) until `stop()`. */
export async function startCapture(file) {
  const child = spawn('tcpdump', ['-i', 'lo', '-U', '-n', '-s', '0', '-w', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  const lines = createInterface({ input: child.stderr });
  await new Promise((resolve, reject) => {
    lines.on('line', (l) => l.includes('listening on') && resolve());
    child.on('error', () => reject(new Error('tcpdump is needed: bash scripts/install-deps')));
    child.on('exit', (code) => reject(new Error(`tcpdump exited with ${code} (run as root)`)));
  });
  return {
    stop() {
      // Once only: a second stop (an `after` hook tidying up) finds it gone.
      if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
      const exited = new Promise((resolve) => child.on('exit', resolve));
      child.kill('SIGINT'); // tcpdump flushes and closes the file
      return exited;
    },
  };
}

/**
 * The audio packets in a loopback capture, per RTP stream (SSRC) of Opus (payload type 111,
 * Chromium's and the CLI's, or 109, Firefox's):
 * the RTP packet sizes in RTP sequence order. RTP is found in any UDP datagram, bare or carried
 * by TURN (ChannelData, or the DATA of a Send or Data indication: Chromium and the CLI use
 * channels, Firefox indications); each packet crosses loopback on more than one leg (to the
 * relay, from it), so it is counted once, by SSRC and sequence number, and must have the same
 * size on every leg. SRTP hides the e2ee header, whose length grows with the frame counter
 * (17, 18, then 19 bytes of overhead, §7), so a constant-size stream has at most three sizes,
 * one byte apart, never decreasing. (`turnPort` is kept for the callers; every leg counts.)
 */
const OPUS_PAYLOAD_TYPES = new Set([109, 111]);
export function relayedOpusSizes(pcap, turnPort) { // eslint-disable-line no-unused-vars
  assert.equal(pcap.readUInt32LE(0), 0xa1b2c3d4, 'a little-endian pcap file');
  assert.equal(pcap.readUInt32LE(20), 1, 'Ethernet link type (tcpdump -i lo)');
  const streams = new Map();
  const seen = new Map();
  const rtpIn = (data) => {
    if (data.length >= 4 && (data[0] & 0xc0) === 0x40) return data.subarray(4, 4 + data.readUInt16BE(2)); // ChannelData
    if (data.length >= 20 && (data.readUInt16BE(0) === 0x0016 || data.readUInt16BE(0) === 0x0017) && data.readUInt32BE(4) === 0x2112a442) {
      // A Send or Data indication: its DATA attribute (0x0013).
      const end = Math.min(data.length, 20 + data.readUInt16BE(2));
      for (let at = 20; at + 4 <= end;) {
        const type = data.readUInt16BE(at);
        const len = data.readUInt16BE(at + 2);
        if (type === 0x0013) return data.subarray(at + 4, at + 4 + len);
        at += 4 + len + ((4 - (len % 4)) % 4);
      }
      return null;
    }
    return data;
  };
  for (let at = 24; at + 16 <= pcap.length;) {
    const len = pcap.readUInt32LE(at + 8);
    const frame = pcap.subarray(at + 16, at + 16 + len);
    at += 16 + len;
    if (frame.length < 14 + 20 + 8 || frame.readUInt16BE(12) !== 0x0800) continue;
    const ip = frame.subarray(14);
    if (ip[9] !== 17) continue; // UDP
    const udp = ip.subarray((ip[0] & 15) * 4);
    const rtp = rtpIn(udp.subarray(8));
    if (!rtp || rtp.length < 13 || (rtp[0] & 0xc0) !== 0x80 || !OPUS_PAYLOAD_TYPES.has(rtp[1] & 0x7f)) continue;
    const ssrc = rtp.readUInt32BE(8);
    const seq = rtp.readUInt16BE(2);
    const key = `${ssrc}/${seq}`;
    if (seen.has(key)) {
      assert.equal(rtp.length, seen.get(key), `RTP packet ${key}: another size on another leg`);
      continue;
    }
    seen.set(key, rtp.length);
    const packets = streams.get(ssrc) ?? [];
    packets.push({ seq, size: rtp.length });
    streams.set(ssrc, packets);
  }
  for (const packets of streams.values()) {
    // Sequence numbers from the first one seen, across a wrap.
    const first = packets[0].seq;
    packets.sort((a, b) => ((a.seq - first + 65536) % 65536) - ((b.seq - first + 65536) % 65536));
  }
  return streams;
}

/**
 * Checks that every Opus packet in a loopback capture, from the first, is at one
 * constant Opus size (the browser's and the CLI's stream each): per stream, the sealed size
 * only grows with the e2ee counter's length (17, 18, then 19 bytes of overhead, §7), so it has
 * at most three sizes, one byte apart, never decreasing. Returns size → count per stream.
 */
export function assertConstantSizeOnTheWire(pcap, turnPort) {
  const streams = relayedOpusSizes(pcap, turnPort);
  assert.equal(streams.size, 2, `two Opus streams through the relay: ${[...streams.keys()]}`);
  const counts = [];
  for (const [ssrc, packets] of streams) {
    const sizes = packets.map((x) => x.size);
    assert.ok(sizes.length >= 200, `stream ${ssrc}: ${sizes.length} packets`);
    assert.ok(sizes.every((x, i) => i === 0 || x === sizes[i - 1] || x === sizes[i - 1] + 1),
      `stream ${ssrc} is not at one size from its first packet: ${sizes.join(' ')}`);
    assert.ok(sizes.at(-1) - sizes[0] <= 2, `stream ${ssrc} is not CBR: ${[...new Set(sizes)]}`);
    const c = {};
    for (const size of sizes) c[size] = (c[size] ?? 0) + 1;
    counts.push(c);
  }
  return counts;
}

/**
 * Checks the page's counters (`window.aparte.media`) for one sealed Opus size: every payload
 * sealed, from the first, at the gate's size; the gate's counters present.
 */
export function assertOneSize(media) {
  const sizes = Object.keys(media.payloadSizes).map(Number);
  assert.equal(sizes.length, 1, `Opus payload sizes sealed: ${JSON.stringify(media.payloadSizes)}`);
  assert.equal(media.payloadSizes[sizes[0]], media.sent, 'every sealed payload counted at that size');
  assert.equal(sizes[0], media.cbrSize, 'the size the gate holds');
  assert.ok(media.firstPayloadSizes.length > 0 && media.firstPayloadSizes.every((x) => x === sizes[0]),
    `first sealed payload sizes: ${media.firstPayloadSizes}`);
  assert.ok(Number.isInteger(media.framesDroppedNotCbr) && media.framesDroppedNotCbr >= media.framesBeforeFirstSent,
    `dropped-frame counters: ${media.framesDroppedNotCbr}, ${media.framesBeforeFirstSent}`);
  return sizes[0];
}

/** Runs `ip ARGS` (or another program in a namespace); fails loudly. */
export function sh(program, args) {
  const out = spawnSync(program, args, { encoding: 'utf8' });
  assert.equal(out.status, 0, `${program} ${args.join(' ')}: ${out.stderr}`);
  return out.stdout;
}

/**
 * Two hosts on one link: network namespaces `a` and `b` (names unique to this process), joined
 * by a veth pair (`a` has 10.249.0.1/24, `b` 10.249.0.2/24, each device named `eth0`), each with
 * loopback up. `remove()` deletes both. Needs root.
 */
export function twoHosts(tag) {
  const a = `aparte-web-${tag}-${process.pid}-a`;
  const b = `aparte-web-${tag}-${process.pid}-b`;
  const remove = () => {
    for (const ns of [a, b]) spawnSync('ip', ['netns', 'del', ns]);
  };
  remove();
  try {
    sh('ip', ['netns', 'add', a]);
    sh('ip', ['netns', 'add', b]);
    const va = `vwa${process.pid % 100000}`, vb = `vwb${process.pid % 100000}`;
    sh('ip', ['link', 'add', va, 'type', 'veth', 'peer', 'name', vb]);
    sh('ip', ['link', 'set', va, 'netns', a]);
    sh('ip', ['link', 'set', vb, 'netns', b]);
    for (const [ns, dev, addr] of [[a, va, '10.249.0.1/24'], [b, vb, '10.249.0.2/24']]) {
      sh('ip', ['-n', ns, 'link', 'set', dev, 'name', 'eth0']);
      sh('ip', ['-n', ns, 'addr', 'add', addr, 'dev', 'eth0']);
      sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }
  } catch (e) {
    remove();
    throw e;
  }
  return { a, b, aAddr: '10.249.0.1', bAddr: '10.249.0.2', remove };
}
