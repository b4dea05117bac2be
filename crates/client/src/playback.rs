//! Speaker playback: a cpal output stream fed 20 ms at a time by the audio thread.
//!
//! The audio thread decodes one frame per tick from the jitter buffer, resamples it to the
//! device rate and pushes it into a wait-free ring buffer (`rtrb`); the device callback pulls
//! from the ring at the sound card's pace. The callback never locks, allocates or waits: an
//! empty ring plays silence (counted as an underrun once playout has begun), and a ring that
//! grows past a small bound (the card plays slower than our clock) drops the newest frame
//! (counted as an overrun) so the delay cannot creep up.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aparte_media::{FRAME_MS, SAMPLE_RATE};
use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{FromSample, Sample, SizedSample};

use crate::capture::on_stream_error;
use crate::devices::{self, Chosen, DeviceCounters, DeviceError, Direction};
use crate::resample::StreamResampler;

/// Playback queue capacity: a quarter second at the device rate.
const RING_SECONDS_DIV: u32 = 4;
/// Frames of decoded audio we allow queued beyond one device callback before dropping.
const MAX_QUEUED_FRAMES: usize = 3;

/// A sound card output that plays 20 ms frames of 48 kHz mono audio.
pub struct Speaker {
    /// Keeps the device running; dropping it stops playback.
    _stream: cpal::Stream,
    producer: rtrb::Producer<f32>,
    resampler: StreamResampler,
    /// Resampled samples of the current frame.
    staged: VecDeque<f32>,
    /// One 20 ms frame at the device rate.
    frame_len: usize,
    /// The largest callback the device has asked for, in frames (set by the callback).
    largest_callback: Arc<AtomicUsize>,
    counters: Arc<DeviceCounters>,
    failure: Arc<Mutex<Option<String>>>,
    name: String,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("device", &self.name)
            .finish()
    }
}

