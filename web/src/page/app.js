// The browser peer's page: joins a room on this server, sets up WebRTC with the peer (an
// `aparte` CLI or another browser) exactly as crates/client/src/call.rs does, runs the e2ee
// handshake over the signaling relay bound to both DTLS fingerprints, protects audio in a
// worker, and shows the state, the SAS and the peer's captions. Nothing here logs a key, the
// SAS, audio or caption text.
import { CallSecurity, LABELS } from '../protocol/session.js';
import { identityFingerprint, isPeerName } from '../protocol/identity.js';
import { publicKey, HandshakeError } from '../protocol/handshake.js';
import { fromHex, toHex, utf8 } from '../protocol/bytes.js';
import { dtlsFingerprint, forceOpusCbr, candidateType } from './sdp.js';
import { parsePeerMessage, decodeCaption, toWebVtt } from './messages.js';
import { loadIdentity, loadKnownPeers, saveKnownPeers } from './store.js';

const ROOM_ID = /^[A-Za-z0-9_-]{22,64}$/;
/** A call whose keys are not confirmed on a connected link this long after both joined ends. */
const SETUP_TIMEOUT_MS = 30000;
const MAX_EARLY = 16;

const $ = (id) => document.getElementById(id);
const nowUnix = () => Math.floor(Date.now() / 1000);

/** What a test (or a curious person) may read: states and counters, never secrets. */
const pub = {
  signaling: 'idle',
  role: null,
  link: 'new',
  security: 'not started',
  verified: false,
  mediaAllowed: false,
  media: null,
  captions: { received: 0, malformed: 0 },
  dataRejected: 0,
  candidates: { local: [], remote: [] },
  setupMs: null,
  ended: null,
  iceRestarts: 0,
  rebuilds: 0,
  // The browser's own receive statistics of the peer's audio (RTCInboundRtpStreamStats:
  // packets, decoded and concealed samples, energy), refreshed with the worker's counts.
  inbound: null,
};
window.aparte = pub;

let call = null;

function show(id, on) {
  $(id).hidden = !on;
}

function setText(id, text) {
  $(id).textContent = text;
}

function render() {
  setText('signaling-state', pub.signaling);
  setText('link-state', pub.link);
  setText('security-state', pub.security);
  document.body.dataset.security = pub.security;
  document.body.dataset.link = pub.link;
  const m = pub.media;
  if (m) {
    const rejected = Object.values(m.rejected).reduce((a, b) => a + b, 0);
    setText('frames', `sent ${m.sent} · decrypted ${m.decrypted} · rejected ${rejected}`);
  }
}

function status(text) {
  setText('message', text);
}

// ---- microphone -----------------------------------------------------------------------

async function listMicrophones() {
  const select = $('mic');
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audioinput');
  const keep = select.value;
  select.replaceChildren();
  devices.forEach((d, i) => {
    const o = document.createElement('option');
    o.value = d.deviceId;
    o.textContent = d.label || `microphone ${i + 1}`;
    select.append(o);
  });
  if (keep && devices.some((d) => d.deviceId === keep)) select.value = keep;
}

// ---- signaling ----------------------------------------------------------------------------

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function relay(payload) {
  if (call?.ws?.readyState === WebSocket.OPEN) call.ws.send(JSON.stringify({ type: 'relay', payload }));
}

function onServerMessage(msg) {
  switch (msg.type) {
    case 'welcome':
      break;
    case 'joined':
      pub.signaling = 'joined';
      call.iceServers = msg.ice_servers;
      if (msg.peers.length > 0) startPeer('initiator');
      else status('Waiting for the other person to join…');
      break;
    case 'peer_joined':
      if (!call.role) startPeer('responder');
      break;
    case 'peer_left':
      if (msg.reason === 'left' || !call.setUp) end('the peer left');
      else status('The peer dropped off the server; the call goes on while audio flows.');
      break;
    case 'relay':
      onPeerMessage(parsePeerMessage(msg.payload));
      break;
    case 'error':
      if (msg.code.startsWith('token_')) {
        end(`the server refused the join: ${msg.code.replace(/_/g, ' ')}`);
        $('token').focus();
      } else if (['room_full', 'version_mismatch', 'invalid_room_id'].includes(msg.code)) {
        end(`the server refused the join: ${msg.code.replace(/_/g, ' ')}`);
      }
      break;
    case 'shutdown':
      status('The signaling server is restarting.');
      break;
    default:
      break;
  }
  render();
}

