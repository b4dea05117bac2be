//! Error codes (in `error` messages) and WebSocket close codes.

use serde::{Deserialize, Serialize};

/// Why the server refused something. Sent in an `error` message and counted in the server's
/// `rejects` metric under the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message was not valid JSON (or not valid UTF-8, or a binary frame).
    Malformed,
    /// The JSON was valid but its `type` is not one this protocol version knows.
    UnknownType,
    /// A known `type` with missing, extra or ill-typed fields.
    InvalidMessage,
    /// The message is larger than the server's maximum message size.
    MessageTooLarge,
    /// The connection sent messages faster than its rate limit allows; the message was dropped.
    RateLimited,
    /// The first message was not `hello`.
    HelloRequired,
    /// `hello` named a protocol version the server does not speak. Fatal.
    VersionMismatch,
    /// `hello` sent twice, or `join` sent while already in a room.
    AlreadyJoined,
    /// `relay` or `leave` sent before joining a room.
    NotJoined,
    /// The room id is not a valid room id (at least 22 base64url characters).
    InvalidRoomId,
    /// The server requires a token and none was given. Fatal.
    TokenRequired,
    /// The token is malformed or its signature does not verify. Fatal.
    TokenInvalid,
    /// The token has expired. Fatal.
    TokenExpired,
    /// The token is valid but grants another room. Fatal.
    TokenWrongRoom,
    /// The room already holds its capacity of members. Fatal.
    RoomFull,
    /// `relay` named a peer that is not in the room, or nobody else is in the room.
    PeerNotFound,
    /// The hello/join handshake did not complete in time. Fatal.
    HandshakeTimeout,
    /// Nothing (not even a pong) was received for the idle timeout. Fatal.
    IdleTimeout,
    /// The connection did not read its messages fast enough; its send queue filled. Fatal.
    SlowConsumer,
    /// Too many errors on one connection. Fatal.
    TooManyErrors,
    /// The server is shutting down. Fatal.
    ShuttingDown,
}

impl ErrorCode {
    /// Every error code, in documentation order.
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::Malformed,
        ErrorCode::UnknownType,
        ErrorCode::InvalidMessage,
        ErrorCode::MessageTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::HelloRequired,
        ErrorCode::VersionMismatch,
        ErrorCode::AlreadyJoined,
        ErrorCode::NotJoined,
        ErrorCode::InvalidRoomId,
        ErrorCode::TokenRequired,
        ErrorCode::TokenInvalid,
        ErrorCode::TokenExpired,
        ErrorCode::TokenWrongRoom,
        ErrorCode::RoomFull,
        ErrorCode::PeerNotFound,
        ErrorCode::HandshakeTimeout,
        ErrorCode::IdleTimeout,
        ErrorCode::SlowConsumer,
        ErrorCode::TooManyErrors,
        ErrorCode::ShuttingDown,
    ];

    /// The wire name, e.g. `"room_full"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::InvalidRoomId => "invalid_room_id",
            ErrorCode::TokenRequired => "token_required",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenWrongRoom => "token_wrong_room",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::PeerNotFound => "peer_not_found",
            ErrorCode::HandshakeTimeout => "handshake_timeout",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::TooManyErrors => "too_many_errors",
            ErrorCode::ShuttingDown => "shutting_down",
        }
    }

    /// The close code the server closes the connection with after this error, or `None` when
    /// the error is not fatal and the connection stays open.
    pub fn close_code(self) -> Option<CloseCode> {
        match self {
            ErrorCode::VersionMismatch => Some(CloseCode::VERSION_MISMATCH),
            ErrorCode::TokenRequired
            | ErrorCode::TokenInvalid
            | ErrorCode::TokenExpired
            | ErrorCode::TokenWrongRoom => Some(CloseCode::UNAUTHORIZED),
            ErrorCode::RoomFull => Some(CloseCode::ROOM_FULL),
            ErrorCode::HandshakeTimeout | ErrorCode::IdleTimeout => Some(CloseCode::TIMEOUT),
            ErrorCode::SlowConsumer => Some(CloseCode::SLOW_CONSUMER),
            ErrorCode::TooManyErrors => Some(CloseCode::PROTOCOL_ERROR),
            ErrorCode::ShuttingDown => Some(CloseCode::GOING_AWAY),
            _ => None,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WebSocket close code used by the server (RFC 6455 §7.4; 4000–4999 are ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// The client sent `leave`; the server closes normally.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// The server is shutting down (`shutting_down`).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// A message exceeded the hard frame limit (four times the maximum message size).
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// Too many protocol errors on this connection (`too_many_errors`).
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(4000);
    /// Unsupported protocol version (`version_mismatch`).
    pub const VERSION_MISMATCH: CloseCode = CloseCode(4001);
    /// Missing, invalid, expired or wrong-room token (`token_*`).
    pub const UNAUTHORIZED: CloseCode = CloseCode(4003);
    /// The room is full (`room_full`).
    pub const ROOM_FULL: CloseCode = CloseCode(4004);
    /// Handshake or idle timeout (`handshake_timeout`, `idle_timeout`).
    pub const TIMEOUT: CloseCode = CloseCode(4008);
    /// The client did not keep up with its messages (`slow_consumer`).
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4009);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn fatal_codes_have_close_codes() {
        assert_eq!(ErrorCode::RoomFull.close_code(), Some(CloseCode::ROOM_FULL));
        assert_eq!(ErrorCode::Malformed.close_code(), None);
        assert_eq!(ErrorCode::RateLimited.close_code(), None);
        assert_eq!(
            ErrorCode::TokenExpired.close_code(),
            Some(CloseCode::UNAUTHORIZED)
        );
    }
}
