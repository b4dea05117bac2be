//! Round-trip time and loss reach `Transport::link_stats` from webrtc-rs's RTCP statistics and
//! from the received sequence numbers, over a real loopback WebRTC call (ICE, DTLS-SRTP).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aparte_client::transport::{LinkStats, TransportConfig};
use aparte_e2e_tests::call::Call;
use aparte_e2e_tests::relay::{test_seed, Impairment, RecordingRelay};

/// RTCP reports go out about once a second; give them several rounds.
const REPORTS_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtt_and_loss_come_from_rtcp_and_sequence_numbers() {
    let config = TransportConfig {
        loopback_only: true,
        turn_tls: None,
        ..TransportConfig::default()
    };
    let mut call = Call::connect(&config, &config).await;
    // Send 20 ms frames both ways, in real time, until both sides have an RTT from RTCP.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + REPORTS_WITHIN;
    let mut sent = 0u64;
    let (a, b) = loop {
        tick.tick().await;
        call.alice.send_protected(&[0x55; 60]).await;
        call.bob.send_protected(&[0x66; 60]).await;
        sent += 1;
        let (a, b) = (
            call.alice.transport.link_stats(),
            call.bob.transport.link_stats(),
        );
        if a.rtt_ms.is_some() && b.rtt_ms.is_some() && a.peer_loss_percent.is_some() {
            break (a, b);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no RTT from RTCP after {sent} frames: alice {a:?}, bob {b:?}"
        );
    };
    println!("after {sent} frames: alice {a:?}\nbob {b:?}");
    for (name, s) in [("alice", a), ("bob", b)] {
        let rtt = s.rtt_ms.unwrap();
        assert!(
            (0.0..1000.0).contains(&rtt),
            "{name}: loopback RTT {rtt} ms"
        );
        assert_eq!(s.received_lost, 0, "{name}: nothing is lost on loopback");
        assert!(
            s.received_packets > 0 && s.received_packets <= sent,
            "{name}: {s:?}"
        );
        assert_eq!(s.peer_packets_lost, 0, "{name}: {s:?}");
        assert!(s.packets_sent_at_report > 0, "{name}: {s:?}");
        assert_eq!(s.received_loss_percent(), 0.0);
        assert_eq!(s.peer_total_loss_percent(), Some(0.0));
    }
    call.close().await;
}

/// The receiver counts exactly the gaps in what reached it, and the sender learns about them
/// from the peer's RTCP reports: through a relay that drops 10 % of all datagrams (seeded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_on_a_lossy_relay_is_counted_by_both_ends() {
    let seed = test_seed(0x5EED_0004);
    let impairment = Impairment {
        loss: 0.10,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };
    let relay = RecordingRelay::start_with(impairment, Default::default(), seed).await;
    let config = TransportConfig {
        ice_servers: vec![relay.ice_server()],
        relay_only: true,
        loopback_only: true,
        turn_tls: None,
    };
    let mut call = Call::connect(&config, &config).await;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut sent = 0u64;
    // At least 300 frames, and until each side has heard of some of its loss over RTCP.
    loop {
        tick.tick().await;
        call.alice.send_protected(&[0x55; 60]).await;
        call.bob.send_protected(&[0x66; 60]).await;
        sent += 1;
        let (a, b) = (
            call.alice.transport.link_stats(),
            call.bob.transport.link_stats(),
        );
        let heard = |s: &LinkStats| s.rtt_ms.is_some() && s.peer_packets_lost > 0;
        if sent >= 300 && heard(&a) && heard(&b) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: no loss reported over RTCP after {sent} frames: {a:?} {b:?}"
        );
    }
    // Let what is in flight land: wait until nothing more arrives for a second.
    let mut arrived = [0u64; 2];
    for (i, peer) in [&mut call.alice, &mut call.bob].into_iter().enumerate() {
        while peer.next_media(Duration::from_secs(1)).await.is_some() {
            arrived[i] += 1;
        }
    }
    let (a, b) = (
        call.alice.transport.link_stats(),
        call.bob.transport.link_stats(),
    );
    println!("seed {seed}, {sent} frames each way:\nalice {a:?}\nbob {b:?}");
    for (name, s, other, got) in [("alice", a, b, arrived[0]), ("bob", b, a, arrived[1])] {
        assert_eq!(
            s.received_packets, got,
            "{name}: every RTP packet is counted"
        );
        // Only losses after the last packet received are invisible to sequence numbers.
        let missing = sent - s.received_packets;
        assert!(
            s.received_lost <= missing && missing - s.received_lost <= 5,
            "{name}: {} counted lost, {missing} missing",
            s.received_lost
        );
        let percent = s.received_loss_percent();
        assert!(
            (4.0..=16.0).contains(&percent),
            "{name}: {percent} % lost at 10 %"
        );
        // What the peer reported about our stream is what it had counted by then.
        assert!(
            other.peer_packets_lost > 0 && other.peer_packets_lost <= s.received_lost,
            "{name}'s count {} vs the RTCP report about it {}",
            s.received_lost,
            other.peer_packets_lost
        );
        assert!(s.rtt_ms.is_some_and(|r| (0.0..1000.0).contains(&r)));
    }
    call.close().await;
    relay.close().await;
}
