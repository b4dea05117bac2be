//! The signaling client: one WebSocket to the signaling server, which introduces the two peers
//! of a room and relays opaque payloads between them. Everything it carries is either public
//! (SDP, ICE candidates) or e2ee handshake messages, which are safe to show a hostile server.
#![forbid(unsafe_code)]

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use aparte_signaling_protocol::message::{ClientMessage, ServerMessage};
use aparte_signaling_protocol::{
    IceServer, LeaveReason, PeerId, PeerInfo, ResumeToken, RoomId, PROTOCOL_VERSION,
};

/// Largest SDP we accept from a peer.
pub const MAX_SDP_BYTES: usize = 32 * 1024;
/// Largest trickled ICE candidate line we accept.
pub const MAX_CANDIDATE_BYTES: usize = 1024;
/// With nothing at all from the server for this long, or three of its ping intervals if that
/// is longer (by default it pings an idle connection every 2–2.25 s), the connection is taken
/// as dead: a network change can leave a TCP connection that never reports an error.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connecting, saying hello and joining must finish within this; a server that accepts the
/// TCP connection and then says nothing (or never confirms the join) is reported, not waited on.
pub const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest e2ee handshake message we accept (hex-encoded, so twice the binary bound).
pub const MAX_HANDSHAKE_HEX: usize = 2 * aparte_e2ee::handshake::messages::MAX_MESSAGE_LEN;

/// What one peer relays to the other through the server. Strictly parsed; bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PeerMessage {
    /// SDP offer.
    Offer {
        /// The SDP text.
        sdp: String,
    },
    /// SDP answer.
    Answer {
        /// The SDP text.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The `candidate:` line.
        candidate: String,
    },
    /// An e2ee handshake message, hex-encoded.
    Handshake {
        /// Hex bytes.
        data: String,
    },
    /// "My DTLS handshake is stuck: let us both start over with new peer connections" (same
    /// certificates, so the e2ee session stays valid; the offerer then sends a new offer).
    /// The way out of webrtc-rs's DTLS last-flight deadlock (docs/WEBRTC.md).
    Rebuild {},
}

impl PeerMessage {
    /// Parses and bounds a relayed payload.
    pub fn parse(json: &str) -> Result<Self, SignalingError> {
        let message: Self = serde_json::from_str(json)
            .map_err(|_| SignalingError::BadPeerMessage("not a valid peer message"))?;
        let within = match &message {
            Self::Offer { sdp } | Self::Answer { sdp } => sdp.len() <= MAX_SDP_BYTES,
            Self::Candidate { candidate } => candidate.len() <= MAX_CANDIDATE_BYTES,
            Self::Handshake { data } => data.len() <= MAX_HANDSHAKE_HEX,
            Self::Rebuild {} => true,
        };
        if within {
            Ok(message)
        } else {
            Err(SignalingError::BadPeerMessage("peer message too large"))
        }
    }
}

