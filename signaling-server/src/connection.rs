//! One WebSocket connection, from upgrade to close: hello, join, relay, heartbeats, limits.
//!
//! The task owns the socket. It waits on five things at once: a frame from the client, a
//! message queued for it by other members, the heartbeat tick, a kick (slow consumer) and
//! server shutdown. Nothing it does can block another connection.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aparte_signaling_protocol::{
    token, turn_rest, ClientMessage, CloseCode, ErrorCode, IceServer, LeaveReason, PeerId,
    ResumeToken, RoomId, ServerMessage, PROTOCOL_VERSION,
};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::limits::{ConnSlot, TokenBucket};
use crate::rooms::Member;
use crate::server::AppState;

/// How long one write to the socket may take before the client counts as a slow consumer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last words (a fatal error, a close frame) may take to write.
const CLOSING_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many queued frames are written before one flush.
const WRITE_BATCH: usize = 16;
/// The coarsest heartbeat grid: deadlines are rounded up to a multiple of this.
const HEARTBEAT_GRID: Duration = Duration::from_millis(250);

/// The heartbeat grid for `ping_interval`: at most an eighth of it, at most 250 ms, at least
/// 1 ms.
fn heartbeat_grid(ping_interval: Duration) -> Duration {
    (ping_interval / 8).clamp(Duration::from_millis(1), HEARTBEAT_GRID)
}

