//! Voice-activity segmentation: cuts a stream of audio frames into utterances.
//!
//! Sans-IO: frames go in, events come out, and time is counted in samples, so a test drives it
//! with synthetic audio and knows exactly where each utterance must start and end.
//!
//! The detector is energy based with an adaptive noise floor. That is enough for a headset or a
//! WAV file and costs nothing next to speech recognition; the segmenter's job is only to decide
//! *when* to run the recognizer, and Whisper itself discards non-speech it is handed.

use std::collections::VecDeque;

/// Tuning of the segmenter. All durations are in frames of the caller's size.
#[derive(Debug, Clone, PartialEq)]
pub struct VadConfig {
    /// Samples per second of the audio handed to [`Segmenter::push`].
    pub sample_rate: u32,
    /// A frame counts as speech when it is this many dB above the noise floor...
    pub margin_db: f32,
    /// ...and at least this loud (dBFS), so that digital silence with a tiny floor never
    /// turns faint noise into "speech".
    pub min_speech_dbfs: f32,
    /// Consecutive speech frames needed to open an utterance.
    pub start_frames: u32,
    /// Consecutive non-speech frames that close an utterance (the "hangover").
    pub end_frames: u32,
    /// Frames of audio kept from before the utterance opened, so the first syllable is not cut.
    pub preroll_frames: u32,
    /// An utterance is cut here even if the speaker has not paused.
    pub max_utterance_ms: u32,
    /// Utterances with less speech than this are discarded as clicks or coughs.
    pub min_speech_ms: u32,
    /// While an utterance is open, a partial is offered this often (0 = never).
    pub partial_every_ms: u32,
}

impl VadConfig {
    /// Defaults for 20 ms frames at `sample_rate`.
    pub fn for_rate(sample_rate: u32) -> Self {
        Self {
            sample_rate,
            margin_db: 12.0,
            min_speech_dbfs: -50.0,
            start_frames: 2,
            end_frames: 12,
            preroll_frames: 10,
            max_utterance_ms: 12_000,
            min_speech_ms: 200,
            partial_every_ms: 1_500,
        }
    }
}

/// What the segmenter reports.
#[derive(Debug, Clone, PartialEq)]
pub enum VadEvent {
    /// An utterance has been open for another `partial_every_ms`; here is its audio so far.
    Partial(Utterance),
    /// An utterance ended (pause, length cap or [`Segmenter::flush`]).
    Final(Utterance),
}

/// A stretch of speech, with its position in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    /// Sequence number, counting from 0 for each segmenter; partials share their final's id.
    pub id: u64,
    /// Stream position of the first sample, in samples since the segmenter was created.
    pub start_sample: u64,
    /// Stream position one past the last sample.
    pub end_sample: u64,
    /// The audio, at the segmenter's sample rate.
    pub samples: Vec<f32>,
}

impl Utterance {
    /// Start time in milliseconds since the stream began.
    pub fn start_ms(&self, sample_rate: u32) -> u64 {
        samples_to_ms(self.start_sample, sample_rate)
    }

    /// End time in milliseconds since the stream began.
    pub fn end_ms(&self, sample_rate: u32) -> u64 {
        samples_to_ms(self.end_sample, sample_rate)
    }
}

fn samples_to_ms(samples: u64, rate: u32) -> u64 {
    samples.saturating_mul(1000) / u64::from(rate.max(1))
}

/// Level of a frame in dBFS (−120 for silence).
pub fn frame_dbfs(frame: &[f32]) -> f32 {
    if frame.is_empty() {
        return -120.0;
    }
    let energy: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (energy / frame.len() as f64).sqrt();
    if rms <= 1e-6 {
        -120.0
    } else {
        (20.0 * rms.log10()) as f32
    }
}

/// The utterance segmenter.
#[derive(Debug)]
pub struct Segmenter {
    config: VadConfig,
    noise_floor_db: f32,
    position: u64,
    preroll: VecDeque<Vec<f32>>,
    speech_run: u32,
    silence_run: u32,
    open: Option<Open>,
    next_id: u64,
}

#[derive(Debug)]
struct Open {
    start_sample: u64,
    samples: Vec<f32>,
    speech_samples: u64,
    last_speech_end: u64,
    since_partial: u64,
}

/// How fast the noise floor rises toward a louder background, per frame (it falls at once).
const FLOOR_RISE_DB_PER_FRAME: f32 = 0.02;
const INITIAL_FLOOR_DB: f32 = -70.0;
/// Pause kept after the last speech frame of an utterance.
const TAIL_KEEP_MS: u32 = 100;

