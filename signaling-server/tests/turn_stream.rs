//! End-to-end tests of TURN over TCP and TLS, and of the shared HTTPS/TURN port: the real
//! binary, real sockets on 127.0.0.1, the webrtc-rs `turn` client over a stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aparte_signaling_protocol::{turn_rest, ClientMessage, ServerMessage};
use aparte_signaling_server::turn_stream::{Framer, StreamClientConn};
use common::{room, Server, WAIT};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpStream, UdpSocket};
use turn::client::{Client as TurnClient, ClientConfig};
use webrtc_util::Conn;

const TURN_SECRET: &str = "turn-secret-for-stream-tests";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Counts the ChannelData messages that cross a stream, in each direction.
#[derive(Default)]
struct Counts {
    channel_data_sent: AtomicUsize,
    channel_data_received: AtomicUsize,
    /// While set, reads never complete: a client that stopped reading.
    stop_reading: AtomicBool,
}

/// A stream that watches the TURN messages going through it.
struct Tap<S> {
    inner: S,
    counts: Arc<Counts>,
    read_framer: Mutex<Framer>,
    write_framer: Mutex<Framer>,
}

fn count_channel_data(framer: &Mutex<Framer>, bytes: &[u8], counter: &AtomicUsize) {
    let mut f = framer.lock().unwrap();
    f.push(bytes);
    while let Ok(Some(m)) = f.next_frame() {
        if m[0] >> 6 == 1 {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.counts.stop_reading.load(Ordering::Relaxed) {
            // Never woken: this reader is gone for good.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let this = &*self;
            count_channel_data(
                &this.read_framer,
                &buf.filled()[before..],
                &this.counts.channel_data_received,
            );
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            let this = &*self;
            count_channel_data(
                &this.write_framer,
                &buf[..*n],
                &this.counts.channel_data_sent,
            );
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TURN client over `stream` (already connected to `server`), with fresh REST credentials
/// for `label`.
async fn stream_client<S>(stream: S, server: SocketAddr, label: &str) -> (TurnClient, Arc<Counts>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, counts, _) = stream_client_conn(stream, server, label).await;
    (client, counts)
}

/// Like [`stream_client`], also returning the stream connection (to write on it directly).
async fn stream_client_conn<S>(
    stream: S,
    server: SocketAddr,
    label: &str,
) -> (TurnClient, Arc<Counts>, Arc<StreamClientConn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let creds = turn_rest::mint(TURN_SECRET.as_bytes(), label, now(), 3600);
    stream_client_full(stream, server, &creds.username, &creds.password).await
}

async fn stream_client_with<S>(
    stream: S,
    server: SocketAddr,
    username: &str,
    password: &str,
) -> (TurnClient, Arc<Counts>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, counts, _) = stream_client_full(stream, server, username, password).await;
    (client, counts)
}

async fn stream_client_full<S>(
    stream: S,
    server: SocketAddr,
    username: &str,
    password: &str,
) -> (TurnClient, Arc<Counts>, Arc<StreamClientConn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let counts = Arc::new(Counts::default());
    let tap = Tap {
        inner: stream,
        counts: Arc::clone(&counts),
        read_framer: Mutex::new(Framer::new()),
        write_framer: Mutex::new(Framer::new()),
    };
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let conn = Arc::new(StreamClientConn::new(tap, server, local));
    let client = TurnClient::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: "aparte".to_owned(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::clone(&conn) as Arc<dyn Conn + Send + Sync>,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    (client, counts, conn)
}

/// Round trips client → relay → peer → relay → client until a channel is bound and
/// ChannelData has gone both ways (the crate's client binds a channel in the background after
/// the first Send indication). Every step waits for its packet, within the test deadline.
async fn relay_both_ways(relay: &impl Conn, peer: &UdpSocket, counts: &Counts) {
    let relay_addr = relay.local_addr().unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 1500];
    for i in 0u32.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ChannelData both ways after {i} round trips"
        );
        let msg = format!("ping {i}");
        relay.send_to(msg.as_bytes(), peer_addr).await.unwrap();
        let (n, from) = tokio::time::timeout_at(deadline, peer.recv_from(&mut buf))
            .await
            .expect("the peer got nothing")
            .unwrap();
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(from, relay_addr);
        let back = format!("pong {i}");
        peer.send_to(back.as_bytes(), relay_addr).await.unwrap();
        let (n, from) = tokio::time::timeout_at(deadline, relay.recv_from(&mut buf))
            .await
            .expect("the client got nothing back")
            .unwrap();
        assert_eq!(&buf[..n], back.as_bytes());
        assert_eq!(from, peer_addr);
        if counts.channel_data_sent.load(Ordering::Relaxed) > 0
            && counts.channel_data_received.load(Ordering::Relaxed) > 0
        {
            return;
        }
    }
}

