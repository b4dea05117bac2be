//! Calls through a changing network (issue 16), in the field: a VPS running
//! `aparte-signaling` with TLS and its TURN relay, two homes behind NAT routers, real `aparte`
//! processes, all in network namespaces (`aparte_e2e_tests::netns`).
//!
//! **An address change mid-call.** The ISP gives Alice's home a new public address while the
//! two talk: every NAT mapping of her home dies at once, her WebSocket to the server and the
//! media path with it, and nobody is told. The call must come back by itself, with the same
//! keys, within 3 s of the last packet before the change: media silence makes each side check
//! its signaling connection with a ping; Alice's goes unanswered, so she reconnects at once
//! with her resume token (the server hands her old seat over without waiting for its idle
//! timeout), and the offerer restarts ICE as soon as both are back. Both roles are tried for
//! the side whose address changes. Each prints the gap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use aparte_e2e_tests::field::{transcript, Field, Running};
use aparte_e2e_tests::netns::{Nat, Topology, VPS_IP};
use aparte_e2e_tests::{frames_rejected_total, read_stats, speak, WAIT};

/// The calls run one after the other: each is two calls' (and Whisper's) worth of CPU on a
/// small machine, and their timing is what is checked.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The longest the link may stay down after the address change (the bar).
const MAX_GAP_MS: u64 = 3000;

