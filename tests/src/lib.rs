//! Shared helpers for aparté's end-to-end tests: finding the workspace binaries, running a
//! real signaling server process, making speech WAVs with espeak-ng, an in-process recording
//! (and, on demand, hostile or lossy) TURN relay ([`relay`]), two in-process call endpoints
//! over real WebRTC ([`call`]), network namespaces standing for two homes and a VPS
//! ([`netns`]) with the field tests' process helpers ([`field`]), a cuttable TCP proxy ([`proxy`]) and the socket side of
//! scripted signaling servers ([`scripted`]). The scenarios themselves live in `tests/tests/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod call;
pub mod field;
pub mod netns;
pub mod proxy;
pub mod relay;
pub mod scripted;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a test waits for a process to report something before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// The path of a workspace binary next to this test executable.
///
/// Tests never run cargo themselves (cargo holds the build lock while tests run, so a nested
/// `cargo build` would wait forever). `cargo test --workspace` (the README's `scripts/test`)
/// builds every binary first, because each binary's own package has integration tests.
pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-exe> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("current exe");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo test --workspace` (bash scripts/test), \
         or `cargo build --bins` first",
        path.display()
    );
    path
}

/// A running `aparte-signaling` process on loopback, killed on drop.
pub struct SignalingServer {
    child: Child,
    /// The HTTP/WebSocket address.
    pub addr: SocketAddr,
    /// The embedded TURN relay's UDP address, when started with one.
    pub turn_addr: Option<SocketAddr>,
    /// Whether it serves TLS (`wss://`).
    pub tls: bool,
}

impl SignalingServer {
    /// Starts the server handing out TURN REST credentials (made with `secret`) for an
    /// external relay at `relay` (such as a [`relay::RecordingRelay`]), and waits until it
    /// listens.
    pub fn start_with_relay(relay: SocketAddr, secret: &[u8]) -> Self {
        let turn_url = format!("turn:{relay}?transport=udp");
        let secret = std::str::from_utf8(secret).expect("a UTF-8 TURN secret");
        Self::start(&["--turn-url", &turn_url, "--turn-secret", secret])
    }

    /// Starts the server with extra `args` and waits until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", args)
    }

    /// Starts the server listening on `listen` (for a restart on the same address) with
    /// extra `args`, and waits until it listens.
    pub fn start_on(listen: &str, args: &[&str]) -> Self {
        let mut child = Command::new(binary("aparte-signaling"))
            .args(["--listen", listen, "--metrics-listen", "off"])
            .args(["--log", "warn,turn=off"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn aparte-signaling");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut turn_addr = None;
        let mut tls = false;
        let addr = loop {
            let line = lines
                .recv_timeout(WAIT)
                .expect("signaling server did not start");
            if let Some(a) = line.strip_prefix("turn listening on udp ") {
                turn_addr = Some(a.parse().expect("turn address"));
            }
            if let Some(a) = line.strip_prefix("listening on http://") {
                break a.parse().expect("listen address");
            }
            if let Some(a) = line.strip_prefix("listening on https://") {
                tls = true;
                break a.parse().expect("listen address");
            }
        };
        Self {
            child,
            addr,
            turn_addr,
            tls,
        }
    }

    /// The WebSocket URL clients connect to.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.addr)
    }

    /// The process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SignalingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where [`CallProcess::spawn_tone`] has NAME write its `--stats-json` report.
pub fn stats_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// A call's `--stats-json` report.
pub fn read_stats(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no stats at {}: {e}", path.display()));
    serde_json::from_str(&text).expect("stats JSON")
}

/// The frames a `--stats-json` report says were rejected, all reasons together.
pub fn frames_rejected_total(report: &serde_json::Value) -> u64 {
    report["frames_rejected"]
        .as_object()
        .expect("frames_rejected")
        .values()
        .map(|v| v.as_u64().expect("a count"))
        .sum()
}

/// Asserts the frame accounting of one direction of a call (issue 15): every frame the peer
/// protected is, in `me`'s `--stats-json`, decrypted (then played, dropped by reason or still
/// buffered), rejected, refused, or lost, with no unexplained remainder. Returns the frames
/// lost on the way.
pub fn assert_frames_add_up(me: &serde_json::Value, peer: &serde_json::Value) -> u64 {
    let n = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing from {v}"))
    };
    let jitter = aparte_media::jitter::JitterStats {
        received: n(me, "frames_into_buffer"),
        played: n(me, "frames_played_from_packet"),
        late: n(me, "frames_late"),
        duplicates: n(me, "frames_duplicate"),
        invalid: n(me, "frames_invalid"),
        dropped_for_latency: n(me, "frames_dropped_for_latency"),
        dropped_full: n(me, "frames_dropped_full"),
        dropped_on_reset: n(me, "frames_dropped_on_reset"),
        buffered: u32::try_from(n(me, "frames_buffered_at_end")).expect("a small count"),
        distinct_frames: n(me, "frames_distinct"),
        lowest_index: me["lowest_index"].as_u64(),
        highest_index: me["highest_index"].as_u64(),
        missing: n(me, "frames_missing"),
        ..Default::default()
    };
    let counts = aparte_media::accounting::FrameCounts {
        sent: n(peer, "frames_protected"),
        arrived: Some(n(me, "frames_received")),
        refused: n(me, "frames_refused"),
        rejected: frames_rejected_total(me),
        decrypted: n(me, "frames_decrypted"),
        decrypted_packets: Some(n(me, "packets_decrypted")),
        dropped_before_buffer: n(me, "frames_dropped_before_buffer"),
        jitter,
    };
    let r = counts.reconcile();
    assert!(
        r.is_balanced(),
        "frames do not add up: {r:?}\nreceiver: {me}\nsender: {peer}"
    );
    r.lost
}

