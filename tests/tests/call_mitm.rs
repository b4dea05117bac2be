//! A man-in-the-middle signaling server. It speaks the real signaling protocol and relays SDP
//! and ICE untouched (so WebRTC connects straight between the peers), but it terminates the e2ee
//! handshake with each side, running its own handshake as responder to one and initiator to
//! the other, bound to the very DTLS fingerprints it relays. This is the strongest attack a
//! hostile server can make on aparté.
//!
//! What must hold: the two people see different SAS; media encrypted for the attacker is
//! rejected by the real peer, and the call ends as a security failure (exit 3); and peers that
//! pinned each other's identities on an earlier call refuse the call outright (identity
//! CHANGED, exit 3, nothing sent), whether Mallory shows her own identity or strips it (shows
//! none at all, hoping to be taken for a new peer).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aparte_client::sdp::dtls_fingerprint;
use aparte_client::signaling::PeerMessage;
use aparte_e2e_tests::scripted::{accept_two_clients, Outbox, TwoClients};
use aparte_e2e_tests::{new_room, CallProcess, SignalingServer, WAIT};
use aparte_e2ee::handshake::{CallParams, Handshake};
use aparte_e2ee::identity::IdentityKey;
use aparte_signaling_protocol::message::{ClientMessage, ServerMessage};
use aparte_signaling_protocol::{PeerInfo, RoomId};
use rand_core::OsRng;
use serde_json::value::RawValue;

/// Mallory's view of the two peers: peer 1 joined first (answers, e2ee responder), peer 2
/// second (offers, e2ee initiator).
struct Mallory {
    out: [Option<Outbox>; 2],
    room: Option<RoomId>,
    offer_fp: Option<Vec<u8>>,
    answer_fp: Option<Vec<u8>>,
    /// Mallory as responder to peer 2 (the initiator).
    toward_initiator: Option<Handshake>,
    /// Mallory as initiator to peer 1 (the responder).
    toward_responder: Option<Handshake>,
    /// Mallory's identity; `None` strips identities (`id_flag = 0`).
    identity: Option<IdentityKey>,
}

impl Mallory {
    fn send(&self, to: usize, message: &ServerMessage) {
        if let Some(out) = &self.out[to] {
            let _ = out.send(message.to_json());
        }
    }

    fn relay(&self, to: usize, from: usize, payload: &PeerMessage) {
        let payload = serde_json::value::to_raw_value(payload).unwrap();
        self.send(
            to,
            &ServerMessage::Relay {
                from: from as u64 + 1,
                payload,
            },
        );
    }

    fn handshake_to(&self, to: usize, bytes: Vec<u8>) {
        let from = 1 - to;
        self.relay(
            to,
            from,
            &PeerMessage::Handshake {
                data: hex::encode(bytes),
            },
        );
    }

    fn on_relay(&mut self, from: usize, payload: &RawValue) {
        let to = 1 - from;
        let message = PeerMessage::parse(payload.get()).unwrap();
        match &message {
            PeerMessage::Offer { sdp } => self.offer_fp = dtls_fingerprint(sdp),
            PeerMessage::Answer { sdp } => self.answer_fp = dtls_fingerprint(sdp),
            _ => {}
        }
        match message {
            PeerMessage::Handshake { data } => {
                let bytes = hex::decode(data).unwrap();
                // Peer 2 (initiator) talks to Mallory-the-responder, peer 1 to Mallory-the-initiator.
                let hs = if from == 1 {
                    &mut self.toward_initiator
                } else {
                    &mut self.toward_responder
                };
                if let Some(reply) = hs.as_mut().unwrap().receive(&bytes).unwrap() {
                    self.handshake_to(from, reply);
                }
            }
            other => {
                let is_answer = matches!(other, PeerMessage::Answer { .. });
                self.relay(to, from, &other);
                if is_answer {
                    self.start_handshakes();
                }
            }
        }
    }

