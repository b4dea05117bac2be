//! Languages, and which translation routes this machine can run.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

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
    /// Icelandic.
    Icelandic,
    /// Macedonian.
    Macedonian,
    /// Serbian: Serbo-Croatian as Whisper's `sr` (Apertium's `hbs`, variant `SR`).
    Serbian,
    /// Croatian: Serbo-Croatian as Whisper's `hr` (Apertium's `hbs`, variant `HR`).
    Croatian,
    /// Bosnian: Serbo-Croatian as Whisper's `bs` (Apertium's `hbs`, variant `BS`).
    Bosnian,
}

const ALL: [Language; 15] = [
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
    Language::Icelandic,
    Language::Macedonian,
    Language::Serbian,
    Language::Croatian,
    Language::Bosnian,
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
            Self::Icelandic => "is",
            Self::Macedonian => "mk",
            Self::Serbian => "sr",
            Self::Croatian => "hr",
            Self::Bosnian => "bs",
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
            Self::Icelandic => "Icelandic",
            Self::Macedonian => "Macedonian",
            Self::Serbian => "Serbian",
            Self::Croatian => "Croatian",
            Self::Bosnian => "Bosnian",
        }
    }

    /// ISO 639-3 code (also accepted on the command line). Unlike [`apertium_code`] it tells
    /// Serbian, Croatian and Bosnian apart.
    pub fn iso639_3(self) -> &'static str {
        match self {
            Self::Serbian => "srp",
            Self::Croatian => "hrv",
            Self::Bosnian => "bos",
            other => apertium_code(other),
        }
    }

    /// True for the three standards of Serbo-Croatian, which share Apertium's `hbs` data.
    pub fn is_serbo_croatian(self) -> bool {
        matches!(self, Self::Serbian | Self::Croatian | Self::Bosnian)
    }
}

/// ISO 639-3 code as Apertium names its pairs: Serbian, Croatian and Bosnian are all `hbs`
/// (one language in Apertium, with a variant per standard for output).
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
        Language::Icelandic => "isl",
        Language::Macedonian => "mkd",
        Language::Serbian | Language::Croatian | Language::Bosnian => "hbs",
    }
}

/// The Apertium mode files that translate `from` → `to`, best first. Apertium names pairs with
/// 3-letter codes (`eng-cat`) or, in older packages, 2-letter ones (`en-gl`); into Serbian,
/// Croatian or Bosnian it has a variant mode per standard (`eng-hbs_SR`), and out of them one
/// analyser reads all three (`hbs-eng`).
pub fn apertium_modes(from: Language, to: Language) -> Vec<String> {
    let variant = match to {
        Language::Serbian => Some("SR"),
        Language::Croatian => Some("HR"),
        Language::Bosnian => Some("BS"),
        _ => None,
    };
    let mut names = Vec::new();
    if let Some(v) = variant {
        names.push(format!("{}-hbs_{v}", apertium_code(from)));
    }
    names.push(format!("{}-{}", apertium_code(from), apertium_code(to)));
    names.push(format!("{}-{}", from.code(), to.code()));
    names
}

/// The first of [`apertium_modes`] installed in `modes_dir`, as a path to its `.mode` file.
pub fn installed_mode(from: Language, to: Language, modes_dir: &Path) -> Option<PathBuf> {
    apertium_modes(from, to)
        .into_iter()
        .map(|name| modes_dir.join(format!("{name}.mode")))
        .find(|path| path.is_file())
}

/// The Debian package holding the Apertium pair for `from` → `to`, if Debian (bookworm) ships
/// one. Every such pair has English on one side; some only go into English.
pub fn debian_pair_package(from: Language, to: Language) -> Option<&'static str> {
    use Language::*;
    let (other, into_english) = match (from, to) {
        (English, other) if other != English => (other, false),
        (other, English) if other != English => (other, true),
        _ => return None,
    };
    let (package, both_ways) = match other {
        Spanish => ("apertium-eng-spa", true),
        Catalan => ("apertium-eng-cat", true),
        Galician => ("apertium-en-gl", true),
        Esperanto => ("apertium-eo-en", true),
        Serbian | Croatian | Bosnian => ("apertium-hbs-eng", true),
        Basque => ("apertium-eu-en", false),
        Icelandic => ("apertium-isl-eng", false),
        Macedonian => ("apertium-mkd-eng", false),
        English | French | German | Italian | Portuguese => return None,
    };
    (both_ways || into_english).then_some(package)
}

/// The `scripts/install-models --pairs` name that installs [`debian_pair_package`].
fn install_name(language: Language) -> &'static str {
    if language.is_serbo_croatian() {
        "hbs"
    } else {
        language.code()
    }
}

/// A language code we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown language '{0}'; known: en, es, fr, de, it, pt, ca, gl, eu, eo, is, mk, \
     sr, hr, bs (Serbo-Croatian: Serbian, Croatian, Bosnian)"
)]
pub struct UnknownLanguage(pub String);