// ---- WebRTC -------------------------------------------------------------------------------

function startPeer(role) {
  call.role = role;
  // Peer messages wait for the peer connection (the certificate takes a moment).
  call.ready = setUpPeer(role).catch((e) => end(`could not set up the call: ${e.message}`));
}

async function setUpPeer(role) {
  status('Setting up the call…');
  pub.role = role === 'initiator' ? 'offerer' : 'answerer';
  call.bothJoinedAt = performance.now();
  call.setupTimer = setTimeout(() => {
    if (!call.setUp) end('no connection within 30 s (no path between the peers, or the key exchange is stuck)');
  }, SETUP_TIMEOUT_MS);
  // One certificate for the whole call: a rebuilt peer connection keeps the DTLS fingerprint
  // the e2ee handshake is bound to (as the CLI's rebuild does).
  call.certificate = await RTCPeerConnection.generateCertificate({ name: 'ECDSA', namedCurve: 'P-256' });
  const worker = new Worker('/worker.js');
  call.worker = worker;
  worker.onmessage = (e) => {
    if (e.data.type === 'stats') {
      pub.media = e.data.stats;
      // Defence in depth: the speaker stays muted until frames are seen opening in the worker
      // (a receiver without the transform would hand sealed frames to the decoder: noise).
      $('remote-audio').muted = !(pub.mediaAllowed && pub.media.decrypted > 0);
      if (pub.setupMs === null && pub.media.decrypted > 0) {
        pub.setupMs = Math.round(performance.now() - call.bothJoinedAt);
      }
      if (call.pc) refreshInbound(call.pc);
      render();
    }
  };
  newPeerConnection();
  if (role === 'initiator') await sendOffer(false);
}

/**
 * A peer connection for the call (the first one, or a rebuild's): our track through the
 * worker's send transform, every receiver through its receive transform, the pre-negotiated
 * data channel, and the handlers. The worker, its keys and counters, and the e2ee session carry
 * over a rebuild unchanged.
 */
function newPeerConnection() {
  const pc = new RTCPeerConnection({
    iceServers: call.iceServers,
    iceTransportPolicy: call.relayOnly ? 'relay' : 'all',
    bundlePolicy: 'max-bundle',
    certificates: [call.certificate],
  });
  call.pc = pc;
  const worker = call.worker;
  const [track] = call.stream.getAudioTracks();
  const sender = pc.addTrack(track, call.stream);
  sender.transform = new RTCRtpScriptTransform(worker, { side: 'send' });
  // The receive transform goes on before any SDP: Chromium does not route the frames of a
  // receiver through a transform set later, in `ontrack` (measured: 0 of 141 frames).
  for (const t of pc.getTransceivers()) t.receiver.transform = new RTCRtpScriptTransform(worker, { side: 'receive' });
  pc.ontrack = (event) => {
    // A transceiver the offer created (not ours): its frames must go through the worker too.
    if (!event.receiver.transform) event.receiver.transform = new RTCRtpScriptTransform(worker, { side: 'receive' });
    $('remote-audio').srcObject = event.streams[0] ?? new MediaStream([event.track]);
  };
  // Both sides create the same pre-negotiated channel (crates/client/src/transport.rs).
  const dc = pc.createDataChannel('aparte', { negotiated: true, id: 0, ordered: true });
  dc.binaryType = 'arraybuffer';
  dc.bufferedAmountLowThreshold = 0;
  call.dc = dc;
  dc.onopen = () => {
    for (const frame of call.pendingData.splice(0)) dc.send(frame);
  };
  dc.onmessage = (e) => onDataFrame(new Uint8Array(e.data));
  pc.onicecandidate = (e) => {
    if (pc === call.pc && e.candidate && e.candidate.candidate) {
      pub.candidates.local.push(candidateType(e.candidate.candidate));
      relay({ kind: 'candidate', candidate: e.candidate.candidate });
    }
  };
  pc.onconnectionstatechange = () => {
    if (pc !== call.pc) return;
    pub.link = pc.connectionState;
    onLink(pc.connectionState);
    updateMediaGate();
    render();
  };
  return pc;
}

