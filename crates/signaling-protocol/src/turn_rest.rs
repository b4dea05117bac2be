//! TURN REST credentials ("A REST API for access to TURN services", the scheme coturn accepts
//! with `use-auth-secret` / `static-auth-secret`).
//!
//! username = `"<expiry unix seconds>:<label>"`, password = base64(HMAC-SHA1(secret, username)).
//! A TURN server holding the same secret recomputes the password from the username and refuses
//! usernames whose expiry has passed. The current time is passed in.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The longest TURN username accepted by [`check_username`], in bytes.
pub const MAX_USERNAME_LEN: usize = 128;

/// One set of TURN credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// `expiry:label`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// Seconds since the Unix epoch after which a server refuses them.
    pub expires_at: u64,
}

/// Why a TURN username was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TurnAuthError {
    /// Not `expiry:label` with a decimal expiry, or too long.
    #[error("the TURN username is not \"expiry:label\"")]
    Malformed,
    /// The expiry has passed.
    #[error("the TURN credentials have expired")]
    Expired,
}

/// The password for `username` under `secret`.
pub fn password(secret: &[u8], username: &str) -> String {
    let mut m = match <Hmac<Sha1> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC accepts keys of any length.
        Err(_) => return String::new(),
    };
    m.update(username.as_bytes());
    STANDARD.encode(m.finalize().into_bytes())
}

/// Mints credentials for `label`, valid for `ttl_secs` from `now_unix`.
pub fn mint(secret: &[u8], label: &str, now_unix: u64, ttl_secs: u64) -> TurnCredentials {
    let expires_at = now_unix.saturating_add(ttl_secs);
    let username = format!("{expires_at}:{label}");
    TurnCredentials {
        password: password(secret, &username),
        username,
        expires_at,
    }
}

/// Checks the form and expiry of a TURN REST username at `now_unix`; returns `(expiry, label)`.
pub fn check_username(username: &str, now_unix: u64) -> Result<(u64, &str), TurnAuthError> {
    if username.len() > MAX_USERNAME_LEN {
        return Err(TurnAuthError::Malformed);
    }
    let (expiry, label) = username.split_once(':').unwrap_or((username, ""));
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TurnAuthError::Malformed);
    }
    let expiry: u64 = expiry.parse().map_err(|_| TurnAuthError::Malformed)?;
    if now_unix >= expiry {
        return Err(TurnAuthError::Expired);
    }
    Ok((expiry, label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // Computed independently: printf '%s' '1700000000:alice' |
        //   openssl dgst -sha1 -hmac 'north' -binary | base64
        let p = password(b"north", "1700000000:alice");
        assert_eq!(p, KNOWN);
    }

    const KNOWN: &str = include_str!("../testdata/turn_rest_known_answer.txt");

    #[test]
    fn mint_then_check() {
        let c = mint(b"secret", "bob", 100, 60);
        assert_eq!(c.username, "160:bob");
        assert_eq!(c.expires_at, 160);
        assert_eq!(c.password, password(b"secret", "160:bob"));
        assert_eq!(check_username(&c.username, 159), Ok((160, "bob")));
        assert_eq!(
            check_username(&c.username, 160),
            Err(TurnAuthError::Expired)
        );
    }

    #[test]
    fn malformed_usernames() {
        for u in [
            "",
            ":x",
            "abc:x",
            "-1:x",
            "1.5:x",
            "99999999999999999999999:x",
        ] {
            assert_eq!(check_username(u, 0), Err(TurnAuthError::Malformed), "{u}");
        }
        assert_eq!(
            check_username(&"1".repeat(200), 0),
            Err(TurnAuthError::Malformed)
        );
        assert_eq!(check_username("5", 1), Ok((5, "")));
    }
}