impl Segmenter {
    /// A segmenter with the given tuning.
    pub fn new(config: VadConfig) -> Self {
        Self {
            config,
            noise_floor_db: INITIAL_FLOOR_DB,
            position: 0,
            preroll: VecDeque::new(),
            speech_run: 0,
            silence_run: 0,
            open: None,
            next_id: 0,
        }
    }

    /// The tuning in use.
    pub fn config(&self) -> &VadConfig {
        &self.config
    }

    /// Samples consumed so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// True while an utterance is open.
    pub fn in_speech(&self) -> bool {
        self.open.is_some()
    }

    /// Feeds one frame (any length, normally 20 ms) and returns what it completed.
    pub fn push(&mut self, frame: &[f32]) -> Vec<VadEvent> {
        let mut events = Vec::new();
        let level = frame_dbfs(frame);
        let threshold =
            (self.noise_floor_db + self.config.margin_db).max(self.config.min_speech_dbfs);
        let is_speech = level > threshold;
        if !is_speech {
            // Only non-speech frames move the floor, so a long utterance never becomes "noise".
            if level < self.noise_floor_db {
                self.noise_floor_db = level.max(-100.0);
            } else {
                self.noise_floor_db += FLOOR_RISE_DB_PER_FRAME;
            }
        }
        self.position = self.position.saturating_add(frame.len() as u64);

        if is_speech {
            self.speech_run = self.speech_run.saturating_add(1);
            self.silence_run = 0;
        } else {
            self.silence_run = self.silence_run.saturating_add(1);
            self.speech_run = 0;
        }

        let max_samples = self.ms_to_samples(self.config.max_utterance_ms);
        let partial_samples = self.ms_to_samples(self.config.partial_every_ms);
        match self.open.as_mut() {
            None => {
                self.preroll.push_back(frame.to_vec());
                let keep = self
                    .config
                    .preroll_frames
                    .saturating_add(self.config.start_frames) as usize;
                while self.preroll.len() > keep {
                    self.preroll.pop_front();
                }
                if self.speech_run >= self.config.start_frames {
                    let preroll: Vec<Vec<f32>> = self.preroll.drain(..).collect();
                    let len: u64 = preroll.iter().map(|f| f.len() as u64).sum();
                    let start_sample = self.position.saturating_sub(len);
                    let speech = frame.len() as u64 * u64::from(self.config.start_frames);
                    self.open = Some(Open {
                        start_sample,
                        samples: preroll.concat(),
                        speech_samples: speech,
                        last_speech_end: self.position,
                        since_partial: 0,
                    });
                }
            }
            Some(open) => {
                open.samples.extend_from_slice(frame);
                open.since_partial = open.since_partial.saturating_add(frame.len() as u64);
                if is_speech {
                    open.speech_samples = open.speech_samples.saturating_add(frame.len() as u64);
                    open.last_speech_end = self.position;
                }
                let length = self.position.saturating_sub(open.start_sample);
                let too_long = length >= max_samples;
                if self.silence_run >= self.config.end_frames || too_long {
                    if let Some(done) = self.close() {
                        events.push(VadEvent::Final(done));
                    }
                } else if self.config.partial_every_ms > 0 && open.since_partial >= partial_samples
                {
                    open.since_partial = 0;
                    events.push(VadEvent::Partial(Utterance {
                        id: self.next_id,
                        start_sample: open.start_sample,
                        end_sample: self.position,
                        samples: open.samples.clone(),
                    }));
                }
            }
        }
        events
    }

    /// Ends the stream: closes an open utterance.
    pub fn flush(&mut self) -> Option<VadEvent> {
        self.close().map(VadEvent::Final)
    }

    fn close(&mut self) -> Option<Utterance> {
        let open = self.open.take()?;
        self.speech_run = 0;
        if open.speech_samples < self.ms_to_samples(self.config.min_speech_ms) {
            return None;
        }
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        // Drop the trailing pause but keep a little of it: Whisper likes a short tail.
        let end = open
            .last_speech_end
            .saturating_add(self.ms_to_samples(TAIL_KEEP_MS))
            .min(self.position);
        let mut samples = open.samples;
        samples.truncate(end.saturating_sub(open.start_sample) as usize);
        self.silence_run = 0;
        Some(Utterance {
            id,
            start_sample: open.start_sample,
            end_sample: open.start_sample.saturating_add(samples.len() as u64),
            samples,
        })
    }