async function sendOffer(iceRestart) {
  const pc = call.pc;
  await pc.setLocalDescription(await pc.createOffer({ iceRestart }));
  if (pc === call.pc) relay({ kind: 'offer', sdp: pc.localDescription.sdp });
}

// ---- link recovery (docs/CLIENT.md "Link loss and ICE restart", as the CLI does it) -------

/** ICE restart, then a rebuilt peer connection if the restart has not brought the link back. */
const REBUILD_AFTER_MS = 1500;
/** A recovery attempt that has not brought the link back is tried again after this long. */
const RETRY_MS = 8000;
/** With the link down this long, the call ends. */
const LINK_DOWN_END_MS = 40000;

function onLink(state) {
  if (state === 'connected') {
    if (call.outage) {
      clearTimeout(call.outage.timer);
      clearTimeout(call.outage.giveUp);
      status(`Link back after ${Math.round(performance.now() - call.outage.since)} ms, same keys.`);
      call.outage = null;
    }
    return;
  }
  if (!call.setUp || call.outage || !['disconnected', 'failed'].includes(state)) return;
  // The link is lost. Only the offerer acts (both restarting at once would collide); the
  // answerer answers the restart offer, and follows a rebuild.
  call.outage = {
    since: performance.now(),
    attempt: 0,
    timer: null,
    giveUp: setTimeout(() => end('the connection was lost'), LINK_DOWN_END_MS),
  };
  status('Link lost: reconnecting…');
  if (call.role === 'initiator') recover();
}

async function recover() {
  const outage = call?.outage;
  if (!outage || call.ended) return;
  outage.attempt += 1;
  try {
    if (outage.attempt % 2 === 1) {
      pub.iceRestarts += 1;
      await sendOffer(true);
    } else {
      relay({ kind: 'rebuild' });
      rebuild();
      await sendOffer(false);
    }
  } catch {
    // Tried again below.
  }
  outage.timer = setTimeout(recover, outage.attempt % 2 === 1 ? REBUILD_AFTER_MS : RETRY_MS);
}

/** A new peer connection on the same certificate, keys and worker (the CLI's `rebuild`). */
function rebuild() {
  const old = call.pc;
  old.onconnectionstatechange = null;
  old.onicecandidate = null;
  old.ontrack = null;
  old.close();
  call.earlyCandidates = [];
  pub.rebuilds += 1;
  newPeerConnection();
  pub.link = call.pc.connectionState;
  updateMediaGate();
}

let inboundPending = false;
function refreshInbound(pc) {
  if (inboundPending || pc.connectionState === 'closed') return;
  inboundPending = true;
  pc.getStats().then((report) => {
    for (const r of report.values()) {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        pub.inbound = {
          packetsReceived: r.packetsReceived ?? 0,
          packetsLost: r.packetsLost ?? 0,
          totalSamplesReceived: r.totalSamplesReceived ?? 0,
          concealedSamples: r.concealedSamples ?? 0,
          totalAudioEnergy: r.totalAudioEnergy ?? 0,
        };
      }
    }
  }).catch(() => {}).finally(() => {
    inboundPending = false;
  });
}

function pinRemoteFingerprint(sdp) {
  const fp = dtlsFingerprint(sdp);
  if (!fp) throw new Error('the peer sent an SDP without a single, consistent DTLS fingerprint');
  if (call.remoteFingerprint && toHex(call.remoteFingerprint) !== toHex(fp)) {
    throw new Error("the peer's DTLS fingerprint changed during the call");
  }
  call.remoteFingerprint = fp;
}

