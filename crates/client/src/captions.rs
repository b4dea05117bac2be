//! Live captions and translation in a call: the glue between the audio thread, the
//! `aparte-translate` pipelines and the call's encrypted data channel.
//!
//! - **Outgoing:** this endpoint recognizes (and translates) its own user's speech, and sends
//!   each caption to the peer as an e2ee-protected data frame (the session's data key; a
//!   tampered or replayed caption frame is rejected like an audio frame).
//! - **Incoming (`--translate-incoming`):** this endpoint also recognizes the peer's decoded
//!   audio, for a peer that has no translation of its own. Those captions stay here.
//!
//! Models run on their own threads behind bounded queues (see `aparte_translate::pipeline`), so
//! the audio thread only ever does a non-blocking `try_send`. Caption text is shown to the user
//! and written to `--captions FILE`, never logged.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use aparte_translate::caption::WebVttWriter;
use aparte_translate::engines::EngineChoice;
use aparte_translate::{
    AudioTap, Caption, PipelineConfig, PipelineEvent, PipelineStats, StatsHandle,
    TranslationPipeline,
};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::output_file::PendingFile;
use crate::speak::{SpeakOptions, Speaking, SpeechFeed, SpeechReport};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct TranslationOptions {
    /// Caption (and translate) our own speech for the peer.
    pub outgoing: Option<EngineChoice>,
    /// Caption (and translate) the peer's speech here.
    pub incoming: Option<EngineChoice>,
    /// Write the captions of what the peer said as WebVTT.
    pub captions_file: Option<PathBuf>,
    /// Speak the translations of what the peer said (`--speak-translation`).
    pub speak: Option<SpeakOptions>,
    /// Show (and write to the captions file) what the peer said beside its translation
    /// (`--show-source`): the listener's choice, for the listener's display only.
    pub show_source: bool,
}

impl TranslationOptions {
    /// True when any pipeline or a captions file is asked for.
    pub fn enabled(&self) -> bool {
        self.outgoing.is_some()
            || self.incoming.is_some()
            || self.captions_file.is_some()
            || self.speak.is_some()
    }
}

/// Which pipeline an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Direction {
    /// Our own speech (captions go to the peer).
    Outgoing,
    /// The peer's speech, recognized here.
    Incoming,
}

/// Who a caption shown to the user belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptionSource {
    /// Our own speech, as sent to the peer.
    Mine,
    /// Received from the peer, made by the peer's endpoint.
    Peer,
    /// The peer's speech, recognized on this endpoint (`--translate-incoming`).
    PeerRecognizedHere,
}

/// What the audio thread exchanges with the caption machinery.
#[derive(Debug, Default)]
pub struct AudioTaps {
    /// Our captured audio, as sent.
    pub outgoing: Option<AudioTap>,
    /// The peer's audio, as decoded (before any spoken translation is mixed in).
    pub incoming: Option<AudioTap>,
    /// Spoken translations to mix into what is played.
    pub speech: Option<SpeechFeed>,
}

/// Caption figures for `--stats-json` (no text).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CaptionReport {
    /// Partial captions sent to the peer.
    pub sent_partials: u64,
    /// Final captions sent to the peer.
    pub sent_finals: u64,
    /// Captions that could not be sent (call not set up yet, or the data channel refused).
    pub send_failed: u64,
    /// Partial captions received.
    pub received_partials: u64,
    /// Final captions received.
    pub received_finals: u64,
    /// Received data frames that authenticated but did not parse as a caption.
    pub received_malformed: u64,
    /// For each final caption received: how long after its audio finished playing here it
    /// arrived, in ms (the peer's stream time against our playout position).
    pub received_lag_ms: Vec<u64>,
    /// For each final caption made here: utterance closed → caption ready, in ms.
    pub processing_ms: Vec<u64>,
    /// Our own speech pipeline's counters.
    pub outgoing: Option<PipelineStats>,
    /// The incoming-speech pipeline's counters.
    pub incoming: Option<PipelineStats>,
    /// Why a pipeline could not start, if one could not.
    pub errors: Vec<String>,
    /// Spoken translations (`--speak-translation`).
    pub speech: Option<SpeechReport>,
}

