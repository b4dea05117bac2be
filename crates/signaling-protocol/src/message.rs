//! The JSON messages of the protocol, in both directions.
//!
//! Every message is one WebSocket text frame holding one JSON object with a `"type"` field.
//! Parsing is strict: invalid UTF-8 or JSON is [`ErrorCode::Malformed`], an unknown `type` is
//! [`ErrorCode::UnknownType`], and a known type with a missing, extra, duplicated or ill-typed
//! field is [`ErrorCode::InvalidMessage`]. Payloads are opaque: they must be valid JSON (the
//! whole frame is parsed), but their content is never looked at.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::resume::ResumeToken;
use crate::room::{PeerId, RoomId};

/// A message from a client to the server.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Must be the first message: names the protocol version the client speaks.
    Hello {
        /// The client's protocol version ([`crate::PROTOCOL_VERSION`]).
        version: u32,
    },
    /// Join a room. Answered by `joined`, or by a fatal error.
    Join {
        /// The room to join.
        room: RoomId,
        /// A join grant, required when the server has a token secret.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// The resume token of an earlier connection in this room: this join takes that
        /// member's seat (see [`crate::resume`]). A token that matches nobody is ignored.
        #[serde(skip_serializing_if = "Option::is_none")]
        resume: Option<ResumeToken>,
    },
    /// Relay an opaque payload to one peer (`to`) or to every other member of the room.
    Relay {
        /// The receiving peer; `None` means every other member.
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<PeerId>,
        /// Any JSON value; the server never parses it.
        payload: Box<RawValue>,
    },
    /// An application-level keep-alive; answered by `pong`.
    Ping,
    /// Leave the room; the server tells the others and closes the connection normally.
    Leave,
}

/// Why a peer left a room, as reported in `peer_left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The peer sent `leave` or closed its connection.
    Left,
    /// The connection broke, timed out (no pong) or was closed by the server.
    Disconnected,
}

/// A member of a room as seen by the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerInfo {
    /// The member's peer id.
    pub peer_id: PeerId,
    /// The user label from the member's token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// A STUN or TURN server, in the shape of WebRTC's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN REST username (`expiry:label`), for TURN servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN REST password, for TURN servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A message from the server to a client.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to a `hello` with a supported version.
    Welcome {
        /// The protocol version in use.
        version: u32,
        /// Server software and version, e.g. `aparte-signaling/0.1.0`.
        server: String,
        /// The largest message the server accepts, in bytes.
        max_message_bytes: usize,
        /// How often the server sends WebSocket pings, in milliseconds.
        ping_interval_ms: u64,
    },
    /// Answer to a successful `join`.
    Joined {
        /// The room joined.
        room: RoomId,
        /// This connection's peer id.
        peer_id: PeerId,
        /// How many members the room can hold.
        capacity: usize,
        /// The other members already in the room.
        peers: Vec<PeerInfo>,
        /// STUN/TURN servers to use, with TURN credentials minted for this join.
        ice_servers: Vec<IceServer>,
        /// This member's resume token, for a later `join` after the connection is lost.
        #[serde(skip_serializing_if = "Option::is_none")]
        resume: Option<ResumeToken>,
    },
    /// Another member joined the room.
    PeerJoined {
        /// The new member's peer id.
        peer_id: PeerId,
        /// The user label from its token, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// A member left the room.
    PeerLeft {
        /// The member that left.
        peer_id: PeerId,
        /// Why.
        reason: LeaveReason,
    },
    /// A payload relayed from another member.
    Relay {
        /// The sending member.
        from: PeerId,
        /// The payload exactly as the sender wrote it.
        payload: Box<RawValue>,
    },
    /// Answer to `ping`.
    Pong,
    /// Something was refused. If the code is fatal the server closes the connection next.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// A human-readable explanation (never an echo of the client's data).
        message: String,
    },
    /// The server is shutting down; reconnect later.
    Shutdown {
        /// A human-readable explanation.
        reason: String,
    },
}

/// Why a frame could not be parsed into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ParseError {
    /// [`ErrorCode::Malformed`], [`ErrorCode::UnknownType`] or [`ErrorCode::InvalidMessage`].
    pub code: ErrorCode,
    /// A fixed explanation that never quotes the input.
    pub detail: &'static str,
}

/// How [`crate::room::RoomIdError`] renders, to tell a bad room id from other field errors.
const ROOM_ID_ERROR_PREFIX: &str = "room ids are";

fn err(code: ErrorCode, detail: &'static str) -> ParseError {
    ParseError { code, detail }
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
}

