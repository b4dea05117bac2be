// The commit-reveal handshake (docs/PROTOCOL.md §2-§3): message encoding, the initiator and
// responder state machines, the transcript hash, key confirmation and the SAS.
import { sha256 } from '@noble/hashes/sha2.js';
import { hmac } from '@noble/hashes/hmac.js';
import { x25519 } from '@noble/curves/ed25519.js';
import { concat, ctEqual, lp, opt, u16, utf8, wipe } from './bytes.js';
import { handshakeSecrets } from './keys.js';
import { sasFromBytes } from './sas.js';

/** Protocol version byte. */
export const VERSION = 1;
/** Cipher suite: X25519, HKDF-SHA256, ChaCha20-Poly1305 (SFrame private-use range). */
export const SUITE = 0xf0a1;
/** The longest handshake message (a Reveal with an identity). */
export const MAX_MESSAGE_LEN = 101;

/** Message types. */
export const MessageType = Object.freeze({ Commit: 1, Response: 2, Reveal: 3, Confirm: 4 });

/**
 * A handshake failure. `fatal` errors (commitment or MAC mismatch, non-contributory DH) end the
 * handshake; the others (junk, wrong state) leave it as it was.
 */
export class HandshakeError extends Error {
  constructor(code, message, fatal = false) {
    super(message);
    this.name = 'HandshakeError';
    /** Machine-readable reason. */
    this.code = code;
    /** Whether the handshake is over. */
    this.fatal = fatal;
  }
}

const malformed = (why) => new HandshakeError('malformed', `malformed handshake message: ${why}`);

/** Parses one message strictly: `{ type, ...fields }`; throws a non-fatal HandshakeError. */
export function parseMessage(bytes) {
  if (!(bytes instanceof Uint8Array) || bytes.length < 4) throw malformed('too short');
  const type = bytes[0];
  if (type < 1 || type > 4) throw malformed('unknown type');
  if (bytes[1] !== VERSION) {
    throw new HandshakeError('unsupported_version', 'unsupported handshake version');
  }
  if (((bytes[2] << 8) | bytes[3]) !== SUITE) {
    throw new HandshakeError('unsupported_suite', 'unsupported cipher suite');
  }
  const body = bytes.subarray(4);
  const key = (at) => body.slice(at, at + 32);
  const identityAt = (at) => {
    if (body.length <= at) throw malformed('missing identity flag');
    const flag = body[at];
    if (flag > 1) throw malformed('bad identity flag');
    return flag === 1;
  };
  switch (type) {
    case MessageType.Commit:
    case MessageType.Confirm:
      if (body.length !== 32) throw malformed('wrong length');
      return type === MessageType.Commit
        ? { type, commitment: key(0) }
        : { type, mac: key(0) };
    case MessageType.Response: {
      if (body.length < 33) throw malformed('wrong length');
      const hasId = identityAt(32);
      if (body.length !== (hasId ? 65 : 33)) throw malformed('wrong length');
      return { type, ephemeral: key(0), identity: hasId ? key(33) : null };
    }
    default: {
      if (body.length < 33) throw malformed('wrong length');
      const hasId = identityAt(32);
      if (body.length !== (hasId ? 97 : 65)) throw malformed('wrong length');
      return {
        type,
        ephemeral: key(0),
        identity: hasId ? key(33) : null,
        mac: key(hasId ? 65 : 33),
      };
    }
  }
}

const header = (type) => concat(Uint8Array.of(type, VERSION), u16(SUITE));

/** Encodes a Commit. */
export const encodeCommit = (commitment) => concat(header(1), commitment);
/** Encodes a Response. */
export const encodeResponse = (ephemeral, identity) => concat(header(2), ephemeral, opt(identity));
/** Encodes a Reveal. */
export const encodeReveal = (ephemeral, identity, mac) =>
  concat(header(3), ephemeral, opt(identity), mac);
/** Encodes a Confirm. */
export const encodeConfirm = (mac) => concat(header(4), mac);

/** `H("aparte/v1 commit" || E_i || opt(S_i))`. */
export const commitment = (ephemeral, identity) =>
  sha256(concat(utf8('aparte/v1 commit'), ephemeral, opt(identity)));

