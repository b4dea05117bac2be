//! A hostile network and a hostile middlebox against a real call.
//!
//! 1. **On the relay, outside DTLS-SRTP:** a TURN relay that injects bit-flipped copies of RTP
//!    packets, corrupts some in place, replays recent ones and holds some back so later ones
//!    overtake them. SRTP authenticates every packet and keeps a replay window, so all of it is
//!    dropped below our e2ee layer: the call survives, every packet the relay did not destroy
//!    decrypts exactly once, and the e2ee receiver never sees a bad frame.
//! 2. **Inside the SRTP boundary** (a compromised SFU, which terminates SRTP and can write
//!    anything into it): the sending side writes through the transport a seeded mix of valid
//!    protected frames, frames it holds back (reordered) or never sends (lost), bit-flipped and
//!    truncated copies, replays, the receiver's own frames reflected back, frames under an
//!    unknown key, forgeries with a far-future counter, and, after skipping 600 counters, very
//!    old replays. Every write's outcome is predicted and checked: each bad frame is rejected
//!    and counted under its reason, every fresh frame is accepted exactly once whatever its
//!    order, the jitter buffer conceals the gaps, and only genuine frames reach the decoder.
//!
//! Both use seeded randomness: the seed is printed, and `APARTE_TEST_SEED=<seed>` replays it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use aparte_client::transport::TransportConfig;
use aparte_e2e_tests::call::{mean_ncc, play_out, speech, Arrival, Call};
use aparte_e2e_tests::relay::{test_seed, Mangling, RecordingRelay, Rng};
use aparte_e2ee::frame::{FrameHeader, TAG_LEN};
use aparte_e2ee::RejectReason;
use aparte_session::SessionError;

const SPEECH: &str = "The quick brown fox jumps over the lazy dog. \
                      Nobody between us can change what I say.";

/// Collects `n` arrivals at `peer`, or fails.
async fn collect(peer: &mut aparte_e2e_tests::call::CallPeer, n: usize) -> Vec<Arrival> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match peer.next_media(Duration::from_secs(10)).await {
            Some(a) => got.push(a),
            None => panic!("only {} of {n} payloads arrived", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_mangling_is_dropped_by_srtp_and_the_call_survives() {
    let started = Instant::now();
    let seed = test_seed(0x5EED_0001);
    let dir = tempfile::tempdir().unwrap();
    let (sent_audio, frames) = speech(SPEECH, dir.path(), "speech.wav");

    let mangling = Mangling {
        flip_copy: 0.10,
        corrupt: 0.03,
        replay: 0.10,
        reorder: 0.10,
    };
    let relay = RecordingRelay::start_with(Default::default(), mangling, seed).await;
    let config = TransportConfig {
        ice_servers: vec![relay.ice_server()],
        relay_only: true,
        loopback_only: true,
        turn_tls: None,
    };
    let mut call = Call::connect(&config, &config).await;
    assert!(call.alice.transport.is_relayed().await && call.bob.transport.is_relayed().await);
    relay.set_mangling(true);

    // Alice talks; the relay mangles her RTP packets on their way to Bob.
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for f in &frames {
        ticker.tick().await;
        call.alice.send_protected(f).await;
    }
    // An end marker, sent with the mangler off, tells when the relay has handled every
    // packet before it (it relays one listener's datagrams in order); only packets it held
    // back may still follow.
    relay.set_mangling(false);
    call.alice.send_protected(b"end-1").await;
    let mut played = Vec::new();
    let mut accepted = Vec::new();
    let mut marker_seen = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let counts = relay.counts();
        // Only in-place corruption destroys a packet; the rest is extra or late.
        if marker_seen && accepted.len() + counts.corrupted as usize == frames.len() {
            break;
        }
        let a = tokio::time::timeout_at(deadline, call.bob.media.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("only {} frames arrived", accepted.len()));
        let frame = call
            .bob
            .security
            .unprotect_media_frame(&a.payload, a.arrival_ms)
            .expect("every packet SRTP lets through is genuine");
        let opus = frame.payload;
        if opus == b"end-1" {
            marker_seen = true;
        } else {
            played.push((frame.index, a.arrival_ms, opus.clone()));
            accepted.push(opus);
        }
    }
    // Nothing that slipped past SRTP (a late replay, a flipped copy) may come after that.
    call.alice.send_protected(b"end-2").await;
    let last = call
        .bob
        .next_media(Duration::from_secs(10))
        .await
        .expect("the second end marker arrives");
    assert_eq!(
        call.bob.security.unprotect_media(&last.payload, 0).unwrap(),
        b"end-2",
        "something other than the genuine frames got through SRTP"
    );
    let counts = relay.counts();

    let stats = call.bob.security.media_stats().unwrap().clone();
    assert_eq!(
        stats.rejected_total(),
        0,
        "SRTP dropped every mangled packet"
    );
    // Each surviving frame exactly once.
    let unique: HashSet<&Vec<u8>> = accepted.iter().collect();
    let distinct_sent: HashSet<&Vec<u8>> = frames.iter().collect();
    assert!(unique.is_subset(&distinct_sent));

    let playback = play_out(&played);
    let (ncc, segments) = mean_ncc(&sent_audio, &playback.samples);
    println!(
        "relay mangling: {} RTP packets sent; relay injected {} flipped copies, corrupted {}, \
         replayed {}, reordered {}; {} arrived, all decrypted, 0 rejected by e2ee; \
         jitter buffer lost {} (FEC {}), concealed {}; mean NCC {ncc:.3} over {segments} segments",
        frames.len(),
        counts.flipped_copies,
        counts.corrupted,
        counts.replayed,
        counts.reordered,
        accepted.len(),
        playback.jitter.lost,
        playback.jitter.fec_recovered,
        playback.jitter.concealed,
    );
    assert!(counts.flipped_copies > 0 && counts.replayed > 0 && counts.reordered > 0);
    assert_eq!(playback.decode_errors, 0);
    // The threshold of the impaired-path test (bad_network.rs), for a similar loss.
    assert!(ncc >= 0.60, "the call did not survive: mean NCC {ncc:.3}");

    call.close().await;
    relay.close().await;
    println!("test time {:.1} s", started.elapsed().as_secs_f64());
}

/// What the receiver must do with one write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Accept it and return Opus frame `i`.
    Accept(usize),
    /// Reject it for this reason.
    Reject(RejectReason),
}