/// Signaling failures.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// The WebSocket failed.
    #[error("signaling connection: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server refused something.
    #[error("signaling server refused: {code} ({message})")]
    Refused {
        /// The error code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The server sent something this client does not understand.
    #[error("unexpected message from the signaling server: {0}")]
    Protocol(String),
    /// The server closed the connection.
    #[error("the signaling server closed the connection")]
    Closed,
    /// Nothing at all came from the server for this many seconds.
    #[error("nothing from the signaling server for {0} s")]
    IdleTimeout(u64),
    /// Nothing answers WebSocket requests at that URL path.
    #[error("{0}: no WebSocket endpoint there (HTTP 404); aparte-signaling listens on /ws, e.g. ws://host:port/ws")]
    WrongPath(String),
    /// A peer sent a payload that does not parse.
    #[error("bad message from the peer: {0}")]
    BadPeerMessage(&'static str),
    /// The URL is not a `ws://` or `wss://` URL with a host.
    #[error("--server {url}: {why} (expected ws://HOST:PORT/ws or wss://HOST/ws)")]
    BadUrl {
        /// What was given.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The server could not be reached at all.
    #[error("cannot reach the signaling server at {url}: {why}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why, with a hint.
        why: String,
    },
    /// The TLS handshake failed (the message says why and what to do).
    #[error("{0}")]
    Tls(String),
    /// The server did not answer the join in time.
    #[error("no answer from the signaling server at {url} within {} s: is it an aparte-signaling server, and is it overloaded?", .after.as_secs())]
    NoAnswer {
        /// The URL.
        url: String,
        /// How long we waited.
        after: std::time::Duration,
    },
}

impl SignalingError {
    /// The refusal's code, when the server refused (`bad_token`, `room_full`, …).
    pub fn refusal_code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Checks that `url` is a `ws://` or `wss://` URL with a host (no network involved).
pub fn check_url(url: &str) -> Result<(), SignalingError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let bad = |why: &str| SignalingError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let scheme_ok = url.starts_with("ws://") || url.starts_with("wss://");
    if !scheme_ok {
        return Err(bad("the scheme must be ws:// or wss://"));
    }
    let request = url.into_client_request().map_err(|e| bad(&e.to_string()))?;
    match request.uri().host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(bad("no host")),
    }
}

/// A connection failure in words, with what to try.
fn connect_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> SignalingError {
    use tokio_tungstenite::tungstenite::Error as Ws;
    if let Some(why) = crate::tls::explain(&e, url) {
        return SignalingError::Tls(why);
    }
    match e {
        Ws::Http(response) if response.status().as_u16() == 404 => {
            SignalingError::WrongPath(url.to_owned())
        }
        Ws::Io(io) => {
            let why = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused: is aparte-signaling running there, on that port?"
                        .to_owned()
                }
                std::io::ErrorKind::TimedOut => {
                    "timed out: is the address right, and does a firewall let TCP through?"
                        .to_owned()
                }
                _ if io.to_string().contains("lookup") => {
                    format!("{io}: check the host name")
                }
                _ => io.to_string(),
            };
            SignalingError::Unreachable {
                url: url.to_owned(),
                why,
            }
        }
        Ws::Url(u) => SignalingError::BadUrl {
            url: url.to_owned(),
            why: u.to_string(),
        },
        other => SignalingError::WebSocket(other),
    }
}

/// The result of joining a room.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Our peer id.
    pub peer_id: PeerId,
    /// Members already in the room.
    pub peers: Vec<PeerInfo>,
    /// STUN/TURN servers (with TURN credentials minted for this join).
    pub ice_servers: Vec<IceServer>,
    /// How many members the room holds (2 for a call, unless the server is set otherwise).
    pub capacity: usize,
    /// Our resume token: a later join that presents it takes this connection's seat (so a
    /// client whose connection died need not wait for the server to notice).
    pub resume: Option<ResumeToken>,
}

