//! Streaming sample-rate conversion for live devices.
//!
//! `aparte_media::wav::resample_to_48k` converts a whole file at once; a microphone or speaker
//! needs the same conversion a few milliseconds at a time. This wraps the same `rubato` FFT
//! resampler and keeps the leftover input between calls. It runs on the audio thread, never in a
//! device callback, so the callbacks stay a plain copy into a ring buffer.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use rubato::{FftFixedIn, Resampler};

/// Lowest and highest device rates we convert. Outside this range a device is refused with a
/// clear error instead of building a huge FFT.
const MIN_RATE: u32 = 4_000;
const MAX_RATE: u32 = 768_000;

/// A mono resampler fed in arbitrary pieces.
pub struct StreamResampler {
    /// `None` when both rates are equal: samples pass straight through.
    inner: Option<FftFixedIn<f32>>,
    /// Input not yet processed (less than one resampler chunk).
    pending: Vec<f32>,
    /// Output scratch buffer, sized once for the largest chunk.
    out: Vec<Vec<f32>>,
    /// Leading output samples still to drop: the resampler's own delay, which would only add
    /// latency to a live stream.
    skip: usize,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("converts", &self.inner.is_some())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl StreamResampler {
    /// A converter from `from` Hz to `to` Hz, processing about 10 ms of input at a time.
    pub fn new(from: u32, to: u32) -> Result<Self, String> {
        for rate in [from, to] {
            if !(MIN_RATE..=MAX_RATE).contains(&rate) {
                return Err(format!(
                    "sample rate {rate} Hz is outside {MIN_RATE}..={MAX_RATE} Hz"
                ));
            }
        }
        if from == to {
            return Ok(Self {
                inner: None,
                pending: Vec::new(),
                out: Vec::new(),
                skip: 0,
            });
        }
        let chunk = (from / 100).max(1) as usize;
        let inner = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 1, 1)
            .map_err(|e| format!("resampler {from} Hz → {to} Hz: {e}"))?;
        let out = vec![vec![0.0; inner.output_frames_max()]];
        let skip = inner.output_delay();
        Ok(Self {
            pending: Vec::with_capacity(inner.input_frames_max() * 2),
            inner: Some(inner),
            out,
            skip,
        })
    }

    /// Converts `input` and appends whatever output is ready to `output`. Input shorter than a
    /// chunk is kept for the next call.
    pub fn process(&mut self, input: &[f32], output: &mut VecDeque<f32>) -> Result<(), String> {
        let Some(inner) = self.inner.as_mut() else {
            output.extend(input.iter().copied());
            return Ok(());
        };
        self.pending.extend_from_slice(input);
        let mut start = 0;
        loop {
            let need = inner.input_frames_next();
            let Some(chunk) = self.pending.get(start..start + need) else {
                break;
            };
            let (used, produced) = inner
                .process_into_buffer(&[chunk], &mut self.out, None)
                .map_err(|e| format!("resampling: {e}"))?;
            start += used;
            let fresh = self.out.first().and_then(|o| o.get(..produced));
            for &s in fresh.unwrap_or_default() {
                if self.skip > 0 {
                    self.skip -= 1;
                } else {
                    output.push_back(s);
                }
            }
            if used == 0 {
                break;
            }
        }
        self.pending.drain(..start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tone(freq: f64, rate: u32, secs: f64) -> Vec<f32> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| {
                (0.5 * (std::f64::consts::TAU * freq * i as f64 / f64::from(rate)).sin()) as f32
            })
            .collect()
    }

    #[test]
    fn converts_44k1_to_48k_in_small_pieces_keeping_pitch_and_rate() {
        let input = tone(1000.0, 44_100, 1.0);
        let mut r = StreamResampler::new(44_100, 48_000).unwrap();
        let mut out = VecDeque::new();
        // Device callbacks come in odd sizes; feed it like one.
        for piece in input.chunks(333) {
            r.process(piece, &mut out).unwrap();
        }
        let out: Vec<f32> = out.into_iter().collect();
        // All but the last partial chunk and the dropped delay come out at the new rate.
        assert!(
            out.len() > 47_000 && out.len() <= 48_000,
            "{} samples",
            out.len()
        );
        let freq = aparte_media::metrics::dominant_frequency_hz(&out, 48_000).unwrap();
        assert!((freq - 1000.0).abs() < 2.0, "freq {freq}");
        let tail = &out[out.len() / 2..];
        let peak = tail.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5).abs() < 0.02, "peak {peak}");
    }

    #[test]
    fn converts_48k_down_to_a_device_rate() {
        let input = tone(440.0, 48_000, 0.5);
        let mut r = StreamResampler::new(48_000, 16_000).unwrap();
        let mut out = VecDeque::new();
        for frame in input.chunks(960) {
            r.process(frame, &mut out).unwrap();
        }
        let out: Vec<f32> = out.into_iter().collect();
        assert!(out.len() > 7_500 && out.len() <= 8_000, "{}", out.len());
        let freq = aparte_media::metrics::dominant_frequency_hz(&out, 16_000).unwrap();
        assert!((freq - 440.0).abs() < 2.0, "freq {freq}");
    }

    #[test]
    fn equal_rates_pass_through_and_bad_rates_are_refused() {
        let mut r = StreamResampler::new(48_000, 48_000).unwrap();
        let mut out = VecDeque::new();
        r.process(&[0.25, -0.5], &mut out).unwrap();
        assert_eq!(out, VecDeque::from(vec![0.25, -0.5]));
        assert!(StreamResampler::new(0, 48_000)
            .unwrap_err()
            .contains("0 Hz"));
        assert!(StreamResampler::new(48_000, 10_000_000).is_err());
    }
}
