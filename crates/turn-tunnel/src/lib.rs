//! TURN over TCP and TLS for webrtc-rs, without patching it.
//!
//! webrtc-rs 0.17's ICE agent speaks TURN over UDP only, so a network that blocks UDP (an
//! office, a hotel) leaves a call without any candidate. This crate is an in-process tunnel:
//! it offers webrtc-rs a **local UDP TURN server** on `127.0.0.1:PORT` and carries each datagram
//! over a **TCP or TLS stream** to the real TURN server. TURN messages are the same on both
//! transports; on a stream they are delimited as RFC 5766 §2.1 says (see [`framer`]), and the
//! allocation belongs to the stream, so the tunnel opens one stream per local UDP peer address
//! (one per TURN client socket of webrtc-rs), on that peer's first datagram, and sends what the
//! stream delivers back to that address. The TURN server sees an ordinary TURN-over-TCP/TLS
//! client; credentials, nonces and message integrity pass through untouched (the tunnel never
//! parses attributes, never logs payloads).
//!
//! ```no_run
//! # async fn f() -> Result<(), aparte_turn_tunnel::TunnelError> {
//! use aparte_turn_tunnel::{upstream_of, Tunnel, TunnelConfig};
//! let upstream = upstream_of("turns:turn.example.org:443?transport=tcp").expect("a stream URL");
//! let tunnel = Tunnel::start(TunnelConfig::new(upstream)).await?;
//! // Hand webrtc-rs this URL with the real server's username and credential:
//! let url = tunnel.turn_url(); // "turn:127.0.0.1:PORT?transport=udp"
//! # let _ = url; tunnel.close().await; Ok(()) }
//! ```
//!
//! Everything that comes from the network is hostile: datagrams that are not exactly one TURN
//! message are dropped; a stream that sends anything but STUN/ChannelData, or a message above
//! [`Limits::max_message`], is closed; every queue is bounded (a full queue drops datagrams,
//! as UDP would); connecting (TCP and TLS handshake) has a deadline and streams close when idle.
//! Every drop and close is counted in [`TunnelStats`] and announced as a [`TunnelEvent`].
//!
//! It has a UDP mode too ([`Upstream::Udp`], [`ipv6_udp_upstream_of`]): webrtc-rs sends UDP
//! TURN from an IPv4 socket only, so a TURN server's IPv6 address is reached through the
//! tunnel, one UDP socket towards the server per local TURN client, datagrams passed as they
//! are.
//!
//! The tunnel is only the transport: the caller decides when to use it and passes webrtc-rs the
//! same username and credential it would have used for the stream URL. Its [`Gate`] lets the
//! caller hold new clients' requests without connecting, then open (connect and forward the
//! newest held request) or decline (answer with a STUN 403 so the client stops waiting): the
//! client's "UDP first, TCP/TLS after about 2 s" (issue 16) is built on it. Its tests run the `turn` 0.17 client (the code
//! webrtc-rs's ICE agent uses) through it to a real coturn over TCP and over TLS; they need
//! `turnserver` on PATH (`apt-get install coturn`).
#![forbid(unsafe_code)]

pub mod framer;
mod url;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use framer::{check_datagram, FrameKind, Framer};
pub use url::{ipv6_udp_upstream_of, upstream_of};

/// ALPN protocol id of TURN over TLS (RFC 7443).
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// The real TURN server, reached over a stream (or, for IPv6, over UDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// TURN over TCP (`turn:HOST:PORT?transport=tcp`).
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// TURN over TLS (`turns:HOST:PORT?transport=tcp`); the certificate must be valid for `host`.
    Tls {
        /// Host name or IP address (IPv6 without brackets); also the TLS server name.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// TURN over UDP to a server that webrtc-rs cannot reach itself: its ICE agent sends
    /// UDP TURN from an IPv4 socket only (`0.0.0.0:0`, webrtc-ice 0.17), so a TURN server's
    /// IPv6 address (`turn:[2001:db8::1]:3478`) is out of its reach. Each local TURN client
    /// gets its own UDP socket towards the server, so each keeps its own allocation.
    Udp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// UDP port.
        port: u16,
    },
}

