//! One-way pipeline latency, capture to playout, on loopback.
//!
//! Two peers in one process, each with the client's real audio thread
//! (`aparte_client::audio::AudioPipeline`: 20 ms ticks on its own clock, Opus encode, jitter
//! buffer at its default settings, decode), joined by a real WebRTC connection over loopback
//! UDP (`aparte_client::transport`, ICE + DTLS-SRTP) with real e2ee sessions
//! (`aparte_session::CallSecurity`). Between them runs the same glue `call.rs` runs: an
//! encoded frame is protected and sent; a received payload is unprotected and handed to the
//! audio thread with its arrival time. Only the source and the sink are the benchmark's own.
//!
//! Each side sends a tone burst (2 kHz, 0.5 full scale, one frame long, starting on the
//! frame's first sample) every 400 ms, both ways at once. The source notes when the audio
//! thread took each frame from it (the capture instant); the sink notes when the audio
//! thread handed each decoded frame to it and finds the burst's first sample above 0.1 full
//! scale. One-way latency = (instant the frame holding the onset was handed to the sink +
//! the onset's position in that frame) − capture instant of the burst: what a WAV output
//! records, i.e. everything up to the sound card's queue. It includes Opus's look-ahead
//! (measured here by encoding and decoding the burst offline) and the jitter buffer's delay;
//! it excludes what a real microphone and speaker add (a frame of accumulation and their
//! buffers; see docs/BENCHMARKS.md).
//!
//! For the breakdown, every frame is also timestamped when sent and when its RTP packet
//! arrives (frames are matched by order: nothing is lost on loopback; the count is checked).
//!
//! The receiver's 20 ms tick runs on its own clock, so how long a packet waits for the next
//! tick depends on the phase between the two audio threads: each call starts Bob's audio
//! thread a given offset after Alice's, and the run sweeps offsets (default 0, 4, 8, 12 and
//! 16 ms: Alice → Bob sees those phases, Bob → Alice their complements).
//!
//! `cargo run --release -p aparte-e2e-tests --example latency -- [--seconds N]
//! [--offsets MS,MS,...] [--json]` (the JSON report is the last line of stdout; one line per
//! call goes to stderr).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aparte_client::audio::{AudioError, AudioPipeline, AudioSink};
use aparte_client::captions::AudioTaps;
use aparte_client::devices::DeviceCounters;
use aparte_client::transport::TransportConfig;
use aparte_e2e_tests::call::{Call, CallPeer};
use aparte_media::codec::{Decoder, Encoder, EncoderConfig};
use aparte_media::jitter::{JitterConfig, JitterStats};
use aparte_media::source::{AudioSource, Frame, Produced, SourceError};
use aparte_media::{FRAME_SAMPLES, SAMPLE_RATE};
use tokio::sync::watch;

/// Frames between bursts (400 ms: longer than any plausible latency, so matching is unique).
const BURST_EVERY: u64 = 20;
const BURST_HZ: f32 = 2000.0;
const BURST_AMPLITUDE: f32 = 0.5;
/// An onset is the first sample above this after at least `QUIET_SAMPLES` below it.
const ONSET_THRESHOLD: f32 = 0.1;
const QUIET_SAMPLES: usize = 48 * 100;

fn burst_frame(frame: &mut Frame) {
    for (i, s) in frame.iter_mut().enumerate() {
        let t = i as f32 / SAMPLE_RATE as f32;
        // Cosine phase: the burst is at full scale from its first sample.
        *s = BURST_AMPLITUDE * (2.0 * std::f32::consts::PI * BURST_HZ * t).cos();
    }
}

/// Silence with a burst every `BURST_EVERY` frames; notes when each frame was taken.
struct BurstSource {
    frames: u64,
    captured: Arc<Mutex<Vec<Instant>>>,
    bursts: Arc<Mutex<Vec<Instant>>>,
}

impl AudioSource for BurstSource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Produced, SourceError> {
        let now = Instant::now();
        if self.frames % BURST_EVERY == BURST_EVERY / 2 {
            burst_frame(frame);
            self.bursts.lock().unwrap().push(now);
        } else {
            frame.fill(0.0);
        }
        self.frames += 1;
        self.captured.lock().unwrap().push(now);
        Ok(Produced::Frame)
    }
}

/// Finds burst onsets in what is played and notes when each was handed over.
struct OnsetSink {
    quiet: usize,
    onsets: Arc<Mutex<Vec<Instant>>>,
}