/// `t` rounded up to the next multiple of `grid` after `epoch`.
fn on_grid(epoch: Instant, t: Instant, grid: Duration) -> Instant {
    let since = t.saturating_duration_since(epoch).as_nanos();
    let g = grid.as_nanos().max(1);
    let steps = since.div_ceil(g);
    let rounded = u64::try_from(steps.saturating_mul(g)).unwrap_or(u64::MAX);
    epoch + Duration::from_nanos(rounded)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

enum Phase {
    AwaitHello,
    AwaitJoin,
    Joined(RoomId),
}

/// What to do after handling a frame.
enum Flow {
    Continue,
    /// Close with this code; the error (if any) has been sent.
    Close(CloseCode, &'static str, LeaveReason),
}

struct Conn {
    state: Arc<AppState>,
    socket: WebSocket,
    id: PeerId,
    /// The client's address (the forwarded one behind a trusted proxy), for the log.
    client: IpAddr,
    /// The room's log tag once a join was asked for.
    room_tag: Option<String>,
    /// Why the connection ended, for the log; the first reason set wins.
    end: Option<&'static str>,
    phase: Phase,
    tx: mpsc::Sender<Utf8Bytes>,
    kick: CancellationToken,
    /// Cancelled when a later connection took this one's seat with its resume token.
    replaced: CancellationToken,
    bucket: TokenBucket,
    errors: u32,
    rate_limited_notice: Option<Instant>,
}

/// Runs one connection to completion.
pub(crate) async fn run(state: Arc<AppState>, socket: WebSocket, slot: ConnSlot, client: IpAddr) {
    let _slot = slot;
    let started = Instant::now();
    state.metrics.connections.inc();
    state.metrics.connections_total.inc();
    let id = state.next_peer.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(state.cfg.send_queue);
    let conn = Conn {
        bucket: TokenBucket::new(
            state.cfg.rate_limit,
            state.cfg.rate_burst,
            std::time::Instant::now(),
        ),
        state: Arc::clone(&state),
        socket,
        id,
        client,
        room_tag: None,
        end: None,
        phase: Phase::AwaitHello,
        tx,
        // A child of the shutdown token: shutdown also cancels it, so the connection loop
        // waits on one token for both.
        kick: state.shutdown.child_token(),
        replaced: CancellationToken::new(),
        errors: 0,
        rate_limited_notice: None,
    };
    tracing::info!(peer = id, %client, "connection opened");
    let (reason, room) = conn.serve(rx).await;
    state.metrics.connections.dec();
    tracing::info!(
        peer = id,
        %client,
        room = %room.as_deref().unwrap_or("-"),
        reason = %reason,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "connection closed"
    );
}

impl Conn {
    /// Serves the connection until it ends; returns why, and the room's log tag.
    async fn serve(mut self, mut rx: mpsc::Receiver<Utf8Bytes>) -> (&'static str, Option<String>) {
        let cfg = &self.state.cfg;
        let handshake_deadline = tokio::time::sleep(cfg.handshake_timeout);
        tokio::pin!(handshake_deadline);
        // Heartbeat: a ping goes out only after `ping_interval` without any frame from the
        // client, so busy connections cost no ping/pong traffic at all.
        let ping_interval = cfg.ping_interval;
        let heartbeat = tokio::time::sleep(ping_interval);
        tokio::pin!(heartbeat);
        let idle_timeout = cfg.idle_timeout;
        // Heartbeat deadlines are rounded up to a coarse grid shared by every connection, so
        // the checks of many connections fall due together and wake the runtime once instead
        // of once per connection.
        let grid = heartbeat_grid(ping_interval);
        let epoch = self.state.epoch;
        let shutdown = self.state.shutdown.clone();
        let kick = self.kick.clone();
        // Created once: a fresh `cancelled()` future per loop turn would register and
        // unregister a waiter on every frame. `kick` is a child of `shutdown`, so this one
        // future fires for both; shutdown is checked first.
        let stop = kick.cancelled();
        tokio::pin!(stop);
        let replaced_token = self.replaced.clone();
        let replaced = replaced_token.cancelled();
        tokio::pin!(replaced);
        let mut last_seen = Instant::now();

        let reason = loop {
            let joined = matches!(self.phase, Phase::Joined(_));
            tokio::select! {
                biased;
                () = &mut stop => {
                    if shutdown.is_cancelled() {
                        let text = ServerMessage::Shutdown { reason: "server shutting down".into() }.to_json();
                        let _ = self.write_within(Message::Text(text.into()), CLOSING_WRITE_TIMEOUT).await;
                        self.close(CloseCode::GOING_AWAY, "server shutting down").await;
                        self.end_because("server_shutdown");
                    } else {
                        // Kicked as a slow consumer. Tell the room first: the slow client may
                        // take a while to hear its reason.
                        self.leave_room(LeaveReason::Disconnected);
                        self.fatal(ErrorCode::SlowConsumer, "your send queue was full").await;
                    }
                    break LeaveReason::Disconnected;
                }
                // The client came back on a new connection with this one's resume token: the
                // registry has moved its seat already, so this one just closes.
                () = &mut replaced => {
                    self.phase = Phase::AwaitHello;
                    self.end_because("resumed_on_another_connection");
                    self.close(CloseCode::NORMAL, "resumed on another connection").await;
                    break LeaveReason::Disconnected;
                }
                _ = &mut handshake_deadline, if !joined => {
                    self.state.metrics.reject(ErrorCode::HandshakeTimeout.as_str());
                    self.fatal(ErrorCode::HandshakeTimeout, "hello and join must complete in time").await;
                    break LeaveReason::Disconnected;
                }
                out = rx.recv() => {
                    let Some(text) = out else { break LeaveReason::Disconnected };
                    if !self.write_queued(text, &mut rx).await {
                        self.state.metrics.reject(ErrorCode::SlowConsumer.as_str());
                        self.end_because("send_failed_or_too_slow");
                        break LeaveReason::Disconnected;
                    }
                }
                frame = self.socket.recv() => {
                    last_seen = Instant::now();
                    let flow = match frame {
                        None => {
                            self.end_because("connection_lost");
                            Flow::Close(CloseCode::NORMAL, "", LeaveReason::Disconnected)
                        }
                        Some(Err(e)) => self.on_read_error(e).await,
                        Some(Ok(Message::Close(_))) => {
                            // Send the close reply that the WebSocket layer has queued.
                            let _ = tokio::time::timeout(
                                CLOSING_WRITE_TIMEOUT,
                                futures_util::SinkExt::flush(&mut self.socket),
                            )
                            .await;
                            self.end_because("client_closed");
                            Flow::Close(CloseCode::NORMAL, "", LeaveReason::Left)
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                        Some(Ok(Message::Binary(_))) => {
                            self.reject(ErrorCode::Malformed, "binary frames are not accepted; send JSON text").await
                        }
                        Some(Ok(Message::Text(text))) => self.on_text(text).await,
                    };
                    match flow {
                        Flow::Continue => {}
                        Flow::Close(code, why, reason) => {
                            if code != CloseCode::NORMAL || !why.is_empty() {
                                self.close(code, why).await;
                            }
                            break reason;
                        }
                    }
                }
                () = &mut heartbeat => {
                    let silent = last_seen.elapsed();
                    if silent >= idle_timeout {
                        self.state.metrics.reject(ErrorCode::IdleTimeout.as_str());
                        self.fatal(ErrorCode::IdleTimeout, "no frame received within the idle timeout").await;
                        break LeaveReason::Disconnected;
                    }
                    if silent >= ping_interval {
                        if !self.write(Message::Ping(Default::default())).await {
                            self.end_because("send_failed");
                            break LeaveReason::Disconnected;
                        }
                        heartbeat.as_mut().reset(on_grid(epoch, Instant::now() + ping_interval, grid));
                    } else {
                        heartbeat.as_mut().reset(on_grid(epoch, last_seen + ping_interval, grid));
                    }
                }
            }
        };
        self.leave_room(reason);
        let why = self.end.unwrap_or(match reason {
            LeaveReason::Left => "left",
            _ => "disconnected",
        });
        (why, self.room_tag.take())
    }

    /// Records why the connection ends (the first reason recorded wins).
    fn end_because(&mut self, why: &'static str) {
        self.end.get_or_insert(why);
    }

    /// Logs a refusal: what was refused and why, never what the client sent.
    fn log_refusal(&self, reason: &'static str) {
        tracing::info!(
            peer = self.id,
            client = %self.client,
            room = %self.room_tag.as_deref().unwrap_or("-"),
            reason = %reason,
            "refused"
        );
    }

    /// Leaves the room, if in one, telling the other members.
    fn leave_room(&mut self, reason: LeaveReason) {
        if let Phase::Joined(room) = std::mem::replace(&mut self.phase, Phase::AwaitHello) {
            self.state
                .rooms
                .leave(&room, self.id, reason, &self.state.metrics);
        }
    }

    /// Writes one frame; false when the socket failed or the write took too long.
    async fn write(&mut self, msg: Message) -> bool {
        self.write_within(msg, WRITE_TIMEOUT).await
    }

    /// Writes `first` and whatever else is already queued (up to [`WRITE_BATCH`] frames) with
    /// one flush, so a burst for this client costs one write to the socket, not one per frame.
    /// False when the socket failed or the batch took longer than the write timeout.
    async fn write_queued(&mut self, first: Utf8Bytes, rx: &mut mpsc::Receiver<Utf8Bytes>) -> bool {
        use futures_util::SinkExt;
        let socket = &mut self.socket;
        let batch = async {
            socket.feed(Message::Text(first)).await?;
            for _ in 1..WRITE_BATCH {
                let Ok(next) = rx.try_recv() else { break };
                socket.feed(Message::Text(next)).await?;
            }
            socket.flush().await
        };
        matches!(tokio::time::timeout(WRITE_TIMEOUT, batch).await, Ok(Ok(())))
    }

    async fn write_within(&mut self, msg: Message, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.socket.send(msg)).await,
            Ok(Ok(()))
        )
    }

    async fn send(&mut self, msg: &ServerMessage) -> bool {
        self.write(Message::Text(msg.to_json().into())).await
    }

    async fn close(&mut self, code: CloseCode, reason: &'static str) {
        let frame = CloseFrame {
            code: code.0,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = self
            .write_within(Message::Close(Some(frame)), CLOSING_WRITE_TIMEOUT)
            .await;
    }

    /// Sends a fatal error and closes with its close code.
    async fn fatal(&mut self, code: ErrorCode, message: &'static str) {
        self.end_because(code.as_str());
        let text = ServerMessage::error(code, message).to_json();
        let _ = self
            .write_within(Message::Text(text.into()), CLOSING_WRITE_TIMEOUT)
            .await;
        let close = code.close_code().unwrap_or(CloseCode::PROTOCOL_ERROR);
        self.close(close, code.as_str()).await;
    }

    /// Counts and answers a refusal; closes when it is fatal or too many errors piled up.
    async fn reject(&mut self, code: ErrorCode, message: &'static str) -> Flow {
        self.state.metrics.reject(code.as_str());
        self.log_refusal(code.as_str());
        if code.close_code().is_some() {
            self.fatal(code, message).await;
            return Flow::Close(CloseCode::NORMAL, "", LeaveReason::Disconnected);
        }
        self.errors += 1;
        if self.errors > self.state.cfg.max_errors {
            self.state.metrics.reject(ErrorCode::TooManyErrors.as_str());
            self.fatal(
                ErrorCode::TooManyErrors,
                "too many errors on this connection",
            )
            .await;
            return Flow::Close(CloseCode::NORMAL, "", LeaveReason::Disconnected);
        }
        if !self.send(&ServerMessage::error(code, message)).await {
            self.end_because("send_failed");
            return Flow::Close(CloseCode::NORMAL, "", LeaveReason::Disconnected);
        }
        Flow::Continue
    }

    async fn on_read_error(&mut self, e: axum::Error) -> Flow {
        use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
        let inner = e.into_inner();
        match inner.downcast_ref::<WsError>() {
            Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                self.state.metrics.reject("frame_too_large");
                self.end_because("frame_too_large");
                Flow::Close(
                    CloseCode::MESSAGE_TOO_BIG,
                    "message_too_large",
                    LeaveReason::Disconnected,
                )
            }
            Some(WsError::Utf8(_)) => {
                self.state.metrics.reject("invalid_utf8");
                self.end_because("invalid_utf8");
                Flow::Close(CloseCode(1007), "invalid UTF-8", LeaveReason::Disconnected)
            }
            Some(WsError::Protocol(_)) => {
                self.state.metrics.reject("websocket_protocol_error");
                self.end_because("websocket_protocol_error");
                Flow::Close(CloseCode(1002), "protocol error", LeaveReason::Disconnected)
            }
            _ => {
                self.end_because("connection_lost");
                Flow::Close(CloseCode::NORMAL, "", LeaveReason::Disconnected)
            }
        }
    }

    async fn on_text(&mut self, text: Utf8Bytes) -> Flow {
        let now = std::time::Instant::now();
        if !self.bucket.try_take(now) {
            self.state.metrics.reject(ErrorCode::RateLimited.as_str());
            // Tell the client (and the log) at most once per second; drop the message either
            // way.
            let tnow = Instant::now();
            if self
                .rate_limited_notice
                .is_none_or(|t| tnow.duration_since(t) >= Duration::from_secs(1))
            {
                self.rate_limited_notice = Some(tnow);
                self.log_refusal(ErrorCode::RateLimited.as_str());
                let msg = ServerMessage::error(
                    ErrorCode::RateLimited,
                    "message dropped: rate limit exceeded",
                );
                if !self.send(&msg).await {
                    return Flow::Close(CloseCode::NORMAL, "", LeaveReason::Disconnected);
                }
            }
            return Flow::Continue;
        }
        if text.len() > self.state.cfg.max_message_bytes {
            return self
                .reject(
                    ErrorCode::MessageTooLarge,
                    "message larger than max_message_bytes",
                )
                .await;
        }
        let msg = match ClientMessage::parse(text.as_str()) {
            Ok(m) => m,
            Err(e) => return self.reject(e.code, e.detail).await,
        };
        match (msg, &self.phase) {
            (ClientMessage::Hello { version }, Phase::AwaitHello) => {
                if version != PROTOCOL_VERSION {
                    return self
                        .reject(
                            ErrorCode::VersionMismatch,
                            "this server speaks protocol version 1",
                        )
                        .await;
                }
                self.phase = Phase::AwaitJoin;
                let cfg = &self.state.cfg;
                let welcome = ServerMessage::Welcome {
                    version: PROTOCOL_VERSION,
                    server: format!("aparte-signaling/{}", env!("CARGO_PKG_VERSION")),
                    max_message_bytes: cfg.max_message_bytes,
                    ping_interval_ms: u64::try_from(cfg.ping_interval.as_millis())
                        .unwrap_or(u64::MAX),
                };
                {
                    let sent = self.send(&welcome).await;
                    flow(sent)
                }
            }
            (_, Phase::AwaitHello) => {
                self.reject(ErrorCode::HelloRequired, "the first message must be hello")
                    .await
            }
            (
                ClientMessage::Join {
                    room,
                    token,
                    resume,
                },
                Phase::AwaitJoin,
            ) => self.join(room, token, resume).await,
            (ClientMessage::Hello { .. } | ClientMessage::Join { .. }, _) => {
                self.reject(ErrorCode::AlreadyJoined, "hello and join are sent once")
                    .await
            }
            (ClientMessage::Ping, _) => {
                let sent = self.send(&ServerMessage::Pong).await;
                flow(sent)
            }
            (ClientMessage::Relay { .. } | ClientMessage::Leave, Phase::AwaitJoin) => {
                self.reject(ErrorCode::NotJoined, "join a room first").await
            }
            (ClientMessage::Leave, Phase::Joined(_)) => {
                self.end_because("left");
                Flow::Close(CloseCode::NORMAL, "left", LeaveReason::Left)
            }
            (ClientMessage::Relay { to, payload }, Phase::Joined(room)) => {
                let out = Utf8Bytes::from(relay_frame(self.id, payload.get()));
                let st = Arc::clone(&self.state);
                match st.rooms.relay(room, self.id, to, &out, &st.metrics) {
                    Ok(delivered) => {
                        // Sizes only: the payload itself is never logged.
                        tracing::debug!(
                            peer = self.id,
                            bytes = payload.get().len(),
                            delivered,
                            "relayed"
                        );
                        Flow::Continue
                    }
                    Err(_) => {
                        self.reject(ErrorCode::PeerNotFound, "no such peer in the room")
                            .await
                    }
                }
            }
        }
    }

    async fn join(
        &mut self,
        room: RoomId,
        tok: Option<String>,
        resume: Option<ResumeToken>,
    ) -> Flow {
        let st = Arc::clone(&self.state);
        let cfg = &st.cfg;
        let now = unix_now();
        let mut label = None;
        self.room_tag = Some(crate::rooms::room_tag(&room));
        if let Some(secret) = &cfg.token_secret {
            let Some(tok) = tok else {
                return self
                    .reject(ErrorCode::TokenRequired, "this server needs a join token")
                    .await;
            };
            match token::verify(secret.expose(), &tok, &room, now) {
                Ok(claims) => label = claims.label,
                Err(token::TokenError::Invalid) => {
                    return self
                        .reject(ErrorCode::TokenInvalid, "the token does not verify")
                        .await
                }
                Err(token::TokenError::Expired) => {
                    return self
                        .reject(ErrorCode::TokenExpired, "the token has expired")
                        .await
                }
                Err(token::TokenError::WrongRoom) => {
                    return self
                        .reject(ErrorCode::TokenWrongRoom, "the token grants another room")
                        .await
                }
            }
        }
        let own_resume = ResumeToken::random(&mut rand_core::OsRng);
        let member = Member {
            id: self.id,
            label: label.clone(),
            tx: self.tx.clone(),
            kick: self.kick.clone(),
            resume: own_resume.clone(),
            replaced: self.replaced.clone(),
        };
        let peers = match st.rooms.join(
            &room,
            member,
            cfg.room_capacity,
            resume.as_ref(),
            &st.metrics,
        ) {
            Ok(p) => p,
            Err(_) => return self.reject(ErrorCode::RoomFull, "the room is full").await,
        };
        self.phase = Phase::Joined(room.clone());
        tracing::info!(
            peer = self.id,
            client = %self.client,
            room = %self.room_tag.as_deref().unwrap_or("-"),
            "joined"
        );
        let joined = ServerMessage::Joined {
            room,
            peer_id: self.id,
            capacity: cfg.room_capacity,
            peers,
            ice_servers: ice_servers(&st, self.id, label.as_deref(), now),
            resume: Some(own_resume),
        };
        let sent = self.send(&joined).await;
        flow(sent)
    }
}

/// The `relay` frame for `payload` from peer `from`: the same bytes as serializing
/// [`ServerMessage::Relay`], written directly around the payload, which is copied verbatim.
fn relay_frame(from: PeerId, payload: &str) -> String {
    use std::fmt::Write as _;
    const HEAD: &str = r#"{"type":"relay","from":"#;
    const MID: &str = r#","payload":"#;
    let mut out = String::with_capacity(HEAD.len() + 20 + MID.len() + payload.len() + 1);
    out.push_str(HEAD);
    let _ = write!(out, "{from}");
    out.push_str(MID);
    out.push_str(payload);
    out.push('}');
    out
}

fn flow(sent: bool) -> Flow {
    // A failed send ends the connection; `serve` reports it as `disconnected`.
    if sent {
        Flow::Continue
    } else {
        Flow::Close(CloseCode::NORMAL, "", LeaveReason::Disconnected)
    }
}

/// The STUN/TURN servers for one join, with freshly minted TURN REST credentials.
fn ice_servers(st: &AppState, id: PeerId, label: Option<&str>, now: u64) -> Vec<IceServer> {
    let cfg = &st.cfg;
    let mut out = Vec::new();
    if !cfg.stun_urls.is_empty() {
        out.push(IceServer {
            urls: cfg.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    let mut turn_urls = cfg.turn_urls.clone();
    if turn_urls.is_empty() {
        turn_urls = st.relay_urls.clone();
    }
    if let (Some(secret), false) = (&cfg.turn_secret, turn_urls.is_empty()) {
        let label = label.map_or_else(|| format!("peer{id}"), str::to_owned);
        let creds = turn_rest::mint(secret.expose(), &label, now, cfg.turn_ttl.as_secs());
        out.push(IceServer {
            urls: turn_urls,
            username: Some(creds.username),
            credential: Some(creds.password),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn relay_frame_matches_the_serializer() {
        for (from, payload) in [
            (1, r#"{"sdp":"v=0\r\n","x":[1,2]}"#),
            (u64::MAX, "null"),
            (42, r#""caf\u00e9 \"quoted\"""#),
            (7, "[1, 2 ,{\"a\" : {}}]"),
        ] {
            let expected = ServerMessage::Relay {
                from,
                payload: RawValue::from_string(payload.to_owned()).unwrap(),
            }
            .to_json();
            let built = relay_frame(from, payload);
            assert_eq!(built, expected);
            match ServerMessage::parse(&built).unwrap() {
                ServerMessage::Relay {
                    from: f,
                    payload: p,
                } => {
                    assert_eq!(f, from);
                    assert_eq!(p.get(), payload);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn heartbeat_deadlines_round_up_to_the_grid() {
        let epoch = Instant::now();
        let grid = Duration::from_millis(250);
        let ms = Duration::from_millis;
        assert_eq!(on_grid(epoch, epoch, grid), epoch);
        assert_eq!(on_grid(epoch, epoch + ms(1), grid), epoch + ms(250));
        assert_eq!(on_grid(epoch, epoch + ms(250), grid), epoch + ms(250));
        assert_eq!(on_grid(epoch, epoch + ms(2001), grid), epoch + ms(2250));
        assert_eq!(heartbeat_grid(Duration::from_secs(2)), ms(250));
        assert_eq!(heartbeat_grid(ms(200)), ms(25));
        assert_eq!(heartbeat_grid(Duration::ZERO), ms(1));
    }
}
