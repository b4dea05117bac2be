//! Lays spoken translations over the peer's voice, one 20 ms frame at a time (sans-IO: the
//! audio thread calls it; no clock, no thread, no allocation per frame).
//!
//! - **Duck**: while a translation is spoken the peer's voice drops to [`DUCK_GAIN`] (about
//!   −14 dB) and comes back [`DUCK_RELEASE_MS`] after it ends, so the listener hears the
//!   translation clearly and still hears that the peer goes on talking.
//! - **Replace**: the peer's voice is never played; only the translations are.
//!
//! Gain changes are ramped over a few milliseconds so they never click. Queued speech is
//! bounded ([`MixerConfig::max_queued_ms`]): when translations arrive faster than they can be
//! spoken, the newest that does not fit is dropped and counted, rather than the listener
//! falling ever further behind.

use std::collections::VecDeque;

/// The peer's voice under a spoken translation, as a linear gain (−14 dB).
pub const DUCK_GAIN: f32 = 0.2;
/// How long after a translation ends the peer's voice stays ducked (so two captions in a row
/// do not pump the peer's voice up and down between them).
pub const DUCK_RELEASE_MS: u32 = 300;
/// How long a gain change takes.
const RAMP_MS: u32 = 10;
const SAMPLE_RATE: u32 = 48_000;

/// How the translation and the peer's voice share the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixMode {
    /// The peer's voice is lowered under each spoken translation.
    Duck,
    /// Only the spoken translations are heard.
    Replace,
}

/// Mixer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixerConfig {
    /// Duck or replace.
    pub mode: MixMode,
    /// Most speech waiting to be played, in ms (the utterance playing included).
    pub max_queued_ms: u32,
}

impl Default for MixerConfig {
    fn default() -> Self {
        Self {
            mode: MixMode::Duck,
            max_queued_ms: 20_000,
        }
    }
}

/// What the mixer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixerStats {
    /// Translations queued for speaking.
    pub queued: u64,
    /// Translations dropped because the queue was full.
    pub dropped_full: u64,
    /// Translations played to their end.
    pub finished: u64,
    /// 20 ms frames that carried speech.
    pub frames_with_speech: u64,
}

/// The mixer. Frames are 48 kHz mono `f32`.
#[derive(Debug)]
pub struct SpeechMixer {
    config: MixerConfig,
    queue: VecDeque<Vec<f32>>,
    /// Read position in the utterance at the front of the queue.
    position: usize,
    /// Samples still to play, across the queue.
    queued_samples: usize,
    /// The peer's gain now (ramped towards its target).
    gain: f32,
    /// Samples since the last speech sample (for the release).
    since_speech: u32,
    stats: MixerStats,
}

impl SpeechMixer {
    /// An idle mixer.
    pub fn new(config: MixerConfig) -> Self {
        let gain = match config.mode {
            MixMode::Duck => 1.0,
            MixMode::Replace => 0.0,
        };
        Self {
            config,
            queue: VecDeque::new(),
            position: 0,
            queued_samples: 0,
            gain,
            since_speech: u32::MAX,
            stats: MixerStats::default(),
        }
    }

    /// Queues one spoken translation (48 kHz mono). Returns false, and counts it, when it does
    /// not fit in the queue; an empty utterance is ignored.
    pub fn push(&mut self, speech: Vec<f32>) -> bool {
        if speech.is_empty() {
            return true;
        }
        let max = self.config.max_queued_ms as usize * (SAMPLE_RATE as usize / 1000);
        if self.queued_samples + speech.len() > max {
            self.stats.dropped_full += 1;
            return false;
        }
        self.queued_samples += speech.len();
        self.queue.push_back(speech);
        self.stats.queued += 1;
        true
    }

    /// Speech still to be played, in samples.
    pub fn pending_samples(&self) -> usize {
        self.queued_samples
    }

    /// Counts so far.
    pub fn stats(&self) -> MixerStats {
        self.stats
    }

