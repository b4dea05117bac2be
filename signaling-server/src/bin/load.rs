//! `aparte-signaling-load`: load benchmark for the aparté signaling server and its embedded TURN
//! relay. It starts the real server binary itself (on 127.0.0.1 only), drives it, and reports
//! what the server process used, read from `/proc`.
//!
//! Modes:
//! - `idle`: hold N joined, idle WebSocket connections; report server RSS.
//! - `relay`: P pairs exchanging ~300-byte messages at a total rate R for a duration; report
//!   relay latency p50/p99/max, messages lost, server CPU per message and RSS.
//!   `--signaling-server peerjs` drives a PeerJS server (`peerjs` from the npm package `peer`)
//!   with the same pairs, rate and sizes, in its own protocol, as the reference.
//! - `turn`: K TURN allocations (real webrtc-rs client) each sending 50 packets/s of 100 bytes
//!   through the relay to a UDP sink; report loss, latency, relay CPU per packet and RSS.
//!   `--relay-server coturn` drives a `turnserver` (coturn) started the same way instead, so the
//!   reference relay is measured under the identical load on the same machine.
//!   `--transport tcp|tls` runs the clients over TURN-over-TCP or TURN-over-TLS streams (the
//!   relayed side stays UDP), against our relay or coturn's.
//!
//! Every run is bounded in count and time and only uses loopback addresses.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aparte_signaling_protocol::{turn_rest, ClientMessage, RoomId, ServerMessage};
use aparte_signaling_server::turn_stream::StreamClientConn;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Load benchmark for aparte-signaling (loopback only).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The server binary to start [default: aparte-signaling next to this binary].
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// Extra arguments for the server (repeatable), e.g. `--server-arg=--threads=2`.
    #[arg(long = "server-arg", global = true, allow_hyphen_values = true)]
    server_args: Vec<String>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Hold N idle, joined connections and report the server's RSS.
    Idle {
        /// Connections to hold (at most 20000).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// How long to hold them after the last one joined, in seconds.
        #[arg(long, default_value_t = 10)]
        hold: u64,
    },
    /// Relay messages between pairs at a fixed total rate.
    Relay {
        /// Pairs (rooms of two); both members send. At most 5000.
        #[arg(long, default_value_t = 500)]
        pairs: usize,
        /// Total messages per second, all senders together. At most 50000.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Size of each WebSocket message, in bytes (at least 120).
        #[arg(long, default_value_t = 300)]
        size: usize,
        /// Measured duration, in seconds (at most 120).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// The server under test: ours, or a PeerJS server (the reference) started with the
        /// `peerjs` command from `PATH` (`npm install -g peer@1.0.2`).
        #[arg(long, value_enum, default_value_t = SignalingKind::Aparte)]
        signaling_server: SignalingKind,
    },
    /// Drive the embedded TURN relay.
    Turn {
        /// Allocations (at most 2000).
        #[arg(long, default_value_t = 100)]
        allocations: usize,
        /// Packets per second per allocation.
        #[arg(long, default_value_t = 50)]
        pps: u64,
        /// Packet size, in bytes (at least 24).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Measured duration, in seconds (at most 120).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Send through the webrtc-rs TURN client's relay connection instead of raw Send
        /// indications (the client adds its own latency; see docs/BENCHMARKS-signaling.md).
        #[arg(long)]
        via_client: bool,
        /// Control run: send straight from plain UDP sockets to the sink, without the relay, to
        /// measure what the load generator itself adds to latency.
        #[arg(long)]
        direct: bool,
        /// Receive at the sink on a dedicated OS thread (blocking reads) instead of a task on
        /// the generator's runtime, where the receive timestamp can wait behind the K sender
        /// tasks. Shows how much of the measured latency is the generator's own scheduling.
        #[arg(long)]
        sink_thread: bool,
        /// The relay under test: our embedded relay, or coturn's `turnserver` from `PATH`
        /// (`apt-get install coturn`), started with the same REST secret on loopback.
        #[arg(long, value_enum, default_value_t = RelayKind::Aparte)]
        relay_server: RelayKind,
        /// How the clients reach the relay: UDP, or a TCP or TLS stream each (RFC 6062
        /// framing); the relayed side is UDP in every case.
        #[arg(long, value_enum, default_value_t = TurnTransport::Udp)]
        transport: TurnTransport,
    },
}

/// The client-to-relay transport of the `turn` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TurnTransport {
    /// UDP datagrams.
    Udp,
    /// One TCP connection per allocation.
    Tcp,
    /// One TLS connection per allocation (a self-signed certificate made with `openssl`).
    Tls,
}

