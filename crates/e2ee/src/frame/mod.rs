//! SFrame-style frame protection (RFC 9605) with ChaCha20-Poly1305.
//!
//! A protected frame is `header || ciphertext || tag(16)`. The header carries a key id and a
//! counter in as few bytes as possible ([`header`]); it is the AEAD's associated data, and the
//! nonce is the epoch salt XOR the counter. Each direction has its own key chain, and the key
//! id's low bit names the direction, so a frame reflected to its sender is rejected before any
//! cryptography. A receiver keeps a replay window per key ([`replay`]) and follows the
//! sender's rekey ratchet, keeping the previous key for a grace period ([`protect`]).
#![forbid(unsafe_code)]

pub mod header;
pub mod protect;
pub mod replay;

pub use header::FrameHeader;
pub use protect::{
    Direction, FramePosition, FrameReceiver, FrameSender, ReceiverConfig, ReceiverStats,
    SenderConfig, EPOCH_FRAMES,
};
pub use replay::{ReplayWindow, REPLAY_WINDOW};

/// The AEAD tag length.
pub const TAG_LEN: usize = 16;
/// The largest payload [`FrameSender::protect`] accepts (captions can exceed one MTU; audio
/// frames are far smaller).
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024;
/// The largest protected frame [`FrameReceiver::unprotect`] looks at: the longest header
/// (1 + 8 + 8 bytes) plus the largest payload plus the tag.
pub const MAX_FRAME_LEN: usize = 17 + MAX_PAYLOAD_LEN + TAG_LEN;
