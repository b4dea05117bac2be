//! The Opus bitrate step, following the link: down when the peer reports loss or the round
//! trip grows (the link is full), back up after a long clean spell.
//!
//! Every packet within a step has the same size (the encoder stays CBR): a variable bitrate
//! would let packet sizes tell what is said. Only the step changes, at most every
//! [`BitrateConfig::hold_ms`], so an observer learns the link's state, not the speech.
//!
//! Rules, on each receiver report from the peer (about one a second):
//! - loss ≥ [`BitrateConfig::loss_down_percent`], or RTT ≥ [`BitrateConfig::rtt_down_ms`] in
//!   two reports in a row (one slow report may describe a queue already drained): one step
//!   down; loss ≥ [`BitrateConfig::loss_severe_percent`]: two steps;
//! - loss < [`BitrateConfig::loss_clean_percent`] and RTT below [`BitrateConfig::rtt_down_ms`]
//!   for [`BitrateConfig::up_after_ms`]: one step up; after a step down the first try back
//!   needs twice that (the step just left did not fit), and a step up that brings loss back
//!   doubles the clean spell the next one needs (up to [`BitrateConfig::up_after_max_ms`]), so
//!   a link that only fits the lower step is not probed every few seconds;
//! - never two changes within [`BitrateConfig::hold_ms`] (the reports must first show what the
//!   last change did).
//!
//! ## Packet time
//!
//! Each step also says how much audio one packet carries ([`PACKET_MS`]). Every packet pays
//! about 82 bytes of headers on the wire (IPv4, UDP, RTP, SRTP tag, e2ee header and tag, and
//! the Ethernet header a `tc tbf` counts), 32.8 kbit/s at 20 ms per packet, more than the
//! audio itself at the low steps. The top steps keep 20 ms (the least delay); 16 kbit/s sends
//! 40 ms per packet (32.4 kbit/s on the wire instead of 48.8, so it fits a 48 kbit/s uplink
//! with room to spare), and 12 and 8 kbit/s send 60 ms (22.9 and 18.9 kbit/s instead of 44.8
//! and 40.8, so a 32 kbit/s uplink keeps about 9 kbit/s for signaling, RTCP and captions).
//! 60 ms is Opus's longest single frame; longer packets would only add delay for a few
//! kbit/s. Within a step every packet still has the same size and the same duration.

/// The steps, highest first, in bit/s.
pub const STEPS: [u32; 5] = [32_000, 24_000, 16_000, 12_000, 8_000];

/// The packet time of each step of [`STEPS`], in ms: audio carried by one packet.
pub const PACKET_MS: [u32; 5] = [20, 20, 40, 60, 60];

/// Thresholds of the rules (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BitrateConfig {
    /// Loss in one report that moves one step down, percent.
    pub loss_down_percent: f64,
    /// Loss in one report that moves two steps down, percent.
    pub loss_severe_percent: f64,
    /// Loss below this counts as clean, percent.
    pub loss_clean_percent: f64,
    /// A round trip at least this long means queues are filling: one step down.
    pub rtt_down_ms: f64,
    /// Least time between two changes.
    pub hold_ms: u64,
    /// Clean time before a step up.
    pub up_after_ms: u64,
    /// The longest clean time a step up may need after failed ones.
    pub up_after_max_ms: u64,
    /// After the path was interrupted (an outage, a new path), reports are not counted for
    /// this long: the first ones cover the gap, whose loss says nothing about congestion.
    /// The peer reports about once a second, so this skips one or two.
    pub ignore_after_interruption_ms: u64,
}

impl Default for BitrateConfig {
    fn default() -> Self {
        BitrateConfig {
            loss_down_percent: 5.0,
            loss_severe_percent: 20.0,
            loss_clean_percent: 1.0,
            rtt_down_ms: 600.0,
            hold_ms: 3_000,
            up_after_ms: 10_000,
            up_after_max_ms: 80_000,
            ignore_after_interruption_ms: 2_500,
        }
    }
}

/// One receiver report from the peer about our stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkReport {
    /// Share of our packets lost over the report's interval, percent.
    pub loss_percent: f64,
    /// Round-trip time, when known, ms.
    pub rtt_ms: Option<f64>,
}