/// The gap a call printed in "link back after N ms".
fn gap_ms(peer: &Running) -> u64 {
    peer.seen
        .iter()
        .find_map(|l| {
            let rest = l.split_once("link back after ")?.1;
            rest.split_once(" ms")?.0.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no gap printed:\n{}", peer.seen.join("\n")))
}

/// The VPS (TLS on 443 with a certificate from DEPLOY.md's own-CA recipe, TURN on 3478) and
/// two homes behind NAT, with a room.
fn start_field() -> Field {
    Field::start(
        Topology::build(Nat::Masquerade),
        &format!("wss://{VPS_IP}/ws"),
        &[
            "--listen",
            "0.0.0.0:443",
            "--turn-listen",
            "0.0.0.0:3478",
            "--turn-public-ip",
            VPS_IP,
            "--stun-url",
            &format!("stun:{VPS_IP}:3478"),
        ],
    )
}

fn address_change(changed_side_offers: bool) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut field = start_field();
    let words = "We keep talking while the network under one of us changes. The call should \
                 notice within a second, find the signaling server again, and pick a new \
                 path, with the same keys and the same code on both screens. Then we go on \
                 talking for a while, so that everyone can hear the call came back by itself.";
    speak(words, &field.path("alice.wav"));
    speak(words, &field.path("bob.wav"));
    let (home_a, home_b) = (field.topo.a.host.clone(), field.topo.b.host.clone());
    let person = |name: &str, peer: &str| {
        let home = if name == "alice" { &home_a } else { &home_b };
        field.person(home, name, peer)
    };
    // The second to join makes the offer (and owns ICE restarts).
    let (mut alice, mut bob) = if changed_side_offers {
        let mut bob = person("bob", "alice");
        bob.wait_for("waiting for the peer", WAIT);
        (person("alice", "bob"), bob)
    } else {
        let mut alice = person("alice", "bob");
        alice.wait_for("waiting for the peer", WAIT);
        (alice, person("bob", "alice"))
    };
    for p in [&mut alice, &mut bob] {
        p.wait_for("media flowing", WAIT);
    }
    // The scenario: they talk a few seconds before the address changes (a moment in the
    // call, not a wait for an event).
    std::thread::sleep(Duration::from_secs(3));
    Topology::renumber(&mut field.topo.a, "203.0.113.31");
    let changed_at = Instant::now();
    // `wait_for` fails with everything the process printed.
    for p in [&mut alice, &mut bob] {
        p.wait_for("link back after", WAIT);
    }
    let back_after = changed_at.elapsed();
    for p in [&mut alice, &mut bob] {
        let status = p.finish(Duration::from_secs(90));
        assert_eq!(status.code(), Some(0), "{}", p.seen.join("\n"));
    }
    assert_eq!(alice.sas(), bob.sas());
    let (sa, sb) = (
        read_stats(&field.path("alice.json")),
        read_stats(&field.path("bob.json")),
    );
    let role = if changed_side_offers {
        "offerer"
    } else {
        "answerer"
    };
    println!(
        "address change ({role} moved): gap alice {} ms, bob {} ms (link_down_ms {} / {}); \
         both back {:.2} s after the change; alice rejoins {}, bob ice restarts {} / alice {}",
        gap_ms(&alice),
        gap_ms(&bob),
        sa["link_down_ms"],
        sb["link_down_ms"],
        back_after.as_secs_f64(),
        sa["signaling_rejoins"],
        sb["ice_restarts"],
        sa["ice_restarts"],
    );
    if std::env::var_os("APARTE_TEST_VERBOSE").is_some() {
        field.server.finish_lines();
        println!("server said:\n{}", field.server.seen.join("\n"));
    }
    for (name, me, other, peer) in [("alice", &sa, &sb, &alice), ("bob", &sb, &sa, &bob)] {
        println!(
            "{name}: decrypted {} of {} sent, bitrate {} (lowest {}), selected {} -> {}",
            me["frames_decrypted"],
            other["frames_sent"],
            me["bitrate_bps"],
            me["bitrate_lowest_bps"],
            me["local_candidate"],
            me["remote_candidate"]
        );
        if std::env::var_os("APARTE_TEST_VERBOSE").is_some() {
            println!("{name} said:\n{}", peer.seen.join("\n"));
        }
        assert_eq!(me["outcome"], "completed", "{me}");
        assert_eq!(frames_rejected_total(me), 0, "{me}");
        aparte_e2e_tests::assert_frames_add_up(me, other);
        assert!(me["link_recoveries"].as_u64().unwrap() >= 1, "{name}: {me}");
        let gap = gap_ms(peer);
        assert!(
            gap <= MAX_GAP_MS,
            "{name}: the link was down {gap} ms (bar {MAX_GAP_MS} ms)"
        );
    }
    // Alice's old connection was dead: she came back on a new one, with her seat.
    assert!(sa["signaling_rejoins"].as_u64().unwrap() >= 1, "{sa}");
    assert_eq!(sb["signaling_rejoins"].as_u64(), Some(0), "{sb}");
    aparte_e2e_tests::call::assert_heard_matches_said(
        &field.path("alice.wav"),
        &field.path("bob-heard.wav"),
    );
}

#[test]
fn after_an_address_change_the_call_is_back_within_3_s_when_the_moved_side_offers() {
    address_change(true);
}

#[test]
fn after_an_address_change_the_call_is_back_within_3_s_when_the_moved_side_answers() {
    address_change(false);
}

/// **A thin uplink.** Alice's home sends at most `kbit` kbit/s (`tc tbf` on her router). At
/// 24 kbit/s Opus a call needs about 57 kbit/s each way (20 ms packets carry ~82 bytes of
/// headers each: docs/CLIENT.md), so her stream loses packets until her bitrate ladder steps
/// down (to longer packets at the low steps: 16 kbit/s in 40 ms, 12 and 8 kbit/s in 60 ms);
/// then the loss must stop. Prints where the ladder settled, the loss Bob reported over
/// the call and over its last reports, and what Whisper understands of what Bob heard.
/// Returns alice's loss over her last reports (percent), the extra WER of what Bob heard over
/// her file's own (a fraction), her lowest bitrate (bit/s) and its packet time (ms).
fn thin_uplink(kbit: u32) -> (f64, f64, u64, u64) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let field = start_field();
    Topology::limit_uplink(&field.topo.a, kbit);
    let script = "The line from my home is thin today, so the call must send less. It should \
                  notice the loss within a few seconds and step down to a lower bitrate. After \
                  that every packet should arrive, and you should still understand every word \
                  that I am saying to you now, even the last ones at the very end.";
    speak(script, &field.path("alice.wav"));
    let mut alice = field.person(&field.topo.a.host, "alice", "bob");
    alice.wait_for("waiting for the peer", WAIT);
    // Bob listens (his silence still goes up his own link) until Alice hangs up.
    let mut bob = field.person_saying(&field.topo.b.host, "bob", "alice", "silence", &[]);
    for p in [&mut alice, &mut bob] {
        let status = p.finish(Duration::from_secs(120));
        assert_eq!(status.code(), Some(0), "{}", p.seen.join("\n"));
    }
    let (sa, sb) = (
        read_stats(&field.path("alice.json")),
        read_stats(&field.path("bob.json")),
    );
    aparte_e2e_tests::assert_frames_add_up(&sb, &sa);
    aparte_e2e_tests::assert_frames_add_up(&sa, &sb);
    // The signaling connection shares the thin link. Until the ladder has stepped down (a few
    // seconds) the router's queue is full and drops. With 20 ms packets only, in 1 of 4 runs
    // at 48 kbit/s the server timed Alice's WebSocket out once (she rejoined with her resume
    // token and the call went on); with longer packets at the low steps, 0 rejoins in 4 runs
    // at 32 kbit/s and 1 at 48 (the first report steps two down, to 12 kbit/s in 60 ms
    // packets, within about a second). Printed, not asserted.
    println!("alice's signaling rejoins: {}", sa["signaling_rejoins"]);
    for line in alice
        .seen
        .iter()
        .filter(|l| l.starts_with("bitrate:") || l.contains("signaling") || l.contains("rejoin"))
    {
        println!("alice: {line}");
    }
    if std::env::var_os("APARTE_TEST_VERBOSE").is_some() {
        println!(
            "alice said:\n{}\nbob said:\n{}",
            alice.seen.join("\n"),
            bob.seen.join("\n")
        );
    }
    let recent = sa["peer_loss_percent_recent"].as_f64().unwrap();
    let said =
        aparte_translate::wer::word_error_rate(script, &transcript(&field.path("alice.wav")));
    let heard =
        aparte_translate::wer::word_error_rate(script, &transcript(&field.path("bob-heard.wav")));
    println!(
        "uplink {kbit} kbit/s: alice's bitrate {} in {} ms packets → lowest {} in {} ms ({} \
         changes); bob received loss \
         {:.1} % over the call, alice's last reports {recent:.1} %; WER of what bob heard \
         {:.1} % (of alice's own file {:.1} %); setup {} ms",
        sa["bitrate_bps"],
        sa["packet_ms"],
        sa["bitrate_lowest_bps"],
        sa["packet_lowest_ms"],
        sa["bitrate_changes"],
        sb["loss_percent"].as_f64().unwrap(),
        heard * 100.0,
        said * 100.0,
        sa["setup_ms"],
    );
    (
        recent,
        heard - said,
        sa["bitrate_lowest_bps"].as_u64().unwrap(),
        sa["packet_lowest_ms"].as_u64().unwrap(),
    )
}

