//! The decisions a call makes about its network path, as sans-IO state machines: events and
//! the current time go in, actions come out. No sockets, no clock, no async runtime, so every
//! rule is unit-tested here with a simulated clock (as quinn-proto and str0m do), and the
//! client's async `call.rs` only carries the actions out.
//!
//! - [`recovery`]: after set-up, noticing that the path broke (media silent, ICE down, our
//!   signaling connection dead, the peer back on a new connection), checking the signaling
//!   connection at once, restarting ICE as soon as signaling works, retrying, and giving up;
//! - [`bitrate`]: the Opus bitrate step (32 → 24 → 16 → 12 → 8 kbit/s and back), following the
//!   loss and round trip the peer reports, constant within a step, with the packet time
//!   (20, 40 or 60 ms of audio per packet) each step uses;
//! - [`relay_fallback`]: UDP first, the relays over TCP/TLS only when no UDP pair worked within
//!   about 2 s (issue 16).
//!
//! Time is milliseconds on any monotonic clock the caller chooses (the call uses milliseconds
//! since it started).
#![forbid(unsafe_code)]

pub mod bitrate;
pub mod recovery;
pub mod relay_fallback;

pub use bitrate::{BitrateConfig, BitrateLadder, LinkReport, PACKET_MS, STEPS};
pub use recovery::{Action, Recovery, RecoveryConfig};
pub use relay_fallback::{FallbackAction, FallbackConfig, RelayFallback};
