//! Frame accounting: does every frame the peer sent have an explanation on this side?
//!
//! For one direction of a call, every frame the sender protected is, on the receiving side,
//! exactly one of:
//!
//! * **decrypted**, and then played, dropped by the jitter buffer for a reason (late,
//!   duplicate, invalid, for latency, buffer full, reset), dropped before it (the hand-off
//!   queue was full), or still buffered when the call ended;
//! * **rejected** by the e2ee layer (by reason), or **refused** before decryption because
//!   media was not allowed yet (it came before the keys were confirmed);
//! * **lost**: it never arrived.
//!
//! [`FrameCounts::reconcile`] checks this with counters that are measured independently:
//! the sender's count, the e2ee layer's accepted/rejected counts, the session's refusals, the
//! client's queue drops and the jitter buffer's own counters, including which authenticated
//! indices it saw (so frames that never arrived are counted from the gaps, the head and the
//! tail of the index sequence, not inferred from the other counters). Whatever does not add
//! up is returned as an unexplained remainder, which an end-to-end test asserts is zero.
//!
//! The unit is the 20 ms frame, the one the authenticated index counts: a 60 ms packet is
//! three frames at three consecutive indices ([`crate::ptime`]). Only arrivals are counted in
//! packets ([`FrameCounts::arrived`] against [`FrameCounts::decrypted_packets`]): a packet that
//! was rejected or refused was never opened, so its length is unknown and it counts as one
//! frame in `lost` below. A sender that moves to a new epoch early, because a packet would not
//! fit in the old one, leaves up to two indices unused; they count as lost too (at most two
//! frames per epoch of 16,384).
//!
//! Rejections are the one term that cannot be matched to sent frames one by one: a forged or
//! replayed packet injected by an attacker is rejected without being a frame the peer sent.
//! So `lost` is the frames whose index never reached the buffer minus the rejected and
//! refused arrivals, and rejections beyond that are reported separately
//! ([`Reconciliation::excess_rejected`]), not as an error.

use crate::jitter::JitterStats;

/// The counters of one direction of a call, from both ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCounts {
    /// Sender: frames protected, i.e. the number of indices used (`0..sent`).
    pub sent: u64,
    /// Receiver: media packets that reached the e2ee layer, if counted: must equal
    /// `decrypted + rejected + refused`.
    pub arrived: Option<u64>,
    /// Receiver: packets refused before decryption because media was not allowed.
    pub refused: u64,
    /// Receiver: packets the e2ee layer rejected, all reasons together.
    pub rejected: u64,
    /// Receiver: 20 ms frames in the packets that authenticated.
    pub decrypted: u64,
    /// Receiver: packets that authenticated, when packets may hold several frames; `arrived`
    /// is checked against it (`None`: one frame per packet, `decrypted` is used).
    pub decrypted_packets: Option<u64>,
    /// Receiver: decrypted frames dropped before reaching the jitter buffer (a full queue).
    pub dropped_before_buffer: u64,
    /// Receiver: the jitter buffer's counters at the end of the call.
    pub jitter: JitterStats,
}

/// What [`FrameCounts::reconcile`] found. A remainder is positive when frames are missing
/// from the explanation and negative when frames were explained twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Sent frames whose index never reached the jitter buffer and that were not dropped
    /// before it: `sent − distinct indices seen − dropped_before_buffer`. They were lost on
    /// the way, rejected or refused.
    pub not_decrypted: u64,
    /// Of those, the frames that never arrived: `not_decrypted − rejected − refused`
    /// (at least 0).
    pub lost: u64,
    /// Rejected and refused packets beyond `not_decrypted`: packets that were not frames the
    /// peer sent (injected, replayed) or copies of frames that also arrived intact.
    pub excess_rejected: u64,
    /// Frames the sender does not account for: the span of indices from `sent` (or the
    /// lowest seen, if higher) to the highest the buffer saw. Always a defect, or a sender
    /// count taken too early.
    pub beyond_sent: u64,
    /// `sent − (decrypted + not_decrypted)`: non-zero if decrypted frames vanished (or were
    /// counted twice) between the e2ee layer and the jitter buffer, or the index is not
    /// gap-free across rekeys.
    pub unexplained_sent: i128,
    /// `decrypted − (dropped_before_buffer + everything pushed into the jitter buffer)`.
    pub unexplained_decrypted: i128,
    /// `received − (played + dropped after receipt + buffered)` inside the jitter buffer.
    pub unexplained_buffered: i128,
    /// `arrived − (decrypted + rejected + refused)`, when arrivals were counted.
    pub unexplained_arrived: Option<i128>,
}

