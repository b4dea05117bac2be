//! The key schedule: every secret of a call, derived with HKDF-SHA256 from the handshake's
//! Diffie-Hellman outputs and salted with the transcript hash.
//!
//! All labels are ASCII and start with `aparte/v1 `. The full table is in `docs/PROTOCOL.md`
//! §4; [`labels`] holds them as constants so the spec and the code cannot drift silently
//! (the test vectors pin every output).
#![forbid(unsafe_code)]

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The HKDF `info` labels, one per derived secret.
pub mod labels {
    /// Prefix of the commitment hash input.
    pub const COMMIT: &[u8] = b"aparte/v1 commit";
    /// Prefix of the transcript hash input.
    pub const TRANSCRIPT: &[u8] = b"aparte/v1 transcript";
    /// Media chain secret for frames the initiator sends.
    pub const MEDIA_I2R: &[u8] = b"aparte/v1 media i2r";
    /// Media chain secret for frames the responder sends.
    pub const MEDIA_R2I: &[u8] = b"aparte/v1 media r2i";
    /// Data (captions, control) chain secret for frames the initiator sends.
    pub const DATA_I2R: &[u8] = b"aparte/v1 data i2r";
    /// Data chain secret for frames the responder sends.
    pub const DATA_R2I: &[u8] = b"aparte/v1 data r2i";
    /// The initiator's key-confirmation MAC key.
    pub const CONFIRM_I: &[u8] = b"aparte/v1 confirm i";
    /// The responder's key-confirmation MAC key.
    pub const CONFIRM_R: &[u8] = b"aparte/v1 confirm r";
    /// The data MACed by both confirmation keys (followed by the transcript hash).
    pub const CONFIRM_MSG: &[u8] = b"aparte/v1 key confirmation";
    /// The short authentication string bytes.
    pub const SAS: &[u8] = b"aparte/v1 sas";
    /// A frame key from an epoch's chain secret.
    pub const FRAME_KEY: &[u8] = b"aparte/v1 frame key";
    /// A frame salt from an epoch's chain secret.
    pub const FRAME_SALT: &[u8] = b"aparte/v1 frame salt";
    /// The next epoch's chain secret from this epoch's (the rekey ratchet).
    pub const NEXT_CHAIN: &[u8] = b"aparte/v1 next chain";
    /// The identity fingerprint hash prefix.
    pub const IDENTITY_FINGERPRINT: &[u8] = b"aparte/v1 identity fingerprint";
}

/// A 32-byte secret that is wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    /// Wraps raw secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Keep the borrow short and never log them.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

/// Everything the handshake derives, before it is split into frame protectors.
#[derive(Debug, Zeroize, ZeroizeOnDrop)]
pub struct CallSecrets {
    /// Media chain secret, initiator to responder.
    pub media_i2r: Secret32,
    /// Media chain secret, responder to initiator.
    pub media_r2i: Secret32,
    /// Data chain secret, initiator to responder.
    pub data_i2r: Secret32,
    /// Data chain secret, responder to initiator.
    pub data_r2i: Secret32,
    /// The initiator's confirmation MAC key.
    pub confirm_i: Secret32,
    /// The responder's confirmation MAC key.
    pub confirm_r: Secret32,
    /// SAS bytes; the first three (24 bits) are shown.
    pub sas: [u8; 4],
}

/// Derives all call secrets: `PRK = HKDF-Extract(salt = transcript_hash, IKM = dh outputs)`,
/// then one `HKDF-Expand(PRK, label)` per secret.
pub fn derive_call_secrets(transcript_hash: &[u8; 32], ikm: &[u8]) -> CallSecrets {
    let hk = Hkdf::<Sha256>::new(Some(transcript_hash), ikm);
    let secret = |label: &[u8]| {
        let mut out = [0u8; 32];
        expand(&hk, label, &mut out);
        let s = Secret32(out);
        out.zeroize();
        s
    };
    let mut sas = [0u8; 4];
    expand(&hk, labels::SAS, &mut sas);
    CallSecrets {
        media_i2r: secret(labels::MEDIA_I2R),
        media_r2i: secret(labels::MEDIA_R2I),
        data_i2r: secret(labels::DATA_I2R),
        data_r2i: secret(labels::DATA_R2I),
        confirm_i: secret(labels::CONFIRM_I),
        confirm_r: secret(labels::CONFIRM_R),
        sas,
    }
}