struct Running {
    stats: StatsHandle,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The running caption machinery of one call.
pub struct Captions {
    outgoing: Option<Running>,
    incoming: Option<Running>,
    events: mpsc::Receiver<(Direction, PipelineEvent)>,
    vtt: Option<(WebVttWriter<File>, PendingFile)>,
    /// Speaks received translations.
    speaking: Option<Speaking>,
    /// Captions written to the file.
    vtt_cues: u64,
    /// Figures so far.
    pub report: CaptionReport,
}

impl std::fmt::Debug for Captions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captions")
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl Captions {
    /// Starts the pipelines asked for (models load on their own threads) and opens the
    /// captions file. Returns the taps to hand to the audio thread.
    pub fn start(options: &TranslationOptions) -> Result<(Self, AudioTaps), String> {
        // Written beside the target under a temporary name, put in place only when the
        // call wrote a caption (see `crate::output_file`).
        let vtt = match &options.captions_file {
            Some(path) => {
                let open = || -> std::io::Result<_> {
                    let pending = PendingFile::create(path)?;
                    let writer = WebVttWriter::with_source(
                        File::create(pending.path())?,
                        options.show_source,
                    )?;
                    Ok((writer, pending))
                };
                Some(open().map_err(|e| format!("--captions {}: {e}", path.display()))?)
            }
            None => None,
        };
        let (tx, events) = mpsc::channel(64);
        let mut taps = AudioTaps::default();
        let start = |choice: &Option<EngineChoice>,
                     direction: Direction,
                     tap: &mut Option<AudioTap>|
         -> Result<Option<Running>, String> {
            let Some(choice) = choice.clone() else {
                return Ok(None);
            };
            // Fail before the call when the machine lacks a model or a language pair.
            choice.check()?;
            let config = PipelineConfig {
                // Partials are for people watching; they cost a recognition each, so only the
                // captions we send carry them.
                partials: direction == Direction::Outgoing,
                ..Default::default()
            };
            let pipeline = TranslationPipeline::start(config, move || choice.load())
                .map_err(|e| e.to_string())?;
            *tap = pipeline.audio_tap();
            Ok(Some(forward(pipeline, direction, tx.clone())))
        };
        let speaking = match options.speak.clone() {
            Some(speak) => {
                let (speaking, feed) = Speaking::start(speak)?;
                taps.speech = Some(feed);
                Some(speaking)
            }
            None => None,
        };
        let outgoing = start(&options.outgoing, Direction::Outgoing, &mut taps.outgoing)?;
        let incoming = start(&options.incoming, Direction::Incoming, &mut taps.incoming)?;
        Ok((
            Self {
                outgoing,
                incoming,
                events,
                vtt,
                speaking,
                vtt_cues: 0,
                report: CaptionReport::default(),
            },
            taps,
        ))
    }

    /// The next pipeline event (pending forever when no pipeline runs).
    pub async fn next(&mut self) -> Option<(Direction, PipelineEvent)> {
        self.events.recv().await
    }

    /// True when our own speech pipeline has captioned everything it heard (or there is none).
    pub fn outgoing_settled(&self) -> bool {
        self.outgoing
            .as_ref()
            .is_none_or(|r| r.stats.snapshot().settled())
            && self.events.is_empty()
    }

    /// Whether our own speech is captioned.
    pub fn has_outgoing(&self) -> bool {
        self.outgoing.is_some()
    }

    /// Records a caption shown to the user: final ones of the peer's speech go to the file,
    /// and their translation is spoken when asked for.
    pub fn shown(&mut self, source: CaptionSource, caption: &Caption) {
        if source == CaptionSource::Mine || !caption.is_final {
            return;
        }
        if let Some(speaking) = &self.speaking {
            speaking.caption(caption);
        }
        if let Some((vtt, _)) = self.vtt.as_mut() {
            if vtt.write(caption).is_err() {
                self.report
                    .errors
                    .push("writing the captions file failed".into());
                self.vtt = None;
            } else {
                self.vtt_cues += 1;
            }
        }
    }

    /// Waits (at most `limit`) until the translations already received are synthesized and
    /// handed to the audio thread, which plays them out before it stops.
    pub fn settle_speech(&self, limit: Duration) {
        if let Some(speaking) = &self.speaking {
            speaking.settle(limit);
        }
    }

    /// Stops the pipelines (after the audio thread, which holds their taps, has stopped) and
    /// returns the figures.
    pub fn finish(&mut self) -> CaptionReport {
        if let Some(mut speaking) = self.speaking.take() {
            self.report.speech = Some(speaking.finish());
        }
        for (running, slot) in [
            (self.outgoing.take(), &mut self.report.outgoing),
            (self.incoming.take(), &mut self.report.incoming),
        ] {
            if let Some(running) = running {
                running.stop.store(true, Ordering::SeqCst);
                let _ = running.thread.join();
                *slot = Some(running.stats.snapshot());
            }
        }
        if let Some((vtt, pending)) = self.vtt.take() {
            drop(vtt);
            if self.vtt_cues > 0 {
                if let Err(e) = pending.commit() {
                    self.report
                        .errors
                        .push(format!("the captions file could not be put in place: {e}"));
                }
            }
        }
        std::mem::take(&mut self.report)
    }
}

impl Drop for Captions {
    /// A call that fails half-way drops this without `finish`: stop the forwarders anyway.
    fn drop(&mut self) {
        for running in [&self.outgoing, &self.incoming].into_iter().flatten() {
            running.stop.store(true, Ordering::SeqCst);
        }
    }
}

/// Moves a pipeline's events into the call's async world, on a thread of its own.
fn forward(
    pipeline: TranslationPipeline,
    direction: Direction,
    tx: mpsc::Sender<(Direction, PipelineEvent)>,
) -> Running {
    let stats = pipeline.stats_handle();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            if let Some(event) = pipeline.next_event(Duration::from_millis(100)) {
                // The call loop reads these promptly; if it does not (it is ending), drop.
                let _ = tx.try_send((direction, event));
            }
        }
        // The audio thread is gone, so its taps are too: this returns once the last
        // utterance has been recognized.
        let _ = pipeline.finish();
    });
    Running {
        stats,
        stop,
        thread,
    }
}