/** The transcript hash TH of §3. */
export function transcriptHash(params, commit, ei, si, er, sr) {
  return sha256(
    concat(
      utf8('aparte/v1 transcript'),
      u16(SUITE),
      lp(params.roomId),
      lp(params.fpI),
      lp(params.fpR),
      commit,
      ei,
      opt(si),
      er,
      opt(sr),
    ),
  );
}

/** `HMAC(confirm key, "aparte/v1 key confirmation" || TH)`. */
export const confirmationMac = (key, th) =>
  hmac(sha256, key, concat(utf8('aparte/v1 key confirmation'), th));

/** X25519 public key of a 32-byte private key (clamped inside X25519). */
export const publicKey = (secret) => x25519.getPublicKey(secret);

/** X25519 that fails the handshake (fatally) on an all-zero, non-contributory result. */
function dh(secret, pub) {
  let shared;
  try {
    shared = x25519.getSharedSecret(secret, pub);
  } catch {
    // @noble/curves refuses low-order points itself (their result would be all zeros).
    shared = new Uint8Array(32);
  }
  if (shared.every((b) => b === 0)) {
    throw new HandshakeError(
      'non_contributory',
      'key agreement produced a non-contributory (all-zero) shared secret',
      true,
    );
  }
  return shared;
}

function checkBytes(name, v, min, max) {
  if (!(v instanceof Uint8Array) || v.length < min || v.length > max) {
    throw new HandshakeError('invalid_params', `${name}: ${min}-${max} bytes expected`);
  }
}

/**
 * The inputs both sides bind into the keys: `roomId` and the DTLS fingerprints of the
 * initiator and of the responder (`fpI`, `fpR`), each 1-1024 bytes.
 */
export function callParams(roomId, fpI, fpR) {
  checkBytes('room id', roomId, 1, 1024);
  checkBytes('initiator fingerprint', fpI, 1, 1024);
  checkBytes('responder fingerprint', fpR, 1, 1024);
  return Object.freeze({ roomId, fpI, fpR });
}

function randomSecret() {
  const out = new Uint8Array(32);
  globalThis.crypto.getRandomValues(out);
  return out;
}

/**
 * One endpoint's handshake. Create it with `Handshake.initiator` (which also returns the Commit
 * to send) or `Handshake.responder`, feed every message from the peer to `receive`, send what it
 * returns, and call `finish` once `complete`.
 */
export class Handshake {
  /**
   * @param {'initiator'|'responder'} role
   * @param params from `callParams`
   * @param identitySecret 32-byte identity private key, or null
   * @param ephemeralSecret 32 bytes; random when omitted (tests pass fixed ones)
   */
  constructor(role, params, identitySecret = null, ephemeralSecret = null) {
    if (role !== 'initiator' && role !== 'responder') throw new TypeError('bad role');
    if (identitySecret) checkBytes('identity key', identitySecret, 32, 32);
    if (ephemeralSecret) checkBytes('ephemeral key', ephemeralSecret, 32, 32);
    this.role = role;
    this.params = params;
    this.e = ephemeralSecret ? ephemeralSecret.slice() : randomSecret();
    this.E = publicKey(this.e);
    this.s = identitySecret ? identitySecret.slice() : null;
    this.S = this.s ? publicKey(this.s) : null;
    this.state = role === 'initiator' ? 'start' : 'awaiting_commit';
    this.result = null;
  }

  /** Starts an initiator: `{ handshake, commit }`. */
  static initiator(params, identitySecret = null, ephemeralSecret = null) {
    const hs = new Handshake('initiator', params, identitySecret, ephemeralSecret);
    hs.commit = commitment(hs.E, hs.S);
    hs.state = 'awaiting_response';
    return { handshake: hs, commit: encodeCommit(hs.commit) };
  }

  /** Starts a responder, which waits for the Commit. */
  static responder(params, identitySecret = null, ephemeralSecret = null) {
    return new Handshake('responder', params, identitySecret, ephemeralSecret);
  }

  /** Whether keys are confirmed. */
  get complete() {
    return this.state === 'complete';
  }

  /** Whether a cryptographic check failed (the handshake is over). */
  get failed() {
    return this.state === 'failed';
  }

