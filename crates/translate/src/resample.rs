//! Call audio (48 kHz) to recognizer audio (16 kHz), in a stream of 20 ms frames.

use rubato::{FftFixedIn, Resampler};

/// Rate of the call's audio.
pub const CALL_RATE: usize = 48_000;
/// Rate Whisper wants.
pub const ASR_RATE: usize = 16_000;
/// One 20 ms frame of call audio.
pub const CALL_FRAME: usize = CALL_RATE / 50;

/// A streaming 48 → 16 kHz resampler (rubato's FFT resampler, band-limited).
pub struct Downsampler {
    inner: FftFixedIn<f32>,
    pending: Vec<f32>,
}

impl std::fmt::Debug for Downsampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downsampler")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// The resampler could not be built (only for nonsensical parameters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot build the 48 kHz → 16 kHz resampler: {0}")]
pub struct ResampleError(String);

impl Downsampler {
    /// A resampler for 20 ms frames.
    pub fn new() -> Result<Self, ResampleError> {
        let inner = FftFixedIn::<f32>::new(CALL_RATE, ASR_RATE, CALL_FRAME, 2, 1)
            .map_err(|e| ResampleError(e.to_string()))?;
        Ok(Self {
            inner,
            pending: Vec::with_capacity(CALL_FRAME * 2),
        })
    }

    /// Takes any number of 48 kHz samples and returns the 16 kHz samples now complete.
    /// Non-finite samples become silence.
    pub fn push(&mut self, samples: &[f32]) -> Vec<f32> {
        self.pending.extend(samples.iter().map(|s| {
            if s.is_finite() {
                s.clamp(-1.0, 1.0)
            } else {
                0.0
            }
        }));
        let mut out = Vec::new();
        while self.pending.len() >= CALL_FRAME {
            let chunk: Vec<f32> = self.pending.drain(..CALL_FRAME).collect();
            if let Ok(mut resampled) = self.inner.process(&[chunk], None) {
                if let Some(channel) = resampled.pop() {
                    out.extend(channel);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_tone_keeps_its_level_and_a_third_of_its_samples() {
        let mut down = Downsampler::new().unwrap();
        let input: Vec<f32> = (0..CALL_RATE)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / CALL_RATE as f32).sin())
            .collect();
        let mut out = Vec::new();
        // Odd chunk sizes: the resampler must buffer across calls.
        for chunk in input.chunks(700) {
            out.extend(down.push(chunk));
        }
        // 50 whole frames went in, so 50 frames of 320 samples come out.
        assert_eq!(out.len(), ASR_RATE);
        let tail = &out[out.len() / 2..];
        let rms = (tail.iter().map(|s| s * s).sum::<f32>() / tail.len() as f32).sqrt();
        assert!((rms - 0.3536).abs() < 0.01, "rms {rms}");
        assert!(down
            .push(&[f32::NAN; CALL_FRAME])
            .iter()
            .all(|s| s.is_finite()));
    }
}
