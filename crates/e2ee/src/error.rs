//! Typed errors. Every rejection says what went wrong and never carries secret material.
#![forbid(unsafe_code)]

/// Why a handshake message was rejected or the handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The message does not parse: wrong length, unknown type, bad flag byte.
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {0} (this build speaks version 1)")]
    UnsupportedVersion(u8),
    /// The peer proposed a cipher suite this build does not implement.
    #[error("unsupported cipher suite {0:#06x}")]
    UnsupportedSuite(u16),
    /// A well-formed message arrived in a state that does not expect it.
    #[error("unexpected {got} message while {state}")]
    UnexpectedMessage {
        /// The message type that arrived.
        got: &'static str,
        /// What the handshake was waiting for.
        state: &'static str,
    },
    /// The initiator revealed a key that does not match its earlier commitment.
    #[error("the initiator's revealed key does not match its commitment (possible key grinding)")]
    CommitmentMismatch,
    /// A Diffie-Hellman result was all zeros: the peer sent a low-order point.
    #[error("key agreement produced a non-contributory (all-zero) shared secret")]
    NonContributory,
    /// The peer's key-confirmation MAC does not match: the two sides derived different keys.
    #[error("key confirmation failed: the two sides derived different keys (man-in-the-middle, swapped DTLS fingerprint, or corruption)")]
    ConfirmationFailed,
    /// The handshake failed earlier and accepts nothing more.
    #[error("the handshake has already failed")]
    AlreadyFailed,
    /// [`crate::handshake::Handshake::finish`] was called before the handshake completed.
    #[error("the handshake is not complete yet")]
    NotComplete,
    /// The call parameters passed in by the caller are not acceptable.
    #[error("invalid call parameters: {0}")]
    InvalidParams(&'static str),
}

impl HandshakeError {
    /// Whether this error ends the handshake. Non-fatal errors (garbage, a stray or injected
    /// message) leave the state untouched, so an attacker cannot erase accepted progress by
    /// injecting junk; fatal ones are failed cryptographic checks.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::CommitmentMismatch
                | Self::NonContributory
                | Self::ConfirmationFailed
                | Self::AlreadyFailed
        )
    }
}

/// Why a protected frame was rejected (or could not be produced).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame is shorter than a header and tag, or its header is not minimally encoded.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The frame or payload exceeds the size bound.
    #[error("frame too large: {len} bytes, limit {max}")]
    TooLarge {
        /// Size received.
        len: usize,
        /// Size allowed.
        max: usize,
    },
    /// The frame carries this endpoint's own direction: it was reflected back to its sender.
    #[error("frame was reflected back to its own sender")]
    Reflected,
    /// No key is known (or derivable) for the frame's key id.
    #[error("unknown key id {0}")]
    UnknownKeyId(u64),
    /// The counter was already accepted under this key.
    #[error("replayed frame")]
    Replayed,
    /// The counter is older than the replay window.
    #[error("frame too old for the replay window")]
    TooOld,
    /// The AEAD tag does not verify: the frame was forged, modified or truncated.
    #[error("frame failed authentication")]
    AuthenticationFailed,
    /// The sender has used every counter it may use; it must rekey or stop, never wrap.
    #[error("frame counter exhausted")]
    CounterExhausted,
}

/// The reason classes that a receiver counts rejected frames under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// [`FrameError::Malformed`].
    Malformed,
    /// [`FrameError::TooLarge`].
    TooLarge,
    /// [`FrameError::Reflected`].
    Reflected,
    /// [`FrameError::UnknownKeyId`].
    UnknownKey,
    /// [`FrameError::Replayed`].
    Replayed,
    /// [`FrameError::TooOld`].
    TooOld,
    /// [`FrameError::AuthenticationFailed`].
    Forged,
}

impl RejectReason {
    /// Every reason, in a stable order (for stats output).
    pub const ALL: [RejectReason; 7] = [
        Self::Malformed,
        Self::TooLarge,
        Self::Reflected,
        Self::UnknownKey,
        Self::Replayed,
        Self::TooOld,
        Self::Forged,
    ];

    /// A short snake_case name, stable for metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::Reflected => "reflected",
            Self::UnknownKey => "unknown_key",
            Self::Replayed => "replayed",
            Self::TooOld => "too_old",
            Self::Forged => "forged",
        }
    }
}

impl FrameError {
    /// The counter class of a receive-side rejection; `None` for sender-side errors.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        Some(match self {
            Self::Malformed(_) => RejectReason::Malformed,
            Self::TooLarge { .. } => RejectReason::TooLarge,
            Self::Reflected => RejectReason::Reflected,
            Self::UnknownKeyId(_) => RejectReason::UnknownKey,
            Self::Replayed => RejectReason::Replayed,
            Self::TooOld => RejectReason::TooOld,
            Self::AuthenticationFailed => RejectReason::Forged,
            Self::CounterExhausted => return None,
        })
    }
}

/// Errors from the identity and known-peers files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is readable by other users; a secret must be private (mode 0600).
    #[error("{path}: permissions {mode:o} are too open; the file must be private to its owner (chmod 600)")]
    InsecurePermissions {
        /// The file.
        path: std::path::PathBuf,
        /// The file mode found.
        mode: u32,
    },
    /// The file content does not parse.
    #[error("{what} line {line}: {reason}")]
    Parse {
        /// Which file format.
        what: &'static str,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A peer name is not acceptable.
    #[error("invalid peer name: {0}")]
    InvalidPeerName(&'static str),
    /// The peer's identity changed and the caller tried to record it without an explicit override.
    #[error(
        "peer identity changed; refusing to overwrite the pinned key without an explicit override"
    )]
    IdentityChanged,
}
