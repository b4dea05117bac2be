//! The call security rules, driven through two real `CallSecurity` sessions whose messages the
//! test routes by hand (so it can reorder, drop or tamper as an attacker would).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;

use aparte_e2ee::frame::{ReceiverConfig, SenderConfig};
use aparte_e2ee::handshake::{CallParams, Role};
use aparte_e2ee::identity::{IdentityKey, IdentityPublic, KnownPeers, PeerName, PeerStatus};
use aparte_session::{
    CallSecurity, Event, FailReason, Policy, SecurityStatus, SessionConfig, SessionError,
    VerifiedBy,
};
use rand_core::OsRng;

struct Side {
    sec: CallSecurity,
    handshake_out: VecDeque<Vec<u8>>,
    data_out: VecDeque<Vec<u8>>,
    statuses: Vec<SecurityStatus>,
    apps: Vec<Vec<u8>>,
    peers_changed: usize,
}

impl Side {
    fn new(
        role: Role,
        id: Option<&IdentityKey>,
        peer: &str,
        policy: Policy,
        peers: KnownPeers,
    ) -> Self {
        Self::with_rng(role, id, peer, policy, peers, &mut OsRng)
    }

    fn with_rng(
        role: Role,
        id: Option<&IdentityKey>,
        peer: &str,
        policy: Policy,
        peers: KnownPeers,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Self {
        let (local, remote) = match role {
            Role::Initiator => (b"fp-alice".to_vec(), b"fp-bob".to_vec()),
            Role::Responder => (b"fp-bob".to_vec(), b"fp-alice".to_vec()),
        };
        let config = SessionConfig {
            role,
            params: CallParams::new(b"room-1".to_vec(), local, remote).unwrap(),
            identity: id.cloned(),
            peer_name: Some(PeerName::new(peer).unwrap()),
            policy,
            sender: SenderConfig::default(),
            receiver: ReceiverConfig::default(),
        };
        let (sec, events) = CallSecurity::new(config, peers, rng).unwrap();
        let mut side = Self {
            sec,
            handshake_out: VecDeque::new(),
            data_out: VecDeque::new(),
            statuses: Vec::new(),
            apps: Vec::new(),
            peers_changed: 0,
        };
        side.absorb(events);
        side
    }

    fn absorb(&mut self, events: Vec<Event>) {
        for e in events {
            match e {
                Event::SendHandshake(b) => self.handshake_out.push_back(b),
                Event::SendData(b) => self.data_out.push_back(b),
                Event::Status(s) => self.statuses.push(s),
                Event::PeersChanged => self.peers_changed += 1,
                Event::App(b) => self.apps.push(b),
            }
        }
    }
}

/// Delivers the next queued handshake message from `from` to `to`.
fn deliver_one(from: &mut Side, to: &mut Side) {
    let m = from.handshake_out.pop_front().unwrap();
    let ev = to.sec.on_handshake(&m, 0, 1).unwrap();
    to.absorb(ev);
}

/// Delivers queued messages both ways until nothing moves; handshake before data.
fn pump(a: &mut Side, b: &mut Side) {
    loop {
        let mut moved = false;
        while let Some(m) = a.handshake_out.pop_front() {
            let ev = b.sec.on_handshake(&m, 0, 100).unwrap();
            b.absorb(ev);
            moved = true;
        }
        while let Some(m) = b.handshake_out.pop_front() {
            let ev = a.sec.on_handshake(&m, 0, 100).unwrap();
            a.absorb(ev);
            moved = true;
        }
        while let Some(m) = a.data_out.pop_front() {
            if let Ok(ev) = b.sec.on_data_frame(&m, 0, 100) {
                b.absorb(ev);
            }
            moved = true;
        }
        while let Some(m) = b.data_out.pop_front() {
            if let Ok(ev) = a.sec.on_data_frame(&m, 0, 100) {
                a.absorb(ev);
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn pair(
    policy: Policy,
    a_id: Option<&IdentityKey>,
    b_id: Option<&IdentityKey>,
    a_peers: KnownPeers,
    b_peers: KnownPeers,
) -> (Side, Side) {
    let a = Side::new(Role::Initiator, a_id, "bob", policy.clone(), a_peers);
    let b = Side::new(Role::Responder, b_id, "alice", policy, b_peers);
    (a, b)
}

#[test]
fn interactive_call_is_verified_only_after_both_people_confirm() {
    let (ida, idb) = (
        IdentityKey::generate(&mut OsRng),
        IdentityKey::generate(&mut OsRng),
    );
    let (mut a, mut b) = pair(
        Policy::Interactive,
        Some(&ida),
        Some(&idb),
        KnownPeers::new(),
        KnownPeers::new(),
    );
    assert_eq!(a.sec.status(), &SecurityStatus::Connecting);
    assert!(a.sec.protect_media(b"x").is_err());
    pump(&mut a, &mut b);
    let SecurityStatus::Encrypted {
        sas,
        confirmed_locally: false,
    } = a.sec.status().clone()
    else {
        panic!("{:?}", a.sec.status())
    };
    assert!(matches!(b.sec.status(), SecurityStatus::Encrypted { sas: s, .. } if *s == sas));
    assert!(a.sec.media_allowed() && b.sec.media_allowed());
    // Media flows (encrypted, unverified).
    let f = a.sec.protect_media(b"opus").unwrap();
    assert_eq!(b.sec.unprotect_media(&f, 0).unwrap(), b"opus");

    let ev = a.sec.confirm_sas(100).unwrap();
    a.absorb(ev);
    pump(&mut a, &mut b);
    assert!(matches!(
        a.sec.status(),
        SecurityStatus::Encrypted {
            confirmed_locally: true,
            ..
        }
    ));
    assert!(matches!(
        b.sec.status(),
        SecurityStatus::Encrypted {
            confirmed_locally: false,
            ..
        }
    ));
    let ev = b.sec.confirm_sas(100).unwrap();
    b.absorb(ev);
    pump(&mut a, &mut b);
    for side in [&a, &b] {
        assert!(matches!(
            side.sec.status(),
            SecurityStatus::Verified {
                by: VerifiedBy::Sas,
                ..
            }
        ));
    }
    let bob = PeerName::new("bob").unwrap();
    assert_eq!(
        a.sec.known_peers().check(&bob, &idb.public()),
        PeerStatus::Matches { verified: true }
    );
    assert!(a.peers_changed >= 2);

    // The next call between the same identities is verified without a SAS check.
    let (pa, pb) = (a.sec.known_peers().clone(), b.sec.known_peers().clone());
    let (mut a, mut b) = pair(Policy::Interactive, Some(&ida), Some(&idb), pa, pb);
    pump(&mut a, &mut b);
    for side in [&a, &b] {
        assert!(matches!(
            side.sec.status(),
            SecurityStatus::Verified {
                by: VerifiedBy::PinnedIdentity,
                ..
            }
        ));
    }
}

/// Asserts that `a` shows a changed identity and lets nothing flow either way (no audio or
/// caption out, nothing from `peer` in, no SAS confirmation) until the person decides; returns
/// (pinned, presented).
fn held_on_changed_identity(
    a: &mut Side,
    peer: &mut Side,
) -> (IdentityPublic, Option<IdentityPublic>) {
    let SecurityStatus::IdentityChanged {
        pinned, presented, ..
    } = a.sec.status().clone()
    else {
        panic!("{:?}", a.sec.status())
    };
    assert!(!a.sec.media_allowed());
    assert!(matches!(
        a.sec.protect_media(b"x"),
        Err(SessionError::NotAllowed(_))
    ));
    assert!(a.sec.send_app(b"caption".to_vec()).is_err());
    let f = peer.sec.protect_media(b"from the middle").unwrap();
    assert!(a.sec.unprotect_media(&f, 0).is_err());
    assert!(a.sec.confirm_sas(2).is_err());
    (pinned, presented)
}

#[test]
fn changed_identity_stops_media_until_an_explicit_override() {
    let (ida, idb, mallory) = (
        IdentityKey::generate(&mut OsRng),
        IdentityKey::generate(&mut OsRng),
        IdentityKey::generate(&mut OsRng),
    );
    let mut a_peers = KnownPeers::new();
    a_peers
        .mark_verified(&PeerName::new("bob").unwrap(), &idb.public(), 1)
        .unwrap();
    // "Bob" now answers with another identity.
    let (mut a, mut b) = pair(
        Policy::Interactive,
        Some(&ida),
        Some(&mallory),
        a_peers,
        KnownPeers::new(),
    );
    pump(&mut a, &mut b);
    let (pinned, presented) = held_on_changed_identity(&mut a, &mut b);
    assert_eq!(pinned, idb.public());
    assert_eq!(presented, Some(mallory.public()));

    let ev = a.sec.override_identity_change(2).unwrap();
    a.absorb(ev);
    assert!(matches!(a.sec.status(), SecurityStatus::Encrypted { .. }));
    assert_eq!(
        a.sec
            .known_peers()
            .check(&PeerName::new("bob").unwrap(), &mallory.public()),
        PeerStatus::Matches { verified: false }
    );
}

#[test]
fn a_pinned_peer_that_shows_no_identity_is_a_changed_identity_not_a_stranger() {
    // Alice and Bob pinned and verified each other. A signaling server in the middle runs its
    // own handshake with each side and shows no identity at all (it cannot prove Bob's key).
    let (ida, idb) = (
        IdentityKey::generate(&mut OsRng),
        IdentityKey::generate(&mut OsRng),
    );
    let bob = PeerName::new("bob").unwrap();
    for policy in [Policy::Interactive, Policy::TrustOnFirstUse] {
        let mut a_peers = KnownPeers::new();
        a_peers.mark_verified(&bob, &idb.public(), 1).unwrap();
        let (mut a, mut m) = pair(policy.clone(), Some(&ida), None, a_peers, KnownPeers::new());
        pump(&mut a, &mut m);
        let (pinned, presented) = held_on_changed_identity(&mut a, &mut m);
        assert_eq!(pinned, idb.public(), "{policy:?}");
        assert_eq!(presented, None, "{policy:?}");

        // An explicit override goes on unverified (never silently trusted, even under
        // TOFU) and keeps Bob's pinned, verified key for the next call.
        let ev = a.sec.override_identity_change(2).unwrap();
        a.absorb(ev);
        assert!(matches!(
            a.sec.status(),
            SecurityStatus::Encrypted {
                confirmed_locally: false,
                ..
            }
        ));
        assert_eq!(
            a.sec.known_peers().check(&bob, &idb.public()),
            PeerStatus::Matches { verified: true }
        );
    }
}

#[test]
fn an_unpinned_peer_without_identity_is_just_unverified() {
    let ida = IdentityKey::generate(&mut OsRng);
    let (mut a, mut b) = pair(
        Policy::Interactive,
        Some(&ida),
        None,
        KnownPeers::new(),
        KnownPeers::new(),
    );
    pump(&mut a, &mut b);
    assert!(matches!(a.sec.status(), SecurityStatus::Encrypted { .. }));
    assert!(a.sec.known_peers().is_empty());
}

/// Runs a call whose ephemeral keys come from seeded RNGs, so the same seeds give the same SAS.
fn seeded_pair(policy: Policy, seed: u8) -> (Side, Side) {
    use rand_chacha::rand_core::SeedableRng;
    let mut ra = rand_chacha::ChaCha20Rng::from_seed([seed; 32]);
    let mut rb = rand_chacha::ChaCha20Rng::from_seed([seed.wrapping_add(1); 32]);
    let a = Side::with_rng(
        Role::Initiator,
        None,
        "bob",
        policy.clone(),
        KnownPeers::new(),
        &mut ra,
    );
    let b = Side::with_rng(
        Role::Responder,
        None,
        "alice",
        policy,
        KnownPeers::new(),
        &mut rb,
    );
    (a, b)
}

#[test]
fn expected_sas_verifies_a_scripted_call() {
    let (mut a, mut b) = seeded_pair(Policy::Interactive, 7);
    pump(&mut a, &mut b);
    let SecurityStatus::Encrypted { sas, .. } = a.sec.status().clone() else {
        panic!()
    };
    // The same keys again, scripted with the SAS the people would read (as digits on one
    // side and words on the other).
    let (mut a, mut b) = seeded_pair(Policy::ExpectSas(sas.digits()), 7);
    b.sec = {
        let (_, b2) = seeded_pair(Policy::ExpectSas(sas.words_string()), 7);
        b2.sec
    };
    pump(&mut a, &mut b);
    for side in [&a, &b] {
        assert!(
            matches!(
                side.sec.status(),
                SecurityStatus::Verified {
                    by: VerifiedBy::Sas,
                    ..
                }
            ),
            "{:?}",
            side.sec.status()
        );
    }
}

#[test]
fn a_wrong_expected_sas_fails_both_sides() {
    let (mut a, mut b) = seeded_pair(Policy::Interactive, 9);
    pump(&mut a, &mut b);
    let SecurityStatus::Encrypted { sas, .. } = a.sec.status().clone() else {
        panic!()
    };
    let wrong = format!("{:08}", (sas.value() + 1) % (1 << 24));
    let (mut a, mut b) = seeded_pair(Policy::ExpectSas(wrong), 9);
    pump(&mut a, &mut b);
    assert_eq!(
        a.sec.status(),
        &SecurityStatus::Failed(FailReason::SasMismatch)
    );
    assert!(!a.sec.media_allowed() && !b.sec.media_allowed());
}

#[test]
fn scripted_confirmation_that_outruns_the_last_handshake_message_is_not_lost() {
    let (mut a, mut b) = pair(
        Policy::Interactive,
        None,
        None,
        KnownPeers::new(),
        KnownPeers::new(),
    );
    // Commit → Bob, Response → Alice, Reveal → Bob (Bob completes), but hold Bob's Confirm.
    deliver_one(&mut a, &mut b); // Commit
    deliver_one(&mut b, &mut a); // Response
    deliver_one(&mut a, &mut b); // Reveal
    let confirm = b.handshake_out.pop_front().unwrap();
    assert!(b.sec.media_allowed());
    assert!(!a.sec.media_allowed(), "no media before key confirmation");

    // Bob confirms the SAS at once; his data frame reaches Alice before his Confirm does.
    let ev = b.sec.confirm_sas(1).unwrap();
    b.absorb(ev);
    let early = b.data_out.pop_front().unwrap();
    assert!(a.sec.on_data_frame(&early, 0, 1).unwrap().is_empty());
    let ev = a.sec.on_handshake(&confirm, 0, 1).unwrap();
    a.absorb(ev);
    assert!(matches!(a.sec.status(), SecurityStatus::Encrypted { .. }));
    let ev = a.sec.confirm_sas(1).unwrap();
    a.absorb(ev);
    assert!(matches!(
        a.sec.status(),
        SecurityStatus::Verified {
            by: VerifiedBy::Sas,
            ..
        }
    ));
}

#[test]
fn rejecting_the_sas_ends_the_call_on_both_sides() {
    let (mut a, mut b) = pair(
        Policy::Interactive,
        None,
        None,
        KnownPeers::new(),
        KnownPeers::new(),
    );
    pump(&mut a, &mut b);
    let ev = b.sec.reject_sas();
    b.absorb(ev);
    pump(&mut a, &mut b);
    assert_eq!(
        b.sec.status(),
        &SecurityStatus::Failed(FailReason::SasRejectedLocally)
    );
    assert_eq!(
        a.sec.status(),
        &SecurityStatus::Failed(FailReason::SasRejectedByPeer)
    );
    assert!(!a.sec.media_allowed() && !b.sec.media_allowed());
}

#[test]
fn captions_travel_encrypted_and_bye_ends_the_call() {
    let (mut a, mut b) = pair(
        Policy::TrustOnFirstUse,
        None,
        None,
        KnownPeers::new(),
        KnownPeers::new(),
    );
    pump(&mut a, &mut b);
    let Event::SendData(frame) = a.sec.send_app(b"hola mundo".to_vec()).unwrap() else {
        panic!()
    };
    assert!(!frame.windows(4).any(|w| w == b"hola"));
    let ev = b.sec.on_data_frame(&frame, 0, 1).unwrap();
    assert_eq!(ev, vec![Event::App(b"hola mundo".to_vec())]);
    // A replayed caption is rejected like a replayed audio frame.
    assert!(b.sec.on_data_frame(&frame, 0, 1).is_err());
    // So is a tampered one, whichever byte is changed; the genuine frame still gets through.
    let Event::SendData(next) = a.sec.send_app(b"segunda".to_vec()).unwrap() else {
        panic!()
    };
    for i in 0..next.len() {
        let mut tampered = next.clone();
        tampered[i] ^= 0x01;
        assert!(b.sec.on_data_frame(&tampered, 0, 1).is_err(), "byte {i}");
    }
    // Reflected back to its sender, it is refused too.
    assert!(a.sec.on_data_frame(&next, 0, 1).is_err());
    let ev = b.sec.on_data_frame(&next, 0, 1).unwrap();
    assert_eq!(ev, vec![Event::App(b"segunda".to_vec())]);
    let ev = a.sec.hang_up();
    a.absorb(ev);
    pump(&mut a, &mut b);
    assert_eq!(b.sec.status(), &SecurityStatus::Ended { by_peer: true });
    assert_eq!(a.sec.status(), &SecurityStatus::Ended { by_peer: false });
}

#[test]
fn a_tampered_handshake_fails_the_session_and_blocks_media() {
    let (mut a, mut b) = pair(
        Policy::Interactive,
        None,
        None,
        KnownPeers::new(),
        KnownPeers::new(),
    );
    deliver_one(&mut a, &mut b); // Commit
    deliver_one(&mut b, &mut a); // Response
    let mut reveal = a.handshake_out.pop_front().unwrap();
    *reveal.last_mut().unwrap() ^= 1;
    assert!(b.sec.on_handshake(&reveal, 0, 1).is_err());
    assert!(matches!(
        b.sec.status(),
        SecurityStatus::Failed(FailReason::Handshake(_))
    ));
    assert!(b.sec.protect_media(b"x").is_err());
}

/// Media frames come out with their authenticated index, consecutive across a rekey and in
/// the order they were sent, whatever order they arrive in.
#[test]
fn media_frames_carry_their_authenticated_index_across_rekeys() {
    let (mut a, mut b) = pair(
        Policy::TrustOnFirstUse,
        None,
        None,
        KnownPeers::new(),
        KnownPeers::new(),
    );
    pump(&mut a, &mut b);
    assert_eq!(a.sec.media_frames_protected(), 0);
    let epoch = aparte_e2ee::frame::EPOCH_FRAMES;
    let n = epoch + 20;
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| a.sec.protect_media(&i.to_be_bytes()).unwrap())
        .collect();
    assert_eq!(a.sec.media_frames_protected(), n);
    // Deliver the last 30 of epoch 0 and the first 20 of epoch 1 reversed.
    let first = (epoch - 30) as usize;
    let order: Vec<usize> = (first..frames.len()).rev().collect();
    for i in order {
        let m = b.sec.unprotect_media_frame(&frames[i], 0).unwrap();
        assert_eq!(m.index, i as u64);
        assert_eq!(m.payload, (i as u64).to_be_bytes());
        assert_eq!(m.position.epoch, i as u64 / epoch);
        assert_eq!(m.position.counter, i as u64 % epoch);
    }
    // The old entry point still works and agrees.
    let f = a.sec.protect_media(b"more").unwrap();
    assert_eq!(b.sec.unprotect_media(&f, 0).unwrap(), b"more");
    assert_eq!(b.sec.media_stats().unwrap().accepted, 51);
    assert_eq!(b.sec.media_refused(), 0);
}

/// Packets of 20, 40 and 60 ms take one index per 20 ms: the receiver's index is the
/// packet's first frame, and the sender's count is in 20 ms frames.
#[test]
fn multi_frame_packets_take_one_index_per_20_ms() {
    let (mut a, mut b) = pair(
        Policy::TrustOnFirstUse,
        None,
        None,
        KnownPeers::new(),
        KnownPeers::new(),
    );
    pump(&mut a, &mut b);
    let mut indices = Vec::new();
    for frames in [1, 3, 3, 2, 1] {
        let f = a.sec.protect_media_frames(b"opus", frames).unwrap();
        indices.push(b.sec.unprotect_media_frame(&f, 0).unwrap().index);
    }
    assert_eq!(indices, vec![0, 1, 4, 7, 9]);
    assert_eq!(a.sec.media_frames_protected(), 10);
    assert_eq!(b.sec.media_stats().unwrap().accepted, 5);
}

/// The responder has keys one message before the initiator, so its first frames can reach
/// the initiator before the Confirm does: they are refused, and counted as such.
#[test]
fn media_that_outruns_key_confirmation_is_refused_and_counted() {
    let (mut a, mut b) = pair(
        Policy::TrustOnFirstUse,
        None,
        None,
        KnownPeers::new(),
        KnownPeers::new(),
    );
    deliver_one(&mut a, &mut b); // commit
    deliver_one(&mut b, &mut a); // response
    deliver_one(&mut a, &mut b); // reveal: b has keys, a waits for b's confirm
    assert!(b.sec.media_allowed() && !a.sec.media_allowed());
    let early = b.sec.protect_media(b"early").unwrap();
    assert_eq!(
        a.sec.unprotect_media_frame(&early, 0),
        Err(SessionError::NotAllowed("connecting"))
    );
    assert_eq!(a.sec.media_refused(), 1);
    pump(&mut a, &mut b);
    let next = b.sec.protect_media(b"next").unwrap();
    let m = a.sec.unprotect_media_frame(&next, 0).unwrap();
    assert_eq!((m.index, m.payload.as_slice()), (1, &b"next"[..]));
    assert_eq!(b.sec.media_frames_protected(), 2);
    let stats = a.sec.media_stats().unwrap();
    assert_eq!((stats.accepted, stats.rejected_total()), (1, 0));
}

#[test]
fn epoch_lengths_that_differ_or_are_unset_are_refused() {
    let config = |sender: Option<u64>, receiver: Option<u64>| SessionConfig {
        role: Role::Initiator,
        params: CallParams::new(b"room".to_vec(), b"fp-a".to_vec(), b"fp-b".to_vec()).unwrap(),
        identity: None,
        peer_name: None,
        policy: Policy::Interactive,
        sender: SenderConfig {
            rekey_after_frames: sender,
            ..SenderConfig::default()
        },
        receiver: ReceiverConfig {
            epoch_frames: receiver,
            ..ReceiverConfig::default()
        },
    };
    for (s, r) in [
        (Some(10), Some(20)),
        (None, Some(10)),
        (Some(10), None),
        (None, None),
        (Some(0), Some(0)),
    ] {
        assert!(
            CallSecurity::new(config(s, r), KnownPeers::new(), &mut OsRng).is_err(),
            "{s:?} {r:?}"
        );
    }
    assert!(CallSecurity::new(config(Some(10), Some(10)), KnownPeers::new(), &mut OsRng).is_ok());
}
