// The per-call security state machine, as crates/session has it: the handshake, key
// continuity (CHANGED and missing-identity rules), the SAS confirmation exchanged inside the
// encrypted data channel, and the gate that keeps audio and captions off until keys are
// confirmed. Sans-IO: the caller moves the bytes and supplies the clocks.
import { toHex } from './bytes.js';
import { Handshake, HandshakeError, callParams } from './handshake.js';
import { channels } from './frame.js';
import { sasMatches } from './sas.js';

/** Data-channel message kinds (plaintext of a data frame: `kind || body`). */
export const Control = Object.freeze({ SasConfirmed: 1, SasRejected: 2, Bye: 3, App: 16 });
/** Largest application body. */
export const MAX_APP_BODY = 16383;
/** Data frames held while the keys do not exist yet. */
export const MAX_EARLY_DATA_FRAMES = 16;

/** Encodes a control message. */
export function encodeControl(kind, body = new Uint8Array(0)) {
  const out = new Uint8Array(1 + body.length);
  out[0] = kind;
  out.set(body, 1);
  return out;
}

/** Parses a control message strictly: `{ kind, body }`; throws on anything else. */
export function parseControl(bytes) {
  if (bytes.length === 0) throw new Error('empty control message');
  const kind = bytes[0];
  const body = bytes.subarray(1);
  if (kind === Control.App) return { kind, body: body.slice() };
  if (kind === Control.SasConfirmed || kind === Control.SasRejected || kind === Control.Bye) {
    if (body.length !== 0) throw new Error('control message must have an empty body');
    return { kind, body };
  }
  throw new Error('unknown control message kind');
}

/** Status labels, the same words the CLI shows. */
export const LABELS = Object.freeze({
  connecting: 'connecting',
  encrypted: 'encrypted, not verified',
  verified: 'encrypted and verified',
  identity_changed: 'WARNING: peer identity CHANGED',
  failed: 'security failure',
  ended: 'ended',
});

/**
 * One call's security. `events` returned by each method are `{ type: 'handshake', bytes }`
 * (send over signaling), `{ type: 'data', bytes }` (send on the data channel),
 * `{ type: 'status', status }`, `{ type: 'peers' }` (persist `knownPeers`) and
 * `{ type: 'app', body }` (a caption from the peer).
 *
 * `status` is `{ state, sas?, confirmedLocally?, by?, pinned?, presented?, reason?, byPeer? }`
 * with `state` one of the keys of LABELS.
 */
export class CallSecurity {
  /**
   * @param options `{ role: 'initiator'|'responder', roomId, localFingerprint,
   *   remoteFingerprint (Uint8Array each), identitySecret?, peerName?, knownPeers,
   *   policy: 'interactive' | 'tofu' | { expectSas } }`
   */
  constructor(options) {
    const { role, roomId, localFingerprint, remoteFingerprint } = options;
    const initiator = role === 'initiator';
    this.params = callParams(
      roomId,
      initiator ? localFingerprint : remoteFingerprint,
      initiator ? remoteFingerprint : localFingerprint,
    );
    this.policy = options.policy ?? 'interactive';
    this.peerName = options.peerName ?? null;
    this.knownPeers = options.knownPeers;
    this.identitySecret = options.identitySecret ?? null;
    this.role = role;
    this.status = { state: 'connecting' };
    this.channels = null;
    this.info = null;
    this.confirmedLocally = false;
    this.confirmedByPeer = false;
    this.earlyData = [];
    /** Incoming media frames refused because media was not allowed. */
    this.mediaRefused = 0;
  }

  /** Starts the handshake; an initiator's events hold the Commit. */
  start() {
    if (this.role === 'initiator') {
      const { handshake, commit } = Handshake.initiator(this.params, this.identitySecret);
      this.handshake = handshake;
      return [{ type: 'handshake', bytes: commit }];
    }
    this.handshake = Handshake.responder(this.params, this.identitySecret);
    return [];
  }

  /** Whether audio and captions may flow now. */
  get mediaAllowed() {
    return this.status.state === 'encrypted' || this.status.state === 'verified';
  }

  /** The chain secrets for the media worker, once keys are confirmed (then forgotten here). */
  takeMediaKeys() {
    const keys = this.mediaKeys;
    this.mediaKeys = null;
    return keys;
  }

