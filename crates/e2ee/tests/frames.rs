//! Frame protection: round trips, tampering, replay, reordering, reflection, rekeying under
//! loss, and counter exhaustion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aparte_e2ee::frame::{
    FrameHeader, FramePosition, ReceiverConfig, SenderConfig, EPOCH_FRAMES, REPLAY_WINDOW,
};
use aparte_e2ee::{FrameError, RejectReason};
use common::channels;
use proptest::prelude::*;

fn default_channels() -> (
    aparte_e2ee::handshake::Channels,
    aparte_e2ee::handshake::Channels,
) {
    channels(SenderConfig::default(), ReceiverConfig::default())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any payload from 0 to 1500 bytes survives protect → unprotect, both directions.
    #[test]
    fn any_payload_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..=1500)) {
        let (mut alice, mut bob) = default_channels();
        let frame = alice.media_sender.protect(&payload).unwrap();
        prop_assert_eq!(frame.len(), payload.len() + 17);
        prop_assert_eq!(bob.media_receiver.unprotect(&frame, 0).unwrap(), payload.clone());
        let frame = bob.data_sender.protect(&payload).unwrap();
        prop_assert_eq!(alice.data_receiver.unprotect(&frame, 0).unwrap(), payload);
    }

    /// Flipping any one bit anywhere in a frame (header, ciphertext or tag) is rejected, at
    /// any counter, and the genuine frame is still accepted afterwards.
    #[test]
    fn any_single_bit_flip_is_rejected(
        payload in proptest::collection::vec(any::<u8>(), 0..=200),
        skip in 0u64..400,
        bit in any::<prop::sample::Index>(),
    ) {
        let (mut alice, mut bob) = default_channels();
        for _ in 0..skip {
            alice.media_sender.protect(b"x").unwrap();
        }
        let frame = alice.media_sender.protect(&payload).unwrap();
        let i = bit.index(frame.len() * 8);
        let mut tampered = frame.clone();
        tampered[i / 8] ^= 1 << (i % 8);
        prop_assert!(bob.media_receiver.unprotect(&tampered, 0).is_err());
        prop_assert_eq!(bob.media_receiver.unprotect(&frame, 0).unwrap(), payload);
    }
}

/// Exhaustive version of the bit-flip property for one 60-byte audio frame at a counter with
/// a two-byte header.
#[test]
fn every_bit_of_a_60_byte_frame_is_protected() {
    let (mut alice, mut bob) = default_channels();
    for _ in 0..300 {
        alice.media_sender.protect(&[0; 60]).unwrap();
    }
    let frame = alice.media_sender.protect(&[0x5A; 60]).unwrap();
    assert_eq!(frame.len(), 60 + 19);
    for i in 0..frame.len() * 8 {
        let mut tampered = frame.clone();
        tampered[i / 8] ^= 1 << (i % 8);
        assert!(
            bob.media_receiver.unprotect(&tampered, 0).is_err(),
            "bit {i}"
        );
    }
    assert_eq!(bob.media_receiver.stats().accepted, 0);
    assert_eq!(
        bob.media_receiver.stats().rejected_total(),
        (frame.len() * 8) as u64
    );
    assert_eq!(bob.media_receiver.unprotect(&frame, 0).unwrap(), [0x5A; 60]);
}

#[test]
fn every_truncation_is_rejected() {
    let (mut alice, mut bob) = default_channels();
    let frame = alice.media_sender.protect(&[1; 60]).unwrap();
    for cut in 0..frame.len() {
        assert!(
            bob.media_receiver.unprotect(&frame[..cut], 0).is_err(),
            "cut {cut}"
        );
    }
    assert!(bob.media_receiver.unprotect(&frame, 0).is_ok());
}

