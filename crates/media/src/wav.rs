//! Reading and writing WAV files.
//!
//! [`read_mono_48k`] reads any common PCM WAV file (8, 16, 24 or 32-bit integer, or 32-bit
//! float; any channel count; any sample rate from 8 kHz to 384 kHz), averages the channels to
//! mono and resamples to 48 kHz with `rubato`'s FFT resampler. Files are treated as untrusted:
//! the size and duration are checked against [`WavLimits`] from the header before any sample is
//! read, and a header that promises more data than the file holds is an error, not a silent
//! short read.
//!
//! [`write_mono_48k`] and [`MonoWavWriter`] write 48 kHz mono 16-bit files.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;

use rubato::Resampler;

use crate::SAMPLE_RATE;

/// What went wrong reading or writing a WAV file.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// The file could not be opened, read or written.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a WAV file hound can parse, or is corrupt.
    #[error("not a valid WAV file: {0}")]
    Format(#[from] hound::Error),
    /// The sample format is not one this crate reads.
    #[error("unsupported sample format: {bits}-bit {kind} (supported: 8/16/24/32-bit integer PCM, 32-bit float)")]
    UnsupportedFormat {
        /// Bits per sample.
        bits: u16,
        /// "integer" or "float".
        kind: &'static str,
    },
    /// The sample rate is outside the accepted range.
    #[error("unsupported sample rate {0} Hz (accepted: 8000..=384000)")]
    UnsupportedSampleRate(u32),
    /// The channel count is zero or above the limit.
    #[error("unsupported channel count {got} (accepted: 1..={max})")]
    UnsupportedChannels {
        /// Channels in the file.
        got: u16,
        /// The limit.
        max: u16,
    },
    /// The audio is longer than the limit.
    #[error("audio is {secs:.1} s long, over the limit of {max_secs} s")]
    TooLong {
        /// Duration claimed by the header, in seconds.
        secs: f64,
        /// The limit, in seconds.
        max_secs: u32,
    },
    /// The file (or the data its header claims) is larger than the limit.
    #[error("WAV data is {bytes} bytes, over the limit of {max_bytes} bytes")]
    TooLarge {
        /// Size of the file or of the claimed data, in bytes.
        bytes: u64,
        /// The limit, in bytes.
        max_bytes: u64,
    },
    /// The file ended before the number of samples its header claims.
    #[error("truncated WAV data: header claims {expected} samples, file holds {got}")]
    Truncated {
        /// Samples claimed by the header (all channels).
        expected: u64,
        /// Samples actually read.
        got: u64,
    },
    /// The resampler could not be set up or failed.
    #[error("resampling failed: {0}")]
    Resample(String),
}

/// Bounds applied to WAV input before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavLimits {
    /// The longest accepted audio, in seconds. Default 3600 (one hour).
    pub max_duration_secs: u32,
    /// The largest accepted file or data chunk, in bytes. Default 512 MiB.
    pub max_bytes: u64,
    /// The most channels accepted. Default 32.
    pub max_channels: u16,
}

impl Default for WavLimits {
    fn default() -> Self {
        Self {
            max_duration_secs: 3600,
            max_bytes: 512 * 1024 * 1024,
            max_channels: 32,
        }
    }
}

const MIN_RATE: u32 = 8_000;
const MAX_RATE: u32 = 384_000;

/// Reads a WAV file as 48 kHz mono samples in -1.0..=1.0, with the default [`WavLimits`].
pub fn read_mono_48k(path: impl AsRef<Path>) -> Result<Vec<f32>, WavError> {
    read_mono_48k_with(path, &WavLimits::default())
}

/// Reads a WAV file as 48 kHz mono samples in -1.0..=1.0, within the given limits.
pub fn read_mono_48k_with(
    path: impl AsRef<Path>,
    limits: &WavLimits,
) -> Result<Vec<f32>, WavError> {
    let file = File::open(path)?;
    let bytes = file.metadata()?.len();
    if bytes > limits.max_bytes {
        return Err(WavError::TooLarge {
            bytes,
            max_bytes: limits.max_bytes,
        });
    }
    read_mono_48k_from(BufReader::new(file), limits)
}