/// First pass: is it JSON, is it an object, what is its type?
fn peek_type(text: &str) -> Result<Cow<'_, str>, ParseError> {
    match serde_json::from_str::<TypeOnly<'_>>(text) {
        Ok(TypeOnly { ty: Some(ty) }) => Ok(ty),
        Ok(TypeOnly { ty: None }) => Err(err(
            ErrorCode::InvalidMessage,
            "a message is a JSON object with a \"type\" field",
        )),
        Err(e) if e.is_data() => Err(err(
            ErrorCode::InvalidMessage,
            "a message is a JSON object with a string \"type\" field",
        )),
        Err(_) => Err(err(ErrorCode::Malformed, "the frame is not valid JSON")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientWire<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    version: Option<u32>,
    room: Option<RoomId>,
    token: Option<String>,
    resume: Option<ResumeToken>,
    to: Option<PeerId>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
}

impl ClientMessage {
    /// Parses one text frame strictly. Never panics, whatever the input.
    ///
    /// Well-formed messages are parsed in one pass; a frame that fails is looked at a second
    /// time only to choose the right error code.
    pub fn parse(text: &str) -> Result<ClientMessage, ParseError> {
        let w: ClientWire<'_> = match serde_json::from_str(text) {
            Ok(w) => w,
            Err(e) => return Err(classify_client_error(text, &e)),
        };
        let invalid = |detail| err(ErrorCode::InvalidMessage, detail);
        match &*w.ty {
            "hello" => match w {
                ClientWire {
                    version: Some(version),
                    room: None,
                    token: None,
                    resume: None,
                    to: None,
                    payload: None,
                    ..
                } => Ok(ClientMessage::Hello { version }),
                _ => Err(invalid("hello takes exactly one field: version")),
            },
            "join" => match w {
                ClientWire {
                    version: None,
                    room: Some(room),
                    token,
                    resume,
                    to: None,
                    payload: None,
                    ..
                } => Ok(ClientMessage::Join {
                    room,
                    token,
                    resume,
                }),
                _ => Err(invalid(
                    "join takes room, an optional token and an optional resume token",
                )),
            },
            "relay" => match w {
                ClientWire {
                    version: None,
                    room: None,
                    token: None,
                    resume: None,
                    to,
                    payload: Some(payload),
                    ..
                } => Ok(ClientMessage::Relay { to, payload }),
                _ => Err(invalid("relay takes payload and an optional to")),
            },
            "ping" | "leave" => match w {
                ClientWire {
                    version: None,
                    room: None,
                    token: None,
                    resume: None,
                    to: None,
                    payload: None,
                    ..
                } => Ok(if &*w.ty == "ping" {
                    ClientMessage::Ping
                } else {
                    ClientMessage::Leave
                }),
                _ => Err(invalid("ping and leave take no fields")),
            },
            _ => Err(err(ErrorCode::UnknownType, "unknown message type")),
        }
    }

    /// Serializes to the JSON text of one frame.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

