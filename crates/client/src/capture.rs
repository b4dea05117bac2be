//! Microphone capture: a cpal input stream behind the `AudioSource` trait.
//!
//! The device callback does the least it can: it mixes each frame down to mono and pushes it
//! into a wait-free ring buffer (`rtrb`). It never locks, allocates or waits; when the ring is
//! full the samples are dropped and counted. The audio thread pulls 20 ms frames from
//! [`MicSource`], which drains the ring, resamples to 48 kHz and keeps a small cushion so the
//! device's callback rhythm and our 20 ms clock can differ without gaps.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aparte_media::source::{AudioSource, Frame, Produced, SourceError};
use aparte_media::{FRAME_SAMPLES, SAMPLE_RATE};
use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{FromSample, Sample, SizedSample};

use crate::devices::{self, Chosen, DeviceCounters, DeviceError, Direction};
use crate::resample::StreamResampler;

/// Capture queue length: half a second at the device rate, far more than the audio thread
/// should ever fall behind.
const RING_SECONDS_DIV: u32 = 2;
/// Queued 48 kHz audio beyond the cushion that we tolerate before trimming the oldest (a stall
/// or clock drift would otherwise turn into ever-growing delay).
const MAX_EXTRA: usize = 2 * FRAME_SAMPLES;

/// Live microphone audio as 20 ms frames of 48 kHz mono.
pub struct MicSource {
    /// Keeps the device running; dropping it stops capture.
    _stream: cpal::Stream,
    consumer: rtrb::Consumer<f32>,
    resampler: StreamResampler,
    device_rate: u32,
    /// Samples drained from the ring, at the device rate.
    scratch: Vec<f32>,
    /// Resampled audio ready to send.
    ready: VecDeque<f32>,
    /// Whether the cushion has been built (until then frames are silence, not underruns).
    primed: bool,
    /// The largest callback the device has delivered, in device samples (set by the callback).
    largest_callback: Arc<AtomicUsize>,
    counters: Arc<DeviceCounters>,
    /// Set by the error callback when the device went away.
    failure: Arc<Mutex<Option<String>>>,
    name: String,
}

impl std::fmt::Debug for MicSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicSource")
            .field("device", &self.name)
            .field("device_rate", &self.device_rate)
            .finish()
    }
}

