//! The call as a user meets it in the field, through real `aparte` and `aparte-signaling`
//! processes: a `wss://` server with a self-signed CA, and every way a call can fail ending
//! with a clear line, a distinct exit code, the stats written and no file damaged.
//!
//! Exit codes (docs/CLIENT.md): 0 completed, 1 local failure, 2 usage, 3 security, 4 no
//! network path, 5 signaling, 6 incomplete.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aparte_e2e_tests::{binary, new_room, read_stats, CallProcess, SignalingServer, WAIT};

/// A test CA, and a certificate for 127.0.0.1 and localhost signed by it, as PEM files in
/// `dir`: (ca.pem, cert.pem, key.pem).
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "aparte test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// `aparte call` with exactly these arguments (no `--tofu` added), run to its end.
fn run_call(home: &Path, args: &[&str]) -> Output {
    Command::new(binary("aparte"))
        .env("APARTE_HOME", home)
        .arg("call")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run aparte call")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sas(process: &CallProcess) -> String {
    process
        .seen()
        .iter()
        .find_map(|l| l.split_once("SAS: ").map(|(_, s)| s.to_owned()))
        .expect("SAS shown")
}

#[test]
fn a_call_over_wss_with_a_self_signed_ca_is_verified_and_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path());
    let server = SignalingServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        server.url().starts_with("wss://127.0.0.1:"),
        "{}",
        server.url()
    );
    let room = new_room();
    let ca_arg = ca.to_str().unwrap();
    let mut alice = CallProcess::spawn_tone(
        &server.url(),
        &room,
        dir.path(),
        "alice",
        3,
        &["--ca-file", ca_arg],
    );
    let mut bob = CallProcess::spawn_tone(
        &server.url(),
        &room,
        dir.path(),
        "bob",
        3,
        &["--ca-file", ca_arg],
    );
    alice.wait_for("SAS:", WAIT);
    bob.wait_for("SAS:", WAIT);
    assert_eq!(sas(&alice), sas(&bob));
    alice.expect_exit_code(0);
    bob.expect_exit_code(0);
    let (sa, sb) = (
        read_stats(&dir.path().join("alice.json")),
        read_stats(&dir.path().join("bob.json")),
    );
    for (me, other) in [(&sa, &sb), (&sb, &sa)] {
        assert_eq!(me["outcome"], "completed", "{me}");
        assert!(me["frames_decrypted"].as_u64().unwrap() > 50, "{me}");
        aparte_e2e_tests::assert_frames_add_up(me, other);
    }

    // Without the CA, the certificate is refused, with a hint, as a signaling failure.
    let stats = dir.path().join("carol.json");
    let out = run_call(
        &dir.path().join("carol"),
        &[
            "--server",
            &server.url(),
            &format!("--room={room}"),
            "--tofu",
            "--stats-json",
            stats.to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("not signed by a trusted authority") && err.contains("--ca-file"),
        "{err}"
    );
    assert_eq!(read_stats(&stats)["outcome"], "signaling");

    // A plain ws:// client against the TLS port is told so, not left hanging.
    let plain = server.url().replacen("wss://", "ws://", 1);
    let started = Instant::now();
    let out = run_call(
        &dir.path().join("dave"),
        &["--server", &plain, &format!("--room={room}"), "--tofu"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn bad_usage_exits_2_with_the_stats_written_and_never_wipes_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let room = new_room();
    let stats = dir.path().join("s.json");
    let input = dir.path().join("talk.wav");
    std::fs::write(&input, b"RIFF not really, but mine").unwrap();
    let cases: [&[&str]; 5] = [
        &["--duration", "1e30"],
        &["--duration=-1"],
        &["--duration", "NaN"],
        &[
            "--input",
            input.to_str().unwrap(),
            "--output",
            input.to_str().unwrap(),
        ],
        &["--server", "http://127.0.0.1:1/ws"],
    ];
    for extra in cases {
        let _ = std::fs::remove_file(&stats);
        let mut args = vec![
            "--room",
            &room,
            "--tofu",
            "--stats-json",
            stats.to_str().unwrap(),
        ];
        if !extra.contains(&"--server") {
            args.extend_from_slice(&["--server", "ws://127.0.0.1:1/ws"]);
        }
        args.extend_from_slice(extra);
        let out = run_call(&dir.path().join("home"), &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.starts_with("error: "), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
        assert_eq!(read_stats(&stats)["outcome"], "usage", "{extra:?}");
    }
    assert_eq!(std::fs::read(&input).unwrap(), b"RIFF not really, but mine");
}

#[test]
fn signaling_failures_exit_5_quickly_and_leave_existing_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let room = new_room();
    let heard = dir.path().join("heard.wav");
    let captions = dir.path().join("heard.vtt");
    std::fs::write(&heard, b"yesterday's recording").unwrap();
    let stats = dir.path().join("s.json");
    let run = |server: &str, extra: &[&str]| {
        let _ = std::fs::remove_file(&stats);
        let mut args = vec![
            "--server",
            server,
            "--room",
            &room,
            "--tofu",
            "--output",
            heard.to_str().unwrap(),
            "--captions",
            captions.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let out = run_call(&dir.path().join("home"), &args);
        (out, started.elapsed())
    };

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (out, took) = run(&format!("ws://127.0.0.1:{port}/ws"), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("connection refused"), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A server that accepts the connection and never says a word: a clear error within 10 s
    // (plus start-up), never a silent hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", silent.local_addr().unwrap());
    let (out, took) = run(&url, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("no answer from the signaling server"), "{err}");
    assert!(took < Duration::from_secs(13), "{took:?}");
    assert!(err.contains("connecting to"), "progress is shown: {err}");
    drop(silent);

    // A server that requires a token refuses a bad one.
    let server = SignalingServer::start(&["--token-secret", "0123456789abcdef0123456789abcdef"]);
    let (out, _) = run(&server.url(), &["--token", "not-a-token"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("refused"), "{err}");
    let s = read_stats(&stats);
    assert_eq!(s["outcome"], "signaling", "{s}");
    assert_eq!(s["exit_code"], 5, "{s}");

    // Through all of it, the old recording was never touched, no empty captions file was
    // made, and no temporary file was left behind.
    assert_eq!(std::fs::read(&heard).unwrap(), b"yesterday's recording");
    assert!(!captions.exists());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".partial")), "{names:?}");
}

#[test]
fn a_wrong_expected_sas_is_a_security_failure_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let server = SignalingServer::start(&[]);
    let room = new_room();
    let spawn = |name: &str| {
        let stats = dir.path().join(format!("{name}.json"));
        Command::new(binary("aparte"))
            .env("APARTE_HOME", dir.path().join(name))
            .args(["call", "--server", &server.url(), &format!("--room={room}")])
            .args(["--loopback-only", "--input", "tone", "--duration", "5"])
            .args(["--expect-sas", "00000000", "--stats-json"])
            .arg(&stats)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let alice = spawn("alice");
    let bob = spawn("bob");
    for (name, child) in [("alice", alice), ("bob", bob)] {
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{name}: {err}");
        assert!(
            !err.contains("SasMismatch"),
            "an enum name, not words: {err}"
        );
        assert!(err.contains("SAS"), "{err}");
        let s = read_stats(&dir.path().join(format!("{name}.json")));
        assert_eq!(s["outcome"], "security", "{s}");
        assert_eq!(s["frames_decrypted"], 0, "{s}");
    }
}

/// Bytes in the `.heard.wav.*.partial` recording being written in `dir`, if any.
fn partial_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn sigterm_and_sighup_hang_up_cleanly_with_a_whole_recording_and_stats() {
    for signal in ["-TERM", "-HUP"] {
        let dir = tempfile::tempdir().unwrap();
        let server = SignalingServer::start(&[]);
        let room = new_room();
        let heard = dir.path().join("heard.wav");
        let mut alice = CallProcess::spawn_tone(
            &server.url(),
            &room,
            dir.path(),
            "alice",
            60,
            &["--output", heard.to_str().unwrap()],
        );
        let mut bob = CallProcess::spawn_tone(&server.url(), &room, dir.path(), "bob", 60, &[]);
        alice.wait_for("media flowing", WAIT);
        bob.wait_for("media flowing", WAIT);
        // Let some audio be recorded first: the recording grows under a temporary name
        // beside the target (and the target does not exist until the call ends).
        let deadline = Instant::now() + WAIT;
        while partial_bytes(dir.path()) < 44 + 2 * 960 * 10 {
            assert!(Instant::now() < deadline, "nothing recorded");
            assert!(!heard.exists(), "the target appeared before the call ended");
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = Command::new("kill")
            .args([signal, &alice.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        alice.expect_exit_code(0);
        let s = read_stats(&dir.path().join("alice.json"));
        assert_eq!(s["ended_by"], "hung up", "{signal}: {s}");
        let played = s["frames_played"].as_u64().unwrap();
        assert!(played > 0, "{signal}: {s}");
        // The WAV's header agrees with its data: it was finalised, not cut off.
        let reader = hound::WavReader::open(&heard).unwrap();
        let samples = u64::from(reader.duration());
        assert_eq!(samples, played * 960, "{signal}");
        assert_eq!(
            std::fs::metadata(&heard).unwrap().len(),
            44 + 2 * samples,
            "{signal}"
        );
        // Bob sees Alice leave and ends normally.
        bob.expect_exit_code(0);
    }
}