/// A field that is present, whatever its value (`null` included): plain `Option` would read a
/// `null` payload as a missing one.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Chooses the error code for a client frame that did not parse.
fn classify_client_error(text: &str, e: &serde_json::Error) -> ParseError {
    let ty = match peek_type(text) {
        Ok(ty) => ty,
        Err(pe) => return pe,
    };
    if !matches!(&*ty, "hello" | "join" | "relay" | "ping" | "leave") {
        return err(ErrorCode::UnknownType, "unknown message type");
    }
    if e.is_data() && e.to_string().starts_with(ROOM_ID_ERROR_PREFIX) {
        err(
            ErrorCode::InvalidRoomId,
            "room ids are 22 to 64 base64url characters",
        )
    } else if e.is_data() {
        err(
            ErrorCode::InvalidMessage,
            "missing, extra, duplicated or ill-typed field",
        )
    } else {
        err(ErrorCode::Malformed, "the frame is not valid JSON")
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing these types cannot fail: all map keys are strings and there are no
    // non-finite floats. Fall back to an empty object rather than panic.
    serde_json::to_string(value).unwrap_or_else(|_| String::from("{}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerWire {
    #[serde(rename = "type")]
    _ty: serde::de::IgnoredAny,
    version: Option<u32>,
    server: Option<String>,
    max_message_bytes: Option<usize>,
    ping_interval_ms: Option<u64>,
    room: Option<RoomId>,
    peer_id: Option<PeerId>,
    capacity: Option<usize>,
    peers: Option<Vec<PeerInfo>>,
    ice_servers: Option<Vec<IceServer>>,
    resume: Option<ResumeToken>,
    label: Option<String>,
    reason: Option<serde_json::Value>,
    from: Option<PeerId>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
    code: Option<ErrorCode>,
    message: Option<String>,
}

impl ServerMessage {
    /// Parses one text frame from the server strictly (for clients). Never panics.
    pub fn parse(text: &str) -> Result<ServerMessage, ParseError> {
        let ty = peek_type(text)?;
        let w: ServerWire = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                err(
                    ErrorCode::InvalidMessage,
                    "missing, extra, duplicated or ill-typed field",
                )
            } else {
                err(ErrorCode::Malformed, "the frame is not valid JSON")
            }
        })?;
        let invalid = || err(ErrorCode::InvalidMessage, "fields do not match the type");
        let msg = match &*ty {
            "welcome" => ServerMessage::Welcome {
                version: w.version.ok_or_else(invalid)?,
                server: w.server.clone().ok_or_else(invalid)?,
                max_message_bytes: w.max_message_bytes.ok_or_else(invalid)?,
                ping_interval_ms: w.ping_interval_ms.ok_or_else(invalid)?,
            },
            "joined" => ServerMessage::Joined {
                room: w.room.clone().ok_or_else(invalid)?,
                peer_id: w.peer_id.ok_or_else(invalid)?,
                capacity: w.capacity.ok_or_else(invalid)?,
                peers: w.peers.clone().ok_or_else(invalid)?,
                ice_servers: w.ice_servers.clone().ok_or_else(invalid)?,
                resume: w.resume.clone(),
            },
            "peer_joined" => ServerMessage::PeerJoined {
                peer_id: w.peer_id.ok_or_else(invalid)?,
                label: w.label.clone(),
            },
            "peer_left" => ServerMessage::PeerLeft {
                peer_id: w.peer_id.ok_or_else(invalid)?,
                reason: w
                    .reason
                    .clone()
                    .and_then(|r| serde_json::from_value(r).ok())
                    .ok_or_else(invalid)?,
            },
            "relay" => ServerMessage::Relay {
                from: w.from.ok_or_else(invalid)?,
                payload: w.payload.clone().ok_or_else(invalid)?,
            },
            "pong" => ServerMessage::Pong,
            "error" => ServerMessage::Error {
                code: w.code.ok_or_else(invalid)?,
                message: w.message.clone().ok_or_else(invalid)?,
            },
            "shutdown" => ServerMessage::Shutdown {
                reason: w
                    .reason
                    .clone()
                    .and_then(|r| r.as_str().map(str::to_owned))
                    .ok_or_else(invalid)?,
            },
            _ => return Err(err(ErrorCode::UnknownType, "unknown message type")),
        };
        // Round-trip check: a field that belongs to another type makes the message invalid.
        if serde_json::from_str::<serde_json::Value>(&msg.to_json()).ok()
            != serde_json::from_str::<serde_json::Value>(text).ok()
        {
            return Err(invalid());
        }
        Ok(msg)
    }

    /// Serializes to the JSON text of one frame.
    pub fn to_json(&self) -> String {
        to_json(self)
    }

    /// An `error` message for `code` with a fixed explanation.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: &str = "abcdefghijklmnopqrstuv";

    #[test]
    fn parses_every_client_type() {
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"hello","version":1}"#),
            Ok(ClientMessage::Hello { version: 1 })
        ));
        let join = ClientMessage::parse(&format!(r#"{{"type":"join","room":"{ROOM}"}}"#));
        assert!(matches!(join, Ok(ClientMessage::Join { token: None, .. })));
        let relay = ClientMessage::parse(
            r#"{"type":"relay","to":7,"payload":{"sdp":"v=0\r\n","x":[1,2]}}"#,
        )
        .unwrap();
        match relay {
            ClientMessage::Relay { to, payload } => {
                assert_eq!(to, Some(7));
                assert_eq!(payload.get(), r#"{"sdp":"v=0\r\n","x":[1,2]}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"relay","payload":null}"#),
            Ok(ClientMessage::Relay { .. })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"leave"}"#),
            Ok(ClientMessage::Leave)
        ));
    }

    #[test]
    fn client_round_trip() {
        let msgs = [
            ClientMessage::Hello { version: 1 },
            ClientMessage::Join {
                room: RoomId::parse(ROOM).unwrap(),
                token: Some("t".into()),
                resume: None,
            },
            ClientMessage::Join {
                room: RoomId::parse(ROOM).unwrap(),
                token: None,
                resume: Some(ResumeToken::parse("AAAAAAAAAAAAAAAAAAAAAA").unwrap()),
            },
            ClientMessage::Relay {
                to: None,
                payload: RawValue::from_string("[1,\"a\"]".into()).unwrap(),
            },
            ClientMessage::Ping,
            ClientMessage::Leave,
        ];
        for m in msgs {
            let json = m.to_json();
            let back = ClientMessage::parse(&json).unwrap();
            assert_eq!(back.to_json(), json);
        }
    }

    fn code(text: &str) -> ErrorCode {
        ClientMessage::parse(text).unwrap_err().code
    }

    #[test]
    fn rejects_strictly() {
        assert_eq!(code("not json"), ErrorCode::Malformed);
        assert_eq!(code(r#"{"type":"hello","version":1"#), ErrorCode::Malformed);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"version":1}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"hello"}"#), ErrorCode::InvalidMessage);
        assert_eq!(
            code(r#"{"type":"hello","version":1,"extra":2}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"hello","version":1,"version":2}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"hello","version":1,"payload":{}}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"join","room":"short"}"#),
            ErrorCode::InvalidRoomId
        );
        assert_eq!(
            code(r#"{"type":"join","room":"../../../etc/passwd/aaaaaaaaa"}"#),
            ErrorCode::InvalidRoomId
        );
        assert_eq!(
            code(r#"{"type":"join","room":5}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(code(r#"{"type":"relay"}"#), ErrorCode::InvalidMessage);
        assert_eq!(
            code(r#"{"type":"relay","payload":1,"to":-1}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(code(r#"{"type":"ping","to":1}"#), ErrorCode::InvalidMessage);
        // A resume token has one form, and only `join` carries one.
        let join = |resume: &str| format!(r#"{{"type":"join","room":"{ROOM}","resume":{resume}}}"#);
        assert_eq!(code(&join(r#""short""#)), ErrorCode::InvalidMessage);
        assert_eq!(code(&join("1")), ErrorCode::InvalidMessage);
        assert!(ClientMessage::parse(&join(r#""AAAAAAAAAAAAAAAAAAAAAA""#)).is_ok());
        assert_eq!(
            code(r#"{"type":"ping","resume":"AAAAAAAAAAAAAAAAAAAAAA"}"#),
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn server_round_trip() {
        let msgs = [
            ServerMessage::Welcome {
                version: 1,
                server: "x/1".into(),
                max_message_bytes: 65536,
                ping_interval_ms: 5000,
            },
            ServerMessage::Joined {
                room: RoomId::parse(ROOM).unwrap(),
                peer_id: 3,
                capacity: 2,
                peers: vec![PeerInfo {
                    peer_id: 2,
                    label: Some("alice".into()),
                }],
                ice_servers: vec![IceServer {
                    urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                    username: Some("1:x".into()),
                    credential: Some("pw".into()),
                }],
                resume: Some(ResumeToken::parse("AAAAAAAAAAAAAAAAAAAAAA").unwrap()),
            },
            ServerMessage::PeerJoined {
                peer_id: 4,
                label: None,
            },
            ServerMessage::PeerLeft {
                peer_id: 4,
                reason: LeaveReason::Disconnected,
            },
            ServerMessage::Relay {
                from: 4,
                payload: RawValue::from_string("{\"a\":null}".into()).unwrap(),
            },
            ServerMessage::Pong,
            ServerMessage::error(ErrorCode::RoomFull, "the room is full"),
            ServerMessage::Shutdown {
                reason: "bye".into(),
            },
        ];
        for m in msgs {
            let json = m.to_json();
            let back = ServerMessage::parse(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(back.to_json(), json);
        }
        assert_eq!(
            ServerMessage::parse(r#"{"type":"pong","from":1}"#)
                .unwrap_err()
                .code,
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            ServerMessage::parse(r#"{"type":"nope"}"#).unwrap_err().code,
            ErrorCode::UnknownType
        );
    }

    #[test]
    fn never_panics_on_garbage() {
        let samples = [
            "",
            "{",
            "}",
            "null",
            "\"x\"",
            "{\"type\":null}",
            "{\"type\":\"relay\",\"payload\":}",
            "{\"type\":\"relay\",\"payload\":1e999999}",
            "{\"type\":\"\\ud800\"}",
        ];
        for s in samples {
            let _ = ClientMessage::parse(s);
            let _ = ServerMessage::parse(s);
        }
        let deep = "[".repeat(10_000);
        assert_eq!(code(&deep), ErrorCode::InvalidMessage);
        let deep = format!("{{\"type\":\"ping\",\"x\":{}", "[".repeat(10_000));
        assert_eq!(code(&deep), ErrorCode::Malformed);
    }
}