/// Which signaling server the `relay` mode drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SignalingKind {
    /// `aparte-signaling`.
    Aparte,
    /// PeerJS server (Node), whose relay figures the targets are set against.
    Peerjs,
}

/// Which TURN relay the `turn` mode drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RelayKind {
    /// The relay embedded in `aparte-signaling` (`--turn-listen`).
    Aparte,
    /// coturn's `turnserver`, the reference the targets are set against.
    Coturn,
}

/// The server process under test.
struct ServerProc {
    child: Child,
    addr: SocketAddr,
    turn_addr: Option<SocketAddr>,
    turn_tcp_addr: Option<SocketAddr>,
    turns_addr: Option<SocketAddr>,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_bin(cli: &Cli) -> Result<PathBuf, AnyError> {
    if let Some(p) = &cli.server_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    Ok(me.with_file_name("aparte-signaling"))
}

fn start_server(cli: &Cli, args: &[String]) -> Result<ServerProc, AnyError> {
    use std::io::BufRead;
    let bin = server_bin(cli)?;
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--log", "error"])
        // The load tool reads /proc, not metrics; a fixed metrics port could be busy.
        .args(["--metrics-listen", "off"])
        .args(args)
        .args(&cli.server_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut turn_addr = None;
    let mut turn_tcp_addr = None;
    let mut turns_addr = None;
    let addr = loop {
        let line = lines.next().ok_or("server exited before listening")??;
        if let Some(a) = line.strip_prefix("turn listening on udp ") {
            turn_addr = Some(a.parse()?);
        }
        if let Some(a) = line.strip_prefix("turn listening on tcp ") {
            turn_tcp_addr = Some(a.parse()?);
        }
        if let Some(a) = line.strip_prefix("turn listening on tls ") {
            turns_addr = a.parse().ok();
        }
        if let Some(a) = line
            .strip_prefix("listening on http://")
            .or_else(|| line.strip_prefix("listening on https://"))
        {
            break a.parse()?;
        }
    };
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok(ServerProc {
        child,
        addr,
        turn_addr,
        turn_tcp_addr,
        turns_addr,
    })
}

/// Spawns a reference server (coturn, PeerJS) with stdin and stderr closed; a missing program
/// is an error that says how to install it.
fn spawn_reference(command: &mut Command, install: &str) -> Result<Child, AnyError> {
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("{program} is not installed: {install}").into(),
            _ => format!("cannot start {program}: {e}").into(),
        })
}

/// Starts a PeerJS server (`peerjs` from `PATH`, the npm package `peer`) on a free loopback
/// port, allowing `limit` concurrent clients, and waits until it says it started.
fn start_peerjs(limit: usize) -> Result<ServerProc, AnyError> {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = spawn_reference(
        Command::new("peerjs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--concurrent_limit", &limit.to_string()])
            // Our clients send no PeerJS HEARTBEAT; keep them alive for the longest run.
            .args(["--alive_timeout", "600000"])
            .stdout(Stdio::piped()),
        "npm install -g peer@1.0.2",
    )?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    // Read its stdout on a thread for its whole life (it never blocks on a full pipe), and
    // wait a bounded time for the start-up line.
    let (started_tx, started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("Started PeerServer") {
                let _ = started_tx.send(());
            }
        }
    });
    if started.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return Err("peerjs did not start within 20 s".into());
    }
    Ok(ServerProc {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        turn_addr: None,
        turn_tcp_addr: None,
        turns_addr: None,
    })
}

/// Connects to a PeerJS server as peer `id` and waits for its `OPEN`.
async fn connect_peerjs(addr: SocketAddr, id: &str) -> Result<Ws, AnyError> {
    let url = format!("ws://{addr}/peerjs?key=peerjs&id={id}&token=t{id}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    loop {
        let Some(frame) = ws.next().await else {
            return Err("closed before OPEN".into());
        };
        if let Message::Text(t) = frame? {
            let v: serde_json::Value = serde_json::from_str(t.as_str())?;
            return match v["type"].as_str() {
                Some("OPEN") => Ok(ws),
                _ => Err(format!("peerjs refused {id}: {t}").into()),
            };
        }
    }
}

