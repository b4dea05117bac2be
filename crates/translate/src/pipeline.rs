//! The streaming translation pipeline: call audio in, captions out, never in the way.
//!
//! ```text
//!  audio thread ──try_send──▶ [audio queue] ──▶ segmenter thread ──try_send──▶ [utterance queue]
//!   (never waits)              bounded          resample 48→16 kHz, VAD          bounded
//!                                                                                 │
//!  caller ◀──────────── [event queue] ◀──try_send── recognizer thread ◀───────────┘
//!                         bounded                  Whisper, then Apertium
//! ```
//!
//! Every queue is bounded and every producer uses `try_send`, so a slow model can never
//! stall the call's audio: when the recognizer falls behind, whole utterances are dropped and
//! counted; when even the segmenter falls behind, audio frames are dropped and counted (and
//! replaced by silence of the same length, so caption times stay right). Partial captions are
//! only computed when the recognizer is idle.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::caption::{Caption, Translation, CAPTION_VERSION};
use crate::engines::Engines;
use crate::resample::{Downsampler, ASR_RATE, CALL_FRAME};
use crate::vad::{Segmenter, Utterance, VadConfig, VadEvent};

/// Tuning of the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Segmenter tuning (at 16 kHz).
    pub vad: VadConfig,
    /// Audio frames (20 ms) that may wait for the segmenter.
    pub audio_queue_frames: usize,
    /// Utterances that may wait for the recognizer.
    pub utterance_queue: usize,
    /// Events that may wait for the caller.
    pub event_queue: usize,
    /// Compute partial captions while an utterance is still going (when the recognizer is idle).
    pub partials: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            vad: VadConfig::for_rate(ASR_RATE as u32),
            audio_queue_frames: 100,
            utterance_queue: 2,
            event_queue: 64,
            partials: true,
        }
    }
}

/// What the pipeline reports.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineEvent {
    /// The engines are loaded; captions will follow speech.
    Ready,
    /// The engines did not load; the pipeline discards audio from now on. The call goes on.
    Failed(String),
    /// A caption (partial or final) and how long it took.
    Caption(Caption, CaptionTiming),
}

/// Where the time went for one caption. Local only: never sent to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptionTiming {
    /// From the segmenter closing the utterance to the recognizer picking it up.
    pub queued_ms: u64,
    /// Speech recognition.
    pub recognize_ms: u64,
    /// Machine translation.
    pub translate_ms: u64,
}

impl CaptionTiming {
    /// From the utterance closing to the caption being ready.
    pub fn total_ms(&self) -> u64 {
        self.queued_ms
            .saturating_add(self.recognize_ms)
            .saturating_add(self.translate_ms)
    }
}

/// Counters, readable at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PipelineStats {
    /// Audio frames offered by the call.
    pub frames_in: u64,
    /// Audio frames dropped because the segmenter was behind.
    pub frames_dropped: u64,
    /// Utterances the segmenter found.
    pub utterances: u64,
    /// Utterances dropped because the recognizer was behind.
    pub utterances_dropped: u64,
    /// Utterances the recognizer has finished with (captioned, silent or failed).
    pub utterances_done: u64,
    /// Partial captions computed.
    pub partials: u64,
    /// Partial captions skipped because the recognizer was busy.
    pub partials_skipped: u64,
    /// Final captions produced.
    pub finals: u64,
    /// Utterances in which the recognizer heard no speech.
    pub no_speech: u64,
    /// Events dropped because the caller did not read them.
    pub events_dropped: u64,
    /// Recognizer failures.
    pub asr_errors: u64,
    /// Translator failures (the caption went out untranslated).
    pub mt_errors: u64,
    /// Milliseconds of audio recognized (finals and partials).
    pub audio_recognized_ms: u64,
    /// Milliseconds spent recognizing it.
    pub recognize_busy_ms: u64,
}

impl PipelineStats {
    /// True when every utterance found so far has been captioned, found silent, or dropped.
    pub fn settled(&self) -> bool {
        self.utterances_done.saturating_add(self.utterances_dropped) >= self.utterances
    }

