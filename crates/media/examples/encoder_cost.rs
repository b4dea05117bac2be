//! What each Opus encoder setting costs in CPU, and what it gives back, on one signal: for each
//! complexity and expected-loss setting, the encoder's CPU time per 20 ms frame (best of three
//! passes over the whole signal, one thread), and the decoded signal as a WAV for a quality
//! measure (`scripts/bench-codec` scores them with ITU-T P.862 PESQ).
//!
//! ```text
//! cargo run -p aparte-media --release --example encoder_cost -- SPEECH.wav OUT_DIR [--json]
//! ```
//!
//! Expected loss decides whether libopus adds in-band FEC (an LBRR copy of each frame, which
//! runs SILK's noise-shaping quantizer a second time): 0 means no FEC is encoded.

use std::time::Instant;

use aparte_media::codec::{Decoder, Encoder, EncoderConfig};
use aparte_media::{wav, FRAME_SAMPLES};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const COMPLEXITIES: [u8; 8] = [2, 3, 5, 6, 7, 8, 9, 10];
const EXPECTED_LOSS: [u8; 2] = [0, 10];
const PASSES: usize = 3;

/// Runs `pass` [`PASSES`] times; returns the shortest time, in seconds, and what the last pass
/// produced. (Making the encoder or decoder is inside the timing: microseconds against the
/// tens of milliseconds of a pass.)
fn best_of<T>(mut pass: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..PASSES {
        let started = Instant::now();
        last = Some(pass()?);
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok((best, last.ok_or("no pass ran")?))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let mut positional = args.iter().filter(|a| !a.starts_with("--"));
    let (Some(input), Some(out_dir)) = (positional.next(), positional.next()) else {
        return Err("usage: encoder_cost SPEECH.wav OUT_DIR [--json]".into());
    };
    let signal = wav::read_mono_48k(input)?;
    let frames: Vec<&[f32]> = signal.chunks_exact(FRAME_SAMPLES).collect();
    if frames.is_empty() {
        return Err(format!("{input}: shorter than one 20 ms frame").into());
    }
    std::fs::create_dir_all(out_dir)?;
    if !json {
        println!(
            "{} frames ({:.1} s); encoder CPU per frame, best of {PASSES}",
            frames.len(),
            frames.len() as f64 * 0.02
        );
    }
    for complexity in COMPLEXITIES {
        for expected_loss_percent in EXPECTED_LOSS {
            let config = EncoderConfig {
                complexity,
                expected_loss_percent,
                ..EncoderConfig::default()
            };
            let (best, packets) = best_of(|| {
                let mut encoder = Encoder::new(config)?;
                let mut packets = Vec::with_capacity(frames.len());
                for frame in &frames {
                    packets.push(encoder.encode_f32(frame)?);
                }
                Ok(packets)
            })?;
            let (best_decode, decoded) = best_of(|| {
                let mut decoder = Decoder::new()?;
                let mut decoded = Vec::with_capacity(signal.len());
                for packet in &packets {
                    decoded.extend(decoder.decode_f32(packet)?);
                }
                Ok(decoded)
            })?;
            let decode_us_per_frame = best_decode * 1e6 / frames.len() as f64;
            let path = format!("{out_dir}/c{complexity}-l{expected_loss_percent}.wav");
            wav::write_mono_48k(&path, &decoded)?;
            let us_per_frame = best * 1e6 / frames.len() as f64;
            // A 20 ms frame every 20 ms: the share of one core the encoder needs.
            let cpu_per_second = us_per_frame * 50.0 / 1e6;
            if json {
                println!(
                    "{{\"complexity\":{complexity},\"expected_loss_percent\":{expected_loss_percent},\
                     \"encode_us_per_frame\":{us_per_frame:.1},\"encode_cpu_per_second\":{cpu_per_second:.5},\
                     \"decode_us_per_frame\":{decode_us_per_frame:.1},\
                     \"decoded\":\"{path}\"}}"
                );
            } else {
                println!(
                    "complexity {complexity:>2}, expected loss {expected_loss_percent:>2} %: \
                     {us_per_frame:6.1} µs/frame = {cpu_per_second:.4} CPU-s per second \
                     (decoding: {decode_us_per_frame:5.1} µs/frame); {path}"
                );
            }
        }
    }
    Ok(())
}