impl Speaker {
    /// Opens the default output device (`name` = None) or the named one and starts it (playing
    /// silence until the first frame arrives).
    pub fn open(name: Option<&str>, counters: Arc<DeviceCounters>) -> Result<Self, DeviceError> {
        let chosen = devices::choose(Direction::Output, name)?;
        let open_error = |cause: String| DeviceError::Open {
            direction: Direction::Output,
            name: chosen.name.clone(),
            cause,
            cards: devices::cards_note(),
        };
        let device_rate = chosen.config.sample_rate;
        let resampler = StreamResampler::new(SAMPLE_RATE, device_rate).map_err(open_error)?;
        let frame_len = (device_rate * FRAME_MS / 1000) as usize;
        let largest_callback = Arc::new(AtomicUsize::new(0));
        let failure = Arc::new(Mutex::new(None));
        let attempt = |config: cpal::StreamConfig| {
            let (producer, consumer) =
                rtrb::RingBuffer::new((device_rate / RING_SECONDS_DIV) as usize);
            let wiring = Wiring {
                consumer,
                state: PlayoutState::new(frame_len),
                counters: Arc::clone(&counters),
                largest: Arc::clone(&largest_callback),
                failure: Arc::clone(&failure),
            };
            build(&chosen, config, wiring).map(|stream| (stream, producer))
        };
        // A fixed ~10 ms period first; some drivers refuse it, then their default.
        let (stream, producer) = attempt(chosen.config)
            .or_else(|_| attempt(chosen.fallback))
            .map_err(open_error)?;
        stream
            .play()
            .map_err(|e| open_error(format!("cannot start playback ({e})")))?;
        Ok(Self {
            _stream: stream,
            producer,
            resampler,
            staged: VecDeque::new(),
            frame_len,
            largest_callback,
            counters,
            failure,
            name: chosen.name,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues one frame of 48 kHz mono audio for the device. Never waits.
    pub fn write_frame(&mut self, samples: &[f32]) -> Result<(), String> {
        if let Some(reason) = self.failure.lock().ok().and_then(|f| f.clone()) {
            return Err(format!("speaker \"{}\" stopped: {reason}", self.name));
        }
        self.resampler.process(samples, &mut self.staged)?;
        let queued = self.producer.buffer().capacity() - self.producer.slots();
        let limit =
            MAX_QUEUED_FRAMES * self.frame_len + self.largest_callback.load(Ordering::Relaxed);
        if queued + self.staged.len() > limit {
            DeviceCounters::add(
                &self.counters.playout_overrun_samples,
                self.staged.len() as u64,
            );
            self.staged.clear();
            return Ok(());
        }
        let (a, b) = self.staged.as_slices();
        let mut dropped = 0;
        for &s in a.iter().chain(b) {
            if self.producer.push(s).is_err() {
                dropped += 1;
            }
        }
        self.staged.clear();
        if dropped > 0 {
            DeviceCounters::add(&self.counters.playout_overrun_samples, dropped);
        }
        Ok(())
    }
}

/// The playback callback's memory between calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlayoutState {
    /// Whether playout has begun (before that, silence is not an underrun).
    started: bool,
    /// One 20 ms frame at the device rate: the cushion kept on top of one callback.
    frame_len: usize,
}

impl PlayoutState {
    pub(crate) fn new(frame_len: usize) -> Self {
        Self {
            started: false,
            frame_len,
        }
    }
}

/// What the playback callback owns.
struct Wiring {
    consumer: rtrb::Consumer<f32>,
    state: PlayoutState,
    counters: Arc<DeviceCounters>,
    largest: Arc<AtomicUsize>,
    failure: Arc<Mutex<Option<String>>>,
}

fn build(
    chosen: &Chosen,
    config: cpal::StreamConfig,
    wiring: Wiring,
) -> Result<cpal::Stream, String> {
    use cpal::SampleFormat as F;
    match chosen.format {
        F::F32 => build_typed::<f32>(chosen, config, wiring),
        F::F64 => build_typed::<f64>(chosen, config, wiring),
        F::I8 => build_typed::<i8>(chosen, config, wiring),
        F::I16 => build_typed::<i16>(chosen, config, wiring),
        F::I32 => build_typed::<i32>(chosen, config, wiring),
        F::U8 => build_typed::<u8>(chosen, config, wiring),
        F::U16 => build_typed::<u16>(chosen, config, wiring),
        F::U32 => build_typed::<u32>(chosen, config, wiring),
        other => Err(format!("its sample format {other} is not supported")),
    }
}

fn build_typed<T>(
    chosen: &Chosen,
    config: cpal::StreamConfig,
    wiring: Wiring,
) -> Result<cpal::Stream, String>
where
    T: SizedSample + FromSample<f32>,
{
    let Wiring {
        mut consumer,
        mut state,
        counters,
        largest,
        failure,
    } = wiring;
    let channels = usize::from(config.channels);
    let error_counters = Arc::clone(&counters);
    chosen
        .device
        .build_output_stream::<T, _, _>(
            config,
            move |out: &mut [T], _: &cpal::OutputCallbackInfo| {
                let frames = fill(
                    out,
                    channels,
                    &mut consumer,
                    &mut state,
                    &counters.playout_underrun_samples,
                );
                largest.fetch_max(frames, Ordering::Relaxed);
            },
            move |e| on_stream_error(&e, &error_counters, &failure),
            None,
        )
        .map_err(|e| e.to_string())
}

/// The playback callback's work: fill interleaved `out` with queued mono samples on every
/// channel. Plays silence until a callback's worth plus one frame is queued, then counts every
/// missing sample in `underrun` (and waits for the cushion again). Returns the frame count.
pub(crate) fn fill<T>(
    out: &mut [T],
    channels: usize,
    consumer: &mut rtrb::Consumer<f32>,
    state: &mut PlayoutState,
    underrun: &AtomicU64,
) -> usize
where
    T: Sample + FromSample<f32>,
{
    let channels = channels.max(1);
    let frames = out.len().div_ceil(channels);
    if !state.started {
        if consumer.slots() < frames + state.frame_len {
            out.fill(T::EQUILIBRIUM);
            return frames;
        }
        state.started = true;
    }
    let mut missing = 0u64;
    for frame in out.chunks_mut(channels) {
        let sample = consumer.pop().unwrap_or_else(|_| {
            missing += 1;
            0.0
        });
        frame.fill(sample.to_sample::<T>());
    }
    if missing > 0 {
        DeviceCounters::add(underrun, missing);
        state.started = false;
    }
    frames
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn callback_waits_for_cushion_then_plays_on_every_channel_and_counts_underruns() {
        let (mut producer, mut consumer) = rtrb::RingBuffer::new(16);
        let underrun = AtomicU64::new(0);
        let mut state = PlayoutState::new(2);
        let mut out = [7i16; 6]; // three stereo frames

        // Not enough queued for a callback plus the cushion: silence, not an underrun.
        for s in [0.5, 0.5, 0.5, 0.5] {
            producer.push(s).unwrap();
        }
        assert_eq!(fill(&mut out, 2, &mut consumer, &mut state, &underrun), 3);
        assert_eq!(out, [0; 6]);
        assert_eq!(underrun.load(Ordering::Relaxed), 0);

        // Cushion reached: plays three frames, duplicated to both channels.
        producer.push(-1.0).unwrap();
        fill(&mut out, 2, &mut consumer, &mut state, &underrun);
        assert_eq!(out[0], out[1]);
        assert!((f32::from(out[0]) - 16_384.0).abs() < 2.0, "{}", out[0]);
        assert_eq!(consumer.slots(), 2);

        // Two samples left for three frames: one frame is padded and counted.
        fill(&mut out, 2, &mut consumer, &mut state, &underrun);
        assert_eq!(out[2], i16::MIN);
        assert_eq!(&out[4..], &[0, 0]);
        assert_eq!(underrun.load(Ordering::Relaxed), 1);
    }
}
