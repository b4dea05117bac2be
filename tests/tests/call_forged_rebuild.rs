//! A hostile signaling server cannot tear down a call that is set up by forging the peer's
//! "rebuild" request (the way out of webrtc-rs's DTLS last-flight deadlock, which makes both
//! sides build new peer connections). The server here relays everything faithfully, and once
//! both sides have decrypted media it sends each a `{"kind":"rebuild"}` in the other's name.
//! Both must ignore it: no rebuild, no lost frames, the call runs to its end.
//!
//! It can fail: a client that honours the request at any time rebuilds here
//! (`transport_rebuilds` 1) and loses the frames of the new set-up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aparte_client::signaling::PeerMessage;
use aparte_e2e_tests::scripted::{accept_two_clients, Outbox, TwoClients};
use aparte_e2e_tests::{new_room, read_stats, stats_path, CallProcess, WAIT};
use aparte_signaling_protocol::message::{ClientMessage, ServerMessage};
use aparte_signaling_protocol::PeerInfo;
use tokio::sync::mpsc;

const SECONDS: u64 = 5;

fn relay_message(from: usize, payload: &PeerMessage) -> String {
    ServerMessage::Relay {
        from: from as u64 + 1,
        payload: serde_json::value::to_raw_value(payload).unwrap(),
    }
    .to_json()
}

/// Runs the relaying server for one room of two. Returns its WebSocket URL and a sender:
/// each `()` on it makes the server forge a rebuild request to both peers.
async fn start_forger() -> (String, mpsc::UnboundedSender<()>) {
    let TwoClients {
        url,
        mut outboxes,
        mut frames,
    } = accept_two_clients().await;
    let (forge_tx, mut forge) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let mut out: [Option<Outbox>; 2] = [None, None];
        let send = |out: &[Option<Outbox>; 2], to: usize, text: String| {
            if let Some(o) = &out[to] {
                let _ = o.send(text);
            }
        };
        loop {
            tokio::select! {
                Some((index, outbox)) = outboxes.recv() => out[index] = Some(outbox),
                Some(()) = forge.recv() => {
                    for to in 0..2 {
                        send(&out, to, relay_message(1 - to, &PeerMessage::Rebuild {}));
                    }
                }
                Some((from, text)) = frames.recv() => match ClientMessage::parse(&text).unwrap() {
                    ClientMessage::Hello { version } => send(&out, from, ServerMessage::Welcome {
                        version, server: "forger".into(), max_message_bytes: 65_536, ping_interval_ms: 2_000,
                    }.to_json()),
                    ClientMessage::Join { room, .. } => {
                        let peers = if from == 1 { vec![PeerInfo { peer_id: 1, label: None }] } else { vec![] };
                        send(&out, from, ServerMessage::Joined {
                            room, peer_id: from as u64 + 1, capacity: 2, peers, ice_servers: vec![], resume: None,
                        }.to_json());
                        if from == 1 {
                            send(&out, 0, ServerMessage::PeerJoined { peer_id: 2, label: None }.to_json());
                        }
                    }
                    ClientMessage::Relay { payload, .. } => {
                        let message = PeerMessage::parse(payload.get()).unwrap();
                        send(&out, 1 - from, relay_message(from, &message));
                    }
                    ClientMessage::Ping => send(&out, from, ServerMessage::Pong.to_json()),
                    ClientMessage::Leave => {}
                },
                else => break,
            }
        }
    });
    (url, forge_tx)
}

#[test]
fn a_forged_rebuild_request_does_not_touch_a_call_that_is_set_up() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (url, forge) = runtime.block_on(start_forger());
    let room = new_room();
    let dir = tempfile::tempdir().unwrap();
    let spawn = |name: &str| CallProcess::spawn_tone(&url, &room, dir.path(), name, SECONDS, &[]);
    // One at a time: this little server answers the first to join as the first in the room.
    let mut alice = spawn("alice");
    alice.wait_for("waiting for the peer", WAIT);
    let mut bob = spawn("bob");
    for peer in [&mut alice, &mut bob] {
        peer.wait_for("media flowing", WAIT);
    }
    forge.send(()).unwrap();
    for peer in [&mut alice, &mut bob] {
        peer.expect_clean_exit();
        assert!(
            !peer.seen().iter().any(|l| l.contains("connecting again")),
            "{:?}",
            peer.seen()
        );
    }
    let a = read_stats(&stats_path(dir.path(), "alice"));
    let b = read_stats(&stats_path(dir.path(), "bob"));
    for (name, me, peer) in [("alice", &a, &b), ("bob", &b, &a)] {
        aparte_e2e_tests::assert_frames_add_up(me, peer);
        println!(
            "{name}: rebuilds {}, sent {}, decrypted {}, concealed {}, ended by {}",
            me["transport_rebuilds"],
            me["frames_sent"],
            me["frames_decrypted"],
            me["frames_concealed"],
            me["ended_by"]
        );
        assert_eq!(me["transport_rebuilds"], 0, "{name}: {me}");
        let ended_by = me["ended_by"].as_str().unwrap();
        assert!(
            ["duration reached", "the peer hung up"].contains(&ended_by),
            "{name}: {me}"
        );
        assert_eq!(me["frames_concealed"], 0, "{name}: {me}");
        // Up to two frames may be in flight at the peer's hang-up.
        let sent = peer["frames_sent"].as_u64().unwrap();
        let decrypted = me["frames_decrypted"].as_u64().unwrap();
        assert!(decrypted + 2 >= sent, "{name}: {decrypted} of {sent}");
    }
}
