//! Opus encoding and decoding at 48 kHz mono with 20 ms frames.
//!
//! The encoder defaults to **constant bitrate** at 24 kbit/s: with variable bitrate the size of
//! each packet follows the speech (louder, busier sounds take more bytes), and packet sizes are
//! visible to everyone on the path even when the payload is encrypted. With CBR every packet of a
//! call has the same size. In-band forward error correction (FEC) is on: each packet also carries
//! a low-bitrate copy of the previous frame, which the decoder can use when that frame was lost
//! ([`Decoder::recover_fec_f32`]). When neither the frame nor the next packet is there, the
//! decoder conceals the gap ([`Decoder::conceal_f32`], Opus packet-loss concealment).
//!
//! Every call here takes or returns exactly one 20 ms frame ([`FRAME_SAMPLES`] samples).

use crate::FRAME_SAMPLES;
use crate::SAMPLE_RATE;

/// The largest Opus packet this crate accepts for decoding, in bytes.
///
/// One Opus frame is at most 1275 bytes and a packet may hold several; 4000 bytes covers every
/// valid packet of up to 120 ms. Anything larger is refused before it reaches libopus.
pub const MAX_PACKET_BYTES: usize = 4000;

/// The largest packet the encoder may produce, in bytes (one Opus frame).
const MAX_ENCODED_BYTES: usize = 1275;

/// The lowest bitrate the encoder accepts, in bit/s (Opus's own minimum is 500, but below
/// 6 kbit/s speech is not usable and FEC does not fit).
pub const MIN_BITRATE: u32 = 6_000;

/// The highest bitrate the encoder accepts, in bit/s.
pub const MAX_BITRATE: u32 = 128_000;

/// What went wrong in the codec.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The encoder configuration is out of range.
    #[error("invalid encoder configuration: {0}")]
    InvalidConfig(&'static str),
    /// A frame to encode did not have exactly [`FRAME_SAMPLES`] samples.
    #[error("frame has {got} samples, expected {FRAME_SAMPLES} (20 ms at 48 kHz mono)")]
    WrongFrameLength {
        /// How many samples were given.
        got: usize,
    },
    /// A packet was empty or larger than [`MAX_PACKET_BYTES`].
    #[error("packet of {len} bytes is outside 1..={MAX_PACKET_BYTES}")]
    BadPacketLength {
        /// The packet length in bytes.
        len: usize,
    },
    /// A packet decoded to a duration other than 20 ms.
    #[error(
        "packet decoded to {got} samples, expected {FRAME_SAMPLES} (only 20 ms packets are used)"
    )]
    WrongPacketDuration {
        /// How many samples the packet holds.
        got: usize,
    },
    /// libopus refused the operation (for example a corrupt packet).
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
}

/// Encoder settings. The defaults are the ones aparté uses on a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Target bitrate in bit/s, within [`MIN_BITRATE`]..=[`MAX_BITRATE`]. Default 24 000.
    pub bitrate: u32,
    /// Constant bitrate (every packet the same size). Default `true`; see the module docs for
    /// why turning it off leaks information.
    pub cbr: bool,
    /// In-band forward error correction. Default `true`.
    pub fec: bool,
    /// The packet loss the encoder should expect, in percent (0..=100). It decides how much of
    /// the bitrate goes to FEC; with 0 libopus sends no FEC at all. Default 10.
    pub expected_loss_percent: u8,
    /// Encoder complexity, 0..=10 (10 is best quality, most CPU). Default 9.
    pub complexity: u8,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            bitrate: 24_000,
            cbr: true,
            fec: true,
            expected_loss_percent: 10,
            complexity: 9,
        }
    }
}

impl EncoderConfig {
    /// Checks that every field is in range.
    pub fn validate(&self) -> Result<(), CodecError> {
        if !(MIN_BITRATE..=MAX_BITRATE).contains(&self.bitrate) {
            return Err(CodecError::InvalidConfig(
                "bitrate must be within 6000..=128000 bit/s",
            ));
        }
        if self.expected_loss_percent > 100 {
            return Err(CodecError::InvalidConfig(
                "expected_loss_percent must be within 0..=100",
            ));
        }
        if self.complexity > 10 {
            return Err(CodecError::InvalidConfig(
                "complexity must be within 0..=10",
            ));
        }
        Ok(())
    }

