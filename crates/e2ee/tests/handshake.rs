//! Handshake scenarios, including the attacks the threat model names: a man-in-the-middle
//! running its own handshake with each side, a swapped DTLS fingerprint, a key changed after the
//! commitment, a broken key confirmation, and a stolen public identity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aparte_e2ee::handshake::messages::{Message, Response, Reveal};
use aparte_e2ee::handshake::{CallParams, Handshake, HandshakeState};
use aparte_e2ee::identity::{IdentityKey, KnownPeers, PeerName, PeerStatus};
use aparte_e2ee::HandshakeError;
use common::{params, run, FP_ALICE, FP_BOB, ROOM};
use rand_core::OsRng;

#[test]
fn honest_handshake_agrees_on_sas_and_transcript() {
    for with_ids in [false, true] {
        let alice_id = IdentityKey::generate(&mut OsRng);
        let bob_id = IdentityKey::generate(&mut OsRng);
        let (a, b) = params();
        let ids = with_ids.then_some((&alice_id, &bob_id));
        let (alice, bob) = run(a, b, ids.map(|i| i.0), ids.map(|i| i.1)).unwrap();
        assert_eq!(alice.info().sas(), bob.info().sas());
        assert_eq!(alice.info().transcript_hash(), bob.info().transcript_hash());
        if with_ids {
            assert_eq!(alice.info().peer_identity(), Some(&bob_id.public()));
            assert_eq!(bob.info().peer_identity(), Some(&alice_id.public()));
        } else {
            assert!(alice.info().peer_identity().is_none());
        }
    }
}

#[test]
fn every_call_gets_fresh_keys() {
    let (a, b) = params();
    let (first, _) = run(a.clone(), b.clone(), None, None).unwrap();
    let (second, _) = run(a, b, None, None).unwrap();
    assert_ne!(
        first.info().transcript_hash(),
        second.info().transcript_hash()
    );
}

/// Mallory sits on the signaling path and runs one handshake with each side, posing as the
/// responder to Alice and as the initiator to Bob, and swaps the DTLS fingerprints to her own.
#[test]
fn man_in_the_middle_yields_different_sas_on_the_two_sides() {
    let fp_mallory = b"sha-256 EE:EE:EE".to_vec();
    for _ in 0..64 {
        let alice_p =
            CallParams::new(ROOM.to_vec(), FP_ALICE.to_vec(), fp_mallory.clone()).unwrap();
        let mallory_as_bob =
            CallParams::new(ROOM.to_vec(), fp_mallory.clone(), FP_ALICE.to_vec()).unwrap();
        let mallory_as_alice =
            CallParams::new(ROOM.to_vec(), fp_mallory.clone(), FP_BOB.to_vec()).unwrap();
        let bob_p = CallParams::new(ROOM.to_vec(), FP_BOB.to_vec(), fp_mallory.clone()).unwrap();

        let (alice, mallory_1) = run(alice_p, mallory_as_bob, None, None).unwrap();
        let (mallory_2, bob) = run(mallory_as_alice, bob_p, None, None).unwrap();
        assert_eq!(alice.info().sas(), mallory_1.info().sas());
        assert_eq!(mallory_2.info().sas(), bob.info().sas());
        // The people compare SAS by voice and see a mismatch (a collision has probability 2^-24).
        assert_ne!(alice.info().sas(), bob.info().sas());
    }
}

/// Mallory relays the e2ee messages untouched but swaps the DTLS fingerprint in the SDP:
/// the transcripts differ, so key confirmation fails before any media flows.
#[test]
fn swapped_dtls_fingerprint_fails_key_confirmation() {
    let (alice_p, _) = params();
    let bob_p = CallParams::new(ROOM.to_vec(), FP_BOB.to_vec(), b"sha-256 EE:EE".to_vec()).unwrap();
    assert_eq!(
        run(alice_p, bob_p, None, None).err(),
        Some(HandshakeError::ConfirmationFailed)
    );
}

#[test]
fn different_rooms_do_not_confirm() {
    let (alice_p, _) = params();
    let bob_p =
        CallParams::new(b"other-room".to_vec(), FP_BOB.to_vec(), FP_ALICE.to_vec()).unwrap();
    assert_eq!(
        run(alice_p, bob_p, None, None).err(),
        Some(HandshakeError::ConfirmationFailed)
    );
}

