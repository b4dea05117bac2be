//! # aparte-media: the audio layer of aparté
//!
//! This crate turns audio into Opus packets and Opus packets back into audio, and gives the
//! tools to judge what came out. It knows nothing about encryption, WebRTC or sockets: the peer
//! client moves its packets through the e2ee crate and the network, and this crate sits on either
//! side of that. Everything that is protocol or state logic is **sans-IO**: no threads, no
//! sockets, no async runtime and no clock. Time comes in as milliseconds and audio as sample
//! counts, so tests drive each piece directly and reproducibly.
//!
//! The pieces, in the order a call uses them:
//!
//! 1. [`source`]: where audio comes from, one 20 ms frame at a time (a WAV file, a tone,
//!    silence; a microphone later), behind the [`source::AudioSource`] trait.
//! 2. [`codec`]: Opus at 48 kHz mono, 20 ms frames, constant bitrate, in-band FEC; decoding,
//!    packet-loss concealment and FEC recovery.
//!    [`fec`] chooses how much FEC to send from the loss the peer reports.
//! 3. [`jitter`]: an adaptive jitter buffer on the receiving side. The network pushes packets
//!    in with their arrival time; the playout clock pulls one frame per 20 ms tick and is told to
//!    decode a packet, recover a lost frame from the next packet's FEC, or conceal.
//! 4. [`wav`]: reading any common PCM WAV file as 48 kHz mono, and writing 48 kHz mono 16-bit.
//! 5. [`metrics`]: level (RMS, dBFS), SNR and delay-aligned normalized cross-correlation, used
//!    to check that received audio matches what was sent.
//! 6. [`accounting`]: checks that every frame the peer sent is explained on the receiving
//!    side (decrypted and played or dropped for a reason, rejected, refused, or lost).
//!
//! The design and the measured figures are in `docs/MEDIA.md`.
//!
//! ```
//! use aparte_media::codec::{Decoder, Encoder, EncoderConfig};
//! use aparte_media::source::{AudioSource, Frame, ToneSource};
//!
//! let mut tone = ToneSource::new(440.0, 0.5)?;
//! let mut encoder = Encoder::new(EncoderConfig::default())?;
//! let mut decoder = Decoder::new()?;
//! let mut frame: Frame = [0.0; aparte_media::FRAME_SAMPLES];
//! tone.next_frame(&mut frame)?;
//! let packet = encoder.encode_f32(&frame)?;
//! assert_eq!(packet.len(), 60); // 24 kbit/s * 20 ms / 8, constant bitrate
//! let decoded = decoder.decode_f32(&packet)?;
//! assert_eq!(decoded.len(), aparte_media::FRAME_SAMPLES);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod accounting;
pub mod codec;
pub mod fec;
pub mod jitter;
pub mod metrics;
pub mod ptime;
pub mod source;
pub mod wav;

/// The sample rate of every signal inside aparté, in hertz.
pub const SAMPLE_RATE: u32 = 48_000;

/// The length of one audio frame, in milliseconds.
pub const FRAME_MS: u32 = 20;

/// The number of samples in one mono 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;

#[cfg(test)]
mod tests {
    /// The client moves these into its audio and network threads.
    #[test]
    fn pipeline_types_are_send() {
        fn send<T: Send>() {}
        send::<crate::codec::Encoder>();
        send::<crate::codec::Decoder>();
        send::<crate::jitter::JitterBuffer>();
        send::<crate::wav::MonoWavWriter>();
        send::<Box<dyn crate::source::AudioSource>>();
    }
}