    /// The size of every packet under constant bitrate, in bytes (`bitrate * 20 ms / 8`).
    pub fn cbr_packet_bytes(&self) -> usize {
        (self.bitrate as usize * crate::FRAME_MS as usize) / 8000
    }
}

/// An Opus encoder for 20 ms mono frames at 48 kHz.
pub struct Encoder {
    inner: opus::Encoder,
    config: EncoderConfig,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Creates an encoder with the given settings (VoIP application mode).
    pub fn new(config: EncoderConfig) -> Result<Self, CodecError> {
        config.validate()?;
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        // The bitrate is validated above, so the cast is lossless.
        inner.set_bitrate(opus::Bitrate::Bits(config.bitrate as i32))?;
        inner.set_vbr(!config.cbr)?;
        inner.set_inband_fec(config.fec)?;
        inner.set_packet_loss_perc(i32::from(config.expected_loss_percent))?;
        inner.set_complexity(i32::from(config.complexity))?;
        inner.set_dtx(false)?;
        inner.set_signal(opus::Signal::Voice)?;
        Ok(Self {
            inner,
            config,
            scratch: vec![0; MAX_ENCODED_BYTES],
        })
    }

    /// The settings this encoder was made with (the loss hint may since have changed).
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The encoder's algorithmic delay (lookahead), in samples at 48 kHz: decoded audio lags
    /// the input by this much.
    pub fn lookahead_samples(&mut self) -> Result<usize, CodecError> {
        let n = self.inner.get_lookahead()?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Tells the encoder how much packet loss to expect now, in percent (clamped to 100).
    ///
    /// A client can feed the loss it measures back here so FEC follows the network.
    pub fn set_expected_loss_percent(&mut self, percent: u8) -> Result<(), CodecError> {
        let percent = percent.min(100);
        self.inner.set_packet_loss_perc(i32::from(percent))?;
        self.config.expected_loss_percent = percent;
        Ok(())
    }

    /// Changes the bitrate, in bit/s, from the next frame on (still constant when the encoder
    /// is CBR: every packet of the new step has the same size).
    pub fn set_bitrate(&mut self, bitrate: u32) -> Result<(), CodecError> {
        if !(MIN_BITRATE..=MAX_BITRATE).contains(&bitrate) {
            return Err(CodecError::InvalidConfig(
                "bitrate must be within 6000..=128000 bit/s",
            ));
        }
        // Within the range above, the cast is lossless.
        self.inner
            .set_bitrate(opus::Bitrate::Bits(bitrate as i32))?;
        self.config.bitrate = bitrate;
        Ok(())
    }

    /// Encodes one frame of 16-bit samples into a packet.
    pub fn encode_i16(&mut self, frame: &[i16]) -> Result<Vec<u8>, CodecError> {
        check_frame(frame.len())?;
        let n = self.inner.encode(frame, &mut self.scratch)?;
        Ok(self.scratch.get(..n).unwrap_or_default().to_vec())
    }

    /// Encodes one frame of float samples (nominally within -1.0..=1.0) into a packet.
    ///
    /// Non-finite samples (NaN, infinities) are replaced by silence before encoding.
    pub fn encode_f32(&mut self, frame: &[f32]) -> Result<Vec<u8>, CodecError> {
        check_frame(frame.len())?;
        let n = if frame.iter().all(|s| s.is_finite()) {
            self.inner.encode_float(frame, &mut self.scratch)?
        } else {
            let clean: Vec<f32> = frame
                .iter()
                .map(|s| if s.is_finite() { *s } else { 0.0 })
                .collect();
            self.inner.encode_float(&clean, &mut self.scratch)?
        };
        Ok(self.scratch.get(..n).unwrap_or_default().to_vec())
    }
}

fn check_frame(len: usize) -> Result<(), CodecError> {
    if len == FRAME_SAMPLES {
        Ok(())
    } else {
        Err(CodecError::WrongFrameLength { got: len })
    }
}

fn check_packet(packet: &[u8]) -> Result<(), CodecError> {
    if packet.is_empty() || packet.len() > MAX_PACKET_BYTES {
        return Err(CodecError::BadPacketLength { len: packet.len() });
    }
    let samples = opus::packet::get_nb_samples(packet, SAMPLE_RATE)?;
    if samples != FRAME_SAMPLES {
        return Err(CodecError::WrongPacketDuration { got: samples });
    }
    Ok(())
}

/// An Opus decoder that yields 20 ms mono frames at 48 kHz.
///
/// Feed it, in playout order, one call per frame: [`decode_f32`](Self::decode_f32) for a packet
/// that arrived, [`recover_fec_f32`](Self::recover_fec_f32) with the *next* packet when a frame
/// was lost but its successor is there, and [`conceal_f32`](Self::conceal_f32) otherwise. The
/// [`jitter`](crate::jitter) buffer tells which one to call. `i16` variants exist for each.
pub struct Decoder {
    inner: opus::Decoder,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// Creates a decoder for 48 kHz mono.
    pub fn new() -> Result<Self, CodecError> {
        Ok(Self {
            inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
        })
    }

