//! The wire protocol of the aparté signaling server, shared by the server and the call client.
//!
//! The signaling server is a dumb, hardened mailbox: it introduces the two peers of a room and
//! relays opaque JSON payloads (SDP, ICE candidates, end-to-end key-exchange messages) between
//! them. It never parses a payload and never sees a key. This crate holds everything both sides
//! must agree on, as pure, sans-IO code (no sockets, no clock, no async runtime; the current
//! time is always passed in):
//!
//! - [`message`]: the JSON messages in both directions, with strict parsing
//!   ([`ClientMessage::parse`], [`ServerMessage::parse`]) that rejects unknown types and fields;
//! - [`codes`]: the error codes carried by `error` messages and the WebSocket close codes;
//! - [`resume`]: resume tokens, with which a client whose connection died mid-call takes its
//!   seat in the room back at once;
//! - [`room`]: room ids (≥ 128 random bits, made by the client) and peer ids;
//! - [`token`]: HMAC-SHA256-signed join grants (JWT HS256 compact form) naming a room or any room,
//!   an expiry and an optional user label;
//! - [`turn_rest`]: TURN REST credentials (`expiry:label` / base64(HMAC-SHA1)), the scheme coturn
//!   accepts with `use-auth-secret`, and their verification for the embedded relay.
//!
//! The protocol is specified in `docs/SIGNALING.md`.
#![forbid(unsafe_code)]

pub mod codes;
pub mod message;
pub mod resume;
pub mod room;
pub mod token;
pub mod turn_rest;

pub use codes::{CloseCode, ErrorCode};
pub use message::{ClientMessage, IceServer, LeaveReason, ParseError, PeerInfo, ServerMessage};
pub use resume::ResumeToken;
pub use room::{PeerId, RoomId, RoomIdError};

/// The protocol version this crate speaks. A `hello` naming another version is refused with
/// [`ErrorCode::VersionMismatch`] and close code [`CloseCode::VERSION_MISMATCH`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Default maximum size of one message, in bytes (64 KiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
