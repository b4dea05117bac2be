//! The tunnel against a real TURN server: Debian's coturn (`turnserver`) on loopback with its
//! UDP listener off, and the `turn` 0.17 client (the code webrtc-rs's ICE agent uses) on a
//! local UDP socket pointed at the tunnel.
//!
//! Needs `turnserver` on PATH: `apt-get install coturn` (scripts/install-deps). The packaged
//! service is not used; each test starts its own `turnserver` on free loopback ports with a
//! log file in a temporary directory, and kills it at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aparte_turn_tunnel::{tls_client_config, Tunnel, TunnelConfig, Upstream};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use webrtc_util::Conn;

const STEP: Duration = Duration::from_secs(10);

/// A free loopback TCP port (the listener is dropped; coturn binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Which one listener coturn runs.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// TURN over TCP on 127.0.0.1.
    Tcp,
    /// TURN over TLS on 127.0.0.1, with this certificate and key (PEM).
    Tls { cert: &'a str, key: &'a str },
    /// TURN over UDP on ::1 (relaying on 127.0.0.1 all the same).
    Udp6,
}

/// A `turnserver` child, killed on drop.
struct Coturn {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coturn {
    /// Starts coturn with only one listener, of `mode`, long-term credentials `u:p` in realm
    /// `r`, relaying on 127.0.0.1, and waits until the listener answers.
    fn start(mode: Mode<'_>) -> (Coturn, u16) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("turnserver.log");
        let port = free_port();
        let relay_min = 49152 + u32::from(free_port() % 8000);
        let mut cmd = Command::new("turnserver");
        cmd.args([
            "-n",
            "-v",
            "--no-cli",
            "--no-dtls",
            "--simple-log",
            "--no-stdout-log",
        ])
        .args(["--relay-ip", "127.0.0.1"])
        .args([
            "--allow-loopback-peers",
            "--lt-cred-mech",
            "--user",
            "u:p",
            "--realm",
            "r",
        ])
        .args(["--min-port", &relay_min.to_string()])
        .args(["--max-port", &(relay_min + 50).to_string()])
        .arg("--log-file")
        .arg(&log)
        .arg("--pidfile")
        .arg(dir.path().join("turnserver.pid"))
        .arg("--db")
        .arg(dir.path().join("turndb"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        match mode {
            Mode::Tcp => {
                cmd.args(["--listening-ip", "127.0.0.1", "--no-udp", "--no-tls"])
                    .args(["--listening-port", &port.to_string()]);
            }
            Mode::Tls { cert, key } => {
                let cert_path = dir.path().join("cert.pem");
                let key_path = dir.path().join("key.pem");
                std::fs::write(&cert_path, cert).unwrap();
                std::fs::write(&key_path, key).unwrap();
                cmd.args(["--listening-ip", "127.0.0.1", "--no-udp", "--no-tcp"])
                    .args(["--tls-listening-port", &port.to_string()])
                    .arg("--cert")
                    .arg(&cert_path)
                    .arg("--pkey")
                    .arg(&key_path);
            }
            Mode::Udp6 => {
                cmd.args(["--listening-ip", "::1", "--no-tcp", "--no-tls"])
                    .args(["--listening-port", &port.to_string()]);
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run turnserver ({e}); install it with `apt-get install coturn`")
        });
        let coturn = Coturn {
            child,
            log,
            _dir: dir,
        };
        // Ready when its listener answers; each attempt is answered at once (refused or
        // accepted; for UDP, a STUN binding answered), so this waits for the event, bounded by
        // a deadline.
        let deadline = Instant::now() + STEP;
        let ready = || match mode {
            Mode::Udp6 => {
                let probe = std::net::UdpSocket::bind("[::1]:0").unwrap();
                probe
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let _ = probe.send_to(&binding_request(), ("::1", port));
                let mut buf = [0u8; 512];
                probe.recv_from(&mut buf).is_ok()
            }
            _ => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "turnserver did not listen on {port}: {}",
                coturn.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (coturn, port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until coturn has logged a line containing `needle` (it writes from its own
    /// threads, a little after the fact).
    async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + STEP;
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in coturn's log: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until coturn has logged the end of user `u`'s session on `port` (it writes its
    /// log from its own threads, a little after the fact), and returns that session's lines.
    async fn session_log(&self, port: u16) -> Vec<String> {
        let closed = format!("user <u> realm <r> origin <>, local 127.0.0.1:{port}");
        let deadline = Instant::now() + STEP;
        loop {
            let log = self.log_text();
            if let Some(line) = log.lines().find(|l| l.contains(&closed)) {
                let session = line
                    .split_whitespace()
                    .nth(3)
                    .expect("a session id")
                    .to_owned();
                return log
                    .lines()
                    .filter(|l| l.contains(&session))
                    .map(str::to_owned)
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "no session end in coturn's log: {log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks that nothing listens for UDP on `port`: the kernel answers a datagram with ICMP
/// "port unreachable", which a connected UDP socket reports as a refused connection.
async fn assert_no_udp_listener(port: u16) {
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    probe.connect(("127.0.0.1", port)).await.unwrap();
    probe.send(&binding_request()).await.unwrap();
    let mut buf = [0u8; 64];
    let r = timeout(STEP, probe.recv(&mut buf))
        .await
        .expect("no ICMP answer");
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "something answers UDP on {port}"
    );
}

/// A UDP peer on 127.0.0.1 that echoes every datagram back to its sender.
async fn echo_peer() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// Allocates through the tunnel with the `turn` crate's client, creates a permission for a
/// UDP echo peer by sending to it, checks 30 round trips (Send/Data indications first, then
/// ChannelData once the client has bound a channel) and a datagram the peer side sends first.
/// With `deallocate`, the allocation is then released (Refresh with lifetime 0), which ends a
/// UDP session; a stream session ends when the tunnel closes the stream.
async fn relay_through(tunnel: &Tunnel, deallocate: bool) {
    let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let server = tunnel.local_addr().to_string();
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.clone(),
        turn_serv_addr: server,
        username: "u".into(),
        password: "p".into(),
        realm: "r".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let started = Instant::now();
    let relay = timeout(STEP, client.allocate())
        .await
        .expect("allocate timed out")
        .expect("allocate");
    let relayed = relay.local_addr().unwrap();
    eprintln!("allocated {relayed} in {:?}", started.elapsed());
    assert!(relayed.ip().is_loopback(), "{relayed}");

    let peer = echo_peer().await;
    let mut buf = [0u8; 2048];
    let started = Instant::now();
    for i in 0..30u32 {
        let msg = format!("datagram {i} through TURN over a stream");
        timeout(STEP, relay.send_to(msg.as_bytes(), peer))
            .await
            .expect("send timed out")
            .expect("send");
        let (n, from) = timeout(STEP, relay.recv_from(&mut buf))
            .await
            .expect("echo timed out")
            .expect("recv");
        assert_eq!(from, peer);
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    eprintln!("30 round trips in {:?}", started.elapsed());

    // The other way round: a peer on the permitted address writes first.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other.send_to(b"from the peer side", relayed).await.unwrap();
    let (n, from) = timeout(STEP, relay.recv_from(&mut buf))
        .await
        .expect("peer datagram timed out")
        .expect("recv");
    assert_eq!(from, other.local_addr().unwrap());
    assert_eq!(&buf[..n], b"from the peer side");

    if deallocate {
        relay.close().await.unwrap();
    }
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tcp_to_coturn() {
    let (coturn, port) = Coturn::start(Mode::Tcp);
    let tunnel = Tunnel::start(TunnelConfig::new(Upstream::Tcp {
        host: "127.0.0.1".into(),
        port,
    }))
    .await
    .unwrap();
    relay_through(&tunnel, false).await;

    let stats = tunnel.stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.streams_opened, 1);
    assert_eq!(stats.streams_connected, 1);
    assert!(
        stats.channel_data_up > 0 && stats.channel_data_down > 0,
        "{stats:?}"
    );
    assert_eq!(stats.dropped_invalid + stats.dropped_queue_full, 0);
    tunnel.close().await;

    // coturn had no UDP listener, so the allocation can only have come over TCP; its log shows
    // the session on the TCP listener, closed when the tunnel closed its stream.
    assert_no_udp_listener(port).await;
    let session = coturn.session_log(port).await;
    eprintln!("coturn: {session:#?}");
    assert!(session
        .iter()
        .any(|l| l.contains("TCP connection closed by client")));
    assert_coturn_counted(&session, &stats);
}

/// coturn's own count of the session's packets (received from / sent to the client) is the
/// tunnel's count of messages written to / read from the stream: nothing lost, split or merged.
fn assert_coturn_counted(session: &[String], stats: &aparte_turn_tunnel::TunnelStats) {
    assert!(session
        .iter()
        .any(|l| l.contains("new, realm=<r>, username=<u>")));
    let received = format!("usage: realm=<r>, username=<u>, rp={}, ", stats.messages_up);
    let sent = format!(", sp={}, ", stats.messages_down);
    assert!(
        session
            .iter()
            .any(|l| l.contains(&received) && l.contains(&sent)),
        "{session:#?} vs {stats:?}"
    );
}

fn test_pki() -> (rustls_pki_types::CertificateDer<'static>, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "aparte test TURN CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.der().clone(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tls_to_coturn() {
    let (ca, cert, key) = test_pki();
    let (coturn, port) = Coturn::start(Mode::Tls {
        cert: &cert,
        key: &key,
    });
    let mut config = TunnelConfig::new(Upstream::Tls {
        host: "localhost".into(),
        port,
    });
    config.tls = Some(tls_client_config(&[ca]).unwrap());
    let tunnel = Tunnel::start(config).await.unwrap();
    relay_through(&tunnel, false).await;

    let stats = tunnel.stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.streams_connected, 1);
    assert!(
        stats.channel_data_up > 0 && stats.channel_data_down > 0,
        "{stats:?}"
    );
    tunnel.close().await;

    // Only coturn's TLS listener was on (no UDP, no plain TCP, no DTLS), and the session ran
    // on it.
    assert_no_udp_listener(port).await;
    let session = coturn.session_log(port).await;
    eprintln!("coturn: {session:#?}");
    assert_coturn_counted(&session, &stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_closes_the_stream() {
    let (_ca, cert, key) = test_pki();
    let (_coturn, port) = Coturn::start(Mode::Tls {
        cert: &cert,
        key: &key,
    });
    // Mozilla roots only: the test CA is not trusted.
    let tunnel = Tunnel::start(TunnelConfig::new(Upstream::Tls {
        host: "localhost".into(),
        port,
    }))
    .await
    .unwrap();
    let mut events = tunnel.events();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&binding_request(), tunnel.local_addr())
        .await
        .unwrap();
    let event = timeout(STEP, events.recv()).await.unwrap().unwrap();
    assert_eq!(
        event,
        aparte_turn_tunnel::TunnelEvent::Closed {
            client: client.local_addr().unwrap(),
            reason: aparte_turn_tunnel::CloseReason::TlsHandshake
        }
    );
    tunnel.close().await;
}

/// TURN over UDP to coturn's **IPv6** address, which webrtc-rs's ICE agent cannot reach itself
/// (it sends UDP TURN from an IPv4 socket): the `turn` client talks to the tunnel on
/// 127.0.0.1, the tunnel to `[::1]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_udp_to_coturn_on_ipv6() {
    let (coturn, port) = Coturn::start(Mode::Udp6);
    let upstream = aparte_turn_tunnel::ipv6_udp_upstream_of(&format!("turn:[::1]:{port}"))
        .expect("an IPv6 UDP TURN URL");
    let tunnel = Tunnel::start(TunnelConfig::new(upstream)).await.unwrap();
    relay_through(&tunnel, true).await;

    let stats = tunnel.stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.streams_connected, 1);
    assert!(
        stats.channel_data_up > 0 && stats.channel_data_down > 0,
        "{stats:?}"
    );
    assert_eq!(stats.dropped_invalid + stats.dropped_queue_full, 0);
    tunnel.close().await;

    // coturn's only listener was UDP on ::1, so the allocation came over IPv6; its log shows
    // the session's allocation, channel and release. (coturn writes a UDP session's packet
    // counts only later, when it reaps the session, so they are not compared here.)
    for line in [
        format!("IPv6. UDP listener opened on: ::1:{port}"),
        "new, realm=<r>, username=<u>".to_owned(),
        "CHANNEL_BIND processed, success".to_owned(),
        "refreshed, realm=<r>, username=<u>, lifetime=0".to_owned(),
    ] {
        coturn.wait_for_log(&line).await;
    }
}

fn binding_request() -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[3; 12]);
    m
}
