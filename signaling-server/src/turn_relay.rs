//! The embedded TURN relay: the webrtc-rs `turn` crate's UDP server, with TURN REST
//! authentication (the same credentials the signaling server hands out) and quotas.
//!
//! Quotas are enforced around the crate's server, which has none of its own:
//! - allocations per user label and in total, checked when a relay socket is requested;
//! - a hard cap on an allocation's age: its relay socket stops working at the deadline, which
//!   makes the crate drop the allocation;
//! - a relayed-bandwidth cap per allocation and direction (a byte token bucket); excess
//!   datagrams are dropped and counted.
//!
//! The crate processes requests of one listener one at a time, so the user label that the
//! authentication handler saw last is the one whose allocation the generator creates next.
//! That is why every listener (UDP, TCP, TLS) gets a `turn` server of its own.
//!
//! TURN over TCP and TLS reaches the same servers through [`crate::turn_stream::StreamMux`];
//! an allocation made over a stream ends when the stream does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aparte_signaling_protocol::turn_rest;
use async_trait::async_trait;
use turn::auth::{generate_auth_key, AuthHandler};
use turn::relay::relay_range::RelayAddressGeneratorRanges;
use turn::relay::RelayAddressGenerator;
use turn::server::config::{ConnConfig, ServerConfig};
use turn::server::Server;
use webrtc_util::vnet::net::Net;
use webrtc_util::Conn;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::config::TurnRelayConfig;
use crate::limits::TokenBucket;
use crate::metrics::{Metrics, Transport};
use crate::turn_stream::StreamMux;

type UserCounts = Arc<Mutex<HashMap<String, usize>>>;

/// The running relay: one `turn` server per client transport, sharing the quotas.
pub(crate) struct TurnRelay {
    servers: Vec<Server>,
    muxes: Vec<Arc<StreamMux>>,
    /// The UDP address it listens on.
    pub(crate) local_addr: SocketAddr,
}

impl TurnRelay {
    /// Stops the relay, closes every client stream and drops every allocation.
    pub(crate) async fn close(self) {
        for m in &self.muxes {
            m.shutdown();
        }
        for s in self.servers {
            let _ = s.close().await;
        }
    }
}

/// One way in for TURN clients: the UDP socket, or the streams of TCP or TLS clients.
pub(crate) enum Listener {
    /// The UDP socket (bound by [`bind_udp`]).
    Udp(tokio::net::UdpSocket),
    /// TCP or TLS client streams, fed by their accept loops.
    Streams(Arc<StreamMux>),
}

/// Starts the relay on `listeners` (the `--turn-listen` UDP one first; bound beforehand, so a busy port is
/// reported before anything starts).
///
/// Each listener gets its own `turn` server, because the crate handles the requests of one
/// listener one at a time and the quota generator relies on that to learn whose allocation it
/// creates (see [`RestAuth`]); the servers share the quota counts and the metrics.
pub(crate) async fn start(
    cfg: &TurnRelayConfig,
    listeners: Vec<Listener>,
    secret: Vec<u8>,
    metrics: Arc<Metrics>,
) -> Result<TurnRelay, turn::Error> {
    let users = UserCounts::default();
    let mut servers = Vec::new();
    let mut muxes = Vec::new();
    let mut udp_addr = None;
    for listener in listeners {
        let (conn, transport, mux): (Arc<dyn Conn + Send + Sync>, _, _) = match listener {
            Listener::Udp(socket) => {
                let local_addr = socket.local_addr()?;
                // The first UDP listener (--turn-listen) is the relay's address.
                udp_addr.get_or_insert(local_addr);
                (
                    Arc::new(ListenConn { socket, local_addr }),
                    Transport::Udp,
                    None,
                )
            }
            Listener::Streams(mux) => {
                muxes.push(Arc::clone(&mux));
                (
                    Arc::clone(&mux) as Arc<dyn Conn + Send + Sync>,
                    mux.transport(),
                    Some(mux),
                )
            }
        };
        // Export every series of this transport from the start (at 0), for dashboards.
        let label = Metrics::transport(transport);
        let _ = metrics.turn_allocations.get_or_create(&label);
        let _ = metrics.turn_allocations_total.get_or_create(&label);
        let _ = metrics.turn_relayed_bytes.get_or_create(&label);
        let _ = metrics.turn_dropped_bytes.get_or_create(&label);
        if transport != Transport::Udp {
            let _ = metrics.turn_streams.get_or_create(&label);
        }
        let current: Arc<Mutex<Option<CurrentRequest>>> = Arc::default();
        let auth = RestAuth {
            secret: secret.clone(),
            metrics: Arc::clone(&metrics),
            transport,
            current: Arc::clone(&current),
        };
        let generator = QuotaGenerator {
            inner: RelayAddressGeneratorRanges {
                relay_address: cfg.public_ip,
                min_port: cfg.min_port,
                max_port: cfg.max_port,
                max_retries: 32,
                address: bind_ip(cfg.listen.ip()),
                net: Arc::new(Net::new(None)),
            },
            cfg: cfg.clone(),
            metrics: Arc::clone(&metrics),
            transport,
            mux,
            current,
            users: Arc::clone(&users),
        };
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn,
                relay_addr_generator: Box::new(generator),
            }],
            realm: cfg.realm.clone(),
            auth_handler: Arc::new(auth),
            channel_bind_timeout: std::time::Duration::ZERO,
            alloc_close_notify: None,
        })
        .await?;
        servers.push(server);
    }
    let local_addr = udp_addr.ok_or_else(|| turn::Error::Other("no UDP listener".into()))?;
    Ok(TurnRelay {
        servers,
        muxes,
        local_addr,
    })
}