    /// Both SDPs are known: set up one handshake per side, each bound to the fingerprints
    /// that side expects, so that each side's key confirmation with Mallory succeeds.
    fn start_handshakes(&mut self) {
        let room = self.room.clone().unwrap().as_str().as_bytes().to_vec();
        let (offerer_fp, answerer_fp) = (
            self.offer_fp.clone().unwrap(),
            self.answer_fp.clone().unwrap(),
        );
        // To the initiator (offerer), Mallory poses as the answerer.
        let params =
            CallParams::new(room.clone(), answerer_fp.clone(), offerer_fp.clone()).unwrap();
        self.toward_initiator =
            Some(Handshake::responder(params, self.identity.as_ref(), &mut OsRng).unwrap());
        // To the responder (answerer), Mallory poses as the offerer and starts with a Commit.
        let params = CallParams::new(room, offerer_fp, answerer_fp).unwrap();
        let (hs, commit) =
            Handshake::initiator(params, self.identity.as_ref(), &mut OsRng).unwrap();
        self.toward_responder = Some(hs);
        self.handshake_to(0, commit);
    }
}

/// Runs the hostile server for one room of two, showing `identity` (or none); returns its
/// WebSocket URL.
async fn start_mitm(identity: Option<IdentityKey>) -> String {
    let TwoClients {
        url,
        mut outboxes,
        mut frames,
    } = accept_two_clients().await;
    tokio::spawn(async move {
        let mut mallory = Mallory {
            out: [None, None],
            room: None,
            offer_fp: None,
            answer_fp: None,
            toward_initiator: None,
            toward_responder: None,
            identity,
        };
        loop {
            tokio::select! {
                Some((index, out)) = outboxes.recv() => mallory.out[index] = Some(out),
                Some((from, text)) = frames.recv() => match ClientMessage::parse(&text).unwrap() {
                    ClientMessage::Hello { version } => mallory.send(from, &ServerMessage::Welcome {
                        version, server: "mallory".into(), max_message_bytes: 65_536, ping_interval_ms: 2_000,
                    }),
                    ClientMessage::Join { room, .. } => {
                        mallory.room = Some(room.clone());
                        let peers = if from == 1 { vec![PeerInfo { peer_id: 1, label: None }] } else { vec![] };
                        mallory.send(from, &ServerMessage::Joined {
                            room, peer_id: from as u64 + 1, capacity: 2, peers, ice_servers: vec![], resume: None,
                        });
                        if from == 1 {
                            mallory.send(0, &ServerMessage::PeerJoined { peer_id: 2, label: None });
                        }
                    }
                    ClientMessage::Relay { payload, .. } => mallory.on_relay(from, &payload),
                    ClientMessage::Ping => mallory.send(from, &ServerMessage::Pong),
                    ClientMessage::Leave => {}
                },
                else => break,
            }
        }
    });
    url
}

