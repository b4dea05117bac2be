//! An in-process TURN relay (the webrtc-rs `turn` 0.17 server, the same one the signaling
//! server embeds) on 127.0.0.1 whose sockets record every datagram, and can act as a hostile
//! or bad network: drop, delay and jitter datagrams, or flip bits in, replay and reorder the
//! relayed RTP packets. All randomness comes from seeded generators, so a failing run can be
//! repeated with the seed it printed.
//!
//! Where the recording and the impairment happen:
//!
//! ```text
//!  peer A ──ChannelData──▶ listener ─▶ relay socket A ──UDP──▶ relay socket B ─▶ listener ──▶ peer B
//!          (ClientToServer)           (RelayOut: impaired/mangled here)  (RelayIn)   (ServerToClient)
//! ```
//!
//! In a relay-only call each peer has its own allocation, so every media packet leaves through
//! one relay socket's `send_to` exactly once per direction: that is where loss, delay and
//! mangling are applied, so each direction is impaired once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aparte_client::transport::IceServer;
use aparte_signaling_protocol::turn_rest;
use async_trait::async_trait;
use turn::auth::{generate_auth_key, AuthHandler};
use turn::client::{Client, ClientConfig};
use turn::relay::relay_static::RelayAddressGeneratorStatic;
use turn::relay::RelayAddressGenerator;
use turn::server::config::{ConnConfig, ServerConfig};
use turn::server::Server;
use webrtc_util::vnet::net::Net;
use webrtc_util::Conn;

const REALM: &str = "aparte-test";
const USER: &str = "tester";
const PASSWORD: &str = "not-a-secret";
/// The Opus payload type aparté negotiates; RTCP packet types (200..=207) never match it.
const OPUS_PAYLOAD_TYPE: u8 = 111;
/// How many recent RTP datagrams per relay socket the mangler can replay.
const REPLAY_HISTORY: usize = 32;

/// A small seeded pseudo-random generator (SplitMix64): reproducible, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// The seed for a test's randomness: `APARTE_TEST_SEED` if set (to replay a failure), else
/// `default`. Printed either way, so every failing run says how to reproduce it.
pub fn test_seed(default: u64) -> u64 {
    let seed = std::env::var("APARTE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed {seed} (rerun with APARTE_TEST_SEED={seed})");
    seed
}

/// Where a recorded datagram was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// A client sent it to the TURN listener (STUN, TURN control, ChannelData).
    ClientToServer,
    /// The TURN listener sent it to a client.
    ServerToClient,
    /// A relay socket was asked to send it to a peer (before loss or mangling).
    RelayOut,
    /// A relay socket received it from a peer.
    RelayIn,
}

/// One recorded datagram.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// Where it was seen.
    pub leg: Leg,
    /// When, since the relay started.
    pub at: Duration,
    /// Its bytes, exactly as on the wire.
    pub bytes: Vec<u8>,
}

/// A bad network, applied to every datagram a relay socket sends.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Probability of dropping a datagram.
    pub loss: f64,
    /// Mean one-way delay added.
    pub delay: Duration,
    /// The added delay is uniform in `delay ± jitter` (so datagrams also get reordered).
    pub jitter: Duration,
}

/// A hostile relay, applied to the RTP packets of the call (payload type 111) once
/// [`RecordingRelay::set_mangling`] turns it on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mangling {
    /// Probability of injecting a bit-flipped copy just before the genuine packet.
    pub flip_copy: f64,
    /// Probability of flipping bits in the genuine packet itself (the packet is then lost).
    pub corrupt: f64,
    /// Probability of replaying one of the last few packets after the genuine one.
    pub replay: f64,
    /// Probability of holding the genuine packet back by 30 ms, so later ones overtake it.
    pub reorder: f64,
}

/// How the relay checks TURN credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayAuth {
    /// One fixed user ([`RecordingRelay::ice_server`] hands out its credentials).
    Static,
    /// TURN REST credentials under this shared secret, as coturn's `static-auth-secret`
    /// checks them: what a signaling server started with `--turn-url` and `--turn-secret`
    /// hands out. Expiry is not checked (the test's credentials are fresh).
    Rest(Vec<u8>),
}

