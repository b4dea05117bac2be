//! Audio sources that yield 20 ms frames of 48 kHz mono audio.
//!
//! [`AudioSource`] is the one interface the sending side pulls from. This module has a WAV file
//! source, a tone generator and silence; the client adds a microphone source behind the same
//! trait.

use std::path::Path;

use crate::wav::{self, WavError, WavLimits};
use crate::{FRAME_SAMPLES, SAMPLE_RATE};

/// One 20 ms frame of 48 kHz mono samples, nominally within -1.0..=1.0.
pub type Frame = [f32; FRAME_SAMPLES];

/// What went wrong producing audio.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A WAV file could not be read.
    #[error(transparent)]
    Wav(#[from] WavError),
    /// A parameter is out of range.
    #[error("invalid source parameter: {0}")]
    InvalidParameter(&'static str),
    /// A capture device failed (for sources backed by hardware).
    #[error("audio device: {0}")]
    Device(String),
}

/// What a source did when asked for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produced {
    /// The frame was filled.
    Frame,
    /// The source has ended; the frame was left untouched. Later calls also return `End`.
    End,
}

/// Something that produces 48 kHz mono audio, 20 ms at a time.
///
/// A source is pulled by the sender's pacing loop once per 20 ms. Sources backed by a file or a
/// generator return at once; a live source may block until a frame is captured.
pub trait AudioSource: Send {
    /// Fills `frame` with the next 20 ms of audio, or reports the end of the source.
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Produced, SourceError>;
}

/// Plays 48 kHz mono samples (typically read from a WAV file) frame by frame.
///
/// The last partial frame is padded with silence. With [`looping`](Self::looping) the audio
/// starts over at the end instead of ending.
#[derive(Debug, Clone)]
pub struct WavSource {
    samples: Vec<f32>,
    pos: usize,
    looping: bool,
}

impl WavSource {
    /// Reads a WAV file (any common format, converted to 48 kHz mono) with default limits.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SourceError> {
        Self::open_with(path, &WavLimits::default())
    }

    /// Reads a WAV file within the given limits.
    pub fn open_with(path: impl AsRef<Path>, limits: &WavLimits) -> Result<Self, SourceError> {
        Ok(Self::from_samples(wav::read_mono_48k_with(path, limits)?))
    }

    /// Plays samples already at 48 kHz mono.
    pub fn from_samples(samples: Vec<f32>) -> Self {
        Self {
            samples,
            pos: 0,
            looping: false,
        }
    }

    /// Makes the source start over at the end instead of ending (an empty source still ends).
    pub fn looping(mut self, looping: bool) -> Self {
        self.looping = looping;
        self
    }

    /// The audio this source plays.
    pub fn samples(&self) -> &[f32] {
        &self.samples
    }
}

impl AudioSource for WavSource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Produced, SourceError> {
        if self.samples.is_empty() || (self.pos >= self.samples.len() && !self.looping) {
            return Ok(Produced::End);
        }
        for out in frame.iter_mut() {
            if self.pos >= self.samples.len() {
                if self.looping {
                    self.pos = 0;
                } else {
                    *out = 0.0;
                    continue;
                }
            }
            *out = self.samples.get(self.pos).copied().unwrap_or(0.0);
            self.pos += 1;
        }
        Ok(Produced::Frame)
    }
}

/// A sine tone at a given frequency and amplitude, endless unless limited.
#[derive(Debug, Clone)]
pub struct ToneSource {
    phase: f64,
    step: f64,
    amplitude: f64,
    frames_left: Option<u64>,
}

impl ToneSource {
    /// A sine at `frequency_hz` (0 < f < 24000) with peak `amplitude` (0.0..=1.0).
    pub fn new(frequency_hz: f64, amplitude: f64) -> Result<Self, SourceError> {
        if !(frequency_hz.is_finite() && frequency_hz > 0.0 && frequency_hz < 24_000.0) {
            return Err(SourceError::InvalidParameter(
                "frequency must be within (0, 24000) Hz",
            ));
        }
        if !(0.0..=1.0).contains(&amplitude) {
            return Err(SourceError::InvalidParameter(
                "amplitude must be within 0.0..=1.0",
            ));
        }
        Ok(Self {
            phase: 0.0,
            step: std::f64::consts::TAU * frequency_hz / f64::from(SAMPLE_RATE),
            amplitude,
            frames_left: None,
        })
    }

    /// Ends the tone after `frames` frames (20 ms each).
    pub fn with_frames(mut self, frames: u64) -> Self {
        self.frames_left = Some(frames);
        self
    }
}

impl AudioSource for ToneSource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Produced, SourceError> {
        if !take_frame(&mut self.frames_left) {
            return Ok(Produced::End);
        }
        // Two exact sines per frame seed the recurrence sin(x + s) = 2 cos(s) sin(x) - sin(x - s);
        // a `sin` per sample was a visible share of a call's CPU (see docs/BENCHMARKS.md).
        // Reseeding every frame keeps the rounding error of the recurrence below 1e-12.
        let twice_cos_step = 2.0 * self.step.cos();
        let mut previous = (self.phase - self.step).sin();
        let mut current = self.phase.sin();
        for out in frame.iter_mut() {
            *out = (self.amplitude * current) as f32;
            let next = twice_cos_step * current - previous;
            previous = current;
            current = next;
        }
        self.phase = (self.phase + self.step * FRAME_SAMPLES as f64) % std::f64::consts::TAU;
        Ok(Produced::Frame)
    }
}

