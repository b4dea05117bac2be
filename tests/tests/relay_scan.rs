//! A relay-only call through an in-process TURN relay that records every datagram it sees
//! (listener in and out, relay sockets in and out), with a scan of all of it for the call's
//! plaintext Opus frames.
//!
//! What the tests show:
//! - every media packet of the call crossed the relay: both peers' selected ICE pairs are
//!   relayed, and the relay sockets carried exactly as many Opus RTP packets as were sent;
//! - no 16-byte window of any Opus frame of the call appears anywhere in the relay's traffic;
//! - the payload the receiving RTP layer hands over is ciphertext (no window of any frame in
//!   it), and decrypts to exactly the frame that was sent;
//! - positive controls (the scanner is not blind): with e2ee off (the test writes raw Opus into
//!   the transport; the product has no such switch) the same scanner finds every frame in the
//!   RTP payloads; and when Opus frames do cross the relay in clear (two plain TURN clients,
//!   since webrtc-rs 0.17 has no NULL SRTP cipher to turn DTLS-SRTP off), the relay-level scan
//!   finds every one of them in the recording.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aparte_client::transport::TransportConfig;
use aparte_e2e_tests::call::{speech, Call, CallPeer};
use aparte_e2e_tests::relay::{is_opus_rtp, Leg, PlaintextScanner, RecordingRelay};

const ALICE_SAYS: &str = "Hello Bob, this call goes through a relay that records everything.";
const BOB_SAYS: &str = "Hi Alice. The relay should hear nothing but noise.";

fn relay_only(relay: &RecordingRelay) -> TransportConfig {
    TransportConfig {
        ice_servers: vec![relay.ice_server()],
        relay_only: true,
        loopback_only: true,
        turn_tls: None,
    }
}

/// Sends `frames` from each side at once, one per 20 ms tick, `protected` or raw.
async fn send_both_ways(call: &mut Call, a: &[Vec<u8>], b: &[Vec<u8>], protected: bool) {
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for i in 0..a.len().max(b.len()) {
        ticker.tick().await;
        for (peer, frames) in [(&mut call.alice, a), (&mut call.bob, b)] {
            let Some(f) = frames.get(i) else { continue };
            if protected {
                peer.send_protected(f).await;
            } else {
                peer.send_raw(f.clone()).await;
            }
        }
    }
}