/// What the relay did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounts {
    /// Datagrams relay sockets were asked to send.
    pub relay_out: u64,
    /// Datagrams relay sockets received.
    pub relay_in: u64,
    /// Datagrams dropped by the impairment.
    pub dropped: u64,
    /// Bit-flipped copies injected.
    pub flipped_copies: u64,
    /// Genuine RTP packets corrupted in place.
    pub corrupted: u64,
    /// Old RTP packets replayed.
    pub replayed: u64,
    /// RTP packets held back to reorder them.
    pub reordered: u64,
    /// Datagrams dropped because their allocation was cut ([`RecordingRelay::cut_allocations`]).
    pub cut: u64,
    /// Datagrams carrying a DTLS ChangeCipherSpec record, relayed or not.
    pub change_cipher_specs: u64,
    /// Of those, dropped by [`RecordingRelay::drop_change_cipher_spec`].
    pub change_cipher_specs_dropped: u64,
}

#[derive(Default)]
struct Counters {
    relay_out: AtomicU64,
    relay_in: AtomicU64,
    dropped: AtomicU64,
    flipped_copies: AtomicU64,
    corrupted: AtomicU64,
    replayed: AtomicU64,
    reordered: AtomicU64,
    cut: AtomicU64,
    change_cipher_specs: AtomicU64,
    change_cipher_specs_dropped: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// State shared by the relay's sockets.
struct Shared {
    started: Instant,
    log: Mutex<Vec<Datagram>>,
    impairment: Impairment,
    mangling: Mangling,
    mangling_on: AtomicBool,
    seed: u64,
    allocations: AtomicU64,
    /// Allocations numbered below this are cut: they relay nothing any more.
    cut_below: AtomicU64,
    /// RTP packets each allocation relayed (by allocation number).
    rtp_by_allocation: Mutex<HashMap<u64, u64>>,
    /// Which datagram carrying a DTLS ChangeCipherSpec to drop (1 = the first relayed; 0 =
    /// none).
    drop_change_cipher_spec: AtomicU64,
    counters: Counters,
}

impl Shared {
    fn record(&self, leg: Leg, bytes: &[u8]) {
        let at = self.started.elapsed();
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Datagram {
                leg,
                at,
                bytes: bytes.to_vec(),
            });
    }
}

/// Whether `datagram` is an RTP packet of the call's Opus stream (SRTP leaves the RTP header
/// in clear). RTCP's packet types 192..=223 put 64..=95 where RTP has its payload type.
pub fn is_opus_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12 && datagram[0] & 0xC0 == 0x80 && datagram[1] & 0x7F == OPUS_PAYLOAD_TYPE
}

/// Whether `datagram` holds a DTLS record of content type ChangeCipherSpec (20), walking the
/// records it carries (RFC 6347 §4.1: type, version, epoch, sequence number, length).
pub fn has_dtls_change_cipher_spec(datagram: &[u8]) -> bool {
    const HEADER: usize = 13;
    let mut rest = datagram;
    while rest.len() >= HEADER {
        let content_type = rest[0];
        if !(20..=63).contains(&content_type) || rest[1] != 0xFE {
            return false;
        }
        if content_type == 20 {
            return true;
        }
        let length = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        rest = rest.get(HEADER + length..).unwrap_or_default();
    }
    false
}

