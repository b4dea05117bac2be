//! Join grants: HMAC-SHA256-signed tokens naming a room (or any room), an expiry and an
//! optional user label, in the spirit of LiveKit's JWT room grants.
//!
//! A token is a JWT in compact form with the fixed header `{"alg":"HS256","typ":"JWT"}`:
//! `base64url(header) "." base64url(claims) "." base64url(HMAC-SHA256(secret, first two parts))`.
//! The claims are `{"room": "<room id>" | "*", "exp": <unix seconds>, "label": "<label>"?}`.
//! Verification accepts only that exact header (no `alg` negotiation), compares the MAC in
//! constant time, then checks expiry and room. The current time is passed in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::room::RoomId;

/// The claim value that grants every room.
pub const ANY_ROOM: &str = "*";
/// The longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;
/// The longest user label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// The claims of a join grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// A room id, or [`ANY_ROOM`].
    pub room: String,
    /// Expiry, in seconds since the Unix epoch. The token is refused at and after this second.
    pub exp: u64,
    /// An optional user label shown to the other peer and used in TURN usernames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, wrong header, bad claims, or a bad signature.
    #[error("the token is malformed or its signature does not verify")]
    Invalid,
    /// The expiry has passed.
    #[error("the token has expired")]
    Expired,
    /// The token grants another room.
    #[error("the token grants another room")]
    WrongRoom,
}

/// Why a token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("the token secret must be at least {MIN_SECRET_LEN} bytes")]
    SecretTooShort,
    /// The room is neither a valid room id nor [`ANY_ROOM`].
    #[error("the room must be a room id or \"*\" (any room)")]
    BadRoom,
    /// The label is too long or has characters other than `A–Z a–z 0–9 . _ @ -`.
    #[error("labels are 1 to {MAX_LABEL_LEN} characters of A-Z a-z 0-9 . _ @ -")]
    BadLabel,
}

/// Checks a user label: 1 to [`MAX_LABEL_LEN`] characters of `A–Z a–z 0–9 . _ @ -`.
pub fn valid_label(label: &str) -> bool {
    (1..=MAX_LABEL_LEN).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    }
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    <Hmac<Sha256> as hmac::digest::KeyInit>::new(&Default::default())
}

/// Mints a token for `claims`, signed with `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, MintError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(MintError::SecretTooShort);
    }
    if claims.room != ANY_ROOM && RoomId::parse(&claims.room).is_err() {
        return Err(MintError::BadRoom);
    }
    if claims.label.as_deref().is_some_and(|l| !valid_label(l)) {
        return Err(MintError::BadLabel);
    }
    let claims_json = serde_json::to_string(claims).map_err(|_| MintError::BadRoom)?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER_JSON),
        URL_SAFE_NO_PAD.encode(claims_json)
    );
    let mut m = mac(secret);
    m.update(signing_input.as_bytes());
    let sig = m.finalize().into_bytes();
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Verifies `token` for joining `room` at time `now_unix` (seconds since the Unix epoch).
pub fn verify(
    secret: &[u8],
    token: &str,
    room: &RoomId,
    now_unix: u64,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Invalid);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Invalid);
    };
    let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| TokenError::Invalid)?;
    if header != HEADER_JSON.as_bytes() {
        return Err(TokenError::Invalid);
    }
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Invalid)?;
    let mut m = mac(secret);
    m.update(h.as_bytes());
    m.update(b".");
    m.update(c.as_bytes());
    let expected = m.finalize().into_bytes();
    if sig.len() != expected.len() || !bool::from(expected.as_slice().ct_eq(&sig)) {
        return Err(TokenError::Invalid);
    }
    let claims_json = URL_SAFE_NO_PAD.decode(c).map_err(|_| TokenError::Invalid)?;
    let claims: Claims = serde_json::from_slice(&claims_json).map_err(|_| TokenError::Invalid)?;
    if claims.label.as_deref().is_some_and(|l| !valid_label(l)) {
        return Err(TokenError::Invalid);
    }
    if now_unix >= claims.exp {
        return Err(TokenError::Expired);
    }
    if claims.room != ANY_ROOM && claims.room != room.as_str() {
        return Err(TokenError::WrongRoom);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    #[test]
    fn mint_and_verify() {
        let r = room("abcdefghijklmnopqrstuv");
        let claims = Claims {
            room: r.to_string(),
            exp: 1000,
            label: Some("alice".into()),
        };
        let t = mint(SECRET, &claims).unwrap();
        assert_eq!(verify(SECRET, &t, &r, 999), Ok(claims));
        assert_eq!(verify(SECRET, &t, &r, 1000), Err(TokenError::Expired));
        let other = room("ABCDEFGHIJKLMNOPQRSTUV");
        assert_eq!(verify(SECRET, &t, &other, 10), Err(TokenError::WrongRoom));
        let wrong_secret = b"1123456789abcdef0123456789abcdef";
        assert_eq!(verify(wrong_secret, &t, &r, 10), Err(TokenError::Invalid));
    }

    #[test]
    fn any_room() {
        let t = mint(
            SECRET,
            &Claims {
                room: ANY_ROOM.into(),
                exp: 50,
                label: None,
            },
        )
        .unwrap();
        assert!(verify(SECRET, &t, &room("abcdefghijklmnopqrstuv"), 1).is_ok());
        assert!(verify(SECRET, &t, &room("ABCDEFGHIJKLMNOPQRSTUV"), 1).is_ok());
    }

    #[test]
    fn tampering_is_detected() {
        let r = room("abcdefghijklmnopqrstuv");
        let t = mint(
            SECRET,
            &Claims {
                room: r.to_string(),
                exp: 50,
                label: None,
            },
        )
        .unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(r#"{"room":"*","exp":99999999999}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(verify(SECRET, &forged, &r, 1), Err(TokenError::Invalid));
        let none_alg = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let forged = format!("{}.{}.", none_alg, parts[1]);
        assert_eq!(verify(SECRET, &forged, &r, 1), Err(TokenError::Invalid));
        for bad in ["", "a.b", "a.b.c.d", "...", &"a".repeat(2000)] {
            assert_eq!(verify(SECRET, bad, &r, 1), Err(TokenError::Invalid));
        }
        let mut truncated = t.clone();
        truncated.pop();
        assert_eq!(verify(SECRET, &truncated, &r, 1), Err(TokenError::Invalid));
    }

    #[test]
    fn mint_checks_inputs() {
        let c = Claims {
            room: "short".into(),
            exp: 1,
            label: None,
        };
        assert_eq!(mint(SECRET, &c), Err(MintError::BadRoom));
        assert_eq!(mint(b"short", &c), Err(MintError::SecretTooShort));
        let c = Claims {
            room: ANY_ROOM.into(),
            exp: 1,
            label: Some("bad label".into()),
        };
        assert_eq!(mint(SECRET, &c), Err(MintError::BadLabel));
    }
}
