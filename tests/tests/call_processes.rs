//! A real call between two `aparte call` processes through a real `aparte-signaling` process,
//! on loopback: espeak-ng speech goes both ways at once, encrypted frame by frame.
//!
//! Metric: each received WAV is compared with what the other side sent, in 1-second segments,
//! each aligned independently (the jitter buffer may shift the delay by whole frames during a
//! call) within ±250 ms. Over the segments that carry speech, the median normalized
//! cross-correlation must be at least 0.80 and the mean at least 0.60. Measured on this path:
//! 0.95–0.96 for every segment on an idle machine. On a loaded one (CI, or two busy loops on
//! the two cores), one segment in six or seven can lose its alignment to a late audio tick
//! (mean 0.795–0.82), which the median tolerates. A path that garbles or drops speech fails
//! both: its segments score near 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use aparte_e2e_tests::call::assert_heard_matches_said;
use aparte_e2e_tests::{
    assert_frames_add_up, binary, frames_rejected_total, new_room, read_stats, speak,
    SignalingServer,
};

fn call(
    server: &SignalingServer,
    room: &str,
    home: &Path,
    input: &Path,
    output: &Path,
    stats: &Path,
) -> std::process::Child {
    Command::new(binary("aparte"))
        .env("APARTE_HOME", home)
        .args([
            "call",
            "--server",
            &server.url(),
            &format!("--room={room}"),
            "--loopback-only",
            "--tofu",
        ])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--stats-json")
        .arg(stats)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn aparte call")
}

fn sas_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .find_map(|l| l.split_once("SAS: ").map(|(_, s)| s.to_owned()))
        .unwrap_or_else(|| panic!("no SAS shown:\n{stderr}"))
}

#[test]
fn speech_both_ways_through_a_real_signaling_server_matches_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    speak(
        "Hello Bob, this is Alice calling on an encrypted line. Can you hear me clearly?",
        &p("alice.wav"),
    );
    speak(
        "Hi Alice, Bob here. Yes, loud and clear. Nobody else can listen to this call.",
        &p("bob.wav"),
    );

    let server = SignalingServer::start(&[]);
    let room = new_room();

    let alice = call(
        &server,
        &room,
        &p("home-a"),
        &p("alice.wav"),
        &p("alice-heard.wav"),
        &p("alice.json"),
    );
    let bob = call(
        &server,
        &room,
        &p("home-b"),
        &p("bob.wav"),
        &p("bob-heard.wav"),
        &p("bob.json"),
    );
    let (alice, bob) = (
        alice.wait_with_output().unwrap(),
        bob.wait_with_output().unwrap(),
    );
    assert!(
        alice.status.success(),
        "alice: {}",
        String::from_utf8_lossy(&alice.stderr)
    );
    assert!(
        bob.status.success(),
        "bob: {}",
        String::from_utf8_lossy(&bob.stderr)
    );

    // Both people see the same SAS.
    assert_eq!(sas_line(&alice), sas_line(&bob));

    // Every frame sent was decrypted by the other side; nothing was rejected.
    let (sa, sb) = (read_stats(&p("alice.json")), read_stats(&p("bob.json")));
    for (me, other) in [(&sa, &sb), (&sb, &sa)] {
        assert!(me["frames_sent"].as_u64().unwrap() > 100);
        assert_eq!(
            me["frames_decrypted"], other["frames_sent"],
            "{me}\n{other}"
        );
        let rejected = frames_rejected_total(me);
        assert_eq!(rejected, 0);
        assert_frames_add_up(me, other);
        assert_eq!(me["relayed"], false);
    }

    // What each side heard matches what the other said.
    for (said, heard) in [
        ("alice.wav", "bob-heard.wav"),
        ("bob.wav", "alice-heard.wav"),
    ] {
        assert_heard_matches_said(&p(said), &p(heard));
    }
}
