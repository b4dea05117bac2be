//! The four handshake messages and their strict byte encodings.
//!
//! Every message starts with `type (1) | version (1) | suite (2, big-endian)`. Lengths are
//! fixed per type (an identity key is present or not, as a flag byte says), and any other
//! length, flag value or trailing byte is rejected.
//!
//! | type | name     | sender    | body                                             | bytes     |
//! |------|----------|-----------|--------------------------------------------------|-----------|
//! | 1    | Commit   | initiator | commitment (32)                                  | 36        |
//! | 2    | Response | responder | ephemeral (32), id flag (1), [identity (32)]     | 37 or 69  |
//! | 3    | Reveal   | initiator | ephemeral (32), id flag (1), [identity (32)], confirm MAC (32) | 69 or 101 |
//! | 4    | Confirm  | responder | confirm MAC (32)                                 | 36        |
#![forbid(unsafe_code)]

use crate::codec::Reader;
use crate::error::HandshakeError;
use crate::{PROTOCOL_VERSION, SUITE_X25519_CHACHA20POLY1305_SHA256};

/// Message type bytes.
pub mod kind {
    /// [`super::Commit`].
    pub const COMMIT: u8 = 1;
    /// [`super::Response`].
    pub const RESPONSE: u8 = 2;
    /// [`super::Reveal`].
    pub const REVEAL: u8 = 3;
    /// [`super::Confirm`].
    pub const CONFIRM: u8 = 4;
}

/// The largest handshake message (a Reveal with an identity).
pub const MAX_MESSAGE_LEN: usize = 101;

/// Initiator → responder: a hash commitment to the initiator's ephemeral key and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// `SHA-256("aparte/v1 commit" || ephemeral || id_flag || [identity])`.
    pub commitment: [u8; 32],
}

/// Responder → initiator: the responder's ephemeral key and optional identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The responder's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// The responder's long-term identity public key, if it has one.
    pub identity: Option<[u8; 32]>,
}

/// Initiator → responder: the committed key, revealed, and the initiator's confirmation MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reveal {
    /// The initiator's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// The initiator's long-term identity public key, if it has one.
    pub identity: Option<[u8; 32]>,
    /// `HMAC-SHA256(confirm_i, "aparte/v1 key confirmation" || transcript_hash)`.
    pub confirm: [u8; 32],
}

/// Responder → initiator: the responder's confirmation MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// `HMAC-SHA256(confirm_r, "aparte/v1 key confirmation" || transcript_hash)`.
    pub confirm: [u8; 32],
}

/// Any handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Type 1.
    Commit(Commit),
    /// Type 2.
    Response(Response),
    /// Type 3.
    Reveal(Reveal),
    /// Type 4.
    Confirm(Confirm),
}

impl Message {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Commit(_) => "Commit",
            Self::Response(_) => "Response",
            Self::Reveal(_) => "Reveal",
            Self::Confirm(_) => "Confirm",
        }
    }

    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_MESSAGE_LEN);
        let kind = match self {
            Self::Commit(_) => kind::COMMIT,
            Self::Response(_) => kind::RESPONSE,
            Self::Reveal(_) => kind::REVEAL,
            Self::Confirm(_) => kind::CONFIRM,
        };
        out.push(kind);
        out.push(PROTOCOL_VERSION);
        out.extend_from_slice(&SUITE_X25519_CHACHA20POLY1305_SHA256.to_be_bytes());
        match self {
            Self::Commit(m) => out.extend_from_slice(&m.commitment),
            Self::Response(m) => put_key_and_identity(&mut out, &m.ephemeral, m.identity.as_ref()),
            Self::Reveal(m) => {
                put_key_and_identity(&mut out, &m.ephemeral, m.identity.as_ref());
                out.extend_from_slice(&m.confirm);
            }
            Self::Confirm(m) => out.extend_from_slice(&m.confirm),
        }
        out
    }

    /// Parses one message strictly.
    pub fn parse(bytes: &[u8]) -> Result<Self, HandshakeError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(HandshakeError::Malformed("message too long"));
        }
        let mut r = Reader::new(bytes);
        let kind = r.u8().ok_or(HandshakeError::Malformed("empty message"))?;
        let version = r
            .u8()
            .ok_or(HandshakeError::Malformed("truncated header"))?;
        let suite = r
            .u16()
            .ok_or(HandshakeError::Malformed("truncated header"))?;
        if !(kind::COMMIT..=kind::CONFIRM).contains(&kind) {
            return Err(HandshakeError::Malformed("unknown message type"));
        }
        if version != PROTOCOL_VERSION {
            return Err(HandshakeError::UnsupportedVersion(version));
        }
        if suite != SUITE_X25519_CHACHA20POLY1305_SHA256 {
            return Err(HandshakeError::UnsupportedSuite(suite));
        }
        let truncated = HandshakeError::Malformed("truncated body");
        let message = match kind {
            kind::COMMIT => Self::Commit(Commit {
                commitment: r.array32().ok_or(truncated)?,
            }),
            kind::RESPONSE => {
                let (ephemeral, identity) = read_key_and_identity(&mut r)?;
                Self::Response(Response {
                    ephemeral,
                    identity,
                })
            }
            kind::REVEAL => {
                let (ephemeral, identity) = read_key_and_identity(&mut r)?;
                Self::Reveal(Reveal {
                    ephemeral,
                    identity,
                    confirm: r.array32().ok_or(truncated)?,
                })
            }
            _ => Self::Confirm(Confirm {
                confirm: r.array32().ok_or(truncated)?,
            }),
        };
        if !r.is_empty() {
            return Err(HandshakeError::Malformed("trailing bytes"));
        }
        Ok(message)
    }
}

