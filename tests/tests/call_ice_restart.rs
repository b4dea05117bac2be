//! A network change mid-call: the path a relay-only call uses dies and so does one side's
//! signaling connection; the call comes back over a new path by ICE restart, with the same keys
//! (no new e2ee handshake, same SAS).
//!
//! Two `aparte call` processes meet through a real signaling server process, which hands out
//! TURN REST credentials for an in-process recording relay (`--turn-url`, `--turn-secret`).
//! Bob (the offerer) reaches the server through a TCP proxy the test can cut. Once encrypted
//! media flows through the relay, the test cuts every allocation made so far and Bob's
//! signaling connection, and refuses his reconnections for a few seconds, as when a laptop
//! moves to another network: its relayed address and its WebSocket die, and it takes a moment
//! to get online again. Bob sees the link go down but cannot restart ICE without signaling; he
//! keeps trying to rejoin the room. Alice sees him drop off the signaling server and waits.
//! Once the proxy lets him through, Bob rejoins, Alice takes his new session as her peer, Bob
//! restarts ICE (new credentials, a new TURN allocation on each side), and media flows again.
//!
//! What must hold: Bob rejoined and restarted ICE only after signaling was back; both sides
//! report the link back; the new allocations carry the rest of the call both ways; every SAS
//! either side ever showed is the same one (a second handshake would have made a new SAS);
//! nothing was rejected; and each side decrypted all the frames the other sent, except those
//! sent while the path was dead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use aparte_client::transport::{Signal, TransportConfig, TransportError};
use aparte_e2e_tests::call::{Call, CallPeer};
use aparte_e2e_tests::proxy::TcpProxy;
use aparte_e2e_tests::relay::RecordingRelay;
use aparte_e2e_tests::{
    frames_rejected_total, new_room, read_stats, stats_path, CallProcess, SignalingServer, WAIT,
};

/// Call length (counted from the first frame sent).
const SECONDS: u64 = 20;
/// How long Bob stays offline (his reconnections refused): longer than the 3 s it takes to
/// notice the dead path, shorter than the 10 s Alice waits for a peer that dropped off.
const OFFLINE: Duration = Duration::from_secs(5);
/// RTP packets each new allocation must relay after the restart: 5 s of 20 ms frames.
const MIN_PACKETS_AFTER_RESTART: u64 = 250;
/// Frames a side may lose to the outage: those sent until the link is reported down (3 s,
/// webrtc-rs's disconnected timeout as the client sets it) and, as long as the path is dead
/// and signaling is down (5 s in all), at 50 frames a second, with a margin.
const MAX_FRAMES_LOST_TO_OUTAGE: u64 = 400;

/// Polls `condition` every 20 ms until it holds; panics with `what` after `within`.
fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every SAS (the quoted words) a process showed.
fn sas_shown(peer: &CallProcess) -> Vec<String> {
    peer.seen()
        .iter()
        .filter_map(|line| line.split_once("SAS: \"")?.1.split_once('"'))
        .map(|(words, _)| words.to_owned())
        .collect()
}