/// Reads `n` payloads from `peer`, or fails.
async fn receive(peer: &mut CallPeer, n: usize) -> Vec<bytes::Bytes> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match peer.next_media(Duration::from_secs(10)).await {
            Some(a) => got.push(a.payload),
            None => panic!("only {} of {n} frames arrived", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_carries_only_ciphertext_and_the_rtp_layer_hands_over_ciphertext() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (_, alice_frames) = speech(ALICE_SAYS, dir.path(), "alice.wav");
    let (_, bob_frames) = speech(BOB_SAYS, dir.path(), "bob.wav");
    let all_frames: Vec<Vec<u8>> = alice_frames.iter().chain(&bob_frames).cloned().collect();
    let scanner = PlaintextScanner::new(&all_frames);
    println!(
        "{} Opus frames ({} from Alice, {} from Bob), {} scannable",
        all_frames.len(),
        alice_frames.len(),
        bob_frames.len(),
        scanner.scannable()
    );
    // Nearly every speech frame has a distinctive window; without them the scan proves little.
    assert!(scanner.scannable() * 10 >= all_frames.len() * 9);

    let relay = RecordingRelay::start().await;
    let mut call = Call::connect(&relay_only(&relay), &relay_only(&relay)).await;
    assert!(
        call.alice.transport.is_relayed().await,
        "alice's pair is relayed"
    );
    assert!(
        call.bob.transport.is_relayed().await,
        "bob's pair is relayed"
    );
    let before_media = relay.counts();

    send_both_ways(&mut call, &alice_frames, &bob_frames, true).await;
    let at_bob = receive(&mut call.bob, alice_frames.len()).await;
    let at_alice = receive(&mut call.alice, bob_frames.len()).await;

    // The RTP layer hands over ciphertext that decrypts to exactly what was sent.
    for (peer, payloads, sent) in [
        (&mut call.bob, &at_bob, &alice_frames),
        (&mut call.alice, &at_alice, &bob_frames),
    ] {
        let mut decrypted = Vec::new();
        for p in payloads {
            assert!(
                scanner.find(p).is_empty(),
                "the RTP layer handed over a payload containing plaintext Opus"
            );
            assert!(!sent.iter().any(|f| f.as_slice() == &p[..]));
            decrypted.push(peer.security.unprotect_media(p, 0).expect("decrypts"));
        }
        assert_eq!(&decrypted, sent, "every frame decrypted, in order, once");
        let stats = peer.security.media_stats().unwrap();
        assert_eq!(stats.rejected_total(), 0);
    }

    // Every media packet crossed the relay: the relay sockets sent and received exactly as
    // many Opus RTP packets as the two peers sent (RTCP and keepalives are not counted).
    let log = relay.datagrams();
    let rtp = |leg: Leg| {
        log.iter()
            .filter(|d| d.leg == leg && is_opus_rtp(&d.bytes))
            .count()
    };
    let sent_total = all_frames.len();
    println!(
        "relay: {} datagrams recorded; Opus RTP out {} / in {} for {sent_total} frames sent; \
         relay sockets sent {} datagrams during the media phase",
        log.len(),
        rtp(Leg::RelayOut),
        rtp(Leg::RelayIn),
        relay.counts().relay_out - before_media.relay_out
    );
    assert_eq!(rtp(Leg::RelayOut), sent_total);
    assert_eq!(rtp(Leg::RelayIn), sent_total);

    // The scan of everything the relay saw finds no plaintext frame.
    let found = scanner.scan(&log);
    assert!(
        found.is_empty(),
        "{} plaintext Opus frames found in the relay's traffic",
        found.len()
    );

    call.close().await;
    relay.close().await;
    println!("test time {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positive_controls_the_scanner_finds_plaintext_where_it_exists() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (_, frames) = speech(ALICE_SAYS, dir.path(), "alice.wav");
    let scanner = PlaintextScanner::new(&frames);
    let scannable = scanner.scannable();
    println!("{} Opus frames, {scannable} scannable", frames.len());

    let relay = RecordingRelay::start().await;
    let mut call = Call::connect(&relay_only(&relay), &relay_only(&relay)).await;
    assert!(call.alice.transport.is_relayed().await && call.bob.transport.is_relayed().await);

    // Control 1, E2EE off: raw Opus into the transport. The RTP layer hands it over as is,
    // and the scanner finds every scannable frame there...
    send_both_ways(&mut call, &frames, &[], false).await;
    let at_bob = receive(&mut call.bob, frames.len()).await;
    let mut found_rtp = HashSet::new();
    for p in &at_bob {
        found_rtp.extend(scanner.find(p));
    }
    println!(
        "e2ee off: scanner found {} of {scannable} scannable frames in the RTP payloads",
        found_rtp.len()
    );
    assert_eq!(found_rtp.len(), scannable);
    // ... while DTLS-SRTP alone still hides them from the relay.
    let found_relay_srtp = scanner.scan(&relay.datagrams());
    println!(
        "e2ee off: scanner found {} frames in the relay's traffic (DTLS-SRTP hides them)",
        found_relay_srtp.len()
    );
    assert!(found_relay_srtp.is_empty());
    call.close().await;

    // Control 2: the same frames relayed in clear by two plain TURN clients. The relay
    // recording now holds them, and the same scan must find every one.
    let mark = relay.recorded();
    let delivered = relay.relay_in_clear(&frames).await;
    assert_eq!(delivered, frames.len(), "the clear exchange went through");
    let recording = relay.datagrams();
    let found_clear = scanner.scan(&recording[mark..]);
    let legs: HashSet<Leg> = recording[mark..]
        .iter()
        .filter(|d| !scanner.find(&d.bytes).is_empty())
        .map(|d| d.leg)
        .collect();
    println!(
        "in clear: scanner found {} of {scannable} scannable frames in the relay's traffic, \
         on legs {legs:?}",
        found_clear.len()
    );
    assert_eq!(found_clear.len(), scannable);
    // Seen on the way in, between the relay sockets, and on the way out.
    assert_eq!(legs.len(), 4);

    relay.close().await;
    println!("test time {:.1} s", started.elapsed().as_secs_f64());
}
