//! Long-term identity keys and the known-peers store (key continuity).
//!
//! An identity key is an X25519 static key. The handshake mixes `DH(identity, peer ephemeral)`
//! into the key schedule, so a peer can only complete key confirmation while claiming an
//! identity if it holds that identity's private key. That is what lets a pinned, verified
//! peer be recognised on a later call without reading the SAS again, and what makes a
//! man-in-the-middle show up as **CHANGED**.
//!
//! [`KnownPeers`] is pure data: the caller passes the time in and decides where it is kept
//! ([`crate::store`] keeps it in a file).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::keys::{labels, sha256};

/// A long-term identity private key. Wiped on drop.
#[derive(Clone)]
pub struct IdentityKey {
    secret: StaticSecret,
}

impl IdentityKey {
    /// A fresh random identity.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            secret: StaticSecret::random_from_rng(rng),
        }
    }

    /// Rebuilds an identity from its 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            secret: StaticSecret::from(bytes),
        }
    }

    /// The secret bytes, for storing. The returned buffer is wiped when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public half, which peers pin.
    pub fn public(&self) -> IdentityPublic {
        IdentityPublic(PublicKey::from(&self.secret).to_bytes())
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// A long-term identity public key.
#[derive(Clone, Copy)]
pub struct IdentityPublic(pub [u8; 32]);

impl IdentityPublic {
    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A fingerprint for people to compare out of band:
    /// `SHA-256("aparte/v1 identity fingerprint" || key)`, first 16 bytes, as eight groups
    /// of four hex digits.
    pub fn fingerprint(&self) -> String {
        let digest = sha256(&[labels::IDENTITY_FINGERPRINT, &self.0]);
        digest
            .get(..16)
            .unwrap_or(&digest)
            .chunks(2)
            .map(hex::encode)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl PartialEq for IdentityPublic {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for IdentityPublic {}

impl std::fmt::Debug for IdentityPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityPublic({})", self.fingerprint())
    }
}

/// A validated local name for a peer ("bob", "bob@laptop"). Names are chosen by the local
/// user, never taken from the network: a name the peer could assert would let a
/// man-in-the-middle dodge the CHANGED warning by claiming to be someone new.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerName(String);

impl PeerName {
    /// Longest accepted name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Accepts 1 to 64 characters from `A-Z a-z 0-9 . _ @ + -`.
    pub fn new(name: &str) -> Result<Self, StoreError> {
        if name.is_empty() {
            return Err(StoreError::InvalidPeerName("empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(StoreError::InvalidPeerName("longer than 64 bytes"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-'))
        {
            return Err(StoreError::InvalidPeerName(
                "only letters, digits and . _ @ + - are allowed",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the store knows of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The pinned identity.
    pub identity: IdentityPublic,
    /// Whether both people confirmed the SAS on a call with this identity.
    pub verified: bool,
    /// Unix seconds when first pinned.
    pub first_seen: u64,
    /// Unix seconds of the last call.
    pub last_seen: u64,
}

/// The answer to "is this the peer I know?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerStatus {
    /// No identity is pinned under this name.
    New,
    /// The identity matches the pinned one.
    Matches {
        /// Whether the pinned identity was verified by SAS.
        verified: bool,
    },
    /// A different identity is pinned under this name: a new device, or a man-in-the-middle.
    Changed {
        /// The identity that was pinned.
        pinned: IdentityPublic,
        /// Whether the pinned identity had been verified.
        was_verified: bool,
    },
}

/// The known-peers store: peer name → pinned identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownPeers {
    peers: BTreeMap<PeerName, PeerRecord>,
}

/// First line of the known-peers file format.
const PEERS_HEADER: &str = "aparte-known-peers v1";
/// Bound on the number of peers read from a file, so a hostile file cannot exhaust memory.
pub const MAX_KNOWN_PEERS: usize = 100_000;

impl KnownPeers {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `identity` against what is pinned under `name`.
    pub fn check(&self, name: &PeerName, identity: &IdentityPublic) -> PeerStatus {
        match self.peers.get(name) {
            None => PeerStatus::New,
            Some(record) if record.identity == *identity => PeerStatus::Matches {
                verified: record.verified,
            },
            Some(record) => PeerStatus::Changed {
                pinned: record.identity,
                was_verified: record.verified,
            },
        }
    }

    /// Records a call with `name` (trust on first use): pins a new peer unverified, or
    /// updates `last_seen` of a matching one. Refuses a changed identity; see
    /// [`KnownPeers::replace`].
    pub fn record_seen(
        &mut self,
        name: &PeerName,
        identity: &IdentityPublic,
        now_unix: u64,
    ) -> Result<PeerStatus, StoreError> {
        let status = self.check(name, identity);
        match &status {
            PeerStatus::Changed { .. } => return Err(StoreError::IdentityChanged),
            PeerStatus::New => self.replace(name, identity, now_unix),
            PeerStatus::Matches { .. } => {
                if let Some(record) = self.peers.get_mut(name) {
                    record.last_seen = record.last_seen.max(now_unix);
                }
            }
        }
        Ok(status)
    }

    /// Records that both people confirmed the SAS on a call with this identity.
    pub fn mark_verified(
        &mut self,
        name: &PeerName,
        identity: &IdentityPublic,
        now_unix: u64,
    ) -> Result<(), StoreError> {
        self.record_seen(name, identity, now_unix)?;
        if let Some(record) = self.peers.get_mut(name) {
            record.verified = true;
        }
        Ok(())
    }

    /// Explicit override after a CHANGED warning: pins `identity` in place of the old key,
    /// unverified.
    pub fn replace(&mut self, name: &PeerName, identity: &IdentityPublic, now_unix: u64) {
        let record = PeerRecord {
            identity: *identity,
            verified: false,
            first_seen: now_unix,
            last_seen: now_unix,
        };
        self.peers.insert(name.clone(), record);
    }

    /// Forgets a peer. Returns whether it was known.
    pub fn remove(&mut self, name: &PeerName) -> bool {
        self.peers.remove(name).is_some()
    }

    /// The record for `name`.
    pub fn get(&self, name: &PeerName) -> Option<&PeerRecord> {
        self.peers.get(name)
    }

    /// All peers, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerName, &PeerRecord)> {
        self.peers.iter()
    }

    /// Number of known peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Serialises to the text format: a header line, then one line per peer:
    /// `name SP hex-identity SP verified|unverified SP first_seen SP last_seen`.
    pub fn encode(&self) -> String {
        let mut out = String::from(PEERS_HEADER);
        out.push('\n');
        for (name, r) in &self.peers {
            let state = if r.verified { "verified" } else { "unverified" };
            out.push_str(&format!(
                "{} {} {} {} {}\n",
                name.as_str(),
                r.identity.to_hex(),
                state,
                r.first_seen,
                r.last_seen
            ));
        }
        out
    }

    /// Parses the text format strictly: a wrong header, a bad field, a duplicate name or
    /// more than [`MAX_KNOWN_PEERS`] entries is an error, never silently skipped.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let err = |line: usize, reason| StoreError::Parse {
            what: "known peers",
            line,
            reason,
        };
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i.saturating_add(1), l));
        match lines.next() {
            Some((_, PEERS_HEADER)) => {}
            _ => return Err(err(1, "missing 'aparte-known-peers v1' header")),
        }
        let mut peers = BTreeMap::new();
        for (n, line) in lines {
            if line.is_empty() {
                continue;
            }
            if peers.len() >= MAX_KNOWN_PEERS {
                return Err(err(n, "too many peers"));
            }
            let fields: Vec<&str> = line.split(' ').collect();
            let [name, key, state, first, last] = fields.as_slice() else {
                return Err(err(n, "expected 5 space-separated fields"));
            };
            let name = PeerName::new(name).map_err(|_| err(n, "invalid peer name"))?;
            let identity = IdentityPublic::from_hex(key).ok_or(err(n, "invalid identity key"))?;
            let verified = match *state {
                "verified" => true,
                "unverified" => false,
                _ => return Err(err(n, "state must be 'verified' or 'unverified'")),
            };
            let first_seen = first.parse().map_err(|_| err(n, "invalid first_seen"))?;
            let last_seen = last.parse().map_err(|_| err(n, "invalid last_seen"))?;
            let record = PeerRecord {
                identity,
                verified,
                first_seen,
                last_seen,
            };
            if peers.insert(name, record).is_some() {
                return Err(err(n, "duplicate peer name"));
            }
        }
        Ok(Self { peers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> IdentityPublic {
        IdentityKey::from_bytes([b; 32]).public()
    }

    #[test]
    fn new_then_matches_then_verified() {
        let bob = PeerName::new("bob").unwrap();
        let mut store = KnownPeers::new();
        assert_eq!(store.check(&bob, &key(1)), PeerStatus::New);
        store.record_seen(&bob, &key(1), 10).unwrap();
        assert_eq!(
            store.check(&bob, &key(1)),
            PeerStatus::Matches { verified: false }
        );
        store.mark_verified(&bob, &key(1), 20).unwrap();
        assert_eq!(
            store.check(&bob, &key(1)),
            PeerStatus::Matches { verified: true }
        );
        assert_eq!(store.get(&bob).unwrap().last_seen, 20);
    }

    #[test]
    fn identity_change_on_a_pinned_peer_is_changed() {
        let bob = PeerName::new("bob").unwrap();
        let mut store = KnownPeers::new();
        store.mark_verified(&bob, &key(1), 10).unwrap();
        assert_eq!(
            store.check(&bob, &key(2)),
            PeerStatus::Changed {
                pinned: key(1),
                was_verified: true
            }
        );
        assert!(matches!(
            store.record_seen(&bob, &key(2), 11),
            Err(StoreError::IdentityChanged)
        ));
        assert!(store.mark_verified(&bob, &key(2), 11).is_err());
        // Still pinned to the old key after the refused writes.
        assert_eq!(store.get(&bob).unwrap().identity, key(1));
        store.replace(&bob, &key(2), 12);
        assert_eq!(
            store.check(&bob, &key(2)),
            PeerStatus::Matches { verified: false }
        );
    }

    #[test]
    fn text_format_round_trips() {
        let mut store = KnownPeers::new();
        store
            .mark_verified(&PeerName::new("bob@laptop").unwrap(), &key(1), 5)
            .unwrap();
        store
            .record_seen(&PeerName::new("carol").unwrap(), &key(2), 6)
            .unwrap();
        let text = store.encode();
        assert_eq!(KnownPeers::parse(&text).unwrap(), store);
    }

    #[test]
    fn parse_rejects_bad_input_with_a_line_number() {
        let k = key(1).to_hex();
        for (text, line) in [
            ("nope\n".to_string(), 1),
            (format!("{PEERS_HEADER}\nbob {k} verified 1\n"), 2),
            (format!("{PEERS_HEADER}\nbob {k} maybe 1 2\n"), 2),
            (format!("{PEERS_HEADER}\nb/ob {k} verified 1 2\n"), 2),
            (format!("{PEERS_HEADER}\nbob abcd verified 1 2\n"), 2),
            (format!("{PEERS_HEADER}\nbob {k} verified x 2\n"), 2),
            (
                format!("{PEERS_HEADER}\nbob {k} verified 1 2\nbob {k} verified 1 2\n"),
                3,
            ),
        ] {
            match KnownPeers::parse(&text) {
                Err(StoreError::Parse { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn peer_names_are_validated() {
        assert!(PeerName::new("alice.b-2@home+x_y").is_ok());
        assert!(PeerName::new("").is_err());
        assert!(PeerName::new("has space").is_err());
        assert!(PeerName::new(&"a".repeat(65)).is_err());
    }

    #[test]
    fn fingerprint_is_stable_and_debug_shows_no_secret() {
        let id = IdentityKey::from_bytes([3; 32]);
        let fp = id.public().fingerprint();
        assert_eq!(fp.len(), 8 * 4 + 7);
        assert_eq!(fp, id.public().fingerprint());
        let secret_hex = hex::encode([3u8; 32]);
        assert!(!format!("{id:?}").contains(&secret_hex));
        assert_eq!(
            IdentityKey::from_bytes(*id.to_bytes()).public(),
            id.public()
        );
    }
}