#[test]
fn a_call_survives_a_network_change_by_rejoining_and_restarting_ice_with_the_same_keys() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let secret = b"ice-restart-test-turn-secret-0123456789";
    let relay = runtime.block_on(RecordingRelay::start_rest(secret));
    let server = SignalingServer::start_with_relay(relay.addr(), secret);
    let proxy = runtime.block_on(TcpProxy::start(server.addr));
    let bob_url = format!("ws://{}/ws", proxy.addr());
    let room = new_room();
    let dir = tempfile::tempdir().unwrap();
    let spawn = |name: &str, url: &str| {
        CallProcess::spawn_tone(url, &room, dir.path(), name, SECONDS, &["--relay-only"])
    };
    let stats = |name: &str| stats_path(dir.path(), name);
    // Alice waits in the room, so Bob (second in) sends the offer and owns ICE restarts.
    let mut alice = spawn("alice", &server.url());
    alice.wait_for("waiting for the peer", WAIT);
    let mut bob = spawn("bob", &bob_url);
    for peer in [&mut alice, &mut bob] {
        peer.wait_for("link: Connected", WAIT);
        peer.wait_for("SAS:", WAIT);
    }
    wait_until("media through the relay both ways", WAIT, || {
        let counts = relay.rtp_relayed_since(0);
        counts.len() >= 2 && counts[1] >= 100
    });

    let cut = relay.cut_allocations();
    proxy.cut();
    let cut_at = Instant::now();
    println!("cut {cut} allocations and Bob's signaling: the call's path is dead");
    alice.wait_for("the peer dropped off the signaling server", WAIT);
    bob.wait_for("reconnecting to the signaling server", WAIT);
    // Bob's link goes down (3 s without packets) while he is still offline.
    bob.wait_for("link: Disconnected", WAIT);
    assert!(
        !bob.seen().iter().any(|l| l.contains("restarting ICE")),
        "no ICE restart without signaling: {:?}",
        bob.seen()
    );
    wait_until("Bob's reconnections refused while offline", WAIT, || {
        proxy.refused() > 0 && cut_at.elapsed() >= OFFLINE
    });
    proxy.restore();
    let restored_after = cut_at.elapsed();
    bob.wait_for("rejoined the room", WAIT);
    alice.wait_for("the peer is back on the signaling server", WAIT);
    bob.wait_for("restarting ICE", WAIT);
    let restarted_after = cut_at.elapsed();
    for peer in [&mut bob, &mut alice] {
        peer.wait_for("link back after", WAIT);
    }
    let back_after = cut_at.elapsed();
    println!(
        "since the cut: Bob's reconnections refused {} times until {:.2} s; Bob restarted ICE \
         at {:.2} s; both links back at {:.2} s",
        proxy.refused(),
        restored_after.as_secs_f64(),
        restarted_after.as_secs_f64(),
        back_after.as_secs_f64()
    );

    alice.expect_clean_exit();
    bob.expect_clean_exit();
    let after = relay.rtp_relayed_since(cut);
    println!("RTP packets relayed by the allocations made after the cut: {after:?}");
    assert!(
        after.len() >= 2 && after[1] >= MIN_PACKETS_AFTER_RESTART,
        "media did not resume both ways through new allocations: {after:?}"
    );

    // One SAS, the same on both sides, before and after the restart.
    let (alice_sas, bob_sas) = (sas_shown(&alice), sas_shown(&bob));
    assert!(!alice_sas.is_empty() && !bob_sas.is_empty());
    assert!(
        alice_sas.iter().chain(&bob_sas).all(|s| *s == alice_sas[0]),
        "a SAS changed: alice {alice_sas:?}, bob {bob_sas:?}"
    );

    let (a, b) = (read_stats(&stats("alice")), read_stats(&stats("bob")));
    assert!(b["offerer"].as_bool().unwrap() && !a["offerer"].as_bool().unwrap());
    assert!(b["ice_restarts"].as_u64().unwrap() >= 1, "{b}");
    assert!(b["signaling_rejoins"].as_u64().unwrap() >= 1, "{b}");
    assert_eq!(a["signaling_rejoins"].as_u64(), Some(0), "{a}");
    assert_eq!(a["ice_restarts"].as_u64(), Some(0), "the answerer follows");
    for (name, me, other) in [("alice", &a, &b), ("bob", &b, &a)] {
        aparte_e2e_tests::assert_frames_add_up(me, other);
        println!(
            "{name}: link down {} ms, {} recoveries, decrypted {} of {} sent, relayed {}",
            me["link_down_ms"],
            me["link_recoveries"],
            me["frames_decrypted"],
            other["frames_sent"],
            me["relayed"]
        );
        assert!(me["link_recoveries"].as_u64().unwrap() >= 1, "{me}");
        // The outage counts from the last packet before the cut to the link being back.
        let down = me["link_down_ms"].as_u64().unwrap();
        let cut_to_back = u64::try_from(back_after.as_millis()).unwrap();
        assert!(
            (1000..=cut_to_back + 1000).contains(&down),
            "{name}: link down {down} ms, cut to back {cut_to_back} ms"
        );
        assert_eq!(me["relayed"].as_bool(), Some(true));
        let rejected = frames_rejected_total(me);
        assert_eq!(rejected, 0, "{name} rejected frames: {me}");
        let sent = other["frames_sent"].as_u64().unwrap();
        let decrypted = me["frames_decrypted"].as_u64().unwrap();
        assert!(
            decrypted + MAX_FRAMES_LOST_TO_OUTAGE >= sent,
            "{name}: decrypted {decrypted} of {sent}"
        );
        assert!(
            matches!(
                me["ended_by"].as_str(),
                Some("duration reached" | "the peer hung up")
            ),
            "{me}"
        );
    }
    runtime.block_on(relay.close());
}