/// A STUN Binding request.
fn binding_request() -> Vec<u8> {
    use stun::message::{Message, Setter, BINDING_REQUEST};
    let mut m = Message::new();
    let setters: [Box<dyn Setter>; 2] = [
        Box::new(stun::agent::TransactionId::new()),
        Box::new(BINDING_REQUEST),
    ];
    m.build(&setters).unwrap();
    m.raw
}

/// Polls a metric until `ok` holds, within the test deadline.
fn wait_metric(srv: &Server, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + WAIT + WAIT;
    loop {
        let v = srv.metric(name);
        if ok(v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{name} stayed at {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Joins a room over `ws` and returns the TURN URLs of the join answer.
async fn turn_urls(srv: &Server) -> Vec<String> {
    let mut c = srv.connect().await;
    c.hello().await;
    c.send(&ClientMessage::Join {
        room: room(),
        token: None,
        resume: None,
    })
    .await;
    match c.recv().await {
        ServerMessage::Joined { ice_servers, .. } => ice_servers
            .into_iter()
            .flat_map(|s| s.urls)
            .filter(|u| u.starts_with("turn"))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tcp_allocates_binds_a_channel_relays_and_ends_with_the_stream() {
    let srv = Server::start(&["--turn-listen", "127.0.0.1:0", "--turn-secret", TURN_SECRET]);
    let udp = srv.turn_addr.unwrap();
    let tcp = srv.turn_tcp_addr.expect("TURN over TCP is on by default");
    assert_eq!(
        tcp.port(),
        udp.port(),
        "the default shares the UDP port number"
    );
    assert_eq!(
        turn_urls(&srv).await,
        vec![
            format!("turn:127.0.0.1:{}?transport=udp", udp.port()),
            format!("turn:127.0.0.1:{}?transport=tcp", tcp.port()),
        ]
    );

    let stream = TcpStream::connect(tcp).await.unwrap();
    let (client, counts) = stream_client(stream, tcp, "tcp-user").await;
    let relay = tokio::time::timeout(WAIT, client.allocate())
        .await
        .expect("allocate timed out")
        .expect("allocation over TCP");
    assert_eq!(relay.local_addr().unwrap().ip().to_string(), "127.0.0.1");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay_both_ways(&relay, &peer, &counts).await;

    assert_eq!(
        srv.metric("aparte_signaling_turn_allocations{transport=\"tcp\"} "),
        1.0
    );
    assert_eq!(
        srv.metric("aparte_signaling_turn_allocations{transport=\"udp\"} "),
        0.0
    );
    assert!(srv.metric("aparte_signaling_turn_relayed_bytes_total{transport=\"tcp\"} ") > 0.0);
    assert_eq!(
        srv.metric("aparte_signaling_turn_streams{transport=\"tcp\"} "),
        1.0
    );

    // The allocation belongs to the stream: closing the stream (without a Refresh of 0) frees
    // it and its quota slot.
    client.close().await.unwrap();
    drop(relay);
    drop(client);
    wait_metric(
        &srv,
        "aparte_signaling_turn_allocations{transport=\"tcp\"} ",
        |v| v == 0.0,
    );
    wait_metric(
        &srv,
        "aparte_signaling_turn_streams{transport=\"tcp\"} ",
        |v| v == 0.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_over_tcp_fail_as_over_udp() {
    let srv = Server::start(&["--turn-listen", "127.0.0.1:0", "--turn-secret", TURN_SECRET]);
    let udp = srv.turn_addr.unwrap();
    let tcp = srv.turn_tcp_addr.unwrap();
    let creds = turn_rest::mint(TURN_SECRET.as_bytes(), "someone", now(), 3600);
    let expired = turn_rest::mint(TURN_SECRET.as_bytes(), "someone", now() - 7200, 3600);

    let udp_client = |user: String, pass: String| async move {
        let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let c = TurnClient::new(ClientConfig {
            stun_serv_addr: udp.to_string(),
            turn_serv_addr: udp.to_string(),
            username: user,
            password: pass,
            realm: "aparte".to_owned(),
            software: String::new(),
            rto_in_ms: 0,
            conn,
            vnet: None,
        })
        .await
        .unwrap();
        c.listen().await.unwrap();
        c
    };
    for (user, pass, reason) in [
        (&creds.username, "wrong-password", None),
        (
            &expired.username,
            expired.password.as_str(),
            Some("expired"),
        ),
    ] {
        let over_udp = udp_client(user.clone(), pass.to_owned()).await;
        let udp_err = tokio::time::timeout(WAIT, over_udp.allocate())
            .await
            .expect("UDP allocate timed out")
            .err()
            .expect("UDP allocation must fail");
        let stream = TcpStream::connect(tcp).await.unwrap();
        let (over_tcp, _) = stream_client_with(stream, tcp, user, pass).await;
        let tcp_err = tokio::time::timeout(WAIT, over_tcp.allocate())
            .await
            .expect("TCP allocate timed out")
            .err()
            .expect("TCP allocation must fail");
        assert_eq!(tcp_err.to_string(), udp_err.to_string());
        if let Some(reason) = reason {
            for t in ["udp", "tcp"] {
                assert!(
                    srv.metric(&format!(
                        "aparte_signaling_turn_rejects_total{{transport=\"{t}\",reason=\"{reason}\"}} "
                    )) >= 1.0,
                    "{t} {reason}"
                );
            }
        }
    }
    // And the quota: one allocation per user, over either transport.
    let srv = Server::start(&[
        "--turn-listen",
        "127.0.0.1:0",
        "--turn-secret",
        TURN_SECRET,
        "--turn-max-allocations-per-user",
        "1",
    ]);
    let tcp = srv.turn_tcp_addr.unwrap();
    let stream = TcpStream::connect(tcp).await.unwrap();
    let (first, _) = stream_client_with(stream, tcp, &creds.username, &creds.password).await;
    let _relay = first.allocate().await.unwrap();
    let stream = TcpStream::connect(tcp).await.unwrap();
    let (second, _) = stream_client_with(stream, tcp, &creds.username, &creds.password).await;
    assert!(tokio::time::timeout(WAIT, second.allocate())
        .await
        .expect("allocate timed out")
        .is_err());
    assert_eq!(
        srv.metric(
            "aparte_signaling_turn_rejects_total{transport=\"tcp\",reason=\"too_many_allocations_per_user\"} "
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_the_stream_and_the_per_ip_cap_holds() {
    let srv = Server::start(&[
        "--turn-listen",
        "127.0.0.1:0",
        "--turn-secret",
        TURN_SECRET,
        "--max-connections-per-ip",
        "2",
    ]);
    let tcp = srv.turn_tcp_addr.unwrap();

    // An HTTP request on the TURN port is not TURN: closed at once, counted.
    let mut s = TcpStream::connect(tcp).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    drop(s);
    wait_metric(
        &srv,
        "aparte_signaling_turn_streams_closed_total{transport=\"tcp\",reason=\"too_large\"} ",
        |v| v == 1.0,
    );
    wait_metric(
        &srv,
        "aparte_signaling_turn_streams{transport=\"tcp\"} ",
        |v| v == 0.0,
    );

    // Two streams from 127.0.0.1 are served (each answers a Binding request); a third is
    // refused.
    let binding = binding_request();
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(tcp).await.unwrap();
        s.write_all(&binding).await.unwrap();
        let mut head = [0u8; 20];
        tokio::time::timeout(WAIT, s.read_exact(&mut head))
            .await
            .expect("no Binding response")
            .unwrap();
        assert_eq!(&head[0..2], &[0x01, 0x01], "a Binding success response");
        kept.push(s);
    }
    let mut third = TcpStream::connect(tcp).await.unwrap();
    let _ = third.write_all(&binding).await;
    let n = tokio::time::timeout(WAIT, third.read(&mut buf))
        .await
        .expect("the third stream was not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(
        srv.metric(
            "aparte_signaling_turn_rejects_total{transport=\"tcp\",reason=\"too_many_connections_per_ip\"} "
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stalls_nobody_and_is_closed() {
    let srv = Server::start(&[
        "--turn-listen",
        "127.0.0.1:0",
        "--turn-secret",
        TURN_SECRET,
        "--turn-max-bandwidth",
        "1000000000",
    ]);
    let tcp = srv.turn_tcp_addr.unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // Slow: allocates, opens its permission for the peer, then never reads again.
    let (slow, slow_counts, slow_conn) =
        stream_client_conn(TcpStream::connect(tcp).await.unwrap(), tcp, "slow").await;
    let slow_relay = slow.allocate().await.unwrap();
    relay_both_ways(&slow_relay, &peer, &slow_counts).await;
    let slow_addr = slow_relay.local_addr().unwrap();
    slow_counts.stop_reading.store(true, Ordering::Relaxed);

    // Fast: a second client of the same relay.
    let (fast, fast_counts) =
        stream_client(TcpStream::connect(tcp).await.unwrap(), tcp, "fast").await;
    let fast_relay = fast.allocate().await.unwrap();
    let fast_peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay_both_ways(&fast_relay, &fast_peer, &fast_counts).await;

    // Flood the slow client until its queue overflows, checking between bursts that the fast
    // client's round trips still go through promptly.
    let dropped = "aparte_signaling_turn_stream_dropped_packets_total{transport=\"tcp\",reason=\"queue_full\"} ";
    let big = vec![0x5a; 1200];
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let mut worst = Duration::ZERO;
    let mut buf = [0u8; 1500];
    loop {
        for _ in 0..500 {
            peer.send_to(&big, slow_addr).await.unwrap();
        }
        let t = std::time::Instant::now();
        fast_relay
            .send_to(b"still there?", fast_peer.local_addr().unwrap())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), fast_peer.recv_from(&mut buf))
            .await
            .expect("the fast client's packet was stalled")
            .unwrap();
        fast_peer
            .send_to(b"yes", fast_relay.local_addr().unwrap())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), fast_relay.recv_from(&mut buf))
            .await
            .expect("the packet to the fast client was stalled")
            .unwrap();
        worst = worst.max(t.elapsed());
        if srv.metric(dropped) > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow client's queue never filled"
        );
    }
    eprintln!("worst fast round trip while the slow client was flooded: {worst:?}");
    // Requests from the stalled client: their answers cannot be written, and must not hold up
    // the relay's one request loop, which the fast client's packets also go through.
    for _ in 0..3 {
        slow_conn.send_to(&binding_request(), tcp).await.unwrap();
    }
    for i in 0..3 {
        let msg = format!("after the requests {i}");
        fast_relay
            .send_to(msg.as_bytes(), fast_peer.local_addr().unwrap())
            .await
            .unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), fast_peer.recv_from(&mut buf))
            .await
            .expect("the stalled client's requests held up the relay")
            .unwrap();
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    // The slow stream makes no progress, so it is closed (after 5 s), and its allocation goes.
    wait_metric(
        &srv,
        "aparte_signaling_turn_streams_closed_total{transport=\"tcp\",reason=\"write_stalled\"} ",
        |v| v == 1.0,
    );
    wait_metric(
        &srv,
        "aparte_signaling_turn_allocations{transport=\"tcp\"} ",
        |v| v == 1.0,
    );
    // The fast one still works.
    relay_both_ways(&fast_relay, &fast_peer, &fast_counts).await;
}

// ---------------------------------------------------------------------------------------------
// TLS.

/// Makes a self-signed certificate for `localhost` with openssl; returns (cert, key).
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed to make a test certificate");
    assert!(status.success());
    (cert, key)
}

/// A TLS connection to `addr` that trusts exactly the test certificate, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    cert: &Path,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls_pki_types::pem::PemObject as _;
    let der = rustls_pki_types::CertificateDer::from_pem_file(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(der.to_vec(), provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake")
}

/// Accepts exactly one certificate (the self-signed test one), checking handshake signatures.
#[derive(Debug)]
struct Pinned(Vec<u8>, Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_slice() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the test certificate".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.1.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.1.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// An allocation over `stream` (to `server`) that relays both ways, then closes.
async fn allocate_and_relay<S>(stream: S, server: SocketAddr, label: &str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, counts) = stream_client(stream, server, label).await;
    let relay = tokio::time::timeout(WAIT, client.allocate())
        .await
        .expect("allocate timed out")
        .expect("allocation over TLS");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay_both_ways(&relay, &peer, &counts).await;
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tls_on_its_own_port_and_shared_with_https() {
    let d = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(d.path());
    let srv = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--turn-listen",
        "127.0.0.1:0",
        "--turn-secret",
        TURN_SECRET,
        "--turn-tcp-listen",
        "off",
        "--turns-listen",
        "127.0.0.1:0",
        "--turns-on-listen",
    ]);
    let udp = srv.turn_addr.unwrap();
    let turns = srv.turns_addr.expect("TURN over TLS on its own port");
    assert!(srv.turn_tcp_addr.is_none(), "--turn-tcp-listen off");
    let https = srv.addr;

    // The shared port still serves the WebSocket join (ALPN http/1.1), and the answer lists
    // the TLS relays, on their own port and on the HTTPS port.
    let tls = tls_connect(https, &cert, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/ws", https.port());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("WebSocket upgrade timed out")
        .expect("WebSocket upgrade on the shared port");
    let urls = {
        use futures_util::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::Message;
        let mut urls = Vec::new();
        for msg in [
            ClientMessage::Hello {
                version: aparte_signaling_protocol::PROTOCOL_VERSION,
            },
            ClientMessage::Join {
                room: room(),
                token: None,
                resume: None,
            },
        ] {
            ws.send(Message::text(msg.to_json())).await.unwrap();
            let answer = loop {
                let frame = tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("no answer")
                    .unwrap()
                    .unwrap();
                if let Message::Text(t) = frame {
                    break ServerMessage::parse(t.as_str()).unwrap();
                }
            };
            if let ServerMessage::Joined { ice_servers, .. } = answer {
                urls = ice_servers.into_iter().flat_map(|s| s.urls).collect();
            }
        }
        urls
    };
    assert_eq!(
        urls,
        vec![
            format!("turn:127.0.0.1:{}?transport=udp", udp.port()),
            format!("turns:127.0.0.1:{}?transport=tcp", turns.port()),
            format!("turns:127.0.0.1:{}?transport=tcp", https.port()),
        ]
    );

    // TURN over TLS on its own port, with and without ALPN.
    allocate_and_relay(tls_connect(turns, &cert, &[b"stun.turn"]).await, turns, "a").await;
    allocate_and_relay(tls_connect(turns, &cert, &[]).await, turns, "b").await;
    // On the HTTPS port: chosen by ALPN, and by the first bytes when there is no ALPN.
    allocate_and_relay(tls_connect(https, &cert, &[b"stun.turn"]).await, https, "c").await;
    allocate_and_relay(tls_connect(https, &cert, &[]).await, https, "d").await;
    assert!(
        srv.metric("aparte_signaling_turn_allocations_created_total{transport=\"tls\"} ") >= 4.0
    );
    // The WebSocket is still up after all that.
    {
        use futures_util::SinkExt as _;
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::Ping(vec![1].into())).await.unwrap();
    }
    // A plain HTTP request without ALPN still reaches the HTTP side.
    let mut tls = tls_connect(https, &cert, &[]).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut body))
        .await
        .expect("no HTTP answer")
        .ok();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}

#[test]
fn start_up_refuses_bad_turn_stream_settings() {
    let bin = env!("CARGO_BIN_EXE_aparte-signaling");
    for (args, needle) in [
        (
            &["--turn-tcp-listen", "127.0.0.1:3478"][..],
            "need turn_listen",
        ),
        (
            &[
                "--turn-listen",
                "127.0.0.1:0",
                "--turn-tcp-listen",
                "nowhere",
            ],
            "invalid --turn-tcp-listen \"nowhere\": expected IP:PORT",
        ),
        (
            &[
                "--turn-listen",
                "127.0.0.1:0",
                "--turns-listen",
                "127.0.0.1:0",
            ],
            "need a certificate",
        ),
        (
            &["--turn-listen", "127.0.0.1:0", "--turns-on-listen"],
            "need a certificate",
        ),
    ] {
        let out = Command::new(bin)
            .args(["--metrics-listen", "off", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
