//! In-band FEC follows the path: two `aparte call --relay-only` processes meet through a real
//! signaling server that hands out TURN REST credentials for an in-process relay. On a path
//! that loses 10 % of datagrams (seeded) each encoder raises FEC above where it started, to the
//! loss its peer reports, and the receivers rebuild lost frames from it. On a clean path FEC is turned off
//! after a few clean reports, which gives the frame itself all 24 kbit/s (better quality, half
//! the encoder's CPU; `docs/MEDIA.md`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aparte_e2e_tests::relay::{test_seed, Impairment, RecordingRelay, RelayAuth};
use aparte_e2e_tests::{new_room, read_stats, stats_path, CallProcess, SignalingServer, WAIT};
use aparte_media::fec::{MIN_PERCENT, START_PERCENT};

/// Long enough for several RTCP report rounds (about one a second) after set-up.
const SECONDS: u64 = 8;

/// Runs one relay-only tone call over `impairment` and returns both sides' reports.
fn call_over(impairment: Impairment, seed: u64) -> [serde_json::Value; 2] {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let secret = b"fec-test-turn-secret-0123456789abcdef";
    let relay = runtime.block_on(RecordingRelay::start_full(
        impairment,
        Default::default(),
        seed,
        RelayAuth::Rest(secret.to_vec()),
    ));
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
    let stats = |name: &str| stats_path(dir.path(), name);
    let mut alice = spawn("alice");
    let mut bob = spawn("bob");
    for peer in [&mut alice, &mut bob] {
        peer.wait_for("SAS:", WAIT);
    }
    for peer in [&mut alice, &mut bob] {
        peer.expect_clean_exit();
    }
    runtime.block_on(relay.close());
    [read_stats(&stats("alice")), read_stats(&stats("bob"))]
}

#[test]
fn fec_follows_the_loss_the_peer_reports() {
    let seed = test_seed(0x5EED_0005);
    let lossy = Impairment {
        loss: 0.10,
        delay: Duration::from_millis(10),
        jitter: Duration::ZERO,
    };
    let [a, b] = call_over(lossy, seed);
    for (name, me, peer) in [("alice", &a, &b), ("bob", &b, &a)] {
        aparte_e2e_tests::assert_frames_add_up(me, peer);
        println!(
            "10 % loss, {name}: FEC planned for {} % at the end (peak {} %), peer lost {} %, \
             peer rebuilt {} frames from FEC, concealed {}",
            me["fec_expected_loss_percent"],
            me["fec_peak_expected_loss_percent"],
            me["peer_loss_percent"],
            peer["frames_fec_recovered"],
            peer["frames_concealed"]
        );
        let planned = me["fec_expected_loss_percent"].as_u64().unwrap();
        assert!(
            planned >= u64::from(MIN_PERCENT),
            "{name}: FEC for {planned} % on a lossy path"
        );
        // 10 % loss asks for 15 %: above the start, so the reports were followed.
        let peak = me["fec_peak_expected_loss_percent"].as_u64().unwrap();
        assert!(
            peak > u64::from(START_PERCENT),
            "{name}: FEC never rose above its start ({peak} %)"
        );
        assert!(
            peer["frames_fec_recovered"].as_u64().unwrap() > 0,
            "{name}'s peer rebuilt nothing from FEC: {peer}"
        );
    }
}

#[test]
fn fec_is_turned_off_on_a_clean_path() {
    let [a, b] = call_over(Impairment::default(), 0);
    for (name, me) in [("alice", &a), ("bob", &b)] {
        println!(
            "clean path, {name}: FEC planned for {} % at the end (peak {} %), lost {} %",
            me["fec_expected_loss_percent"],
            me["fec_peak_expected_loss_percent"],
            me["loss_percent"]
        );
        assert_eq!(me["loss_percent"].as_f64(), Some(0.0), "{me}");
        assert_eq!(me["fec_expected_loss_percent"].as_u64(), Some(0), "{me}");
        assert_eq!(
            me["fec_peak_expected_loss_percent"].as_u64(),
            Some(u64::from(START_PERCENT)),
            "{me}"
        );
    }
}
