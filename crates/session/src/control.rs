//! Messages that travel inside the call's encrypted data channel: SAS confirmation, goodbye,
//! and application payloads (captions) that this crate passes through untouched.
//!
//! Format (plaintext of a data frame): `kind (1) || body`. Kinds: 1 SasConfirmed, 2 SasRejected,
//! 3 Bye (empty bodies), 16 App (body = application bytes, at most 16 KiB − 1).
#![forbid(unsafe_code)]

/// One data-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The person on the sending side confirmed that the SAS matches.
    SasConfirmed,
    /// The person on the sending side said the SAS does NOT match.
    SasRejected,
    /// The sender is hanging up.
    Bye,
    /// Application data (for example a caption), opaque here.
    App(Vec<u8>),
}

/// Why a data-channel message did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Empty message.
    #[error("empty control message")]
    Empty,
    /// Unknown kind byte.
    #[error("unknown control message kind {0}")]
    UnknownKind(u8),
    /// A kind that has no body carried one.
    #[error("control message kind {0} must have an empty body")]
    UnexpectedBody(u8),
}

const SAS_CONFIRMED: u8 = 1;
const SAS_REJECTED: u8 = 2;
const BYE: u8 = 3;
const APP: u8 = 16;

impl Control {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::SasConfirmed => vec![SAS_CONFIRMED],
            Self::SasRejected => vec![SAS_REJECTED],
            Self::Bye => vec![BYE],
            Self::App(body) => {
                let mut out = Vec::with_capacity(body.len().saturating_add(1));
                out.push(APP);
                out.extend_from_slice(body);
                out
            }
        }
    }

    /// Parses one message strictly.
    pub fn parse(bytes: &[u8]) -> Result<Self, ControlError> {
        let (&kind, body) = bytes.split_first().ok_or(ControlError::Empty)?;
        let empty = |m: Self| {
            if body.is_empty() {
                Ok(m)
            } else {
                Err(ControlError::UnexpectedBody(kind))
            }
        };
        match kind {
            SAS_CONFIRMED => empty(Self::SasConfirmed),
            SAS_REJECTED => empty(Self::SasRejected),
            BYE => empty(Self::Bye),
            APP => Ok(Self::App(body.to_vec())),
            other => Err(ControlError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        for m in [
            Control::SasConfirmed,
            Control::SasRejected,
            Control::Bye,
            Control::App(vec![]),
            Control::App(b"hola".to_vec()),
        ] {
            assert_eq!(Control::parse(&m.encode()), Ok(m));
        }
        assert_eq!(Control::parse(&[]), Err(ControlError::Empty));
        assert_eq!(Control::parse(&[9]), Err(ControlError::UnknownKind(9)));
        assert_eq!(
            Control::parse(&[1, 0]),
            Err(ControlError::UnexpectedBody(1))
        );
    }
}