    /// Recognition real-time factor: seconds of work per second of audio.
    pub fn real_time_factor(&self) -> f64 {
        if self.audio_recognized_ms == 0 {
            0.0
        } else {
            self.recognize_busy_ms as f64 / self.audio_recognized_ms as f64
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    frames_in: AtomicU64,
    frames_dropped: AtomicU64,
    utterances: AtomicU64,
    utterances_dropped: AtomicU64,
    utterances_done: AtomicU64,
    partials: AtomicU64,
    partials_skipped: AtomicU64,
    finals: AtomicU64,
    no_speech: AtomicU64,
    events_dropped: AtomicU64,
    asr_errors: AtomicU64,
    mt_errors: AtomicU64,
    audio_recognized_ms: AtomicU64,
    recognize_busy_ms: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> PipelineStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PipelineStats {
            frames_in: get(&self.frames_in),
            frames_dropped: get(&self.frames_dropped),
            utterances: get(&self.utterances),
            utterances_dropped: get(&self.utterances_dropped),
            utterances_done: get(&self.utterances_done),
            partials: get(&self.partials),
            partials_skipped: get(&self.partials_skipped),
            finals: get(&self.finals),
            no_speech: get(&self.no_speech),
            events_dropped: get(&self.events_dropped),
            asr_errors: get(&self.asr_errors),
            mt_errors: get(&self.mt_errors),
            audio_recognized_ms: get(&self.audio_recognized_ms),
            recognize_busy_ms: get(&self.recognize_busy_ms),
        }
    }
}

/// Reads a pipeline's counters from anywhere (the pipeline itself may live on another thread).
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    /// Counters so far.
    pub fn snapshot(&self) -> PipelineStats {
        self.0.snapshot()
    }
}

/// Feeds call audio into the pipeline. Cheap to clone; [`AudioTap::push`] never blocks.
#[derive(Debug, Clone)]
pub struct AudioTap {
    audio: SyncSender<(u64, Vec<f32>)>,
    next_index: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

impl AudioTap {
    /// Offers one 20 ms frame of 48 kHz mono audio. Returns false if it was dropped because the
    /// pipeline is behind (or gone).
    pub fn push(&self, frame: &[f32]) -> bool {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        bump(&self.counters.frames_in);
        match self.audio.try_send((index, frame.to_vec())) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                bump(&self.counters.frames_dropped);
                false
            }
        }
    }
}

/// A running pipeline.
#[derive(Debug)]
pub struct TranslationPipeline {
    tap: Option<AudioTap>,
    events: Receiver<PipelineEvent>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
}

/// The pipeline's threads could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the translation pipeline: {0}")]
pub struct PipelineError(String);

enum Job {
    Final(Utterance, Instant),
    Partial(Utterance),
}

impl TranslationPipeline {
    /// Starts the threads. `load` runs on the recognizer thread, so loading a model never holds
    /// up the caller; [`PipelineEvent::Ready`] or [`PipelineEvent::Failed`] tells how it went.
    pub fn start(
        config: PipelineConfig,
        load: impl FnOnce() -> Result<Engines, String> + Send + 'static,
    ) -> Result<Self, PipelineError> {
        let counters = Arc::new(Counters::default());
        let (audio_tx, audio_rx) = mpsc::sync_channel(config.audio_queue_frames.max(1));
        let (job_tx, job_rx) = mpsc::sync_channel(config.utterance_queue.max(1));
        let (event_tx, events) = mpsc::sync_channel(config.event_queue.max(1));
        let pending = Arc::new(AtomicUsize::new(0));
        let downsampler = Downsampler::new().map_err(|e| PipelineError(e.to_string()))?;

        let segmenter = {
            let counters = Arc::clone(&counters);
            let pending = Arc::clone(&pending);
            let config = config.clone();
            std::thread::Builder::new()
                .name("translate-segmenter".into())
                .spawn(move || segment(config, audio_rx, job_tx, downsampler, &pending, &counters))
                .map_err(|e| PipelineError(e.to_string()))?
        };
        let recognizer = {
            let counters = Arc::clone(&counters);
            std::thread::Builder::new()
                .name("translate-recognizer".into())
                .spawn(move || recognize(load, job_rx, event_tx, &pending, &counters))
                .map_err(|e| PipelineError(e.to_string()))?
        };
        Ok(Self {
            tap: Some(AudioTap {
                audio: audio_tx,
                next_index: Arc::new(AtomicU64::new(0)),
                counters: Arc::clone(&counters),
            }),
            events,
            counters,
            threads: vec![segmenter, recognizer],
        })
    }

    /// A handle for the audio thread.
    pub fn audio_tap(&self) -> Option<AudioTap> {
        self.tap.clone()
    }

    /// Offers one 20 ms frame of 48 kHz audio (see [`AudioTap::push`]).
    pub fn push_audio(&self, frame: &[f32]) -> bool {
        self.tap.as_ref().is_some_and(|t| t.push(frame))
    }