/// Starts coturn's `turnserver` on a free loopback port with the REST secret `secret` (the
/// same scheme our relay checks), relaying to loopback peers only, and waits until it answers a
/// STUN binding request. Clients reach it over UDP only, or also over TCP on the same port, or
/// over TLS on a second port with `tls` = (certificate, key). Everything else is coturn's default
/// (relay threads, quotas).
async fn start_coturn(
    secret: &str,
    transport: TurnTransport,
    tls: Option<&(PathBuf, PathBuf)>,
) -> Result<ServerProc, AnyError> {
    let free_port = || -> Result<u16, AnyError> {
        // Free as UDP and as TCP: coturn listens on both with one number.
        let t = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = t.local_addr()?.port();
        std::net::UdpSocket::bind(("127.0.0.1", port))?;
        Ok(port)
    };
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = Command::new("turnserver");
    command
        .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
        .arg(format!("--listening-port={port}"))
        .args(["--use-auth-secret", "--realm=aparte"])
        .arg(format!("--static-auth-secret={secret}"))
        .args(["--allow-loopback-peers", "--no-dtls"]);
    let mut turns_addr = None;
    match (transport, tls) {
        (TurnTransport::Tls, Some((cert, key))) => {
            let tls_port = free_port()?;
            command
                .arg("--no-tcp")
                .arg(format!("--tls-listening-port={tls_port}"))
                .arg(format!("--cert={}", cert.display()))
                .arg(format!("--pkey={}", key.display()));
            turns_addr = Some(SocketAddr::from(([127, 0, 0, 1], tls_port)));
        }
        (TurnTransport::Tcp, _) => {
            command.arg("--no-tls");
        }
        _ => {
            command.args(["--no-tcp", "--no-tls"]);
        }
    }
    command
        .args([
            "--no-tcp-relay",
            "--no-cli",
            "--no-stdout-log",
            "--log-file=/dev/null",
        ])
        // Its pid is ours already; nothing is left behind in /var/run.
        .arg("--pidfile=/dev/null")
        .stdout(Stdio::null());
    let mut child = spawn_reference(&mut command, "apt-get install coturn")?;
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let request = {
        use stun::message::{Message as StunMessage, Setter, BINDING_REQUEST};
        let mut msg = StunMessage::new();
        let setters: [Box<dyn Setter>; 2] = [
            Box::new(stun::agent::TransactionId::new()),
            Box::new(BINDING_REQUEST),
        ];
        msg.build(&setters)?;
        msg.raw
    };
    let mut buf = [0u8; 1500];
    for _ in 0..50 {
        if let Some(status) = child.try_wait()? {
            return Err(format!("turnserver exited at start-up ({status})").into());
        }
        probe.send_to(&request, addr).await?;
        let answer = tokio::time::timeout(Duration::from_millis(100), probe.recv_from(&mut buf));
        if let Ok(Ok((n, from))) = answer.await {
            if from == addr && n >= 20 {
                // The UDP answer means it is up; give its TLS listener the same bounded wait.
                if let Some(t) = turns_addr {
                    wait_tcp(t).await?;
                }
                return Ok(ServerProc {
                    child,
                    // coturn serves no HTTP; the TURN mode uses only the TURN addresses.
                    addr,
                    turn_addr: Some(addr),
                    turn_tcp_addr: (transport == TurnTransport::Tcp).then_some(addr),
                    turns_addr,
                });
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("turnserver did not answer on {addr} within 5 s").into())
}

/// Removes its directory when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory for the run's throw-away certificate and key.
fn tempfile_dir() -> Result<PathBuf, AnyError> {
    let mut n = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut n);
    let dir = std::env::temp_dir().join(format!(
        "aparte-load-{}",
        n.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// Waits (at most 5 s) until `addr` accepts TCP connections.
async fn wait_tcp(addr: SocketAddr) -> Result<(), AnyError> {
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("nothing listens on {addr} after 5 s").into())
}

/// A self-signed certificate for `localhost` made with `openssl` in `dir`: (certificate, key).
fn make_cert(dir: &std::path::Path) -> Result<(PathBuf, PathBuf), AnyError> {
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
        .map_err(|e| format!("openssl is needed for --transport tls: {e}"))?;
    if !status.success() {
        return Err("openssl could not make a certificate".into());
    }
    Ok((cert, key))
}

/// Trusts exactly one certificate (the run's self-signed one); handshake signatures are
/// checked as usual.
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
            Err(rustls::Error::General("not this run's certificate".into()))
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

/// A TLS client for the run's certificate `cert`.
fn tls_connector(cert: &std::path::Path) -> Result<tokio_rustls::TlsConnector, AnyError> {
    use rustls_pki_types::pem::PemObject as _;
    let der = rustls_pki_types::CertificateDer::from_pem_file(cert)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(der.to_vec(), provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"stun.turn".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// Number of threads of `pid` (0 if unknown).
fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident set size of `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// User + system CPU time of `pid`.
fn cpu_time(pid: u32, ticks_per_sec: f64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat; here indices 11 and 12.
    let total = ticks(11) + ticks(12);
    Duration::from_secs_f64(total as f64 / ticks_per_sec)
}

/// The host's count of UDP datagrams dropped for a full receive buffer (`/proc/net/snmp`).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_join(url: &str, room: &RoomId) -> Result<(Ws, usize), AnyError> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(Message::text(ClientMessage::Hello { version: 1 }.to_json()))
        .await?;
    ws.send(Message::text(
        ClientMessage::Join {
            room: room.clone(),
            token: None,
            resume: None,
        }
        .to_json(),
    ))
    .await?;
    loop {
        let Some(frame) = ws.next().await else {
            return Err("closed during join".into());
        };
        if let Message::Text(t) = frame? {
            match ServerMessage::parse(t.as_str())? {
                ServerMessage::Welcome { .. } => {}
                ServerMessage::Joined { peers, .. } => return Ok((ws, peers.len())),
                other => return Err(format!("unexpected {other:?}").into()),
            }
        }
    }
}

fn main() -> Result<(), AnyError> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        match &cli.mode {
            Mode::Idle { connections, hold } => idle(&cli, *connections, *hold).await,
            Mode::Relay {
                pairs,
                rate,
                size,
                duration,
                signaling_server,
            } => relay(&cli, *pairs, *rate, *size, *duration, *signaling_server).await,
            Mode::Turn {
                allocations,
                pps,
                size,
                duration,
                via_client,
                direct,
                sink_thread,
                relay_server,
                transport,
            } => {
                let how = if *direct {
                    Sender::Direct
                } else if *via_client {
                    Sender::Client
                } else {
                    Sender::Raw
                };
                let sink = if *sink_thread {
                    Sink::Thread
                } else {
                    Sink::Task
                };
                let load = TurnLoad {
                    k: *allocations,
                    pps: *pps,
                    size: *size,
                    duration: *duration,
                    how,
                    sink,
                    relay_server: *relay_server,
                    transport: *transport,
                };
                turn(&cli, load).await
            }
        }
    })?;
    if cli.json {
        println!("{report}");
    } else {
        if let Some(obj) = report.as_object() {
            for (k, v) in obj {
                println!("{k:>28}: {v}");
            }
        }
    }
    Ok(())
}

async fn idle(cli: &Cli, n: usize, hold: u64) -> Result<serde_json::Value, AnyError> {
    let n = n.min(20_000);
    let cap = (n + 100).to_string();
    let srv = start_server(
        cli,
        &[
            "--max-connections".into(),
            cap.clone(),
            "--max-connections-per-ip".into(),
            cap,
        ],
    )?;
    let pid = srv.child.id();
    let url = format!("ws://{}/ws", srv.addr);
    let baseline = rss_bytes(pid);
    let held = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let (done_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut rooms = Vec::new();
    for i in 0..n {
        if i % 2 == 0 {
            rooms.push(RoomId::random(&mut rand_core::OsRng));
        }
        let room = rooms[rooms.len() - 1].clone();
        let (url, sem, held) = (url.clone(), sem.clone(), held.clone());
        let mut done = done_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let ws = {
                let _p = sem.acquire().await;
                connect_join(&url, &room).await
            };
            let Ok((mut ws, _)) = ws else { return };
            held.fetch_add(1, Ordering::Relaxed);
            // Keep reading so pings are answered, until the run ends.
            loop {
                tokio::select! {
                    _ = done.recv() => break,
                    f = ws.next() => if f.is_none() { break },
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while held.load(Ordering::Relaxed) < n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(hold.min(600))).await;
    let rss = rss_bytes(pid);
    let held_n = held.load(Ordering::Relaxed);
    let _ = done_tx.send(());
    for t in tasks {
        let _ = t.await;
    }
    Ok(json!({
        "mode": "idle",
        "connections_requested": n,
        "connections_held": held_n,
        "connect_seconds": connect_secs,
        "server_rss_baseline_bytes": baseline,
        "server_rss_bytes": rss,
        "server_rss_mib": rss as f64 / 1048576.0,
        "server_bytes_per_connection": (rss.saturating_sub(baseline)) as f64 / held_n.max(1) as f64,
    }))
}

async fn relay(
    cli: &Cli,
    pairs: usize,
    rate: u64,
    size: usize,
    duration: u64,
    kind: SignalingKind,
) -> Result<serde_json::Value, AnyError> {
    let pairs = pairs.min(5000);
    let rate = rate.clamp(1, 50_000);
    let duration = duration.min(120);
    let size = size.max(120);
    let cap = (pairs * 2 + 100).to_string();
    let srv = match kind {
        SignalingKind::Aparte => start_server(
            cli,
            &[
                "--max-connections".into(),
                cap.clone(),
                "--max-connections-per-ip".into(),
                cap,
            ],
        )?,
        SignalingKind::Peerjs => start_peerjs(pairs * 2 + 100)?,
    };
    let pid = srv.child.id();
    let ticks = clock_ticks();
    let url = format!("ws://{}/ws", srv.addr);
    let base = Instant::now();
    let senders = pairs * 2;
    let period = Duration::from_secs_f64(senders as f64 / rate as f64);
    let per_sender = (duration as f64 / period.as_secs_f64()).floor() as u64;

    // Connect and join everyone first. `peer_of[i]`: where sender i's messages go (PeerJS
    // addresses each message to a peer id; our server relays within the room).
    let mut conns = Vec::with_capacity(senders);
    let mut peer_of = Vec::with_capacity(senders);
    for pair in 0..pairs {
        let (a, b) = match kind {
            SignalingKind::Aparte => {
                let room = RoomId::random(&mut rand_core::OsRng);
                (
                    connect_join(&url, &room).await?.0,
                    connect_join(&url, &room).await?.0,
                )
            }
            SignalingKind::Peerjs => (
                connect_peerjs(srv.addr, &format!("a{pair}")).await?,
                connect_peerjs(srv.addr, &format!("b{pair}")).await?,
            ),
        };
        conns.push(a);
        conns.push(b);
        peer_of.push(format!("b{pair}"));
        peer_of.push(format!("a{pair}"));
    }
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let rss_before = rss_bytes(pid);
    let cpu_before = cpu_time(pid, ticks);
    let wall = Instant::now();
    let mut tasks = Vec::new();
    for ((i, ws), dst) in conns.into_iter().enumerate().zip(peer_of) {
        let (mut tx, mut rx) = ws.split();
        let offset = period.mul_f64(i as f64 / senders as f64);
        let sent = sent.clone();
        let send_task = tokio::spawn(async move {
            let start = tokio::time::Instant::now() + offset;
            let mut tick = tokio::time::interval_at(start, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let envelope = match kind {
                SignalingKind::Aparte => r#"{"type":"relay","payload":"#.to_owned(),
                SignalingKind::Peerjs => format!(r#"{{"type":"OFFER","dst":"{dst}","payload":"#),
            };
            for seq in 0..per_sender {
                tick.tick().await;
                let t = base.elapsed().as_nanos() as u64;
                let head = format!(r#"{envelope}{{"t":{t},"seq":{seq},"pad":""#);
                let pad = size.saturating_sub(head.len() + 3);
                let text = format!("{head}{}\"}}}}", "p".repeat(pad));
                if tx.send(Message::text(text)).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            tx
        });
        let (lat, received) = (latencies.clone(), received.clone());
        let recv_task = tokio::spawn(async move {
            let mut local = Vec::with_capacity(per_sender as usize);
            let stop = tokio::time::Instant::now()
                + Duration::from_secs(duration)
                + Duration::from_secs(5);
            while (local.len() as u64) < per_sender {
                let f = tokio::time::timeout_at(stop, rx.next()).await;
                let Ok(Some(Ok(Message::Text(t)))) = f else {
                    if matches!(f, Ok(Some(Ok(_)))) {
                        continue;
                    }
                    break;
                };
                let now = base.elapsed().as_nanos() as u64;
                let sent_at = match kind {
                    SignalingKind::Aparte => match ServerMessage::parse(t.as_str()) {
                        Ok(ServerMessage::Relay { payload, .. }) => {
                            serde_json::from_str::<serde_json::Value>(payload.get())
                                .ok()
                                .and_then(|v| v["t"].as_u64())
                        }
                        _ => None,
                    },
                    SignalingKind::Peerjs => serde_json::from_str::<serde_json::Value>(t.as_str())
                        .ok()
                        .and_then(|v| v["payload"]["t"].as_u64()),
                };
                if let Some(t0) = sent_at {
                    local.push(now.saturating_sub(t0) / 1000);
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat.lock().await.extend(local);
            rx
        });
        tasks.push((send_task, recv_task));
    }
    let mut keep = Vec::new();
    for (s, r) in tasks {
        if let (Ok(s), Ok(r)) = (s.await, r.await) {
            keep.push((s, r));
        }
    }
    let elapsed = wall.elapsed().as_secs_f64();
    let cpu = cpu_time(pid, ticks).saturating_sub(cpu_before);
    let rss = rss_bytes(pid);
    drop(keep);
    let mut lat = latencies.lock().await.clone();
    lat.sort_unstable();
    let sent = sent.load(Ordering::Relaxed);
    let recvd = received.load(Ordering::Relaxed);
    Ok(json!({
        "mode": "relay",
        "signaling_server": match kind {
            SignalingKind::Aparte => "aparte",
            SignalingKind::Peerjs => "peerjs",
        },
        "pairs": pairs,
        "target_rate_msgs_per_s": rate,
        "message_bytes": size,
        "seconds": elapsed,
        "messages_sent": sent,
        "messages_received": recvd,
        "messages_lost": sent.saturating_sub(recvd),
        "achieved_rate_msgs_per_s": recvd as f64 / elapsed,
        "latency_p50_ms": percentile(&lat, 0.50),
        "latency_p99_ms": percentile(&lat, 0.99),
        "latency_max_ms": percentile(&lat, 1.0),
        "server_cpu_seconds": cpu.as_secs_f64(),
        "server_cpu_us_per_message": cpu.as_secs_f64() * 1e6 / recvd.max(1) as f64,
        "server_rss_before_bytes": rss_before,
        "server_rss_bytes": rss,
    }))
}

/// One `turn` mode run, as given on the command line.
struct TurnLoad {
    k: usize,
    pps: u64,
    size: usize,
    duration: u64,
    how: Sender,
    sink: Sink,
    relay_server: RelayKind,
    transport: TurnTransport,
}

async fn turn(cli: &Cli, load: TurnLoad) -> Result<serde_json::Value, AnyError> {
    let TurnLoad {
        k,
        pps,
        size,
        duration,
        how,
        sink: sink_mode,
        relay_server,
        transport,
    } = load;
    let direct = how == Sender::Direct;
    use turn::client::{Client, ClientConfig};
    use webrtc_util::Conn;

    let k = k.min(2000);
    let duration = duration.min(120);
    let size = size.max(24);
    let secret = "load-test-turn-secret";
    let cert_dir = match transport {
        TurnTransport::Tls => Some(RemoveDir(tempfile_dir()?)),
        _ => None,
    };
    let tls_files = match &cert_dir {
        Some(d) => Some(make_cert(&d.0)?),
        None => None,
    };
    let srv = match relay_server {
        RelayKind::Aparte => {
            let mut args: Vec<String> = vec![
                "--turn-listen".into(),
                "127.0.0.1:0".into(),
                "--turn-secret".into(),
                secret.into(),
                "--turn-max-allocations".into(),
                (k + 10).to_string(),
                "--turn-max-bandwidth".into(),
                "10000000".into(),
                // One stream per allocation, all from 127.0.0.1.
                "--max-connections-per-ip".into(),
                (k + 10).to_string(),
            ];
            match (transport, &tls_files) {
                (TurnTransport::Tls, Some((cert, key))) => args.extend([
                    "--turn-tcp-listen".into(),
                    "off".into(),
                    "--turns-listen".into(),
                    "127.0.0.1:0".into(),
                    "--tls-cert".into(),
                    cert.display().to_string(),
                    "--tls-key".into(),
                    key.display().to_string(),
                ]),
                (TurnTransport::Tcp, _) => {}
                _ => args.extend(["--turn-tcp-listen".into(), "off".into()]),
            }
            start_server(cli, &args)?
        }
        RelayKind::Coturn => start_coturn(secret, transport, tls_files.as_ref()).await?,
    };
    let pid = srv.child.id();
    let ticks = clock_ticks();
    let turn_addr = match transport {
        TurnTransport::Udp => srv.turn_addr,
        TurnTransport::Tcp => srv.turn_tcp_addr,
        TurnTransport::Tls => srv.turns_addr,
    }
    .ok_or("the relay did not start TURN on that transport")?;
    let connector = match &tls_files {
        Some((cert, _)) => Some(tls_connector(cert)?),
        None => None,
    };
    let rss_before = rss_bytes(pid);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();

    let sink = {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        let _ = s.set_recv_buffer_size(4 * 1024 * 1024);
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        Arc::new(tokio::net::UdpSocket::from_std(s.into())?)
    };
    let sink_addr = sink.local_addr()?;
    let base = Instant::now();

    // Allocate everything first.
    let mut allocs: Vec<(Option<Client>, Arc<dyn Conn + Send + Sync>)> = Vec::with_capacity(k);
    for i in 0..k {
        if direct {
            let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            conn.send_to(&[0u8; 8], sink_addr).await?;
            allocs.push((None, Arc::new(conn)));
            continue;
        }
        let creds = turn_rest::mint(secret.as_bytes(), &format!("load{i}"), now, 3600);
        let conn: Arc<dyn Conn + Send + Sync> = match transport {
            TurnTransport::Udp => Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?),
            TurnTransport::Tcp => {
                let tcp = tokio::net::TcpStream::connect(turn_addr).await?;
                tcp.set_nodelay(true)?;
                let local = tcp.local_addr()?;
                Arc::new(StreamClientConn::new(tcp, turn_addr, local))
            }
            TurnTransport::Tls => {
                let tcp = tokio::net::TcpStream::connect(turn_addr).await?;
                tcp.set_nodelay(true)?;
                let local = tcp.local_addr()?;
                let name = rustls_pki_types::ServerName::try_from("localhost")?;
                let connector = connector.as_ref().ok_or("no TLS connector")?;
                let tls = connector.connect(name, tcp).await?;
                Arc::new(StreamClientConn::new(tls, turn_addr, local))
            }
        };
        let raw_socket = Arc::clone(&conn);
        let client = Client::new(ClientConfig {
            stun_serv_addr: turn_addr.to_string(),
            turn_serv_addr: turn_addr.to_string(),
            username: creds.username,
            password: creds.password,
            realm: "aparte".into(),
            software: String::new(),
            rto_in_ms: 0,
            conn,
            vnet: None,
        })
        .await?;
        client.listen().await?;
        let relay = client.allocate().await?;
        // First packet creates the permission; not measured.
        relay.send_to(&[0u8; 8], sink_addr).await?;
        let sender: Arc<dyn Conn + Send + Sync> = if how == Sender::Raw {
            Arc::new(RawSendIndication {
                socket: raw_socket,
                server: turn_addr,
            })
        } else {
            Arc::new(relay)
        };
        allocs.push((Some(client), sender));
    }
    let alloc_rss = rss_bytes(pid);
    // Drain the warm-up packets.
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(200), sink.recv_from(&mut buf)).await
    {}

    let per_alloc = pps * duration;
    let expected = per_alloc * k as u64;
    let received = Arc::new(AtomicU64::new(0));
    // One latency sample (µs) from a datagram received at `now_ns` since `base`.
    fn sample(buf: &[u8], now_ns: u64) -> Option<u64> {
        let t0 = u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?);
        Some(now_ns.saturating_sub(t0) / 1000)
    }
    let sink_task = match sink_mode {
        Sink::Task => {
            let (sink, received) = (sink.clone(), received.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(expected as usize);
                let mut buf = vec![0u8; 2048];
                let stop = tokio::time::Instant::now() + Duration::from_secs(duration + 3);
                while (lat.len() as u64) < expected {
                    let Ok(Ok((n, _))) =
                        tokio::time::timeout_at(stop, sink.recv_from(&mut buf)).await
                    else {
                        break;
                    };
                    let now = base.elapsed().as_nanos() as u64;
                    if n >= 16 {
                        if let Some(l) = sample(&buf[..n], now) {
                            lat.push(l);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        }
        Sink::Thread => {
            // Take the socket off the runtime and read it with blocking calls.
            let std_sink = Arc::try_unwrap(sink)
                .map_err(|_| "sink socket still shared")?
                .into_std()?;
            std_sink.set_nonblocking(false)?;
            std_sink.set_read_timeout(Some(Duration::from_millis(100)))?;
            let received = received.clone();
            let stop = Instant::now() + Duration::from_secs(duration + 3);
            let thread = std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(expected as usize);
                let mut buf = vec![0u8; 2048];
                while (lat.len() as u64) < expected && Instant::now() < stop {
                    let Ok((n, _)) = std_sink.recv_from(&mut buf) else {
                        continue;
                    };
                    let now = base.elapsed().as_nanos() as u64;
                    if n >= 16 {
                        if let Some(l) = sample(&buf[..n], now) {
                            lat.push(l);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            });
            tokio::task::spawn_blocking(move || thread.join().unwrap_or_default())
        }
    };
    let cpu_before = cpu_time(pid, ticks);
    let rcvbuf_errors_before = udp_rcvbuf_errors();
    let load_cpu_before = cpu_time(std::process::id(), ticks);
    let wall = Instant::now();
    let period = Duration::from_secs_f64(1.0 / pps as f64);
    let sent = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for (i, (client, relay)) in allocs.into_iter().enumerate() {
        let sent = sent.clone();
        let offset = period.mul_f64(i as f64 / k as f64);
        senders.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pkt = vec![0u8; size];
            for seq in 0..per_alloc {
                tick.tick().await;
                pkt[..8].copy_from_slice(&seq.to_le_bytes());
                let t = base.elapsed().as_nanos() as u64;
                pkt[8..16].copy_from_slice(&t.to_le_bytes());
                if relay.send_to(&pkt, sink_addr).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            (client, relay)
        }));
    }
    let mut keep = Vec::new();
    for s in senders {
        if let Ok(v) = s.await {
            keep.push(v);
        }
    }
    let mut lat = sink_task.await?;
    let rcvbuf_errors = udp_rcvbuf_errors().saturating_sub(rcvbuf_errors_before);
    let elapsed = wall.elapsed().as_secs_f64();
    let cpu = cpu_time(pid, ticks).saturating_sub(cpu_before);
    let rss = rss_bytes(pid);
    for (client, relay) in keep {
        let _ = relay.close().await;
        if let Some(client) = client {
            let _ = client.close().await;
        }
    }
    let load_cpu = cpu_time(std::process::id(), ticks).saturating_sub(load_cpu_before);
    lat.sort_unstable();
    let sent = sent.load(Ordering::Relaxed);
    let recvd = received.load(Ordering::Relaxed);
    Ok(json!({
        "mode": match how {
            Sender::Direct => "turn-direct-control",
            Sender::Client => "turn-via-webrtc-rs-client",
            Sender::Raw => "turn",
        },
        "relay_server": match relay_server {
            RelayKind::Aparte => "aparte",
            RelayKind::Coturn => "coturn",
        },
        "transport": match transport {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        },
        "relay_threads": thread_count(pid),
        "sink": match sink_mode {
            Sink::Task => "task",
            Sink::Thread => "thread",
        },
        "allocations": k,
        "load_generator_cpu_seconds": load_cpu.as_secs_f64(),
        "packets_per_s_per_allocation": pps,
        "packet_bytes": size,
        "seconds": elapsed,
        "packets_sent": sent,
        "packets_received": recvd,
        "packets_lost": sent.saturating_sub(recvd),
        "loss_ratio": sent.saturating_sub(recvd) as f64 / sent.max(1) as f64,
        "host_udp_rcvbuf_errors": rcvbuf_errors,
        "latency_p50_ms": percentile(&lat, 0.50),
        "latency_p99_ms": percentile(&lat, 0.99),
        "latency_max_ms": percentile(&lat, 1.0),
        "relay_cpu_seconds": cpu.as_secs_f64(),
        "relay_cpu_us_per_packet": cpu.as_secs_f64() * 1e6 / recvd.max(1) as f64,
        "server_rss_before_bytes": rss_before,
        "server_rss_with_allocations_bytes": alloc_rss,
        "server_rss_bytes": rss,
        "rss_bytes_per_allocation": alloc_rss.saturating_sub(rss_before) as f64 / k.max(1) as f64,
    }))
}

/// Where the TURN mode's sink receives and timestamps packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// A task on the generator's runtime, next to the sender tasks.
    Task,
    /// A dedicated OS thread with blocking reads.
    Thread,
}

/// How the TURN mode sends its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    /// Raw TURN Send indications from the allocation's own client socket.
    Raw,
    /// Through the webrtc-rs client's relay connection.
    Client,
    /// Straight to the sink, without the relay (control).
    Direct,
}

/// Sends each datagram as a TURN Send indication (RFC 5766 §10) on the client's socket, the way
/// a media client does once its permission exists. Only `send_to` is used. `socket` is the
/// client's UDP socket or its TCP/TLS stream connection (which frames the message).
struct RawSendIndication {
    socket: Arc<dyn webrtc_util::Conn + Send + Sync>,
    server: SocketAddr,
}

#[async_trait::async_trait]
impl webrtc_util::Conn for RawSendIndication {
    async fn connect(&self, _: SocketAddr) -> Result<(), webrtc_util::Error> {
        Err(webrtc_util::Error::Other("unsupported".into()))
    }
    async fn recv(&self, _: &mut [u8]) -> Result<usize, webrtc_util::Error> {
        Err(webrtc_util::Error::Other("unsupported".into()))
    }
    async fn recv_from(&self, _: &mut [u8]) -> Result<(usize, SocketAddr), webrtc_util::Error> {
        Err(webrtc_util::Error::Other("unsupported".into()))
    }
    async fn send(&self, _: &[u8]) -> Result<usize, webrtc_util::Error> {
        Err(webrtc_util::Error::Other("unsupported".into()))
    }
    async fn send_to(&self, buf: &[u8], peer: SocketAddr) -> Result<usize, webrtc_util::Error> {
        use stun::message::{
            Message as StunMessage, MessageType, Setter, CLASS_INDICATION, METHOD_SEND,
        };
        let raw = {
            let mut msg = StunMessage::new();
            let setters: [Box<dyn Setter>; 4] = [
                Box::new(stun::agent::TransactionId::new()),
                Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
                Box::new(turn::proto::peeraddr::PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
                Box::new(turn::proto::data::Data(buf.to_vec())),
            ];
            msg.build(&setters)
                .map_err(|e| webrtc_util::Error::Other(e.to_string()))?;
            msg.raw
        };
        self.socket.send_to(&raw, self.server).await?;
        Ok(buf.len())
    }
    fn local_addr(&self) -> Result<SocketAddr, webrtc_util::Error> {
        self.socket.local_addr()
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }
    async fn close(&self) -> Result<(), webrtc_util::Error> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
