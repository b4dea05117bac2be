//! Chooses and loads the engines for "speech in language A, captions in language B".

use std::path::{Path, PathBuf};

use crate::apertium::{ApertiumTranslator, DEFAULT_MODES_DIR};
use crate::languages::{plan, Language, Route};
use crate::models::ModelDir;
use crate::whisper::{WhisperConfig, WhisperRecognizer};
use crate::{AsrTask, SpeechRecognizer, TextTranslator};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineChoice {
    /// The language spoken into this pipeline.
    pub spoken: Language,
    /// The language captions should be in.
    pub caption: Language,
    /// Where the speech models are.
    pub models: ModelDir,
    /// Where Apertium's mode files are.
    pub modes_dir: PathBuf,
    /// Recognizer tuning.
    pub whisper: WhisperConfig,
}

impl EngineChoice {
    /// Speech in `spoken`, captions in `caption`, with the default model and mode locations.
    pub fn new(spoken: Language, caption: Language) -> Self {
        Self {
            spoken,
            caption,
            models: ModelDir::default_location(),
            modes_dir: PathBuf::from(DEFAULT_MODES_DIR),
            whisper: WhisperConfig::default(),
        }
    }

    /// Checks that this machine has what the choice needs, without loading anything.
    pub fn check(&self) -> Result<Route, String> {
        plan(self.spoken, self.caption, &self.models, &self.modes_dir).map(|(_, route)| route)
    }

    /// Loads the engines (takes about a second: the speech model is read into memory).
    pub fn load(&self) -> Result<Engines, String> {
        let (model, route) = plan(self.spoken, self.caption, &self.models, &self.modes_dir)?;
        let recognizer = WhisperRecognizer::load(&self.models, model, self.whisper.clone())
            .map_err(|e| e.to_string())?;
        let (translator, translate_to_english): (Option<Box<dyn TextTranslator>>, bool) =
            match route {
                Route::CaptionsOnly => (None, false),
                Route::WhisperTranslate => (None, true),
                Route::Apertium => (
                    Some(Box::new(
                        ApertiumTranslator::start(
                            self.spoken,
                            self.caption,
                            Path::new(&self.modes_dir),
                        )
                        .map_err(|e| e.to_string())?,
                    )),
                    false,
                ),
            };
        Ok(Engines {
            recognizer: Box::new(recognizer),
            translator,
            task: AsrTask {
                language: Some(self.spoken),
                translate_to_english,
            },
            spoken: self.spoken,
            caption: self.caption,
        })
    }
}

/// Loaded engines, ready for a [`crate::TranslationPipeline`].
pub struct Engines {
    /// Speech to text.
    pub recognizer: Box<dyn SpeechRecognizer>,
    /// Text to text, when the route needs it.
    pub translator: Option<Box<dyn TextTranslator>>,
    /// What to ask the recognizer.
    pub task: AsrTask,
    /// Spoken language.
    pub spoken: Language,
    /// Caption language.
    pub caption: Language,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines")
            .field("task", &self.task)
            .field("spoken", &self.spoken)
            .field("caption", &self.caption)
            .field("translator", &self.translator.is_some())
            .finish_non_exhaustive()
    }
}
