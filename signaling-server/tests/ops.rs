//! Operating the real binary: flags after `serve`, start-up validation and exit statuses, the
//! persisted TURN secret, what the log says (and never says), the metrics listener and
//! certificate reload on SIGHUP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aparte_signaling_protocol::token::{self, Claims};
use aparte_signaling_protocol::{ClientMessage, ServerMessage};
use common::{room, Client, SECRET, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_aparte-signaling");

/// The binary with none of the caller's `APARTE_*` or state-directory variables, so a test sees
/// only what it sets.
fn command() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("APARTE_") || k == "STATE_DIRECTORY" || k == "XDG_STATE_HOME" {
            c.env_remove(k);
        }
    }
    c
}

/// Runs the binary to completion (it must stop by itself within the wait).
fn run_to_exit(args: &[&str]) -> Output {
    let mut child = command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?}: still running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// A started server whose stdout and stderr are both collected.
struct Proc {
    child: Child,
    addr: SocketAddr,
    turn_addr: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = command()
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut turn_addr = None;
        let addr = loop {
            let line = rx
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("server did not start: {}", stderr.lock().unwrap()));
            if let Some(a) = line.strip_prefix("turn listening on udp ") {
                turn_addr = Some(a.parse().unwrap());
            }
            if let Some(a) = line
                .strip_prefix("listening on http://")
                .or_else(|| line.strip_prefix("listening on https://"))
            {
                break a.parse().unwrap();
            }
        };
        // Keep draining stdout.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Proc {
            child,
            addr,
            turn_addr,
            stderr,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// SIGTERM, then waits for the exit; returns the whole log.
    fn stop(mut self) -> String {
        self.signal("TERM");
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(self.child.wait().unwrap().success());
        // The reader thread may still hold the last lines; "stopped" is logged last.
        self.wait_log("stopped");
        self.log()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// 1. Flags after `serve`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_flags_work_before_and_after_serve() {
    let after = Proc::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--room-capacity",
            "3",
        ],
        &[],
    );
    let before = Proc::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--room-capacity",
            "3",
        ],
        &[],
    );
    for p in [&after, &before] {
        let mut c = Client::connect(&format!("ws://{}/ws", p.addr)).await;
        c.hello().await;
        c.send(&ClientMessage::Join {
            room: room(),
            token: None,
            resume: None,
        })
        .await;
        match c.recv().await {
            ServerMessage::Joined { capacity, .. } => assert_eq!(capacity, 3),
            other => panic!("{other:?}"),
        }
    }
    let help = run_to_exit(&["serve", "--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--tls-cert",
        "--metrics-listen",
        "--state-dir",
        "--stun-url",
        "--turn-listen",
        "Exit status",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Validation at start-up, one clear line, distinct exit statuses.

#[test]
fn bad_ice_urls_refuse_to_start_with_one_line() {
    for (flag, value) in [
        ("--stun-url", "stun://stun.example.org:3478"),
        ("--stun-url", "stun.example.org:3478"),
        ("--stun-url", "stun:host:99999"),
        ("--turn-url", "turn:turn.example.org:3478?transport=sctp"),
        ("--turn-url", "http://turn.example.org"),
    ] {
        let out = run_to_exit(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--turn-secret",
            "s3cret-s3cret",
            flag,
            value,
        ]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(flag) && lines[0].contains(value),
            "{lines:?}"
        );
    }
    // The same check applies to the config file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(&file, "stun_urls = [\"stun:\"]\n").unwrap();
    let out = run_to_exit(&[
        "--config",
        file.to_str().unwrap(),
        "--metrics-listen",
        "off",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_lines(&out)[0].contains("--stun-url \"stun:\": no host"));
    // A bad log filter is an error too, not a silent fallback.
    let out = run_to_exit(&["--log", "info,=[", "--metrics-listen", "off"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_lines(&out)[0].contains("--log"));
}

#[test]
fn a_busy_address_is_named_once_with_its_flag() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = tcp.local_addr().unwrap().to_string();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy_udp = udp.local_addr().unwrap().to_string();
    for (args, flag, addr) in [
        (
            vec!["--listen", busy.as_str(), "--metrics-listen", "off"],
            "--listen",
            busy.as_str(),
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--metrics-listen", busy.as_str()],
            "--metrics-listen",
            busy.as_str(),
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--turn-listen",
                busy_udp.as_str(),
                "--turn-secret",
                "s3cret-s3cret",
            ],
            "--turn-listen",
            busy_udp.as_str(),
        ),
    ] {
        let out = run_to_exit(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(&format!(
                "error: cannot listen on {addr} ({flag}): address already in use"
            )),
            "{lines:?}"
        );
    }
}

/// Makes a self-signed P-256 certificate for `localhost` with openssl; returns (cert, key).
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
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

#[test]
fn bad_certificate_files_say_which_file_and_what_is_wrong() {
    let d = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = make_cert(d.path(), "a");
    let (_, key_b) = make_cert(d.path(), "b");
    let garbage = d.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let missing = d.path().join("missing.pem");
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    for (cert, key, expect) in [
        (
            p(&garbage),
            p(&key_a),
            format!("--tls-cert {}: not a PEM file", p(&garbage)),
        ),
        (
            p(&key_a),
            p(&cert_a),
            format!("--tls-cert {}: no certificate in it", p(&key_a)),
        ),
        (
            p(&cert_a),
            p(&garbage),
            format!("--tls-key {}: not a PEM file", p(&garbage)),
        ),
        (
            p(&cert_a),
            p(&cert_a),
            format!("--tls-key {}: no private key in it", p(&cert_a)),
        ),
        (
            p(&cert_a),
            p(&key_b),
            format!(
                "--tls-key {}: this key does not match the certificate in --tls-cert {}",
                p(&key_b),
                p(&cert_a)
            ),
        ),
        (
            p(&missing),
            p(&key_a),
            format!("--tls-cert {}: cannot read it", p(&missing)),
        ),
    ] {
        let out = run_to_exit(&[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]);
        assert_eq!(out.status.code(), Some(2), "{expect}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(&format!("error: {expect}")),
            "{lines:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The generated TURN secret survives a restart.

async fn turn_creds(addr: SocketAddr) -> (String, String) {
    let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
    c.hello().await;
    c.send(&ClientMessage::Join {
        room: room(),
        token: None,
        resume: None,
    })
    .await;
    match c.recv().await {
        ServerMessage::Joined { ice_servers, .. } => {
            let turn = ice_servers
                .into_iter()
                .find(|s| s.username.is_some())
                .expect("TURN credentials in the join answer");
            (turn.username.unwrap(), turn.credential.unwrap())
        }
        other => panic!("{other:?}"),
    }
}

async fn allocate(turn: SocketAddr, user: &str, pass: &str) -> bool {
    use turn::client::{Client as TurnClient, ClientConfig};
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = TurnClient::new(ClientConfig {
        stun_serv_addr: turn.to_string(),
        turn_serv_addr: turn.to_string(),
        username: user.to_owned(),
        password: pass.to_owned(),
        realm: "aparte".to_owned(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let ok = tokio::time::timeout(WAIT, client.allocate())
        .await
        .expect("allocate timed out")
        .is_ok();
    client.close().await.unwrap();
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_turn_secret_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let state_s = state.to_str().unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--turn-listen",
        "127.0.0.1:0",
        "--log",
        "info,turn=off",
    ];
    let first = Proc::start(&args, &[("APARTE_STATE_DIR", state_s)]);
    let (user, pass) = turn_creds(first.addr).await;
    assert!(allocate(first.turn_addr.unwrap(), &user, &pass).await);
    let log1 = first.stop();
    let file = state.join("turn-secret");
    assert!(
        log1.contains(&format!(
            "TURN secret: generated and saved in {}",
            file.display()
        )),
        "{log1}"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&file), 0o600);
    let secret = std::fs::read_to_string(&file).unwrap();
    assert!(!log1.contains(secret.trim()), "the secret is in the log");

    // A second instance, on other ports, with the same state directory (given as a flag this
    // time): credentials minted by the first are accepted by the second's relay.
    let mut args2 = args.to_vec();
    args2.extend(["--state-dir", state_s]);
    let second = Proc::start(&args2, &[]);
    assert!(
        allocate(second.turn_addr.unwrap(), &user, &pass).await,
        "credentials from before the restart were refused"
    );
    let log2 = second.stop();
    assert!(
        log2.contains(&format!("TURN secret: loaded from {}", file.display())),
        "{log2}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret);

    // A damaged file stops the start with a clear line and is left as it is.
    std::fs::write(&file, "not a secret\n").unwrap();
    let mut args3 = args.to_vec();
    args3.extend(["--state-dir", state_s]);
    let out = run_to_exit(&args3);
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out);
    assert!(
        lines.last().unwrap().contains(&format!(
            "the TURN secret file {} is damaged",
            file.display()
        )),
        "{lines:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a secret\n");

    // A configured secret is used as is and said so, without touching the state directory.
    let env_state = tmp.path().join("unused");
    let p = Proc::start(
        &args,
        &[
            ("APARTE_TURN_SECRET", "configured-secret"),
            ("APARTE_STATE_DIR", env_state.to_str().unwrap()),
        ],
    );
    let log = p.stop();
    assert!(
        log.contains("TURN secret: from the environment (APARTE_TURN_SECRET)"),
        "{log}"
    );
    assert!(!log.contains("configured-secret"));
    assert!(!env_state.exists());
}

// ---------------------------------------------------------------------------------------------
// 4. Operator logs: what happened, to whom, never what was said.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_log_names_clients_and_hashed_rooms_but_no_token_room_or_payload() {
    let log = scan_run(false).await;
    let Scan {
        log,
        token,
        room_id,
        marker,
        tag,
    } = log;
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for (what, secret) in [
        ("token", &token),
        ("room id", &room_id),
        ("payload", &marker),
    ] {
        assert!(!log.contains(secret.as_str()), "the {what} is in the log");
        assert!(
            !log.contains(&hex(secret)),
            "the {what} is in the log, hex-encoded"
        );
    }
    // What an operator needs, at the default level's events.
    let line = |needle: &[&str]| {
        log.lines()
            .find(|l| needle.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{log}"))
            .to_owned()
    };
    line(&["INFO", "connection opened", "client=127.0.0.1"]);
    line(&["INFO", "joined", &format!("room={tag}"), "client=127.0.0.1"]);
    line(&[
        "INFO",
        "refused",
        "reason=token_invalid",
        &format!("room={tag}"),
    ]);
    let closed = line(&[
        "INFO",
        "connection closed",
        "reason=left",
        &format!("room={tag}"),
    ]);
    assert!(closed.contains("duration_ms="), "{closed}");
    line(&["INFO", "joined", "client=198.51.100.7"]);
    // The run really was at a verbose level: our own debug events are there.
    line(&["DEBUG", "relayed", "bytes="]);
}

/// The same run with the documented escape hatch: the dependency's trace output now carries the
/// payload, which is what the cap protects against (and shows the scan can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cap_a_dependency_would_log_the_payload() {
    let Scan { log, marker, .. } = scan_run(true).await;
    assert!(
        log.contains(&marker),
        "expected tungstenite's trace output to show the payload"
    );
}

struct Scan {
    log: String,
    token: String,
    room_id: String,
    marker: String,
    tag: String,
}

async fn scan_run(uncapped: bool) -> Scan {
    let mut env = vec![("APARTE_TOKEN_SECRET", SECRET)];
    if uncapped {
        env.push(("APARTE_LOG_UNCAPPED", "1"));
    }
    let p = Proc::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--log",
            "trace",
            "--proxy-header",
            "X-Forwarded-For",
        ],
        &env,
    );
    let r = room();
    let room_id = r.to_string();
    let tok = token::mint(
        SECRET.as_bytes(),
        &Claims {
            room: room_id.clone(),
            exp: now() + 600,
            label: Some("alice".into()),
        },
    )
    .unwrap();
    let url = format!("ws://{}/ws", p.addr);
    let mut a = Client::connect(&url).await;
    a.hello_join(&r, Some(tok.clone())).await;
    // A forwarded client (through a proxy on loopback), with its own token.
    let tok_b = token::mint(
        SECRET.as_bytes(),
        &Claims {
            room: room_id.clone(),
            exp: now() + 600,
            label: None,
        },
    )
    .unwrap();
    let mut b = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Client { ws }
    };
    b.hello_join(&r, Some(tok_b.clone())).await;
    assert!(matches!(a.recv().await, ServerMessage::PeerJoined { .. }));
    let marker = format!("MARKER{}", now());
    a.relay(None, &format!("{{\"sdp\":\"{marker}\"}}")).await;
    let (_, got) = b.expect_relay().await;
    assert!(got.contains(&marker));
    // A refusal with a bad token, in the same room.
    let mut c = Client::connect(&url).await;
    c.hello().await;
    c.send(&ClientMessage::Join {
        room: r.clone(),
        token: Some(format!("{tok}x")),
        resume: None,
    })
    .await;
    c.expect_error("token_invalid").await;
    a.send(&ClientMessage::Leave).await;
    a.expect_close(1000).await;
    p.wait_log("reason=left");
    let log = p.stop();
    let tag = {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(room_id.as_bytes());
        d[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    Scan {
        log,
        token: tok,
        room_id,
        marker,
        tag,
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Certificate reload on SIGHUP.

/// Accepts any server certificate (checking only the handshake signatures): the test compares
/// the certificate it was shown with the files itself.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type TlsWs =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket over TLS; returns it with the leaf certificate the server showed.
async fn wss_connect(addr: SocketAddr) -> (TlsWs, Vec<u8>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("WebSocket upgrade timed out")
        .expect("WebSocket upgrade");
    (ws, leaf)
}

/// Sends `msg` and returns the next server message (skipping pings).
async fn ask(ws: &mut TlsWs, msg: &ClientMessage) -> ServerMessage {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(msg.to_json())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no answer")
            .expect("connection closed")
            .expect("read");
        if let Message::Text(t) = frame {
            return ServerMessage::parse(t.as_str()).unwrap();
        }
    }
}

fn der(cert: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_file(cert)
        .unwrap()
        .to_vec()
}

/// Replaces `to` with a copy of `from` the way a renewal tool does: write beside, then rename.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let d = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = make_cert(d.path(), "a");
    let (cert_b, key_b) = make_cert(d.path(), "b");
    let cert = d.path().join("cert.pem");
    let key = d.path().join("key.pem");
    replace(&cert_a, &cert);
    replace(&key_a, &key);
    let p = Proc::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("APARTE_TOKEN_SECRET", SECRET)],
    );
    let (mut old, leaf) = wss_connect(p.addr).await;
    assert_eq!(leaf, der(&cert_a), "not serving certificate A");
    let hello = ClientMessage::Hello {
        version: aparte_signaling_protocol::PROTOCOL_VERSION,
    };
    assert!(matches!(
        ask(&mut old, &hello).await,
        ServerMessage::Welcome { .. }
    ));

    // Renewal: both files replaced, then SIGHUP.
    replace(&cert_b, &cert);
    replace(&key_b, &key);
    p.signal("HUP");
    p.wait_log("SIGHUP: TLS certificate reloaded");
    let (mut new, leaf) = wss_connect(p.addr).await;
    assert_eq!(
        leaf,
        der(&cert_b),
        "a new connection still sees certificate A"
    );
    assert!(matches!(
        ask(&mut new, &hello).await,
        ServerMessage::Welcome { .. }
    ));
    // The connection opened before the reload is still served.
    assert!(matches!(
        ask(&mut old, &ClientMessage::Ping).await,
        ServerMessage::Pong
    ));

    // A bad new file: the error is logged and certificate B stays.
    std::fs::write(&cert, "garbage\n").unwrap();
    p.signal("HUP");
    p.wait_log("SIGHUP: TLS certificate NOT reloaded");
    let (_, leaf) = wss_connect(p.addr).await;
    assert_eq!(leaf, der(&cert_b));
    assert!(matches!(
        ask(&mut old, &ClientMessage::Ping).await,
        ServerMessage::Pong
    ));
    let log = p.stop();
    assert!(
        log.contains(&format!("--tls-cert {}: not a PEM file", cert.display())),
        "{log}"
    );
}

/// Without TLS, SIGHUP is logged and ignored (its default action would kill the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_tls_keeps_serving() {
    let p = Proc::start(&["--listen", "127.0.0.1:0", "--metrics-listen", "off"], &[]);
    p.signal("HUP");
    p.wait_log("SIGHUP: no --tls-cert/--tls-key, nothing to reload");
    let (status, _) = common::http_get(p.addr, "/healthz");
    assert!(status.contains("200"), "{status}");
    p.stop();
}
