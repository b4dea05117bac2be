// The media worker: every outgoing Opus frame is sealed and every incoming one opened here, in
// an RTCRtpScriptTransform, with the call's media keys (docs/PROTOCOL.md §7-§8). Until the main
// thread says media is allowed (keys confirmed, no identity alarm) nothing is sent and nothing
// is handed to the decoder; a frame that fails authentication is dropped, never decoded.
// The keys never leave this worker; it reports only counts and frame sizes.
import { FrameSender, FrameReceiver, Direction, REJECT_REASONS } from '../protocol/frame.js';

const state = {
  sender: null,
  receiver: null,
  allowed: false,
  stats: {
    sent: 0,
    sentBytes: 0,
    overheadBytes: 0,
    droppedBeforeKeys: 0,
    received: 0,
    decrypted: 0,
    refused: 0,
    rejected: Object.fromEntries(REJECT_REASONS.map((r) => [r, 0])),
    // Opus payload size → count (bounded), to check that the browser sends CBR Opus. Sizes
    // are no secret: each is visible on the wire as the sealed size minus 17-19 bytes.
    payloadSizes: {},
    // The sizes of the first 100 Opus payloads sent, in order (when a size differs, where).
    firstPayloadSizes: [],
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
    return;
  }
  const payload = new Uint8Array(frame.data);
  if (payload.length === 0) return;
  const sealed = state.sender.protect(payload);
  frame.data = sealed.buffer;
  const s = state.stats;
  s.sent += 1;
  s.sentBytes += sealed.length;
  s.overheadBytes += sealed.length - payload.length;
  if (s.firstPayloadSizes.length < 100) s.firstPayloadSizes.push(payload.length);
  if (s.payloadSizes[payload.length] !== undefined || Object.keys(s.payloadSizes).length < 64) {
    s.payloadSizes[payload.length] = (s.payloadSizes[payload.length] ?? 0) + 1;
  }
  controller.enqueue(frame);
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