impl Upstream {
    fn host_port(&self) -> (&str, u16) {
        match self {
            Upstream::Tcp { host, port }
            | Upstream::Tls { host, port }
            | Upstream::Udp { host, port } => (host, *port),
        }
    }
}

/// Bounds on what the tunnel holds and how long it waits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest TURN message accepted either way, header included, padding not. Media datagrams
    /// are ~100-1200 bytes; TURN control messages are a few hundred.
    pub max_message: usize,
    /// Most streams open at once (one per local TURN client socket). A datagram from a new
    /// address beyond this is dropped.
    pub max_streams: usize,
    /// Datagrams queued per stream while it connects or while the upstream is slow; beyond it,
    /// datagrams are dropped (as UDP would) so one slow stream stalls nobody.
    pub queue_datagrams: usize,
    /// Deadline for name resolution, the TCP connect and the TLS handshake together.
    pub connect_timeout: Duration,
    /// Deadline for writing one message to the upstream; a stream that does not take it is
    /// closed.
    pub write_timeout: Duration,
    /// A stream with no traffic either way for this long is closed. TURN clients refresh their
    /// allocation (default lifetime 600 s) and permissions (300 s) well within 5 minutes, and
    /// ICE keeps consent alive every few seconds, so a live call never gets there.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 8192,
            max_streams: 16,
            queue_datagrams: 256,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(330),
        }
    }
}

/// What [`Tunnel::start`] needs.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// The real TURN server.
    pub upstream: Upstream,
    /// TLS client configuration for [`Upstream::Tls`]; `None` uses [`tls_client_config`] with
    /// no extra CA (Mozilla roots, ALPN `stun.turn`). Ignored for [`Upstream::Tcp`].
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bounds and deadlines.
    pub limits: Limits,
}

impl TunnelConfig {
    /// A configuration with the default TLS set-up and [`Limits::default`].
    pub fn new(upstream: Upstream) -> Self {
        TunnelConfig {
            upstream,
            tls: None,
            limits: Limits::default(),
        }
    }
}

/// Why the tunnel could not start.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The local UDP socket could not be bound.
    #[error("binding the local UDP TURN socket: {0}")]
    Bind(#[source] std::io::Error),
    /// The TLS server name (the URL's host) is not a valid DNS name or IP address.
    #[error("TURN server host {0:?} is not a valid TLS server name")]
    ServerName(String),
    /// rustls refused the TLS configuration.
    #[error("TLS set-up: {0}")]
    Tls(String),
}

/// Why a stream closed (or never opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The host name did not resolve, or every address refused the TCP connection.
    ConnectFailed,
    /// Resolution, TCP connect and TLS handshake did not finish within the deadline.
    ConnectTimeout,
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol error).
    TlsHandshake,
    /// The TURN server closed the stream.
    UpstreamClosed,
    /// Reading from or writing to the stream failed.
    Io,
    /// The TURN server did not take a message within the write deadline.
    WriteTimeout,
    /// The TURN server sent a message above [`Limits::max_message`].
    Oversize,
    /// The TURN server sent bytes that are not STUN or ChannelData.
    Garbage,
    /// No traffic either way for [`Limits::idle_timeout`].
    Idle,
    /// The tunnel was closed.
    Shutdown,
    /// The stream was never opened: the gate was [`Gate::Decline`], and the held request was
    /// answered with an error.
    Declined,
    /// The stream was never opened: when the gate opened, the held request was older than
    /// [`HELD_STALE_AFTER`] (its TURN client had given up on it).
    Abandoned,
}