async function onPeerMessage(msg) {
  if (!msg || !call) return;
  if (call.ready) await call.ready;
  try {
    switch (msg.kind) {
      case 'offer': {
        if (call.role !== 'responder' || !call.pc) return;
        pinRemoteFingerprint(msg.sdp);
        await call.pc.setRemoteDescription({ type: 'offer', sdp: forceOpusCbr(msg.sdp) });
        await flushCandidates();
        await call.pc.setLocalDescription(await call.pc.createAnswer());
        relay({ kind: 'answer', sdp: call.pc.localDescription.sdp });
        if (!call.security) startSecurity();
        break;
      }
      case 'answer':
        // (An answer to an offer of a connection since rebuilt finds no offer waiting.)
        if (call.role !== 'initiator' || call.pc?.signalingState !== 'have-local-offer') return;
        pinRemoteFingerprint(msg.sdp);
        await call.pc.setRemoteDescription({ type: 'answer', sdp: forceOpusCbr(msg.sdp) });
        await flushCandidates();
        if (!call.security) startSecurity();
        break;
      case 'candidate':
        pub.candidates.remote.push(candidateType(msg.candidate));
        if (!call.pc?.remoteDescription) {
          if (call.earlyCandidates.length < 64) call.earlyCandidates.push(msg.candidate);
        } else await addCandidate(msg.candidate);
        break;
      case 'handshake':
        if (!call.security) {
          if (call.earlyHandshake.length < 8) call.earlyHandshake.push(fromHex(msg.data));
        } else onHandshake(fromHex(msg.data));
        break;
      case 'rebuild':
        // The peer made a new peer connection (same certificate, same keys); so do we, and
        // its new offer follows.
        if (call.role !== 'responder' || !call.pc || !call.security) return;
        rebuild();
        break;
      default:
        break;
    }
  } catch (e) {
    end(`call refused: ${e.message}`);
  }
}

async function addCandidate(candidate) {
  try {
    await call.pc.addIceCandidate({ candidate, sdpMLineIndex: 0 });
  } catch {
    // A bad candidate is not fatal; ICE uses the others.
  }
}

async function flushCandidates() {
  for (const c of call.earlyCandidates.splice(0)) await addCandidate(c);
}

// ---- security -----------------------------------------------------------------------------

function startSecurity() {
  const local = dtlsFingerprint(call.pc.localDescription.sdp);
  if (!local) throw new Error('no DTLS fingerprint in our own SDP');
  call.security = new CallSecurity({
    role: call.role,
    roomId: utf8(call.room),
    localFingerprint: local,
    remoteFingerprint: call.remoteFingerprint,
    identitySecret: call.identity,
    peerName: call.peerName,
    knownPeers: call.knownPeers,
    policy: 'interactive',
  });
  pub.security = LABELS.connecting;
  carryOut(call.security.start());
  for (const m of call.earlyHandshake.splice(0)) onHandshake(m);
  for (const f of call.earlyData.splice(0)) onDataFrame(f);
}

function onHandshake(bytes) {
  try {
    carryOut(call.security.onHandshake(bytes, performance.now(), nowUnix()));
  } catch (e) {
    if (e instanceof HandshakeError && e.fatal) carryOut(e.events ?? []);
    // Non-fatal: junk is ignored and changes nothing.
  }
}

function onDataFrame(frame) {
  if (!call?.security) {
    if (call && call.earlyData.length < MAX_EARLY) call.earlyData.push(frame);
    return;
  }
  try {
    carryOut(call.security.onDataFrame(frame, performance.now(), nowUnix()));
  } catch {
    pub.dataRejected += 1;
  }
}

function sendData(bytes) {
  if (call.dc?.readyState === 'open') call.dc.send(bytes);
  else if (call.pendingData.length < 32) call.pendingData.push(bytes);
}

function carryOut(events) {
  for (const e of events) {
    if (e.type === 'handshake') relay({ kind: 'handshake', data: toHex(e.bytes) });
    else if (e.type === 'data') sendData(e.bytes);
    else if (e.type === 'status') onStatus(e.status);
    else if (e.type === 'peers') saveKnownPeers(call.knownPeers).catch(() => status('could not save the known peers'));
    else if (e.type === 'app') onCaption(e.body);
  }
  render();
}

