//! Speech recognition with Whisper on CTranslate2 (`ct2rs`).
//!
//! We use the low-level `ct2rs::sys::Whisper` rather than `ct2rs::Whisper`: the high-level
//! `generate` always adds a language and a task token, which English-only (`.en`) models do not
//! know, and they answer with garbage. For `.en` models the prompt is
//! `<|startoftranscript|><|notimestamps|>`; multilingual models get the language and the task
//! (`transcribe`, or `translate` for Whisper's own any-language → English translation).
//!
//! The log-mel features are computed here the way `ct2rs::Whisper` does (80 mel bands, 25 ms
//! Hann window, 10 ms hop, the audio zero-padded to the encoder window: at least 10 s, see
//! [`WhisperConfig::min_window_s`]), with the `mel_spec` crate. Decoding is bounded by the
//! audio's length and penalizes repeated tokens, and a transcript that still ends in a loop is
//! cut to one copy: short utterances made the decoder repeat itself.

use std::path::Path;

use ct2rs::sys::{self, StorageView, WhisperOptions};
use ct2rs::tokenizers::hf;
use ct2rs::Tokenizer as _;
use mel_spec::mel::{log_mel_spectrogram, mel};
use mel_spec::stft::Spectrogram;
use ndarray::Array2;

use crate::languages::Language;
use crate::models::{ModelDir, ModelName};
use crate::{AsrError, AsrTask, Recognition, SpeechRecognizer};

/// Whisper's input rate.
pub const SAMPLE_RATE: u32 = 16_000;
/// Whisper's window: 30 s of audio.
const WINDOW_SAMPLES: usize = 30 * SAMPLE_RATE as usize;
const N_FFT: usize = 400;
const HOP: usize = 160;
/// Frames in one window (30 s / 10 ms).
const WINDOW_FRAMES: usize = WINDOW_SAMPLES / HOP;
/// Above this "no speech" probability, the result is treated as silence. Whisper invents
/// polite phrases ("Thank you.") for noise; this keeps them off the screen.
const NO_SPEECH_THRESHOLD: f32 = 0.6;

/// Tuning of the recognizer.
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperConfig {
    /// CPU threads for one recognition. One leaves the other core to the call on a 2-core box.
    pub threads: usize,
    /// Beam width; 1 is greedy decoding, the fastest. 0 picks per model: greedy for tiny.en
    /// (as accurate on clear speech), 5 for base (its greedy translations lose content words).
    pub beam_size: usize,
    /// Encoder window in seconds: 0 for Whisper's full 30 s, otherwise the audio plus this much
    /// padding, at least [`min_window_s`](Self::min_window_s), rounded up to whole seconds.
    pub window_pad_s: f32,
    /// The shortest encoder window, in seconds (when `window_pad_s` is not 0). Whisper was
    /// trained on 30 s windows; on a window of only a few seconds its decoder repeats short
    /// utterances ("10 of clubs" five times). docs/TRANSLATION.md has the measurement that
    /// chose the default.
    pub min_window_s: f32,
    /// Decoder stop rule: a token that would repeat an n-gram of this many tokens already
    /// generated is never chosen (0 turns it off). CTranslate2's `no_repeat_ngram_size`.
    pub no_repeat_ngram_size: usize,
    /// Decoder penalty on tokens already generated (1.0: none, above 1 penalizes).
    /// CTranslate2's `repetition_penalty`.
    pub repetition_penalty: f32,
    /// Quantize the weights to 8-bit integers when loading (faster on CPU, a little less exact).
    pub int8: bool,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self {
            threads: 1,
            beam_size: 0,
            int8: true,
            window_pad_s: 3.0,
            min_window_s: 10.0,
            no_repeat_ngram_size: 0,
            repetition_penalty: 1.1,
        }
    }
}

/// Most text tokens a second of speech can hold. Fast speech is about 3.5 words a second and
/// an English word averages 1.3 tokens; digits and punctuation add some. A decoder asked for
/// more than this is repeating itself.
const MAX_TOKENS_PER_SECOND: f32 = 8.0;
/// Tokens allowed on top of [`MAX_TOKENS_PER_SECOND`] (a short word plus its punctuation
/// in a very short clip).
const EXTRA_TOKENS: usize = 6;
/// Whisper's decoder holds 448 positions, half for the prompt and half for the text.
const MAX_TEXT_TOKENS: usize = 224;