/// What the tunnel does with a local TURN client's datagrams before a stream carries them
/// (set with [`Tunnel::set_gate`]; the caller's policy decides, e.g. issue 16's "UDP first").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Connect upstream on a client's first datagram (the default).
    Open,
    /// Do not connect yet: keep each new client's newest datagram (its TURN client retransmits
    /// a request every 1.6 s at most, so the newest is the one still awaited) until the gate
    /// moves. Clients whose stream is already up are not affected.
    Hold,
    /// Do not connect: answer each new client's STUN request at once with a 403 error
    /// response, so its TURN client fails fast instead of retransmitting for seconds.
    Decline,
}

/// A held datagram older than this when the gate opens is dropped: webrtc-rs's TURN client
/// (turn 0.17) retransmits an unanswered request at least every 1.6 s, so an older one
/// belongs to a transaction it has abandoned.
pub const HELD_STALE_AFTER: Duration = Duration::from_secs(3);

/// A STUN error response (403) to the STUN request `request`, or `None` if it is not one.
fn decline_response(request: &[u8]) -> Option<Vec<u8>> {
    use stun::error_code::{ErrorCodeAttribute, CODE_FORBIDDEN};
    use stun::message::{Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST};
    let mut req = Message::new();
    req.unmarshal_binary(request).ok()?;
    if req.typ.class != CLASS_REQUEST {
        return None;
    }
    let mut res = Message::new();
    let setters: [Box<dyn Setter>; 3] = [
        Box::new(req.transaction_id),
        Box::new(MessageType::new(req.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code: CODE_FORBIDDEN,
            reason: b"relay over TCP/TLS not used".to_vec(),
        }),
    ];
    res.build(&setters).ok()?;
    Some(res.raw)
}

/// Something that happened to a stream, for logs, metrics and fallback policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEvent {
    /// A stream to the TURN server is connected (and TLS established) for a local TURN client.
    Connected {
        /// The local TURN client's UDP address.
        client: SocketAddr,
    },
    /// A stream closed, or could not be opened.
    Closed {
        /// The local TURN client's UDP address.
        client: SocketAddr,
        /// Why.
        reason: CloseReason,
    },
}

/// A snapshot of the tunnel's counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Streams started (one per new local TURN client address).
    pub streams_opened: u64,
    /// Streams that completed the TCP connect (and TLS handshake).
    pub streams_connected: u64,
    /// Streams open now.
    pub streams_active: u64,
    /// Messages written to the TURN server, all kinds.
    pub messages_up: u64,
    /// ChannelData messages among `messages_up`.
    pub channel_data_up: u64,
    /// Bytes written to the TURN server (with padding).
    pub bytes_up: u64,
    /// Messages received from the TURN server and sent to the local client.
    pub messages_down: u64,
    /// ChannelData messages among `messages_down`.
    pub channel_data_down: u64,
    /// Bytes sent to the local client.
    pub bytes_down: u64,
    /// Local datagrams dropped because they were not exactly one TURN message within the limit.
    pub dropped_invalid: u64,
    /// Local datagrams dropped because their stream's queue was full.
    pub dropped_queue_full: u64,
    /// Local datagrams dropped because [`Limits::max_streams`] streams were open.
    pub dropped_stream_limit: u64,
    /// Local datagrams from a foreign (non-loopback) address, dropped.
    pub dropped_foreign: u64,
    /// STUN requests answered with an error because the gate was [`Gate::Decline`].
    pub declined: u64,
    /// Streams closed, by reason.
    pub closed: Vec<(CloseReason, u64)>,
}

