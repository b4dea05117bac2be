// Cost of the browser peer's protocol code on this machine's V8: sealing and opening an 80-byte
// Opus frame (the browser's CBR size), and a full handshake with identities (both sides).
// Run: node web/bench.mjs
import { FrameSender, FrameReceiver, Direction } from './src/protocol/frame.js';
import { Handshake, callParams } from './src/protocol/handshake.js';
const chain = crypto.getRandomValues(new Uint8Array(32));
const tx = new FrameSender(Direction.I2R, chain), rx = new FrameReceiver(Direction.I2R, chain);
const payload = new Uint8Array(80);
for (let i = 0; i < 2000; i++) rx.open(tx.protect(payload), 0);
const n = 16000; let t = performance.now();
const frames = []; for (let i = 0; i < n; i++) frames.push(tx.protect(payload));
const seal = (performance.now() - t) / n * 1000; t = performance.now();
for (const f of frames) rx.open(f, 0);
const open = (performance.now() - t) / n * 1000;
const te = new TextEncoder();
const params = callParams(te.encode('r'.repeat(23)), te.encode('sha-256 AA'), te.encode('sha-256 BB'));
t = performance.now();
for (let i = 0; i < 20; i++) { const { handshake: a, commit } = Handshake.initiator(params, crypto.getRandomValues(new Uint8Array(32))); const b = Handshake.responder(params, crypto.getRandomValues(new Uint8Array(32))); a.receive(b.receive(a.receive(b.receive(commit)))); }
console.log(JSON.stringify({ seal_us_per_80B_frame: seal.toFixed(1), open_us_per_frame: open.toFixed(1), handshake_ms_both_sides_with_identities: ((performance.now() - t) / 20).toFixed(1), cpu_share_of_one_core_at_50fps_both_ways: ((seal + open) * 50 / 1e6 * 100).toFixed(3) + '%' }));