#[test]
fn replay_is_rejected_and_counted() {
    let (mut alice, mut bob) = default_channels();
    let frame = alice.media_sender.protect(b"hello").unwrap();
    assert!(bob.media_receiver.unprotect(&frame, 0).is_ok());
    assert_eq!(
        bob.media_receiver.unprotect(&frame, 0),
        Err(FrameError::Replayed)
    );
    assert_eq!(
        bob.media_receiver.unprotect(&frame, 0),
        Err(FrameError::Replayed)
    );
    assert_eq!(
        bob.media_receiver.stats().rejected(RejectReason::Replayed),
        2
    );
}

#[test]
fn reorder_within_the_window_is_accepted_exactly_once() {
    let (mut alice, mut bob) = default_channels();
    let frames: Vec<_> = (0..100u8)
        .map(|i| alice.media_sender.protect(&[i]).unwrap())
        .collect();
    // Deliver in reverse order: every one is inside the window.
    for (i, f) in frames.iter().enumerate().rev() {
        assert_eq!(bob.media_receiver.unprotect(f, 0).unwrap(), [i as u8]);
    }
    for f in &frames {
        assert_eq!(
            bob.media_receiver.unprotect(f, 0),
            Err(FrameError::Replayed)
        );
    }
    assert_eq!(bob.media_receiver.stats().accepted, 100);
}

#[test]
fn a_frame_older_than_the_window_is_rejected() {
    let (mut alice, mut bob) = default_channels();
    let old = alice.media_sender.protect(b"old").unwrap();
    let mut last = Vec::new();
    for _ in 0..REPLAY_WINDOW {
        last = alice.media_sender.protect(b"new").unwrap();
    }
    bob.media_receiver.unprotect(&last, 0).unwrap();
    assert_eq!(
        bob.media_receiver.unprotect(&old, 0),
        Err(FrameError::TooOld)
    );
    assert_eq!(bob.media_receiver.stats().rejected(RejectReason::TooOld), 1);
}

#[test]
fn a_frame_reflected_back_to_its_sender_is_rejected() {
    let (mut alice, mut bob) = default_channels();
    let frame = alice.media_sender.protect(b"mine").unwrap();
    assert_eq!(
        alice.media_receiver.unprotect(&frame, 0),
        Err(FrameError::Reflected)
    );
    let frame = bob.data_sender.protect(b"caption").unwrap();
    assert_eq!(
        bob.data_receiver.unprotect(&frame, 0),
        Err(FrameError::Reflected)
    );
    assert_eq!(
        bob.data_receiver.stats().rejected(RejectReason::Reflected),
        1
    );
}

#[test]
fn media_and_data_keys_are_separate() {
    let (mut alice, mut bob) = default_channels();
    let audio = alice.media_sender.protect(b"audio").unwrap();
    assert_eq!(
        bob.data_receiver.unprotect(&audio, 0),
        Err(FrameError::AuthenticationFailed)
    );
    let caption = alice.data_sender.protect(b"caption").unwrap();
    assert_eq!(
        bob.media_receiver.unprotect(&caption, 0),
        Err(FrameError::AuthenticationFailed)
    );
}

#[test]
fn frames_from_another_call_are_forged() {
    let (mut alice, _) = default_channels();
    let (_, mut other_bob) = default_channels();
    let frame = alice.media_sender.protect(b"x").unwrap();
    assert_eq!(
        other_bob.media_receiver.unprotect(&frame, 0),
        Err(FrameError::AuthenticationFailed)
    );
}

