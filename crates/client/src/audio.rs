//! The audio thread: capture (microphone, WAV, tone, silence), Opus encoding, jitter buffer,
//! decoding with concealment, and playout (speaker, WAV or nothing), paced every 20 ms by its
//! own clock. Packets carry 20, 40 or 60 ms (the call's bitrate step decides); the thread
//! still ticks every 20 ms on both sides ([`aparte_media::ptime`]).
//!
//! It talks to the network task only through non-blocking queues: a full queue drops a frame
//! (counted) instead of stalling, so the audio never waits on the network. Sound devices sit
//! behind the `AudioSource` and [`AudioSink`] traits ([`crate::capture`], [`crate::playback`]),
//! and their callbacks talk to this thread through wait-free rings, so they never wait on it
//! either.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aparte_media::codec::{Decoder, Encoder, EncoderConfig};
use aparte_media::fec::FecPolicy;
use aparte_media::jitter::{JitterBuffer, JitterConfig, JitterStats};
use aparte_media::ptime::{Depacketizer, Packetizer, Played};
use aparte_media::source::{AudioSource, Frame, Produced, SilenceSource, ToneSource, WavSource};
use aparte_media::wav::MonoWavWriter;
use aparte_media::{FRAME_MS, FRAME_SAMPLES};
use tokio::sync::mpsc;

use crate::captions::AudioTaps;
use crate::capture::MicSource;
use crate::devices::{DeviceCounters, DeviceError, DeviceStats};
use crate::output_file::PendingFile;
use crate::playback::Speaker;

/// Longest stretch of spoken translation played after a call ends.
pub const SPEECH_TAIL: Duration = Duration::from_secs(20);

/// Where the audio to send comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A WAV file (any common format; converted to 48 kHz mono).
    Wav(PathBuf),
    /// A sine tone at this frequency in Hz.
    Tone(f64),
    /// Silence.
    Silence,
    /// A microphone: the default input device, or the one with this name (see
    /// `aparte devices`).
    Mic(Option<String>),
}

/// Where received audio goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A 48 kHz mono 16-bit WAV file, in real time with concealed gaps.
    Wav(PathBuf),
    /// Decoded and discarded.
    Null,
    /// A speaker: the default output device, or the one with this name (see
    /// `aparte devices`).
    Speaker(Option<String>),
}

