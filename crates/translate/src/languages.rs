//! Languages, and which translation routes this machine can run.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::apertium;
use crate::models::{ModelDir, ModelName};

/// A spoken language aparté knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    /// English.
    English,
    /// Spanish.
    Spanish,
    /// French.
    French,
    /// German.
    German,
    /// Italian.
    Italian,
    /// Portuguese.
    Portuguese,
    /// Catalan.
    Catalan,
    /// Galician.
    Galician,
    /// Basque.
    Basque,
    /// Esperanto.
    Esperanto,
}

const ALL: [Language; 10] = [
    Language::English,
    Language::Spanish,
    Language::French,
    Language::German,
    Language::Italian,
    Language::Portuguese,
    Language::Catalan,
    Language::Galician,
    Language::Basque,
    Language::Esperanto,
];

impl Language {
    /// Every language known by name.
    pub fn all() -> &'static [Language] {
        &ALL
    }

    /// ISO 639-1 code, as Whisper and captions use it.
    pub fn code(self) -> &'static str {
        match self {
            Self::English => "en",
            Self::Spanish => "es",
            Self::French => "fr",
            Self::German => "de",
            Self::Italian => "it",
            Self::Portuguese => "pt",
            Self::Catalan => "ca",
            Self::Galician => "gl",
            Self::Basque => "eu",
            Self::Esperanto => "eo",
        }
    }

    /// English name.
    pub fn name(self) -> &'static str {
        match self {
            Self::English => "English",
            Self::Spanish => "Spanish",
            Self::French => "French",
            Self::German => "German",
            Self::Italian => "Italian",
            Self::Portuguese => "Portuguese",
            Self::Catalan => "Catalan",
            Self::Galician => "Galician",
            Self::Basque => "Basque",
            Self::Esperanto => "Esperanto",
        }
    }
}

/// ISO 639-3 code, as Apertium names its pairs.
pub fn apertium_code(language: Language) -> &'static str {
    match language {
        Language::English => "eng",
        Language::Spanish => "spa",
        Language::French => "fra",
        Language::German => "deu",
        Language::Italian => "ita",
        Language::Portuguese => "por",
        Language::Catalan => "cat",
        Language::Galician => "glg",
        Language::Basque => "eus",
        Language::Esperanto => "epo",
    }
}

/// A language code we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown language '{0}'; known: en, es, fr, de, it, pt, ca, gl, eu, eo")]
pub struct UnknownLanguage(pub String);

impl FromStr for Language {
    type Err = UnknownLanguage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        ALL.iter()
            .copied()
            .find(|l| l.code() == lower || apertium_code(*l) == lower)
            .ok_or(UnknownLanguage(s.to_string()))
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// How speech in one language becomes text in another on this machine, if it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Same language: captions only.
    CaptionsOnly,
    /// Recognize, then translate the text with an Apertium pair.
    Apertium,
    /// Whisper's own translate task (any language → English, multilingual model).
    WhisperTranslate,
}

/// One line of `aparte languages`: a direction and whether it works here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// Spoken language.
    pub from: Language,
    /// Caption language.
    pub to: Language,
    /// How it would run, or why it cannot.
    pub route: Result<Route, String>,
}

/// Picks the speech model and translation route for `from` speech shown in `to`.
pub fn plan(
    from: Language,
    to: Language,
    models: &ModelDir,
    modes_dir: &Path,
) -> Result<(ModelName, Route), String> {
    let english_only = from == Language::English && models.has(ModelName::TinyEn);
    let speech_model = if english_only {
        ModelName::TinyEn
    } else if models.has(ModelName::Base) {
        ModelName::Base
    } else {
        let wanted = if from == Language::English {
            "tiny.en or base"
        } else {
            "base (multilingual)"
        };
        return Err(format!(
            "no speech model for {} in {} (needs {wanted}; run `bash scripts/install-models`)",
            from.name(),
            models.path().display()
        ));
    };
    if from == to {
        return Ok((speech_model, Route::CaptionsOnly));
    }
    let pairs = apertium::installed_pairs(modes_dir);
    let has_pair = pairs.iter().any(|(a, b)| {
        (a == apertium_code(from) || a == from.code()) && (b == apertium_code(to) || b == to.code())
    });
    if has_pair {
        return Ok((speech_model, Route::Apertium));
    }
    if to == Language::English && models.has(ModelName::Base) {
        return Ok((ModelName::Base, Route::WhisperTranslate));
    }
    Err(format!(
        "no {}→{} translation here: Apertium has no such pair in {} (try `apt-get install \
         apertium-{}-{}`; Debian has none for some pairs, e.g. English–French){}",
        from.code(),
        to.code(),
        modes_dir.display(),
        apertium_code(from),
        apertium_code(to),
        if to == Language::English {
            ", and Whisper's translate task needs the multilingual base model"
        } else {
            ""
        }
    ))
}

/// Every direction between known languages, and whether this machine can caption it.
pub fn availability(models: &ModelDir, modes_dir: &Path) -> Vec<Availability> {
    let mut out = Vec::new();
    for &from in Language::all() {
        for &to in Language::all() {
            out.push(Availability {
                from,
                to,
                route: plan(from, to, models, modes_dir).map(|(_, route)| route),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_parse_both_ways() {
        for &l in Language::all() {
            assert_eq!(l.code().parse::<Language>().unwrap(), l);
            assert_eq!(apertium_code(l).parse::<Language>().unwrap(), l);
        }
        assert_eq!(" ES ".parse::<Language>().unwrap(), Language::Spanish);
        let err = "klingon".parse::<Language>().unwrap_err();
        assert!(err.to_string().contains("unknown language 'klingon'"));
    }

    #[test]
    fn plan_explains_what_is_missing() {
        let empty = tempfile::tempdir().unwrap();
        let models = ModelDir::new(empty.path());
        let err = plan(Language::English, Language::Spanish, &models, empty.path()).unwrap_err();
        assert!(err.contains("install-models"), "{err}");
    }
}