  /**
   * Feeds one message from the peer; returns the reply to send, or null. Throws a
   * HandshakeError: non-fatal ones change nothing, fatal ones move the state to failed.
   */
  receive(bytes) {
    if (this.state === 'failed' || this.state === 'complete') {
      throw new HandshakeError('unexpected', `handshake message in state ${this.state}`);
    }
    const msg = parseMessage(bytes);
    const expected = {
      awaiting_response: MessageType.Response,
      awaiting_confirm: MessageType.Confirm,
      awaiting_commit: MessageType.Commit,
      awaiting_reveal: MessageType.Reveal,
    }[this.state];
    if (msg.type !== expected) {
      throw new HandshakeError('unexpected', 'handshake message not expected in this state');
    }
    try {
      return this.#step(msg);
    } catch (e) {
      if (e instanceof HandshakeError && e.fatal) this.#fail();
      throw e;
    }
  }

  #fail() {
    this.state = 'failed';
    wipe(this.e);
    wipe(this.s);
    this.keys = null;
  }

  #step(msg) {
    switch (msg.type) {
      case MessageType.Commit:
        this.commit = msg.commitment;
        this.state = 'awaiting_reveal';
        return encodeResponse(this.E, this.S);
      case MessageType.Response: {
        // Initiator: IKM = DH(e_i, E_r) || DH(s_i, E_r)? || DH(e_i, S_r)?
        const parts = [dh(this.e, msg.ephemeral)];
        if (this.s) parts.push(dh(this.s, msg.ephemeral));
        if (msg.identity) parts.push(dh(this.e, msg.identity));
        this.#derive(concat(...parts), this.E, this.S, msg.ephemeral, msg.identity);
        this.state = 'awaiting_confirm';
        return encodeReveal(this.E, this.S, confirmationMac(this.keys.confirmI, this.th));
      }
      case MessageType.Reveal: {
        if (!ctEqual(commitment(msg.ephemeral, msg.identity), this.commit)) {
          throw new HandshakeError('commitment_mismatch', 'the Reveal does not match the Commit', true);
        }
        // Responder: DH(e_r, E_i) || DH(e_r, S_i)? || DH(s_r, E_i)?
        const parts = [dh(this.e, msg.ephemeral)];
        if (msg.identity) parts.push(dh(this.e, msg.identity));
        if (this.s) parts.push(dh(this.s, msg.ephemeral));
        this.#derive(concat(...parts), msg.ephemeral, msg.identity, this.E, this.S);
        if (!ctEqual(confirmationMac(this.keys.confirmI, this.th), msg.mac)) {
          throw new HandshakeError('mac_mismatch', 'key confirmation failed', true);
        }
        this.state = 'complete';
        return encodeConfirm(confirmationMac(this.keys.confirmR, this.th));
      }
      default:
        if (!ctEqual(confirmationMac(this.keys.confirmR, this.th), msg.mac)) {
          throw new HandshakeError('mac_mismatch', 'key confirmation failed', true);
        }
        this.state = 'complete';
        return null;
    }
  }

  #derive(ikm, ei, si, er, sr) {
    this.th = transcriptHash(this.params, this.commit, ei, si, er, sr);
    this.keys = handshakeSecrets(this.th, ikm);
    wipe(ikm);
    this.peerIdentity = this.role === 'initiator' ? sr : si;
  }

  /**
   * After `complete`: `{ transcriptHash, sas, peerIdentity, secrets }`, where `secrets` holds
   * the four chain secrets. The ephemeral key is wiped.
   */
  finish() {
    if (!this.complete) throw new HandshakeError('unexpected', 'handshake not complete');
    const k = this.keys;
    const out = {
      role: this.role,
      transcriptHash: this.th,
      sas: sasFromBytes(k.sas),
      peerIdentity: this.peerIdentity ?? null,
      secrets: { mediaI2r: k.mediaI2r, mediaR2i: k.mediaR2i, dataI2r: k.dataI2r, dataR2i: k.dataR2i },
    };
    wipe(k.confirmI);
    wipe(k.confirmR);
    wipe(k.sas);
    wipe(this.e);
    wipe(this.s);
    this.keys = null;
    this.state = 'finished';
    return out;
  }
}