function updateMediaGate() {
  if (!call?.worker) return;
  const allowed = Boolean(call.security?.mediaAllowed) && call.pc?.connectionState === 'connected';
  call.setUp ||= allowed;
  if (allowed && call.setupTimer) {
    clearTimeout(call.setupTimer);
    call.setupTimer = null;
    status('');
  }
  pub.mediaAllowed = allowed;
  call.worker.postMessage({ type: 'allow', allowed });
}

function onStatus(s) {
  const keys = call.security.takeMediaKeys();
  if (keys) call.worker.postMessage({ type: 'keys', ...keys }, [keys.send.buffer, keys.receive.buffer]);
  pub.security = LABELS[s.state];
  pub.verified ||= s.state === 'verified';
  const sas = s.sas;
  show('sas-box', Boolean(sas) && (s.state === 'encrypted' || s.state === 'identity_changed' || s.state === 'verified'));
  if (sas) {
    setText('sas-words', sas.words);
    setText('sas-digits', sas.digits);
  }
  show('sas-actions', s.state === 'encrypted' && !s.confirmedLocally);
  setText('sas-note', s.state === 'verified'
    ? (s.by === 'pinned_identity' ? 'Verified: the peer proved the identity you verified before.' : 'Verified: you both confirmed the code.')
    : s.state === 'encrypted' && s.confirmedLocally ? 'You confirmed; waiting for the peer to confirm.'
      : 'Read the code aloud together. Does the other person see the same?');
  show('identity-warning', s.state === 'identity_changed');
  if (s.state === 'identity_changed') {
    setText('identity-detail', s.presented
      ? `Pinned ${identityFingerprint(fromHex(s.pinned))}, now ${identityFingerprint(fromHex(s.presented))}.`
      : `Pinned ${identityFingerprint(fromHex(s.pinned))}; the peer showed no identity at all.`);
  }
  if (s.state === 'failed') end(s.reason);
  // Our own hang-up ends the call in hangUp(), once the Bye has left.
  if (s.state === 'ended' && s.byPeer) end('the peer hung up');
  updateMediaGate();
}

// ---- captions -----------------------------------------------------------------------------

function onCaption(body) {
  let c;
  try {
    c = decodeCaption(body);
  } catch {
    pub.captions.malformed += 1;
    return;
  }
  pub.captions.received += 1;
  const list = $('captions');
  let item = list.querySelector(`[data-seq="${c.seq}"]`);
  if (!item) {
    item = document.createElement('li');
    item.dataset.seq = String(c.seq);
    list.append(item);
  }
  item.className = c.final ? 'final' : 'partial';
  item.replaceChildren();
  const main = document.createElement('span');
  main.textContent = c.translation ? c.translation.text : c.text;
  item.append(main);
  if (c.translation) {
    const orig = document.createElement('small');
    orig.textContent = c.text;
    item.append(orig);
  }
  if (c.final) {
    call.finals = call.finals.filter((f) => f.seq !== c.seq);
    call.finals.push(c);
    $('vtt').disabled = false;
  }
  item.scrollIntoView({ block: 'end' });
}

function downloadVtt() {
  const blob = new Blob([toWebVtt(call?.finals ?? [])], { type: 'text/vtt' });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = `aparte-${new Date().toISOString().slice(0, 19).replace(/:/g, '')}.vtt`;
  a.click();
  URL.revokeObjectURL(a.href);
}

// ---- join, hang up ------------------------------------------------------------------------

