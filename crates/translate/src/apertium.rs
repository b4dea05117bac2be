//! Machine translation with Apertium, as one long-lived pipeline process per language pair.
//!
//! Starting `apertium eng-spa` for every sentence costs about 0.35 s (it loads every
//! dictionary each time); a running pipeline answers in milliseconds. The stock `apertium -z`
//! script never emits the `\0` that ends an answer in text mode, so we run the stages of the
//! pair's `.mode` file ourselves: `apertium-wblank-mode -z` rewrites it with every stage in
//! null-flush mode, and each request ends with `" \0"`. Details and measurements are in
//! `docs/TRANSLATION.md`.
//!
//! The process runs locally, reads stdin and writes stdout; it never touches the network.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use crate::languages::{apertium_code, Language};
use crate::{MtError, TextTranslator};

/// Where Debian installs Apertium's mode files.
pub const DEFAULT_MODES_DIR: &str = "/usr/share/apertium/modes";
/// How long one sentence may take before the pipeline is declared stuck and restarted.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest input accepted, in characters (a caption is far shorter).
const MAX_INPUT_CHARS: usize = 2000;
/// Longest answer accepted, in bytes, so a misbehaving stage cannot grow our memory.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A running Apertium pipeline for one language pair.
#[derive(Debug)]
pub struct ApertiumTranslator {
    source: Language,
    target: Language,
    mode_file: PathBuf,
    process: Option<Pipeline>,
}

#[derive(Debug)]
struct Pipeline {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<Result<String, MtError>>,
}

impl ApertiumTranslator {
    /// Starts the pipeline for `source` → `target`, from the mode files in `modes_dir`.
    pub fn start(source: Language, target: Language, modes_dir: &Path) -> Result<Self, MtError> {
        let mode_file = find_mode(source, target, modes_dir)?;
        let process = Pipeline::spawn(&mode_file)?;
        Ok(Self {
            source,
            target,
            mode_file,
            process: Some(process),
        })
    }

    /// The `.mode` file in use.
    pub fn mode_file(&self) -> &Path {
        &self.mode_file
    }
}

impl TextTranslator for ApertiumTranslator {
    fn source(&self) -> Language {
        self.source
    }

    fn target(&self) -> Language {
        self.target
    }

    fn translate(&mut self, text: &str) -> Result<String, MtError> {
        if text.chars().count() > MAX_INPUT_CHARS {
            return Err(MtError::InputTooLong(MAX_INPUT_CHARS));
        }
        let request = escape(text);
        if request.trim().is_empty() {
            return Ok(String::new());
        }
        let process = match self.process.as_mut() {
            Some(p) => p,
            None => self.process.insert(Pipeline::spawn(&self.mode_file)?),
        };
        match process.ask(&request) {
            Ok(answer) => Ok(unescape(&answer).trim().to_string()),
            Err(e) => {
                // A pipeline that failed once may be half-way through an answer: start afresh.
                self.process = None;
                Err(e)
            }
        }
    }
}

