//! # aparte-session: the security session of one call
//!
//! This crate turns the e2ee building blocks into the rules a call follows, with no I/O:
//! it runs the handshake, checks the peer's identity against the known-peers store under the
//! configured [`Policy`], tracks the SAS confirmation of both people, and says at every moment
//! what the call UI must show ([`SecurityStatus`]) and whether media may flow
//! ([`CallSecurity::media_allowed`]). The async call client feeds it handshake messages and
//! data-channel frames and carries out the [`Event`]s it returns.
//!
//! Rules it enforces:
//! - no media before key confirmation;
//! - a CHANGED identity on a pinned peer stops the call until an explicit override;
//! - "verified" needs both people to confirm the SAS (or a previously verified pinned identity);
//! - a rejected SAS on either side ends the call.
#![forbid(unsafe_code)]

pub mod control;
pub mod policy;
pub mod session;

pub use control::Control;
pub use policy::Policy;
pub use session::{
    CallSecurity, Event, FailReason, MediaFrame, SecurityStatus, SessionConfig, SessionError,
    VerifiedBy,
};