/// Digital silence, endless unless limited.
#[derive(Debug, Clone, Default)]
pub struct SilenceSource {
    frames_left: Option<u64>,
}

impl SilenceSource {
    /// Endless silence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends after `frames` frames (20 ms each).
    pub fn with_frames(mut self, frames: u64) -> Self {
        self.frames_left = Some(frames);
        self
    }
}

impl AudioSource for SilenceSource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Produced, SourceError> {
        if !take_frame(&mut self.frames_left) {
            return Ok(Produced::End);
        }
        frame.fill(0.0);
        Ok(Produced::Frame)
    }
}

/// Counts down an optional frame limit; false when the limit is used up.
fn take_frame(left: &mut Option<u64>) -> bool {
    match left {
        None => true,
        Some(0) => false,
        Some(n) => {
            *n -= 1;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_has_requested_frequency_and_amplitude() {
        let mut tone = ToneSource::new(1000.0, 0.5).unwrap().with_frames(50);
        let mut all = Vec::new();
        let mut f = [0.0; FRAME_SAMPLES];
        while tone.next_frame(&mut f).unwrap() == Produced::Frame {
            all.extend_from_slice(&f);
        }
        assert_eq!(all.len(), 50 * FRAME_SAMPLES);
        let peak = all.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5).abs() < 1e-3, "peak {peak}");
        let freq = crate::metrics::dominant_frequency_hz(&all, SAMPLE_RATE).unwrap();
        assert!((freq - 1000.0).abs() < 1.0, "freq {freq}");
        assert_eq!(tone.next_frame(&mut f).unwrap(), Produced::End);
    }

    #[test]
    fn tone_stays_on_the_exact_sine_across_frames() {
        // A minute of 440 Hz: the per-frame recurrence must neither drift in phase nor in
        // amplitude against sin() evaluated per sample, including across frame borders.
        let (hz, amplitude) = (440.0, 0.3);
        let mut tone = ToneSource::new(hz, amplitude).unwrap();
        let step = std::f64::consts::TAU * hz / f64::from(SAMPLE_RATE);
        let mut f = [0.0; FRAME_SAMPLES];
        let mut worst = 0.0f64;
        for n in 0..3000u64 {
            tone.next_frame(&mut f).unwrap();
            for (i, &got) in f.iter().enumerate() {
                let k = n * FRAME_SAMPLES as u64 + i as u64;
                let exact = amplitude * ((k as f64 * step) % std::f64::consts::TAU).sin();
                worst = worst.max((f64::from(got) - exact).abs());
            }
        }
        // f32 output: one unit in the last place of 0.3 is 3e-8.
        assert!(worst < 1e-6, "largest error {worst}");
    }

    #[test]
    fn tone_rejects_bad_parameters() {
        assert!(ToneSource::new(0.0, 0.5).is_err());
        assert!(ToneSource::new(f64::NAN, 0.5).is_err());
        assert!(ToneSource::new(30_000.0, 0.5).is_err());
        assert!(ToneSource::new(440.0, 1.5).is_err());
        assert!(ToneSource::new(440.0, -0.1).is_err());
    }

    #[test]
    fn silence_is_zero_and_ends() {
        let mut s = SilenceSource::new().with_frames(2);
        let mut f = [1.0; FRAME_SAMPLES];
        assert_eq!(s.next_frame(&mut f).unwrap(), Produced::Frame);
        assert!(f.iter().all(|&x| x == 0.0));
        assert_eq!(s.next_frame(&mut f).unwrap(), Produced::Frame);
        assert_eq!(s.next_frame(&mut f).unwrap(), Produced::End);
    }

    #[test]
    fn wav_source_pads_last_frame_and_loops() {
        let samples: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        let mut src = WavSource::from_samples(samples.clone());
        let mut f = [9.0; FRAME_SAMPLES];
        assert_eq!(src.next_frame(&mut f).unwrap(), Produced::Frame);
        assert_eq!(&f[..], &samples[..960]);
        assert_eq!(src.next_frame(&mut f).unwrap(), Produced::Frame);
        assert_eq!(&f[..40], &samples[960..]);
        assert!(f[40..].iter().all(|&x| x == 0.0));
        assert_eq!(src.next_frame(&mut f).unwrap(), Produced::End);

        let mut looped = WavSource::from_samples(samples.clone()).looping(true);
        looped.next_frame(&mut f).unwrap();
        looped.next_frame(&mut f).unwrap();
        assert_eq!(&f[40..80], &samples[..40]);
        assert_eq!(
            WavSource::from_samples(vec![])
                .looping(true)
                .next_frame(&mut f)
                .unwrap(),
            Produced::End
        );
    }
}
