//! How much in-band FEC to send: the packet loss the Opus encoder should plan for, following the
//! loss the peer reports. Sans-IO: it takes one report at a time and returns the setting.
//!
//! In-band FEC is not free. libopus encodes a second, low-bitrate copy of each frame into the
//! next packet (SILK's LBRR), and at our constant 24 kbit/s that copy takes bits from the frame
//! itself. Measured on three espeak-ng voices (`scripts/bench-codec`, ITU-T P.862 wideband
//! PESQ; `docs/MEDIA.md`): planning for 10 % loss costs 0.34–0.48 PESQ on a clean path and
//! doubles the encoder's CPU time (complexity 9: 356 against 207 µs per frame). On a lossy path
//! it is what keeps speech intelligible. So FEC follows the path, as WebRTC stacks do it:
//!
//! - A call starts with FEC on ([`START_PERCENT`]): the path is unknown, and a lossy start
//!   costs more than a second or two of FEC on a clean one.
//! - Loss in a report raises the setting at once (1.5 × the loss, within
//!   [`MIN_PERCENT`]..=[`MAX_PERCENT`]; below 10 % libopus would send no FEC at our bitrate).
//! - It comes down only after [`CALM_REPORTS`] reports in a row that ask for less, to the most
//!   any of them asked for (0 when all were clean), so a burst does not make it flap.
#![forbid(unsafe_code)]

/// What a call plans for before the first report.
pub const START_PERCENT: u8 = 10;
/// The least FEC planned for once any loss is seen. At our 24 kbit/s CBR, libopus 1.6 sends
/// no FEC at all below a hint of about 8 % (`docs/MEDIA.md` §2), so a smaller hint would be
/// the same as none.
pub const MIN_PERCENT: u8 = 10;
/// The most planned for: beyond it FEC takes so many bits from the frame that quality drops
/// for everyone, and concealment has to do the rest.
pub const MAX_PERCENT: u8 = 40;
/// Reports in a row asking for less before the setting comes down (webrtc-rs reports about
/// once a second).
pub const CALM_REPORTS: u32 = 3;
/// Loss below this, in percent, counts as none (one packet in a few hundred).
const NOISE_PERCENT: f64 = 0.5;

/// The FEC setting of one sending stream.
#[derive(Debug, Clone, PartialEq)]
pub struct FecPolicy {
    current: u8,
    calm: u32,
    /// The most the calm reports so far asked for.
    calm_peak: u8,
}

impl Default for FecPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl FecPolicy {
    /// A policy at [`START_PERCENT`].
    pub fn new() -> Self {
        Self {
            current: START_PERCENT,
            calm: 0,
            calm_peak: 0,
        }
    }

    /// The packet loss, in percent, the encoder should plan for now.
    pub fn expected_loss_percent(&self) -> u8 {
        self.current
    }

    /// Takes the loss of our stream over one report interval, in percent, as the peer
    /// reported it. Returns the new setting when it changed. Any input is safe: negative, NaN
    /// or over 100 is read as the nearest sensible value.
    pub fn on_report(&mut self, loss_percent: f64) -> Option<u8> {
        let wanted = Self::wanted(loss_percent);
        let before = self.current;
        if wanted >= self.current {
            self.current = wanted;
            self.calm = 0;
            self.calm_peak = 0;
        } else {
            self.calm += 1;
            self.calm_peak = self.calm_peak.max(wanted);
            if self.calm >= CALM_REPORTS {
                self.current = self.calm_peak;
                self.calm = 0;
                self.calm_peak = 0;
            }
        }
        (self.current != before).then_some(self.current)
    }

    /// The setting one report alone asks for.
    fn wanted(loss_percent: f64) -> u8 {
        if loss_percent.is_nan() || loss_percent < NOISE_PERCENT {
            return 0;
        }
        let scaled = (loss_percent.min(100.0) * 1.5).ceil();
        // In range 0.75..=150 here, so the conversion cannot truncate meaningfully.
        (scaled as u8).clamp(MIN_PERCENT, MAX_PERCENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_path_turns_fec_off_after_calm_reports() {
        let mut fec = FecPolicy::new();
        assert_eq!(fec.expected_loss_percent(), START_PERCENT);
        for _ in 1..CALM_REPORTS {
            assert_eq!(fec.on_report(0.0), None);
        }
        assert_eq!(fec.on_report(0.0), Some(0));
        assert_eq!(fec.on_report(0.0), None);
        assert_eq!(fec.expected_loss_percent(), 0);
    }

    #[test]
    fn loss_raises_fec_at_once_and_it_comes_down_slowly() {
        let mut fec = FecPolicy::new();
        for _ in 0..CALM_REPORTS {
            fec.on_report(0.0);
        }
        assert_eq!(fec.on_report(5.0), Some(MIN_PERCENT));
        assert_eq!(fec.on_report(20.0), Some(30));
        // Three calmer reports: down to the most they asked for.
        assert_eq!(fec.on_report(2.0), None);
        assert_eq!(fec.on_report(0.0), None);
        assert_eq!(fec.on_report(0.0), Some(MIN_PERCENT));
        // A loss in the middle of a calm stretch starts the count again.
        assert_eq!(fec.on_report(0.0), None);
        assert_eq!(fec.on_report(0.0), None);
        assert_eq!(fec.on_report(4.0), None);
        assert_eq!(fec.on_report(0.0), None);
        assert_eq!(fec.on_report(0.0), None);
        assert_eq!(fec.on_report(0.0), Some(0));
    }

    #[test]
    fn noise_is_no_loss_and_heavy_loss_is_capped() {
        assert_eq!(FecPolicy::wanted(0.3), 0);
        assert_eq!(FecPolicy::wanted(0.6), MIN_PERCENT);
        assert_eq!(FecPolicy::wanted(10.0), 15);
        assert_eq!(FecPolicy::wanted(60.0), MAX_PERCENT);
        assert_eq!(FecPolicy::wanted(1e9), MAX_PERCENT);
    }

    #[test]
    fn hostile_reports_never_panic_or_leave_the_range() {
        let mut fec = FecPolicy::new();
        for loss in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -5.0,
            1e300,
            100.0,
            0.0,
        ] {
            fec.on_report(loss);
            assert!(fec.expected_loss_percent() <= MAX_PERCENT);
        }
    }
}
