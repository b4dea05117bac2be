//! The start of a call loses nothing (issue 15): 20 calls in a row, demo-style (two peers and
//! the real signaling server with its TURN relay in this process, relay-only, espeak-ng speech
//! both ways), and for each side of each call: every frame the peer protected
//! accounted for (decrypted and played, dropped by reason, rejected, refused or lost, with no
//! unexplained remainder), and the first second of speech heard as said (its NCC at least the
//! median bar the other call tests use; a frame skipped at the start shifts all that follows
//! by 20 ms and scored 0.35 here). The jitter buffer never drops a frame for latency in the
//! first second of playout (its start grace, unit-tested in `aparte-media`); the table prints
//! the drops of the whole call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use aparte_client::audio::{Input, Output};
use aparte_client::call::{run_call, CallOptions, CallReport, UserAction};
use aparte_client::captions::TranslationOptions;
use aparte_e2e_tests::call::{segment_nccs, MIN_MEDIAN_NCC};
use aparte_e2e_tests::{assert_frames_add_up, speak};
use aparte_e2ee::identity::KnownPeers;
use aparte_media::wav::read_mono_48k;
use aparte_session::Policy;
use aparte_signaling_protocol::RoomId;
use tokio::sync::mpsc;

const CALLS: usize = 20;

fn options(url: &str, room: &RoomId, input: &Path, output: &Path) -> CallOptions {
    CallOptions {
        server: url.to_owned(),
        tls: aparte_client::tls::client_config(None).unwrap(),
        turn_tls: None,
        room: room.clone(),
        token: None,
        input: Input::Wav(input.to_owned()),
        output: Output::Wav(output.to_owned()),
        relay_only: true,
        loopback_only: true,
        duration: None,
        policy: Policy::TrustOnFirstUse,
        identity: None,
        peer_name: None,
        known_peers: KnownPeers::new(),
        translation: TranslationOptions::default(),
    }
}

/// One call; returns both reports (alice, bob).
async fn one_call(url: &str, dir: &Path, k: usize) -> (CallReport, CallReport) {
    let room = RoomId::random(&mut rand_core::OsRng);
    let file = |name: &str| dir.join(format!("{k}-{name}"));
    let call = |me: &str| {
        let (_actions, actions_rx) = mpsc::channel::<UserAction>(1);
        let (updates, mut updates_rx) = mpsc::channel(64);
        tokio::spawn(async move { while updates_rx.recv().await.is_some() {} });
        let options = options(
            url,
            &room,
            &dir.join(format!("{me}.wav")),
            &file(&format!("{me}-heard.wav")),
        );
        async move {
            let report = run_call(options, actions_rx, updates).await;
            drop(_actions);
            report.unwrap()
        }
    };
    let alice = tokio::spawn(call("alice"));
    // Bob joins once Alice is in the room (as in the demo): he offers.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let bob = tokio::spawn(call("bob"));
    (alice.await.unwrap(), bob.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_calls_lose_nothing_at_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    speak(
        "Hello Bob, this is Alice. Can you hear the very first word I say?",
        &d.join("alice.wav"),
    );
    speak(
        "Hi Alice, Bob here. Yes, from the very first word.",
        &d.join("bob.wav"),
    );
    let said = |who: &str| read_mono_48k(d.join(format!("{who}.wav"))).unwrap();
    let server = Arc::new(
        aparte_signaling_server::Embedded::start_loopback()
            .await
            .unwrap(),
    );
    let url = server.ws_url();
    println!(
        "{:>4} {:>6} {:>9} {:>9} {:>7} {:>6} {:>6} {:>9}",
        "call", "side", "protected", "decrypted", "refused", "lost", "drop", "NCC 1st s"
    );
    let mut failures = Vec::new();
    for k in 0..CALLS {
        let (alice, bob) = one_call(&url, d, k).await;
        for (side, me, peer, peer_name) in [
            ("alice", &alice, &bob, "bob"),
            ("bob", &bob, &alice, "alice"),
        ] {
            let me_json = serde_json::to_value(me).unwrap();
            let peer_json = serde_json::to_value(peer).unwrap();
            let lost = assert_frames_add_up(&me_json, &peer_json);
            let heard = read_mono_48k(d.join(format!("{k}-{side}-heard.wav"))).unwrap();
            let first = segment_nccs(&said(peer_name), &heard)[0];
            println!(
                "{k:>4} {side:>6} {:>9} {:>9} {:>7} {lost:>6} {:>6} {first:>9.3}",
                peer.frames_protected,
                me.frames_decrypted,
                me.frames_refused,
                me.frames_dropped_for_latency,
            );
            if first < MIN_MEDIAN_NCC {
                failures.push(format!("call {k} {side}: first second NCC {first:.3}"));
            }
            assert_eq!(
                me.outcome,
                aparte_client::outcome::Outcome::Completed,
                "{me_json}"
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