/// Socket buffer size asked for the listening socket (the kernel caps it at `rmem_max` /
/// `wmem_max`). One socket carries every client's traffic; with the 208 KiB Linux default a
/// scheduling hiccup of a few milliseconds at 25,000 packets/s overflows it.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Binds the listening UDP socket with large buffers.
pub(crate) fn bind_udp(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer than asked is not an error.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Binds the IPv6 UDP socket (`--turn-listen6`) as [`bind_udp`] does, for IPv6 only: IPv4
/// clients keep using the IPv4 socket, so none of them is seen (and answered in
/// XOR-MAPPED-ADDRESS) as an IPv4-mapped IPv6 address.
pub(crate) fn bind_udp_v6_only(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(true)?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

fn bind_ip(ip: IpAddr) -> String {
    ip.to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The listening socket, with its address cached: the crate asks for the listener's local
/// address on every packet it relays (to build the allocation's 5-tuple), and a plain
/// `tokio::net::UdpSocket` answers that with a `getsockname` system call each time.
struct ListenConn {
    socket: tokio::net::UdpSocket,
    local_addr: SocketAddr,
}

#[async_trait]
impl Conn for ListenConn {
    async fn connect(&self, addr: SocketAddr) -> Result<(), webrtc_util::Error> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<usize, webrtc_util::Error> {
        Ok(self.socket.recv(buf).await?)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), webrtc_util::Error> {
        Ok(self.socket.recv_from(buf).await?)
    }

    async fn send(&self, buf: &[u8]) -> Result<usize, webrtc_util::Error> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<usize, webrtc_util::Error> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> Result<SocketAddr, webrtc_util::Error> {
        Ok(self.local_addr)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> Result<(), webrtc_util::Error> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Who sent the request being handled: the user label and the client's address.
#[derive(Debug, Clone)]
struct CurrentRequest {
    label: String,
    src: SocketAddr,
}

/// TURN REST authentication: recompute the password from the username, refuse expired ones.
/// It records who asked, for the quota generator that runs next in the same request.
struct RestAuth {
    secret: Vec<u8>,
    metrics: Arc<Metrics>,
    transport: Transport,
    current: Arc<Mutex<Option<CurrentRequest>>>,
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let label = match turn_rest::check_username(username, unix_now()) {
            Ok((_, label)) => label,
            Err(e) => {
                self.metrics.turn_reject(
                    self.transport,
                    match e {
                        turn_rest::TurnAuthError::Expired => "expired",
                        turn_rest::TurnAuthError::Malformed => "malformed_username",
                    },
                );
                return Err(turn::Error::Other(e.to_string()));
            }
        };
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(CurrentRequest {
            label: label.to_owned(),
            src: src_addr,
        });
        let password = turn_rest::password(&self.secret, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

/// Hands out relay sockets within the allocation quotas, wrapped in [`QuotaConn`].
struct QuotaGenerator {
    inner: RelayAddressGeneratorRanges,
    cfg: TurnRelayConfig,
    metrics: Arc<Metrics>,
    transport: Transport,
    /// The client streams, for a stream listener: an allocation ends with its stream.
    mux: Option<Arc<StreamMux>>,
    current: Arc<Mutex<Option<CurrentRequest>>>,
    users: UserCounts,
}

#[async_trait]
impl RelayAddressGenerator for QuotaGenerator {
    fn validate(&self) -> Result<(), turn::Error> {
        self.inner.validate()
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let user = current
            .as_ref()
            .map(|c| c.label.clone())
            .unwrap_or_default();
        // For a stream, the allocation must end with the stream (RFC 6062 §2: its 5-tuple is
        // the connection); without a known client address it ends at once.
        let stream_gone = match (&self.mux, &current) {
            (Some(mux), Some(c)) => Some(mux.stream_gone(c.src)),
            (Some(_), None) => {
                let t = CancellationToken::new();
                t.cancel();
                Some(t)
            }
            (None, _) => None,
        };
        {
            let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
            let total: usize = users.values().sum();
            if total >= self.cfg.max_allocations {
                self.metrics
                    .turn_reject(self.transport, "too_many_allocations");
                return Err(turn::Error::Other("allocation quota reached".into()));
            }
            let n = users.entry(user.clone()).or_insert(0);
            if *n >= self.cfg.max_allocations_per_user {
                self.metrics
                    .turn_reject(self.transport, "too_many_allocations_per_user");
                return Err(turn::Error::Other(
                    "per-user allocation quota reached".into(),
                ));
            }
            *n += 1;
        }
        let label = Metrics::transport(self.transport);
        let guard = AllocationGuard {
            user,
            users: Arc::clone(&self.users),
            live: self.metrics.turn_allocations.get_or_create(&label).clone(),
            counted: AtomicBool::new(false),
            released: AtomicBool::new(false),
        };
        let (conn, addr) = self.inner.allocate_conn(use_ipv4, requested_port).await?;
        guard.live.inc();
        guard.counted.store(true, Ordering::Release);
        self.metrics
            .turn_allocations_total
            .get_or_create(&label)
            .inc();
        let now = Instant::now();
        let rate = self.cfg.max_bandwidth as f64;
        let burst = u32::try_from(self.cfg.max_bandwidth).unwrap_or(u32::MAX);
        let wrapped = QuotaConn {
            inner: conn,
            deadline: tokio::time::Instant::now() + self.cfg.max_lifetime,
            up: Mutex::new(TokenBucket::new(rate, burst, now)),
            down: Mutex::new(TokenBucket::new(rate, burst, now)),
            relayed: self
                .metrics
                .turn_relayed_bytes
                .get_or_create(&label)
                .clone(),
            dropped: self
                .metrics
                .turn_dropped_bytes
                .get_or_create(&label)
                .clone(),
            metrics: Arc::clone(&self.metrics),
            transport: self.transport,
            stream_gone,
            guard,
        };
        Ok((Arc::new(wrapped), addr))
    }
}

/// Frees the allocation's quota slot once, on close or drop.
struct AllocationGuard {
    user: String,
    users: UserCounts,
    /// The live-allocations gauge of its transport.
    live: Gauge,
    /// Whether `live` was incremented (not when the relay socket could not be bound).
    counted: AtomicBool,
    released: AtomicBool,
}

impl AllocationGuard {
    fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.counted.load(Ordering::Acquire) {
            self.live.dec();
        }
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = users.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl Drop for AllocationGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// A relay socket with a bandwidth cap, an age cap and byte counting.
struct QuotaConn {
    inner: Arc<dyn Conn + Send + Sync>,
    deadline: tokio::time::Instant,
    /// Client → peer.
    up: Mutex<TokenBucket>,
    /// Peer → client.
    down: Mutex<TokenBucket>,
    relayed: Counter,
    dropped: Counter,
    metrics: Arc<Metrics>,
    transport: Transport,
    /// For a stream client: cancelled when its stream ends.
    stream_gone: Option<CancellationToken>,
    guard: AllocationGuard,
}

impl QuotaConn {
    fn admit(&self, bucket: &Mutex<TokenBucket>, n: usize) -> bool {
        let ok = bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_take_n(n as f64, Instant::now());
        if ok {
            self.relayed.inc_by(n as u64);
        } else {
            self.dropped.inc_by(n as u64);
        }
        ok
    }

    fn expired() -> webrtc_util::Error {
        webrtc_util::Error::Other("allocation reached its maximum lifetime".into())
    }
}

#[async_trait]
impl Conn for QuotaConn {
    async fn connect(&self, addr: SocketAddr) -> Result<(), webrtc_util::Error> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<usize, webrtc_util::Error> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), webrtc_util::Error> {
        let never = CancellationToken::new();
        let gone = self.stream_gone.as_ref().unwrap_or(&never);
        loop {
            let res = tokio::select! {
                r = tokio::time::timeout_at(self.deadline, self.inner.recv_from(buf)) => r,
                () = gone.cancelled() => {
                    // The client's stream ended: so does its allocation.
                    self.guard.release();
                    return Err(webrtc_util::Error::Other("the client's stream closed".into()));
                }
            };
            let Ok(res) = res else {
                self.metrics.turn_reject(self.transport, "max_lifetime");
                self.guard.release();
                return Err(Self::expired());
            };
            let (n, from) = res?;
            if self.admit(&self.down, n) {
                return Ok((n, from));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> Result<usize, webrtc_util::Error> {
        if tokio::time::Instant::now() >= self.deadline {
            return Err(Self::expired());
        }
        if self.admit(&self.up, buf.len()) {
            self.inner.send(buf).await
        } else {
            Ok(buf.len())
        }
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<usize, webrtc_util::Error> {
        if tokio::time::Instant::now() >= self.deadline {
            return Err(Self::expired());
        }
        if self.admit(&self.up, buf.len()) {
            self.inner.send_to(buf, target).await
        } else {
            Ok(buf.len())
        }
    }

    fn local_addr(&self) -> Result<SocketAddr, webrtc_util::Error> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> Result<(), webrtc_util::Error> {
        self.guard.release();
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