/// Measured on this harness (espeak-ng, Whisper tiny.en, 2026-12-07): at 64 kbit/s (24 kbit/s
/// Opus, no loss) what Bob heard is transcribed at 25.9–32.8 % WER against 15.5 % for Alice's
/// own file: +10 to +17 points from the codec and tiny.en's sensitivity to small differences
/// in the audio (the same call, no loss, gave both). The bar leaves that much noise room: 25
/// points over the file's own WER.
const MAX_EXTRA_WER: f64 = 0.25;

/// The reference: at 64 kbit/s the starting step (24 kbit/s, ~57 kbit/s on the wire) fits.
#[test]
fn on_a_64_kbit_uplink_nothing_is_lost_and_the_speech_is_understood() {
    let (recent_loss, extra_wer, _, _) = thin_uplink(64);
    assert!(recent_loss <= 1.0, "loss {recent_loss:.1} %");
    assert!(
        extra_wer <= MAX_EXTRA_WER,
        "WER {:.1} points over the file's",
        extra_wer * 100.0
    );
}

#[test]
fn on_a_thin_uplink_the_bitrate_steps_down_until_the_loss_stops() {
    let (recent_loss, extra_wer, lowest, _) = thin_uplink(48);
    assert!(lowest < 24_000, "the bitrate never stepped down");
    assert!(
        recent_loss <= 5.0,
        "loss after adaptation {recent_loss:.1} %"
    );
    // With 20 ms packets only, the ladder ended at 8 kbit/s (narrowband SILK) and what Bob
    // heard scored 39.7–56.9 % WER against 15.5 % for Alice's file (+24 to +41 points, 4
    // runs). With 40 ms packets 16 kbit/s fits (32.4 kbit/s on the wire) and the ladder
    // settles there: 29.3 % (+13.8 points, 1 run, 2026-12-07). Printed, not asserted.
    println!(
        "extra WER on the thin link: {:.1} points",
        extra_wer * 100.0
    );
}

/// Measured at 32 kbit/s (2026-12-07, 4 runs: the ladder ends at 12 or 8 kbit/s in 60 ms
/// packets): what Bob heard scored 39.7, 36.2, 31.0 and 32.8 % WER against 15.5 % for Alice's
/// file, +15.5 to +24.1 points, against +10.4 to +17.3 at 64 kbit/s (five runs, 24 kbit/s in 20 ms packets).
/// 12 kbit/s SILK costs a few points more than 24 kbit/s and tiny.en swings by ±5 points from
/// run to run on the same call, so the bar is the 64 kbit/s one plus 10 points. Garbled audio
/// (frames out of order or at the wrong time, a fifth of it concealed) scores far worse.
const MAX_EXTRA_WER_32K: f64 = MAX_EXTRA_WER + 0.10;

/// **32 kbit/s**: no 20 ms step fits (the headers alone are 32.8 kbit/s); 16 kbit/s in 40 ms
/// packets needs ~32.4 kbit/s, 12 kbit/s in 60 ms ~22.9. The ladder must get there, the call
/// must stay up and the loss stop, and what Bob heard must still be understood.
#[test]
fn on_a_32_kbit_uplink_longer_packets_keep_the_call_up_and_the_loss_stops() {
    let (recent_loss, extra_wer, lowest, packet_ms) = thin_uplink(32);
    assert!(lowest <= 12_000, "the ladder stopped at {lowest} bit/s");
    assert_eq!(packet_ms, 60, "the lowest step used sends 60 ms packets");
    assert!(
        recent_loss <= 5.0,
        "loss after adaptation {recent_loss:.1} %"
    );
    println!(
        "extra WER at 32 kbit/s: {:.1} points (bar {:.0})",
        extra_wer * 100.0,
        MAX_EXTRA_WER_32K * 100.0
    );
    assert!(
        extra_wer <= MAX_EXTRA_WER_32K,
        "WER {:.1} points over the file's",
        extra_wer * 100.0
    );
}