fn sas(process: &CallProcess) -> String {
    process
        .seen()
        .iter()
        .find_map(|l| l.split_once("SAS: ").map(|(_, s)| s.to_owned()))
        .expect("SAS shown")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mitm_signaling_server_is_exposed_by_the_sas_and_refused_by_pinned_identities() {
    let dir = tempfile::tempdir().unwrap();
    let home = |n: &str| dir.path().join(n);
    let stats = |n: &str| dir.path().join(format!("{n}.json"));

    // 1. Without pinned identities: each side completes a handshake with Mallory.
    let url = start_mitm(Some(IdentityKey::generate(&mut OsRng))).await;
    let room = new_room();
    let args = |n: &str| {
        vec![
            "--input".to_owned(),
            "tone".into(),
            "--duration".into(),
            "3".into(),
            "--stats-json".into(),
            stats(n).to_str().unwrap().to_owned(),
        ]
    };
    let spawn = |n: &str, extra: &[&str]| {
        let mut a: Vec<String> = args(n);
        a.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        CallProcess::spawn(&url, &room, &home(n), &a)
    };
    let mut alice = spawn("alice", &["--no-identity"]);
    // Alice joins first (Mallory numbers peers by arrival): wait until she is in the room.
    tokio::task::block_in_place(|| alice.wait_for("waiting for the peer", WAIT));
    let mut bob = spawn("bob", &["--no-identity"]);
    let (a_exit, b_exit) = tokio::task::spawn_blocking(move || {
        alice.wait_for("SAS:", WAIT);
        bob.wait_for("SAS:", WAIT);
        let (sa, sb) = (sas(&alice), sas(&bob));
        let a = alice.child.wait().unwrap();
        let b = bob.child.wait().unwrap();
        assert_ne!(sa, sb, "a man-in-the-middle must show as different SAS");
        (a, b)
    })
    .await
    .unwrap();
    // Every frame failed authentication: a security failure, said as such. Every frame is
    // still accounted for (rejected, never played).
    let (sa, sb) = (
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(stats("alice")).unwrap(),
        )
        .unwrap(),
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(stats("bob")).unwrap())
            .unwrap(),
    );
    aparte_e2e_tests::assert_frames_add_up(&sa, &sb);
    aparte_e2e_tests::assert_frames_add_up(&sb, &sa);
    assert_eq!((a_exit.code(), b_exit.code()), (Some(3), Some(3)));
    for n in ["alice", "bob"] {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(stats(n)).unwrap()).unwrap();
        assert_eq!(s["outcome"], "security", "{n}: {s}");
        assert!(
            s["ended_by"].as_str().unwrap().contains("tampering"),
            "{n}: {s}"
        );
        assert_eq!(
            s["frames_decrypted"], 0,
            "{n} decrypted frames encrypted for Mallory: {s}"
        );
        assert!(
            s["frames_rejected"]["forged"].as_u64().unwrap() > 0,
            "{n}: {s}"
        );
    }
    // 2. Alice and Bob first talk through an honest server and pin each other's identities
    //    (trust on first use, under local names) ...
    let honest = SignalingServer::start(&[]);
    let room = new_room();
    let pinned = |n: &str, peer: &str| {
        vec![
            "--input".to_owned(),
            "tone".into(),
            "--duration".into(),
            "1".into(),
            "--peer".into(),
            peer.to_owned(),
            "--stats-json".into(),
            stats(n).to_str().unwrap().to_owned(),
        ]
    };
    let spawn_on = |url: &str, room: &str, n: &str, peer: &str| {
        let a = pinned(n, peer);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        CallProcess::spawn(url, room, &home(n), &a)
    };
    let mut alice = spawn_on(&honest.url(), &room, "alice2", "bob");
    let mut bob = spawn_on(&honest.url(), &room, "bob2", "alice");
    let (sa, sb) = tokio::task::spawn_blocking(move || {
        alice.wait_for("SAS:", WAIT);
        bob.wait_for("SAS:", WAIT);
        assert!(alice.child.wait().unwrap().success() && bob.child.wait().unwrap().success());
        (sas(&alice), sas(&bob))
    })
    .await
    .unwrap();
    assert_eq!(sa, sb, "the honest call is not intercepted");
    drop(honest);
    // They compared the SAS (equal, as asserted): both records now say verified, as after an
    // interactive confirmation.
    for n in ["alice2", "bob2"] {
        let path = home(n).join("known_peers");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(" unverified "), "{text}");
        std::fs::write(&path, text.replace(" unverified ", " verified ")).unwrap();
    }

    // ... then Mallory's server sits in the middle of their next call, first showing her own
    // identity, then stripping identities altogether: both sides refuse both calls.
    for mallory in [Some(IdentityKey::generate(&mut OsRng)), None] {
        let stripped = mallory.is_none();
        let url = start_mitm(mallory).await;
        let room = new_room();
        let mut alice = spawn_on(&url, &room, "alice2", "bob");
        // Alice joins first (Mallory numbers peers by arrival): wait until she is in the room.
        tokio::task::block_in_place(|| alice.wait_for("waiting for the peer", WAIT));
        let mut bob = spawn_on(&url, &room, "bob2", "alice");
        tokio::task::spawn_blocking(move || {
            for peer in [&mut alice, &mut bob] {
                peer.wait_for("CHANGED", WAIT);
                if stripped {
                    peer.wait_for("NO identity at all", WAIT);
                }
                peer.expect_exit_code(3);
            }
        })
        .await
        .unwrap();
        for n in ["alice2", "bob2"] {
            let s: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(stats(n)).unwrap()).unwrap();
            assert_eq!(s["frames_sent"], 0, "{n} sent media on a refused call: {s}");
            assert_eq!(s["outcome"], "security", "{n}: {s}");
            assert!(
                s["ended_by"].as_str().unwrap().contains("CHANGED"),
                "{n}: {s}"
            );
            // The pinned, verified record is untouched.
            let peers = std::fs::read_to_string(home(n).join("known_peers")).unwrap();
            assert!(
                peers.contains(" verified "),
                "{n} (stripped: {stripped}): {peers}"
            );
        }
    }
}
