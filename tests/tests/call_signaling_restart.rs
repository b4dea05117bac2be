//! The signaling server is only needed to set a call up: when it is killed and restarted in
//! the middle of a call, the encrypted media keeps flowing peer to peer and nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aparte_e2e_tests::{new_room, read_stats, stats_path, CallProcess, SignalingServer, WAIT};

const SECONDS: u64 = 6;

#[test]
fn media_keeps_flowing_when_the_signaling_server_restarts_mid_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = SignalingServer::start(&[]);
    let room = new_room();
    let spawn =
        |name: &str| CallProcess::spawn_tone(&server.url(), &room, dir.path(), name, SECONDS, &[]);
    let stats = |name: &str| stats_path(dir.path(), name);
    let (mut alice, mut bob) = (spawn("alice"), spawn("bob"));
    // Set up: link connected and keys confirmed (the SAS is shown) on both sides.
    for peer in [&mut alice, &mut bob] {
        peer.wait_for("link: Connected", WAIT);
        peer.wait_for("SAS:", WAIT);
    }

    drop(server); // kill the signaling server mid-call…
    alice.wait_for("signaling connection lost", WAIT);
    bob.wait_for("signaling connection lost", WAIT);
    let _restarted = SignalingServer::start(&[]); // …and bring a new one up, as an operator would

    alice.expect_clean_exit();
    bob.expect_clean_exit();
    let (a, b) = (read_stats(&stats("alice")), read_stats(&stats("bob")));
    for (me, other) in [(&a, &b), (&b, &a)] {
        let sent = other["frames_sent"].as_u64().unwrap();
        let decrypted = me["frames_decrypted"].as_u64().unwrap();
        // 50 frames a second for the whole call, most of it after the server died.
        assert!(sent >= 50 * (SECONDS - 1), "only {sent} frames sent");
        aparte_e2e_tests::assert_frames_add_up(me, other);
        // At most the frame in flight at hang-up is missing.
        assert!(decrypted + 1 >= sent, "sent {sent}, decrypted {decrypted}");
        assert_eq!(
            me["ended_by"]
                .as_str()
                .map(|s| s == "duration reached" || s == "the peer hung up"),
            Some(true),
            "{me}"
        );
    }
}
