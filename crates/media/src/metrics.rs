//! Measurements for judging received audio: level, SNR, delay-aligned cross-correlation and
//! the dominant frequency.
//!
//! These are what the end-to-end tests use to decide that what came out of a call is what went
//! in: a received recording is delayed by the pipeline and slightly altered by the codec, so
//! [`align`] searches a lag range for the best normalized cross-correlation (NCC) before
//! anything is compared. Cross-correlation is computed with an FFT, so whole recordings can be
//! compared over a wide lag range quickly.

use rustfft::num_complex::Complex;
use rustfft::FftPlanner;

/// The level reported for silence, in dBFS.
pub const MIN_DBFS: f64 = -120.0;

/// The SNR reported when the two signals are identical, in dB.
pub const MAX_SNR_DB: f64 = 200.0;

/// The root mean square of the samples (0 for no samples).
pub fn rms(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// The RMS level in dBFS: `20 log10(rms)`, where a full-scale square wave is 0 dBFS and a
/// full-scale sine is about −3 dBFS. Silence gives [`MIN_DBFS`].
pub fn dbfs(samples: &[f32]) -> f64 {
    let r = rms(samples);
    if r > 0.0 {
        (20.0 * r.log10()).max(MIN_DBFS)
    } else {
        MIN_DBFS
    }
}

/// The signal-to-noise ratio of `test` against `reference`, sample by sample, in dB:
/// `10 log10(Σ ref² / Σ (ref − test)²)` over the common length.
///
/// No alignment is done; see [`compare`] for that. Identical signals give [`MAX_SNR_DB`];
/// a silent reference gives `-MAX_SNR_DB` unless the test is silent too.
pub fn snr_db(reference: &[f32], test: &[f32]) -> f64 {
    let (mut sig, mut noise) = (0.0f64, 0.0f64);
    for (&r, &t) in reference.iter().zip(test) {
        let (r, t) = (f64::from(r), f64::from(t));
        sig += r * r;
        noise += (r - t) * (r - t);
    }
    ratio_db(sig, noise)
}

fn ratio_db(sig: f64, noise: f64) -> f64 {
    if noise <= 0.0 || !noise.is_finite() {
        return if sig.is_finite() {
            MAX_SNR_DB
        } else {
            -MAX_SNR_DB
        };
    }
    if sig <= 0.0 {
        return -MAX_SNR_DB;
    }
    (10.0 * (sig / noise).log10()).clamp(-MAX_SNR_DB, MAX_SNR_DB)
}

/// The best alignment of a test signal against a reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alignment {
    /// How many samples `test` lags behind `reference`: `test[i + lag] ≈ reference[i]`.
    /// Negative when the test is ahead.
    pub lag: i64,
    /// Normalized cross-correlation at that lag over the overlapping part, in −1.0..=1.0.
    /// 1.0 means identical up to a positive gain.
    pub ncc: f64,
    /// The number of samples the two signals overlap at that lag.
    pub overlap: usize,
}