/// A running TURN relay on 127.0.0.1 that records every datagram; closed on [`Self::close`].
pub struct RecordingRelay {
    server: Server,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl RecordingRelay {
    /// Starts a relay that forwards faithfully.
    pub async fn start() -> Self {
        Self::start_with(Impairment::default(), Mangling::default(), 0).await
    }

    /// Starts a relay that impairs every datagram it relays and, once turned on, mangles the
    /// call's RTP packets; `seed` drives both.
    pub async fn start_with(impairment: Impairment, mangling: Mangling, seed: u64) -> Self {
        Self::start_full(impairment, mangling, seed, RelayAuth::Static).await
    }

    /// Starts a faithful relay that takes TURN REST credentials under `secret`.
    pub async fn start_rest(secret: &[u8]) -> Self {
        Self::start_full(
            Impairment::default(),
            Mangling::default(),
            0,
            RelayAuth::Rest(secret.to_vec()),
        )
        .await
    }

    /// Starts a relay with the given impairment, mangling, seed and credential check.
    pub async fn start_full(
        impairment: Impairment,
        mangling: Mangling,
        seed: u64,
        auth: RelayAuth,
    ) -> Self {
        let shared = Arc::new(Shared {
            started: Instant::now(),
            log: Mutex::new(Vec::new()),
            impairment,
            mangling,
            mangling_on: AtomicBool::new(false),
            seed,
            allocations: AtomicU64::new(0),
            cut_below: AtomicU64::new(0),
            rtp_by_allocation: Mutex::new(HashMap::new()),
            drop_change_cipher_spec: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind the TURN listener on loopback");
        let addr = socket.local_addr().expect("TURN listener address");
        let listener = RecordingConn {
            inner: Arc::new(socket),
            shared: Arc::clone(&shared),
        };
        let auth_handler: Arc<dyn AuthHandler + Send + Sync> = match auth {
            RelayAuth::Static => {
                let mut keys = HashMap::new();
                keys.insert(USER.to_owned(), generate_auth_key(USER, REALM, PASSWORD));
                Arc::new(StaticAuth(keys))
            }
            RelayAuth::Rest(secret) => Arc::new(RestAuth(secret)),
        };
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(listener),
                relay_addr_generator: Box::new(RecordingGenerator {
                    inner: RelayAddressGeneratorStatic {
                        relay_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        address: "127.0.0.1".to_owned(),
                        net: Arc::new(Net::new(None)),
                    },
                    shared: Arc::clone(&shared),
                }),
            }],
            realm: REALM.to_owned(),
            auth_handler,
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await
        .expect("start the TURN server");
        Self {
            server,
            addr,
            shared,
        }
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This relay as an ICE server for [`aparte_client::transport::TransportConfig`].
    pub fn ice_server(&self) -> IceServer {
        IceServer {
            urls: vec![format!("turn:{}?transport=udp", self.addr)],
            username: USER.to_owned(),
            credential: PASSWORD.to_owned(),
        }
    }

    /// Drops the `nth` datagram (from 1, counted over all allocations) that carries a DTLS
    /// ChangeCipherSpec record, and no other. In an ordinary DTLS 1.2 handshake the first is
    /// in the client's final flight and the second in the server's, so `2` loses the
    /// server's last flight: the case webrtc-rs's DTLS server never recovers from on its own
    /// (docs/WEBRTC.md, "DTLS last-flight deadlock").
    pub fn drop_change_cipher_spec(&self, nth: u64) {
        self.shared
            .drop_change_cipher_spec
            .store(nth, Ordering::SeqCst);
    }

    /// Turns the RTP mangler on or off (off at start, so the call can set up first).
    pub fn set_mangling(&self, on: bool) {
        self.shared.mangling_on.store(on, Ordering::SeqCst);
    }

    /// Cuts every allocation made so far, as when a network change kills the path a call
    /// uses: from now on their relay sockets send nothing. Allocations made later (an ICE
    /// restart's new ones) work. Returns how many allocations were cut.
    pub fn cut_allocations(&self) -> u64 {
        let made = self.shared.allocations.load(Ordering::SeqCst);
        self.shared.cut_below.store(made, Ordering::SeqCst);
        made
    }

    /// RTP packets relayed by each allocation made at or after number `first` (allocations
    /// are numbered from 0 in the order made), largest first.
    pub fn rtp_relayed_since(&self, first: u64) -> Vec<u64> {
        let by_allocation = self
            .shared
            .rtp_by_allocation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut counts: Vec<u64> = by_allocation
            .iter()
            .filter(|(n, _)| **n >= first)
            .map(|(_, count)| *count)
            .collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts
    }

    /// Every datagram recorded so far, in the order seen.
    pub fn datagrams(&self) -> Vec<Datagram> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many datagrams have been recorded so far.
    pub fn recorded(&self) -> usize {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// What the relay did so far.
    pub fn counts(&self) -> RelayCounts {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayCounts {
            relay_out: get(&c.relay_out),
            relay_in: get(&c.relay_in),
            dropped: get(&c.dropped),
            flipped_copies: get(&c.flipped_copies),
            corrupted: get(&c.corrupted),
            replayed: get(&c.replayed),
            reordered: get(&c.reordered),
            cut: get(&c.cut),
            change_cipher_specs: get(&c.change_cipher_specs),
            change_cipher_specs_dropped: get(&c.change_cipher_specs_dropped),
        }
    }

    /// Stops the server and its allocations.
    pub async fn close(self) {
        let _ = self.server.close().await;
    }

    /// Positive control for the relay-level scan: two plain TURN clients (no WebRTC, no
    /// DTLS-SRTP, no e2ee) exchange `payloads` in clear through this relay's allocations,
    /// the way an unencrypted media stream would cross it. Returns how many arrived.
    pub async fn relay_in_clear(&self, payloads: &[Vec<u8>]) -> usize {
        let (a_client, a_relay) = self.turn_client().await;
        let (b_client, b_relay) = self.turn_client().await;
        let b_addr = b_relay.local_addr().expect("relayed address of B");
        let a_addr = a_relay.local_addr().expect("relayed address of A");
        // B's permission for A (TURN permissions are per IP; both are 127.0.0.1).
        b_relay
            .send_to(b"hello", a_addr)
            .await
            .expect("B creates a permission");
        let expected = payloads.len();
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 2048];
            while got.len() < expected {
                match tokio::time::timeout(Duration::from_secs(5), b_relay.recv_from(&mut buf))
                    .await
                {
                    Ok(Ok((n, _))) => got.push(buf[..n].to_vec()),
                    // Nothing for 5 s, or the allocation is gone: report what arrived.
                    _ => break,
                }
            }
            got
        });
        for p in payloads {
            a_relay
                .send_to(p, b_addr)
                .await
                .expect("A sends through its allocation");
        }
        let got = receiver.await.expect("receiver task");
        let _ = a_client.close().await;
        let _ = b_client.close().await;
        payloads.iter().filter(|p| got.contains(p)).count()
    }

