//! On-device speech translation for aparté.
//!
//! Cloud call translation sends private audio to a provider. Here each endpoint recognizes and
//! translates its own user's speech on its own CPU, and only the resulting captions leave it,
//! inside the call's end-to-end encryption. **Nothing in this crate opens a socket**: the
//! engines are a CTranslate2 model in this process and an Apertium pipeline of local child
//! processes that read stdin and write stdout.
//!
//! The pieces:
//! - [`vad`]: sans-IO voice-activity segmentation into utterances;
//! - [`SpeechRecognizer`] with [`whisper::WhisperRecognizer`] (Whisper on CTranslate2);
//! - [`TextTranslator`] with [`apertium::ApertiumTranslator`] (a long-lived Apertium pipeline);
//! - [`caption`]: the caption type, its strict wire codec and a WebVTT writer;
//! - [`pipeline`]: the threads that tie them together behind bounded queues, so the call's
//!   audio path never waits for a model: under overload audio or utterances are dropped and
//!   counted;
//! - [`languages`] and [`models`]: what this machine can translate, and where models live.
//!
//! See `docs/TRANSLATION.md` for the design, the measurements and the model install.
#![forbid(unsafe_code)]

pub mod apertium;
pub mod caption;
pub mod engines;
pub mod languages;
pub mod models;
pub mod pipeline;
pub mod resample;
pub mod vad;
pub mod wer;
pub mod whisper;

pub use caption::{Caption, Translation};
pub use languages::Language;
pub use pipeline::{
    AudioTap, CaptionTiming, PipelineConfig, PipelineEvent, PipelineStats, StatsHandle,
    TranslationPipeline,
};

/// What to ask the recognizer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsrTask {
    /// The spoken language, if known (otherwise a multilingual model detects it).
    pub language: Option<Language>,
    /// Use Whisper's own translate task: text in English whatever the spoken language.
    pub translate_to_english: bool,
}

/// What the recognizer heard.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognition {
    /// The text (empty when the audio held no speech).
    pub text: String,
    /// Language of `text`.
    pub language: Option<Language>,
    /// The model's probability that there was no speech at all.
    pub no_speech_prob: f32,
}

/// Speech to text.
pub trait SpeechRecognizer: Send {
    /// Recognizes one utterance of 16 kHz mono audio in [-1, 1].
    fn recognize(&mut self, audio_16k: &[f32], task: &AsrTask) -> Result<Recognition, AsrError>;
}

/// Text to text in another language.
pub trait TextTranslator: Send {
    /// Source language.
    fn source(&self) -> Language;
    /// Target language.
    fn target(&self) -> Language;
    /// Translates one sentence or caption.
    fn translate(&mut self, text: &str) -> Result<String, MtError>;
}

/// Speech recognition errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsrError {
    /// The model is not installed (the message says how to install it).
    #[error("{0}")]
    ModelMissing(String),
    /// The model did not load.
    #[error("cannot load the speech model: {0}")]
    Load(String),
    /// The model cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
    /// Recognition failed.
    #[error("speech recognition failed: {0}")]
    Failed(String),
}

/// Machine translation errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtError {
    /// The engine or language pair is not available here.
    #[error("{0}")]
    Unavailable(String),
    /// Input longer than the engine accepts.
    #[error("text longer than {0} characters")]
    InputTooLong(usize),
    /// The engine failed (it is restarted on the next request).
    #[error("translation failed: {0}")]
    Failed(String),
}