/// Audio failures.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The source could not be opened or read.
    #[error("audio input: {0}")]
    Source(#[from] aparte_media::source::SourceError),
    /// The codec failed to initialise.
    #[error("opus: {0}")]
    Codec(#[from] aparte_media::codec::CodecError),
    /// The output file failed.
    #[error("audio output: {0}")]
    Wav(#[from] aparte_media::wav::WavError),
    /// The jitter buffer configuration is invalid.
    #[error("jitter buffer: {0}")]
    Jitter(#[from] aparte_media::jitter::JitterError),
    /// A sound device could not be found or opened.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A sound device failed during the call.
    #[error("audio output: {0}")]
    Playback(String),
    /// The output file could not be created or put in place.
    #[error("--output {}: {message}", .path.display())]
    Output {
        /// The file asked for.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Where the audio thread puts decoded audio, one 20 ms frame of 48 kHz mono at a time.
///
/// Implementations must not wait on anything slow: the audio thread calls this every 20 ms.
pub trait AudioSink: Send {
    /// Plays or stores one frame.
    fn write_frame(&mut self, samples: &[f32]) -> Result<(), AudioError>;
    /// Ends playout (a WAV file gets its final header here).
    fn finish(self: Box<Self>) -> Result<(), AudioError>;
    /// True for a device that plays in real time (it must be fed at 20 ms a frame); a file
    /// can take frames as fast as they come.
    fn plays_in_real_time(&self) -> bool {
        false
    }
}

impl AudioSink for MonoWavWriter {
    fn write_frame(&mut self, samples: &[f32]) -> Result<(), AudioError> {
        Ok(self.write_f32(samples)?)
    }

    fn finish(self: Box<Self>) -> Result<(), AudioError> {
        Ok(self.finalize()?)
    }
}

/// `--output FILE.wav`: the recording goes to a temporary file beside the target and replaces
/// it only once something was heard (see [`crate::output_file`]). A call that never got media
/// leaves an existing file as it was and creates no empty one.
struct WavRecording {
    writer: MonoWavWriter,
    file: PendingFile,
    frames: u64,
}

impl WavRecording {
    fn create(target: &Path) -> Result<Self, AudioError> {
        let file = PendingFile::create(target).map_err(|e| AudioError::Output {
            path: target.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self {
            writer: MonoWavWriter::create(file.path())?,
            file,
            frames: 0,
        })
    }
}

impl AudioSink for WavRecording {
    fn write_frame(&mut self, samples: &[f32]) -> Result<(), AudioError> {
        self.frames += 1;
        Ok(self.writer.write_f32(samples)?)
    }

    fn finish(self: Box<Self>) -> Result<(), AudioError> {
        let Self {
            writer,
            file,
            frames,
        } = *self;
        writer.finalize()?;
        if frames > 0 {
            let target = file.target().to_owned();
            file.commit().map_err(|e| AudioError::Output {
                path: target,
                message: e.to_string(),
            })?;
        }
        Ok(())
    }
}

impl AudioSink for Speaker {
    fn write_frame(&mut self, samples: &[f32]) -> Result<(), AudioError> {
        Speaker::write_frame(self, samples).map_err(AudioError::Playback)
    }

    fn finish(self: Box<Self>) -> Result<(), AudioError> {
        // Dropping the stream stops the device; what is still queued (under 100 ms) is cut off.
        Ok(())
    }

    fn plays_in_real_time(&self) -> bool {
        true
    }
}

/// Counters the audio thread keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct AudioStats {
    /// 20 ms frames encoded and queued for sending.
    pub frames_encoded: u64,
    /// 20 ms frames dropped because the network queue was full (or the encoder failed).
    pub frames_dropped_send: u64,
    /// Input frames that went by while the link was down mid-call (not sent: the person
    /// kept talking, and that speech is lost, as on any call).
    pub frames_skipped_link_down: u64,
    /// Frames written to the output (decoded, FEC-rebuilt or concealed).
    pub frames_played: u64,
    /// Packets that failed to decode, of a duration other than 20, 40 or 60 ms among them
    /// (concealed instead), counted once per 20 ms tick they should have filled.
    pub decode_errors: u64,
    /// Input level of the last frame, dBFS.
    pub input_dbfs: f32,
    /// Output level of the last frame, dBFS.
    pub output_dbfs: f32,
    /// The jitter buffer's counters.
    pub jitter: JitterStats,
    /// Microphone and speaker queue counters (all zero without a sound device).
    pub devices: DeviceStats,
}

/// A received packet for the audio thread: (its authenticated e2ee index, arrival ms since call
/// start, Opus). The jitter buffer orders by the index, never by the unauthenticated RTP
/// sequence. The index counts 20 ms frames: a 60 ms packet at index `i` fills `i..i+3`.
pub type Incoming = (u64, u64, Vec<u8>);

/// The running audio thread and its queues.
pub struct AudioPipeline {
    /// Encoded Opus packets (20, 40 or 60 ms each), ready to protect and send.
    pub outgoing: mpsc::Receiver<Vec<u8>>,
    /// Decrypted Opus packets from the peer.
    pub incoming: std_mpsc::SyncSender<Incoming>,
    /// Set when media may be sent (keys confirmed, link up).
    pub sending: Arc<AtomicBool>,
    /// Set by the thread when the input has ended.
    pub input_ended: Arc<AtomicBool>,
    /// The packet loss, in percent, the encoder plans in-band FEC for; the call sets it from
    /// the peer's loss reports ([`aparte_media::fec::FecPolicy`]) and the thread applies it
    /// before the next frame.
    pub expected_loss: Arc<AtomicU8>,
    /// The Opus bitrate, bit/s; the call sets it from its bitrate ladder
    /// (`aparte_call_policy::bitrate`) and the thread applies it before the next frame.
    pub bitrate: Arc<AtomicU32>,
    /// The packet time, ms (20, 40 or 60); the call sets it with the bitrate, from the same
    /// ladder step, and the thread applies both together at the next packet boundary.
    pub packet_ms: Arc<AtomicU32>,
    /// Counters (see [`Self::snapshot`] for a copy that includes the device counters).
    pub stats: Arc<Mutex<AudioStats>>,
    /// Counters the device callbacks keep, lock-free.
    pub device_counters: Arc<DeviceCounters>,
    /// When the pipeline started (arrival times are measured from here).
    pub started: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), AudioError>>>,
}

impl AudioPipeline {
    /// Opens input and output (sound devices included, so a missing one fails here, before
    /// any network activity) and starts the thread.
    pub fn start(input: &Input, output: &Output) -> Result<Self, AudioError> {
        Self::start_with_taps(input, output, AudioTaps::default())
    }

    /// Like [`Self::start`], and also offers what is sent and what is played to the caption
    /// pipelines (non-blocking; see [`crate::captions`]).
    pub fn start_with_taps(
        input: &Input,
        output: &Output,
        taps: AudioTaps,
    ) -> Result<Self, AudioError> {
        let device_counters = Arc::new(DeviceCounters::default());
        let source: Box<dyn AudioSource> = match input {
            Input::Wav(path) => Box::new(WavSource::open(path)?),
            Input::Tone(hz) => Box::new(ToneSource::new(*hz, 0.3)?),
            Input::Silence => Box::new(SilenceSource::new()),
            Input::Mic(name) => Box::new(MicSource::open(
                name.as_deref(),
                Arc::clone(&device_counters),
            )?),
        };
        let live_input = matches!(input, Input::Mic(_));
        let sink: Option<Box<dyn AudioSink>> = match output {
            Output::Wav(path) => Some(Box::new(WavRecording::create(path)?)),
            Output::Null => None,
            Output::Speaker(name) => Some(Box::new(Speaker::open(
                name.as_deref(),
                Arc::clone(&device_counters),
            )?)),
        };
        Self::start_custom(source, sink, live_input, taps, device_counters)
    }

    /// Starts the thread on any source and sink (benchmarks and tests use their own, for
    /// instance to timestamp what is captured and played). `live_input`: the source keeps
    /// producing while nothing is sent (a microphone), so its frames are then discarded.
    /// `device_counters` are what the source's and sink's device callbacks count into.
    pub fn start_custom(
        source: Box<dyn AudioSource>,
        sink: Option<Box<dyn AudioSink>>,
        live_input: bool,
        taps: AudioTaps,
        device_counters: Arc<DeviceCounters>,
    ) -> Result<Self, AudioError> {
        let fec = FecPolicy::new();
        let encoder = Encoder::new(EncoderConfig {
            expected_loss_percent: fec.expected_loss_percent(),
            ..EncoderConfig::default()
        })?;
        let expected_loss = Arc::new(AtomicU8::new(fec.expected_loss_percent()));
        let bitrate = Arc::new(AtomicU32::new(encoder.config().bitrate));
        let packetizer = Packetizer::new(encoder);
        let packet_ms = Arc::new(AtomicU32::new(packetizer.packet_ms()));
        let depacketizer = Depacketizer::new(Decoder::new()?);
        let jitter = JitterBuffer::new(JitterConfig::default())?;
        let (out_tx, outgoing) = mpsc::channel(50);
        let (incoming, in_rx) = std_mpsc::sync_channel(100);
        let sending = Arc::new(AtomicBool::new(false));
        let input_ended = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(AudioStats::default()));
        let started = Instant::now();
        let worker = Worker {
            source,
            sink,
            packetizer,
            depacketizer,
            jitter,
            out_tx,
            in_rx,
            sending: Arc::clone(&sending),
            input_ended: Arc::clone(&input_ended),
            expected_loss: Arc::clone(&expected_loss),
            bitrate: Arc::clone(&bitrate),
            packet_ms: Arc::clone(&packet_ms),
            stop: Arc::clone(&stop),
            stats: Arc::clone(&stats),
            started,
            playing: false,
            live_input,
            taps,
            sent_any: false,
        };
        let thread = std::thread::Builder::new()
            .name("aparte-audio".into())
            .spawn(move || worker.run())
            .map_err(|e| {
                AudioError::Source(aparte_media::source::SourceError::Device(e.to_string()))
            })?;
        Ok(Self {
            outgoing,
            incoming,
            sending,
            input_ended,
            expected_loss,
            bitrate,
            packet_ms,
            stats,
            device_counters,
            started,
            stop,
            thread: Some(thread),
        })
    }

    /// A copy of the counters, device counters included.
    pub fn snapshot(&self) -> AudioStats {
        let mut stats = *self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.devices = self.device_counters.snapshot();
        stats
    }

    /// Milliseconds since the pipeline started.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Stops the thread and finalises the output file.
    pub fn stop(mut self) -> Result<AudioStats, AudioError> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(result) => result?,
                Err(_) => {
                    return Err(AudioError::Source(
                        aparte_media::source::SourceError::Device("audio thread panicked".into()),
                    ))
                }
            }
        }
        Ok(self.snapshot())
    }
}

