//! Captions: what a speaker's endpoint recognized and translated, how it travels to the peer,
//! and how it is written to a WebVTT file.
//!
//! On the wire a caption is a small JSON object inside the call's encrypted data channel (the
//! e2ee data key protects it; see `docs/TRANSLATION.md`). It arrives from the peer, so it is
//! hostile input: [`Caption::decode`] bounds the size, rejects unknown fields and checks every
//! field before anything is shown.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

/// Largest encoded caption accepted, in bytes.
pub const MAX_CAPTION_BYTES: usize = 4096;
/// Longest text (original or translation) accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;
/// Version of the caption wire format.
pub const CAPTION_VERSION: u8 = 1;

/// One caption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caption {
    /// Wire format version, [`CAPTION_VERSION`].
    pub v: u8,
    /// Utterance number; a partial and its final share it.
    pub seq: u64,
    /// False for a partial (the utterance is still going), true for the final text.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Start of the utterance in the speaker's audio stream, in ms since the stream began.
    pub start_ms: u64,
    /// End of the utterance, in ms since the stream began.
    pub end_ms: u64,
    /// Language of `text` (ISO 639-1, e.g. "en").
    pub lang: String,
    /// What was said, as recognized.
    pub text: String,
    /// The translation, if the speaker's endpoint made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translation: Option<Translation>,
}

/// A translated caption text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Translation {
    /// Target language (ISO 639-1).
    pub lang: String,
    /// Translated text.
    pub text: String,
}

/// Why a caption from the peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptionError {
    /// More than [`MAX_CAPTION_BYTES`].
    #[error("caption of {0} bytes is larger than the {MAX_CAPTION_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not JSON of the right shape (the message says where).
    #[error("malformed caption: {0}")]
    Malformed(String),
    /// A version this build does not speak.
    #[error("caption version {0} is not supported (this build speaks {CAPTION_VERSION})")]
    Version(u8),
    /// A language code that is not 2–3 lowercase ASCII letters.
    #[error("caption language code is not 2-3 lowercase letters")]
    BadLanguage,
    /// Text too long or with control characters.
    #[error("caption text is too long or contains control characters")]
    BadText,
    /// `end_ms` before `start_ms`.
    #[error("caption ends before it starts")]
    BadTiming,
}

impl Caption {
    /// Encodes for the data channel.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a caption from the peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, CaptionError> {
        if bytes.len() > MAX_CAPTION_BYTES {
            return Err(CaptionError::TooLarge(bytes.len()));
        }
        // serde would also accept a struct written as a JSON array; only the object form is ours.
        if bytes.first() != Some(&b'{') {
            return Err(CaptionError::Malformed("not a JSON object".into()));
        }
        let caption: Caption =
            serde_json::from_slice(bytes).map_err(|e| CaptionError::Malformed(e.to_string()))?;
        caption.validate()?;
        Ok(caption)
    }

    /// Checks every field (also used before sending, so we never send what the peer refuses).
    pub fn validate(&self) -> Result<(), CaptionError> {
        if self.v != CAPTION_VERSION {
            return Err(CaptionError::Version(self.v));
        }
        if self.end_ms < self.start_ms {
            return Err(CaptionError::BadTiming);
        }
        check_lang(&self.lang)?;
        check_text(&self.text)?;
        if let Some(t) = &self.translation {
            check_lang(&t.lang)?;
            check_text(&t.text)?;
        }
        Ok(())
    }

    /// The text a listener wants to read: the translation when there is one.
    pub fn display_text(&self) -> &str {
        self.translation
            .as_ref()
            .map_or(self.text.as_str(), |t| t.text.as_str())
    }

    /// One line for the listener: the translation, and with `show_source` what was said beside
    /// it (`hola  (en: hello)`), so a bad translation cannot hide the words (`--show-source`).
    /// A caption without a translation is its text either way.
    pub fn display_line(&self, show_source: bool) -> String {
        match &self.translation {
            Some(t) if show_source => format!("{}  ({}: {})", t.text, self.lang, self.text),
            Some(t) => t.text.clone(),
            None => self.text.clone(),
        }
    }
}

/// True for an ISO 639-1/639-2 style code: 2–3 lowercase ASCII letters.
pub fn is_language_code(code: &str) -> bool {
    (2..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase())
}

fn check_lang(code: &str) -> Result<(), CaptionError> {
    if is_language_code(code) {
        Ok(())
    } else {
        Err(CaptionError::BadLanguage)
    }
}

fn check_text(text: &str) -> Result<(), CaptionError> {
    if text.chars().count() > MAX_TEXT_CHARS || text.chars().any(char::is_control) {
        return Err(CaptionError::BadText);
    }
    Ok(())
}

/// Writes final captions as a WebVTT file (W3C WebVTT), one cue per caption.
#[derive(Debug)]
pub struct WebVttWriter<W: Write> {
    out: W,
    cues: u64,
    show_source: bool,
}

impl<W: Write> WebVttWriter<W> {
    /// Starts the file (writes the `WEBVTT` header); cues carry the translation only.
    pub fn new(out: W) -> io::Result<Self> {
        Self::with_source(out, false)
    }

    /// Starts the file; with `show_source`, a translated cue has a second line with what was
    /// said, in parentheses.
    pub fn with_source(mut out: W, show_source: bool) -> io::Result<Self> {
        out.write_all(b"WEBVTT\n\n")?;
        out.flush()?;
        Ok(Self {
            out,
            cues: 0,
            show_source,
        })
    }