/// A fresh room id from `aparte room new`, as a user would make one.
pub fn new_room() -> String {
    let out = Command::new(binary("aparte"))
        .args(["room", "new"])
        .output()
        .expect("run aparte room new");
    assert!(out.status.success(), "aparte room new failed");
    String::from_utf8(out.stdout)
        .expect("utf-8 room id")
        .trim()
        .to_owned()
}

/// Speaks `text` with espeak-ng into a WAV file at `path` (22.05 kHz mono).
pub fn speak(text: &str, path: &Path) {
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(path)
        .arg(text)
        .status()
        .expect("espeak-ng is required (scripts/install-deps installs it)");
    assert!(status.success(), "espeak-ng failed");
}

/// A running `aparte call` process whose stderr status lines are read as they come.
pub struct CallProcess {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl CallProcess {
    /// Starts `aparte call` on loopback against `server_url` with `--tofu` plus `args`,
    /// keeping its identity files under `home`.
    pub fn spawn(server_url: &str, room: &str, home: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(binary("aparte"))
            .env("APARTE_HOME", home)
            .args(["call", "--server", server_url, &format!("--room={room}")])
            .args(["--loopback-only", "--tofu"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aparte call");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// `aparte call --input tone --duration SECONDS --stats-json DIR/NAME.json` plus `extra`,
    /// with its identity files under DIR/NAME; its report lands at [`stats_path`]`(dir, name)`.
    pub fn spawn_tone(
        server_url: &str,
        room: &str,
        dir: &Path,
        name: &str,
        seconds: u64,
        extra: &[&str],
    ) -> Self {
        let duration = seconds.to_string();
        let stats = stats_path(dir, name);
        let mut args = vec![
            "--input",
            "tone",
            "--duration",
            &duration,
            "--stats-json",
            stats.to_str().expect("UTF-8 temp path"),
        ];
        args.extend_from_slice(extra);
        Self::spawn(server_url, room, &dir.join(name), &args)
    }

    /// The status lines read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Waits for the process to end and asserts that it exited successfully (showing every
    /// status line seen otherwise).
    pub fn expect_clean_exit(&mut self) {
        let status = self.child.wait().expect("wait for aparte");
        assert!(status.success(), "{status}: {:?}", self.seen);
    }

    /// Waits for the process to end and asserts its exit code (showing every status line
    /// seen otherwise).
    pub fn expect_exit_code(&mut self, code: i32) {
        let status = self.child.wait().expect("wait for aparte");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(line);
        }
        assert_eq!(status.code(), Some(code), "{status}: {:?}", self.seen);
    }

    /// Waits until a status line (already seen or new) contains `needle`; panics with
    /// everything seen otherwise.
    pub fn wait_for(&mut self, needle: &str, within: Duration) {
        if self.seen.iter().any(|l| l.contains(needle)) {
            return;
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {within:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}
