//! The short-utterance corpus: replies of one to three words ("five", "yes", "see you", "ten
//! of clubs") spoken by several espeak-ng voices at several rates, generated when the test or
//! the bench runs (no audio is committed). Each clip is 16 kHz mono with the silence the
//! voice-activity detector keeps around an utterance (200 ms before, 300 ms after), so most
//! clips last 1–3 s, like the short utterances of a call.
//!
//! Shared by `tests/short_utterances.rs` and `examples/short_utterances.rs`.

use std::process::Command;
use std::time::Instant;

use aparte_translate::resample::Downsampler;
use aparte_translate::wer::{extra_repetition, normalize_words, word_error_rate};
use aparte_translate::{AsrTask, Language, SpeechRecognizer};

/// What is said: digits, yes/no and two-word replies, one of them a genuine repetition.
pub(crate) const PHRASES: [&str; 16] = [
    "five",
    "seven",
    "yes",
    "no",
    "okay",
    "three four",
    "five five",
    "see you",
    "thank you",
    "me too",
    "not yet",
    "good morning",
    "sounds good",
    "no thanks",
    "ten of clubs",
    "go forward ten meters",
];

/// Who says it: espeak-ng voice and words per minute.
pub(crate) const VOICES: [(&str, u32); 4] = [
    ("en-us", 120),
    ("en-gb-x-rp+f3", 160),
    ("en-gb-scotland", 200),
    ("en+m3", 140),
];

/// One utterance of the corpus.
pub(crate) struct Clip {
    pub(crate) text: &'static str,
    pub(crate) voice: &'static str,
    pub(crate) rate: u32,
    pub(crate) audio: Vec<f32>,
}

/// espeak-ng speech as the pipeline hands it to the recognizer (16 kHz, VAD margins).
fn speak(voice: &str, rate: u32, text: &str) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-s", &rate.to_string(), "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng is needed: bash scripts/install-deps");
    assert!(status.success(), "espeak-ng -v {voice}");
    let call_audio = aparte_media::wav::read_mono_48k(&wav).unwrap();
    let mut down = Downsampler::new().unwrap();
    let mut out = vec![0.0; 3200]; // 200 ms pre-roll
    out.extend(down.push(&call_audio));
    out.extend(down.push(&vec![0.0; 960 * 10])); // flush the resampler's delay
    out.extend(std::iter::repeat_n(0.0, 4800)); // 300 ms of pause
    out
}

/// Every phrase in every voice.
pub(crate) fn clips() -> Vec<Clip> {
    VOICES
        .iter()
        .flat_map(|&(voice, rate)| {
            PHRASES.iter().map(move |&text| Clip {
                text,
                voice,
                rate,
                audio: speak(voice, rate, text),
            })
        })
        .collect()
}

/// What the recognizer made of one clip.
pub(crate) struct Heard {
    pub(crate) wer: f64,
    /// A word or phrase said more times in a row than the script says it, and how many times.
    pub(crate) repeated: Option<(String, usize)>,
    pub(crate) ms: f64,
    pub(crate) text: String,
}

/// Totals over the corpus.
pub(crate) struct Summary {
    pub(crate) clips: usize,
    pub(crate) words: usize,
    pub(crate) wer: f64,
    /// Clips whose text repeats what the script did not.
    pub(crate) repeated: usize,
    pub(crate) audio_s: f64,
    pub(crate) real_time_factor: f64,
    pub(crate) p50_ms: f64,
    pub(crate) max_ms: f64,
}

/// Recognizes every clip, calling `each` with the clip and the result as it goes.
pub(crate) fn run(
    asr: &mut dyn SpeechRecognizer,
    clips: &[Clip],
    mut each: impl FnMut(&Clip, &Heard),
) -> Summary {
    let task = AsrTask {
        language: Some(Language::English),
        translate_to_english: false,
    };
    let (mut errors, mut words, mut repeated) = (0.0, 0, 0);
    let (mut busy_s, mut audio_s) = (0.0, 0.0);
    let mut latencies = Vec::new();
    for clip in clips {
        let t = Instant::now();
        let got = asr.recognize(&clip.audio, &task).unwrap();
        let took = t.elapsed().as_secs_f64();
        busy_s += took;
        audio_s += clip.audio.len() as f64 / 16_000.0;
        latencies.push(took * 1000.0);
        let n = normalize_words(clip.text).len();
        let heard = Heard {
            wer: word_error_rate(clip.text, &got.text),
            repeated: extra_repetition(clip.text, &got.text),
            ms: took * 1000.0,
            text: got.text,
        };
        errors += heard.wer * n as f64;
        words += n;
        repeated += usize::from(heard.repeated.is_some());
        each(clip, &heard);
    }
    latencies.sort_by(f64::total_cmp);
    Summary {
        clips: clips.len(),
        words,
        wer: errors / words.max(1) as f64,
        repeated,
        audio_s,
        real_time_factor: busy_s / audio_s.max(f64::MIN_POSITIVE),
        p50_ms: latencies.get(latencies.len() / 2).copied().unwrap_or(0.0),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    }
}