impl TunnelStats {
    /// How many streams closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

const REASONS: [CloseReason; 12] = [
    CloseReason::ConnectFailed,
    CloseReason::ConnectTimeout,
    CloseReason::TlsHandshake,
    CloseReason::UpstreamClosed,
    CloseReason::Io,
    CloseReason::WriteTimeout,
    CloseReason::Oversize,
    CloseReason::Garbage,
    CloseReason::Idle,
    CloseReason::Shutdown,
    CloseReason::Declined,
    CloseReason::Abandoned,
];

#[derive(Default)]
struct Counters {
    streams_opened: AtomicU64,
    streams_connected: AtomicU64,
    streams_active: AtomicU64,
    messages_up: AtomicU64,
    channel_data_up: AtomicU64,
    bytes_up: AtomicU64,
    messages_down: AtomicU64,
    channel_data_down: AtomicU64,
    bytes_down: AtomicU64,
    dropped_invalid: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_stream_limit: AtomicU64,
    dropped_foreign: AtomicU64,
    declined: AtomicU64,
    closed: [AtomicU64; REASONS.len()],
}

impl Counters {
    /// A message written to the TURN server (ChannelData starts with bits `01`).
    fn sent_up(&self, message: &[u8]) {
        bump(&self.messages_up, 1);
        bump(&self.bytes_up, len_u64(message.len()));
        if message.first().is_some_and(|b| b >> 6 == 0b01) {
            bump(&self.channel_data_up, 1);
        }
    }