fn put_key_and_identity(out: &mut Vec<u8>, key: &[u8; 32], identity: Option<&[u8; 32]>) {
    out.extend_from_slice(key);
    match identity {
        Some(id) => {
            out.push(1);
            out.extend_from_slice(id);
        }
        None => out.push(0),
    }
}

type KeyAndIdentity = ([u8; 32], Option<[u8; 32]>);

fn read_key_and_identity(r: &mut Reader<'_>) -> Result<KeyAndIdentity, HandshakeError> {
    let truncated = HandshakeError::Malformed("truncated body");
    let key = r.array32().ok_or(truncated.clone())?;
    let identity = match r.u8().ok_or(truncated.clone())? {
        0 => None,
        1 => Some(r.array32().ok_or(truncated)?),
        _ => return Err(HandshakeError::Malformed("identity flag must be 0 or 1")),
    };
    Ok((key, identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Commit(Commit {
                commitment: [1; 32],
            }),
            Message::Response(Response {
                ephemeral: [2; 32],
                identity: None,
            }),
            Message::Response(Response {
                ephemeral: [2; 32],
                identity: Some([3; 32]),
            }),
            Message::Reveal(Reveal {
                ephemeral: [4; 32],
                identity: Some([5; 32]),
                confirm: [6; 32],
            }),
            Message::Reveal(Reveal {
                ephemeral: [4; 32],
                identity: None,
                confirm: [6; 32],
            }),
            Message::Confirm(Confirm { confirm: [7; 32] }),
        ]
    }

    #[test]
    fn every_message_round_trips_with_its_documented_length() {
        let lengths = [36, 37, 69, 101, 69, 36];
        for (m, len) in samples().into_iter().zip(lengths) {
            let bytes = m.encode();
            assert_eq!(bytes.len(), len, "{}", m.name());
            assert_eq!(Message::parse(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        for m in samples() {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                assert!(
                    Message::parse(&bytes[..cut]).is_err(),
                    "{} cut {cut}",
                    m.name()
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Message::parse(&longer).is_err());
        }
    }

    #[test]
    fn header_fields_are_checked() {
        let good = samples()[0].encode();
        let mut bad = good.clone();
        bad[0] = 9;
        assert_eq!(
            Message::parse(&bad),
            Err(HandshakeError::Malformed("unknown message type"))
        );
        let mut bad = good.clone();
        bad[1] = 2;
        assert_eq!(
            Message::parse(&bad),
            Err(HandshakeError::UnsupportedVersion(2))
        );
        let mut bad = good;
        bad[3] ^= 1;
        assert!(matches!(
            Message::parse(&bad),
            Err(HandshakeError::UnsupportedSuite(_))
        ));
        let mut bad = samples()[1].encode();
        bad[36] = 2;
        assert!(Message::parse(&bad).is_err());
    }
}