  /**
   * Feeds a handshake message from the peer. Returns events; throws HandshakeError for a
   * rejected message (a fatal one also sets the failed status, reported in `error.events`).
   */
  onHandshake(bytes, nowMs, nowUnix) {
    if (!this.handshake) throw new HandshakeError('unexpected', 'no handshake in progress');
    let reply;
    try {
      reply = this.handshake.receive(bytes);
    } catch (e) {
      if (e instanceof HandshakeError && e.fatal) {
        this.handshake = null;
        e.events = [this.#set({ state: 'failed', reason: e.message })];
      }
      throw e;
    }
    const events = [];
    if (reply) events.push({ type: 'handshake', bytes: reply });
    if (this.handshake.complete) {
      const done = this.handshake.finish();
      this.handshake = null;
      this.info = { sas: done.sas, peerIdentity: done.peerIdentity ? toHex(done.peerIdentity) : null };
      // The media chains go to the worker that protects audio frames; the data chains stay.
      const initiator = done.role === 'initiator';
      this.mediaKeys = {
        role: done.role,
        send: (initiator ? done.secrets.mediaI2r : done.secrets.mediaR2i).slice(),
        receive: (initiator ? done.secrets.mediaR2i : done.secrets.mediaI2r).slice(),
      };
      const all = channels(done);
      this.channels = { dataSender: all.dataSender, dataReceiver: all.dataReceiver };
      this.#onKeysConfirmed(nowUnix, events);
      for (const frame of this.earlyData.splice(0)) {
        try {
          events.push(...this.onDataFrame(frame, nowMs, nowUnix));
        } catch {
          // counted by the receiver
        }
      }
    }
    return events;
  }

  #onKeysConfirmed(nowUnix, events) {
    const { sas, peerIdentity } = this.info;
    if (this.peerName) {
      let check;
      if (peerIdentity) check = this.knownPeers.check(this.peerName, peerIdentity);
      else {
        const r = this.knownPeers.get(this.peerName);
        // Pinned, but no identity shown: as alarming as another identity.
        check = r ? { status: 'changed', pinned: r.identity } : { status: 'new' };
      }
      if (check.status === 'changed') {
        events.push(this.#set({ state: 'identity_changed', pinned: check.pinned, presented: peerIdentity, sas }));
        return;
      }
      if (peerIdentity) {
        this.knownPeers.recordSeen(this.peerName, peerIdentity, nowUnix);
        events.push({ type: 'peers' });
        if (check.status === 'matches' && check.verified) {
          events.push(this.#set({ state: 'verified', by: 'pinned_identity', sas }));
          return;
        }
      }
    }
    this.#applyPolicy(sas, nowUnix, events);
  }

  #applyPolicy(sas, nowUnix, events) {
    if (typeof this.policy === 'object' && this.policy.expectSas !== undefined) {
      if (!sasMatches(this.policy.expectSas, sas)) {
        events.push(...this.#sendControl(Control.SasRejected));
        events.push(this.#set({ state: 'failed', reason: 'the SAS is not the one expected' }));
        return;
      }
      events.push(this.#set({ state: 'encrypted', sas, confirmedLocally: false }));
      events.push(...this.confirmSas(nowUnix));
      return;
    }
    events.push(this.#set({ state: 'encrypted', sas, confirmedLocally: false }));
  }

  /** The local person confirms the SAS. */
  confirmSas(nowUnix) {
    if (this.status.state !== 'encrypted') throw new Error(`cannot confirm the SAS while ${LABELS[this.status.state]}`);
    this.confirmedLocally = true;
    const events = this.#sendControl(Control.SasConfirmed);
    this.#updateVerification(nowUnix, events);
    return events;
  }

  /** The local person says the SAS does NOT match: tell the peer, fail the call. */
  rejectSas() {
    const events = this.#sendControl(Control.SasRejected);
    events.push(this.#set({ state: 'failed', reason: 'you said the SAS does not match: someone may be in the middle' }));
    return events;
  }

  /** Accepts a changed (or missing) identity explicitly; the call then asks for the SAS. */
  overrideIdentityChange(nowUnix) {
    if (this.status.state !== 'identity_changed') throw new Error('no identity change to override');
    const { presented, sas } = this.status;
    const events = [];
    if (this.peerName && presented) {
      this.knownPeers.replace(this.peerName, presented, nowUnix);
      events.push({ type: 'peers' });
    }
    if (this.policy === 'tofu') this.policy = 'interactive';
    this.#applyPolicy(sas, nowUnix, events);
    return events;
  }

  /** Hangs up: the Bye, and the ended status. */
  hangUp() {
    const events = this.#sendControl(Control.Bye);
    events.push(this.#set({ state: 'ended', byPeer: false }));
    return events;
  }

  /** Sends application data (a caption) on the data channel. */
  sendApp(body) {
    if (!this.mediaAllowed) throw new Error(`media is not allowed while ${LABELS[this.status.state]}`);
    if (body.length > MAX_APP_BODY) throw new Error('application message too large');
    return this.#sendControl(Control.App, body);
  }

  /** Feeds one frame from the data channel. Throws for a rejected frame. */
  onDataFrame(frame, nowMs, nowUnix) {
    if (!this.channels) {
      if (this.earlyData.length < MAX_EARLY_DATA_FRAMES && this.status.state === 'connecting') {
        this.earlyData.push(frame.slice());
        return [];
      }
      throw new Error(`data not allowed while ${LABELS[this.status.state]}`);
    }
    const { payload } = this.channels.dataReceiver.open(frame, nowMs);
    const msg = parseControl(payload);
    const events = [];
    switch (msg.kind) {
      case Control.SasConfirmed:
        this.confirmedByPeer = true;
        if (this.status.state === 'encrypted') this.#updateVerification(nowUnix, events);
        break;
      case Control.SasRejected:
        if (this.status.state !== 'failed') {
          events.push(this.#set({ state: 'failed', reason: 'the peer said the SAS does not match: someone may be in the middle' }));
        }
        break;
      case Control.Bye:
        events.push(this.#set({ state: 'ended', byPeer: true }));
        break;
      default:
        if (!this.mediaAllowed) throw new Error('captions not allowed now');
        events.push({ type: 'app', body: msg.body });
    }
    return events;
  }

  #updateVerification(nowUnix, events) {
    const sas = this.info.sas;
    if (!(this.confirmedLocally && this.confirmedByPeer)) {
      events.push(this.#set({ state: 'encrypted', sas, confirmedLocally: this.confirmedLocally }));
      return;
    }
    const presented = this.info.peerIdentity;
    if (this.peerName && presented) {
      try {
        this.knownPeers.markVerified(this.peerName, presented, nowUnix);
        events.push({ type: 'peers' });
      } catch {
        // a changed identity is never marked verified
      }
    }
    events.push(this.#set({ state: 'verified', by: 'sas', sas }));
  }

  #sendControl(kind, body) {
    if (!this.channels) return [];
    return [{ type: 'data', bytes: this.channels.dataSender.protect(encodeControl(kind, body)) }];
  }

  #set(status) {
    this.status = status;
    return { type: 'status', status };
  }
}