    /// A message of `len` bytes from the TURN server, sent to the local client.
    fn sent_down(&self, kind: FrameKind, len: usize) {
        bump(&self.messages_down, 1);
        bump(&self.bytes_down, len_u64(len));
        if kind == FrameKind::ChannelData {
            bump(&self.channel_data_down, 1);
        }
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What every stream task shares with the tunnel.
struct Shared {
    udp: Arc<UdpSocket>,
    upstream: Upstream,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    limits: Limits,
    counters: Counters,
    events: broadcast::Sender<TunnelEvent>,
    shutdown: watch::Receiver<bool>,
    gate: watch::Receiver<Gate>,
}

impl Shared {
    /// Answers `request` from `client` with a 403 if it is a STUN request (else drops it).
    async fn decline(&self, client: SocketAddr, request: &[u8]) {
        if let Some(response) = decline_response(request) {
            bump(&self.counters.declined, 1);
            // A lost answer is a lost datagram: the client retransmits and is answered again.
            let _ = self.udp.send_to(&response, client).await;
        }
    }

    fn close(&self, client: SocketAddr, reason: CloseReason) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            bump(&self.counters.closed[i], 1);
        }
        tracing::debug!(%client, ?reason, "TURN tunnel stream closed");
        // Nobody listening is fine: events are optional.
        let _ = self.events.send(TunnelEvent::Closed { client, reason });
    }
}

/// A running tunnel: a local UDP TURN "server" whose every client is carried over its own
/// TCP/TLS stream to the real TURN server. Dropping it without [`Tunnel::close`] also stops it
/// (its tasks end when they see the shutdown signal).
pub struct Tunnel {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    gate: watch::Sender<Gate>,
    /// Taken by [`Tunnel::close`] to wait for it (a `Drop` type cannot be destructured).
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local_addr", &self.local_addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

/// The client TLS configuration for TURN over TLS: rustls with the ring provider, the Mozilla
/// root certificates (webpki-roots, as the signaling TLS), every certificate of `extra_cas` as
/// an additional trust anchor (for a self-signed deployment), and ALPN `stun.turn` (RFC 7443).
pub fn tls_client_config(
    extra_cas: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, TunnelError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for ca in extra_cas {
        roots
            .add(ca.clone())
            .map_err(|e| TunnelError::Tls(format!("extra CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TunnelError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    Ok(Arc::new(config))
}

impl Tunnel {
    /// Binds the local UDP TURN socket on `127.0.0.1:0` and starts serving. Streams to the TURN
    /// server are opened lazily, on each local client's first datagram, so this never touches
    /// the network beyond loopback.
    pub async fn start(config: TunnelConfig) -> Result<Tunnel, TunnelError> {
        let tls = match &config.upstream {
            Upstream::Tcp { .. } | Upstream::Udp { .. } => None,
            Upstream::Tls { host, .. } => {
                let name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| TunnelError::ServerName(host.clone()))?;
                let tls_config = match config.tls {
                    Some(c) => c,
                    None => tls_client_config(&[])?,
                };
                Some((tokio_rustls::TlsConnector::from(tls_config), name))
            }
        };
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(TunnelError::Bind)?;
        let local_addr = udp.local_addr().map_err(TunnelError::Bind)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (events, _) = broadcast::channel(64);
        let (gate, gate_rx) = watch::channel(Gate::Open);
        let shared = Arc::new(Shared {
            udp: Arc::new(udp),
            upstream: config.upstream,
            tls,
            limits: config.limits,
            counters: Counters::default(),
            events,
            shutdown: shutdown_rx,
            gate: gate_rx,
        });
        let task = tokio::spawn(serve(Arc::clone(&shared)));
        tracing::debug!(%local_addr, "TURN tunnel started");
        Ok(Tunnel {
            local_addr,
            shared,
            shutdown,
            gate,
            task: Some(task),
        })
    }

    /// The local UDP TURN server address (`127.0.0.1:PORT`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL to give webrtc-rs in an `RTCIceServer` instead of the stream URL, with the real
    /// server's username and credential: `turn:127.0.0.1:PORT?transport=udp`.
    pub fn turn_url(&self) -> String {
        format!("turn:{}?transport=udp", self.local_addr)
    }

    /// The TURN server the tunnel carries traffic to.
    pub fn upstream(&self) -> &Upstream {
        &self.shared.upstream
    }

    /// Sets what happens to new clients' datagrams before a stream carries them (see
    /// [`Gate`]). Takes effect at once, also for clients held so far.
    pub fn set_gate(&self, gate: Gate) {
        self.gate.send_replace(gate);
    }

    /// The current [`Gate`].
    pub fn gate(&self) -> Gate {
        *self.gate.borrow()
    }

    /// A receiver of stream events from now on (a lagging receiver loses the oldest ones).
    pub fn events(&self) -> broadcast::Receiver<TunnelEvent> {
        self.shared.events.subscribe()
    }

    /// The counters so far.
    pub fn stats(&self) -> TunnelStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TunnelStats {
            streams_opened: get(&c.streams_opened),
            streams_connected: get(&c.streams_connected),
            streams_active: get(&c.streams_active),
            messages_up: get(&c.messages_up),
            channel_data_up: get(&c.channel_data_up),
            bytes_up: get(&c.bytes_up),
            messages_down: get(&c.messages_down),
            channel_data_down: get(&c.channel_data_down),
            bytes_down: get(&c.bytes_down),
            dropped_invalid: get(&c.dropped_invalid),
            dropped_queue_full: get(&c.dropped_queue_full),
            dropped_stream_limit: get(&c.dropped_stream_limit),
            dropped_foreign: get(&c.dropped_foreign),
            declined: get(&c.declined),
            closed: REASONS
                .iter()
                .zip(&c.closed)
                .map(|(r, n)| (*r, get(n)))
                .collect(),
        }
    }

    /// Stops the tunnel: closes every stream (the TURN server then frees their allocations)
    /// and the local socket, and waits for its tasks to end.
    pub async fn close(mut self) {
        let _ = self.shutdown.send(true);
        // The serve task waits for its stream tasks, each of which ends at the signal.
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// The local side: receives datagrams from TURN clients on loopback and hands each to the
/// stream of its source address.
async fn serve(shared: Arc<Shared>) {
    let mut streams: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    // One byte more than the largest accepted message (plus padding) tells "too big" apart
    // from "exactly the limit".
    let mut buf = vec![0u8; shared.limits.max_message + 4];
    loop {
        let (n, from) = tokio::select! {
            _ = shutdown.wait_for(|&s| s) => break,
            // Reap finished stream tasks so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            r = shared.udp.recv_from(&mut buf) => match r {
                Ok(r) => r,
                // ICMP "port unreachable" from an earlier send_to surfaces here on some
                // systems; it concerns one client, not the socket.
                Err(e) => {
                    tracing::debug!(error = %e, "TURN tunnel UDP receive error");
                    continue;
                }
            },
        };
        let c = &shared.counters;
        // Only this machine's TURN clients may use the tunnel (the socket is bound to
        // loopback, so this is defence in depth).
        if !from.ip().is_loopback() {
            bump(&c.dropped_foreign, 1);
            continue;
        }
        let message = match check_datagram(&buf[..n], shared.limits.max_message) {
            Ok(m) => m,
            Err(_) => {
                bump(&c.dropped_invalid, 1);
                continue;
            }
        };
        // A stream that ended (its allocation with it) is replaced by a fresh one on the next
        // datagram: the TURN client will see an allocation mismatch and allocate again.
        if streams.get(&from).is_some_and(|tx| tx.is_closed()) {
            streams.remove(&from);
        }
        if !streams.contains_key(&from) && *shared.gate.borrow() == Gate::Decline {
            shared.decline(from, message.1.as_slice()).await;
            continue;
        }
        if !streams.contains_key(&from) {
            if streams.len() >= shared.limits.max_streams {
                streams.retain(|_, tx| !tx.is_closed());
            }
            if streams.len() >= shared.limits.max_streams {
                bump(&c.dropped_stream_limit, 1);
                continue;
            }
            let (tx, rx) = mpsc::channel(shared.limits.queue_datagrams.max(1));
            bump(&c.streams_opened, 1);
            if matches!(shared.upstream, Upstream::Udp { .. }) {
                tasks.spawn(run_datagrams(Arc::clone(&shared), from, rx));
            } else {
                tasks.spawn(run_stream(Arc::clone(&shared), from, rx));
            }
            streams.insert(from, tx);
        }
        let Some(tx) = streams.get(&from) else {
            continue;
        };
        match tx.try_send(message.1) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => bump(&c.dropped_queue_full, 1),
            // The stream ended between the check above and now; the datagram is lost as it
            // would be on UDP, and the next one opens a new stream.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                streams.remove(&from);
            }
        }
    }
    drop(streams);
    while tasks.join_next().await.is_some() {}
}

/// Either kind of upstream stream.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Resolves, connects and (for TLS) handshakes, within the caller's deadline.
async fn connect(shared: &Shared) -> Result<Box<dyn Stream>, CloseReason> {
    let (host, port) = shared.upstream.host_port();
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| CloseReason::ConnectFailed)?;
    let mut tcp = None;
    for addr in addrs {
        if let Ok(s) = TcpStream::connect(addr).await {
            tcp = Some(s);
            break;
        }
    }
    let tcp = tcp.ok_or(CloseReason::ConnectFailed)?;
    // TURN messages are small and latency-bound (audio): never wait to coalesce them.
    let _ = tcp.set_nodelay(true);
    match &shared.tls {
        None => Ok(Box::new(tcp)),
        Some((connector, name)) => match connector.connect(name.clone(), tcp).await {
            Ok(tls) => Ok(Box::new(tls)),
            Err(e) => {
                // The error says what failed (e.g. an unknown issuer); it holds no secrets.
                tracing::warn!(error = %e, "TURN over TLS handshake failed");
                Err(CloseReason::TlsHandshake)
            }
        },
    }
}

/// Resolves the UDP upstream and opens a socket of its family connected to it.
async fn connect_udp(shared: &Shared) -> Result<UdpSocket, CloseReason> {
    let (host, port) = shared.upstream.host_port();
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| CloseReason::ConnectFailed)?
        .next()
        .ok_or(CloseReason::ConnectFailed)?;
    let any: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any)
        .await
        .map_err(|_| CloseReason::ConnectFailed)?;
    // Connected: the kernel then drops datagrams from anyone but the TURN server.
    socket
        .connect(addr)
        .await
        .map_err(|_| CloseReason::ConnectFailed)?;
    Ok(socket)
}