/// Reads WAV data from any reader as 48 kHz mono samples in -1.0..=1.0, within the limits.
pub fn read_mono_48k_from<R: Read>(reader: R, limits: &WavLimits) -> Result<Vec<f32>, WavError> {
    let (mono, rate) = read_mono_native(reader, limits)?;
    resample_to_48k(&mono, rate)
}

/// Reads WAV data as mono at the file's own sample rate; returns the samples and the rate.
pub fn read_mono_native<R: Read>(
    reader: R,
    limits: &WavLimits,
) -> Result<(Vec<f32>, u32), WavError> {
    let mut reader = hound::WavReader::new(reader)?;
    let spec = reader.spec();
    if !(MIN_RATE..=MAX_RATE).contains(&spec.sample_rate) {
        return Err(WavError::UnsupportedSampleRate(spec.sample_rate));
    }
    if spec.channels == 0 || spec.channels > limits.max_channels {
        return Err(WavError::UnsupportedChannels {
            got: spec.channels,
            max: limits.max_channels,
        });
    }
    let supported = match spec.sample_format {
        hound::SampleFormat::Int => matches!(spec.bits_per_sample, 8 | 16 | 24 | 32),
        hound::SampleFormat::Float => spec.bits_per_sample == 32,
    };
    if !supported {
        let kind = match spec.sample_format {
            hound::SampleFormat::Int => "integer",
            hound::SampleFormat::Float => "float",
        };
        return Err(WavError::UnsupportedFormat {
            bits: spec.bits_per_sample,
            kind,
        });
    }
    let frames = u64::from(reader.duration());
    let secs = frames as f64 / f64::from(spec.sample_rate);
    if secs > f64::from(limits.max_duration_secs) {
        return Err(WavError::TooLong {
            secs,
            max_secs: limits.max_duration_secs,
        });
    }
    let channels = u64::from(spec.channels);
    let data_bytes = frames * channels * u64::from(spec.bits_per_sample.div_ceil(8));
    if data_bytes > limits.max_bytes {
        return Err(WavError::TooLarge {
            bytes: data_bytes,
            max_bytes: limits.max_bytes,
        });
    }
    let expected = frames * channels;
    // Reserve at most a minute up front; a lying header cannot make us allocate more.
    let reserve = frames.min(u64::from(spec.sample_rate) * 60);
    let mut mono = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
    let ch = usize::from(spec.channels);
    let mut acc = 0.0f64;
    let mut in_frame = 0usize;
    let mut got = 0u64;
    let mut push = |s: f64| {
        acc += s;
        in_frame += 1;
        if in_frame == ch {
            mono.push((acc / ch as f64) as f32);
            acc = 0.0;
            in_frame = 0;
        }
    };
    match spec.sample_format {
        hound::SampleFormat::Float => {
            for s in reader.samples::<f32>() {
                let s = s.map_err(|e| truncation(e, expected, got))?;
                got += 1;
                push(if s.is_finite() {
                    f64::from(s).clamp(-1.0, 1.0)
                } else {
                    0.0
                });
            }
        }
        hound::SampleFormat::Int => {
            let scale = f64::from(1u32 << (spec.bits_per_sample - 1));
            for s in reader.samples::<i32>() {
                let s = s.map_err(|e| truncation(e, expected, got))?;
                got += 1;
                push(f64::from(s) / scale);
            }
        }
    }
    if got < expected {
        return Err(WavError::Truncated { expected, got });
    }
    Ok((mono, spec.sample_rate))
}

fn truncation(e: hound::Error, expected: u64, got: u64) -> WavError {
    match e {
        // hound reports a short read as "Failed to read enough bytes." (kind Other).
        hound::Error::IoError(io)
            if io.kind() == std::io::ErrorKind::UnexpectedEof
                || io.to_string().contains("enough bytes") =>
        {
            WavError::Truncated { expected, got }
        }
        other => WavError::Format(other),
    }
}