    async fn turn_client(&self) -> (Client, impl Conn) {
        let conn = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind a TURN client socket"),
        );
        let client = Client::new(ClientConfig {
            stun_serv_addr: self.addr.to_string(),
            turn_serv_addr: self.addr.to_string(),
            username: USER.to_owned(),
            password: PASSWORD.to_owned(),
            realm: REALM.to_owned(),
            software: String::new(),
            rto_in_ms: 0,
            conn,
            vnet: None,
        })
        .await
        .expect("TURN client");
        client.listen().await.expect("TURN client listens");
        let relay = client.allocate().await.expect("TURN allocation");
        (client, relay)
    }
}

/// Long-term credentials for the one test user.
struct StaticAuth(HashMap<String, Vec<u8>>);

impl AuthHandler for StaticAuth {
    fn auth_handle(
        &self,
        username: &str,
        _realm: &str,
        _src: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.0
            .get(username)
            .cloned()
            .ok_or_else(|| turn::Error::Other(format!("unknown user {username}")))
    }
}

/// TURN REST credentials (username `expiry:label`, password base64(HMAC-SHA1(secret,
/// username))), as the signaling server mints them.
struct RestAuth(Vec<u8>);

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let password = turn_rest::password(&self.0, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

/// The listening socket, recording both directions.
struct RecordingConn {
    inner: Arc<dyn Conn + Send + Sync>,
    shared: Arc<Shared>,
}

#[async_trait]
impl Conn for RecordingConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let (n, from) = self.inner.recv_from(buf).await?;
        self.shared
            .record(Leg::ClientToServer, buf.get(..n).unwrap_or_default());
        Ok((n, from))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.shared.record(Leg::ServerToClient, buf);
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.shared.record(Leg::ServerToClient, buf);
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Hands out relay sockets wrapped in [`RelayConn`].
struct RecordingGenerator {
    inner: RelayAddressGeneratorStatic,
    shared: Arc<Shared>,
}

#[async_trait]
impl RelayAddressGenerator for RecordingGenerator {
    fn validate(&self) -> Result<(), turn::Error> {
        self.inner.validate()
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let (inner, addr) = self.inner.allocate_conn(use_ipv4, requested_port).await?;
        // Each socket draws from its own generators, so one direction's decisions do not
        // depend on how the other direction's packets interleave with it. The mangler's
        // generator is drawn from only for the call's RTP packets, so with the same seed the
        // n-th RTP packet a socket relays is always treated the same way; the impairment's
        // draws also cover keepalives and RTCP, whose timing varies a little between runs.
        let n = self.shared.allocations.fetch_add(1, Ordering::SeqCst);
        let mut seeder = Rng::new(self.shared.seed ^ n.wrapping_mul(0xA076_1D64_78BD_642F));
        let conn = RelayConn {
            number: n,
            inner,
            shared: Arc::clone(&self.shared),
            impair_rng: Mutex::new(Rng::new(seeder.next_u64())),
            mangle_rng: Mutex::new(Rng::new(self.shared.seed)),
            history: Mutex::new(VecDeque::new()),
        };
        Ok((Arc::new(conn), addr))
    }
}

/// A relay socket that records, impairs and mangles what it sends.
struct RelayConn {
    /// This allocation's number (0 for the first one made).
    number: u64,
    inner: Arc<dyn Conn + Send + Sync>,
    shared: Arc<Shared>,
    impair_rng: Mutex<Rng>,
    mangle_rng: Mutex<Rng>,
    history: Mutex<VecDeque<Vec<u8>>>,
}

impl RelayConn {
    /// Decides what actually goes out for one datagram: a list of (delay, bytes) to send, in
    /// order. Empty means dropped.
    fn plan(&self, buf: &[u8]) -> Vec<(Duration, Vec<u8>)> {
        let shared = &self.shared;
        let c = &shared.counters;
        let mut out = Vec::new();
        let mut genuine = buf.to_vec();
        let mut genuine_delay = Duration::ZERO;
        let mut replay = None;
        if shared.mangling_on.load(Ordering::SeqCst) && is_opus_rtp(buf) {
            let m = shared.mangling;
            let mut rng = self
                .mangle_rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            if rng.chance(m.flip_copy) {
                let mut copy = buf.to_vec();
                flip_bits(&mut copy, &mut rng);
                out.push((Duration::ZERO, copy));
                bump(&c.flipped_copies);
            }
            if rng.chance(m.corrupt) {
                flip_bits(&mut genuine, &mut rng);
                bump(&c.corrupted);
            }
            if rng.chance(m.replay) && !history.is_empty() {
                let k = rng.below(history.len());
                replay = history.get(k).cloned();
                bump(&c.replayed);
            }
            if rng.chance(m.reorder) {
                genuine_delay = Duration::from_millis(30);
                bump(&c.reordered);
            }
            // Remember what really went out, so a replay never resurrects a corrupted packet.
            history.push_back(genuine.clone());
            if history.len() > REPLAY_HISTORY {
                history.pop_front();
            }
        }
        let imp = shared.impairment;
        let mut rng = self
            .impair_rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if rng.chance(imp.loss) {
            bump(&c.dropped);
        } else {
            let jitter = imp.jitter.as_secs_f64();
            let spread = (rng.unit() * 2.0 - 1.0) * jitter;
            let delay = Duration::from_secs_f64((imp.delay.as_secs_f64() + spread).max(0.0));
            out.push((delay + genuine_delay, genuine));
        }
        out.extend(replay.map(|r| (Duration::ZERO, r)));
        out
    }
}

/// Flips one to three random bits anywhere in `bytes`.
fn flip_bits(bytes: &mut [u8], rng: &mut Rng) {
    for _ in 0..=rng.below(3) {
        let i = rng.below(bytes.len());
        if let Some(b) = bytes.get_mut(i) {
            *b ^= 1 << rng.below(8);
        }
    }
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let (n, from) = self.inner.recv_from(buf).await?;
        bump(&self.shared.counters.relay_in);
        self.shared
            .record(Leg::RelayIn, buf.get(..n).unwrap_or_default());
        Ok((n, from))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        // The TURN server only ever uses send_to on relay sockets.
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        bump(&self.shared.counters.relay_out);
        self.shared.record(Leg::RelayOut, buf);
        if self.number < self.shared.cut_below.load(Ordering::SeqCst) {
            bump(&self.shared.counters.cut);
            return Ok(buf.len());
        }
        if has_dtls_change_cipher_spec(buf) {
            let c = &self.shared.counters;
            let nth = c.change_cipher_specs.fetch_add(1, Ordering::SeqCst) + 1;
            if nth == self.shared.drop_change_cipher_spec.load(Ordering::SeqCst) {
                bump(&c.change_cipher_specs_dropped);
                return Ok(buf.len());
            }
        }
        if is_opus_rtp(buf) {
            *self
                .shared
                .rtp_by_allocation
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(self.number)
                .or_default() += 1;
        }
        for (delay, bytes) in self.plan(buf) {
            if delay.is_zero() {
                self.inner.send_to(&bytes, target).await?;
            } else {
                // The modelled network delay: this datagram is in flight until then.
                let inner = Arc::clone(&self.inner);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = inner.send_to(&bytes, target).await;
                });
            }
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Looks for plaintext Opus frames in captured bytes: a frame counts as found when any of its
/// 16-byte windows occurs. Windows with fewer than [`MIN_DISTINCT_BYTES`] distinct byte values
/// (runs of padding in near-silent frames) are left out, as they could match structured bytes
/// such as a certificate by chance.
pub struct PlaintextScanner {
    windows: HashMap<[u8; WINDOW], Vec<usize>>,
    scannable: HashSet<usize>,
}

/// Window length, in bytes.
pub const WINDOW: usize = 16;
/// See [`PlaintextScanner`].
pub const MIN_DISTINCT_BYTES: usize = 8;

impl PlaintextScanner {
    /// A scanner for `frames` (frame `i` is reported as `i`).
    pub fn new(frames: &[Vec<u8>]) -> Self {
        let mut windows: HashMap<[u8; WINDOW], Vec<usize>> = HashMap::new();
        let mut scannable = HashSet::new();
        for (i, f) in frames.iter().enumerate() {
            for w in f.windows(WINDOW) {
                let distinct: HashSet<u8> = w.iter().copied().collect();
                if distinct.len() < MIN_DISTINCT_BYTES {
                    continue;
                }
                let Ok(key) = <[u8; WINDOW]>::try_from(w) else {
                    continue;
                };
                let owners = windows.entry(key).or_default();
                if owners.last() != Some(&i) {
                    owners.push(i);
                }
                scannable.insert(i);
            }
        }
        Self { windows, scannable }
    }

    /// How many frames have at least one distinctive window (the others cannot be found).
    pub fn scannable(&self) -> usize {
        self.scannable.len()
    }

    /// The frames with a window in `bytes`.
    pub fn find(&self, bytes: &[u8]) -> HashSet<usize> {
        let mut found = HashSet::new();
        for w in bytes.windows(WINDOW) {
            if let Some(owners) = <[u8; WINDOW]>::try_from(w)
                .ok()
                .and_then(|k| self.windows.get(&k))
            {
                found.extend(owners.iter().copied());
            }
        }
        found
    }

    /// The frames with a window in any of `datagrams`.
    pub fn scan<'a>(&self, datagrams: impl IntoIterator<Item = &'a Datagram>) -> HashSet<usize> {
        let mut found = HashSet::new();
        for d in datagrams {
            found.extend(self.find(&d.bytes));
        }
        found
    }
}

#[cfg(test)]
mod dtls_tests {
    use super::has_dtls_change_cipher_spec;

    fn record(content_type: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0];
        r.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn change_cipher_spec_is_found_behind_other_records_and_nowhere_else() {
        let handshake = record(22, &[1; 40]);
        let ccs = record(20, &[1]);
        let finished = record(22, &[7; 24]);
        assert!(has_dtls_change_cipher_spec(&ccs));
        assert!(has_dtls_change_cipher_spec(
            &[handshake.clone(), ccs.clone(), finished.clone()].concat()
        ));
        assert!(!has_dtls_change_cipher_spec(
            &[handshake.clone(), finished].concat()
        ));
        // RTP, STUN and a truncated record are not DTLS ChangeCipherSpec.
        assert!(!has_dtls_change_cipher_spec(&[
            0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 20
        ]));
        assert!(!has_dtls_change_cipher_spec(&[
            0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42
        ]));
        assert!(!has_dtls_change_cipher_spec(
            &handshake[..handshake.len() - 41]
        ));
    }
}
