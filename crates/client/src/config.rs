//! The config file: the user's defaults for `aparte call` and the home folder, in TOML.
//!
//! Precedence, for every setting: a command-line flag (or its environment variable) beats the
//! config file, which beats the built-in default. The file is parsed strictly (an unknown or
//! misspelt key is an error naming the file), because a silently ignored `relay_only = true`
//! would leak the user's address to the peer.
//!
//! Where the file is: `--config FILE` (or `APARTE_CONFIG`) if given; else `config.toml` in the
//! home folder given by `--home`/`APARTE_HOME`; else `config.toml` in the platform config
//! folder (`~/.config/aparte/config.toml` on Linux). Only an explicitly named file must exist.
//! Relative paths inside the file are relative to the file's folder.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `--input` values that are not file names.
pub const INPUT_KEYWORDS: [&str; 3] = ["mic", "tone", "silence"];
/// `--output` values that are not file names.
pub const OUTPUT_KEYWORDS: [&str; 2] = ["speaker", "null"];

/// Built-in default for `input`.
pub const DEFAULT_INPUT: &str = "tone";
/// Built-in default for `output`.
pub const DEFAULT_OUTPUT: &str = "null";

/// The settings a config file may hold; the same shape carries command-line overrides. Every
/// field is optional: unset means "ask the next layer".
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Signaling server URL (`ws://…` or `wss://…`).
    pub server: Option<String>,
    /// Join token for servers that require one.
    pub token: Option<String>,
    /// What to send: `mic`, `tone`, `silence` or a WAV file path.
    pub input: Option<String>,
    /// Where received audio goes: `speaker`, `null` or a WAV file path.
    pub output: Option<String>,
    /// Microphone to use with `input = "mic"` (a name from `aparte devices`).
    pub input_device: Option<String>,
    /// Speaker to use with `output = "speaker"` (a name from `aparte devices`).
    pub output_device: Option<String>,
    /// Use only the TURN relay.
    pub relay_only: Option<bool>,
    /// Folder for the identity key and known peers.
    pub home: Option<PathBuf>,
    /// The language you speak: turns on captions of your speech (`--lang`).
    pub lang: Option<String>,
    /// The language the peer reads: captions are translated into it (`--peer-lang`).
    pub peer_lang: Option<String>,
    /// Where the speech models are (`--model-dir`).
    pub model_dir: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for `wss://`, for a self-signed deployment
    /// (`--ca-file`).
    pub ca_file: Option<PathBuf>,
}

impl Settings {
    /// `self` (the higher-precedence layer) with every unset field taken from `lower`.
    pub fn over(self, lower: Settings) -> Settings {
        Settings {
            server: self.server.or(lower.server),
            token: self.token.or(lower.token),
            input: self.input.or(lower.input),
            output: self.output.or(lower.output),
            input_device: self.input_device.or(lower.input_device),
            output_device: self.output_device.or(lower.output_device),
            relay_only: self.relay_only.or(lower.relay_only),
            home: self.home.or(lower.home),
            lang: self.lang.or(lower.lang),
            peer_lang: self.peer_lang.or(lower.peer_lang),
            model_dir: self.model_dir.or(lower.model_dir),
            ca_file: self.ca_file.or(lower.ca_file),
        }
    }

    /// The input, or the built-in default.
    pub fn input_or_default(&self) -> &str {
        self.input.as_deref().unwrap_or(DEFAULT_INPUT)
    }

    /// The output, or the built-in default.
    pub fn output_or_default(&self) -> &str {
        self.output.as_deref().unwrap_or(DEFAULT_OUTPUT)
    }
}

/// A config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("config file {}: {message}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, with line and column.
        message: String,
    },
}

/// Where the config file is and whether it must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub path: PathBuf,
    /// Named by the user (`--config`): a missing file is an error.
    pub explicit: bool,
}

/// Finds the config file: `--config` beats `<--home>/config.toml`, which beats the platform
/// default. `None` only when the platform has no config folder and nothing was given.
pub fn locate(config_flag: Option<&Path>, home_flag: Option<&Path>) -> Option<Location> {
    if let Some(path) = config_flag {
        return Some(Location {
            path: path.to_owned(),
            explicit: true,
        });
    }
    let dir = match home_flag {
        Some(home) => home.to_owned(),
        None => default_home()?,
    };
    Some(Location {
        path: dir.join("config.toml"),
        explicit: false,
    })
}

/// The platform's default home folder for aparté (`~/.config/aparte` on Linux).
pub fn default_home() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("aparte"))
}

/// Reads the config file at `location`; a missing file that was not named explicitly gives
/// empty settings.
pub fn load(location: &Location) -> Result<Settings, ConfigError> {
    let text = match std::fs::read_to_string(&location.path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !location.explicit => {
            return Ok(Settings::default())
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: location.path.clone(),
                source,
            })
        }
    };
    parse(&text, &location.path)
}

/// Parses config text read from `path`, resolving relative paths against its folder.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    let mut settings: Settings = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    if let Some(home) = settings.home.take() {
        settings.home = Some(base.join(home));
    }
    if let Some(ca) = settings.ca_file.take() {
        settings.ca_file = Some(base.join(ca));
    }
    if let Some(models) = settings.model_dir.take() {
        settings.model_dir = Some(base.join(models));
    }
    let resolve = |value: Option<String>, keywords: &[&str]| {
        value.map(|v| {
            if keywords.contains(&v.as_str()) {
                v
            } else {
                base.join(&v).to_string_lossy().into_owned()
            }
        })
    };
    settings.input = resolve(settings.input.take(), &INPUT_KEYWORDS);
    settings.output = resolve(settings.output.take(), &OUTPUT_KEYWORDS);
    Ok(settings)
}