    fn ms_to_samples(&self, ms: u32) -> u64 {
        u64::from(ms) * u64::from(self.config.sample_rate) / 1000
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    const RATE: u32 = 16_000;
    const FRAME: usize = 320;

    fn tone(frames: usize, amplitude: f32) -> Vec<Vec<f32>> {
        (0..frames)
            .map(|f| {
                (0..FRAME)
                    .map(|i| {
                        let t = (f * FRAME + i) as f32 / RATE as f32;
                        amplitude * (2.0 * std::f32::consts::PI * 220.0 * t).sin()
                    })
                    .collect()
            })
            .collect()
    }

    fn silence(frames: usize) -> Vec<Vec<f32>> {
        vec![vec![0.0; FRAME]; frames]
    }

    fn run(seg: &mut Segmenter, frames: &[Vec<f32>]) -> Vec<VadEvent> {
        frames.iter().flat_map(|f| seg.push(f)).collect()
    }

    fn finals(events: &[VadEvent]) -> Vec<&Utterance> {
        events
            .iter()
            .filter_map(|e| match e {
                VadEvent::Final(u) => Some(u),
                VadEvent::Partial(_) => None,
            })
            .collect()
    }

    #[test]
    fn two_utterances_are_cut_at_the_pause() {
        let mut config = VadConfig::for_rate(RATE);
        config.partial_every_ms = 0;
        let mut seg = Segmenter::new(config);
        let mut audio = silence(25);
        audio.extend(tone(50, 0.3)); // 1.0 s of "speech" from 0.5 s
        audio.extend(silence(40));
        audio.extend(tone(25, 0.3)); // 0.5 s from 2.3 s
        audio.extend(silence(40));
        let events = run(&mut seg, &audio);
        let got = finals(&events);
        assert_eq!(got.len(), 2, "{events:?}");
        // Starts include the preroll (200 ms) before the onset.
        assert_eq!(got[0].start_ms(RATE), 300);
        assert_eq!(got[1].start_ms(RATE), 2100);
        // Ends keep 100 ms of tail after the last speech frame.
        assert_eq!(got[0].end_ms(RATE), 1600);
        assert_eq!(got[1].end_ms(RATE), 2900);
        assert_eq!(got[0].id, 0);
        assert_eq!(got[1].id, 1);
        assert_eq!(
            got[0].samples.len() as u64,
            got[0].end_sample - got[0].start_sample
        );
    }

    #[test]
    fn a_click_is_not_an_utterance() {
        let mut seg = Segmenter::new(VadConfig::for_rate(RATE));
        let mut audio = silence(10);
        audio.extend(tone(3, 0.5)); // 60 ms
        audio.extend(silence(30));
        assert!(finals(&run(&mut seg, &audio)).is_empty());
    }

    #[test]
    fn steady_noise_raises_the_floor_and_speech_above_it_is_found() {
        let mut seg = Segmenter::new(VadConfig::for_rate(RATE));
        // Start with loud "noise": at first it reads as speech, then the floor catches up.
        let noise = tone(1, 0.003)[0].clone(); // about -53 dBFS, under the -50 minimum
        let mut audio: Vec<Vec<f32>> = vec![noise.clone(); 100];
        audio.extend(tone(40, 0.3).into_iter().map(|f| {
            f.iter()
                .zip(&noise)
                .map(|(a, b)| a + b)
                .collect::<Vec<f32>>()
        }));
        audio.extend(vec![noise; 30]);
        let events = run(&mut seg, &audio);
        let got = finals(&events);
        assert_eq!(got.len(), 1, "{events:?}");
        assert_eq!(got[0].start_ms(RATE), 1800);
    }

    #[test]
    fn long_speech_is_cut_at_the_cap_and_partials_come_on_time() {
        let mut config = VadConfig::for_rate(RATE);
        config.max_utterance_ms = 3_000;
        config.partial_every_ms = 1_000;
        let mut seg = Segmenter::new(config);
        let events = run(&mut seg, &tone(200, 0.3)); // 4 s without a pause
        let partials = events
            .iter()
            .filter(|e| matches!(e, VadEvent::Partial(_)))
            .count();
        assert_eq!(partials, 2, "partials at 1 s and 2 s into the utterance");
        let got = finals(&events);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].end_ms(RATE) - got[0].start_ms(RATE), 3_000);
        assert!(
            seg.in_speech(),
            "the rest of the speech opens a new utterance"
        );
        match seg.flush() {
            Some(VadEvent::Final(u)) => assert_eq!(u.id, 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn silence_never_opens_an_utterance() {
        let mut seg = Segmenter::new(VadConfig::for_rate(RATE));
        assert!(run(&mut seg, &silence(500)).is_empty());
        assert!(seg.flush().is_none());
        assert_eq!(seg.position(), 500 * FRAME as u64);
    }

    #[test]
    fn odd_frames_never_panic() {
        let mut seg = Segmenter::new(VadConfig::for_rate(RATE));
        for len in [0usize, 1, 7, 5000] {
            let _ = seg.push(&vec![0.9; len]);
            let _ = seg.push(&vec![f32::NAN; len]);
        }
        let _ = seg.flush();
    }
}
