// The browser's identity key and known peers, in IndexedDB (this origin only). The identity
// is a raw X25519 private key, as the CLI keeps it in its identity file.
import { KnownPeers } from '../protocol/identity.js';

const DB = 'aparte';
const STORE = 'kv';

function open() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function tx(mode, fn) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const t = db.transaction(STORE, mode);
      const req = fn(t.objectStore(STORE));
      t.oncomplete = () => resolve(req.result);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error);
    });
  } finally {
    db.close();
  }
}

/** This browser's identity private key (32 bytes), made on first use. */
export async function loadIdentity() {
  const stored = await tx('readonly', (s) => s.get('identity'));
  if (stored instanceof Uint8Array && stored.length === 32) return stored;
  const fresh = crypto.getRandomValues(new Uint8Array(32));
  await tx('readwrite', (s) => s.put(fresh, 'identity'));
  return fresh;
}

/** The known-peers store (an unreadable one is an error, never silently replaced). */
export async function loadKnownPeers() {
  const stored = await tx('readonly', (s) => s.get('knownPeers'));
  return KnownPeers.fromJSON(stored ?? {});
}

/** Persists the known-peers store. */
export async function saveKnownPeers(peers) {
  await tx('readwrite', (s) => s.put(peers.toJSON(), 'knownPeers'));
}