/// One payload the adversary writes into the transport.
struct Write {
    bytes: Vec<u8>,
    expect: Expect,
}

fn header_len(frame: &[u8]) -> usize {
    FrameHeader::parse(frame).expect("our own frame parses").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_reordered_frames_inside_srtp_are_rejected_and_counted() {
    let started = Instant::now();
    let seed = test_seed(0x5EED_0002);
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let (_, frames) = speech(SPEECH, dir.path(), "speech.wav");
    let n = frames.len();

    // The adversary sits inside SRTP: a direct loopback call is enough (no relay).
    let config = TransportConfig {
        loopback_only: true,
        turn_tls: None,
        ..Default::default()
    };
    let mut call = Call::connect(&config, &config).await;

    // The honest sender protects every frame in order; the adversary decides what reaches the
    // wire and when. `ticks[t]` is written at tick t, in order.
    let valid: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| call.alice.security.protect_media(f).unwrap())
        .collect();
    let mut ticks: BTreeMap<usize, Vec<Write>> = BTreeMap::new();
    // Tick at which each genuine frame is written (None: never).
    let mut genuine_at: Vec<Option<usize>> = vec![None; n];
    let (mut dropped, mut delayed) = (0, 0);
    for i in 0..n {
        let r = rng.unit();
        let at = if r < 0.05 {
            dropped += 1;
            None
        } else if r < 0.15 {
            delayed += 1;
            Some(i + 1 + rng.below(3))
        } else {
            Some(i)
        };
        genuine_at[i] = at;
        let here = ticks.entry(i).or_default();
        let v = &valid[i];
        let hl = header_len(v);
        // Injections at tick i, all written before the genuine frame of this tick.
        if rng.chance(0.08) {
            let mut copy = v.clone();
            let pos = hl + rng.below(v.len() - hl);
            copy[pos] ^= 1 << rng.below(8);
            here.push(Write {
                bytes: copy,
                expect: Expect::Reject(RejectReason::Forged),
            });
        }
        if rng.chance(0.04) {
            let cut = 1 + rng.below(4);
            here.push(Write {
                bytes: v[..v.len() - cut].to_vec(),
                expect: Expect::Reject(RejectReason::Forged),
            });
        }
        if rng.chance(0.04) {
            let len = 1 + rng.below(hl + TAG_LEN - 1);
            here.push(Write {
                bytes: v[..len].to_vec(),
                expect: Expect::Reject(RejectReason::Malformed),
            });
        }
        if rng.chance(0.03) {
            // Key id 6 (epoch 3), which the receiver has no key for at epoch 0.
            let mut copy = v.clone();
            copy[0] = (copy[0] & 0x0F) | 0x60;
            here.push(Write {
                bytes: copy,
                expect: Expect::Reject(RejectReason::UnknownKey),
            });
        }
        if rng.chance(0.03) {
            // The receiver's own frame, reflected back to it.
            let own = call.bob.security.protect_media(&frames[i]).unwrap();
            here.push(Write {
                bytes: own,
                expect: Expect::Reject(RejectReason::Reflected),
            });
        }
        if rng.chance(0.03) {
            // A forgery claiming a counter far ahead: it must not move the replay window,
            // or the genuine frame with that counter (if any) would be refused later.
            let mut forged = Vec::new();
            FrameHeader {
                key_id: 0,
                counter: (i + 100) as u64,
            }
            .encode(&mut forged);
            forged.extend((0..frames[i].len() + TAG_LEN).map(|_| rng.next_u64() as u8));
            here.push(Write {
                bytes: forged,
                expect: Expect::Reject(RejectReason::Forged),
            });
        }
        if rng.chance(0.06) {
            // Replay a genuine frame written at an earlier tick (so already accepted).
            let earlier: Vec<usize> = (i.saturating_sub(8)..i)
                .filter(|&j| genuine_at[j].is_some_and(|t| t < i))
                .collect();
            if !earlier.is_empty() {
                let j = earlier[rng.below(earlier.len())];
                here.push(Write {
                    bytes: valid[j].clone(),
                    expect: Expect::Reject(RejectReason::Replayed),
                });
            }
        }
    }
    for (i, at) in genuine_at.iter().enumerate() {
        if let Some(t) = at {
            ticks.entry(*t).or_default().push(Write {
                bytes: valid[i].clone(),
                expect: Expect::Accept(i),
            });
        }
    }
    // Finally: the sender skips 600 counters (as if 12 s were lost), one fresh frame moves
    // the window on, and the adversary replays frames from before the gap (too old) and the
    // fresh one (replayed).
    for _ in 0..600 {
        call.alice.security.protect_media(&frames[0]).unwrap();
    }
    let fresh = call.alice.security.protect_media(&frames[0]).unwrap();
    let end = ticks.keys().next_back().copied().unwrap_or(0) + 1;
    ticks.insert(
        end,
        vec![
            Write {
                bytes: fresh.clone(),
                expect: Expect::Accept(0),
            },
            Write {
                bytes: valid[n / 2].clone(),
                expect: Expect::Reject(RejectReason::TooOld),
            },
            Write {
                bytes: valid[0].clone(),
                expect: Expect::Reject(RejectReason::TooOld),
            },
            Write {
                bytes: fresh,
                expect: Expect::Reject(RejectReason::Replayed),
            },
        ],
    );

    // Write it all, paced like audio.
    let mut expected = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for (_, writes) in ticks {
        ticker.tick().await;
        for w in writes {
            call.alice.send_raw(w.bytes).await;
            expected.push(w.expect);
        }
    }
    let mut arrivals = collect(&mut call.bob, expected.len()).await;
    // Handle them in the order written (each write is one RTP packet, numbered in order), so
    // the expected outcomes line up one to one even if the loopback reordered something.
    let first = arrivals[0].sequence;
    arrivals.sort_by_key(|a| a.sequence.wrapping_sub(first));

    let mut tally: BTreeMap<RejectReason, u64> = BTreeMap::new();
    let mut accepted = vec![0u32; n];
    let mut played = Vec::new();
    for (k, (a, expect)) in arrivals.iter().zip(&expected).enumerate() {
        let got = call
            .bob
            .security
            .unprotect_media_frame(&a.payload, a.arrival_ms);
        match (expect, got) {
            (Expect::Accept(i), Ok(frame)) => {
                assert_eq!(frame.payload, frames[*i], "write {k}: wrong plaintext");
                accepted[*i] += 1;
                played.push((frame.index, a.arrival_ms, frame.payload));
            }
            (Expect::Reject(reason), Err(SessionError::Frame(e))) => {
                assert_eq!(
                    e.reject_reason(),
                    Some(*reason),
                    "write {k}: rejected for the wrong reason ({e})"
                );
                *tally.entry(*reason).or_default() += 1;
            }
            (expect, got) => panic!("write {k}: expected {expect:?}, got {got:?}"),
        }
    }

    // Counted by reason, exactly as injected.
    let stats = call.bob.security.media_stats().unwrap().clone();
    for reason in RejectReason::ALL {
        assert_eq!(
            stats.rejected(reason),
            tally.get(&reason).copied().unwrap_or(0),
            "{}",
            reason.as_str()
        );
    }
    // Every frame that was written was accepted exactly once (frame 0 twice: once in the
    // stream, once as the fresh frame after the gap); the dropped ones never.
    for (i, at) in genuine_at.iter().enumerate() {
        let want = u32::from(at.is_some()) + u32::from(i == 0);
        assert_eq!(accepted[i], want, "frame {i}");
    }

    // The receiving audio path conceals the gaps and decodes only genuine frames.
    let playback = play_out(&played);
    let genuine: HashSet<&Vec<u8>> = frames.iter().collect();
    assert!(
        playback.decoded_packets.iter().all(|p| genuine.contains(p)),
        "a packet that is not a sent frame reached the decoder"
    );
    assert_eq!(playback.decode_errors, 0);
    assert!(playback.jitter.lost > 0, "gaps were concealed");

    let summary: Vec<String> = RejectReason::ALL
        .iter()
        .map(|r| format!("{} {}", r.as_str(), stats.rejected(*r)))
        .collect();
    println!(
        "inside SRTP: {} writes for {n} frames ({dropped} never sent, {delayed} reordered); \
         accepted {}, rejected {} ({}); jitter buffer: lost {}, FEC {}, concealed {}, \
         late {}, decoded {} packets, all genuine",
        expected.len(),
        stats.accepted,
        stats.rejected_total(),
        summary.join(", "),
        playback.jitter.lost,
        playback.jitter.fec_recovered,
        playback.jitter.concealed,
        playback.jitter.late,
        playback.decoded_packets.len(),
    );
    for reason in [
        RejectReason::Forged,
        RejectReason::Malformed,
        RejectReason::Replayed,
        RejectReason::Reflected,
        RejectReason::UnknownKey,
        RejectReason::TooOld,
    ] {
        assert!(stats.rejected(reason) > 0, "{} exercised", reason.as_str());
    }

    call.close().await;
    println!("test time {:.1} s", started.elapsed().as_secs_f64());
}