/// What the signaling connection reports after the join.
#[derive(Debug, Clone)]
pub enum SignalingEvent {
    /// A peer joined the room.
    PeerJoined(PeerId),
    /// A peer left.
    PeerLeft(PeerId, LeaveReason),
    /// A peer relayed a message.
    Message {
        /// Sender.
        from: PeerId,
        /// The message.
        message: PeerMessage,
    },
    /// A peer relayed something unparseable (counted, otherwise ignored).
    Rejected(&'static str),
    /// The server is shutting down or closed the connection; media may continue.
    Closed(String),
}

/// A joined signaling connection.
#[derive(Debug)]
pub struct Signaling {
    outgoing: mpsc::Sender<String>,
    /// Counts the server's answers to our pings.
    pongs: watch::Receiver<u64>,
}

/// Checks whether a signaling connection still works: one ping, answered or not in time.
#[derive(Debug)]
pub struct Prober {
    outgoing: mpsc::Sender<String>,
    pongs: watch::Receiver<u64>,
}

impl Prober {
    /// Sends a ping; true when the server answers within `deadline`. A dead path (the
    /// network changed under a TCP connection) never answers.
    pub async fn answered_within(mut self, deadline: std::time::Duration) -> bool {
        self.pongs.borrow_and_update();
        if self
            .outgoing
            .send(ClientMessage::Ping.to_json())
            .await
            .is_err()
        {
            return false;
        }
        matches!(
            tokio::time::timeout(deadline, self.pongs.changed()).await,
            Ok(Ok(()))
        )
    }
}

impl Signaling {
    /// Connects to `url` (`ws://`, or `wss://` verified with `tls`), says hello, and joins
    /// `room`, all within [`JOIN_TIMEOUT`].
    /// With `resume` (from an earlier [`Joined`] in this room), the join takes that
    /// connection's seat.
    pub async fn join(
        url: &str,
        tls: &Arc<rustls::ClientConfig>,
        room: &RoomId,
        token: Option<String>,
        resume: Option<ResumeToken>,
    ) -> Result<(Self, Joined, mpsc::Receiver<SignalingEvent>), SignalingError> {
        tokio::time::timeout(JOIN_TIMEOUT, Self::join_now(url, tls, room, token, resume))
            .await
            .map_err(|_| SignalingError::NoAnswer {
                url: url.to_owned(),
                after: JOIN_TIMEOUT,
            })?
    }