impl Pipeline {
    fn spawn(mode_file: &Path) -> Result<Self, MtError> {
        let script = Command::new("apertium-wblank-mode")
            .arg("-z")
            .arg(mode_file)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| MtError::Unavailable(format!("cannot run apertium-wblank-mode: {e}")))?;
        if !script.status.success() {
            return Err(MtError::Unavailable(format!(
                "apertium-wblank-mode failed on {}",
                mode_file.display()
            )));
        }
        let script = String::from_utf8(script.stdout)
            .map_err(|_| MtError::Unavailable("mode script is not UTF-8".into()))?;
        // The mode script uses $1 for the generator's unknown-word option and $2 for the
        // tagger's; "-n" leaves unknown words unmarked, as `apertium -u` does.
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script.trim())
            .arg("aparte-apertium")
            .arg("-n")
            .arg("")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                MtError::Unavailable(format!("cannot start the Apertium pipeline: {e}"))
            })?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| MtError::Unavailable("pipeline has no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| MtError::Unavailable("pipeline has no stdout".into()))?;
        let (tx, answers) = mpsc::sync_channel(4);
        std::thread::Builder::new()
            .name("apertium-reader".into())
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                loop {
                    let mut answer = Vec::new();
                    let read = (&mut reader)
                        .take(MAX_ANSWER_BYTES as u64 + 1)
                        .read_until(0, &mut answer);
                    let message = match read {
                        Ok(0) => Err(MtError::Failed("the Apertium pipeline exited".into())),
                        Ok(_) if answer.last() != Some(&0) => {
                            Err(MtError::Failed("answer too long or cut short".into()))
                        }
                        Ok(_) => {
                            answer.pop();
                            String::from_utf8(answer)
                                .map_err(|_| MtError::Failed("answer is not UTF-8".into()))
                        }
                        Err(e) => Err(MtError::Failed(format!("reading the pipeline: {e}"))),
                    };
                    let stop = message.is_err();
                    if tx.send(message).is_err() || stop {
                        return;
                    }
                }
            })
            .map_err(|e| MtError::Unavailable(format!("cannot start a reader thread: {e}")))?;
        Ok(Self {
            child,
            stdin,
            answers,
        })
    }

    fn ask(&mut self, request: &str) -> Result<String, MtError> {
        self.stdin
            .write_all(request.as_bytes())
            .and_then(|()| self.stdin.write_all(b" \0"))
            .and_then(|()| self.stdin.flush())
            .map_err(|e| MtError::Failed(format!("writing to the pipeline: {e}")))?;
        match self.answers.recv_timeout(ANSWER_TIMEOUT) {
            Ok(answer) => answer,
            Err(RecvTimeoutError::Timeout) => Err(MtError::Failed(format!(
                "no answer within {} s",
                ANSWER_TIMEOUT.as_secs()
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                Err(MtError::Failed("the Apertium pipeline exited".into()))
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // bash runs the stages as its children; killing bash closes their pipes and they exit
        // on end of input.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds the mode file for a pair; Apertium names pairs with 3-letter or 2-letter codes.
fn find_mode(source: Language, target: Language, modes_dir: &Path) -> Result<PathBuf, MtError> {
    let candidates = [
        format!("{}-{}.mode", apertium_code(source), apertium_code(target)),
        format!("{}-{}.mode", source.code(), target.code()),
    ];
    for name in &candidates {
        let path = modes_dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(MtError::Unavailable(format!(
        "Apertium has no {}→{} pair here (looked for {} in {}); on Debian install it with \
         `apt-get install apertium-{}-{}`",
        source.code(),
        target.code(),
        candidates.join(" or "),
        modes_dir.display(),
        apertium_code(source),
        apertium_code(target),
    )))
}

/// Lists the pairs installed in `modes_dir` as (source, target) codes as Apertium names them.
pub fn installed_pairs(modes_dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(modes_dir) else {
        return Vec::new();
    };
    let mut pairs: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| {
            let stem = name.strip_suffix(".mode")?;
            let (a, b) = stem.split_once('-')?;
            let plain = |s: &str| s.bytes().all(|c| c.is_ascii_lowercase()) && !s.is_empty();
            (plain(a) && plain(b)).then(|| (a.to_string(), b.to_string()))
        })
        .collect();
    pairs.sort();
    pairs
}

/// Text → Apertium stream format: control characters become spaces and the stream's reserved
/// characters are backslash-escaped, as `apertium-destxt` would do.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push(' ');
            continue;
        }
        if matches!(
            c,
            '^' | '$'
                | '/'
                | '<'
                | '>'
                | '{'
                | '}'
                | '['
                | ']'
                | '\\'
                | '@'
                | '*'
                | '#'
                | '+'
                | '|'
                | '~'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Undoes the stream format's backslash escapes.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn escaping_round_trips_reserved_characters() {
        let text = "5$ [a] ^b^ c/d <e> @f *g* #h {i} \\ + | ~";
        assert_eq!(unescape(&escape(text)), text);
        assert_eq!(escape("a\0b\nc"), "a b c");
    }

    #[test]
    fn a_missing_pair_says_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_mode(Language::English, Language::French, dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("apt-get install apertium-eng-fra"), "{text}");
    }

    #[test]
    fn installed_pairs_reads_mode_names() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["eng-spa.mode", "spa-eng_US.mode", "README", "spa-eng.mode"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(
            installed_pairs(dir.path()),
            vec![("eng".into(), "spa".into()), ("spa".into(), "eng".into())]
        );
    }
}