/// 3. **Inside SRTP, the RTP sequence numbers lie.** Whoever terminates SRTP (an SFU, or a
///    DTLS-terminating man in the middle) chooses the RTP sequence numbers. Here the sending
///    side writes its protected frames with each pair swapped, so every RTP sequence number
///    (assigned in write order) points one frame away from the frame's authenticated e2ee
///    index, and the frames arrive in that scrambled order. Played by the authenticated
///    index, what the receiver hears is what was said; played by the RTP sequence numbers
///    (the old behaviour, run here as the control), it is scrambled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_rtp_sequence_numbers_inside_srtp_do_not_reorder_the_audio() {
    let dir = tempfile::tempdir().unwrap();
    let (sent_audio, frames) = speech(SPEECH, dir.path(), "speech.wav");
    let config = TransportConfig {
        ice_servers: vec![],
        relay_only: false,
        loopback_only: true,
        turn_tls: None,
    };
    let mut call = Call::connect(&config, &config).await;
    // Protect in the order spoken (e2ee index i for frame i), write each pair swapped.
    let protected: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| call.alice.security.protect_media(f).unwrap())
        .collect();
    let mut order: Vec<usize> = (0..protected.len()).collect();
    for pair in order.chunks_mut(2) {
        pair.reverse();
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for &i in &order {
        ticker.tick().await;
        call.alice.send_raw(protected[i].clone()).await;
    }
    let arrivals = collect(&mut call.bob, protected.len()).await;
    let first_seq = arrivals[0].sequence;
    let mut by_index = Vec::new();
    let mut by_rtp = Vec::new();
    for a in &arrivals {
        let frame = call
            .bob
            .security
            .unprotect_media_frame(&a.payload, a.arrival_ms)
            .expect("every frame is genuine");
        let rtp = u64::from(a.sequence.wrapping_sub(first_seq));
        by_index.push((frame.index, a.arrival_ms, frame.payload.clone()));
        by_rtp.push((rtp, a.arrival_ms, frame.payload));
    }
    let base = by_index.iter().map(|a| a.0).min().unwrap();
    let mismatched = by_index
        .iter()
        .zip(&by_rtp)
        .filter(|(i, r)| i.0 - base != r.0)
        .count();
    let good = play_out(&by_index);
    let control = play_out(&by_rtp);
    let (ncc, segments) = mean_ncc(&sent_audio, &good.samples);
    let (ncc_rtp, _) = mean_ncc(&sent_audio, &control.samples);
    println!(
        "{} frames, {mismatched} with an RTP sequence number that disagrees with their index; \
         played by index: mean NCC {ncc:.3} over {segments} segments, late {}, concealed {}; \
         by RTP sequence (control): mean NCC {ncc_rtp:.3}",
        arrivals.len(),
        good.jitter.late,
        good.jitter.concealed
    );
    assert!(
        mismatched * 10 >= arrivals.len() * 9,
        "the scramble took effect"
    );
    assert_eq!(
        good.jitter.duplicates, 0,
        "nothing authentic is taken for a copy"
    );
    assert!(
        ncc >= 0.80,
        "played by index, the audio is what was said: {ncc:.3}"
    );
    assert!(
        ncc_rtp < ncc - 0.2,
        "the control must show the scramble ({ncc_rtp:.3} vs {ncc:.3})"
    );
    call.close().await;
}