impl Reconciliation {
    /// Whether every frame is explained exactly once (excess rejections are allowed: they are
    /// attacks or network duplicates, not frames of the peer's stream).
    pub fn is_balanced(&self) -> bool {
        self.beyond_sent == 0
            && self.unexplained_sent == 0
            && self.unexplained_decrypted == 0
            && self.unexplained_buffered == 0
            && self.unexplained_arrived.unwrap_or(0) == 0
    }
}

impl FrameCounts {
    /// Checks that the counters add up; see the [module docs](self).
    pub fn reconcile(&self) -> Reconciliation {
        let j = &self.jitter;
        let w = i128::from;
        // Indices the buffer saw that the sender never used.
        let beyond_sent = match j.highest_index {
            Some(h) if h >= self.sent => {
                let low = j.lowest_index.unwrap_or(h).max(self.sent);
                h.saturating_sub(low).saturating_add(1)
            }
            _ => 0,
        };
        let seen_in_range = j.distinct_frames.saturating_sub(beyond_sent);
        let not_decrypted = self
            .sent
            .saturating_sub(seen_in_range)
            .saturating_sub(self.dropped_before_buffer);
        let arrived_undecrypted = self.rejected.saturating_add(self.refused);
        let lost = not_decrypted.saturating_sub(arrived_undecrypted);
        let excess_rejected = arrived_undecrypted.saturating_sub(not_decrypted);
        let kept = j
            .played
            .saturating_add(j.dropped_for_latency)
            .saturating_add(j.dropped_full)
            .saturating_add(j.dropped_on_reset)
            .saturating_add(u64::from(j.buffered));
        Reconciliation {
            not_decrypted,
            lost,
            excess_rejected,
            beyond_sent,
            unexplained_sent: w(self.sent) - w(self.decrypted) - w(not_decrypted),
            unexplained_decrypted: w(self.decrypted)
                - w(self.dropped_before_buffer)
                - w(j.pushed()),
            unexplained_buffered: w(j.received) - w(kept),
            unexplained_arrived: self.arrived.map(|a| {
                w(a) - w(self.decrypted_packets.unwrap_or(self.decrypted))
                    - w(self.rejected)
                    - w(self.refused)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jitter::{JitterBuffer, JitterConfig};

    /// Pushes `indices` one per 20 ms and plays until the buffer is empty.
    fn jitter_after(indices: &[u64]) -> JitterStats {
        let mut b = JitterBuffer::new(JitterConfig::default()).unwrap();
        let mut now = 0;
        for &i in indices {
            b.push_frame(i, now + 5, vec![1]);
            b.pop(now);
            now += 20;
        }
        for _ in 0..100 {
            b.pop(now);
            now += 20;
        }
        b.end_of_stream();
        b.stats()
    }

    #[test]
    fn a_clean_call_balances_with_nothing_lost() {
        let jitter = jitter_after(&(0..100).collect::<Vec<_>>());
        let counts = FrameCounts {
            sent: 100,
            arrived: Some(100),
            decrypted: 100,
            jitter,
            ..FrameCounts::default()
        };
        let r = counts.reconcile();
        assert!(r.is_balanced(), "{r:?}");
        assert_eq!((r.not_decrypted, r.lost, jitter.played), (0, 0, 100));
    }

    #[test]
    fn loss_rejection_refusal_head_and_tail_are_all_explained() {
        // Sent 0..100. 0 and 1 came before the keys (refused), 40 was corrupted (rejected),
        // 50..53 and the last two never arrived; a queue drop lost 60 after decryption.
        let received: Vec<u64> = (2..98)
            .filter(|i| *i != 40 && !(50..53).contains(i) && *i != 60)
            .collect();
        let jitter = jitter_after(&received);
        let decrypted = received.len() as u64 + 1;
        let counts = FrameCounts {
            sent: 100,
            arrived: Some(decrypted + 1 + 2),
            refused: 2,
            rejected: 1,
            decrypted,
            decrypted_packets: None,
            dropped_before_buffer: 1,
            jitter,
        };
        let r = counts.reconcile();
        assert!(r.is_balanced(), "{r:?}");
        assert_eq!(r.not_decrypted, 2 + 1 + 3 + 2);
        assert_eq!((r.lost, r.excess_rejected), (5, 0));
        assert_eq!(jitter.missing, 1 + 3 + 1, "the gaps between 2 and 97");
    }

    /// 60 ms packets: each fills three indices; the sender's count, the buffer's indices and
    /// the decrypted frames are 20 ms frames, the arrivals packets.
    #[test]
    fn multi_frame_packets_balance_in_20_ms_frames() {
        // 20 packets of three frames (0..60), the 8th (21..24) lost.
        let received: Vec<u64> = (0..60).filter(|i| !(21..24).contains(i)).collect();
        let jitter = jitter_after(&received);
        let counts = FrameCounts {
            sent: 60,
            arrived: Some(19),
            decrypted: 57,
            decrypted_packets: Some(19),
            jitter,
            ..FrameCounts::default()
        };
        let r = counts.reconcile();
        assert!(r.is_balanced(), "{r:?}");
        assert_eq!((r.not_decrypted, r.lost), (3, 3));
        // Counting arrivals against frames would not add up.
        let r = FrameCounts {
            decrypted_packets: None,
            ..counts
        }
        .reconcile();
        assert!(!r.is_balanced(), "{r:?}");
    }

    #[test]
    fn injected_rejections_are_excess_not_a_remainder() {
        let jitter = jitter_after(&(0..50).collect::<Vec<_>>());
        let counts = FrameCounts {
            sent: 50,
            arrived: Some(50 + 7),
            rejected: 7,
            decrypted: 50,
            jitter,
            ..FrameCounts::default()
        };
        let r = counts.reconcile();
        assert!(r.is_balanced(), "{r:?}");
        assert_eq!((r.lost, r.excess_rejected), (0, 7));
    }

    #[test]
    fn frames_that_vanish_or_are_counted_twice_leave_a_remainder() {
        let jitter = jitter_after(&(0..50).collect::<Vec<_>>());
        let base = FrameCounts {
            sent: 50,
            arrived: Some(50),
            decrypted: 50,
            jitter,
            ..FrameCounts::default()
        };
        assert!(base.reconcile().is_balanced());

        // Two decrypted frames never reached the buffer and nobody counted them.
        let vanished = jitter_after(&(0..48).collect::<Vec<_>>());
        let r = FrameCounts {
            jitter: vanished,
            ..base
        }
        .reconcile();
        assert_eq!(r.unexplained_decrypted, 2, "{r:?}");
        assert!(!r.is_balanced());

        // Two packets arrived but were neither decrypted, rejected nor refused (the frames
        // dropped before the keys, uncounted, of issue 15).
        let r = FrameCounts {
            arrived: Some(52),
            sent: 52,
            ..base
        }
        .reconcile();
        assert_eq!(r.unexplained_arrived, Some(2), "{r:?}");
        assert!(!r.is_balanced());

        // A sender count that is too low: the buffer saw indices the sender never used.
        let r = FrameCounts { sent: 45, ..base }.reconcile();
        assert_eq!(r.beyond_sent, 5, "{r:?}");
        assert!(!r.is_balanced());

        // A frame counted as decrypted twice.
        let r = FrameCounts {
            decrypted: 51,
            ..base
        }
        .reconcile();
        assert_eq!((r.unexplained_sent, r.unexplained_decrypted), (-1, 1));

        // The jitter buffer lost track of a packet.
        let mut broken = jitter;
        broken.played -= 1;
        let r = FrameCounts {
            jitter: broken,
            ..base
        }
        .reconcile();
        assert_eq!(r.unexplained_buffered, 1);
        assert!(!r.is_balanced());
    }

    #[test]
    fn hostile_counters_do_not_panic() {
        let mut jitter = JitterStats {
            received: u64::MAX,
            played: u64::MAX,
            late: u64::MAX,
            distinct_frames: u64::MAX,
            lowest_index: Some(0),
            highest_index: Some(u64::MAX),
            buffered: u32::MAX,
            ..JitterStats::default()
        };
        for sent in [0, 1, u64::MAX] {
            let counts = FrameCounts {
                sent,
                arrived: Some(u64::MAX),
                refused: u64::MAX,
                rejected: u64::MAX,
                decrypted: u64::MAX,
                decrypted_packets: Some(u64::MAX),
                dropped_before_buffer: u64::MAX,
                jitter,
            };
            let _ = counts.reconcile();
            jitter.lowest_index = Some(u64::MAX);
        }
    }
}