    /// Appends one cue. Partials are skipped: a file keeps only what was finally said.
    pub fn write(&mut self, caption: &Caption) -> io::Result<()> {
        if !caption.is_final || caption.text.is_empty() {
            return Ok(());
        }
        self.cues = self.cues.saturating_add(1);
        let mut cue = format!(
            "{}\n{} --> {}\n",
            self.cues,
            vtt_time(caption.start_ms),
            vtt_time(caption.end_ms.max(caption.start_ms.saturating_add(1)))
        );
        match &caption.translation {
            Some(t) => {
                cue.push_str(&vtt_text(&t.text));
                if self.show_source {
                    cue.push('\n');
                    cue.push_str(&format!("({})", vtt_text(&caption.text)));
                }
            }
            None => cue.push_str(&vtt_text(&caption.text)),
        }
        cue.push_str("\n\n");
        self.out.write_all(cue.as_bytes())?;
        self.out.flush()
    }

    /// Number of cues written.
    pub fn cues(&self) -> u64 {
        self.cues
    }

    /// Returns the writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// `hh:mm:ss.ttt`.
fn vtt_time(ms: u64) -> String {
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, t) = (rest / 1000, rest % 1000);
    format!("{h:02}:{m:02}:{s:02}.{t:03}")
}

/// Cue text escaped so that it can neither end the cue nor inject markup.
fn vtt_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace("-->", "--&gt;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn caption() -> Caption {
        Caption {
            v: 1,
            seq: 3,
            is_final: true,
            start_ms: 1_500,
            end_ms: 3_250,
            lang: "en".into(),
            text: "Good morning".into(),
            translation: Some(Translation {
                lang: "es".into(),
                text: "Buenos días".into(),
            }),
        }
    }

    #[test]
    fn round_trip() {
        let c = caption();
        assert_eq!(Caption::decode(&c.encode()).unwrap(), c);
        let mut plain = c;
        plain.translation = None;
        assert_eq!(Caption::decode(&plain.encode()).unwrap(), plain);
        assert_eq!(plain.display_text(), "Good morning");
    }

    #[test]
    fn hostile_captions_are_refused() {
        let good = String::from_utf8(caption().encode()).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (good.replace("\"v\":1", "\"v\":2"), "version"),
            (
                good.replace("\"lang\":\"en\"", "\"lang\":\"EN\""),
                "language",
            ),
            (
                good.replace("\"lang\":\"en\"", "\"lang\":\"english\""),
                "language",
            ),
            (good.replace("Good morning", "Good\\u0007morning"), "text"),
            (
                good.replace("\"end_ms\":3250", "\"end_ms\":1"),
                "ends before",
            ),
            (
                good.replace("{\"v\"", "{\"extra\":1,\"v\""),
                "unknown field",
            ),
            (good.replace("\"seq\":3,", ""), "missing field"),
            ("[1,3,true,0,1,\"en\",\"hi\"]".into(), "not a JSON object"),
            ("\u{feff}{}".into(), "not a JSON object"),
            (format!("{good} trailing"), "trailing characters"),
            (
                format!("{{\"v\":1,\"text\":\"{}\"}}", "a".repeat(5000)),
                "larger",
            ),
        ];
        for (input, why) in cases {
            let err = Caption::decode(input.as_bytes()).unwrap_err();
            assert!(
                err.to_string().contains(why),
                "{input:.80}: wanted '{why}', got '{err}'"
            );
        }
        let long = Caption {
            text: "x".repeat(MAX_TEXT_CHARS + 1),
            ..caption()
        };
        assert_eq!(long.validate(), Err(CaptionError::BadText));
        assert!(Caption::decode(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn webvtt_has_cues_for_finals_only_and_escapes_text() {
        let mut w = WebVttWriter::with_source(Vec::new(), true).unwrap();
        let mut partial = caption();
        partial.is_final = false;
        w.write(&partial).unwrap();
        w.write(&caption()).unwrap();
        let mut tricky = caption();
        tricky.translation = None;
        tricky.start_ms = 3_723_004;
        tricky.end_ms = 3_723_004;
        tricky.text = "a --> <b>&".into();
        w.write(&tricky).unwrap();
        assert_eq!(w.cues(), 2);
        let text = String::from_utf8(w.into_inner()).unwrap();
        assert_eq!(
            text,
            "WEBVTT\n\n\
             1\n00:00:01.500 --> 00:00:03.250\nBuenos días\n(Good morning)\n\n\
             2\n01:02:03.004 --> 01:02:03.005\na --&gt; &lt;b&gt;&amp;\n\n"
        );
    }

    #[test]
    fn the_source_is_shown_beside_the_translation_only_when_asked() {
        let c = caption();
        assert_eq!(c.display_line(false), "Buenos días");
        assert_eq!(c.display_line(true), "Buenos días  (en: Good morning)");
        let plain = Caption {
            translation: None,
            ..caption()
        };
        assert_eq!(plain.display_line(true), "Good morning");
        assert_eq!(plain.display_line(false), "Good morning");

        let mut w = WebVttWriter::new(Vec::new()).unwrap();
        w.write(&c).unwrap();
        w.write(&plain).unwrap();
        assert_eq!(
            String::from_utf8(w.into_inner()).unwrap(),
            "WEBVTT\n\n\
             1\n00:00:01.500 --> 00:00:03.250\nBuenos días\n\n\
             2\n00:00:01.500 --> 00:00:03.250\nGood morning\n\n"
        );
        // The source line is escaped like the rest: it cannot end the cue or add markup.
        let mut w = WebVttWriter::with_source(Vec::new(), true).unwrap();
        let hostile = Caption {
            text: "x --> <i>".into(),
            ..caption()
        };
        w.write(&hostile).unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        assert!(
            text.ends_with("Buenos días\n(x --&gt; &lt;i&gt;)\n\n"),
            "{text}"
        );
    }
}
