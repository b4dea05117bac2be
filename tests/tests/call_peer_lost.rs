//! A peer that is killed mid-call (no goodbye, no close) is reported to the other side within a
//! few seconds, and the surviving client ends its call cleanly with its statistics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aparte_e2e_tests::{binary, new_room, SignalingServer, WAIT};

/// Reports must arrive within this long after the kill (server heartbeat: 6–8 s).
const REPORT_WITHIN: Duration = Duration::from_secs(12);

fn call(
    server: &SignalingServer,
    room: &str,
    home: &std::path::Path,
) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(binary("aparte"))
        .env("APARTE_HOME", home)
        .args(["call", "--server", &server.url(), &format!("--room={room}")])
        .args([
            "--loopback-only",
            "--tofu",
            "--no-identity",
            "--input",
            "tone",
            "--duration",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aparte call");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_for(lines: &mpsc::Receiver<String>, needle: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!(
                "no line containing {needle:?} within {within:?}; saw:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[test]
fn a_killed_peer_is_reported_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let server = SignalingServer::start(&[]);
    let room = new_room();
    let (mut alice, alice_lines) = call(&server, &room, &dir.path().join("a"));
    let (mut bob, bob_lines) = call(&server, &room, &dir.path().join("b"));
    wait_for(&alice_lines, "link: Connected", WAIT);
    wait_for(&bob_lines, "link: Connected", WAIT);

    alice.kill().unwrap(); // SIGKILL: no Bye, no WebSocket close
    alice.wait().unwrap();
    let killed = Instant::now();
    wait_for(&bob_lines, "the peer left the call", REPORT_WITHIN);
    let reported = killed.elapsed();
    let status = bob.wait().unwrap();
    println!("peer loss reported after {reported:?}");
    assert!(status.success(), "bob exits cleanly after the peer is gone");
}
