//! ACME against a real ACME server: Debian's `pebble` (installed by scripts/install-deps), with
//! its own test CA for its HTTPS API and `PEBBLE_VA_ALWAYS_VALID=1` (it cannot reach port 443 of
//! a real domain from here). The server orders a certificate for a name, serves it with the
//! chain pebble issued, keeps the account and certificate in 0600 files, and serves the cached
//! certificate after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::WAIT;

const DOMAIN: &str = "signal.aparte.test";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed for the test CA")
        .success();
    assert!(ok, "openssl {args:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_tcp(port: u16) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts pebble with a fresh test CA for its API; returns it, the directory URL and the
/// management port.
fn start_pebble(dir: &Path) -> (Killed, String, u16) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=aparte test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "pebble.key",
            "-out",
            "pebble.csr",
        ],
        dir,
    );
    std::fs::write(
        dir.join("pebble.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "pebble.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "pebble.ext",
            "-out",
            "pebble.pem",
        ],
        dir,
    );
    let (api, mgmt) = (free_port(), free_port());
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.join("pebble.pem"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": free_port(),
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let child = Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        // Pebble cannot reach port 443 of a name from here; it skips validation. It also
        // rejects a share of nonces on purpose by default, and sleeps before validating.
        .env("PEBBLE_VA_ALWAYS_VALID", "1")
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pebble is needed (apt-get install pebble; scripts/install-deps installs it)");
    let child = Killed(child);
    wait_tcp(api);
    wait_tcp(mgmt);
    (child, format!("https://localhost:{api}/dir"), mgmt)
}

/// The server started with ACME; returns it, its address and its collected stderr.
fn start_server(args: &[&str]) -> (Killed, SocketAddr, Arc<Mutex<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aparte-signaling"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(args)
        .env_remove("APARTE_TLS_CERT")
        .env_remove("APARTE_TLS_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("server exited: {}", log.lock().unwrap()))
            .unwrap();
        if let Some(a) = line.strip_prefix("listening on https://") {
            break a.parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), addr, log)
}

fn wait_log(log: &Mutex<String>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log.lock().unwrap().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "log never said {needle:?}:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects with TLS to `addr` for `DOMAIN`, trusting only `root`; returns the chain length.
async fn connect_verified(addr: SocketAddr, root: &[u8]) -> usize {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(root) {
        roots.add(c.unwrap()).unwrap();
    }
    assert!(!roots.is_empty(), "no pebble root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(DOMAIN).unwrap();
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("the served certificate must verify against pebble's root for the domain");
    let chain = tls.get_ref().1.peer_certificates().unwrap().len();
    // And the server behind it answers.
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{DOMAIN}/ws"), tls)
        .await
        .expect("WebSocket over the ACME certificate");
    use futures_util::{SinkExt as _, StreamExt as _};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"hello","version":1}"#,
    ))
    .await
    .unwrap();
    let answer = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(answer.to_text().unwrap().contains("welcome"));
    chain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_pebble_is_served_cached_and_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_pebble, directory, mgmt) = start_pebble(dir);
    let cache = dir.join("acme-cache");
    let ca = dir.join("ca.pem");
    let args = [
        "--acme-domain",
        DOMAIN,
        "--acme-email",
        "admin@aparte.test",
        "--acme-directory",
        directory.as_str(),
        "--acme-ca-file",
        ca.to_str().unwrap(),
        "--acme-cache",
        cache.to_str().unwrap(),
    ];
    let (server, addr, log) = start_server(&args);
    wait_log(&log, "ACME: new certificate issued and serving it");

    let root = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg(format!("https://localhost:{mgmt}/roots/0"))
        .output()
        .expect("curl is needed to fetch pebble's root");
    assert!(root.status.success(), "{root:?}");
    assert!(
        connect_verified(addr, &root.stdout).await >= 2,
        "no intermediate served"
    );

    // Cache: a private directory with private files (the account key and the certificate).
    wait_log(&log, "ACME: certificate saved in the cache");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    drop(server);

    // A restart serves the cached certificate without a new order.
    let (_server, addr, log) = start_server(&args);
    wait_log(&log, "ACME: serving the cached certificate");
    assert!(connect_verified(addr, &root.stdout).await >= 2);
    assert!(!log.lock().unwrap().contains("new certificate issued"));
}