    /// Mixes the next piece of speech into `frame` (the peer's decoded voice, replaced by the
    /// mix).
    pub fn mix(&mut self, frame: &mut [f32]) {
        let ramp_step = 1.0 / (RAMP_MS * SAMPLE_RATE / 1000) as f32;
        let release = DUCK_RELEASE_MS * SAMPLE_RATE / 1000;
        let mut spoke = false;
        for sample in frame.iter_mut() {
            let speech = self.next_speech_sample();
            spoke |= speech.is_some();
            self.since_speech = match speech {
                Some(_) => 0,
                None => self.since_speech.saturating_add(1),
            };
            let target = match self.config.mode {
                MixMode::Replace => 0.0,
                MixMode::Duck if self.since_speech <= release => DUCK_GAIN,
                MixMode::Duck => 1.0,
            };
            if self.gain < target {
                self.gain = (self.gain + ramp_step).min(target);
            } else if self.gain > target {
                self.gain = (self.gain - ramp_step).max(target);
            }
            *sample = (*sample * self.gain + speech.unwrap_or(0.0)).clamp(-1.0, 1.0);
        }
        self.stats.frames_with_speech += u64::from(spoke);
    }

    fn next_speech_sample(&mut self) -> Option<f32> {
        let utterance = self.queue.front()?;
        let sample = utterance[self.position];
        self.position += 1;
        self.queued_samples -= 1;
        if self.position == utterance.len() {
            self.queue.pop_front();
            self.position = 0;
            self.stats.finished += 1;
        }
        Some(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FRAME: usize = 960;

    fn speech(ms: usize, value: f32) -> Vec<f32> {
        vec![value; ms * 48]
    }

    #[test]
    fn ducks_the_peer_under_speech_and_releases_after() {
        let mut mixer = SpeechMixer::new(MixerConfig::default());
        assert!(mixer.push(speech(100, 0.1)));
        let mut frames = Vec::new();
        for _ in 0..40 {
            let mut frame = [0.5_f32; FRAME];
            mixer.mix(&mut frame);
            frames.push(frame);
        }
        // First frame: ramping down from 1.0; then 0.5 * 0.2 + 0.1 under speech.
        assert!((frames[2][0] - 0.2).abs() < 1e-4, "{}", frames[2][0]);
        // Speech ends at 100 ms; the peer stays ducked for the release (300 ms)...
        assert!((frames[10][500] - 0.1).abs() < 1e-4, "{}", frames[10][500]);
        // ...then comes back to full level.
        assert!((frames[30][500] - 0.5).abs() < 1e-4, "{}", frames[30][500]);
        assert_eq!(mixer.stats().finished, 1);
        assert_eq!(mixer.stats().frames_with_speech, 5);
        assert_eq!(mixer.pending_samples(), 0);
    }

    #[test]
    fn replace_never_plays_the_peer() {
        let mut mixer = SpeechMixer::new(MixerConfig {
            mode: MixMode::Replace,
            ..MixerConfig::default()
        });
        let mut frame = [0.9_f32; FRAME];
        mixer.mix(&mut frame);
        assert!(frame.iter().all(|s| *s == 0.0));
        mixer.push(speech(20, 0.3));
        let mut frame = [0.9_f32; FRAME];
        mixer.mix(&mut frame);
        assert!(frame.iter().all(|s| (*s - 0.3).abs() < 1e-6));
    }

    #[test]
    fn a_full_queue_drops_the_newest_and_counts_it() {
        let mut mixer = SpeechMixer::new(MixerConfig {
            mode: MixMode::Duck,
            max_queued_ms: 1_000,
        });
        assert!(mixer.push(speech(600, 0.1)));
        assert!(!mixer.push(speech(600, 0.1)));
        assert!(mixer.push(speech(400, 0.1)));
        assert!(mixer.push(Vec::new()));
        let stats = mixer.stats();
        assert_eq!((stats.queued, stats.dropped_full), (2, 1));
        assert_eq!(mixer.pending_samples(), 1_000 * 48);
    }

    proptest! {
        /// Whatever arrives, the output stays in range and every queued sample is played
        /// exactly once, in order.
        #[test]
        fn plays_everything_once_and_stays_in_range(
            lengths in proptest::collection::vec(1usize..3_000, 0..8),
            peer in -1.0f32..=1.0,
            replace in any::<bool>(),
        ) {
            let mode = if replace { MixMode::Replace } else { MixMode::Duck };
            let mut mixer = SpeechMixer::new(MixerConfig { mode, max_queued_ms: 60_000 });
            let total: usize = lengths.iter().sum();
            for len in &lengths {
                prop_assert!(mixer.push(vec![0.9; *len]));
            }
            let mut frames = 0;
            while mixer.pending_samples() > 0 {
                let mut frame = [peer; FRAME];
                mixer.mix(&mut frame);
                prop_assert!(frame.iter().all(|s| (-1.0..=1.0).contains(s)));
                frames += 1;
            }
            prop_assert_eq!(frames, total.div_ceil(FRAME));
            prop_assert_eq!(mixer.stats().finished, lengths.len() as u64);
        }
    }
}