    async fn join_now(
        url: &str,
        tls: &Arc<rustls::ClientConfig>,
        room: &RoomId,
        token: Option<String>,
        resume: Option<ResumeToken>,
    ) -> Result<(Self, Joined, mpsc::Receiver<SignalingEvent>), SignalingError> {
        check_url(url)?;
        let connector = tokio_tungstenite::Connector::Rustls(Arc::clone(tls));
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await
                .map_err(|e| connect_error(url, e))?;
        let (mut sink, mut stream) = ws.split();
        let hello = ClientMessage::Hello {
            version: PROTOCOL_VERSION,
        };
        sink.send(WsMessage::text(hello.to_json())).await?;
        let join = ClientMessage::Join {
            room: room.clone(),
            token,
            resume,
        };
        sink.send(WsMessage::text(join.to_json())).await?;

        // The server pings an idle connection every `ping_interval_ms`; silence for several
        // intervals (and never less than IDLE_TIMEOUT) means the connection is dead.
        let mut idle = IDLE_TIMEOUT;
        let joined = loop {
            match next_server_message(&mut stream, None).await? {
                ServerMessage::Welcome {
                    ping_interval_ms, ..
                } => {
                    let pings =
                        std::time::Duration::from_millis(ping_interval_ms.saturating_mul(3));
                    idle = idle.max(pings);
                }
                ServerMessage::Joined {
                    peer_id,
                    peers,
                    ice_servers,
                    capacity,
                    resume,
                    ..
                } => {
                    break Joined {
                        peer_id,
                        peers,
                        ice_servers,
                        capacity,
                        resume,
                    }
                }
                ServerMessage::Error { code, message } => {
                    return Err(SignalingError::Refused {
                        code: code.as_str().to_owned(),
                        message,
                    })
                }
                other => return Err(SignalingError::Protocol(format!("{other:?}"))),
            }
        };

        let (outgoing, mut outgoing_rx) = mpsc::channel::<String>(64);
        let (events, events_rx) = mpsc::channel(256);
        let (pongs_tx, pongs) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Some(text) = outgoing_rx.recv().await {
                if sink.send(WsMessage::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        tokio::spawn(async move {
            loop {
                let event = match next_server_message(&mut stream, Some(idle)).await {
                    Ok(ServerMessage::PeerJoined { peer_id, .. }) => {
                        SignalingEvent::PeerJoined(peer_id)
                    }
                    Ok(ServerMessage::PeerLeft { peer_id, reason }) => {
                        SignalingEvent::PeerLeft(peer_id, reason)
                    }
                    Ok(ServerMessage::Relay { from, payload }) => {
                        match PeerMessage::parse(payload.get()) {
                            Ok(message) => SignalingEvent::Message { from, message },
                            Err(SignalingError::BadPeerMessage(why)) => {
                                SignalingEvent::Rejected(why)
                            }
                            Err(_) => SignalingEvent::Rejected("bad peer message"),
                        }
                    }
                    Ok(ServerMessage::Shutdown { reason }) => SignalingEvent::Closed(reason),
                    Ok(ServerMessage::Error { code, .. }) => {
                        SignalingEvent::Rejected(code.as_str())
                    }
                    Ok(ServerMessage::Pong) => {
                        pongs_tx.send_modify(|n| *n = n.wrapping_add(1));
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => SignalingEvent::Closed(e.to_string()),
                };
                let closed = matches!(event, SignalingEvent::Closed(_));
                if events.send(event).await.is_err() || closed {
                    return;
                }
            }
        });
        Ok((Self { outgoing, pongs }, joined, events_rx))
    }

    /// A probe of this connection, to run beside the call (see [`Prober`]).
    pub fn prober(&self) -> Prober {
        Prober {
            outgoing: self.outgoing.clone(),
            pongs: self.pongs.clone(),
        }
    }

    /// Relays `message` to `to` (or to everyone else in the room).
    pub async fn send(
        &self,
        to: Option<PeerId>,
        message: &PeerMessage,
    ) -> Result<(), SignalingError> {
        let payload = serde_json::value::to_raw_value(message)
            .map_err(|_| SignalingError::Protocol("unserialisable message".into()))?;
        let relay = ClientMessage::Relay { to, payload };
        self.outgoing
            .send(relay.to_json())
            .await
            .map_err(|_| SignalingError::Closed)
    }

    /// Leaves the room (best effort).
    pub async fn leave(&self) {
        let _ = self.outgoing.send(ClientMessage::Leave.to_json()).await;
    }
}

/// The next server message; with `idle`, fails when no frame at all (pings included) comes
/// for that long.
async fn next_server_message<S>(
    stream: &mut S,
    idle: Option<std::time::Duration>,
) -> Result<ServerMessage, SignalingError>
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    loop {
        let frame = match idle {
            Some(limit) => tokio::time::timeout(limit, stream.next())
                .await
                .map_err(|_| SignalingError::IdleTimeout(limit.as_secs()))?,
            None => stream.next().await,
        };
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                return ServerMessage::parse(text.as_str())
                    .map_err(|e| SignalingError::Protocol(e.to_string()))
            }
            Some(Ok(WsMessage::Close(_))) | None => return Err(SignalingError::Closed),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_messages_round_trip_and_are_strict() {
        let m = PeerMessage::Handshake {
            data: "0101".into(),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"kind":"handshake","data":"0101"}"#);
        assert_eq!(PeerMessage::parse(&json).unwrap(), m);
        assert!(PeerMessage::parse(r#"{"kind":"handshake","data":"01","x":1}"#).is_err());
        assert!(PeerMessage::parse(r#"{"kind":"nope"}"#).is_err());
        let big = format!(
            r#"{{"kind":"candidate","candidate":"{}"}}"#,
            "a".repeat(2000)
        );
        assert!(PeerMessage::parse(&big).is_err());
        let rebuild = serde_json::to_string(&PeerMessage::Rebuild {}).unwrap();
        assert_eq!(rebuild, r#"{"kind":"rebuild"}"#);
        assert_eq!(
            PeerMessage::parse(&rebuild).unwrap(),
            PeerMessage::Rebuild {}
        );
        assert!(PeerMessage::parse(r#"{"kind":"rebuild","sdp":"x"}"#).is_err());
    }
}