impl FromStr for Language {
    type Err = UnknownLanguage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        ALL.iter()
            .copied()
            .find(|l| l.code() == lower || l.iso639_3() == lower)
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
    // The route first: a direction with no route is reported as such, whatever models exist.
    let route = if from == to {
        Some(Route::CaptionsOnly)
    } else if installed_mode(from, to, modes_dir).is_some() {
        Some(Route::Apertium)
    } else if to == Language::English && models.has(ModelName::Base) {
        Some(Route::WhisperTranslate)
    } else {
        None
    };
    if let Some(route) = route {
        let speech_model = if route == Route::WhisperTranslate {
            ModelName::Base
        } else if from == Language::English && models.has(ModelName::TinyEn) {
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
        return Ok((speech_model, route));
    }
    let whisper = if to == Language::English {
        "; Whisper's translate task would do it with the multilingual base model \
         (bash scripts/install-models base)"
    } else {
        ""
    };
    if let Some(package) = debian_pair_package(from, to) {
        let name = install_name(if from == Language::English { to } else { from });
        return Err(format!(
            "no {}→{} translation here: its Apertium pair is not installed in {} (bash \
             scripts/install-models --pairs {name}, i.e. {package}){whisper}",
            from.code(),
            to.code(),
            modes_dir.display(),
        ));
    }
    if from == Language::English {
        return Err(format!(
            "no route for English→{}: Debian ships no Apertium pair for it and no neural \
             translation weights can be fetched here; aparté does not pivot through Spanish \
             (measured: unusable)",
            to.name()
        ));
    }
    if to == Language::English {
        return Err(format!(
            "no {}→en translation here: Debian ships no Apertium pair for it{whisper}",
            from.code()
        ));
    }
    Err(format!(
        "no route for {}→{}: Apertium pairs in Debian all have English on one side, and \
         aparté does not chain two pairs through English (errors compound)",
        from.name(),
        to.name()
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
            assert_eq!(l.iso639_3().parse::<Language>().unwrap(), l);
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
        assert!(err.contains("install-models --pairs es"), "{err}");
        let err = plan(Language::Serbian, Language::English, &models, empty.path()).unwrap_err();
        assert!(err.contains("--pairs hbs"), "{err}");
    }

    #[test]
    fn english_to_french_german_italian_portuguese_say_there_is_no_route() {
        let empty = tempfile::tempdir().unwrap();
        let models = ModelDir::new(empty.path());
        for to in [
            Language::French,
            Language::German,
            Language::Italian,
            Language::Portuguese,
        ] {
            let err = plan(Language::English, to, &models, empty.path()).unwrap_err();
            assert!(err.starts_with("no route for English→"), "{err}");
            assert!(err.contains("does not pivot through Spanish"), "{err}");
            assert_eq!(debian_pair_package(Language::English, to), None);
        }
        // A pair Debian ships only into English is not offered the other way.
        assert_eq!(
            debian_pair_package(Language::English, Language::Basque),
            None
        );
        assert_eq!(
            debian_pair_package(Language::Basque, Language::English),
            Some("apertium-eu-en")
        );
    }

    #[test]
    fn serbo_croatian_maps_to_apertium_hbs_with_a_variant_per_standard() {
        assert_eq!(
            apertium_modes(Language::English, Language::Croatian),
            ["eng-hbs_HR", "eng-hbs", "en-hr"]
        );
        assert_eq!(
            apertium_modes(Language::Serbian, Language::English)[0],
            "hbs-eng"
        );
        assert_eq!("srp".parse::<Language>().unwrap(), Language::Serbian);
        // "hbs" names three languages; the user must say which (Whisper needs to know).
        assert!("hbs".parse::<Language>().is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("eng-hbs.mode"), "").unwrap();
        assert_eq!(
            installed_mode(Language::English, Language::Bosnian, dir.path()).unwrap(),
            dir.path().join("eng-hbs.mode")
        );
        std::fs::write(dir.path().join("eng-hbs_BS.mode"), "").unwrap();
        assert_eq!(
            installed_mode(Language::English, Language::Bosnian, dir.path()).unwrap(),
            dir.path().join("eng-hbs_BS.mode")
        );
    }

    #[test]
    fn install_models_knows_every_pair_debian_ships() {
        // scripts/install-models --pairs must install what `aparte languages` tells users to.
        let script = include_str!("../../../scripts/install-models");
        for &l in Language::all() {
            for (from, to) in [(l, Language::English), (Language::English, l)] {
                if let Some(package) = debian_pair_package(from, to) {
                    let entry = format!("[{}]={package}", install_name(l));
                    assert!(script.contains(&entry), "install-models lacks {entry}");
                }
            }
        }
    }
}