/// Finds the lag in `-max_lag..=max_lag` with the highest normalized cross-correlation.
///
/// Only lags where the signals overlap by at least half of the shorter one count, so a few
/// samples at the edge cannot win by chance. Returns `None` when either signal is empty or
/// silent over every allowed lag.
pub fn align(reference: &[f32], test: &[f32], max_lag: usize) -> Option<Alignment> {
    let (n, m) = (reference.len(), test.len());
    if n == 0 || m == 0 {
        return None;
    }
    let size = n.checked_add(m)?.checked_next_power_of_two()?;
    let mut planner = FftPlanner::<f64>::new();
    let fwd = planner.plan_fft_forward(size);
    let inv = planner.plan_fft_inverse(size);
    let load = |x: &[f32]| {
        let mut v = vec![Complex::new(0.0, 0.0); size];
        for (d, &s) in v.iter_mut().zip(x) {
            d.re = f64::from(s);
        }
        v
    };
    let mut a = load(reference);
    let mut b = load(test);
    fwd.process(&mut a);
    fwd.process(&mut b);
    for (x, y) in a.iter_mut().zip(&b) {
        *x = x.conj() * y;
    }
    inv.process(&mut a);
    // a[k] / size = Σ_i ref[i] · test[i + k], with negative k wrapped to the end.
    let scale = size as f64;
    let prefix = |x: &[f32]| {
        let mut p = Vec::with_capacity(x.len() + 1);
        p.push(0.0f64);
        let mut acc = 0.0;
        for &s in x {
            acc += f64::from(s) * f64::from(s);
            p.push(acc);
        }
        p
    };
    let (pr, pt) = (prefix(reference), prefix(test));
    let min_overlap = (n.min(m) / 2).max(1);
    let (n_i, m_i) = (n as i64, m as i64);
    let max_lag = i64::try_from(max_lag).unwrap_or(i64::MAX).min(n_i.max(m_i));
    let mut best: Option<Alignment> = None;
    for lag in -max_lag..=max_lag {
        // Overlap: i in [max(0, -lag), min(n, m - lag)).
        let start = 0i64.max(-lag);
        let end = n_i.min(m_i - lag);
        if end - start < min_overlap as i64 {
            continue;
        }
        let (s, e) = (start as usize, end as usize);
        let (ts, te) = ((start + lag) as usize, (end + lag) as usize);
        let er = pr.get(e).copied().unwrap_or(0.0) - pr.get(s).copied().unwrap_or(0.0);
        let et = pt.get(te).copied().unwrap_or(0.0) - pt.get(ts).copied().unwrap_or(0.0);
        let denom = (er * et).sqrt();
        if denom <= 1e-12 {
            continue;
        }
        let idx = if lag >= 0 {
            lag as usize
        } else {
            size - (-lag) as usize
        };
        let c = a.get(idx).map_or(0.0, |z| z.re / scale);
        let ncc = (c / denom).clamp(-1.0, 1.0);
        if best.is_none_or(|b| ncc > b.ncc) {
            best = Some(Alignment {
                lag,
                ncc,
                overlap: e - s,
            });
        }
    }
    best
}

/// Aligns each `segment_len`-sample segment of `reference` on its own within `test`.
///
/// A received call recording is not one fixed delay behind what was sent: the jitter buffer
/// stretches and shrinks the delay by whole frames. Aligning segments separately (one or two
/// seconds each) measures how well each part came through regardless of those shifts. Each
/// result's `lag` is relative to the segment's own position (as in [`align`]); segments that
/// are silent, or that fall outside the test signal, are skipped (`None`).
pub fn align_segments(
    reference: &[f32],
    test: &[f32],
    segment_len: usize,
    max_lag: usize,
) -> Vec<Option<Alignment>> {
    if segment_len == 0 {
        return Vec::new();
    }
    reference
        .chunks(segment_len)
        .enumerate()
        .map(|(k, seg)| {
            let offset = k.checked_mul(segment_len)?;
            let start = offset.saturating_sub(max_lag);
            let end = offset
                .saturating_add(seg.len())
                .saturating_add(max_lag)
                .min(test.len());
            let window = test.get(start..end)?;
            // Lags relative to the window start that stay within ±max_lag of the segment.
            let a = align(
                seg,
                window,
                max_lag.saturating_mul(2).saturating_add(seg.len()),
            )?;
            let lag = a.lag + start as i64 - offset as i64;
            (lag.unsigned_abs() <= max_lag as u64 && a.overlap == seg.len())
                .then_some(Alignment { lag, ..a })
        })
        .collect()
}

/// How a received signal compares with what was sent, after alignment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// The best alignment found.
    pub alignment: Alignment,
    /// SNR over the aligned overlap, in dB (no gain correction).
    pub snr_db: f64,
    /// Level of the reference over the overlap, in dBFS.
    pub reference_dbfs: f64,
    /// Level of the test signal over the overlap, in dBFS.
    pub test_dbfs: f64,
}

/// Aligns `test` to `reference` (see [`align`]) and measures SNR and levels over the overlap.
pub fn compare(reference: &[f32], test: &[f32], max_lag: usize) -> Option<Comparison> {
    let alignment = align(reference, test, max_lag)?;
    let (r, t) = aligned_overlap(reference, test, alignment.lag);
    Some(Comparison {
        alignment,
        snr_db: snr_db(r, t),
        reference_dbfs: dbfs(r),
        test_dbfs: dbfs(t),
    })
}