impl Drop for AudioPipeline {
    /// A call that fails half-way (`?` in `run_call`) drops the pipeline without `stop`; the
    /// thread must not run on, holding a sound device, after that. It is joined (it notices
    /// within one 20 ms tick) so that its output is settled before the process exits: a
    /// recording that never started removes its temporary file instead of leaving it behind.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Worker {
    source: Box<dyn AudioSource>,
    sink: Option<Box<dyn AudioSink>>,
    packetizer: Packetizer,
    depacketizer: Depacketizer,
    jitter: JitterBuffer,
    out_tx: mpsc::Sender<Vec<u8>>,
    in_rx: std_mpsc::Receiver<Incoming>,
    sending: Arc<AtomicBool>,
    input_ended: Arc<AtomicBool>,
    expected_loss: Arc<AtomicU8>,
    bitrate: Arc<AtomicU32>,
    packet_ms: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<AudioStats>>,
    started: Instant,
    playing: bool,
    /// A live source (microphone) keeps capturing while we do not send; its frames are then
    /// pulled and discarded so the first frame sent is fresh, not the oldest in a queue.
    live_input: bool,
    /// Caption pipelines' inputs.
    taps: AudioTaps,
    /// A frame was sent: the call is under way, and the input runs on in real time from now
    /// on, even while the link is down.
    sent_any: bool,
}