/// The bitrate ladder of one sending stream.
#[derive(Debug, Clone)]
pub struct BitrateLadder {
    config: BitrateConfig,
    /// Index into [`STEPS`] of the highest step allowed (the call's configured bitrate).
    top: usize,
    current: usize,
    last_change_ms: Option<u64>,
    clean_since_ms: Option<u64>,
    up_after_ms: u64,
    /// The last change was a step up, not yet confirmed by a clean report.
    probing_up: bool,
    /// Reports in a row with a long round trip.
    rtt_high_run: u32,
    changes: u32,
    lowest: usize,
    /// Reports before this time are not counted (see [`BitrateLadder::path_interrupted`]).
    ignore_until_ms: Option<u64>,
}

impl BitrateLadder {
    /// A ladder whose top (and start) is the step nearest to `start_bps` from below.
    pub fn new(config: BitrateConfig, start_bps: u32) -> Self {
        let top = STEPS
            .iter()
            .position(|&s| s <= start_bps)
            .unwrap_or(STEPS.len() - 1);
        BitrateLadder {
            config,
            top,
            current: top,
            last_change_ms: None,
            clean_since_ms: None,
            up_after_ms: config.up_after_ms,
            probing_up: false,
            rtt_high_run: 0,
            changes: 0,
            lowest: top,
            ignore_until_ms: None,
        }
    }

    /// The bitrate to send now, bit/s.
    pub fn bitrate(&self) -> u32 {
        STEPS[self.current]
    }

    /// The lowest bitrate used so far, bit/s.
    pub fn lowest(&self) -> u32 {
        STEPS[self.lowest]
    }

    /// The packet time to send now, ms (20, 40 or 60; see the module doc).
    pub fn packet_ms(&self) -> u32 {
        PACKET_MS[self.current]
    }

    /// The packet time of the lowest step used so far, ms: the longest packet time used.
    pub fn lowest_packet_ms(&self) -> u32 {
        PACKET_MS[self.lowest]
    }

    /// Changes made so far.
    pub fn changes(&self) -> u32 {
        self.changes
    }