/// One local TURN client's UDP flow to an [`Upstream::Udp`] server: datagrams go through as
/// they are (UDP needs no framing), each checked to be exactly one TURN message within the
/// limit both ways. The flow counts as a stream in [`TunnelStats`].
async fn run_datagrams(shared: Arc<Shared>, client: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut shutdown = shared.shutdown.clone();
    let limits = &shared.limits;
    let socket = match connect_udp(&shared).await {
        Ok(s) => s,
        Err(reason) => {
            rx.close();
            shared.close(client, reason);
            return;
        }
    };
    let c = &shared.counters;
    bump(&c.streams_connected, 1);
    bump(&c.streams_active, 1);
    let _ = shared.events.send(TunnelEvent::Connected { client });
    let mut buf = vec![0u8; limits.max_message + 4];
    let mut last_activity = Instant::now();
    /// What woke the flow up.
    enum Wake {
        Up(Vec<u8>),
        Down(usize),
        Stop(CloseReason),
    }
    let reason = loop {
        let idle_at = last_activity + limits.idle_timeout;
        // Decided first, acted on after: the shutdown receiver's guard must not live across
        // the sends below (it is not `Send`).
        let wake = tokio::select! {
            _ = shutdown.wait_for(|&s| s) => Wake::Stop(CloseReason::Shutdown),
            _ = tokio::time::sleep_until(idle_at) => Wake::Stop(CloseReason::Idle),
            message = rx.recv() => match message {
                Some(m) => Wake::Up(m),
                None => Wake::Stop(CloseReason::Shutdown),
            },
            received = socket.recv(&mut buf) => match received {
                Ok(n) => Wake::Down(n),
                // ICMP unreachable from an earlier send surfaces here: it concerns that
                // datagram only.
                Err(_) => continue,
            },
        };
        match wake {
            Wake::Stop(reason) => break reason,
            Wake::Up(message) => {
                // A send error (no route, ICMP unreachable) loses this datagram only, as
                // UDP would; the TURN client's retransmissions and timers decide.
                if socket.send(&message).await.is_ok() {
                    last_activity = Instant::now();
                    c.sent_up(&message);
                }
            }
            Wake::Down(n) => {
                // Checked like a local datagram, but passed on as it came (on UDP, padding
                // of ChannelData is optional: RFC 5766 §11.5).
                let Ok((kind, _)) = check_datagram(&buf[..n], limits.max_message) else {
                    bump(&c.dropped_invalid, 1);
                    continue;
                };
                last_activity = Instant::now();
                let _ = shared.udp.send_to(&buf[..n], client).await;
                c.sent_down(kind, n);
            }
        }
    };
    rx.close();
    c.streams_active.fetch_sub(1, Ordering::Relaxed);
    shared.close(client, reason);
}