/// Resamples mono audio from `rate` Hz to 48 kHz (a copy when it already is 48 kHz).
///
/// The output has `round(len × 48000 / rate)` samples and is aligned with the input (the
/// resampler's own delay is removed).
pub fn resample_to_48k(input: &[f32], rate: u32) -> Result<Vec<f32>, WavError> {
    if rate == SAMPLE_RATE {
        return Ok(input.to_vec());
    }
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(WavError::UnsupportedSampleRate(rate));
    }
    let mut resampler =
        rubato::FftFixedInOut::<f32>::new(rate as usize, SAMPLE_RATE as usize, 1024, 1)
            .map_err(|e| WavError::Resample(e.to_string()))?;
    let delay = resampler.output_delay();
    let wanted = usize::try_from(
        (input.len() as u128 * u128::from(SAMPLE_RATE) + u128::from(rate) / 2) / u128::from(rate),
    )
    .map_err(|_| WavError::Resample("output too long".into()))?;
    let mut out: Vec<f32> = Vec::with_capacity(wanted + delay + resampler.output_frames_max());
    let mut pos = 0usize;
    let mut chunk = Vec::new();
    while out.len() < delay + wanted {
        let need = resampler.input_frames_next();
        let end = pos.saturating_add(need).min(input.len());
        chunk.clear();
        chunk.extend_from_slice(input.get(pos..end).unwrap_or_default());
        chunk.resize(need, 0.0);
        pos = end;
        let produced = resampler
            .process(&[chunk.as_slice()], None)
            .map_err(|e| WavError::Resample(e.to_string()))?;
        match produced.first() {
            Some(ch) if !ch.is_empty() => out.extend_from_slice(ch),
            _ => return Err(WavError::Resample("resampler produced no output".into())),
        }
    }
    out.drain(..delay);
    out.truncate(wanted);
    Ok(out)
}

fn spec_48k_mono_16() -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// Converts a float sample to 16-bit, clamping to full scale (NaN becomes 0).
pub fn f32_to_i16(s: f32) -> i16 {
    if s.is_nan() {
        return 0;
    }
    // The clamp keeps the value within i16's range, so the cast cannot wrap.
    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// Writes 48 kHz mono float samples as a 16-bit WAV file (clamped to full scale).
pub fn write_mono_48k(path: impl AsRef<Path>, samples: &[f32]) -> Result<(), WavError> {
    let mut w = MonoWavWriter::create(path)?;
    w.write_f32(samples)?;
    w.finalize()
}

/// A streaming writer of 48 kHz mono 16-bit WAV files, for recording a call frame by frame.
pub struct MonoWavWriter {
    inner: hound::WavWriter<BufWriter<File>>,
}

impl std::fmt::Debug for MonoWavWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonoWavWriter").finish_non_exhaustive()
    }
}