/// The ICE username fragment an SDP declares.
fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
}

/// Sends a frame each way every 20 ms until each side has decrypted `frames` new ones.
async fn media_flows_both_ways(call: &mut Call, frames: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let deadline = Instant::now() + WAIT;
    let mut got = [0usize; 2];
    while got.iter().any(|&n| n < frames) {
        assert!(Instant::now() < deadline, "media stalled: {got:?}");
        tick.tick().await;
        call.alice.send_protected(&[0x55; 60]).await;
        call.bob.send_protected(&[0x66; 60]).await;
        for (i, peer) in [&mut call.alice, &mut call.bob].into_iter().enumerate() {
            while let Ok(a) = peer.media.try_recv() {
                decrypt(peer, &a.payload, a.arrival_ms);
                got[i] += 1;
            }
        }
    }
}

fn decrypt(peer: &mut CallPeer, payload: &[u8], at_ms: u64) {
    peer.security
        .unprotect_media(payload, at_ms)
        .expect("the same keys before and after the restart");
}

/// The transport half on its own (host candidates on loopback, no relay): the offerer's
/// restart makes new ICE credentials; a restart offer whose DTLS fingerprint was swapped (a
/// signaling server trying to slip in its own certificate) is refused; the genuine one moves
/// the call to new candidates, and the e2ee sessions made before it keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_restart_keeps_the_sessions_and_refuses_a_swapped_fingerprint() {
    let config = TransportConfig {
        loopback_only: true,
        turn_tls: None,
        ..TransportConfig::default()
    };
    let mut call = Call::connect(&config, &config).await;
    media_flows_both_ways(&mut call, 25).await;
    let pair_before = call.alice.transport.selected_pair().await;
    assert!(pair_before.is_some());

    call.hold_candidates(true);
    let Signal::Offer(offer) = call.alice.transport.restart_ice().await.unwrap() else {
        panic!("a restart makes an offer");
    };
    let (before, after) = (ice_ufrag(&call.first_offer), ice_ufrag(&offer));
    assert!(
        before.is_some() && after.is_some() && before != after,
        "new ICE credentials: {before:?} -> {after:?}"
    );
    assert!(
        matches!(
            call.bob.transport.restart_ice().await,
            Err(TransportError::UnexpectedSignal(_))
        ),
        "only the offerer restarts"
    );

    // The same offer with another certificate's fingerprint: refused, nothing applied.
    let swapped = offer
        .lines()
        .map(|l| match l.strip_prefix("a=fingerprint:sha-256 ") {
            Some(hex) => format!(
                "a=fingerprint:sha-256 {}",
                hex.replace(|c: char| c.is_ascii_hexdigit(), "A")
            ),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    assert_ne!(swapped, offer);
    assert!(matches!(
        call.bob
            .transport
            .apply_signal(Signal::Offer(swapped))
            .await,
        Err(TransportError::FingerprintChanged)
    ));

    let answer = call
        .bob
        .transport
        .apply_signal(Signal::Offer(offer))
        .await
        .unwrap()
        .expect("an answer");
    call.alice.transport.apply_signal(answer).await.unwrap();
    call.hold_candidates(false);
    media_flows_both_ways(&mut call, 50).await;
    // The restart gathered new candidates (new sockets): the media now flows over a new pair.
    let pair_after = call.alice.transport.selected_pair().await;
    println!("selected pair before {pair_before:?}, after {pair_after:?}");
    assert!(
        pair_after.is_some() && pair_after != pair_before,
        "still on the old pair: {pair_before:?}"
    );
    for peer in [&call.alice, &call.bob] {
        let stats = peer.security.media_stats().unwrap();
        assert_eq!(stats.rejected_total(), 0);
    }
    call.close().await;
}
