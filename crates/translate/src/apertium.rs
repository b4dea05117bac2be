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

use crate::languages::{apertium_modes, debian_pair_package, installed_mode, Language};
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

    /// Apertium's answer as it is, before [`tidy`]: what one-shot `apertium -u PAIR` prints
    /// for the same text (trimmed). Serbo-Croatian in Cyrillic is first written in Latin
    /// letters, the only script Apertium's `hbs` data reads.
    pub fn translate_raw(&mut self, text: &str) -> Result<String, MtError> {
        if text.chars().count() > MAX_INPUT_CHARS {
            return Err(MtError::InputTooLong(MAX_INPUT_CHARS));
        }
        let text = if self.source.is_serbo_croatian() {
            serbian_latin(text)
        } else {
            text.to_string()
        };
        let request = escape(&text);
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

impl TextTranslator for ApertiumTranslator {
    fn source(&self) -> Language {
        self.source
    }

    fn target(&self) -> Language {
        self.target
    }

    /// [`ApertiumTranslator::translate_raw`], then [`tidy`].
    fn translate(&mut self, text: &str) -> Result<String, MtError> {
        let raw = self.translate_raw(text)?;
        Ok(tidy(text, &raw))
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

/// Finds the mode file for a pair (see [`apertium_modes`]).
fn find_mode(source: Language, target: Language, modes_dir: &Path) -> Result<PathBuf, MtError> {
    if let Some(path) = installed_mode(source, target, modes_dir) {
        return Ok(path);
    }
    let install = match debian_pair_package(source, target) {
        Some(package) => format!("install it with `apt-get install {package}`"),
        None => "Debian ships no such pair".to_string(),
    };
    Err(MtError::Unavailable(format!(
        "Apertium has no {}→{} pair here (looked for {} in {}); {install}",
        source.code(),
        target.code(),
        apertium_modes(source, target)
            .iter()
            .map(|m| format!("{m}.mode"))
            .collect::<Vec<_>>()
            .join(" or "),
        modes_dir.display(),
    )))
}

/// Makes Apertium's output read like text without changing a word: whitespace runs (left where
/// a pronoun was dropped: "Va a algún lugar y  algo.") become one space, the ends are trimmed,
/// no space stays before `, . ; : ! ? ) ] …` or after `¿ ¡ ( [`, and a sentence starts with a
/// capital when the source's matching sentence did. Sentences are matched by position, and only
/// when source and output have as many; otherwise only the first one is. Letters whose capital is
/// more than one letter (ß) are left alone.
pub fn tidy(source: &str, output: &str) -> String {
    let mut out = String::with_capacity(output.len());
    let mut pending_space = false;
    for c in output.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        let glued_left = matches!(c, ',' | '.' | ';' | ':' | '!' | '?' | ')' | ']' | '…');
        let after_opener = out
            .chars()
            .next_back()
            .is_some_and(|p| matches!(p, '¿' | '¡' | '(' | '['));
        if pending_space && !glued_left && !after_opener {
            out.push(' ');
        }
        pending_space = false;
        out.push(c);
    }
    let wanted = sentence_starts(source);
    let found = sentence_starts(&out);
    let pairs = if wanted.len() == found.len() {
        wanted.len()
    } else {
        1
    };
    let mut capitalise = Vec::new();
    for (w, f) in wanted.iter().zip(&found).take(pairs) {
        let (Some((_, sc)), Some((at, oc))) = (w, f) else {
            continue;
        };
        if sc.is_uppercase() && oc.is_lowercase() {
            let mut upper = oc.to_uppercase();
            if let (Some(u), None) = (upper.next(), upper.next()) {
                capitalise.push((*at, *oc, u));
            }
        }
    }
    // From the end, so earlier byte offsets stay valid.
    for (at, old, new) in capitalise.into_iter().rev() {
        out.replace_range(at..at + old.len_utf8(), new.encode_utf8(&mut [0; 4]));
    }
    out
}

/// The first alphanumeric character of each sentence (a sentence ends at `.`, `!` or `?`
/// followed by whitespace), with its byte offset; `None` for a sentence with none.
fn sentence_starts(text: &str) -> Vec<Option<(usize, char)>> {
    let mut starts = Vec::new();
    let mut looking = true;
    let mut current = None;
    let mut prev_end = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && prev_end {
            if !looking {
                starts.push(current.take());
            }
            looking = true;
        }
        prev_end = matches!(c, '.' | '!' | '?');
        if looking && c.is_alphanumeric() {
            current = Some((i, c));
            looking = false;
        }
    }
    if current.is_some() || !looking {
        starts.push(current);
    }
    starts
}

#[rustfmt::skip] // one letter pair per cell reads as the alphabet table it is
/// Serbian (or Bosnian) Cyrillic → Gaj's Latin alphabet, letter by letter; every other
/// character is kept. Whisper may write Serbian in either script; Apertium reads Latin only.
pub fn serbian_latin(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let latin = match c {
            'А' => "A", 'Б' => "B", 'В' => "V", 'Г' => "G", 'Д' => "D", 'Ђ' => "Đ", 'Е' => "E",
            'Ж' => "Ž", 'З' => "Z", 'И' => "I", 'Ј' => "J", 'К' => "K", 'Л' => "L", 'Љ' => "Lj",
            'М' => "M", 'Н' => "N", 'Њ' => "Nj", 'О' => "O", 'П' => "P", 'Р' => "R", 'С' => "S",
            'Т' => "T", 'Ћ' => "Ć", 'У' => "U", 'Ф' => "F", 'Х' => "H", 'Ц' => "C", 'Ч' => "Č",
            'Џ' => "Dž", 'Ш' => "Š",
            'а' => "a", 'б' => "b", 'в' => "v", 'г' => "g", 'д' => "d", 'ђ' => "đ", 'е' => "e",
            'ж' => "ž", 'з' => "z", 'и' => "i", 'ј' => "j", 'к' => "k", 'л' => "l", 'љ' => "lj",
            'м' => "m", 'н' => "n", 'њ' => "nj", 'о' => "o", 'п' => "p", 'р' => "r", 'с' => "s",
            'т' => "t", 'ћ' => "ć", 'у' => "u", 'ф' => "f", 'х' => "h", 'ц' => "c", 'ч' => "č",
            'џ' => "dž", 'ш' => "š",
            other => {
                out.push(other);
                continue;
            }
        };
        out.push_str(latin);
    }
    out
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
        let err = find_mode(Language::English, Language::Catalan, dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("apt-get install apertium-eng-cat"), "{text}");
        let err = find_mode(Language::English, Language::French, dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("Debian ships no such pair"),
            "{err}"
        );
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

    #[test]
    fn tidy_fixes_spacing_and_capitals_only() {
        let cases = [
            // A dropped pronoun leaves two spaces.
            (
                "Go somewhere and do something.",
                "Va a algún lugar y  algo.",
                "Va a algún lugar y algo.",
            ),
            ("Hello", "  hola  ", "Hola"),
            ("Is it? Yes.", "¿ Es ? sí .", "¿Es? Sí."),
            ("a list , here", "una lista , aquí", "una lista, aquí"),
            ("(see) it", "( ver ) lo", "(ver) lo"),
            // Source not capitalised: output's case stays as Apertium wrote it.
            ("yes", "sí", "sí"),
            // Numbers start the sentence: nothing to capitalise.
            ("5 dollars.", "5 dólares.", "5 dólares."),
            // Sentence counts differ: only the first sentence is matched.
            ("One. Two. Three.", "uno. dos.", "Uno. dos."),
            ("Straße", "ßtraße", "ßtraße"),
            ("", "", ""),
        ];
        for (source, output, want) in cases {
            assert_eq!(tidy(source, output), want, "for {output:?}");
        }
    }

    #[test]
    fn serbian_cyrillic_becomes_gaj_latin() {
        assert_eq!(
            serbian_latin("Моја кућа је веома велика, Љиљана! Џеп."),
            "Moja kuća je veoma velika, Ljiljana! Džep."
        );
        assert_eq!(serbian_latin("Moja kuća 42"), "Moja kuća 42");
    }

    fn squashed_lower(text: &str) -> String {
        text.chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_lowercase)
            .collect()
    }

    proptest::proptest! {
        /// Whatever Apertium prints, tidying changes only spacing and the case of letters:
        /// the characters, in order and lowercased, are the same.
        #[test]
        fn tidy_never_changes_a_word(
            source in "[A-Za-zÀ-ÿ .,;:!?¿¡()ß0-9]{0,40}",
            output in "[A-Za-zÀ-ÿ .,;:!?¿¡()ß0-9\t]{0,60}",
        ) {
            let tidied = tidy(&source, &output);
            proptest::prop_assert_eq!(squashed_lower(&tidied), squashed_lower(&output));
            proptest::prop_assert!(!tidied.contains("  "), "{:?}", tidied);
            proptest::prop_assert_eq!(tidied.trim(), tidied.as_str());
            for bad in [" ,", " .", " ?", " !", " ;", " :", " )", "¿ ", "( "] {
                proptest::prop_assert!(!tidied.contains(bad), "{:?} in {:?}", bad, tidied);
            }
            // Idempotent: tidying tidy text changes nothing.
            proptest::prop_assert_eq!(tidy(&source, &tidied), tidied.clone());
        }
    }
}