    /// Takes one report; returns the new bitrate when it changed (the packet time that goes
    /// with it is then [`Self::packet_ms`]). NaN or negative figures are
    /// read as clean, figures over 100 % as 100 %.
    pub fn on_report(&mut self, report: LinkReport, now_ms: u64) -> Option<u32> {
        if self.ignore_until_ms.is_some_and(|until| now_ms < until) {
            return None;
        }
        let loss = if report.loss_percent.is_nan() {
            0.0
        } else {
            report.loss_percent.clamp(0.0, 100.0)
        };
        self.rtt_high_run = if report
            .rtt_ms
            .is_some_and(|rtt| rtt >= self.config.rtt_down_ms)
        {
            self.rtt_high_run.saturating_add(1)
        } else {
            0
        };
        let rtt_high = self.rtt_high_run >= 2;
        let held = self
            .last_change_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < self.config.hold_ms);
        if loss >= self.config.loss_down_percent || rtt_high {
            self.clean_since_ms = None;
            if held {
                return None;
            }
            if self.probing_up {
                // The step up did not fit: wait longer before the next try.
                self.up_after_ms = (self.up_after_ms * 2).min(self.config.up_after_max_ms);
                self.probing_up = false;
            }
            // The step we leave did not fit: the first try back waits at least twice the
            // clean spell (a try that fails doubles it again, above).
            self.up_after_ms = self
                .up_after_ms
                .max(self.config.up_after_ms * 2)
                .min(self.config.up_after_max_ms);
            let steps = if loss >= self.config.loss_severe_percent {
                2
            } else {
                1
            };
            let next = (self.current + steps).min(STEPS.len() - 1);
            return self.change_to(next, now_ms);
        }
        if loss >= self.config.loss_clean_percent {
            // Some loss, not enough to step down: not clean either.
            self.clean_since_ms = None;
            return None;
        }
        if !held {
            // A clean report after the hold: the last step up fits.
            self.probing_up = false;
        }
        let since = *self.clean_since_ms.get_or_insert(now_ms);
        if self.current > self.top && !held && now_ms.saturating_sub(since) >= self.up_after_ms {
            self.probing_up = true;
            self.clean_since_ms = None;
            return self.change_to(self.current - 1, now_ms);
        }
        None
    }

    /// The path was interrupted at `now_ms` (the link went down, or came back after an
    /// outage): the loss in the reports of the next [`BitrateConfig::ignore_after_interruption_ms`]
    /// is the gap's, not congestion's, so they are not counted (neither as lossy nor as clean).
    /// Call it when the outage starts and again when the link is back.
    pub fn path_interrupted(&mut self, now_ms: u64) {
        self.ignore_until_ms =
            Some(now_ms.saturating_add(self.config.ignore_after_interruption_ms));
        self.rtt_high_run = 0;
        self.clean_since_ms = None;
    }

    fn change_to(&mut self, step: usize, now_ms: u64) -> Option<u32> {
        if step == self.current {
            return None;
        }
        self.current = step;
        self.lowest = self.lowest.max(step);
        self.last_change_ms = Some(now_ms);
        self.changes += 1;
        Some(STEPS[step])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> LinkReport {
        LinkReport {
            loss_percent: 0.0,
            rtt_ms: Some(40.0),
        }
    }

    fn lossy(percent: f64) -> LinkReport {
        LinkReport {
            loss_percent: percent,
            rtt_ms: Some(40.0),
        }
    }

    #[test]
    fn starts_at_the_configured_step_and_stays_on_a_clean_link() {
        let mut l = BitrateLadder::new(BitrateConfig::default(), 24_000);
        assert_eq!(l.bitrate(), 24_000);
        for t in 0..120 {
            assert_eq!(l.on_report(clean(), t * 1000), None);
        }
        assert_eq!(l.changes(), 0);
        // A start between steps rounds down.
        assert_eq!(
            BitrateLadder::new(BitrateConfig::default(), 20_000).bitrate(),
            16_000
        );
        assert_eq!(
            BitrateLadder::new(BitrateConfig::default(), 1_000).bitrate(),
            8_000
        );
    }

    #[test]
    fn the_loss_of_an_outage_is_not_taken_for_congestion() {
        let mut l = BitrateLadder::new(BitrateConfig::default(), 24_000);
        // The link goes down at 10 s and is back at 12 s; the peer's first reports after it
        // cover the gap (everything sent meanwhile was lost).
        l.path_interrupted(10_000);
        assert_eq!(l.on_report(lossy(100.0), 11_000), None);
        l.path_interrupted(12_000);
        assert_eq!(l.on_report(lossy(60.0), 12_900), None);
        assert_eq!(l.on_report(lossy(35.0), 14_000), None);
        assert_eq!(l.bitrate(), 24_000);
        assert_eq!(l.changes(), 0);
        // Loss after the grace is congestion again.
        assert_eq!(l.on_report(lossy(8.0), 14_600), Some(16_000));
    }

    #[test]
    fn loss_steps_down_at_most_once_per_hold_and_severe_loss_two_steps() {
        let mut l = BitrateLadder::new(BitrateConfig::default(), 24_000);
        assert_eq!(l.on_report(lossy(8.0), 1_000), Some(16_000));
        assert_eq!(l.on_report(lossy(8.0), 2_000), None, "held");
        assert_eq!(l.on_report(lossy(8.0), 3_000), None, "held");
        assert_eq!(l.on_report(lossy(30.0), 4_000), Some(8_000), "two steps");
        assert_eq!(l.on_report(lossy(50.0), 8_000), None, "no lower step");
        assert_eq!(l.lowest(), 8_000);
    }

    #[test]
    fn low_steps_send_longer_packets_and_the_top_stays_at_20_ms() {
        let mut l = BitrateLadder::new(BitrateConfig::default(), 32_000);
        assert_eq!((l.bitrate(), l.packet_ms()), (32_000, 20));
        let mut seen = vec![(l.bitrate(), l.packet_ms())];
        let mut t = 0;
        while l.bitrate() > 8_000 {
            t += 3_000;
            if l.on_report(lossy(8.0), t).is_some() {
                seen.push((l.bitrate(), l.packet_ms()));
            }
        }
        assert_eq!(
            seen,
            vec![
                (32_000, 20),
                (24_000, 20),
                (16_000, 40),
                (12_000, 60),
                (8_000, 60)
            ]
        );
        assert_eq!((l.lowest(), l.lowest_packet_ms()), (8_000, 60));
        // Back up after a clean spell (20 s after a step down): the packet time follows the
        // step.
        let mut up = None;
        for k in 1..=30 {
            if let Some(b) = l.on_report(clean(), t + k * 1000) {
                up = Some((b, l.packet_ms()));
                break;
            }
        }
        assert_eq!(up, Some((12_000, 60)));
        assert_eq!(l.lowest_packet_ms(), 60, "the longest packet time used");
    }

    /// The wire rate of every step, with the per-packet overhead the module doc counts
    /// (82 bytes): the steps meant for thin links must fit them.
    #[test]
    fn each_step_fits_the_link_it_is_meant_for() {
        let wire_kbps = |i: usize| {
            let per_s = 1000.0 / f64::from(PACKET_MS[i]);
            f64::from(STEPS[i]) / 1000.0 + per_s * 82.0 * 8.0 / 1000.0
        };
        let rates: Vec<f64> = (0..STEPS.len()).map(wire_kbps).collect();
        println!("wire kbit/s per step: {rates:.1?}");
        // 16 kbit/s fits a 48 kbit/s uplink with a third to spare; 12 and 8 kbit/s leave
        // at least 9 kbit/s of a 32 kbit/s uplink for signaling and RTCP.
        assert!(rates[2] < 48.0 * 0.7, "{rates:?}");
        assert!(rates[3] <= 32.0 - 9.0, "{rates:?}");
        assert!(rates[4] < rates[3]);
        // The wire rate falls at every step down.
        assert!(rates.windows(2).all(|w| w[1] < w[0]), "{rates:?}");
    }

    #[test]
    fn a_long_round_trip_steps_down_too() {
        let mut l = BitrateLadder::new(BitrateConfig::default(), 24_000);
        let slow = LinkReport {
            loss_percent: 0.0,
            rtt_ms: Some(800.0),
        };
        assert_eq!(
            l.on_report(slow, 1_000),
            None,
            "one slow report is not enough"
        );
        assert_eq!(l.on_report(clean(), 2_000), None);
        assert_eq!(l.on_report(slow, 3_000), None);
        assert_eq!(l.on_report(slow, 4_000), Some(16_000));
    }

    #[test]
    fn steps_back_up_after_a_clean_spell_and_backs_off_when_that_fails() {
        let mut l = BitrateLadder::new(BitrateConfig::default(), 24_000);
        assert_eq!(l.on_report(lossy(10.0), 0), Some(16_000));
        // Clean from 1 s: the step just left did not fit, so the first try back needs 20 s
        // clean (twice `up_after_ms`).
        let mut ups = Vec::new();
        for t in 1..=21 {
            if let Some(b) = l.on_report(clean(), t * 1000) {
                ups.push((t, b));
            }
        }
        assert_eq!(ups, vec![(21, 24_000)]);
        // 24k still does not fit: loss again after the hold, down, and the next try waits 40 s.
        assert_eq!(l.on_report(lossy(10.0), 22_000), None, "held");
        assert_eq!(l.on_report(lossy(10.0), 24_000), Some(16_000));
        let mut next_up = None;
        for t in 25..=90 {
            if let Some(b) = l.on_report(clean(), t * 1000) {
                next_up.get_or_insert((t, b));
            }
        }
        assert_eq!(
            next_up,
            Some((65, 24_000)),
            "40 s of clean reports from 25 s"
        );
    }

    #[test]
    fn a_little_loss_neither_steps_down_nor_counts_as_clean() {
        let mut l = BitrateLadder::new(BitrateConfig::default(), 24_000);
        assert_eq!(l.on_report(lossy(10.0), 0), Some(16_000));
        for t in 1..=30 {
            assert_eq!(l.on_report(lossy(2.0), t * 1000), None);
        }
    }

    proptest::proptest! {
        /// Whatever the reports: the bitrate is always a step no higher than the top, changes
        /// are at least `hold_ms` apart, and garbage figures never panic.
        #[test]
        fn changes_are_steps_held_apart(
            start in 0u32..100_000,
            reports in proptest::collection::vec(
                (proptest::num::f64::ANY, proptest::option::of(proptest::num::f64::ANY), 0u64..5000),
                0..300,
            ),
        ) {
            let config = BitrateConfig::default();
            let mut l = BitrateLadder::new(config, start);
            let top = l.bitrate();
            let mut now = 0u64;
            let mut last_change: Option<u64> = None;
            for (loss, rtt, dt) in reports {
                now += dt;
                if let Some(b) = l.on_report(LinkReport { loss_percent: loss, rtt_ms: rtt }, now) {
                    proptest::prop_assert!(STEPS.contains(&b) && b <= top);
                    proptest::prop_assert!([20, 40, 60].contains(&l.packet_ms()));
                    proptest::prop_assert!(l.lowest_packet_ms() >= l.packet_ms());
                    if let Some(at) = last_change {
                        proptest::prop_assert!(now - at >= config.hold_ms);
                    }
                    last_change = Some(now);
                }
            }
        }
    }
}