    /// Decodes one 20 ms packet into float samples.
    ///
    /// Packets of another duration, empty or oversized packets and corrupt packets are refused
    /// with an error; the caller should then conceal the frame instead.
    pub fn decode_f32(&mut self, packet: &[u8]) -> Result<Vec<f32>, CodecError> {
        check_packet(packet)?;
        let mut out = vec![0.0; FRAME_SAMPLES];
        let n = self.inner.decode_float(packet, &mut out, false)?;
        finish(out, n)
    }

    /// Decodes one 20 ms packet into 16-bit samples. See [`decode_f32`](Self::decode_f32).
    pub fn decode_i16(&mut self, packet: &[u8]) -> Result<Vec<i16>, CodecError> {
        check_packet(packet)?;
        let mut out = vec![0; FRAME_SAMPLES];
        let n = self.inner.decode(packet, &mut out, false)?;
        finish(out, n)
    }

    /// Produces a stand-in for one lost frame by packet-loss concealment.
    pub fn conceal_f32(&mut self) -> Result<Vec<f32>, CodecError> {
        let mut out = vec![0.0; FRAME_SAMPLES];
        let n = self.inner.decode_float(&[], &mut out, false)?;
        finish(out, n)
    }

    /// Produces a stand-in for one lost frame by packet-loss concealment, as 16-bit samples.
    pub fn conceal_i16(&mut self) -> Result<Vec<i16>, CodecError> {
        let mut out = vec![0; FRAME_SAMPLES];
        let n = self.inner.decode(&[], &mut out, false)?;
        finish(out, n)
    }

    /// Rebuilds a lost frame from the FEC data in the packet that *follows* it.
    ///
    /// `next_packet` is not consumed: decode it normally on the next tick. If the packet carries
    /// no FEC data, libopus falls back to concealment, so this is never worse than
    /// [`conceal_f32`](Self::conceal_f32).
    pub fn recover_fec_f32(&mut self, next_packet: &[u8]) -> Result<Vec<f32>, CodecError> {
        check_packet(next_packet)?;
        let mut out = vec![0.0; FRAME_SAMPLES];
        let n = self.inner.decode_float(next_packet, &mut out, true)?;
        finish(out, n)
    }

    /// Rebuilds a lost frame from the next packet's FEC data, as 16-bit samples. See
    /// [`recover_fec_f32`](Self::recover_fec_f32).
    pub fn recover_fec_i16(&mut self, next_packet: &[u8]) -> Result<Vec<i16>, CodecError> {
        check_packet(next_packet)?;
        let mut out = vec![0; FRAME_SAMPLES];
        let n = self.inner.decode(next_packet, &mut out, true)?;
        finish(out, n)
    }