impl MicSource {
    /// Opens the default input device (`name` = None) or the named one and starts capturing.
    pub fn open(name: Option<&str>, counters: Arc<DeviceCounters>) -> Result<Self, DeviceError> {
        let chosen = devices::choose(Direction::Input, name)?;
        let open_error = |cause: String| DeviceError::Open {
            direction: Direction::Input,
            name: chosen.name.clone(),
            cause,
            cards: devices::cards_note(),
        };
        let device_rate = chosen.config.sample_rate;
        let resampler = StreamResampler::new(device_rate, SAMPLE_RATE).map_err(open_error)?;
        let largest_callback = Arc::new(AtomicUsize::new(0));
        let failure = Arc::new(Mutex::new(None));
        let attempt = |config: cpal::StreamConfig| {
            let (producer, consumer) =
                rtrb::RingBuffer::new((device_rate / RING_SECONDS_DIV) as usize);
            let wiring = Wiring {
                producer,
                counters: Arc::clone(&counters),
                largest: Arc::clone(&largest_callback),
                failure: Arc::clone(&failure),
            };
            build(&chosen, config, wiring).map(|stream| (stream, consumer))
        };
        // A fixed ~10 ms period first; some drivers refuse it, then their default.
        let (stream, consumer) = attempt(chosen.config)
            .or_else(|_| attempt(chosen.fallback))
            .map_err(open_error)?;
        stream
            .play()
            .map_err(|e| open_error(format!("cannot start capture ({e})")))?;
        Ok(Self {
            _stream: stream,
            consumer,
            resampler,
            device_rate,
            scratch: Vec::new(),
            ready: VecDeque::new(),
            primed: false,
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

    /// 48 kHz samples to hold back so one late callback does not leave a gap: a frame plus the
    /// largest callback seen.
    fn cushion(&self) -> usize {
        let largest = self.largest_callback.load(Ordering::Relaxed) as u64;
        let largest_48k = largest * u64::from(SAMPLE_RATE) / u64::from(self.device_rate.max(1));
        FRAME_SAMPLES + usize::try_from(largest_48k).unwrap_or(usize::MAX / 2)
    }
}

impl AudioSource for MicSource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Produced, SourceError> {
        if let Some(reason) = self.failure.lock().ok().and_then(|f| f.clone()) {
            return Err(SourceError::Device(format!(
                "microphone \"{}\" stopped: {reason}",
                self.name
            )));
        }
        let available = self.consumer.slots();
        if let Ok(chunk) = self.consumer.read_chunk(available) {
            let (a, b) = chunk.as_slices();
            self.scratch.extend_from_slice(a);
            self.scratch.extend_from_slice(b);
            chunk.commit_all();
        }
        let result = self.resampler.process(&self.scratch, &mut self.ready);
        self.scratch.clear();
        result.map_err(SourceError::Device)?;
        let cushion = self.cushion();
        take_frame(
            &mut self.ready,
            &mut self.primed,
            cushion,
            self.device_rate,
            &self.counters,
            frame,
        );
        Ok(Produced::Frame)
    }
}

/// Takes one frame from the resampled queue, managing the cushion: silence until it is built,
/// trimming of a backlog, and zero-padding (counted) when the microphone fell short.
fn take_frame(
    ready: &mut VecDeque<f32>,
    primed: &mut bool,
    cushion: usize,
    device_rate: u32,
    counters: &DeviceCounters,
    frame: &mut Frame,
) {
    if !*primed {
        if ready.len() < cushion {
            frame.fill(0.0);
            return;
        }
        *primed = true;
    }
    if ready.len() > cushion + MAX_EXTRA {
        let extra = ready.len() - cushion;
        ready.drain(..extra);
        let at_device_rate = extra as u64 * u64::from(device_rate) / u64::from(SAMPLE_RATE);
        DeviceCounters::add(&counters.capture_overrun_samples, at_device_rate);
    }
    let have = ready.len().min(FRAME_SAMPLES);
    for (out, s) in frame.iter_mut().zip(ready.drain(..have)) {
        *out = s;
    }
    if have < FRAME_SAMPLES {
        frame[have..].fill(0.0);
        DeviceCounters::add(&counters.capture_underrun_frames, 1);
        // Rebuild the cushion rather than fall short on every following tick.
        *primed = false;
    }
}

/// What the capture callback owns.
struct Wiring {
    producer: rtrb::Producer<f32>,
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
    T: SizedSample,
    f32: FromSample<T>,
{
    let Wiring {
        mut producer,
        counters,
        largest,
        failure,
    } = wiring;
    let channels = usize::from(config.channels);
    let error_counters = Arc::clone(&counters);
    chosen
        .device
        .build_input_stream::<T, _, _>(
            config,
            move |data: &[T], _: &cpal::InputCallbackInfo| {
                let frames = push_mono(
                    data,
                    channels,
                    &mut producer,
                    &counters.capture_overrun_samples,
                );
                largest.fetch_max(frames, Ordering::Relaxed);
            },
            move |e| on_stream_error(&e, &error_counters, &failure),
            None,
        )
        .map_err(|e| e.to_string())
}

/// The error callback shared by capture and playback: count, and remember a fatal error for
/// the audio thread to report. `try_lock` because a callback must never wait.
pub(crate) fn on_stream_error(
    e: &cpal::Error,
    counters: &DeviceCounters,
    failure: &Mutex<Option<String>>,
) {
    if e.kind() == cpal::ErrorKind::Xrun {
        DeviceCounters::add(&counters.driver_xruns, 1);
        return;
    }
    DeviceCounters::add(&counters.stream_errors, 1);
    if e.kind() == cpal::ErrorKind::DeviceNotAvailable {
        if let Ok(mut slot) = failure.try_lock() {
            slot.get_or_insert_with(|| e.to_string());
        }
    }
}

/// The capture callback's work: mix interleaved `data` down to mono and queue it. Returns the
/// number of frames in `data`. Samples that do not fit are dropped and counted in `overrun`.
pub(crate) fn push_mono<T>(
    data: &[T],
    channels: usize,
    producer: &mut rtrb::Producer<f32>,
    overrun: &AtomicU64,
) -> usize
where
    T: Sample,
    f32: FromSample<T>,
{
    let channels = channels.max(1);
    let mut frames = 0;
    let mut dropped = 0u64;
    for frame in data.chunks(channels) {
        frames += 1;
        let sum: f32 = frame.iter().map(|s| s.to_sample::<f32>()).sum();
        if producer.push(sum / frame.len() as f32).is_err() {
            dropped += 1;
        }
    }
    if dropped > 0 {
        DeviceCounters::add(overrun, dropped);
    }
    frames
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn callback_downmixes_converts_and_counts_overruns() {
        let (mut producer, mut consumer) = rtrb::RingBuffer::new(3);
        let overrun = AtomicU64::new(0);
        // Stereo i16: (max, 0) → 0.5, (min, min) → -1.0, then two frames that do not fit.
        let data: [i16; 8] = [i16::MAX, 0, i16::MIN, i16::MIN, 0, 0, 0, 0];
        assert_eq!(push_mono(&data, 2, &mut producer, &overrun), 4);
        let first = consumer.pop().unwrap();
        assert!((first - 0.5).abs() < 1e-3, "{first}");
        assert_eq!(consumer.pop().unwrap(), -1.0);
        assert_eq!(consumer.pop().unwrap(), 0.0);
        assert!(consumer.pop().is_err());
        assert_eq!(overrun.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn frames_wait_for_the_cushion_then_trim_backlog_and_count_underruns() {
        let counters = DeviceCounters::default();
        let mut ready: VecDeque<f32> = VecDeque::new();
        let mut primed = false;
        let mut frame = [9.0; FRAME_SAMPLES];
        let cushion = 2 * FRAME_SAMPLES;

        // Not primed: silence, nothing counted, nothing consumed.
        ready.extend(std::iter::repeat_n(0.5, FRAME_SAMPLES));
        take_frame(
            &mut ready,
            &mut primed,
            cushion,
            48_000,
            &counters,
            &mut frame,
        );
        assert!(frame.iter().all(|&s| s == 0.0));
        assert_eq!(ready.len(), FRAME_SAMPLES);
        assert_eq!(counters.snapshot().capture_underrun_frames, 0);

        // A backlog beyond cushion + 2 frames is trimmed to the cushion (oldest dropped).
        ready.extend(std::iter::repeat_n(0.25, 5 * FRAME_SAMPLES));
        take_frame(
            &mut ready,
            &mut primed,
            cushion,
            48_000,
            &counters,
            &mut frame,
        );
        assert!(primed);
        assert!(frame.iter().all(|&s| s == 0.25));
        assert_eq!(ready.len(), FRAME_SAMPLES);
        assert_eq!(
            counters.snapshot().capture_overrun_samples,
            4 * FRAME_SAMPLES as u64
        );

        // The microphone falls short: the rest is padded and counted, and the cushion rebuilds.
        take_frame(
            &mut ready,
            &mut primed,
            cushion,
            48_000,
            &counters,
            &mut frame,
        );
        ready.push_back(0.75);
        take_frame(
            &mut ready,
            &mut primed,
            cushion,
            48_000,
            &counters,
            &mut frame,
        );
        assert_eq!(frame[0], 0.75);
        assert!(frame[1..].iter().all(|&s| s == 0.0));
        assert_eq!(counters.snapshot().capture_underrun_frames, 1);
        assert!(!primed);
    }
}