/// The most text tokens the decoder may produce for `samples` of 16 kHz audio.
fn max_text_tokens(samples: usize) -> usize {
    let seconds = samples as f32 / SAMPLE_RATE as f32;
    ((seconds * MAX_TOKENS_PER_SECOND).ceil() as usize + EXTRA_TOKENS).min(MAX_TEXT_TOKENS)
}

/// CTranslate2's Whisper `max_length` that lets the decoder produce exactly `text_tokens` after
/// a prompt of `prompt_tokens`: CTranslate2 decodes at most
/// `min(max_length / 2, max_length - prompt_tokens)` tokens.
fn ct2_max_length(text_tokens: usize, prompt_tokens: usize) -> usize {
    (2 * text_tokens).max(text_tokens + prompt_tokens)
}

/// A loaded Whisper model.
pub struct WhisperRecognizer {
    model: sys::Whisper,
    tokenizer: hf::Tokenizer,
    name: ModelName,
    mel_filters: Array2<f64>,
    config: WhisperConfig,
}

impl std::fmt::Debug for WhisperRecognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperRecognizer")
            .field("model", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WhisperRecognizer {
    /// Loads `model` from the model directory.
    pub fn load(
        models: &ModelDir,
        model: ModelName,
        config: WhisperConfig,
    ) -> Result<Self, AsrError> {
        let path = models.require(model).map_err(AsrError::ModelMissing)?;
        Self::load_from(&path, model, config)
    }

    /// Loads a model from its folder.
    pub fn load_from(
        path: &Path,
        name: ModelName,
        config: WhisperConfig,
    ) -> Result<Self, AsrError> {
        let ct2_config = sys::Config {
            compute_type: if config.int8 {
                sys::ComputeType::INT8
            } else {
                sys::ComputeType::DEFAULT
            },
            num_threads_per_replica: config.threads.max(1),
            ..Default::default()
        };
        let model = sys::Whisper::new(path, ct2_config)
            .map_err(|e| AsrError::Load(format!("{}: {e}", path.display())))?;
        let tokenizer = hf::Tokenizer::new(path)
            .map_err(|e| AsrError::Load(format!("tokenizer in {}: {e}", path.display())))?;
        if model.is_multilingual() == name.english_only() {
            return Err(AsrError::Load(format!(
                "{} does not look like the {name} model (multilingual: {})",
                path.display(),
                model.is_multilingual()
            )));
        }
        let mel_filters = mel(
            f64::from(SAMPLE_RATE),
            N_FFT,
            model.n_mels(),
            None,
            None,
            false,
            true,
        );
        Ok(Self {
            model,
            tokenizer,
            name,
            mel_filters,
            config,
        })
    }

    /// Which model this is.
    pub fn name(&self) -> ModelName {
        self.name
    }

    /// Log-mel features of one zero-padded window, `[n_mels, window_frames]` in row-major order,
    /// normalized the way Whisper's reference code does: log10 power, floored at 8 (i.e. 80 dB)
    /// below the loudest value of the whole window, then mapped with (x + 4) / 4.
    ///
    /// `ct2rs::Whisper` normalizes each frame on its own and pads the features (not the audio)
    /// with zeros, which reads as a loud hiss to the model; on espeak-ng speech that cost
    /// tiny.en several words in ten. See docs/TRANSLATION.md.
    fn features(&self, samples: &[f32], window_frames: usize) -> Vec<f32> {
        let n_mels = self.mel_filters.nrows();
        // log10 of the power floor: what digital silence (the padding) reads as.
        const SILENCE: f64 = -10.0;
        let mut log_mel = vec![SILENCE; n_mels * window_frames];
        let mut stft = Spectrogram::new(N_FFT, HOP);
        // Prime the window so frame 0 is centred near the first sample, as the reference's
        // centred STFT is.
        let _ = stft.add(&[0.0; HOP]);
        let _ = stft.add(&[0.0; HOP]);
        let clipped = &samples[..samples.len().min(WINDOW_SAMPLES)];
        // One window's worth of frames past the audio still sees some of it.
        let frames = (clipped.len() / HOP + N_FFT / HOP + 1).min(window_frames);
        let zeros = [0.0f32; HOP];
        let mut loudest = SILENCE;
        for frame in 0..frames {
            let start = frame * HOP;
            let hop = clipped
                .get(start..(start + HOP).min(clipped.len()))
                .unwrap_or(&zeros);
            if let Some(fft) = stft.add(if hop.is_empty() { &zeros } else { hop }) {
                let column = log_mel_spectrogram(&fft, &self.mel_filters);
                for (band, value) in column.column(0).iter().enumerate() {
                    if let Some(slot) = log_mel.get_mut(band * window_frames + frame) {
                        *slot = *value;
                        loudest = loudest.max(*value);
                    }
                }
            }
        }
        let floor = loudest - 8.0;
        log_mel
            .into_iter()
            .map(|v| ((v.max(floor) + 4.0) / 4.0) as f32)
            .collect()
    }

    /// Frames handed to the encoder for `samples` of audio.
    fn window_frames(&self, samples: usize) -> usize {
        if self.config.window_pad_s <= 0.0 {
            return WINDOW_FRAMES;
        }
        let pad = (self.config.window_pad_s * 100.0) as usize;
        let min = (self.config.min_window_s.max(0.0) * 100.0) as usize;
        // Whole seconds, so the encoder sees a handful of distinct shapes.
        (samples / HOP + pad)
            .max(min)
            .div_ceil(100)
            .saturating_mul(100)
            .clamp(100, WINDOW_FRAMES)
    }

    fn prompt(&self, language: Option<Language>, translate: bool) -> Vec<String> {
        let mut prompt = vec!["<|startoftranscript|>".to_string()];
        if !self.name.english_only() {
            if let Some(language) = language {
                prompt.push(format!("<|{}|>", language.code()));
            }
            prompt.push(
                if translate {
                    "<|translate|>"
                } else {
                    "<|transcribe|>"
                }
                .to_string(),
            );
        }
        prompt.push("<|notimestamps|>".to_string());
        prompt
    }
}

impl SpeechRecognizer for WhisperRecognizer {
    fn recognize(&mut self, audio_16k: &[f32], task: &AsrTask) -> Result<Recognition, AsrError> {
        if self.name.english_only()
            && (task.translate_to_english || task.language.is_some_and(|l| l != Language::English))
        {
            return Err(AsrError::Unsupported(format!(
                "{} only recognizes English; use the base model",
                self.name
            )));
        }
        let sanitized: Vec<f32> = audio_16k
            .iter()
            .map(|s| {
                if s.is_finite() {
                    s.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            })
            .collect();
        let window_frames = self.window_frames(sanitized.len());
        let mut features = self.features(&sanitized, window_frames);
        let shape = [1, self.mel_filters.nrows(), window_frames];
        let view = StorageView::new(&shape, &mut features, Default::default())
            .map_err(|e| AsrError::Failed(format!("features: {e}")))?;

        let mut language = task.language;
        if self.name.english_only() {
            language = Some(Language::English);
        } else if language.is_none() {
            let detected = self
                .model
                .detect_language(&view)
                .map_err(|e| AsrError::Failed(format!("language detection: {e}")))?;
            let best = detected.first().and_then(|d| d.first()).map(|d| {
                d.language
                    .trim_start_matches("<|")
                    .trim_end_matches("|>")
                    .to_string()
            });
            language = best.and_then(|code| code.parse().ok());
        }
        let prompt = self.prompt(language, task.translate_to_english);
        let options = WhisperOptions {
            beam_size: match (self.config.beam_size, self.name) {
                (0, ModelName::TinyEn) => 1,
                (0, ModelName::Base) => 5,
                (beam, _) => beam,
            },
            return_no_speech_prob: true,
            // A second of speech holds a handful of tokens: a decoder that got stuck repeating
            // itself is stopped there, and cannot cost seconds.
            max_length: ct2_max_length(max_text_tokens(sanitized.len()), prompt.len()),
            no_repeat_ngram_size: self.config.no_repeat_ngram_size,
            repetition_penalty: self.config.repetition_penalty,
            ..Default::default()
        };
        let results = self
            .model
            .generate(&view, &[prompt], &options)
            .map_err(|e| AsrError::Failed(format!("decoding: {e}")))?;
        let result = results
            .into_iter()
            .next()
            .ok_or_else(|| AsrError::Failed("no result".into()))?;
        let no_speech_prob = result.no_speech_prob;
        let tokens: Vec<String> = result
            .sequences
            .into_iter()
            .next()
            .unwrap_or_default()
            .into_iter()
            .filter(|t| !(t.starts_with("<|") && t.ends_with("|>")))
            .collect();
        let text = if no_speech_prob > NO_SPEECH_THRESHOLD {
            String::new()
        } else {
            self.tokenizer
                .decode(tokens)
                .map_err(|e| AsrError::Failed(format!("detokenizing: {e}")))?
                .trim()
                .to_string()
        };
        let text = collapse_repetition(&text, max_words(sanitized.len()));
        Ok(Recognition {
            text,
            language: if task.translate_to_english {
                Some(Language::English)
            } else {
                language
            },
            no_speech_prob,
        })
    }
}

/// Most words a second of an utterance holds (fast speech is about 3.5, and an utterance has
/// some silence at each end); more than this, when they end in a loop, are the decoder
/// repeating itself.
const MAX_WORDS_PER_SECOND: f32 = 4.0;

/// The most words `samples` of 16 kHz audio can hold.
fn max_words(samples: usize) -> usize {
    (samples as f32 / SAMPLE_RATE as f32 * MAX_WORDS_PER_SECOND).ceil() as usize + 2
}

/// A word as loop detection compares it: lowercase letters and digits only, so "Clubs." and
/// "clubs," are the same word.
fn loop_key(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whisper sometimes loops, emitting the same phrase again and again, the copies differing
/// only in case and punctuation. When the text ends in such a loop, keep one copy:
/// - the whole text is one phrase of 3 words or more said twice or more (the last copy
///   possibly cut short): "Thank you. Thank you." is not cut, "10 of clubs, 10 of Clubs." is;
/// - the text ends in 3 copies or more of a phrase of 2 words or more;
/// - the text has more words than `max_words` (what the audio can hold) and ends in 3 copies
///   or more of any phrase, even one word ("5 5 5 5 5 5 5 5" in one second).
///
/// Short genuine repetitions ("no no no", "very very good") stay.
fn collapse_repetition(text: &str, max_words: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let keys: Vec<String> = words.iter().map(|w| loop_key(w)).collect();
    let n = words.len();
    // For each period, the longest tail of the text that repeats with that period; keep the
    // longest such tail (the shortest period on a tie).
    let mut best: Option<(usize, usize)> = None; // (period, first word of the tail)
    for period in 1..=n / 2 {
        let mut start = n - period;
        while start > 0 && keys[start - 1] == keys[start - 1 + period] {
            start -= 1;
        }
        if n - start >= 2 * period && best.is_none_or(|(_, s)| start < s) {
            best = Some((period, start));
        }
    }
    let Some((period, start)) = best else {
        return text.to_string();
    };
    let copies = (n - start) / period;
    let is_loop = (start == 0 && period >= 3 && copies >= 2)
        || (period >= 2 && copies >= 3)
        || (n > max_words && copies >= 3);
    if is_loop {
        words[..start + period].join(" ")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PLENTY: usize = 1000;

    #[test]
    fn a_looping_transcript_is_cut_to_one_copy() {
        let looped = "Thank you for your help. Thank you for your help. Thank you for";
        assert_eq!(
            collapse_repetition(looped, PLENTY),
            "Thank you for your help."
        );
        // Copies that differ in case or punctuation are still copies.
        assert_eq!(
            collapse_repetition("10 of clubs, 10 of Clubs. 10 of clubs", PLENTY),
            "10 of clubs,"
        );
        assert_eq!(
            collapse_repetition("Go forward. go forward, Go Forward!", PLENTY),
            "Go forward."
        );
        // A loop after a first part keeps the first part.
        assert_eq!(
            collapse_repetition("I said see you, see you, see you, see you", PLENTY),
            "I said see you,"
        );
        // More words than the audio can hold, ending in a loop of one word.
        assert_eq!(collapse_repetition("5 5 5 5 5 5 5 5 5 5", 7), "5");
        // Short genuine repetitions stay.
        assert_eq!(collapse_repetition("no no no", PLENTY), "no no no");
        assert_eq!(collapse_repetition("No, no, no.", 7), "No, no, no.");
        assert_eq!(collapse_repetition("Five, five.", 7), "Five, five.");
        assert_eq!(
            collapse_repetition("very very good", PLENTY),
            "very very good"
        );
        assert_eq!(
            collapse_repetition("Thank you. Thank you.", PLENTY),
            "Thank you. Thank you."
        );
        let plain = "We will meet at the train station after lunch.";
        assert_eq!(collapse_repetition(plain, PLENTY), plain);
        assert_eq!(collapse_repetition("", PLENTY), "");
    }

    #[test]
    fn the_decoder_is_bounded_by_the_audio_length() {
        let second = SAMPLE_RATE as usize;
        assert_eq!(max_text_tokens(second), 14);
        assert_eq!(max_text_tokens(3 * second), 30);
        assert_eq!(max_text_tokens(0), EXTRA_TOKENS);
        assert_eq!(max_text_tokens(40 * second), MAX_TEXT_TOKENS);
        // CTranslate2 decodes min(max_length / 2, max_length - prompt) tokens.
        for text in [1, 6, 14, 30, 224] {
            for prompt in [1, 2, 4, 10, 40] {
                let max_length = ct2_max_length(text, prompt);
                assert_eq!((max_length / 2).min(max_length - prompt), text);
                assert!(max_length <= 448, "{text} {prompt}");
            }
        }
    }

    /// A phrase of `len` distinct words, each with a random case and trailing punctuation.
    fn phrase(
        words: &'static [&'static str],
        len: std::ops::Range<usize>,
    ) -> impl Strategy<Value = Vec<String>> {
        proptest::sample::subsequence(words, len)
            .prop_shuffle()
            .prop_flat_map(|ws| {
                let n = ws.len();
                (
                    Just(ws),
                    proptest::collection::vec((any::<bool>(), 0..4usize), n),
                )
            })
            .prop_map(|(ws, styles)| {
                ws.iter()
                    .zip(styles)
                    .map(|(w, (upper, punct))| {
                        let mut w = if upper {
                            w.to_uppercase()
                        } else {
                            (*w).to_string()
                        };
                        w.push_str(["", ".", ",", "!"][punct]);
                        w
                    })
                    .collect()
            })
    }

    const VOCABULARY: &[&str] = &[
        "ten", "of", "clubs", "see", "you", "go", "forward", "5", "yes", "later",
    ];
    const PREFIXES: &[&str] = &["i", "said", "well", "then", "and"];

    fn keys(text: &str) -> Vec<String> {
        text.split_whitespace().map(loop_key).collect()
    }

    proptest! {
        #[test]
        fn a_phrase_said_again_in_any_case_and_punctuation_is_kept_once(
            copies in proptest::collection::vec(phrase(VOCABULARY, 3..6), 2..5),
            cut in 0..5usize,
        ) {
            // Every copy is the same words as the first one, styled on its own.
            let first: Vec<String> = copies[0].iter().map(|w| loop_key(w)).collect();
            let mut words: Vec<String> = Vec::new();
            for copy in &copies {
                let styled: Vec<String> = first.iter().zip(copy.iter().cycle()).map(|(k, s)| {
                    let style: String = s.chars().filter(|c| !c.is_alphanumeric()).collect();
                    if s.chars().next().is_some_and(char::is_uppercase) { k.to_uppercase() + &style } else { k.clone() + &style }
                }).collect();
                words.extend(styled);
            }
            // With three copies or more, the last one may be cut short.
            if copies.len() > 2 {
                words.truncate(words.len() - cut.min(first.len() - 1));
            }
            let text = words.join(" ");
            prop_assert_eq!(keys(&collapse_repetition(&text, PLENTY)), first);
        }

        #[test]
        fn a_loop_after_other_words_keeps_them_and_one_copy(
            prefix in phrase(PREFIXES, 1..4),
            copy in phrase(VOCABULARY, 2..5),
            copies in 3..6usize,
        ) {
            let mut words = prefix.clone();
            for _ in 0..copies {
                words.extend(copy.iter().cloned());
            }
            let got = collapse_repetition(&words.join(" "), PLENTY);
            let mut expected = prefix;
            expected.extend(copy);
            prop_assert_eq!(got, expected.join(" "));
        }

        #[test]
        fn text_without_repeated_words_is_untouched(words in phrase(VOCABULARY, 0..10), max in 0..20usize) {
            let text = words.join(" ");
            prop_assert_eq!(collapse_repetition(&text, max), text);
        }

        #[test]
        fn collapsing_twice_changes_nothing(
            words in proptest::collection::vec(proptest::sample::select(&["no", "No.", "see", "you", "5", "5,"][..]), 0..14),
            max in 0..20usize,
        ) {
            let once = collapse_repetition(&words.join(" "), max);
            prop_assert_eq!(collapse_repetition(&once, max), once.clone());
        }
    }
}