/// While the gate is [`Gate::Hold`], keeps `client`'s newest datagram. Returns the datagram to
/// send first once the stream is up (`None`: nothing was held), or why the stream is not to
/// be opened.
async fn held(
    shared: &Shared,
    client: SocketAddr,
    rx: &mut mpsc::Receiver<Vec<u8>>,
) -> Result<Option<Vec<u8>>, CloseReason> {
    let mut gate = shared.gate.clone();
    let mut shutdown = shared.shutdown.clone();
    let mut kept: Option<(Instant, Vec<u8>)> = None;
    loop {
        let now = *gate.borrow_and_update();
        match now {
            Gate::Open => {
                return match kept {
                    Some((at, _)) if at.elapsed() > HELD_STALE_AFTER => Err(CloseReason::Abandoned),
                    Some((_, m)) => Ok(Some(m)),
                    None => Ok(None),
                }
            }
            Gate::Decline => {
                // What the serve loop queued but this task has not taken yet counts too.
                while let Ok(m) = rx.try_recv() {
                    kept = Some((Instant::now(), m));
                }
                if let Some((_, m)) = kept.take() {
                    shared.decline(client, &m).await;
                }
                return Err(CloseReason::Declined);
            }
            Gate::Hold => {}
        }
        tokio::select! {
            _ = shutdown.wait_for(|&s| s) => return Err(CloseReason::Shutdown),
            changed = gate.changed() => {
                if changed.is_err() {
                    // The tunnel is gone.
                    return Err(CloseReason::Shutdown);
                }
            }
            m = rx.recv() => match m {
                Some(m) => kept = Some((Instant::now(), m)),
                None => return Err(CloseReason::Shutdown),
            },
        }
    }
}