/// The sender rekeys every 10 frames. Around every switch, frames are lost (the last two of the
/// old epoch and the first two of the new) and a late old-epoch frame arrives after the new
/// epoch started. Every delivered frame decodes, none twice.
#[test]
fn rekey_with_frames_lost_around_the_switch_keeps_working() {
    let sender = SenderConfig {
        rekey_after_frames: Some(10),
        ..SenderConfig::default()
    };
    let (mut alice, mut bob) = channels(sender, ReceiverConfig::default());
    let frames: Vec<(u64, Vec<u8>)> = (0..200u64)
        .map(|i| {
            let f = alice.media_sender.protect(&i.to_be_bytes()).unwrap();
            (i, f)
        })
        .collect();
    assert_eq!(alice.media_sender.epoch(), 19);
    let lost = |i: u64| matches!(i % 10, 8 | 0) && i > 0;
    let mut delivered = 0;
    let mut held_back: Option<(u64, Vec<u8>)> = None;
    for (i, f) in &frames {
        if lost(*i) {
            continue;
        }
        if i % 10 == 7 {
            // Delay the last surviving old-epoch frame past the switch.
            held_back = Some((*i, f.clone()));
            continue;
        }
        let now = i * 20;
        assert_eq!(
            bob.media_receiver.unprotect(f, now).unwrap(),
            i.to_be_bytes(),
            "frame {i}"
        );
        delivered += 1;
        if i % 10 == 2 {
            if let Some((j, late)) = held_back.take() {
                assert_eq!(
                    bob.media_receiver.unprotect(&late, now).unwrap(),
                    j.to_be_bytes()
                );
                delivered += 1;
            }
        }
    }
    assert_eq!(bob.media_receiver.epoch(), 19);
    assert_eq!(bob.media_receiver.stats().accepted, delivered);
    assert_eq!(bob.media_receiver.stats().rejected_total(), 0);
}

/// Positions are authenticated and, with full epochs, number the stream without gaps across
/// rekeys; a late frame of the previous epoch keeps its own (earlier) position.
#[test]
fn positions_number_the_stream_across_rekeys() {
    let epoch_frames = 10;
    let sender = SenderConfig {
        rekey_after_frames: Some(epoch_frames),
        ..SenderConfig::default()
    };
    let receiver = ReceiverConfig {
        epoch_frames: Some(epoch_frames),
        ..ReceiverConfig::default()
    };
    let (mut alice, mut bob) = channels(sender, receiver);
    let frames: Vec<Vec<u8>> = (0..35u64)
        .map(|_| alice.media_sender.protect(b"x").unwrap())
        .collect();
    assert_eq!(
        alice.media_sender.next_position().index(epoch_frames),
        Some(35)
    );
    // 19 (the last of epoch 1) arrives after 20 and 21 (the first of epoch 2).
    let order: Vec<usize> = (0..19).chain([20, 21, 19]).chain(22..35).collect();
    for i in order {
        let (_, position) = bob
            .media_receiver
            .unprotect_with_position(&frames[i], 0)
            .unwrap();
        let i = i as u64;
        assert_eq!(
            position,
            FramePosition {
                epoch: i / epoch_frames,
                counter: i % epoch_frames
            }
        );
        assert_eq!(position.index(epoch_frames), Some(i));
    }
}

/// Packets of 20, 40 and 60 ms take 1, 2 and 3 positions: the index stays a count of 20 ms
/// frames, no two packets share an index, and a span never crosses an epoch boundary (the
/// sender moves on early, leaving the old epoch's last counters unused).
#[test]
fn spans_number_frames_not_packets_and_never_straddle_an_epoch() {
    let epoch_frames = 10;
    let sender = SenderConfig {
        rekey_after_frames: Some(epoch_frames),
        ..SenderConfig::default()
    };
    let receiver = ReceiverConfig {
        epoch_frames: Some(epoch_frames),
        ..ReceiverConfig::default()
    };
    let (mut alice, mut bob) = channels(sender, receiver);
    // 1, 3, 3, 2 → indices 0, 1, 4, 7 (9 of epoch 0 is free); then 3 does not fit in
    // 9..10: it starts epoch 1 at index 10; 0 counts as 1.
    let spans = [1u64, 3, 3, 2, 3, 3, 0, 2, 3];
    let expected = [0u64, 1, 4, 7, 10, 13, 16, 17, 20];
    let mut covered = std::collections::BTreeSet::new();
    for (span, want) in spans.into_iter().zip(expected) {
        let frame = alice.media_sender.protect_span(b"x", span).unwrap();
        let (_, position) = bob
            .media_receiver
            .unprotect_with_position(&frame, 0)
            .unwrap();
        let index = position.index(epoch_frames).unwrap();
        assert_eq!(index, want, "span {span}");
        for k in index..index + span.max(1) {
            assert!(covered.insert(k), "index {k} used twice");
            assert_eq!(k / epoch_frames, position.epoch, "span crosses an epoch");
        }
    }
    assert_eq!(
        alice.media_sender.next_position().index(epoch_frames),
        Some(23)
    );
    // A span longer than an epoch never fits, and a counter limit is respected.
    let sender = SenderConfig {
        rekey_after_frames: None,
        counter_limit: 4,
    };
    let (mut alice, _) = channels(sender, ReceiverConfig::default());
    alice.media_sender.protect_span(b"x", 3).unwrap();
    assert!(matches!(
        alice.media_sender.protect_span(b"x", 3),
        Err(FrameError::CounterExhausted)
    ));
}

