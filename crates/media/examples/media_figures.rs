//! Prints the figures quoted in `docs/MEDIA.md`: codec SNR, packet sizes, FEC against PLC
//! and whole-path quality over a simulated impaired network.
//!
//! ```text
//! cargo run -p aparte-media --release --example media_figures [-- SPEECH.wav]
//! ```
//!
//! Without an argument the signal is the synthetic speech-like test signal; with a WAV file
//! (for example one made with `espeak-ng -w speech.wav "..."`) that file is used instead.

#[path = "../tests/support/sim.rs"]
mod sim;

use aparte_media::codec::{Decoder, Encoder, EncoderConfig};
use aparte_media::jitter::JitterConfig;
use aparte_media::source::{AudioSource, Frame, ToneSource};
use aparte_media::{metrics, wav, FRAME_SAMPLES};
use sim::{run_call, segment_score, speechlike, Impairment};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let signal = match std::env::args().nth(1) {
        Some(path) => {
            println!("signal: {path} (converted to 48 kHz mono)");
            wav::read_mono_48k(&path)?
        }
        None => {
            println!("signal: synthetic speech-like, 20 s");
            speechlike(20.0)
        }
    };
    sine_snr()?;
    packet_sizes(&signal)?;
    fec_table(&signal)?;
    whole_path(&signal)?;
    Ok(())
}

fn sine_snr() -> Result<()> {
    let mut tone = ToneSource::new(440.0, 0.5)?;
    let mut input = Vec::new();
    let mut f: Frame = [0.0; FRAME_SAMPLES];
    for _ in 0..100 {
        tone.next_frame(&mut f)?;
        input.extend_from_slice(&f);
    }
    println!("\n440 Hz sine at 0.5 peak, 2 s, SNR after alignment (first 100 ms skipped):");
    for bitrate in [16_000, 24_000, 32_000] {
        let mut enc = Encoder::new(EncoderConfig {
            bitrate,
            ..EncoderConfig::default()
        })?;
        let mut dec = Decoder::new()?;
        let mut out = Vec::new();
        for frame in input.chunks_exact(FRAME_SAMPLES) {
            out.extend(dec.decode_f32(&enc.encode_f32(frame)?)?);
        }
        let skip = 5 * FRAME_SAMPLES;
        let c = metrics::compare(&input[skip..], &out[skip..], 960).ok_or("silent")?;
        println!("  {:>2} kbit/s CBR: SNR {:.1} dB", bitrate / 1000, c.snr_db);
    }
    Ok(())
}

fn encode_all(signal: &[f32], config: EncoderConfig) -> Result<Vec<Vec<u8>>> {
    let mut enc = Encoder::new(config)?;
    let mut packets = Vec::new();
    for frame in signal.chunks_exact(FRAME_SAMPLES) {
        packets.push(enc.encode_f32(frame)?);
    }
    Ok(packets)
}

fn packet_sizes(signal: &[f32]) -> Result<()> {
    println!("\npacket sizes on the signal (bytes per 20 ms):");
    for cbr in [true, false] {
        let packets = encode_all(
            signal,
            EncoderConfig {
                cbr,
                ..EncoderConfig::default()
            },
        )?;
        let min = packets.iter().map(Vec::len).min().unwrap_or(0);
        let max = packets.iter().map(Vec::len).max().unwrap_or(0);
        let distinct: std::collections::BTreeSet<usize> = packets.iter().map(Vec::len).collect();
        println!(
            "  24 kbit/s {}: min {min}, max {max}, {} distinct sizes",
            if cbr { "CBR" } else { "VBR" },
            distinct.len()
        );
    }
    Ok(())
}

/// SNR over lost frames (every 7th) against a decoder that saw every packet.
fn loss_snr(packets: &[Vec<u8>], fec: bool) -> Result<f64> {
    let mut clean = Decoder::new()?;
    let mut lossy = Decoder::new()?;
    let (mut sig, mut noise) = (0.0f64, 0.0f64);
    for (i, p) in packets.iter().enumerate() {
        let reference = clean.decode_f32(p)?;
        match packets.get(i + 1) {
            Some(next) if i > 10 && i % 7 == 0 => {
                let got = if fec {
                    lossy.recover_fec_f32(next)?
                } else {
                    lossy.conceal_f32()?
                };
                for (r, g) in reference.iter().zip(&got) {
                    sig += f64::from(*r).powi(2);
                    noise += f64::from(r - g).powi(2);
                }
            }
            _ => {
                lossy.decode_f32(p)?;
            }
        }
    }
    Ok(10.0 * (sig / noise).log10())
}

fn fec_table(signal: &[f32]) -> Result<()> {
    println!("\nlost frames (every 7th), SNR against a lossless decode, FEC / PLC in dB:");
    println!("  bitrate \\ loss hint     0 %          5 %          10 %         20 %");
    for bitrate in [16_000, 20_000, 24_000, 32_000] {
        let mut row = format!("  {:>2} kbit/s       ", bitrate / 1000);
        for loss in [0u8, 5, 10, 20] {
            let config = EncoderConfig {
                bitrate,
                expected_loss_percent: loss,
                ..EncoderConfig::default()
            };
            let packets = encode_all(signal, config)?;
            row += &format!(
                "  {:>4.1} / {:>4.1}",
                loss_snr(&packets, true)?,
                loss_snr(&packets, false)?
            );
        }
        println!("{row}");
    }
    Ok(())
}

fn whole_path(signal: &[f32]) -> Result<()> {
    println!("\nwhole path (encoder, network, jitter buffer, decoder), 1 s segments:");
    let cases = [
        ("clean, 40 ms", Impairment::clean(40)),
        (
            "5% loss, 40 +/- 20 ms",
            Impairment {
                loss: 0.05,
                delay_ms: 40,
                jitter_ms: 20,
                seed: 42,
            },
        ),
        (
            "10% loss, 40 +/- 40 ms",
            Impairment {
                loss: 0.10,
                delay_ms: 40,
                jitter_ms: 40,
                seed: 43,
            },
        ),
    ];
    for (name, net) in cases {
        let out = run_call(
            signal,
            EncoderConfig::default(),
            JitterConfig::default(),
            net,
            0,
        )?;
        let (ncc, found) = segment_score(signal, &out.output, 300);
        let s = out.stats;
        println!(
            "  {name:<24} NCC {ncc:.3}, segments found {:.0}%, lost {} (FEC {}), late {}, \
             target {} ms, delay {} ms, {} packets ({} dropped by the network)",
            found * 100.0,
            s.lost,
            s.fec_recovered,
            s.late,
            s.target_delay_ms,
            s.current_delay_ms,
            out.packet_sizes.len(),
            out.dropped_by_network
        );
    }
    Ok(())
}