impl AudioSink for OnsetSink {
    fn write_frame(&mut self, samples: &[f32]) -> Result<(), AudioError> {
        let now = Instant::now();
        for (i, s) in samples.iter().enumerate() {
            if s.abs() >= ONSET_THRESHOLD {
                if self.quiet >= QUIET_SAMPLES {
                    let offset = Duration::from_secs_f64(i as f64 / f64::from(SAMPLE_RATE));
                    self.onsets.lock().unwrap().push(now + offset);
                }
                self.quiet = 0;
            } else {
                self.quiet += 1;
            }
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), AudioError> {
        Ok(())
    }
}

/// The timestamps of one stream (one direction), from both ends.
#[derive(Default, Clone)]
struct Marks {
    captured: Arc<Mutex<Vec<Instant>>>,
    bursts: Arc<Mutex<Vec<Instant>>>,
    sent: Arc<Mutex<Vec<Instant>>>,
    arrived: Arc<Mutex<Vec<Instant>>>,
    onsets: Arc<Mutex<Vec<Instant>>>,
}

/// One peer's audio thread: it captures stream `sends` and plays stream `plays`.
fn start_audio(sends: &Marks, plays: &Marks) -> AudioPipeline {
    let source = BurstSource {
        frames: 0,
        captured: Arc::clone(&sends.captured),
        bursts: Arc::clone(&sends.bursts),
    };
    let sink = OnsetSink {
        quiet: QUIET_SAMPLES,
        onsets: Arc::clone(&plays.onsets),
    };
    AudioPipeline::start_custom(
        Box::new(source),
        Some(Box::new(sink)),
        false,
        AudioTaps::default(),
        Arc::new(DeviceCounters::default()),
    )
    .expect("audio pipeline")
}

/// The glue `call.rs` runs between the audio thread and the transport, for one peer.
/// `sends`/`receives`: the streams this peer sends and receives.
async fn pump(
    mut peer: CallPeer,
    mut audio: AudioPipeline,
    sends: Marks,
    receives: Marks,
    mut stop: watch::Receiver<bool>,
) -> (CallPeer, AudioPipeline) {
    let epoch = Instant::now();
    loop {
        tokio::select! {
            Some(opus) = audio.outgoing.recv() => {
                peer.send_protected(&opus).await;
                sends.sent.lock().unwrap().push(Instant::now());
            }
            Some(arrival) = peer.media.recv() => {
                receives.arrived.lock().unwrap().push(Instant::now());
                let now_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                if let Ok(frame) = peer.security.unprotect_media_frame(&arrival.payload, now_ms) {
                    let _ = audio.incoming.try_send((frame.index, audio.now_ms(), frame.payload));
                }
            }
            _ = stop.changed() => break,
        }
    }
    (peer, audio)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn since(later: Instant, earlier: Instant) -> f64 {
    ms(later.saturating_duration_since(earlier))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut values: Vec<f64>) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    serde_json::json!({
        "count": values.len(),
        "min_ms": round(values.first().copied().unwrap_or(f64::NAN)),
        "p50_ms": round(percentile(&values, 50.0)),
        "p95_ms": round(percentile(&values, 95.0)),
        "max_ms": round(values.last().copied().unwrap_or(f64::NAN)),
    })
}

/// Pairs each onset with the last burst captured before it (bursts are 400 ms apart).
fn one_way(bursts: &[Instant], onsets: &[Instant]) -> (Vec<f64>, usize) {
    let mut latencies = Vec::new();
    let mut unmatched = 0;
    for &onset in onsets {
        match bursts.iter().rev().find(|&&b| b <= onset) {
            Some(&b) if since(onset, b) < (BURST_EVERY * 20) as f64 => {
                latencies.push(since(onset, b))
            }
            _ => unmatched += 1,
        }
    }
    (latencies, unmatched)
}

/// Opus's own delay: where the burst's onset comes out of an encoder → decoder pair.
fn codec_delay_ms() -> f64 {
    let mut encoder = Encoder::new(EncoderConfig::default()).expect("encoder");
    let mut decoder = Decoder::new().expect("decoder");
    let mut out = Vec::new();
    for k in 0..6 {
        let mut frame: Frame = [0.0; FRAME_SAMPLES];
        if k == 3 {
            burst_frame(&mut frame);
        }
        let packet = encoder.encode_f32(&frame).expect("encode");
        out.extend(decoder.decode_f32(&packet).expect("decode"));
    }
    let onset = out
        .iter()
        .position(|s| s.abs() >= ONSET_THRESHOLD)
        .expect("the burst survives the codec");
    (onset as f64 - (3 * FRAME_SAMPLES) as f64) * 1000.0 / f64::from(SAMPLE_RATE)
}

fn direction(name: &str, m: &Marks, jitter: JitterStats) -> (serde_json::Value, Vec<f64>) {
    let bursts = m.bursts.lock().unwrap().clone();
    let onsets = m.onsets.lock().unwrap().clone();
    let (latencies, unmatched) = one_way(&bursts, &onsets);
    let captured = m.captured.lock().unwrap().clone();
    let sent = m.sent.lock().unwrap().clone();
    let arrived = m.arrived.lock().unwrap().clone();
    let n = captured.len().min(sent.len()).min(arrived.len());
    let capture_to_send: Vec<f64> = (0..n).map(|i| since(sent[i], captured[i])).collect();
    let send_to_arrival: Vec<f64> = (0..n).map(|i| since(arrived[i], sent[i])).collect();
    let report = serde_json::json!({
        "direction": name,
        "bursts_sent": bursts.len(),
        "bursts_played": latencies.len(),
        "onsets_unmatched": unmatched,
        "frames_captured": captured.len(),
        "frames_sent": sent.len(),
        "packets_arrived": arrived.len(),
        "one_way": summary(latencies.clone()),
        "capture_to_send": summary(capture_to_send),
        "send_to_arrival": summary(send_to_arrival),
        "jitter_target_delay_ms_at_end": jitter.target_delay_ms,
        "jitter_playout_delay_ms_at_end": jitter.current_delay_ms,
        "jitter_lost": jitter.lost,
        "jitter_late": jitter.late,
        "jitter_dropped_for_latency": jitter.dropped_for_latency,
    });
    (report, latencies)
}

/// One call of `seconds`, Bob's audio thread started `offset_ms` after Alice's (so his
/// 20 ms ticks lag hers by that much, and hers lag his by 20 − that). Returns the two
/// directions' reports and their one-way latencies.
async fn one_call(seconds: u64, offset_ms: u64) -> (serde_json::Value, Vec<f64>) {
    let (a_marks, b_marks) = (Marks::default(), Marks::default());
    // Audio first, as `run_call` does; nothing is sent before `sending` is set.
    let a_audio = start_audio(&a_marks, &b_marks);
    tokio::time::sleep(Duration::from_millis(offset_ms)).await;
    let b_audio = start_audio(&b_marks, &a_marks);
    let measured_offset = ms(b_audio.started.saturating_duration_since(a_audio.started));
    let config = TransportConfig {
        loopback_only: true,
        turn_tls: None,
        ..TransportConfig::default()
    };
    let Call { alice, bob, .. } = Call::connect(&config, &config).await;
    let (stop_tx, stop) = watch::channel(false);
    a_audio.sending.store(true, Ordering::SeqCst);
    b_audio.sending.store(true, Ordering::SeqCst);
    let a = tokio::spawn(pump(
        alice,
        a_audio,
        a_marks.clone(),
        b_marks.clone(),
        stop.clone(),
    ));
    let b = tokio::spawn(pump(bob, b_audio, b_marks.clone(), a_marks.clone(), stop));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop_tx.send(true).expect("stop the pumps");
    let (alice, a_audio) = a.await.expect("alice's pump");
    let (bob, b_audio) = b.await.expect("bob's pump");
    let a_stats = a_audio.stop().expect("alice's audio");
    let b_stats = b_audio.stop().expect("bob's audio");
    let _ = alice.transport.close().await;
    let _ = bob.transport.close().await;
    // Alice's bursts are played by Bob's audio thread, and the other way round.
    let (ab, mut all) = direction("alice_to_bob", &a_marks, b_stats.jitter);
    let (ba, more) = direction("bob_to_alice", &b_marks, a_stats.jitter);
    all.extend(more);
    let report = serde_json::json!({
        "bob_tick_offset_ms": offset_ms,
        "bob_tick_offset_ms_measured": (measured_offset * 10.0).round() / 10.0,
        "alice_to_bob": ab,
        "bob_to_alice": ba,
    });
    (report, all)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seconds: u64 = value("--seconds").map_or(20, |s| s.parse().expect("--seconds N"));
    // The receiver's tick phase relative to the sender's decides how long a packet waits
    // for the next tick: sweep it.
    let offsets: Vec<u64> = value("--offsets").map_or(vec![0, 4, 8, 12, 16], |s| {
        s.split(',')
            .map(|o| o.trim().parse().expect("--offsets MS,MS,..."))
            .collect()
    });
    let mut calls = Vec::new();
    let mut all = Vec::new();
    for &offset in &offsets {
        let (report, latencies) = one_call(seconds, offset).await;
        eprintln!("{report}");
        calls.push(report);
        all.extend(latencies);
    }
    let report = serde_json::json!({
        "seconds_per_call": seconds,
        "jitter_floor_ms": JitterConfig::default().min_delay_ms,
        "jitter_ceiling_ms": JitterConfig::default().max_delay_ms,
        "opus_codec_delay_ms": (codec_delay_ms() * 100.0).round() / 100.0,
        "one_way_all": summary(all),
        "calls": calls,
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialize")
        );
    }
}