#[test]
fn a_counter_beyond_the_epoch_length_is_rejected_before_decryption() {
    let sender = SenderConfig {
        rekey_after_frames: None,
        ..SenderConfig::default()
    };
    let receiver = ReceiverConfig {
        epoch_frames: Some(4),
        ..ReceiverConfig::default()
    };
    let (mut alice, mut bob) = channels(sender, receiver);
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|_| alice.media_sender.protect(b"x").unwrap())
        .collect();
    assert_eq!(
        bob.media_receiver.unprotect(&frames[4], 0),
        Err(FrameError::Malformed("counter beyond the epoch length"))
    );
    assert_eq!(
        bob.media_receiver.stats().rejected(RejectReason::Malformed),
        1
    );
    // Nothing moved: every frame within the epoch still decrypts.
    for f in &frames[..4] {
        bob.media_receiver.unprotect(f, 0).unwrap();
    }
    // The protocol default, and what index() makes of a position.
    assert_eq!(ReceiverConfig::default().epoch_frames, Some(EPOCH_FRAMES));
    assert_eq!(
        SenderConfig::default().rekey_after_frames,
        Some(EPOCH_FRAMES)
    );
    let p = |epoch, counter| FramePosition { epoch, counter };
    assert_eq!(p(2, 5).index(EPOCH_FRAMES), Some(2 * EPOCH_FRAMES + 5));
    assert_eq!(p(0, EPOCH_FRAMES).index(EPOCH_FRAMES), None);
    assert_eq!(p(u64::MAX, 0).index(EPOCH_FRAMES), None);
    assert_eq!(p(0, 0).index(0), None);
}

#[test]
fn the_old_key_is_dropped_after_the_grace_period() {
    let receiver = ReceiverConfig {
        grace_period_ms: 1_000,
        ..ReceiverConfig::default()
    };
    let (mut alice, mut bob) = channels(SenderConfig::default(), receiver);
    let old = alice.media_sender.protect(b"old").unwrap();
    let old_2 = alice.media_sender.protect(b"old2").unwrap();
    alice.media_sender.rekey().unwrap();
    let new = alice.media_sender.protect(b"new").unwrap();
    bob.media_receiver.unprotect(&new, 5_000).unwrap();
    assert_eq!(bob.media_receiver.unprotect(&old, 5_999).unwrap(), b"old");
    assert!(matches!(
        bob.media_receiver.unprotect(&old_2, 6_000),
        Err(FrameError::UnknownKeyId(_))
    ));
}

