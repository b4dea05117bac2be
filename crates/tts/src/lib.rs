//! Spoken translation for aparté (issue 13): the listener's endpoint speaks each translated
//! caption it receives, in the listener's language, over or instead of the peer's voice.
//!
//! - [`espeak`]: espeak-ng synthesis in this process, for every language it has a voice for
//!   (about a hundred; `espeak-ng --voices`). It is the one module of our crates that calls C.
//! - [`mixer`]: sans-IO. Lays the synthesized speech over the peer's decoded voice frame by
//!   frame, ducked or replaced, with a bounded queue.
//! - [`speak_48k`]: synthesis at the call's 48 kHz.
//!
//! Captions arrive inside the call's end-to-end encryption and are spoken here; neither the
//! text nor the speech leaves the endpoint, and nothing here opens a socket or logs text.

pub mod espeak;
pub mod mixer;

pub use mixer::{MixMode, MixerConfig, MixerStats, SpeechMixer};

/// Speech synthesis failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtsError {
    /// espeak-ng did not start or failed.
    #[error("speech synthesis: {0}")]
    Engine(String),
    /// No espeak-ng voice for this language code.
    #[error("espeak-ng has no voice for language '{0}' (see `espeak-ng --voices`)")]
    NoVoice(String),
    /// The text holds a NUL character.
    #[error("the text to speak holds a NUL character")]
    BadText,
    /// The text is longer than [`espeak::MAX_TEXT_BYTES`].
    #[error("the text to speak is too long ({0} bytes)")]
    TooLong(usize),
    /// Converting to 48 kHz failed.
    #[error("resampling the speech: {0}")]
    Resample(String),
}

/// Default speaking rate, words per minute (espeak-ng's own default is 175; a little slower
/// reads better for a listener following a translation).
pub const DEFAULT_WORDS_PER_MINUTE: u16 = 165;

/// Speaks `text` in `language` and returns it as 48 kHz mono samples in −1..1, ready for
/// [`SpeechMixer::push`].
pub fn speak_48k(language: &str, text: &str, words_per_minute: u16) -> Result<Vec<f32>, TtsError> {
    let rate = espeak::sample_rate()?;
    let samples: Vec<f32> = espeak::synthesize(language, text, words_per_minute)?
        .into_iter()
        .map(|s| f32::from(s) / 32_768.0)
        .collect();
    aparte_media::wav::resample_to_48k(&samples, rate)
        .map_err(|e| TtsError::Resample(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaks_at_48k() {
        let native = espeak::synthesize("es", "Buenos días.", 165).unwrap();
        let speech = speak_48k("es", "Buenos días.", 165).unwrap();
        let expected = native.len() as f64 * 48_000.0 / 22_050.0;
        assert!(
            (speech.len() as f64 - expected).abs() < 2_000.0,
            "{} vs {expected}",
            speech.len()
        );
        assert!(speech.iter().all(|s| (-1.0..=1.0).contains(s)));
    }
}
