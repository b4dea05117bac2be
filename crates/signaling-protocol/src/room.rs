//! Room ids and peer ids.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

/// Minimum room id length: 22 base64url characters carry 132 bits, so a room id made by
/// [`RoomId::random`] (16 random bytes) is never guessable.
pub const ROOM_ID_MIN_LEN: usize = 22;
/// Maximum room id length.
pub const ROOM_ID_MAX_LEN: usize = 64;

/// A room id: 22 to 64 characters of the base64url alphabet (`A–Z a–z 0–9 - _`).
///
/// Room ids are made by the client from at least 128 random bits; the server only checks the
/// form. Knowing a room id is what lets someone join the room when the server runs without a
/// token secret, so treat it as a capability.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(String);

/// A string that is not a valid room id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("room ids are {ROOM_ID_MIN_LEN} to {ROOM_ID_MAX_LEN} base64url characters")]
pub struct RoomIdError;

impl RoomId {
    /// Checks the form of `s` and wraps it.
    pub fn parse(s: &str) -> Result<RoomId, RoomIdError> {
        let ok_len = (ROOM_ID_MIN_LEN..=ROOM_ID_MAX_LEN).contains(&s.len());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok_len && ok_chars {
            Ok(RoomId(s.to_owned()))
        } else {
            Err(RoomIdError)
        }
    }

    /// A fresh room id from 17 random bytes, base64url without padding (23 characters).
    ///
    /// An id that would start with `-` is drawn again, so it can never be mistaken for a
    /// command-line flag (`aparte call --room -xyz…`); that leaves over 135 random bits.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> RoomId {
        let mut bytes = [0u8; 17];
        loop {
            rng.fill_bytes(&mut bytes);
            let id = URL_SAFE_NO_PAD.encode(bytes);
            if !id.starts_with('-') {
                return RoomId(id);
            }
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RoomId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoomId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RoomId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A member of a room, as numbered by the server for the lifetime of one connection.
pub type PeerId = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_never_look_like_a_flag() {
        for _ in 0..20_000 {
            let id = RoomId::random(&mut rand_core::OsRng);
            assert!(!id.as_str().starts_with('-'));
            assert_eq!(id.as_str().len(), 23);
            assert!(RoomId::parse(id.as_str()).is_ok());
        }
    }

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let mut rng = rand_core::OsRng;
        let a = RoomId::random(&mut rng);
        let b = RoomId::random(&mut rng);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 23);
        assert_eq!(RoomId::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn rejects_bad_ids() {
        assert!(RoomId::parse("short").is_err());
        assert!(RoomId::parse(&"a".repeat(65)).is_err());
        assert!(RoomId::parse("aaaaaaaaaaaaaaaaaaaaa/a").is_err());
        assert!(RoomId::parse("aaaaaaaaaaaaaaaaaaaaa a").is_err());
        assert!(RoomId::parse("aaaaaaaaaaaaaaaaaaaaaé").is_err());
        assert!(RoomId::parse(&"a".repeat(22)).is_ok());
    }
}