/// The overlapping parts of two signals when `test` lags `reference` by `lag` samples.
pub fn aligned_overlap<'a>(
    reference: &'a [f32],
    test: &'a [f32],
    lag: i64,
) -> (&'a [f32], &'a [f32]) {
    let (r, t) = if lag >= 0 {
        let l = usize::try_from(lag).unwrap_or(usize::MAX);
        (reference, test.get(l..).unwrap_or_default())
    } else {
        let l = usize::try_from(lag.unsigned_abs()).unwrap_or(usize::MAX);
        (reference.get(l..).unwrap_or_default(), test)
    };
    let len = r.len().min(t.len());
    (
        r.get(..len).unwrap_or_default(),
        t.get(..len).unwrap_or_default(),
    )
}

/// The strongest frequency in the signal, in Hz, from an FFT peak refined by parabolic
/// interpolation. `None` for fewer than 16 samples, a zero rate or silence.
pub fn dominant_frequency_hz(samples: &[f32], sample_rate: u32) -> Option<f64> {
    if samples.len() < 16 || sample_rate == 0 {
        return None;
    }
    let size = samples.len();
    let mut planner = FftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(size);
    // A Hann window keeps leakage from hiding the peak.
    let mut buf: Vec<Complex<f64>> = samples
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let w = 0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / size as f64).cos();
            Complex::new(f64::from(s) * w, 0.0)
        })
        .collect();
    fft.process(&mut buf);
    let mags: Vec<f64> = buf.iter().take(size / 2).map(|c| c.norm()).collect();
    let (k, &peak) = mags
        .iter()
        .enumerate()
        .skip(1)
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    if peak <= 0.0 {
        return None;
    }
    let (l, r) = (
        mags.get(k - 1).copied().unwrap_or(0.0),
        mags.get(k + 1).copied().unwrap_or(0.0),
    );
    let denom = l - 2.0 * peak + r;
    let offset = if denom.abs() > 1e-12 {
        0.5 * (l - r) / denom
    } else {
        0.0
    };
    Some((k as f64 + offset) * f64::from(sample_rate) / size as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn noise(n: usize, amp: f32, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-amp..amp)).collect()
    }

    fn sine(freq: f64, amp: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (amp * (std::f64::consts::TAU * freq * i as f64 / 48_000.0).sin()) as f32)
            .collect()
    }

    #[test]
    fn levels() {
        assert!((dbfs(&[1.0, -1.0, 1.0, -1.0]) - 0.0).abs() < 1e-9);
        assert!((dbfs(&sine(1000.0, 1.0, 48_000)) + 3.0103).abs() < 0.01);
        assert!((dbfs(&sine(1000.0, 0.1, 48_000)) + 23.0103).abs() < 0.01);
        assert_eq!(dbfs(&[0.0; 100]), MIN_DBFS);
        assert_eq!(dbfs(&[]), MIN_DBFS);
        assert_eq!(rms(&[]), 0.0);
        assert!((rms(&[3.0, 4.0]) - (12.5f64).sqrt()).abs() < 1e-9);
    }

    #[test]
    fn snr_of_known_noise() {
        let s = sine(440.0, 0.5, 48_000);
        assert_eq!(snr_db(&s, &s), MAX_SNR_DB);
        let n = noise(48_000, 0.05, 1);
        let noisy: Vec<f32> = s.iter().zip(&n).map(|(a, b)| a + b).collect();
        // Sine power 0.125; uniform noise power 0.05²/3.
        let expected = 10.0 * (0.125 / (0.0025 / 3.0f64)).log10();
        let got = snr_db(&s, &noisy);
        assert!((got - expected).abs() < 0.2, "{got} vs {expected}");
        assert_eq!(snr_db(&[0.0; 10], &[0.1; 10]), -MAX_SNR_DB);
    }

    #[test]
    fn ncc_finds_a_known_delay_in_both_directions() {
        let reference = noise(48_000, 0.5, 2);
        for delay in [0i64, 1, 1234, -777, 4800] {
            // The test signal is the reference delayed, attenuated, with noise added.
            let extra = noise(48_000 + 5000, 0.05, 3);
            let test: Vec<f32> = (0..48_000i64 + 5000)
                .map(|i| {
                    let j = i - delay;
                    let r = if (0..48_000).contains(&j) {
                        reference[j as usize]
                    } else {
                        0.0
                    };
                    0.5 * r + extra[i as usize]
                })
                .collect();
            let a = align(&reference, &test, 6000).unwrap();
            assert_eq!(a.lag, delay);
            assert!(a.ncc > 0.95, "ncc {} at delay {delay}", a.ncc);
            let c = compare(&reference, &test, 6000).unwrap();
            assert!((c.test_dbfs - c.reference_dbfs - 20.0 * 0.5f64.log10()).abs() < 0.5);
        }
    }

    #[test]
    fn ncc_is_low_for_unrelated_signals_and_outside_the_lag_range() {
        let a = noise(20_000, 0.5, 4);
        let b = noise(20_000, 0.5, 5);
        assert!(align(&a, &b, 2000).unwrap().ncc < 0.1);
        let mut delayed = vec![0.0; 3000];
        delayed.extend_from_slice(&a);
        assert!(
            align(&a, &delayed, 1000).unwrap().ncc < 0.1,
            "delay outside the search range"
        );
        assert_eq!(align(&a, &delayed, 4000).unwrap().lag, 3000);
    }

    #[test]
    fn segments_follow_changing_delays() {
        let reference = noise(48_000 * 4, 0.5, 6);
        // The test copy is 960 samples late for the first two seconds, then 1920 (a frame was
        // inserted), with one second of the third segment replaced by silence.
        let mut test = vec![0.0; 960];
        test.extend_from_slice(&reference[..96_000]);
        test.extend(std::iter::repeat_n(0.0, 960));
        test.extend_from_slice(&reference[96_000..]);
        for s in &mut test[96_000 + 1920..144_000 + 1920] {
            *s = 0.0;
        }
        let segs = align_segments(&reference, &test, 48_000, 4800);
        assert_eq!(segs.len(), 4);
        assert_eq!(segs[0].unwrap().lag, 960);
        assert_eq!(segs[1].unwrap().lag, 960);
        assert!(segs[2].is_none_or(|a| a.ncc < 0.1), "{:?}", segs[2]);
        assert_eq!(segs[3].unwrap().lag, 1920);
        assert!(segs[3].unwrap().ncc > 0.999);
        assert!(align_segments(&reference, &test, 0, 10).is_empty());
        assert!(align_segments(&reference, &[], 1000, 10)
            .iter()
            .all(Option::is_none));
    }

    #[test]
    fn degenerate_inputs() {
        assert!(align(&[], &[1.0], 10).is_none());
        assert!(align(&[0.0; 100], &[0.0; 100], 10).is_none());
        assert!(align(&[1.0], &[1.0], usize::MAX).is_some());
        assert!(compare(&[0.5; 10], &[0.5; 10], 3).is_some());
        assert!(dominant_frequency_hz(&[0.0; 8], 48_000).is_none());
        assert!(dominant_frequency_hz(&[0.0; 1000], 48_000).is_none());
        let (r, t) = aligned_overlap(&[1.0, 2.0, 3.0], &[9.0, 1.0, 2.0, 3.0], 1);
        assert_eq!((r, t), (&[1.0, 2.0, 3.0][..], &[1.0, 2.0, 3.0][..]));
        let (r, t) = aligned_overlap(&[1.0, 2.0, 3.0], &[2.0, 3.0], -1);
        assert_eq!((r, t), (&[2.0, 3.0][..], &[2.0, 3.0][..]));
        assert_eq!(aligned_overlap(&[1.0], &[1.0], i64::MIN).0.len(), 0);
    }

    #[test]
    fn dominant_frequency_is_accurate() {
        for f in [100.0, 440.0, 1000.0, 3333.3, 12_000.0] {
            let got = dominant_frequency_hz(&sine(f, 0.3, 24_000), 48_000).unwrap();
            assert!((got - f).abs() < 0.5, "{got} vs {f}");
        }
    }
}
