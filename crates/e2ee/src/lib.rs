//! # aparte-e2ee: the end-to-end encryption core of aparté
//!
//! This crate makes a two-party call end-to-end encrypted and verifiable, independent of
//! DTLS-SRTP and of every server on the path. It is **sans-IO**: no sockets, no threads, no
//! clock and no async runtime. Callers feed bytes and the current time in and get bytes out,
//! so every rule here can be tested and fuzzed directly. The wire format is specified in
//! `docs/PROTOCOL.md`, and the test vectors in `tests/vectors/` pin it byte for byte.
//!
//! The pieces, in the order a call uses them:
//!
//! 1. [`handshake`]: a commit-before-reveal X25519 handshake (as in ZRTP, RFC 6189) with key
//!    confirmation each way. Its transcript binds the room, both ephemeral keys, both optional
//!    long-term identity keys and both DTLS certificate fingerprints.
//! 2. [`keys`]: the HKDF-SHA256 key schedule with every label documented.
//! 3. [`sas`]: the short authentication string the two people read aloud (24 bits, as four
//!    words or eight digits).
//! 4. [`identity`]: long-term identity keys and the known-peers store for key continuity
//!    ("new", "matches", "CHANGED"); [`store`] is the thin file layer for both.
//! 5. [`frame`]: SFrame-style (RFC 9605) protection of audio and data frames with
//!    ChaCha20-Poly1305, a replay window, and a forward ratchet for rekeying.
//!
//! ```
//! use aparte_e2ee::handshake::{CallParams, Handshake};
//! use aparte_e2ee::frame::{ReceiverConfig, SenderConfig};
//! use rand_core::OsRng;
//!
//! let alice_fp = b"sha-256 AA:BB".to_vec();
//! let bob_fp = b"sha-256 CC:DD".to_vec();
//! let room = b"room-7f3a".to_vec();
//! let alice_params = CallParams::new(room.clone(), alice_fp.clone(), bob_fp.clone())?;
//! let bob_params = CallParams::new(room, bob_fp, alice_fp)?;
//!
//! let (mut alice, commit) = Handshake::initiator(alice_params, None, &mut OsRng)?;
//! let mut bob = Handshake::responder(bob_params, None, &mut OsRng)?;
//! let response = bob.receive(&commit)?.expect("bob answers the commit");
//! let reveal = alice.receive(&response)?.expect("alice reveals");
//! let confirm = bob.receive(&reveal)?.expect("bob confirms");
//! assert!(alice.receive(&confirm)?.is_none());
//!
//! let alice = alice.finish()?;
//! let bob = bob.finish()?;
//! assert_eq!(alice.info().sas(), bob.info().sas()); // people compare this by voice
//!
//! let mut alice = alice.into_channels(SenderConfig::default(), ReceiverConfig::default());
//! let mut bob = bob.into_channels(SenderConfig::default(), ReceiverConfig::default());
//! let frame = alice.media_sender.protect(b"opus bytes")?;
//! assert_eq!(bob.media_receiver.unprotect(&frame, 0)?, b"opus bytes");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used
    )
)]

pub mod error;
pub mod frame;
pub mod handshake;
pub mod identity;
pub mod keys;
pub mod sas;
pub mod store;

mod codec;

pub use error::{FrameError, HandshakeError, RejectReason, StoreError};

/// The protocol version this build speaks. It is the second byte of every handshake message.
pub const PROTOCOL_VERSION: u8 = 1;

/// The cipher suite identifier, from the SFrame private-use range (RFC 9605, 0xF000–0xFFFF):
/// X25519 key agreement, HKDF-SHA256, ChaCha20-Poly1305 with a 16-byte tag.
pub const SUITE_X25519_CHACHA20POLY1305_SHA256: u16 = 0xF0A1;
