//! `--speak-translation`: this endpoint speaks each translated caption it receives, in the
//! listener's language, over the peer's voice (ducked) or instead of it (`--speak-only`).
//!
//! Speech-to-speech, as the cloud translator of the story did, but on the listener's own
//! machine: the caption arrived inside the call's encryption, and neither its text nor the
//! speech leaves this endpoint.
//!
//! ```text
//! call loop ──try_send──▶ [8 captions] ──▶ synthesis thread (espeak-ng, 48 kHz)
//!                                                │ send
//! audio thread ◀──try_recv── [2 utterances] ◀────┘  → SpeechMixer (bounded, ducks the peer)
//! ```
//!
//! The call loop never waits (a full queue drops the caption, counted), the audio thread
//! never waits (it only polls), and queued speech is bounded by the mixer.
#![forbid(unsafe_code)]

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aparte_tts::{MixMode, MixerConfig, MixerStats, SpeechMixer};
use serde::Serialize;

/// Captions waiting to be synthesized.
const REQUEST_QUEUE: usize = 8;
/// Utterances synthesized but not yet taken by the audio thread.
const SPEECH_QUEUE: usize = 2;
/// Silence after each spoken caption, so two captions in a row are heard as two sentences
/// (espeak-ng ends a text on its last phoneme).
const PAUSE_AFTER_MS: usize = 300;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakOptions {
    /// The listener's language: translations into it are spoken (ISO 639-1, e.g. `en`).
    pub language: String,
    /// Duck the peer's voice, or replace it.
    pub mode: MixMode,
    /// Speaking rate.
    pub words_per_minute: u16,
}

impl SpeakOptions {
    /// Checks, before the call, that espeak-ng can speak this language.
    pub fn check(&self) -> Result<(), String> {
        match aparte_tts::espeak::has_voice(&self.language) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "--speak-translation: espeak-ng has no voice for '{}' (see `espeak-ng --voices`)",
                self.language
            )),
            Err(e) => Err(format!("--speak-translation: {e}")),
        }
    }
}

/// Spoken-translation figures for `--stats-json` (no text).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpeechReport {
    /// Final translated captions handed to the synthesizer.
    pub requested: u64,
    /// Captions skipped because they carry no translation into the listener's language.
    pub skipped_other_language: u64,
    /// Captions dropped because the synthesis queue was full.
    pub dropped_busy: u64,
    /// Captions that could not be synthesized.
    pub failed: u64,
    /// Captions synthesized.
    pub synthesized: u64,
    /// For each: caption received → its speech ready to play, in ms.
    pub ready_ms: Vec<u64>,
    /// Seconds of speech synthesized, with the pause after each caption.
    pub speech_s: f64,
    /// Utterances the mixer queued, dropped (queue full) and played to their end, and the
    /// 20 ms frames that carried speech.
    pub mixer_queued: u64,
    /// See `mixer_queued`.
    pub mixer_dropped_full: u64,
    /// See `mixer_queued`.
    pub mixer_finished: u64,
    /// See `mixer_queued`.
    pub frames_with_speech: u64,
}

struct Request {
    text: String,
    received: Instant,
}

/// Work not yet handed to the audio thread, and a signal when it reaches zero.
#[derive(Default)]
struct Outstanding {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Outstanding {
    fn add(&self) {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn done(&self) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.idle.notify_all();
        }
    }
}

/// The synthesis side, owned by the call's caption machinery.
pub struct Speaking {
    options: SpeakOptions,
    requests: Option<SyncSender<Request>>,
    thread: Option<JoinHandle<()>>,
    outstanding: Arc<Outstanding>,
    report: Arc<Mutex<SpeechReport>>,
    mixer_stats: Arc<Mutex<MixerStats>>,
}

impl std::fmt::Debug for Speaking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaking")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The audio thread's side: polled every 20 ms, never blocks.
pub struct SpeechFeed {
    speech: Receiver<Vec<f32>>,
    mixer: SpeechMixer,
    stats: Arc<Mutex<MixerStats>>,
    /// The synthesis thread is gone (the call is over) and everything it sent is taken.
    closed: bool,
}