/// The initiator (or whoever relays its Reveal) swaps in another key after committing.
#[test]
fn initiator_key_changed_after_commitment_is_detected() {
    let (a, b) = params();
    let (mut alice, commit) = Handshake::initiator(a, None, &mut OsRng).unwrap();
    let mut bob = Handshake::responder(b, None, &mut OsRng).unwrap();
    let response = bob.receive(&commit).unwrap().unwrap();
    let reveal = alice.receive(&response).unwrap().unwrap();
    let Message::Reveal(mut m) = Message::parse(&reveal).unwrap() else {
        panic!("not a reveal")
    };
    m.ephemeral = x25519_public(&[42; 32]);
    let forged = Message::Reveal(m).encode();
    assert_eq!(
        bob.receive(&forged),
        Err(HandshakeError::CommitmentMismatch)
    );
    assert_eq!(bob.state(), HandshakeState::Failed);
    // Fatal: even the genuine Reveal is refused now.
    assert_eq!(bob.receive(&reveal), Err(HandshakeError::AlreadyFailed));
}

/// The responder's key is replaced on the way (a responder that changes its key after seeing the
/// commitment): the two sides derive different keys and the responder's check of mac_i fails.
#[test]
fn responder_key_changed_after_commitment_is_detected() {
    let (a, b) = params();
    let (mut alice, commit) = Handshake::initiator(a, None, &mut OsRng).unwrap();
    let mut bob = Handshake::responder(b, None, &mut OsRng).unwrap();
    let response = bob.receive(&commit).unwrap().unwrap();
    let forged = Message::Response(Response {
        ephemeral: x25519_public(&[7; 32]),
        identity: None,
    })
    .encode();
    assert_ne!(forged, response);
    let reveal = alice.receive(&forged).unwrap().unwrap();
    assert_eq!(
        bob.receive(&reveal),
        Err(HandshakeError::ConfirmationFailed)
    );
    assert_eq!(bob.state(), HandshakeState::Failed);
}

#[test]
fn key_confirmation_mismatch_aborts_both_ways() {
    // Responder side: a flipped bit in mac_i.
    let (a, b) = params();
    let (mut alice, commit) = Handshake::initiator(a, None, &mut OsRng).unwrap();
    let mut bob = Handshake::responder(b, None, &mut OsRng).unwrap();
    let response = bob.receive(&commit).unwrap().unwrap();
    let mut reveal = alice.receive(&response).unwrap().unwrap();
    *reveal.last_mut().unwrap() ^= 1;
    assert_eq!(
        bob.receive(&reveal),
        Err(HandshakeError::ConfirmationFailed)
    );
    assert!(bob.finish().is_err());

    // Initiator side: a flipped bit in mac_r.
    let (a, b) = params();
    let (mut alice, commit) = Handshake::initiator(a, None, &mut OsRng).unwrap();
    let mut bob = Handshake::responder(b, None, &mut OsRng).unwrap();
    let response = bob.receive(&commit).unwrap().unwrap();
    let reveal = alice.receive(&response).unwrap().unwrap();
    let mut confirm = bob.receive(&reveal).unwrap().unwrap();
    confirm[10] ^= 0x80;
    assert_eq!(
        alice.receive(&confirm),
        Err(HandshakeError::ConfirmationFailed)
    );
    assert_eq!(alice.state(), HandshakeState::Failed);
    assert_eq!(alice.finish().err(), Some(HandshakeError::AlreadyFailed));
}

#[test]
fn low_order_public_key_is_rejected_as_non_contributory() {
    let (a, _) = params();
    let (mut alice, _) = Handshake::initiator(a, None, &mut OsRng).unwrap();
    let zero_point = Message::Response(Response {
        ephemeral: [0; 32],
        identity: None,
    })
    .encode();
    assert_eq!(
        alice.receive(&zero_point),
        Err(HandshakeError::NonContributory)
    );
    assert_eq!(alice.state(), HandshakeState::Failed);
}

/// Junk, a stray message or a replayed earlier message does not erase progress.
#[test]
fn junk_and_out_of_order_messages_leave_the_state_untouched() {
    let (a, b) = params();
    let (mut alice, commit) = Handshake::initiator(a, None, &mut OsRng).unwrap();
    let mut bob = Handshake::responder(b, None, &mut OsRng).unwrap();
    assert!(matches!(
        bob.receive(b"garbage"),
        Err(HandshakeError::Malformed(_))
    ));
    assert!(matches!(
        bob.receive(&[]),
        Err(HandshakeError::Malformed(_))
    ));
    let response = bob.receive(&commit).unwrap().unwrap();
    assert!(matches!(
        bob.receive(&commit),
        Err(HandshakeError::UnexpectedMessage { .. })
    ));
    assert!(matches!(
        alice.receive(&commit),
        Err(HandshakeError::UnexpectedMessage { .. })
    ));
    let mut wrong_version = response.clone();
    wrong_version[1] = 9;
    assert_eq!(
        alice.receive(&wrong_version),
        Err(HandshakeError::UnsupportedVersion(9))
    );
    assert_eq!(alice.state(), HandshakeState::AwaitingResponse);
    let reveal = alice.receive(&response).unwrap().unwrap();
    let confirm = bob.receive(&reveal).unwrap().unwrap();
    assert!(alice.receive(&confirm).unwrap().is_none());
    assert_eq!(
        alice.finish().unwrap().info().sas(),
        bob.finish().unwrap().info().sas()
    );
}

