//! # aparte-client: the aparté call client
//!
//! The async shell around the sans-IO crates: it moves bytes between WebRTC
//! ([`transport`]), the call's security session (`aparte-session`) and the audio pipeline.
//! All protocol decisions live in the sans-IO crates; this crate only wires them to sockets,
//! timers and devices. Sound devices ([`devices`], [`capture`], [`playback`]) sit behind the
//! audio pipeline's source and sink traits, so headless runs with WAV files need no sound card;
//! [`config`] reads the user's defaults.
#![forbid(unsafe_code)]

pub mod audio;
pub mod call;
pub mod captions;
pub mod capture;
pub mod config;
pub mod devices;
pub mod offline;
pub mod outcome;
pub mod output_file;
pub mod playback;
pub mod rejoin;
pub mod relay_fallback;
pub mod resample;
pub mod sdp;
pub mod signaling;
pub mod speak;
pub mod tls;
pub mod transport;