    /// Resets the decoder to its initial state (for a new stream).
    pub fn reset(&mut self) -> Result<(), CodecError> {
        self.inner.reset_state()?;
        Ok(())
    }
}

fn finish<T>(out: Vec<T>, n: usize) -> Result<Vec<T>, CodecError> {
    if n == FRAME_SAMPLES {
        Ok(out)
    } else {
        Err(CodecError::WrongPacketDuration { got: n })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;
    use crate::source::{AudioSource, Frame, ToneSource};

    /// A speech-like test signal: a harmonic series whose pitch glides between 110 and 230 Hz
    /// with a 4 Hz syllable-rate envelope, so neither the pitch nor the level is predictable
    /// from the last frame (which is what makes plain concealment fail).
    pub(crate) fn speechlike(frames: usize) -> Vec<f32> {
        let n = frames * FRAME_SAMPLES;
        let sr = f64::from(SAMPLE_RATE);
        let mut phase = 0.0f64;
        (0..n)
            .map(|i| {
                let t = i as f64 / sr;
                let f0 = 170.0 + 60.0 * (std::f64::consts::TAU * 1.3 * t).sin();
                phase += std::f64::consts::TAU * f0 / sr;
                let env = 0.5 + 0.5 * (std::f64::consts::TAU * 4.0 * t).sin().abs();
                let mut s = 0.0;
                for h in 1..=12 {
                    s += (h as f64 * phase).sin() / h as f64;
                }
                (0.25 * env * s) as f32
            })
            .collect()
    }

    fn tone(freq: f64, amp: f64, frames: usize) -> Vec<f32> {
        let mut src = ToneSource::new(freq, amp).unwrap();
        let mut out = Vec::new();
        let mut f: Frame = [0.0; FRAME_SAMPLES];
        for _ in 0..frames {
            src.next_frame(&mut f).unwrap();
            out.extend_from_slice(&f);
        }
        out
    }

    fn round_trip(input: &[f32], config: EncoderConfig) -> (Vec<f32>, Vec<usize>) {
        let mut enc = Encoder::new(config).unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        for frame in input.chunks_exact(FRAME_SAMPLES) {
            let p = enc.encode_f32(frame).unwrap();
            sizes.push(p.len());
            out.extend(dec.decode_f32(&p).unwrap());
        }
        (out, sizes)
    }

    /// Threshold: libopus 1.6 at 24 kbit/s CBR gives 31.4 dB on this sine after alignment
    /// (measured; see docs/MEDIA.md). 25 dB leaves about 6 dB of margin for other libopus builds
    /// and CPUs, and is far above what a broken pipeline gives (a wrong delay, a dropped or
    /// repeated frame or a clipped signal all land below 15 dB).
    #[test]
    fn sine_round_trip_snr() {
        let input = tone(440.0, 0.5, 100);
        let (out, _) = round_trip(&input, EncoderConfig::default());
        // Skip the first 100 ms while the encoder settles.
        let skip = 5 * FRAME_SAMPLES;
        let cmp = metrics::compare(&input[skip..], &out[skip..], 960).unwrap();
        println!(
            "sine 440 Hz round trip: SNR {:.1} dB, NCC {:.4}, lag {} samples",
            cmp.snr_db, cmp.alignment.ncc, cmp.alignment.lag
        );
        assert!(cmp.snr_db >= 25.0, "SNR {:.1} dB", cmp.snr_db);
        // A near-silent or garbage output must not pass: the levels match within 1 dB.
        assert!((cmp.reference_dbfs - cmp.test_dbfs).abs() < 1.0);
    }

    #[test]
    fn i16_round_trip_matches_input() {
        let input = tone(440.0, 0.5, 50);
        let pcm: Vec<i16> = input.iter().map(|&s| crate::wav::f32_to_i16(s)).collect();
        let mut enc = Encoder::new(EncoderConfig::default()).unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut out = Vec::new();
        for frame in pcm.chunks_exact(FRAME_SAMPLES) {
            let p = enc.encode_i16(frame).unwrap();
            out.extend(
                dec.decode_i16(&p)
                    .unwrap()
                    .iter()
                    .map(|&s| f32::from(s) / 32768.0),
            );
        }
        let skip = 5 * FRAME_SAMPLES;
        let cmp = metrics::compare(&input[skip..], &out[skip..], 960).unwrap();
        assert!(cmp.snr_db >= 25.0, "SNR {:.1} dB", cmp.snr_db);
    }

    #[test]
    fn a_bitrate_step_mid_stream_keeps_every_packet_of_a_step_the_same_size() {
        let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
        let input = speechlike(60);
        let mut sizes = Vec::new();
        for (k, frame) in input.chunks(FRAME_SAMPLES).enumerate() {
            if k == 20 {
                encoder.set_bitrate(12_000).unwrap();
            }
            if k == 40 {
                encoder.set_bitrate(8_000).unwrap();
            }
            sizes.push(encoder.encode_f32(frame).unwrap().len());
        }
        // 24 kbit/s × 20 ms = 60 B, 12 kbit/s = 30 B, 8 kbit/s = 20 B.
        assert!(sizes[..20].iter().all(|&n| n == 60), "{sizes:?}");
        assert!(sizes[20..40].iter().all(|&n| n == 30), "{sizes:?}");
        assert!(sizes[40..].iter().all(|&n| n == 20), "{sizes:?}");
        assert!(encoder.set_bitrate(5_000).is_err());
        assert_eq!(encoder.config().bitrate, 8_000);
    }

    #[test]
    fn cbr_packets_have_constant_size_vbr_do_not() {
        // Silence, a tone and a speech-like signal: very different content.
        let mut input = vec![0.0f32; 25 * FRAME_SAMPLES];
        input.extend(tone(1000.0, 0.8, 25));
        input.extend(speechlike(50));
        for bitrate in [16_000, 24_000, 32_000] {
            let config = EncoderConfig {
                bitrate,
                ..EncoderConfig::default()
            };
            let (_, sizes) = round_trip(&input, config);
            println!("CBR {bitrate} bit/s: packet sizes {:?}..", &sizes[..4]);
            assert!(
                sizes.iter().all(|&s| s == config.cbr_packet_bytes()),
                "CBR sizes vary at {bitrate}: {sizes:?}"
            );
        }
        let (_, vbr) = round_trip(
            &input,
            EncoderConfig {
                cbr: false,
                ..EncoderConfig::default()
            },
        );
        let distinct: std::collections::BTreeSet<_> = vbr.iter().collect();
        assert!(
            distinct.len() > 5,
            "VBR sizes should follow the content: {distinct:?}"
        );
    }

    #[test]
    fn decoded_audio_lags_by_the_encoder_lookahead() {
        let input = speechlike(100);
        let mut enc = Encoder::new(EncoderConfig::default()).unwrap();
        let lookahead = enc.lookahead_samples().unwrap();
        let (out, _) = round_trip(&input, EncoderConfig::default());
        let a = metrics::align(&input, &out, 2 * FRAME_SAMPLES).unwrap();
        println!(
            "speech-like round trip: lag {} samples (lookahead {lookahead}), NCC {:.3}",
            a.lag, a.ncc
        );
        // The codec's phase response shifts the best match by a few samples.
        assert!(
            a.lag.abs_diff(lookahead as i64) <= 10,
            "lag {} vs lookahead {lookahead}",
            a.lag
        );
        assert!(a.ncc > 0.8, "NCC {:.3}", a.ncc);
    }

    /// SNR over each lost frame (every `loss_every`th), against a decoder that saw every packet.
    fn loss_recovery_snr(config: EncoderConfig, use_fec: bool, loss_every: usize) -> f64 {
        let input = speechlike(250);
        let mut enc = Encoder::new(config).unwrap();
        let packets: Vec<Vec<u8>> = input
            .chunks_exact(FRAME_SAMPLES)
            .map(|f| enc.encode_f32(f).unwrap())
            .collect();
        let mut clean = Decoder::new().unwrap();
        let mut lossy = Decoder::new().unwrap();
        let (mut sig, mut noise) = (0.0f64, 0.0f64);
        for (i, p) in packets.iter().enumerate() {
            let reference = clean.decode_f32(p).unwrap();
            let got = if i > 10 && i % loss_every == 0 {
                let out = if use_fec {
                    lossy.recover_fec_f32(&packets[i + 1]).unwrap()
                } else {
                    lossy.conceal_f32().unwrap()
                };
                for (r, g) in reference.iter().zip(&out) {
                    sig += f64::from(*r) * f64::from(*r);
                    noise += f64::from(r - g) * f64::from(r - g);
                }
                out
            } else {
                lossy.decode_f32(p).unwrap()
            };
            assert_eq!(got.len(), FRAME_SAMPLES);
        }
        10.0 * (sig / noise).log10()
    }

    /// Measured with libopus 1.6 at the defaults: FEC about 5.5 dB, PLC about 1.6 dB over the
    /// lost frames (waveform SNR is harsh on both: FEC is a low-bitrate copy and PLC a guess).
    /// The 2 dB margin asserts a clear gain; the control shows the gain comes from FEC data.
    #[test]
    fn fec_recovers_lost_frames_better_than_plc() {
        let config = EncoderConfig::default();
        let fec = loss_recovery_snr(config, true, 7);
        let plc = loss_recovery_snr(config, false, 7);
        println!("lost frames: FEC {fec:.1} dB, PLC {plc:.1} dB (SNR vs lossless decode)");
        assert!(fec > plc + 2.0, "FEC {fec:.1} dB vs PLC {plc:.1} dB");
        // Control: without FEC in the stream, "recovering" from the next packet is plain PLC.
        let off = EncoderConfig {
            fec: false,
            ..config
        };
        let fec_off = loss_recovery_snr(off, true, 7);
        let plc_off = loss_recovery_snr(off, false, 7);
        println!("FEC disabled: recovery {fec_off:.1} dB, PLC {plc_off:.1} dB");
        assert!(
            (fec_off - plc_off).abs() < 0.5,
            "{fec_off:.1} vs {plc_off:.1}"
        );
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let mut enc = Encoder::new(EncoderConfig::default()).unwrap();
        assert!(matches!(
            enc.encode_f32(&[0.0; 100]),
            Err(CodecError::WrongFrameLength { got: 100 })
        ));
        assert!(enc.encode_i16(&[]).is_err());
        let mut nan = vec![0.1f32; FRAME_SAMPLES];
        nan[3] = f32::NAN;
        nan[4] = f32::INFINITY;
        assert_eq!(enc.encode_f32(&nan).unwrap().len(), 60);
        let mut dec = Decoder::new().unwrap();
        assert!(matches!(
            dec.decode_f32(&[]),
            Err(CodecError::BadPacketLength { len: 0 })
        ));
        assert!(dec.decode_f32(&vec![0u8; MAX_PACKET_BYTES + 1]).is_err());
        assert!(dec.recover_fec_f32(&[]).is_err());
        // Random garbage: an error or a frame, never a panic.
        let mut x = 0x1234_5678u32;
        for len in 1..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if let Ok(f) = dec.decode_f32(&bytes) {
                assert_eq!(f.len(), FRAME_SAMPLES);
            }
            let _ = dec.recover_fec_i16(&bytes);
        }
        // Still usable afterwards.
        assert_eq!(dec.conceal_i16().unwrap().len(), FRAME_SAMPLES);
        dec.reset().unwrap();
    }

    #[test]
    fn config_is_validated() {
        for bad in [
            EncoderConfig {
                bitrate: 1000,
                ..EncoderConfig::default()
            },
            EncoderConfig {
                bitrate: 500_000,
                ..EncoderConfig::default()
            },
            EncoderConfig {
                expected_loss_percent: 101,
                ..EncoderConfig::default()
            },
            EncoderConfig {
                complexity: 11,
                ..EncoderConfig::default()
            },
        ] {
            assert!(Encoder::new(bad).is_err(), "{bad:?}");
        }
        let mut enc = Encoder::new(EncoderConfig::default()).unwrap();
        enc.set_expected_loss_percent(200).unwrap();
        assert_eq!(enc.config().expected_loss_percent, 100);
    }

    #[test]
    fn packets_of_other_durations_are_refused() {
        let mut enc =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let p = enc.encode_vec_float(&[0.0; 480], 400).unwrap(); // 10 ms
        let mut dec = Decoder::new().unwrap();
        assert!(matches!(
            dec.decode_f32(&p),
            Err(CodecError::WrongPacketDuration { got: 480 })
        ));
    }
}