/// The AEAD key and nonce salt of one epoch of one direction.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct EpochKeys {
    /// ChaCha20-Poly1305 key.
    pub key: [u8; 32],
    /// XORed with the counter to form the nonce.
    pub salt: [u8; 12],
}

/// Derives an epoch's frame key and salt from its chain secret.
pub fn epoch_keys(chain: &Secret32) -> EpochKeys {
    let mut keys = EpochKeys {
        key: [0; 32],
        salt: [0; 12],
    };
    let hk = prk_hkdf(chain);
    expand(&hk, labels::FRAME_KEY, &mut keys.key);
    expand(&hk, labels::FRAME_SALT, &mut keys.salt);
    keys
}

/// The rekey ratchet: the next epoch's chain secret. The old one should be dropped after use,
/// which gives forward secrecy inside a call.
pub fn next_chain(chain: &Secret32) -> Secret32 {
    let mut out = Zeroizing::new([0u8; 32]);
    expand(&prk_hkdf(chain), labels::NEXT_CHAIN, out.as_mut());
    Secret32(*out)
}

/// SHA-256 over the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

fn prk_hkdf(chain: &Secret32) -> Hkdf<Sha256> {
    // A chain secret is a uniformly random 32-byte HKDF output, so it is a valid PRK as is.
    match Hkdf::<Sha256>::from_prk(&chain.0) {
        Ok(hk) => hk,
        // Unreachable: from_prk only fails for a PRK shorter than the hash length (32).
        Err(_) => Hkdf::<Sha256>::new(None, &chain.0),
    }
}

fn expand(hk: &Hkdf<Sha256>, label: &[u8], out: &mut [u8]) {
    // Expand only fails for outputs longer than 255 * 32 bytes; ours are at most 32.
    if hk.expand(label, out).is_err() {
        out.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct() {
        let all = [
            labels::COMMIT,
            labels::TRANSCRIPT,
            labels::MEDIA_I2R,
            labels::MEDIA_R2I,
            labels::DATA_I2R,
            labels::DATA_R2I,
            labels::CONFIRM_I,
            labels::CONFIRM_R,
            labels::CONFIRM_MSG,
            labels::SAS,
            labels::FRAME_KEY,
            labels::FRAME_SALT,
            labels::NEXT_CHAIN,
            labels::IDENTITY_FINGERPRINT,
        ];
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
        assert!(all.iter().all(|l| l.starts_with(b"aparte/v1 ")));
    }

    #[test]
    fn every_derived_secret_differs() {
        let s = derive_call_secrets(&[7; 32], &[9; 64]);
        let all = [
            &s.media_i2r,
            &s.media_r2i,
            &s.data_i2r,
            &s.data_r2i,
            &s.confirm_i,
            &s.confirm_r,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in all.iter().skip(i + 1) {
                assert_ne!(a.expose(), b.expose());
            }
        }
    }

    #[test]
    fn transcript_changes_every_secret() {
        let a = derive_call_secrets(&[7; 32], &[9; 64]);
        let b = derive_call_secrets(&[8; 32], &[9; 64]);
        assert_ne!(a.media_i2r.expose(), b.media_i2r.expose());
        assert_ne!(a.sas, b.sas);
    }

    #[test]
    fn ratchet_moves_forward() {
        let c0 = Secret32::from_bytes([1; 32]);
        let c1 = next_chain(&c0);
        let c2 = next_chain(&c1);
        assert_ne!(c0.expose(), c1.expose());
        assert_ne!(c1.expose(), c2.expose());
        assert_ne!(epoch_keys(&c0).key, epoch_keys(&c1).key);
        assert_ne!(epoch_keys(&c0).salt, epoch_keys(&c1).salt);
    }

    #[test]
    fn debug_never_shows_secret_bytes() {
        let s = Secret32::from_bytes([0xAB; 32]);
        assert!(!format!("{s:?}").to_lowercase().contains("ab"));
    }
}
