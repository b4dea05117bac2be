//! A simulated one-way call: encoder, an impaired network, jitter buffer, decoder.
//!
//! Shared by `tests/pipeline.rs` and `examples/media_figures.rs`. Everything is driven by a
//! simulated clock and a seeded random generator, so a run reproduces exactly.

use aparte_media::codec::{Decoder, Encoder, EncoderConfig};
use aparte_media::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use aparte_media::FRAME_SAMPLES;
use rand::{Rng, SeedableRng};

/// How the simulated network treats packets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Impairment {
    /// Probability that a packet is lost, 0.0..=1.0.
    pub(crate) loss: f64,
    /// Fixed one-way delay, in ms.
    pub(crate) delay_ms: u64,
    /// Extra delay, uniform in -jitter_ms..=jitter_ms (never before the send time).
    pub(crate) jitter_ms: u64,
    /// Seed of the random generator.
    pub(crate) seed: u64,
}

impl Impairment {
    /// A perfect network with a fixed delay.
    pub(crate) fn clean(delay_ms: u64) -> Self {
        Self {
            loss: 0.0,
            delay_ms,
            jitter_ms: 0,
            seed: 0,
        }
    }
}

/// The outcome of a simulated call.
#[derive(Debug)]
pub(crate) struct CallOutcome {
    /// What the receiver played, one frame per 20 ms tick (silence while waiting).
    pub(crate) output: Vec<f32>,
    /// The jitter buffer's counters at the end.
    pub(crate) stats: JitterStats,
    /// Packets the network dropped.
    pub(crate) dropped_by_network: u64,
    /// The size of every packet sent.
    pub(crate) packet_sizes: Vec<usize>,
}

/// Sends `input` (48 kHz mono) through encoder, network, jitter buffer and decoder.
pub(crate) fn run_call(
    input: &[f32],
    encoder: EncoderConfig,
    jitter: JitterConfig,
    net: Impairment,
    first_seq: u16,
) -> Result<CallOutcome, Box<dyn std::error::Error>> {
    let mut enc = Encoder::new(encoder)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(net.seed);
    let mut arrivals: Vec<(u64, u16, Vec<u8>)> = Vec::new();
    let mut packet_sizes = Vec::new();
    let mut dropped_by_network = 0;
    // Five frames of silence at the end flush the encoder's lookahead.
    let padded_len = input.len().div_ceil(FRAME_SAMPLES) * FRAME_SAMPLES + 5 * FRAME_SAMPLES;
    let mut padded = input.to_vec();
    padded.resize(padded_len, 0.0);
    for (i, frame) in padded.chunks(FRAME_SAMPLES).enumerate() {
        let mut f = frame.to_vec();
        f.resize(FRAME_SAMPLES, 0.0);
        let packet = enc.encode_f32(&f)?;
        packet_sizes.push(packet.len());
        let sent = i as u64 * 20;
        if rng.random_bool(net.loss.clamp(0.0, 1.0)) {
            dropped_by_network += 1;
            continue;
        }
        let j = if net.jitter_ms == 0 {
            0
        } else {
            rng.random_range(-(net.jitter_ms as i64)..=net.jitter_ms as i64)
        };
        let arrival = (sent + net.delay_ms).saturating_add_signed(j).max(sent);
        arrivals.push((arrival, first_seq.wrapping_add(i as u16), packet));
    }
    arrivals.sort_by_key(|a| a.0);

    let mut jb = JitterBuffer::new(jitter)?;
    let mut dec = Decoder::new()?;
    let mut output = Vec::with_capacity(input.len() + 48_000);
    let mut pending = arrivals.into_iter().peekable();
    // The playout clock ticks at an arbitrary phase relative to the sender.
    let mut now = 7u64;
    let end = input.len() as u64 / 48 + net.delay_ms + net.jitter_ms + 2000;
    while now < end {
        while let Some((t, _, _)) = pending.peek() {
            if *t > now {
                break;
            }
            if let Some((t, seq, p)) = pending.next() {
                jb.push(seq, t, p);
            }
        }
        let frame = match jb.pop(now) {
            Playout::Packet(p) => dec.decode_f32(&p).or_else(|_| dec.conceal_f32())?,
            Playout::FecFrom(p) => dec.recover_fec_f32(&p).or_else(|_| dec.conceal_f32())?,
            Playout::Conceal => dec.conceal_f32()?,
            Playout::Wait => vec![0.0; FRAME_SAMPLES],
        };
        output.extend_from_slice(&frame);
        if pending.peek().is_none() && jb.is_empty() && jb.stats().played > 0 {
            break;
        }
        now += 20;
    }
    Ok(CallOutcome {
        output,
        stats: jb.stats(),
        dropped_by_network,
        packet_sizes,
    })
}

/// A speech-like test signal: a harmonic series whose pitch glides between 110 and 230 Hz
/// under a 4 Hz syllable-rate envelope, with a 150 ms pause every second.
pub(crate) fn speechlike(seconds: f64) -> Vec<f32> {
    let sr = 48_000.0;
    let n = (seconds * sr) as usize;
    let mut phase = 0.0f64;
    (0..n)
        .map(|i| {
            let t = i as f64 / sr;
            let f0 = 170.0 + 60.0 * (std::f64::consts::TAU * 1.3 * t).sin();
            phase += std::f64::consts::TAU * f0 / sr;
            let env = 0.5 + 0.5 * (std::f64::consts::TAU * 4.0 * t).sin().abs();
            let gate = if t.fract() < 0.85 { 1.0 } else { 0.0 };
            let mut s = 0.0;
            for h in 1..=12 {
                s += (h as f64 * phase).sin() / h as f64;
            }
            (0.25 * env * gate * s) as f32
        })
        .collect()
}

/// Mean NCC over 1 s segments aligned separately within ±`max_lag_ms`, and the fraction of
/// non-silent segments found.
pub(crate) fn segment_score(reference: &[f32], output: &[f32], max_lag_ms: usize) -> (f64, f64) {
    let segs = aparte_media::metrics::align_segments(reference, output, 48_000, max_lag_ms * 48);
    let found: Vec<f64> = segs.iter().flatten().map(|a| a.ncc).collect();
    let mean = if found.is_empty() {
        0.0
    } else {
        found.iter().sum::<f64>() / found.len() as f64
    };
    let audible = reference
        .chunks(48_000)
        .filter(|c| aparte_media::metrics::rms(c) > 1e-4)
        .count();
    (mean, found.len() as f64 / audible.max(1) as f64)
}
