//! Resume tokens: how a client that lost its connection mid-call takes its place in the room
//! back at once, instead of waiting for the server to notice the old connection is dead.
//!
//! When a client's network changes (new Wi-Fi, a new address from the ISP), its WebSocket dies
//! silently: the server only notices after its idle timeout (6 s by default), and until then the
//! old connection still holds a seat in the 2-member room, so a rejoin is refused as
//! `room_full`. The server therefore gives every member a random resume token in `joined`; a
//! `join` that presents it takes the seat of the member that holds it (the old connection is
//! closed, the others see it leave and the new one join). A token is only good in its own room
//! and only while its connection's member is still there.
//!
//! The token is a bearer credential for a seat, not a key: it gives no access to media or
//! captions, which stay end-to-end encrypted. It is compared in constant time and never logged.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// Random bytes in a resume token.
const RESUME_BYTES: usize = 16;
/// Characters of a resume token: 16 bytes in base64url without padding.
pub const RESUME_TOKEN_LEN: usize = 22;

/// A member's resume token: 128 random bits, base64url (22 characters).
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct ResumeToken(String);

/// A string that is not a resume token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a resume token is {RESUME_TOKEN_LEN} base64url characters")]
pub struct ResumeTokenError;

impl ResumeToken {
    /// A fresh token from 16 random bytes.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> ResumeToken {
        let mut bytes = [0u8; RESUME_BYTES];
        rng.fill_bytes(&mut bytes);
        ResumeToken(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Checks the form of `s` (exactly 22 base64url characters that decode to 16 bytes).
    pub fn parse(s: &str) -> Result<ResumeToken, ResumeTokenError> {
        let decodes = s.len() == RESUME_TOKEN_LEN
            && URL_SAFE_NO_PAD
                .decode(s)
                .is_ok_and(|b| b.len() == RESUME_BYTES);
        if decodes {
            Ok(ResumeToken(s.to_owned()))
        } else {
            Err(ResumeTokenError)
        }
    }

    /// The token as it goes on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Constant time: the server compares a presented token with every member's.
impl PartialEq for ResumeToken {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for ResumeToken {}

/// Never shows the token (it would end up in a log).
impl std::fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeToken(…)")
    }
}

impl<'de> Deserialize<'de> for ResumeToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ResumeToken::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_parse_differ_and_hide_in_debug() {
        let mut rng = rand_core::OsRng;
        let a = ResumeToken::random(&mut rng);
        let b = ResumeToken::random(&mut rng);
        assert_eq!(a.as_str().len(), RESUME_TOKEN_LEN);
        assert_eq!(ResumeToken::parse(a.as_str()).unwrap(), a);
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains(a.as_str()));
    }

    #[test]
    fn only_22_base64url_characters_of_16_bytes_parse() {
        assert!(ResumeToken::parse("AAAAAAAAAAAAAAAAAAAAAA").is_ok());
        for bad in [
            "",
            "AAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAAAAAAAA+/",
            "AAAAAAAAAAAAAAAAAAAAA\u{e9}",
            // The last character carries bits beyond the 16 bytes.
            "AAAAAAAAAAAAAAAAAAAAAB",
        ] {
            assert_eq!(ResumeToken::parse(bad), Err(ResumeTokenError), "{bad:?}");
        }
    }
}
