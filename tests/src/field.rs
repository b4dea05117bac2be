//! Helpers for the field tests (network namespaces, real processes): the shell blocks of
//! docs/DEPLOY.md run verbatim, and processes whose output is followed line by line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::binary;

/// The shell block of docs/DEPLOY.md that follows `<!-- field-test: NAME -->`.
pub fn deploy_block(name: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/DEPLOY.md")).unwrap();
    let marker = format!("<!-- field-test: {name} -->");
    let after = doc
        .split_once(&marker)
        .unwrap_or_else(|| panic!("DEPLOY.md has no {marker}"))
        .1;
    let body = after
        .split_once("```sh\n")
        .expect("a ```sh block after the marker")
        .1;
    body.split_once("```").expect("the block ends").0.to_owned()
}

/// The folder holding the workspace binaries, for PATH.
pub fn bin_dir() -> String {
    binary("aparte")
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Runs a DEPLOY.md block with `sh -e` in `dir`, the binaries on PATH; returns stdout.
pub fn run_block(name: &str, dir: &Path, env: &[(&str, &str)]) -> String {
    let path = format!(
        "{}:{}",
        bin_dir(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .args(["-e", "-c", &deploy_block(name)])
        .current_dir(dir)
        .env("PATH", path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "DEPLOY.md block {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A process in a namespace whose output lines are collected as they come; killed on drop.
pub struct Running {
    /// The process (killed on drop).
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line it printed so far (stdout and stderr).
    pub seen: Vec<String>,
}

impl Running {
    /// Starts `cmd` with its output collected.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until it printed a line containing `needle`; panics with its output otherwise.
    pub fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no {needle:?} within {within:?}:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits for it to exit (panics after `within`), collecting its last lines.
    pub fn finish(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                    self.seen.push(line);
                }
                return status;
            }
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Both pipes closed: the process is exiting.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return self.child.wait().unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}:\n{}",
                self.seen.join("\n")
            );
        }
    }

    /// Collects the lines printed so far, without waiting.
    pub fn finish_lines(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// The SAS it showed.
    pub fn sas(&self) -> String {
        self.seen
            .iter()
            .find_map(|l| l.split_once("SAS: ").map(|(_, s)| s.to_owned()))
            .unwrap_or_else(|| panic!("no SAS shown:\n{}", self.seen.join("\n")))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deployment in network namespaces: `aparte-signaling` on the VPS with TLS on 443 (the
/// certificate from DEPLOY.md's own-CA recipe, §4), its TURN relay, and a room; the people
/// call from the homes of [`Field::topo`].
pub struct Field {
    /// The namespaces.
    pub topo: crate::netns::Topology,
    /// Certificates, WAVs, recordings and stats.
    pub dir: tempfile::TempDir,
    /// The server process.
    pub server: Running,
    /// The room both join.
    pub room: String,
    /// The signaling URL the people use (`wss://…/ws`).
    pub server_url: String,
}

impl Field {
    /// Starts the server in `topo.vps` with `server_args` (listeners, TURN) besides TLS, the
    /// TURN secret and metrics off; the people will reach it at `server_url`.
    pub fn start(topo: crate::netns::Topology, server_url: &str, server_args: &[&str]) -> Field {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // DEPLOY.md §4 Option D: the CA and the VPS's certificate.
        run_block("certificates", d, &[]);
        let mut server = crate::netns::Topology::command(&topo.vps, binary("aparte-signaling"));
        server
            .current_dir(d)
            .env("APARTE_TURN_SECRET", "0123456789abcdef0123456789abcdef")
            .args(["--tls-cert", "cert.pem", "--tls-key", "key.pem"])
            .args(server_args)
            .args(["--metrics-listen", "off"]);
        let mut server = Running::start(server);
        server.wait_for("listening on https://", crate::WAIT);
        let out = Command::new(binary("aparte"))
            .args(["room", "new"])
            .output()
            .unwrap();
        let room = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Field {
            topo,
            dir,
            server,
            room,
            server_url: server_url.to_owned(),
        }
    }

    /// A file in the field's folder.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `name` calls `peer` from namespace `home`, saying `name.wav`, writing what it hears to
    /// `name-heard.wav` and its stats to `name.json`.
    pub fn person(&self, home: &str, name: &str, peer: &str) -> Running {
        self.person_saying(home, name, peer, &format!("{name}.wav"), &[])
    }

    /// The same, with `input` (a WAV, or `silence`, which lasts until the peer hangs up) and
    /// extra `aparte call` arguments.
    pub fn person_saying(
        &self,
        home: &str,
        name: &str,
        peer: &str,
        input: &str,
        extra: &[&str],
    ) -> Running {
        let mut cmd = crate::netns::Topology::command(home, binary("aparte"));
        cmd.current_dir(self.dir.path())
            .env("APARTE_HOME", self.path(&format!("home-{name}")))
            .args(["call", "--server", &self.server_url, "--ca-file", "ca.pem"])
            .arg(format!("--room={}", self.room))
            .args(["--peer", peer, "--tofu"])
            .args(["--input", input])
            .args(["--output", &format!("{name}-heard.wav")])
            .args(["--stats-json", &format!("{name}.json")])
            .args(extra);
        if let Some(filter) = std::env::var_os("APARTE_TEST_LOG") {
            cmd.env("APARTE_LOG", filter);
        }
        Running::start(cmd)
    }
}

/// What Whisper (tiny.en, through `aparte translate`) hears in `wav`, as one line of text.
pub fn transcript(wav: &Path) -> String {
    let out = Command::new(binary("aparte"))
        .args(["translate", "--lang", "en"])
        .arg(wav)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aparte translate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            l.split_once("] ")
                .map_or(l, |(_, text)| text)
                .trim()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join(" ")
}