/// A commented example, printed by `aparte config example`.
pub const EXAMPLE: &str = r#"# aparté config file (TOML). Every key is optional; command-line flags override it.
# server = "wss://signal.example.org/ws" # signaling server URL
# ca_file = "/path/to/ca.pem"            # trust this CA too (a self-signed server's)
# token = "…"                            # join token, if the server requires one
# input = "mic"                          # mic | tone | silence | path/to/file.wav
# output = "speaker"                     # speaker | null | path/to/file.wav
# input_device = "default"               # a name from `aparte devices` (with input = "mic")
# output_device = "default"              # a name from `aparte devices` (with output = "speaker")
# relay_only = false                     # true: only the TURN relay, the peer never sees your IP
# home = "/path/to/folder"               # identity key and known peers (default: this folder)
# lang = "en"                            # the language you speak: captions of your speech
# peer_lang = "es"                       # the language your peer reads: captions translated
# model_dir = "/path/to/models"          # speech models (default: ~/.local/share/aparte/models)
"#;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_every_key_and_resolves_paths_against_the_file() {
        let text = r#"
            server = "wss://signal.example.org/"
            token = "t0k"
            input = "speech.wav"
            output = "speaker"
            input_device = "hw:CARD=PCH,DEV=0"
            output_device = "null"
            relay_only = true
            home = "state"
        "#;
        let s = parse(text, Path::new("/etc/aparte/config.toml")).unwrap();
        assert_eq!(s.server.as_deref(), Some("wss://signal.example.org/"));
        assert_eq!(s.token.as_deref(), Some("t0k"));
        assert_eq!(s.input.as_deref(), Some("/etc/aparte/speech.wav"));
        assert_eq!(s.output.as_deref(), Some("speaker"));
        assert_eq!(s.input_device.as_deref(), Some("hw:CARD=PCH,DEV=0"));
        assert_eq!(s.output_device.as_deref(), Some("null"));
        assert_eq!(s.relay_only, Some(true));
        assert_eq!(s.home, Some(PathBuf::from("/etc/aparte/state")));
        // Absolute paths stay as they are.
        let s = parse("input = \"/tmp/a.wav\"", Path::new("/x/config.toml")).unwrap();
        assert_eq!(s.input.as_deref(), Some("/tmp/a.wav"));
    }

    #[test]
    fn the_commented_example_parses_and_an_empty_file_is_all_defaults() {
        assert_eq!(
            parse(EXAMPLE, Path::new("c.toml")).unwrap(),
            Settings::default()
        );
        assert_eq!(parse("", Path::new("c.toml")).unwrap(), Settings::default());
    }

    #[test]
    fn bad_files_give_errors_with_the_path() {
        let path = Path::new("/home/u/.config/aparte/config.toml");
        for (text, expect) in [
            ("relay-only = true", "unknown field `relay-only`"),
            ("relay_only = \"yes\"", "relay_only"),
            ("server = ", "config.toml"),
            ("[server]\nurl = \"x\"", "server"),
        ] {
            let e = parse(text, path).unwrap_err().to_string();
            assert!(
                e.starts_with("config file /home/u/.config/aparte/config.toml: "),
                "{e}"
            );
            assert!(e.contains(expect), "{text:?} → {e}");
        }
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file = Settings {
            server: Some("wss://from-file/".into()),
            input: Some("mic".into()),
            relay_only: Some(true),
            input_device: Some("null".into()),
            ..Settings::default()
        };
        let flags = Settings {
            server: Some("ws://from-flag/".into()),
            relay_only: Some(false),
            ..Settings::default()
        };
        let s = flags.over(file);
        assert_eq!(s.server.as_deref(), Some("ws://from-flag/"));
        assert_eq!(s.relay_only, Some(false));
        assert_eq!(s.input_or_default(), "mic");
        assert_eq!(s.input_device.as_deref(), Some("null"));
        // Neither layer sets these: built-in defaults.
        assert_eq!(s.output_or_default(), DEFAULT_OUTPUT);
        assert_eq!(s.token, None);
        assert_eq!(Settings::default().input_or_default(), DEFAULT_INPUT);
    }

    #[test]
    fn location_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("mine.toml");
        let home = dir.path().join("home");
        let loc = locate(Some(&named), Some(&home)).unwrap();
        assert_eq!(
            loc,
            Location {
                path: named.clone(),
                explicit: true
            }
        );
        // A named file must exist; the default one need not.
        let e = load(&loc).unwrap_err().to_string();
        assert!(e.contains("mine.toml"), "{e}");
        let loc = locate(None, Some(&home)).unwrap();
        assert_eq!(loc.path, home.join("config.toml"));
        assert!(!loc.explicit);
        assert_eq!(load(&loc).unwrap(), Settings::default());
        std::fs::write(&named, "output = \"out.wav\"\n").unwrap();
        let s = load(&locate(Some(&named), None).unwrap()).unwrap();
        assert_eq!(
            s.output,
            Some(dir.path().join("out.wav").to_string_lossy().into_owned())
        );
    }
}
