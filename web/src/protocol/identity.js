// Identity keys and key continuity (docs/PROTOCOL.md §6): fingerprints, peer names and the
// known-peers store (peer name → pinned identity, verified flag). Storage is the caller's
// (IndexedDB in the page); this module only holds the rules.
import { sha256 } from '@noble/hashes/sha2.js';
import { concat, toHex, utf8 } from './bytes.js';

/** `[A-Za-z0-9._@+-]{1,64}`: a local name chosen by the user, never taken from the network. */
export const PEER_NAME = /^[A-Za-z0-9._@+-]{1,64}$/;

/** Whether `name` is a valid local peer name. */
export const isPeerName = (name) => typeof name === 'string' && PEER_NAME.test(name);

/** The fingerprint of an identity public key: eight groups of four lowercase hex digits. */
export function identityFingerprint(publicKey) {
  const h = toHex(sha256(concat(utf8('aparte/v1 identity fingerprint'), publicKey)).subarray(0, 16));
  return h.match(/.{4}/g).join(' ');
}

/**
 * The known-peers store. Records are `{ identity: hex, verified, firstSeen, lastSeen }`
 * (Unix seconds), keyed by peer name; `toJSON`/`fromJSON` for storage.
 */
export class KnownPeers {
  constructor(records = {}) {
    this.peers = new Map(Object.entries(records));
  }

  /** A store from its JSON form; throws on any bad record (never skips one). */
  static fromJSON(obj) {
    const out = new KnownPeers();
    for (const [name, r] of Object.entries(obj ?? {})) {
      if (!isPeerName(name) || typeof r !== 'object' || !/^[0-9a-f]{64}$/.test(r.identity)
        || typeof r.verified !== 'boolean' || !Number.isInteger(r.firstSeen) || !Number.isInteger(r.lastSeen)) {
        throw new Error('known peers: bad record');
      }
      out.peers.set(name, { ...r });
    }
    return out;
  }

  /** The plain object to store. */
  toJSON() {
    return Object.fromEntries(this.peers);
  }

  /** The record pinned under `name`, or undefined. */
  get(name) {
    return this.peers.get(name);
  }

  /**
   * `{ status: 'new' }`, `{ status: 'matches', verified }` or
   * `{ status: 'changed', pinned, wasVerified }` for `identity` (hex) under `name`.
   */
  check(name, identity) {
    const r = this.peers.get(name);
    if (!r) return { status: 'new' };
    if (r.identity === identity) return { status: 'matches', verified: r.verified };
    return { status: 'changed', pinned: r.identity, wasVerified: r.verified };
  }

  /** Trust on first use: pins a new peer unverified or dates a matching one; refuses a change. */
  recordSeen(name, identity, nowUnix) {
    const status = this.check(name, identity);
    if (status.status === 'changed') throw new Error('identity changed');
    if (status.status === 'new') this.replace(name, identity, nowUnix);
    else {
      const r = this.peers.get(name);
      r.lastSeen = Math.max(r.lastSeen, nowUnix);
    }
    return status;
  }

  /** Both people confirmed the SAS with this identity. */
  markVerified(name, identity, nowUnix) {
    this.recordSeen(name, identity, nowUnix);
    this.peers.get(name).verified = true;
  }

  /** Explicit override after a CHANGED warning: pins `identity` unverified. */
  replace(name, identity, nowUnix) {
    this.peers.set(name, { identity, verified: false, firstSeen: nowUnix, lastSeen: nowUnix });
  }

  /** Forgets a peer. */
  remove(name) {
    return this.peers.delete(name);
  }
}
