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
use mel_spec::mel::{log_mel_spectrogram, mel, norm_mel};
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
    /// Beam width; 1 is greedy decoding, the fastest.
    pub beam_size: usize,
    /// Quantize the weights to 8-bit integers when loading (faster on CPU, a little less exact).
    pub int8: bool,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self {
            threads: 1,
            beam_size: 1,
            int8: true,
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
    pub fn load(models: &ModelDir, model: ModelName, config: WhisperConfig) -> Result<Self, AsrError> {
        let path = models.require(model).map_err(AsrError::ModelMissing)?;
        Self::load_from(&path, model, config)
    }

    /// Loads a model from its folder.
    pub fn load_from(path: &Path, name: ModelName, config: WhisperConfig) -> Result<Self, AsrError> {
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

    /// Log-mel features of one zero-padded 30 s window, `[n_mels, 3000]` in row-major order.
    fn features(&self, samples: &[f32]) -> Vec<f32> {
        let n_mels = self.mel_filters.nrows();
        let mut features = vec![0.0f32; n_mels * WINDOW_FRAMES];
        let mut stft = Spectrogram::new(N_FFT, HOP);
        let clipped = &samples[..samples.len().min(WINDOW_SAMPLES)];
        for (frame, hop) in clipped.chunks(HOP).enumerate() {
            if frame >= WINDOW_FRAMES {
                break;
            }
            if let Some(fft) = stft.add(hop) {
                let column = norm_mel(&log_mel_spectrogram(&fft, &self.mel_filters));
                for (band, value) in column.column(0).iter().enumerate() {
                    if let Some(slot) = features.get_mut(band * WINDOW_FRAMES + frame) {
                        *slot = *value as f32;
                    }
                }
            }
        }
        features
    }

    fn prompt(&self, language: Option<Language>, translate: bool) -> Vec<String> {
        let mut prompt = vec!["<|startoftranscript|>".to_string()];
        if !self.name.english_only() {
            if let Some(language) = language {
                prompt.push(format!("<|{}|>", language.code()));
            }
            prompt.push(if translate { "<|translate|>" } else { "<|transcribe|>" }.to_string());
        }
        prompt.push("<|notimestamps|>".to_string());
        prompt
    }
}

impl SpeechRecognizer for WhisperRecognizer {
    fn recognize(&mut self, audio_16k: &[f32], task: &AsrTask) -> Result<Recognition, AsrError> {
        if self.name.english_only() && (task.translate_to_english || task.language.is_some_and(|l| l != Language::English)) {
            return Err(AsrError::Unsupported(format!(
                "{} only recognizes English; use the base model",
                self.name
            )));
        }
        let sanitized: Vec<f32> = audio_16k
            .iter()
            .map(|s| if s.is_finite() { s.clamp(-1.0, 1.0) } else { 0.0 })
            .collect();
        let mut features = self.features(&sanitized);
        let shape = [1, self.mel_filters.nrows(), WINDOW_FRAMES];
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
            let best = detected
                .first()
                .and_then(|d| d.first())
                .map(|d| d.language.trim_start_matches("<|").trim_end_matches("|>").to_string());
            language = best.and_then(|code| code.parse().ok());
        }
        let prompt = self.prompt(language, task.translate_to_english);
        let options = WhisperOptions {
            beam_size: self.config.beam_size.max(1),
            return_no_speech_prob: true,
            max_length: 224,
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