async function join(event) {
  event.preventDefault();
  const room = $('room').value.trim();
  if (!ROOM_ID.test(room)) return status('A room id is 22 to 64 letters, digits, - or _.');
  const peerName = $('peer-name').value.trim();
  if (peerName && !isPeerName(peerName)) return status('A peer name is 1 to 64 of A-Z a-z 0-9 . _ @ + -');
  $('join-btn').disabled = true;
  let stream;
  try {
    const mic = $('mic').value;
    stream = await navigator.mediaDevices.getUserMedia({ audio: mic ? { deviceId: { exact: mic } } : true });
  } catch (e) {
    $('join-btn').disabled = false;
    return status(`No microphone: ${e.name}`);
  }
  listMicrophones().catch(() => {});
  call = {
    room,
    stream,
    peerName: peerName || null,
    relayOnly: $('relay-only').checked,
    identity: call?.identity,
    knownPeers: await loadKnownPeers(),
    earlyCandidates: [],
    earlyHandshake: [],
    earlyData: [],
    pendingData: [],
    finals: [],
    setUp: false,
  };
  call.identity = await loadIdentity();
  history.replaceState(null, '', `/r/${room}`);
  show('join', false);
  show('call', true);
  render();
  Object.assign(pub, { signaling: 'connecting', role: null, link: 'new', security: 'not started', verified: false,
    mediaAllowed: false, media: null, setupMs: null, ended: null });
  const ws = new WebSocket(wsUrl());
  call.ws = ws;
  const mine = call;
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: 'hello', version: 1 }));
    const token = $('token').value.trim();
    ws.send(JSON.stringify(token ? { type: 'join', room, token } : { type: 'join', room }));
  };
  ws.onmessage = (e) => {
    if (call !== mine) return;
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      return;
    }
    onServerMessage(msg);
  };
  ws.onclose = () => {
    if (call !== mine) return;
    pub.signaling = 'closed';
    if (!call?.setUp) end('the signaling connection closed');
    render();
  };
}

async function hangUp() {
  if (!call) return;
  if (call.security && call.dc?.readyState === 'open') {
    const dc = call.dc;
    const closed = new Promise((resolve) => dc.addEventListener('close', resolve, { once: true }));
    carryOut(call.security.hangUp());
    // The peer ends the call when the Bye arrives and closes its side; wait for that (at most
    // 2 s) so that closing ours does not drop the Bye.
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 2000))]);
  }
  end('hung up');
}

function end(why) {
  if (!call || call.ended) return;
  call.ended = true;
  pub.ended = why;
  clearTimeout(call.setupTimer);
  clearTimeout(call.outage?.timer);
  clearTimeout(call.outage?.giveUp);
  call.worker?.postMessage({ type: 'stop' });
  pub.mediaAllowed = false;
  if (call.ws?.readyState === WebSocket.OPEN) call.ws.send(JSON.stringify({ type: 'leave' }));
  call.ws?.close();
  call.pc?.close();
  if (call.pc) pub.link = 'closed';
  for (const t of call.stream?.getTracks() ?? []) t.stop();
  show('sas-actions', false);
  show('hangup', false);
  status(`Call ended: ${why}.`);
  if (!call.setUp) {
    // Nothing was set up (a refused join, say): the form comes back to try again.
    show('call', false);
    show('join', true);
    $('join-btn').disabled = false;
  }
  render();
}

async function init() {
  const m = /^\/r\/([A-Za-z0-9_-]{22,64})$/.exec(location.pathname);
  if (m) $('room').value = m[1];
  $('join').addEventListener('submit', join);
  $('hangup').addEventListener('click', hangUp);
  $('vtt').addEventListener('click', downloadVtt);
  $('sas-match').addEventListener('click', () => carryOut(call.security.confirmSas(nowUnix())));
  $('sas-mismatch').addEventListener('click', () => carryOut(call.security.rejectSas()));
  $('override').addEventListener('click', () => carryOut(call.security.overrideIdentityChange(nowUnix())));
  $('new-room').addEventListener('click', () => {
    const bytes = crypto.getRandomValues(new Uint8Array(17));
    let id;
    do {
      id = btoa(String.fromCharCode(...crypto.getRandomValues(bytes))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    } while (id.startsWith('-'));
    $('room').value = id;
  });
  if (!('RTCRtpScriptTransform' in window)) {
    status('This browser cannot protect audio frames (no RTCRtpScriptTransform); use a recent Chromium, Chrome, Firefox or Safari.');
    $('join-btn').disabled = true;
  }
  try {
    const id = await loadIdentity();
    setText('my-identity', identityFingerprint(publicKey(id)));
  } catch {
    setText('my-identity', 'unavailable (storage is off in this browser)');
  }
  listMicrophones().catch(() => {});
  render();
}

init();
