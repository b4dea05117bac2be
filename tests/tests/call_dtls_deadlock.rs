//! webrtc-rs's DTLS last-flight deadlock, and the way out: two `aparte call --relay-only`
//! processes meet through a real signaling server that hands out TURN REST credentials for an
//! in-process relay, and the relay drops exactly one datagram, the one carrying the DTLS
//! server's final ChangeCipherSpec (the second ChangeCipherSpec of the handshake).
//!
//! webrtc-rs's DTLS server does not repeat its last flight when the client repeats its own
//! (RFC 6347 §4.2.4 says it must), so its side reports the link connected while the client
//! retransmits forever (docs/WEBRTC.md). Without the client's recovery this call never sets
//! up and both processes end with "call setup timed out". With it, the stuck side notices a
//! working ICE pair with no DTLS after 8 s, both sides build new peer connections with the
//! same certificates, and the call goes on with the same keys: one SAS on both sides, media
//! both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aparte_e2e_tests::relay::RecordingRelay;
use aparte_e2e_tests::{new_room, read_stats, stats_path, CallProcess, SignalingServer};

/// Media time after set-up. Longer than the stall detection: the DTLS server's side counts
/// its call as set up (and its `--duration` as running) until the rebuild resets it.
const SECONDS: u64 = 10;
/// The SAS comes from the e2ee handshake over signaling, before DTLS; the call itself needs
/// the 8 s stall detection plus a new set-up.
const SET_UP_WITHIN: Duration = Duration::from_secs(25);

#[test]
fn a_lost_final_dtls_flight_is_recovered_by_rebuilding_the_connection() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let secret = b"dtls-test-turn-secret-0123456789abcdef";
    let relay = runtime.block_on(RecordingRelay::start_rest(secret));
    relay.drop_change_cipher_spec(2);
    let server = SignalingServer::start_with_relay(relay.addr(), secret);
    let room = new_room();
    let dir = tempfile::tempdir().unwrap();
    let spawn = |name: &str| {
        CallProcess::spawn_tone(
            &server.url(),
            &room,
            dir.path(),
            name,
            SECONDS,
            &["--relay-only"],
        )
    };
    let mut alice = spawn("alice");
    let mut bob = spawn("bob");
    for peer in [&mut alice, &mut bob] {
        peer.wait_for("connecting again", SET_UP_WITHIN);
    }
    for peer in [&mut alice, &mut bob] {
        peer.expect_clean_exit();
    }
    let counts = relay.counts();
    runtime.block_on(relay.close());
    assert_eq!(
        counts.change_cipher_specs_dropped, 1,
        "the relay dropped the server's final flight: {counts:?}"
    );
    let a = read_stats(&stats_path(dir.path(), "alice"));
    let b = read_stats(&stats_path(dir.path(), "bob"));
    println!(
        "ended by: alice {}, bob {}; rebuilds: alice {}, bob {}; setup {} / {} ms; frames \
         decrypted {} / {}; relay {counts:?}",
        a["ended_by"],
        b["ended_by"],
        a["transport_rebuilds"],
        b["transport_rebuilds"],
        a["setup_ms"],
        b["setup_ms"],
        a["frames_decrypted"],
        b["frames_decrypted"]
    );
    for (name, me, peer) in [("alice", &a, &b), ("bob", &b, &a)] {
        aparte_e2e_tests::assert_frames_add_up(me, peer);
        assert_eq!(me["transport_rebuilds"], 1, "{name}: {me}");
        assert_eq!(me["ended_by"], "duration reached", "{name}: {me}");
        assert_eq!(me["frames_rejected"]["forged"], 0, "{name}");
        let decrypted = me["frames_decrypted"].as_u64().unwrap();
        // SECONDS of media at 50 frames a second, less what the other side sent before our
        // side counted the call as set up, or after it hung up.
        assert!(
            decrypted >= 40 * SECONDS,
            "{name} decrypted only {decrypted}: {me}"
        );
        assert!(
            decrypted <= peer["frames_sent"].as_u64().unwrap(),
            "{name}: more decrypted than sent"
        );
    }
}