impl std::fmt::Debug for SpeechFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechFeed")
            .field("mixer", &self.mixer)
            .finish_non_exhaustive()
    }
}

impl SpeechFeed {
    /// Takes any new speech and mixes the next 20 ms of it into `frame` (the peer's voice).
    pub fn mix(&mut self, frame: &mut [f32]) {
        self.take_new();
        self.mixer.mix(frame);
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = self.mixer.stats();
    }

    /// Speech still to be played, in 20 ms frames (after taking what has arrived).
    pub fn pending_frames(&mut self) -> usize {
        self.take_new();
        self.mixer
            .pending_samples()
            .div_ceil(aparte_media::FRAME_SAMPLES)
    }

    /// True once the synthesis thread has ended and all its speech was taken.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn take_new(&mut self) {
        loop {
            match self.speech.try_recv() {
                Ok(speech) => {
                    self.mixer.push(speech);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
    }
}

impl Speaking {
    /// Starts the synthesis thread. Returns the feed to hand to the audio thread.
    pub fn start(options: SpeakOptions) -> Result<(Self, SpeechFeed), String> {
        options.check()?;
        let (requests, request_rx) = mpsc::sync_channel::<Request>(REQUEST_QUEUE);
        let (speech_tx, speech) = mpsc::sync_channel::<Vec<f32>>(SPEECH_QUEUE);
        let outstanding = Arc::new(Outstanding::default());
        let report = Arc::new(Mutex::new(SpeechReport::default()));
        let mixer_stats = Arc::new(Mutex::new(MixerStats::default()));
        let thread = {
            let (language, rate) = (options.language.clone(), options.words_per_minute);
            let outstanding = Arc::clone(&outstanding);
            let report = Arc::clone(&report);
            std::thread::Builder::new()
                .name("aparte-speak".into())
                .spawn(move || {
                    for request in request_rx {
                        let result = aparte_tts::speak_48k(&language, &request.text, rate);
                        // The text is dropped here, never logged.
                        drop(request.text);
                        let stop = {
                            let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
                            match result {
                                Ok(mut speech) => {
                                    speech.extend(std::iter::repeat_n(0.0, PAUSE_AFTER_MS * 48));
                                    report.synthesized += 1;
                                    report.speech_s += speech.len() as f64 / 48_000.0;
                                    report.ready_ms.push(
                                        u64::try_from(request.received.elapsed().as_millis())
                                            .unwrap_or(u64::MAX),
                                    );
                                    drop(report);
                                    // Waits only while the audio thread has two utterances
                                    // it has not taken yet; fails once it is gone.
                                    speech_tx.send(speech).is_err()
                                }
                                Err(_) => {
                                    report.failed += 1;
                                    false
                                }
                            }
                        };
                        outstanding.done();
                        if stop {
                            break;
                        }
                    }
                })
                .map_err(|e| format!("--speak-translation: cannot start its thread: {e}"))?
        };
        let feed = SpeechFeed {
            speech,
            mixer: SpeechMixer::new(MixerConfig {
                mode: options.mode,
                ..MixerConfig::default()
            }),
            stats: Arc::clone(&mixer_stats),
            closed: false,
        };
        Ok((
            Self {
                options,
                requests: Some(requests),
                thread: Some(thread),
                outstanding,
                report,
                mixer_stats,
            },
            feed,
        ))
    }

    /// A final caption was received (or made here from the peer's audio): speak its
    /// translation if it is in the listener's language. Never waits.
    pub fn caption(&self, caption: &aparte_translate::Caption) {
        let Some(requests) = &self.requests else {
            return;
        };
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        let text = match &caption.translation {
            Some(t) if t.lang == self.options.language && !t.text.trim().is_empty() => &t.text,
            _ => {
                report.skipped_other_language += 1;
                return;
            }
        };
        self.outstanding.add();
        match requests.try_send(Request {
            text: text.clone(),
            received: Instant::now(),
        }) {
            Ok(()) => report.requested += 1,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                report.dropped_busy += 1;
                self.outstanding.done();
            }
        }
    }

    /// Waits (at most `limit`) until every caption handed over is synthesized and with the
    /// audio thread, so a call that ends right after the last caption still speaks it.
    pub fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut count = self
            .outstanding
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *count > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            count = match self.outstanding.idle.wait_timeout(count, left) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Stops the synthesis thread and returns the figures (call after the audio thread has
    /// stopped, so the mixer's counts are final).
    pub fn finish(&mut self) -> SpeechReport {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut report =
            std::mem::take(&mut *self.report.lock().unwrap_or_else(|e| e.into_inner()));
        let mixer = *self.mixer_stats.lock().unwrap_or_else(|e| e.into_inner());
        report.mixer_queued = mixer.queued;
        report.mixer_dropped_full = mixer.dropped_full;
        report.mixer_finished = mixer.finished;
        report.frames_with_speech = mixer.frames_with_speech;
        report
    }
}

impl Drop for Speaking {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the caption it is on.
        self.requests = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aparte_translate::caption::Translation;
    use aparte_translate::Caption;

    fn caption(lang: &str, text: &str) -> Caption {
        Caption {
            v: 1,
            seq: 0,
            is_final: true,
            start_ms: 0,
            end_ms: 1_000,
            lang: "es".into(),
            text: "hola".into(),
            translation: Some(Translation {
                lang: lang.into(),
                text: text.into(),
            }),
        }
    }

    fn options(mode: MixMode) -> SpeakOptions {
        SpeakOptions {
            language: "en".into(),
            mode,
            words_per_minute: 165,
        }
    }

    #[test]
    fn speaks_translations_into_the_listeners_language_only() {
        let (mut speaking, mut feed) = Speaking::start(options(MixMode::Replace)).unwrap();
        speaking.caption(&caption("en", "Good morning, my friend."));
        speaking.caption(&caption("fr", "Bonjour."));
        speaking.settle(Duration::from_secs(10));
        let frames = feed.pending_frames();
        assert!((40..200).contains(&frames), "{frames} frames of speech");
        let mut loud = 0;
        for _ in 0..frames {
            let mut frame = [0.7_f32; aparte_media::FRAME_SAMPLES];
            feed.mix(&mut frame);
            loud += usize::from(frame.iter().any(|s| s.abs() > 0.05));
        }
        assert!(loud > frames / 2, "{loud} of {frames} frames carry speech");
        let report = speaking.finish();
        assert_eq!(
            (
                report.requested,
                report.synthesized,
                report.skipped_other_language
            ),
            (1, 1, 1)
        );
        assert_eq!(report.mixer_finished, 1);
        assert_eq!(report.ready_ms.len(), 1);
        assert!(feed.pending_frames() == 0 && feed.is_closed());
    }

    #[test]
    fn a_flood_of_captions_is_dropped_and_counted_without_waiting() {
        let (mut speaking, feed) = Speaking::start(options(MixMode::Duck)).unwrap();
        // Nobody plays the speech: once two utterances wait for the audio thread, the
        // synthesis thread waits too, and the queue in front of it fills.
        for _ in 0..100 {
            speaking.caption(&caption("en", &"a long sentence to say ".repeat(20)));
        }
        // The audio thread stops before the caption machinery does (as in a call).
        drop(feed);
        let report = speaking.finish();
        // At most the queue, the one being synthesized and the two handed over got through.
        let through = REQUEST_QUEUE as u64 + 1 + SPEECH_QUEUE as u64;
        assert!(report.requested <= through, "{report:?}");
        assert_eq!(report.requested + report.dropped_busy, 100);
    }

    #[test]
    fn a_language_without_a_voice_fails_before_the_call() {
        let err = Speaking::start(SpeakOptions {
            language: "zz".into(),
            ..options(MixMode::Duck)
        })
        .unwrap_err();
        assert!(err.contains("no voice for 'zz'"), "{err}");
    }
}
