//! Speech recognition with Whisper on CTranslate2 (`ct2rs`).
//!
//! We use the low-level `ct2rs::sys::Whisper` rather than `ct2rs::Whisper`: the high-level
//! `generate` always adds a language and a task token, which English-only (`.en`) models do not
//! know, and they answer with garbage. For `.en` models the prompt is
//! `<|startoftranscript|><|notimestamps|>`; multilingual models get the language and the task
//! (`transcribe`, or `translate` for Whisper's own any-language → English translation).
//!
//! The log-mel features are computed here the way `ct2rs::Whisper` does (80 mel bands, 25 ms
//! Hann window, 10 ms hop, one 30 s window zero-padded), with the `mel_spec` crate.

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
    /// padding (shorter windows encode faster; see docs/TRANSLATION.md for the trade-off).
    pub window_pad_s: f32,
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
        }
    }
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

    /// Log-mel features of one zero-padded 30 s window, `[n_mels, 3000]` in row-major order,
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
        // Whole seconds, so the encoder sees a handful of distinct shapes.
        (samples / HOP + pad)
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
            // Speech runs at about 3-4 tokens a second; a cap far above that stops a decoder
            // that got stuck repeating itself from costing seconds.
            max_length: ((sanitized.len() / SAMPLE_RATE as usize) * 10 + 20).min(224),
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
        let text = collapse_repetition(&text);
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

/// Whisper sometimes loops, emitting the same sentence again and again. When the text is
/// one phrase repeated (the last copy possibly cut short), keep a single copy.
fn collapse_repetition(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    for period in 1..=words.len() / 2 {
        let repeats = words
            .iter()
            .enumerate()
            .skip(period)
            .all(|(i, w)| words.get(i % period) == Some(w));
        if repeats && period >= 3 {
            return words[..period].join(" ");
        }
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_looping_transcript_is_cut_to_one_copy() {
        let looped = "Thank you for your help. Thank you for your help. Thank you for";
        assert_eq!(collapse_repetition(looped), "Thank you for your help.");
        // Short genuine repetitions stay.
        assert_eq!(collapse_repetition("no no no"), "no no no");
        assert_eq!(collapse_repetition("very very good"), "very very good");
        let plain = "We will meet at the train station after lunch.";
        assert_eq!(collapse_repetition(plain), plain);
        assert_eq!(collapse_repetition(""), "");
    }
}