#[test]
fn finish_before_completion_is_an_error() {
    let (a, _) = params();
    let (alice, _) = Handshake::initiator(a, None, &mut OsRng).unwrap();
    assert_eq!(alice.finish().err(), Some(HandshakeError::NotComplete));
}

#[test]
fn call_params_are_bounded() {
    assert!(CallParams::new(vec![], b"a".to_vec(), b"b".to_vec()).is_err());
    assert!(CallParams::new(b"r".to_vec(), vec![0; 1025], b"b".to_vec()).is_err());
    assert!(CallParams::new(b"r".to_vec(), b"a".to_vec(), vec![]).is_err());
    assert!(CallParams::new(vec![1; 1024], vec![2; 1024], vec![3; 1024]).is_ok());
}

/// Mallory forwards Bob's *public* identity key as her own in the Response but cannot compute
/// DH with it: key confirmation fails, so a stolen public key proves nothing.
#[test]
fn claiming_someone_elses_identity_fails_confirmation() {
    let bob_id = IdentityKey::generate(&mut OsRng);
    let (a, b) = params();
    let (mut alice, commit) = Handshake::initiator(a, None, &mut OsRng).unwrap();
    let mut mallory = Handshake::responder(b, None, &mut OsRng).unwrap();
    let response = mallory.receive(&commit).unwrap().unwrap();
    let Message::Response(mut m) = Message::parse(&response).unwrap() else {
        panic!()
    };
    m.identity = Some(*bob_id.public().as_bytes());
    let reveal = alice
        .receive(&Message::Response(m).encode())
        .unwrap()
        .unwrap();
    assert_eq!(
        mallory.receive(&reveal),
        Err(HandshakeError::ConfirmationFailed)
    );

    // And the other way: an initiator claiming Alice's identity in its Reveal breaks the
    // commitment (the identity is committed too).
    let alice_id = IdentityKey::generate(&mut OsRng);
    let (a, b) = params();
    let (mut mallory, commit) = Handshake::initiator(a, None, &mut OsRng).unwrap();
    let mut bob = Handshake::responder(b, None, &mut OsRng).unwrap();
    let response = bob.receive(&commit).unwrap().unwrap();
    let reveal = mallory.receive(&response).unwrap().unwrap();
    let Message::Reveal(m) = Message::parse(&reveal).unwrap() else {
        panic!()
    };
    let claimed = Message::Reveal(Reveal {
        identity: Some(*alice_id.public().as_bytes()),
        ..m
    })
    .encode();
    assert_eq!(
        bob.receive(&claimed),
        Err(HandshakeError::CommitmentMismatch)
    );
}

/// Key continuity: Bob pinned Alice as verified on an earlier call; now a man-in-the-middle
/// with its own identity key answers. The store says CHANGED.
#[test]
fn identity_change_on_a_pinned_peer_is_reported_as_changed() {
    let alice_id = IdentityKey::generate(&mut OsRng);
    let bob_id = IdentityKey::generate(&mut OsRng);
    let mallory_id = IdentityKey::generate(&mut OsRng);
    let alice_name = PeerName::new("alice").unwrap();
    let mut bobs_peers = KnownPeers::new();

    let (a, b) = params();
    let (_, bob) = run(a, b, Some(&alice_id), Some(&bob_id)).unwrap();
    let seen = *bob.info().peer_identity().unwrap();
    assert_eq!(bobs_peers.check(&alice_name, &seen), PeerStatus::New);
    bobs_peers.mark_verified(&alice_name, &seen, 1).unwrap();

    let (a, b) = params();
    let (_, bob) = run(a, b, Some(&alice_id), Some(&bob_id)).unwrap();
    assert_eq!(
        bobs_peers.check(&alice_name, bob.info().peer_identity().unwrap()),
        PeerStatus::Matches { verified: true }
    );

    let (a, b) = params();
    let (_, bob) = run(a, b, Some(&mallory_id), Some(&bob_id)).unwrap();
    assert!(matches!(
        bobs_peers.check(&alice_name, bob.info().peer_identity().unwrap()),
        PeerStatus::Changed {
            was_verified: true,
            ..
        }
    ));
}

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    IdentityKey::from_bytes(*secret).public().0
}