    /// The next event, if one is ready.
    pub fn try_event(&self) -> Option<PipelineEvent> {
        self.events.try_recv().ok()
    }

    /// Waits up to `timeout` for the next event. `None` on timeout or when the pipeline ended.
    pub fn next_event(&self, timeout: Duration) -> Option<PipelineEvent> {
        match self.events.recv_timeout(timeout) {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PipelineStats {
        self.counters.snapshot()
    }

    /// A handle to read the counters from elsewhere.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(Arc::clone(&self.counters))
    }

    /// Ends the audio stream, lets the last utterance through, and returns the events not yet
    /// read and the final counters. Other [`AudioTap`] clones must be dropped first, or this
    /// waits for them.
    pub fn finish(mut self) -> (Vec<PipelineEvent>, PipelineStats) {
        self.tap = None;
        let mut rest = Vec::new();
        // The recognizer drops its sender when it is done, which ends this loop.
        while let Ok(event) = self.events.recv() {
            rest.push(event);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        (rest, self.counters.snapshot())
    }
}

fn segment(
    config: PipelineConfig,
    audio: Receiver<(u64, Vec<f32>)>,
    jobs: SyncSender<Job>,
    mut downsampler: Downsampler,
    pending: &AtomicUsize,
    counters: &Counters,
) {
    let mut segmenter = Segmenter::new(config.vad.clone());
    let mut expected = 0u64;
    let silence = vec![0.0f32; CALL_FRAME];
    let handle = |events: Vec<VadEvent>| {
        for event in events {
            match event {
                VadEvent::Final(utterance) => {
                    bump(&counters.utterances);
                    pending.fetch_add(1, Ordering::SeqCst);
                    if jobs
                        .try_send(Job::Final(utterance, Instant::now()))
                        .is_err()
                    {
                        pending.fetch_sub(1, Ordering::SeqCst);
                        bump(&counters.utterances_dropped);
                    }
                }
                VadEvent::Partial(utterance) if config.partials => {
                    // Only when the recognizer has nothing else to do: finals come first.
                    if pending.load(Ordering::SeqCst) == 0 {
                        pending.fetch_add(1, Ordering::SeqCst);
                        if jobs.try_send(Job::Partial(utterance)).is_err() {
                            pending.fetch_sub(1, Ordering::SeqCst);
                            bump(&counters.partials_skipped);
                        }
                    } else {
                        bump(&counters.partials_skipped);
                    }
                }
                VadEvent::Partial(_) => {}
            }
        }
    };
    for (index, frame) in audio {
        // Frames dropped at the tap come back as silence, so stream times stay true.
        let missing = index.saturating_sub(expected).min(50 * 60);
        for _ in 0..missing {
            let resampled = downsampler.push(&silence);
            handle(segmenter.push(&resampled));
        }
        expected = index.saturating_add(1);
        let resampled = downsampler.push(&frame);
        handle(segmenter.push(&resampled));
    }
    if let Some(last) = segmenter.flush() {
        handle(vec![last]);
    }
}

fn recognize(
    load: impl FnOnce() -> Result<Engines, String>,
    jobs: Receiver<Job>,
    events: SyncSender<PipelineEvent>,
    pending: &AtomicUsize,
    counters: &Counters,
) {
    let emit = |event: PipelineEvent| {
        if events.try_send(event).is_err() {
            bump(&counters.events_dropped);
        }
    };
    let mut engines = match load() {
        Ok(engines) => {
            emit(PipelineEvent::Ready);
            engines
        }
        Err(message) => {
            emit(PipelineEvent::Failed(message));
            for job in jobs {
                pending.fetch_sub(1, Ordering::SeqCst);
                if let Job::Final(..) = job {
                    bump(&counters.utterances_dropped);
                }
            }
            return;
        }
    };
    let mut partial_shown = std::collections::HashSet::new();
    for job in jobs {
        pending.fetch_sub(1, Ordering::SeqCst);
        let (utterance, is_final, queued_ms) = match job {
            Job::Final(u, closed) => (u, true, elapsed_ms(closed)),
            Job::Partial(u) => (u, false, 0),
        };
        let started = Instant::now();
        let recognition = engines
            .recognizer
            .recognize(&utterance.samples, &engines.task);
        let recognize_ms = elapsed_ms(started);
        counters
            .recognize_busy_ms
            .fetch_add(recognize_ms, Ordering::Relaxed);
        counters.audio_recognized_ms.fetch_add(
            utterance
                .end_ms(ASR_RATE as u32)
                .saturating_sub(utterance.start_ms(ASR_RATE as u32)),
            Ordering::Relaxed,
        );
        // Counted when this iteration ends, after the caption (if any) was handed on.
        let _done = is_final.then(|| DoneGuard(counters));
        let recognition = match recognition {
            Ok(r) => r,
            Err(_) => {
                // The error text could quote nothing sensitive, but it is counted, not logged
                // per utterance, to keep logs free of anything about the speech.
                bump(&counters.asr_errors);
                continue;
            }
        };
        let text = recognition.text;
        if text.is_empty() {
            if is_final {
                bump(&counters.no_speech);
            }
            // A final with no speech still clears a partial that was shown for it.
            if !(is_final && partial_shown.remove(&utterance.id)) {
                continue;
            }
        }
        let started = Instant::now();
        let translation = match engines.translator.as_mut() {
            Some(translator) if !text.is_empty() => match translator.translate(&text) {
                Ok(t) => Some(Translation {
                    lang: translator.target().code().to_string(),
                    text: t,
                }),
                Err(_) => {
                    bump(&counters.mt_errors);
                    None
                }
            },
            _ => None,
        };
        let translate_ms = elapsed_ms(started);
        let language = recognition.language.unwrap_or(engines.spoken);
        let caption = Caption {
            v: CAPTION_VERSION,
            seq: utterance.id,
            is_final,
            start_ms: utterance.start_ms(ASR_RATE as u32),
            end_ms: utterance.end_ms(ASR_RATE as u32),
            lang: language.code().to_string(),
            text,
            translation,
        };
        if is_final {
            bump(&counters.finals);
            partial_shown.remove(&utterance.id);
        } else {
            bump(&counters.partials);
            partial_shown.insert(utterance.id);
        }
        emit(PipelineEvent::Caption(
            caption,
            CaptionTiming {
                queued_ms,
                recognize_ms,
                translate_ms,
            },
        ));
    }
}

/// Counts a final utterance as done when dropped.
struct DoneGuard<'a>(&'a Counters);

impl Drop for DoneGuard<'_> {
    fn drop(&mut self) {
        bump(&self.0.utterances_done);
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::languages::Language;
    use crate::{AsrError, AsrTask, MtError, Recognition, SpeechRecognizer, TextTranslator};
    use std::sync::mpsc::Sender;

    /// A recognizer that reports how long each utterance was, and can be held up on demand.
    struct LengthRecognizer {
        gate: Option<Receiver<()>>,
        started: Sender<()>,
    }

    impl SpeechRecognizer for LengthRecognizer {
        fn recognize(&mut self, audio: &[f32], _: &AsrTask) -> Result<Recognition, AsrError> {
            let _ = self.started.send(());
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            Ok(Recognition {
                text: format!("{} ms", audio.len() / 16),
                language: None,
                no_speech_prob: 0.0,
            })
        }
    }

    struct Upper;
    impl TextTranslator for Upper {
        fn source(&self) -> Language {
            Language::English
        }
        fn target(&self) -> Language {
            Language::Spanish
        }
        fn translate(&mut self, text: &str) -> Result<String, MtError> {
            Ok(text.to_uppercase())
        }
    }

    fn engines(recognizer: LengthRecognizer) -> Engines {
        Engines {
            recognizer: Box::new(recognizer),
            translator: Some(Box::new(Upper)),
            task: AsrTask::default(),
            spoken: Language::English,
            caption: Language::Spanish,
        }
    }

    fn tone_frame(n: u64) -> Vec<f32> {
        (0..CALL_FRAME)
            .map(|i| {
                let t = (n * CALL_FRAME as u64 + i as u64) as f32 / 48_000.0;
                0.3 * (2.0 * std::f32::consts::PI * 300.0 * t).sin()
            })
            .collect()
    }

    /// `bursts` bursts of 1 s "speech" then 1 s silence.
    fn feed(pipeline: &TranslationPipeline, bursts: u64) {
        let mut n = 0;
        for _ in 0..bursts {
            for _ in 0..50 {
                pipeline.push_audio(&tone_frame(n));
                n += 1;
            }
            for _ in 0..50 {
                pipeline.push_audio(&vec![0.0; CALL_FRAME]);
                n += 1;
            }
        }
    }

    /// A pipeline whose recognizer never waits, with room for all the audio a test feeds.
    fn free_running() -> TranslationPipeline {
        let (started, _) = mpsc::channel();
        let config = PipelineConfig {
            audio_queue_frames: 1000,
            ..Default::default()
        };
        TranslationPipeline::start(config, move || {
            Ok(engines(LengthRecognizer {
                gate: None,
                started,
            }))
        })
        .unwrap()
    }

    fn captions(events: &[PipelineEvent]) -> Vec<&Caption> {
        events
            .iter()
            .filter_map(|e| match e {
                PipelineEvent::Caption(c, _) if c.is_final => Some(c),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn utterances_become_translated_captions_with_stream_times() {
        let pipeline = free_running();
        feed(&pipeline, 3);
        let (events, stats) = pipeline.finish();
        assert_eq!(events.first(), Some(&PipelineEvent::Ready));
        let finals = captions(&events);
        assert_eq!(finals.len(), 3, "{events:?}");
        for (i, c) in finals.iter().enumerate() {
            assert_eq!(c.seq, i as u64);
            // Each burst starts at i*2 s; the segment opens 200 ms (preroll) before.
            let onset = i as u64 * 2000;
            assert!(c.start_ms + 250 >= onset && c.start_ms <= onset, "{c:?}");
            assert!(
                c.end_ms >= onset + 1000 && c.end_ms <= onset + 1150,
                "{c:?}"
            );
            let t = c.translation.as_ref().unwrap();
            assert_eq!(t.text, c.text.to_uppercase());
            assert_eq!(t.lang, "es");
        }
        assert_eq!(stats.frames_in, 300);
        assert_eq!(stats.frames_dropped, 0);
        assert_eq!(stats.utterances, 3);
        assert_eq!(stats.finals, 3);
    }

    #[test]
    fn a_stuck_recognizer_drops_utterances_but_never_blocks_the_audio() {
        let (gate_tx, gate) = mpsc::channel();
        let (started, started_rx) = mpsc::channel();
        let config = PipelineConfig {
            partials: false,
            audio_queue_frames: 1000,
            ..Default::default()
        };
        let pipeline = TranslationPipeline::start(config, move || {
            Ok(engines(LengthRecognizer {
                gate: Some(gate),
                started,
            }))
        })
        .unwrap();
        // 20 utterances while the recognizer is stuck on the first one.
        let mut slowest = Duration::ZERO;
        let mut n = 0u64;
        for burst in 0..20u64 {
            for i in 0..100 {
                n += 1;
                let frame = if i < 50 {
                    tone_frame(n)
                } else {
                    vec![0.0; CALL_FRAME]
                };
                let t = Instant::now();
                pipeline.push_audio(&frame);
                slowest = slowest.max(t.elapsed());
            }
            // Let the segmenter close this utterance, so the drops happen at the utterance
            // queue and not in the audio queue.
            let deadline = Instant::now() + Duration::from_secs(20);
            while pipeline.stats().utterances <= burst && Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(gate_tx); // the recognizer runs freely from now on
        let (events, stats) = pipeline.finish();
        assert_eq!(stats.utterances, 20);
        assert!(stats.utterances_dropped >= 17, "{stats:?}");
        assert_eq!(
            captions(&events).len() as u64,
            20 - stats.utterances_dropped
        );
        assert!(
            slowest < Duration::from_millis(50),
            "a push took {slowest:?}"
        );
    }

    #[test]
    fn a_failed_load_is_reported_and_audio_is_still_accepted() {
        let pipeline =
            TranslationPipeline::start(PipelineConfig::default(), || Err("no model".to_string()))
                .unwrap();
        feed(&pipeline, 2);
        let (events, stats) = pipeline.finish();
        assert_eq!(events, vec![PipelineEvent::Failed("no model".into())]);
        assert_eq!(stats.finals, 0);
        assert_eq!(stats.utterances_dropped, stats.utterances);
    }

    #[test]
    fn dropped_frames_keep_caption_times_true() {
        let pipeline = free_running();
        let tap = pipeline.audio_tap().unwrap();
        // Pretend 100 frames (2 s) were dropped before the speech: bump the index.
        tap.next_index.fetch_add(100, Ordering::Relaxed);
        drop(tap);
        feed(&pipeline, 1);
        let (events, _) = pipeline.finish();
        let finals = captions(&events);
        assert_eq!(finals.len(), 1);
        assert!(
            finals[0].start_ms >= 1750 && finals[0].start_ms <= 2000,
            "{:?}",
            finals[0]
        );
    }
}
