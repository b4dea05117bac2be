// The media worker: every outgoing Opus frame is sealed and every incoming one opened here, in
// an RTCRtpScriptTransform, with the call's media keys (docs/PROTOCOL.md §7-§8). Until the main
// thread says media is allowed (keys confirmed, no identity alarm) nothing is sent and nothing
// is handed to the decoder; a frame that fails authentication is dropped, never decoded.
// The keys never leave this worker; it reports only counts and frame sizes. Every outgoing
// Opus payload passes the constant-size gate (cbr.js) first: only payloads of one size are
// sealed (smaller ones padded up to it); a larger one is dropped, its e2ee counter used up
// (the peer conceals it).
import { FrameSender, FrameReceiver, Direction, REJECT_REASONS } from '../protocol/frame.js';
import { CbrGate } from './cbr.js';

const state = {
  sender: null,
  receiver: null,
  // One per call: a rebuilt peer connection keeps it, as it keeps the keys.
  gate: new CbrGate(),
  allowed: false,
  stats: {
    sent: 0,
    sentBytes: 0,
    overheadBytes: 0,
    droppedBeforeKeys: 0,
    // The constant-size gate: payloads dropped for being larger than the size, those sent
    // padded up to it, those dropped before the first one was sent, the size, its moves.
    framesDroppedNotCbr: 0,
    framesPadded: 0,
    framesBeforeFirstSent: 0,
    cbrSize: null,
    cbrMoves: 0,
    // The sizes the encoder produced (size → count, bounded), before the gate.
    encoderPayloadSizes: {},
    received: 0,
    decrypted: 0,
    refused: 0,
    rejected: Object.fromEntries(REJECT_REASONS.map((r) => [r, 0])),
    // Sealed Opus payload size → count (bounded): one size, by the gate. Sizes are no secret:
    // each is visible on the wire as the sealed size minus 17-19 bytes.
    payloadSizes: {},
    // The sizes of the first 100 Opus payloads sealed, in order.
    firstPayloadSizes: [],
    // The sizes of the first 100 payloads the encoder produced once keys were allowed, in
    // order (what Firefox's ramp-up looks like; never sent as such).
    firstEncoderSizes: [],
    // Gap between the e2ee indices of consecutive incoming frames → count (bounded): 1 for
    // 20 ms packets, 2 and 3 for the CLI's 40 and 60 ms packets (its counter advances by the
    // packet's 20 ms frames, DECISIONS D12). Counters are in the clear on the wire anyway.
    receivedSpans: {},
  },
  lastIndex: -1,
};

self.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === 'keys') {
    const initiator = msg.role === 'initiator';
    state.sender = new FrameSender(initiator ? Direction.I2R : Direction.R2I, msg.send);
    state.receiver = new FrameReceiver(initiator ? Direction.R2I : Direction.I2R, msg.receive);
    msg.send.fill(0);
    msg.receive.fill(0);
    state.lastIndex = -1;
  } else if (msg.type === 'allow') {
    state.allowed = Boolean(msg.allowed) && state.sender !== null;
  } else if (msg.type === 'stop') {
    state.allowed = false;
    state.sender = null;
    state.receiver = null;
  }
};

function report() {
  const s = state.stats;
  if (state.receiver) s.rejected = { ...state.receiver.rejected };
  self.postMessage({ type: 'stats', stats: s });
}
setInterval(report, 250);

function seal(frame, controller) {
  if (!state.allowed) {
    state.stats.droppedBeforeKeys += 1;
    // Not sent, but the gate learns the encoder's size from it.
    if (frame.data.byteLength > 0) state.gate.observe(new Uint8Array(frame.data));
    return;
  }
  const encoded = new Uint8Array(frame.data);
  if (encoded.length === 0) return;
  const s = state.stats;
  count(s.encoderPayloadSizes, encoded.length);
  if (s.firstEncoderSizes.length < 100) s.firstEncoderSizes.push(encoded.length);
  const payload = state.gate.admit(encoded);
  s.framesDroppedNotCbr = state.gate.dropped;
  s.framesPadded = state.gate.padded;
  s.framesBeforeFirstSent = state.gate.beforeFirstSent;
  s.cbrSize = state.gate.size;
  s.cbrMoves = state.gate.moves;
  if (payload === null) {
    // Never sent: its counter is used up, so the peer's index stays a 20 ms clock.
    state.sender.skip();
    return;
  }
  const sealed = state.sender.protect(payload);
  frame.data = sealed.buffer;
  s.sent += 1;
  s.sentBytes += sealed.length;
  s.overheadBytes += sealed.length - payload.length;
  if (s.firstPayloadSizes.length < 100) s.firstPayloadSizes.push(payload.length);
  count(s.payloadSizes, payload.length);
  controller.enqueue(frame);
}

/** Adds one to `sizes[size]`, keeping at most 64 sizes. */
function count(sizes, size) {
  if (sizes[size] !== undefined || Object.keys(sizes).length < 64) sizes[size] = (sizes[size] ?? 0) + 1;
}

function open(frame, controller) {
  const s = state.stats;
  s.received += 1;
  if (!state.allowed || !state.receiver) {
    s.refused += 1;
    return;
  }
  try {
    const { payload, index } = state.receiver.open(new Uint8Array(frame.data), performance.now());
    frame.data = payload.buffer;
    s.decrypted += 1;
    if (index > state.lastIndex) {
      const gap = state.lastIndex < 0 ? 1 : Math.min(index - state.lastIndex, 64);
      s.receivedSpans[gap] = (s.receivedSpans[gap] ?? 0) + 1;
      state.lastIndex = index;
    }
    controller.enqueue(frame);
  } catch {
    // Counted by the receiver, by reason; never decoded.
  }
}

self.onrtctransform = (event) => {
  const { readable, writable, options } = event.transformer;
  const step = options.side === 'send' ? seal : open;
  readable.pipeThrough(new TransformStream({ transform: step })).pipeTo(writable);
};