impl MonoWavWriter {
    /// Creates (or truncates) the file and writes the header.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, WavError> {
        Ok(Self {
            inner: hound::WavWriter::create(path, spec_48k_mono_16())?,
        })
    }

    /// Appends float samples (clamped to full scale).
    pub fn write_f32(&mut self, samples: &[f32]) -> Result<(), WavError> {
        for &s in samples {
            self.inner.write_sample(f32_to_i16(s))?;
        }
        Ok(())
    }

    /// Appends 16-bit samples.
    pub fn write_i16(&mut self, samples: &[i16]) -> Result<(), WavError> {
        for &s in samples {
            self.inner.write_sample(s)?;
        }
        Ok(())
    }

    /// Writes the final header and closes the file.
    pub fn finalize(self) -> Result<(), WavError> {
        self.inner.finalize()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;
    use std::io::Cursor;

    fn tone(freq: f64, amp: f64, rate: u32, secs: f64) -> Vec<f64> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| amp * (std::f64::consts::TAU * freq * i as f64 / f64::from(rate)).sin())
            .collect()
    }

    /// Writes `channels` copies of `samples` in the given format.
    fn write_wav(path: &Path, samples: &[f64], rate: u32, channels: u16, bits: u16, float: bool) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: if float {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for &s in samples {
            for _ in 0..channels {
                if float {
                    w.write_sample(s as f32).unwrap();
                } else {
                    let max = f64::from((1u32 << (bits - 1)) - 1);
                    let v = (s * max).round() as i32;
                    match bits {
                        8 => w.write_sample(v as i8).unwrap(),
                        16 => w.write_sample(v as i16).unwrap(),
                        _ => w.write_sample(v).unwrap(),
                    }
                }
            }
        }
        w.finalize().unwrap();
    }

    #[test]
    fn reads_every_common_format_and_rate_as_48k_mono() {
        let dir = tempfile::tempdir().unwrap();
        let formats = [
            (8, false),
            (16, false),
            (24, false),
            (32, false),
            (32, true),
        ];
        for rate in [8_000u32, 16_000, 22_050, 44_100, 48_000, 96_000] {
            for (bits, float) in formats {
                for channels in [1u16, 2, 6] {
                    let path = dir
                        .path()
                        .join(format!("t{rate}_{bits}_{float}_{channels}.wav"));
                    let secs = 0.5;
                    write_wav(
                        &path,
                        &tone(1000.0, 0.5, rate, secs),
                        rate,
                        channels,
                        bits,
                        float,
                    );
                    let got = read_mono_48k(&path).unwrap();
                    let what = format!("{rate} Hz {bits}-bit float={float} {channels} ch");
                    assert_eq!(got.len(), 24_000, "{what}");
                    let f = metrics::dominant_frequency_hz(&got, 48_000).unwrap();
                    assert!((f - 1000.0).abs() < 1.0, "{what}: {f} Hz");
                    // 0.5 peak sine: -9.03 dBFS RMS. 8-bit and the resampler edges cost a bit.
                    let level = metrics::dbfs(&got[2400..21_600]);
                    assert!((level + 9.03).abs() < 0.2, "{what}: {level} dBFS");
                }
            }
        }
    }

    #[test]
    fn resampling_44k1_preserves_frequency_level_and_timing() {
        let at_44k1: Vec<f32> = tone(440.0, 0.5, 44_100, 2.0)
            .iter()
            .map(|&s| s as f32)
            .collect();
        let out = resample_to_48k(&at_44k1, 44_100).unwrap();
        assert_eq!(out.len(), 96_000);
        let f = metrics::dominant_frequency_hz(&out, 48_000).unwrap();
        assert!((f - 440.0).abs() < 0.2, "{f} Hz");
        // Compare with the same tone generated at 48 kHz directly: same phase, no delay.
        let direct: Vec<f32> = tone(440.0, 0.5, 48_000, 2.0)
            .iter()
            .map(|&s| s as f32)
            .collect();
        let a = metrics::align(&direct, &out, 100).unwrap();
        let level = metrics::dbfs(&out[4800..91_200]) - metrics::dbfs(&direct[4800..91_200]);
        println!(
            "44.1 kHz -> 48 kHz: {f:.2} Hz, lag {} samples, NCC {:.5}, level {level:+.3} dB",
            a.lag, a.ncc
        );
        // The FFT resampler's delay is compensated to the nearest sample; what is left is
        // about half a sample (10 µs), which caps a plain sample-by-sample SNR near 30 dB.
        assert!(a.lag.abs() <= 1, "lag {}", a.lag);
        assert!(a.ncc > 0.999, "ncc {}", a.ncc);
        assert!(level.abs() < 0.05, "level {level} dB");
    }

    #[test]
    fn downmix_averages_channels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lr.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..4800 {
            let s = if i % 2 == 0 { 0.5f32 } else { -0.5 };
            w.write_sample(s).unwrap(); // left
            w.write_sample(if i < 2400 { -s } else { 0.0 }).unwrap(); // right
        }
        w.finalize().unwrap();
        let got = read_mono_48k(&path).unwrap();
        assert!(
            got[..2400].iter().all(|&s| s == 0.0),
            "opposite channels cancel"
        );
        assert!(
            got[2400..].iter().all(|&s| (s.abs() - 0.25).abs() < 1e-6),
            "half when one is silent"
        );
    }

    #[test]
    fn writer_round_trip_is_exact_to_one_lsb() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.wav");
        let mut samples: Vec<f32> = tone(300.0, 0.9, 48_000, 0.3)
            .iter()
            .map(|&s| s as f32)
            .collect();
        samples.extend([1.5, -1.5, f32::NAN, 0.0]);
        write_mono_48k(&path, &samples).unwrap();
        let r = hound::WavReader::open(&path).unwrap();
        assert_eq!(r.spec(), spec_48k_mono_16());
        let back = read_mono_48k(&path).unwrap();
        assert_eq!(back.len(), samples.len());
        for (a, b) in samples.iter().zip(&back) {
            let want = if a.is_nan() { 0.0 } else { a.clamp(-1.0, 1.0) };
            assert!((want - b).abs() <= 1.5 / 32768.0, "{a} -> {b}");
        }
        let mut w = MonoWavWriter::create(dir.path().join("s.wav")).unwrap();
        w.write_i16(&[1, -1, i16::MAX, i16::MIN]).unwrap();
        w.write_f32(&[0.5]).unwrap();
        w.finalize().unwrap();
        let r = hound::WavReader::open(dir.path().join("s.wav")).unwrap();
        let v: Vec<i16> = r.into_samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(v, [1, -1, i16::MAX, i16::MIN, 16_384]);
    }

    #[test]
    fn hostile_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let limits = WavLimits::default();

        // Not a WAV at all.
        let err = read_mono_48k_from(Cursor::new(b"hello, this is not audio".to_vec()), &limits);
        assert!(matches!(err, Err(WavError::Format(_))), "{err:?}");
        assert!(matches!(
            read_mono_48k(dir.path().join("missing.wav")),
            Err(WavError::Io(_))
        ));

        // Longer than the limit (checked from the header).
        let long = dir.path().join("long.wav");
        write_wav(&long, &tone(440.0, 0.1, 8000, 3.0), 8000, 1, 16, false);
        let short_limit = WavLimits {
            max_duration_secs: 2,
            ..limits
        };
        let err = read_mono_48k_with(&long, &short_limit);
        assert!(
            matches!(err, Err(WavError::TooLong { max_secs: 2, .. })),
            "{err:?}"
        );

        // Larger than the byte limit.
        let err = read_mono_48k_with(
            &long,
            &WavLimits {
                max_bytes: 1000,
                ..limits
            },
        );
        assert!(matches!(err, Err(WavError::TooLarge { .. })), "{err:?}");

        // Truncated: the header promises more than the file has.
        let bytes = std::fs::read(&long).unwrap();
        let cut = bytes[..bytes.len() / 2].to_vec();
        let err = read_mono_48k_from(Cursor::new(cut), &limits);
        assert!(matches!(err, Err(WavError::Truncated { .. })), "{err:?}");

        // A header claiming a huge data chunk in a tiny file: refused or truncated, quickly.
        let mut huge = bytes[..44].to_vec();
        huge[40..44].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        huge.extend_from_slice(&[0; 64]);
        let err = read_mono_48k_from(Cursor::new(huge), &limits);
        assert!(
            matches!(
                err,
                Err(WavError::TooLong { .. } | WavError::TooLarge { .. })
            ),
            "{err:?}"
        );

        // Sample rate outside the accepted range.
        let slow = dir.path().join("slow.wav");
        write_wav(&slow, &tone(100.0, 0.1, 4000, 0.1), 4000, 1, 16, false);
        assert!(matches!(
            read_mono_48k(&slow),
            Err(WavError::UnsupportedSampleRate(4000))
        ));

        // Too many channels for the limit.
        let wide = dir.path().join("wide.wav");
        write_wav(&wide, &tone(100.0, 0.1, 8000, 0.1), 8000, 4, 16, false);
        let err = read_mono_48k_with(
            &wide,
            &WavLimits {
                max_channels: 2,
                ..limits
            },
        );
        assert!(
            matches!(err, Err(WavError::UnsupportedChannels { got: 4, max: 2 })),
            "{err:?}"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("g.wav");
        write_wav(&good, &tone(440.0, 0.3, 22_050, 0.05), 22_050, 2, 24, false);
        let bytes = std::fs::read(&good).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..500 {
            let mut b = bytes.clone();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            b.truncate(rng.random_range(0..=b.len()));
            let _ = read_mono_48k_from(Cursor::new(b), &WavLimits::default());
        }
    }
}