#[test]
fn a_receiver_follows_a_jump_of_two_epochs_but_not_three() {
    let (mut alice, mut bob) = default_channels();
    alice.media_sender.rekey().unwrap();
    alice.media_sender.rekey().unwrap();
    let f = alice.media_sender.protect(b"two ahead").unwrap();
    assert_eq!(bob.media_receiver.unprotect(&f, 0).unwrap(), b"two ahead");
    assert_eq!(bob.media_receiver.epoch(), 2);
    for _ in 0..3 {
        alice.media_sender.rekey().unwrap();
    }
    let f = alice.media_sender.protect(b"three ahead").unwrap();
    assert!(bob.media_receiver.unprotect(&f, 0).is_err());
    assert_eq!(bob.media_receiver.epoch(), 2);
}

/// A forged frame with a "next epoch" key id must not move the receiver forward.
#[test]
fn a_forged_next_epoch_frame_does_not_advance_the_receiver() {
    let (mut alice, mut bob) = default_channels();
    let mut f = alice.media_sender.protect(b"x").unwrap();
    f[0] = (f[0] & 0x0F) | (1 << 5); // key id 2: epoch 1, initiator direction
    assert_eq!(
        bob.media_receiver.unprotect(&f, 0),
        Err(FrameError::AuthenticationFailed)
    );
    assert_eq!(bob.media_receiver.epoch(), 0);
    let genuine = alice.media_sender.protect(b"y").unwrap();
    assert_eq!(bob.media_receiver.unprotect(&genuine, 0).unwrap(), b"y");
}

#[test]
fn counter_exhaustion_is_an_error_never_a_wrap() {
    let sender = SenderConfig {
        rekey_after_frames: None,
        counter_limit: 3,
    };
    let (mut alice, mut bob) = channels(sender, ReceiverConfig::default());
    for i in 0..3u64 {
        let f = alice.media_sender.protect(b"x").unwrap();
        assert_eq!(FrameHeader::parse(&f).unwrap().0.counter, i);
        bob.media_receiver.unprotect(&f, 0).unwrap();
    }
    assert_eq!(
        alice.media_sender.protect(b"x"),
        Err(FrameError::CounterExhausted)
    );
    assert_eq!(
        alice.media_sender.protect(b"x"),
        Err(FrameError::CounterExhausted)
    );
    // An explicit rekey gives a fresh key, so counting may restart safely.
    alice.media_sender.rekey().unwrap();
    let f = alice.media_sender.protect(b"z").unwrap();
    assert_eq!(FrameHeader::parse(&f).unwrap().0.counter, 0);
    assert_eq!(bob.media_receiver.unprotect(&f, 0).unwrap(), b"z");
}

#[test]
fn oversized_input_is_refused_on_both_sides() {
    let (mut alice, mut bob) = default_channels();
    assert!(matches!(
        alice
            .media_sender
            .protect(&vec![0; aparte_e2ee::frame::MAX_PAYLOAD_LEN + 1]),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(matches!(
        bob.media_receiver
            .unprotect(&vec![0; aparte_e2ee::frame::MAX_FRAME_LEN + 1], 0),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(alice
        .media_sender
        .protect(&vec![0; aparte_e2ee::frame::MAX_PAYLOAD_LEN])
        .is_ok());
}

#[test]
fn overhead_is_17_to_19_bytes_with_default_rekeying() {
    let (mut alice, _) = default_channels();
    let mut sizes = std::collections::BTreeSet::new();
    for _ in 0..(16_384 * 2 + 10) {
        sizes.insert(alice.media_sender.protect(&[0; 60]).unwrap().len() - 60);
    }
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), vec![17, 18, 19]);
    assert_eq!(alice.media_sender.epoch(), 2);
}

/// Arbitrary bytes never panic the receiver and are always rejected.
#[test]
fn random_garbage_is_rejected_without_panicking() {
    use proptest::test_runner::TestRunner;
    let (_, bob) = default_channels();
    let bob = std::cell::RefCell::new(bob);
    let mut runner = TestRunner::default();
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..300), |bytes| {
            prop_assert!(bob
                .borrow_mut()
                .media_receiver
                .unprotect(&bytes, 0)
                .is_err());
            Ok(())
        })
        .unwrap();
}