/// One local TURN client's stream, from connect to close.
async fn run_stream(shared: Arc<Shared>, client: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut shutdown = shared.shutdown.clone();
    let limits = &shared.limits;
    let first = match held(&shared, client, &mut rx).await {
        Ok(first) => first,
        Err(reason) => {
            rx.close();
            shared.close(client, reason);
            return;
        }
    };
    let connected = tokio::select! {
        _ = shutdown.wait_for(|&s| s) => Err(CloseReason::Shutdown),
        r = tokio::time::timeout(limits.connect_timeout, connect(&shared)) => {
            r.unwrap_or(Err(CloseReason::ConnectTimeout))
        }
    };
    let stream = match connected {
        Ok(s) => s,
        Err(reason) => {
            rx.close();
            shared.close(client, reason);
            return;
        }
    };
    let c = &shared.counters;
    bump(&c.streams_connected, 1);
    bump(&c.streams_active, 1);
    tracing::debug!(%client, "TURN tunnel stream connected");
    let _ = shared.events.send(TunnelEvent::Connected { client });

    let (mut reader, mut writer) = tokio::io::split(stream);
    let last_activity = std::sync::Mutex::new(Instant::now());
    let touch = || {
        if let Ok(mut t) = last_activity.lock() {
            *t = Instant::now();
        }
    };

    let up = async {
        let mut first = first;
        loop {
            let message = match first.take() {
                Some(m) => m,
                None => match rx.recv().await {
                    Some(m) => m,
                    None => break,
                },
            };
            match tokio::time::timeout(limits.write_timeout, writer.write_all(&message)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return CloseReason::Io,
                Err(_) => return CloseReason::WriteTimeout,
            }
            touch();
            c.sent_up(&message);
        }
        // The tunnel dropped its sender: it is shutting down.
        CloseReason::Shutdown
    };

    let down = async {
        let mut framer = Framer::new(limits.max_message);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) => return CloseReason::UpstreamClosed,
                Ok(n) => n,
                Err(_) => return CloseReason::Io,
            };
            touch();
            framer.push(&buf[..n]);
            loop {
                match framer.next_frame() {
                    Ok(Some((kind, message))) => {
                        // A send error (the client's socket is gone) loses this datagram
                        // only; the client's own timers decide what happens next.
                        let _ = shared.udp.send_to(message, client).await;
                        c.sent_down(kind, message.len());
                    }
                    Ok(None) => break,
                    Err(framer::FrameError::Oversize { .. }) => return CloseReason::Oversize,
                    Err(_) => return CloseReason::Garbage,
                }
            }
        }
    };

    let idle = async {
        loop {
            let last = last_activity
                .lock()
                .map(|t| *t)
                .unwrap_or_else(|_| Instant::now());
            let deadline = last + limits.idle_timeout;
            if Instant::now() >= deadline {
                return CloseReason::Idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };

    let reason = tokio::select! {
        r = up => r,
        r = down => r,
        r = idle => r,
        _ = shutdown.wait_for(|&s| s) => CloseReason::Shutdown,
    };
    // Refuse further datagrams at once, then tell the server we are done (best effort,
    // bounded) so it frees the allocation now rather than at its lifetime's end.
    rx.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
    c.streams_active.fetch_sub(1, Ordering::Relaxed);
    shared.close(client, reason);
}
