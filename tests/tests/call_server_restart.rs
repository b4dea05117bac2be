//! A relayed call survives a restart of the signaling server and its embedded TURN relay, as
//! an operator following the README would run it: no TURN secret configured, so the server
//! generates one once and keeps it in its state directory (`--state-dir`). The restart drops
//! every TURN allocation, so the media path breaks; both peers rejoin the room on the new
//! process, the offerer restarts ICE, and the new allocations are made with the credentials
//! of the first join, which the restarted server still accepts because its secret is the same.
//! (Before the secret was kept, every restart drew a new one and the call stayed down.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aparte_e2e_tests::{new_room, read_stats, stats_path, CallProcess, SignalingServer, WAIT};

const SECONDS: u64 = 30;

/// The two restarts run one after the other: each is two calls' worth of CPU, and their
/// timing (an outage, ICE restarts, rebuilds) is what is checked.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A port free on 127.0.0.1 right now (for TCP or UDP).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

#[test]
fn a_relayed_call_comes_back_after_the_server_restarts_with_its_kept_turn_secret() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    let stats = restart_mid_call(dir.path(), &args, &args);
    for s in stats {
        // The old credentials still work: ICE restarts bring it back, no rebuild needed.
        assert_eq!(s["transport_rebuilds"], 0, "{s}");
    }
}

/// The operator changes the TURN secret (or the server draws a new one, as it did before it
/// kept one): the credentials of the first join are refused, so an ICE restart cannot bring
/// the path back; the peers rebuild their peer connections with the credentials of the
/// rejoin, and the call comes back with the same keys.
#[test]
fn a_relayed_call_comes_back_with_fresh_credentials_when_the_turn_secret_changed() {
    let dir = tempfile::tempdir().unwrap();
    let before = ["--turn-secret", "0123456789abcdef0123456789abcdef"];
    let after = ["--turn-secret", "fedcba9876543210fedcba9876543210"];
    let stats = restart_mid_call(dir.path(), &before, &after);
    let rebuilds: u64 = stats
        .iter()
        .map(|s| s["transport_rebuilds"].as_u64().unwrap())
        .sum();
    assert!(rebuilds >= 2, "both sides rebuilt: {stats:?}");
}

/// A relay-only call through a server started with `before`, restarted mid-call on the same
/// ports with `after`; returns both sides' stats once the link is back and the call ended.
fn restart_mid_call(
    dir: &std::path::Path,
    before: &[&str],
    after: &[&str],
) -> [serde_json::Value; 2] {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let listen = format!("127.0.0.1:{}", free_port(false));
    let turn = format!("127.0.0.1:{}", free_port(true));
    let with_turn = |extra: &[&str]| {
        let mut args = vec!["--turn-listen", turn.as_str()];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let (first, second) = (with_turn(before), with_turn(after));
    let server = SignalingServer::start_on(&listen, &as_strs(&first));
    let room = new_room();
    let spawn = |name: &str| {
        CallProcess::spawn_tone(&server.url(), &room, dir, name, SECONDS, &["--relay-only"])
    };
    let (mut alice, mut bob) = (spawn("alice"), spawn("bob"));
    for peer in [&mut alice, &mut bob] {
        peer.wait_for("media flowing", WAIT);
    }

    drop(server); // the operator restarts the service…
    let _restarted = SignalingServer::start_on(&listen, &as_strs(&second));
    for peer in [&mut alice, &mut bob] {
        peer.wait_for("rejoined the room", WAIT);
        peer.wait_for("link back after", Duration::from_secs(40));
    }
    alice.expect_exit_code(0);
    bob.expect_exit_code(0);
    let (a, b) = (
        read_stats(&stats_path(dir, "alice")),
        read_stats(&stats_path(dir, "bob")),
    );
    for (name, me, other) in [("alice", &a, &b), ("bob", &b, &a)] {
        println!(
            "{name}: link down {} ms over {} recoveries, {} ICE restarts, {} rebuilds, {} rejoins; \
             decrypted {} of {} sent",
            me["link_down_ms"],
            me["link_recoveries"],
            me["ice_restarts"],
            me["transport_rebuilds"],
            me["signaling_rejoins"],
            me["frames_decrypted"],
            other["frames_sent"]
        );
        assert_eq!(me["relayed"], true, "{me}");
        assert!(me["link_recoveries"].as_u64().unwrap() >= 1, "{me}");
        aparte_e2e_tests::assert_frames_add_up(me, other);
        // Media flowed again after the outage: far more frames than before it.
        let down_frames = me["link_down_ms"].as_u64().unwrap() / 20;
        let decrypted = me["frames_decrypted"].as_u64().unwrap();
        let sent = other["frames_sent"].as_u64().unwrap();
        assert!(
            decrypted + down_frames + 100 >= sent,
            "{name}: decrypted {decrypted} of {sent}, down {down_frames} frames: {me}"
        );
    }
    [a, b]
}