impl Worker {
    fn run(mut self) -> Result<(), AudioError> {
        let period = Duration::from_millis(u64::from(FRAME_MS));
        let mut frame: Frame = [0.0; FRAME_SAMPLES];
        let mut deadline = self.started;
        while !self.stop.load(Ordering::SeqCst) {
            self.send_tick(&mut frame);
            self.play_tick()?;
            // Pace on our own clock; a late tick is not made up by bursting.
            deadline += period;
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            } else {
                deadline = now;
            }
        }
        // Frames decrypted in the last moments still reach the buffer (and its counts: they
        // end as buffered, not as frames that vanished between decryption and playout).
        self.take_incoming();
        // The call is over: concealment since the peer's last packet was the end of its
        // stream, not loss (see `JitterBuffer::end_of_stream`).
        self.jitter.end_of_stream();
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).jitter = self.jitter.stats();
        self.play_out_speech()?;
        if let Some(sink) = self.sink.take() {
            sink.finish()?;
        }
        Ok(())
    }

    /// After the call: plays the spoken translations still queued (the last caption often
    /// arrives just before the peer hangs up), over silence, at most [`SPEECH_TAIL`]. A file
    /// gets them at once; a speaker at its own pace.
    fn play_out_speech(&mut self) -> Result<(), AudioError> {
        let (Some(feed), Some(sink)) = (self.taps.speech.as_mut(), self.sink.as_mut()) else {
            return Ok(());
        };
        if !self.playing {
            return Ok(());
        }
        let real_time = sink.plays_in_real_time();
        let period = Duration::from_millis(u64::from(FRAME_MS));
        let max_frames = (SPEECH_TAIL.as_millis() / period.as_millis()) as usize;
        let mut deadline = Instant::now();
        for _ in 0..max_frames {
            if feed.pending_frames() == 0 {
                break;
            }
            let mut samples = [0.0_f32; FRAME_SAMPLES];
            feed.mix(&mut samples);
            match sink.write_frame(&samples) {
                Err(AudioError::Playback(_)) => break,
                other => other?,
            }
            if real_time {
                deadline += period;
                if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
        Ok(())
    }

    /// Hands what the network brought to the jitter buffer, one entry per 20 ms frame.
    fn take_incoming(&mut self) {
        while let Ok((index, arrival, packet)) = self.in_rx.try_recv() {
            for (index, arrival, entry) in aparte_media::ptime::split(index, arrival, &packet) {
                self.jitter.push_frame(index, arrival, entry);
            }
        }
    }

    /// Queues a packet of `frames` 20 ms frames for sending.
    fn queue(&mut self, packet: Vec<u8>, frames: usize) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match self.out_tx.try_send(packet) {
            Ok(()) => stats.frames_encoded += frames as u64,
            Err(_) => stats.frames_dropped_send += frames as u64,
        }
    }

    fn send_tick(&mut self, frame: &mut Frame) {
        if self.input_ended.load(Ordering::SeqCst) {
            // Keep our caption stream's clock running on silence, so the last utterance is
            // closed by a pause as any other is.
            if let Some(tap) = &self.taps.outgoing {
                tap.push(&[0.0; FRAME_SAMPLES]);
            }
            return;
        }
        if !self.sending.load(Ordering::SeqCst) {
            // Frames gathered towards a packet are stale by the time sending resumes.
            let stale = self.packetizer.discard() as u64;
            if stale > 0 {
                let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                stats.frames_skipped_link_down += stale;
            }
            // Before the call is set up a file waits (its start is not lost while connecting);
            // once under way it is a person talking, who goes on while the link is down. A
            // paused file would put everything after an outage out of step with the clock.
            if self.live_input || self.sent_any {
                match self.source.next_frame(frame) {
                    Ok(Produced::Frame) if self.sent_any => {
                        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                        stats.frames_skipped_link_down += 1;
                    }
                    Ok(Produced::Frame) => {}
                    Ok(Produced::End) | Err(_) => self.input_ended.store(true, Ordering::SeqCst),
                }
            }
            return;
        }
        self.sent_any = true;
        match self.source.next_frame(frame) {
            Ok(Produced::Frame) => {}
            Ok(Produced::End) | Err(_) => {
                self.input_ended.store(true, Ordering::SeqCst);
                // The last packet is completed with silence rather than dropped.
                match self.packetizer.flush() {
                    Ok(Some((packet, frames))) => self.queue(packet, frames),
                    Ok(None) => {}
                    Err(_) => {
                        self.stats
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .frames_dropped_send += 1
                    }
                }
                return;
            }
        }
        if let Some(tap) = &self.taps.outgoing {
            tap.push(frame);
        }
        if self.packetizer.at_boundary() {
            // Settings change between packets only: a packet is one bitrate, one length.
            let encoder = self.packetizer.encoder_mut();
            let expected_loss = self.expected_loss.load(Ordering::Relaxed);
            if expected_loss != encoder.config().expected_loss_percent {
                // Cannot fail for a value in 0..=100; on a failure the old setting stays.
                let _ = encoder.set_expected_loss_percent(expected_loss);
            }
            let bitrate = self.bitrate.load(Ordering::Relaxed);
            if bitrate != encoder.config().bitrate {
                // The ladder's steps are all valid; on a failure the old bitrate stays.
                let _ = encoder.set_bitrate(bitrate);
            }
            // 20, 40 or 60 from the ladder; on anything else the old packet time stays.
            let _ = self
                .packetizer
                .set_packet_ms(self.packet_ms.load(Ordering::Relaxed));
        }
        let level = aparte_media::metrics::dbfs(frame);
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .input_dbfs = level as f32;
        match self.packetizer.push_frame(frame) {
            Ok(Some((packet, frames))) => self.queue(packet, frames),
            Ok(None) => {}
            Err(_) => {
                let frames = self.packetizer.packet_ms() / aparte_media::FRAME_MS;
                let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                stats.frames_dropped_send += u64::from(frames);
            }
        }
    }

    fn play_tick(&mut self) -> Result<(), AudioError> {
        self.take_incoming();
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (mut samples, played) = self.depacketizer.play(self.jitter.pop(now_ms));
        let decode_failed = played == Played::DecodeFailed;
        self.playing |= self.jitter.is_playing();
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.jitter = self.jitter.stats();
        stats.decode_errors += u64::from(decode_failed);
        if self.playing {
            stats.output_dbfs = aparte_media::metrics::dbfs(&samples) as f32;
            stats.frames_played += 1;
            drop(stats);
            if let Some(tap) = &self.taps.incoming {
                tap.push(&samples);
            }
            if let Some(feed) = self.taps.speech.as_mut() {
                feed.mix(&mut samples);
            }
            if let Some(sink) = self.sink.as_mut() {
                match sink.write_frame(&samples) {
                    // A speaker that went away (counted in the device stats) must not stop
                    // the thread: our side of the call keeps sending.
                    Err(AudioError::Playback(_)) => self.sink = None,
                    other => other?,
                }
            }
        }
        Ok(())
    }
}
