//! # aparte-client: the aparté call client
//!
//! The async shell around the sans-IO crates: it moves bytes between WebRTC
//! ([`transport`]), the call's security session (`aparte-session`) and the audio pipeline.
//! All protocol decisions live in the sans-IO crates; this crate only wires them to sockets,
//! timers and devices.
#![forbid(unsafe_code)]

pub mod audio;
pub mod call;
pub mod sdp;
pub mod signaling;
pub mod transport;
