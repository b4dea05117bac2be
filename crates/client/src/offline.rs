//! `aparte languages` and `aparte translate`: what this machine can translate, and translating
//! a WAV file with the same pipeline a call uses, without any network.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use aparte_translate::caption::WebVttWriter;
use aparte_translate::engines::EngineChoice;
use aparte_translate::languages::{availability, debian_pair_package, Route};
use aparte_translate::models::{ModelDir, ModelName};
use aparte_translate::Language;
use aparte_translate::{PipelineConfig, PipelineEvent, TranslationPipeline};

/// The report of `aparte languages`.
pub fn languages(models: &ModelDir, modes_dir: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "speech models in {}:", models.path().display());
    for model in ModelName::all() {
        let state = if models.has(model) {
            "installed".to_string()
        } else {
            format!("missing (bash scripts/install-models {model})")
        };
        let _ = writeln!(out, "  {:<8} {state}", model.as_str());
    }
    let _ = writeln!(
        out,
        "\nspoken → caption language, as this machine can do it:"
    );
    let mut installable = Vec::new();
    let mut no_route_from_english = Vec::new();
    let mut only_into_english = Vec::new();
    let mut other_missing = Vec::new();
    let mut between_others = 0;
    for a in availability(models, modes_dir) {
        match &a.route {
            Ok(route) => {
                let how = match route {
                    Route::CaptionsOnly => "captions (no translation)",
                    Route::Apertium => "Whisper + Apertium",
                    Route::WhisperTranslate => "Whisper's translate task",
                };
                let _ = writeln!(out, "  {} → {}  {how}", a.from.code(), a.to.code());
            }
            Err(why) => {
                let english = Language::English;
                if debian_pair_package(a.from, a.to).is_some() {
                    installable.push(format!("  {} → {}: {why}", a.from.code(), a.to.code()));
                } else if a.from == english && debian_pair_package(a.to, english).is_some() {
                    only_into_english.push(a.to.name());
                } else if a.from == english {
                    no_route_from_english.push(a.to.name());
                } else if a.to == english {
                    other_missing.push(format!("  {} → en: {why}", a.from.code()));
                } else {
                    between_others += 1;
                }
            }
        }
    }
    if !no_route_from_english.is_empty() {
        let _ = writeln!(
            out,
            "\nno route for English → {}: Debian ships no Apertium pair for them and no neural \
             translation weights can be fetched here; aparté does not offer a pivot through \
             Spanish (measured: unusable).",
            no_route_from_english.join(", ")
        );
    }
    if !only_into_english.is_empty() {
        let _ = writeln!(
            out,
            "no route for English → {}: Debian's Apertium pairs for them go into English only.",
            only_into_english.join(", ")
        );
    }
    if !installable.is_empty() || !other_missing.is_empty() {
        let _ = writeln!(out, "\nnot installed here, and how to get them:");
        for line in installable.iter().chain(&other_missing) {
            let _ = writeln!(out, "{line}");
        }
    }
    if between_others > 0 {
        let _ = writeln!(
            out,
            "\n{between_others} directions between two languages other than English have no \
             route: Debian's Apertium pairs all have English on one side, and aparté does not \
             chain two pairs (their errors compound)."
        );
    }
    out
}

/// Translates a WAV file and prints one line per caption (or JSON lines).
pub fn translate_file(
    wav: &Path,
    choice: EngineChoice,
    captions_file: Option<&Path>,
    json: bool,
) -> Result<(), String> {
    choice.check()?;
    let audio =
        aparte_media::wav::read_mono_48k(wav).map_err(|e| format!("{}: {e}", wav.display()))?;
    let frames = audio.len() / aparte_media::FRAME_SAMPLES + 1;
    // Offline, nothing must be dropped: the queues hold the whole file.
    let config = PipelineConfig {
        partials: false,
        audio_queue_frames: frames + 100,
        utterance_queue: frames / 10 + 10,
        event_queue: frames / 10 + 10,
        ..Default::default()
    };
    let started = Instant::now();
    let pipeline =
        TranslationPipeline::start(config, move || choice.load()).map_err(|e| e.to_string())?;
    for frame in audio.chunks(aparte_media::FRAME_SAMPLES) {
        pipeline.push_audio(frame);
    }
    // A second of silence closes the last utterance.
    for _ in 0..50 {
        pipeline.push_audio(&[0.0; aparte_media::FRAME_SAMPLES]);
    }
    let (events, stats) = pipeline.finish();
    let mut vtt = match captions_file {
        Some(path) => Some(
            std::fs::File::create(path)
                // `aparte translate` is for checking a translation: the source is always
                // printed, and written to the file too.
                .and_then(|file| WebVttWriter::with_source(file, true))
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    for event in events {
        match event {
            PipelineEvent::Ready => {}
            PipelineEvent::Failed(why) => return Err(why),
            PipelineEvent::Caption(caption, _) => {
                if let Some(vtt) = vtt.as_mut() {
                    vtt.write(&caption).map_err(|e| e.to_string())?;
                }
                if json {
                    println!("{}", String::from_utf8_lossy(&caption.encode()));
                } else {
                    println!("{}", caption.display_line(true));
                }
            }
        }
    }
    eprintln!(
        "{} utterances, {} captioned, {} silent, {} dropped; recognition real-time factor {:.2}; {:.1} s in all",
        stats.utterances,
        stats.finals,
        stats.no_speech,
        stats.utterances_dropped,
        stats.real_time_factor(),
        started.elapsed().as_secs_f64()
    );
    if stats.asr_errors > 0 || stats.utterances_dropped > 0 {
        return Err(format!(
            "{} recognition errors, {} utterances dropped",
            stats.asr_errors, stats.utterances_dropped
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn languages_says_plainly_what_has_no_route() {
        let models_dir = tempfile::tempdir().unwrap();
        let models = ModelDir::new(models_dir.path());
        for model in ModelName::all() {
            let dir = models.model_path(model);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(aparte_translate::models::INSTALLED_MARKER), "").unwrap();
        }
        let modes = tempfile::tempdir().unwrap();
        for mode in ["eng-spa", "spa-eng", "eng-cat", "eu-en"] {
            std::fs::write(modes.path().join(format!("{mode}.mode")), "").unwrap();
        }
        let report = languages(&models, modes.path());
        for line in [
            "  en → es  Whisper + Apertium",
            "  en → ca  Whisper + Apertium",
            "  eu → en  Whisper + Apertium",
            "  fr → en  Whisper's translate task",
            "no route for English → French, German, Italian, Portuguese: Debian ships no \
             Apertium pair",
            "aparté does not offer a pivot through Spanish",
            "no route for English → Basque, Icelandic, Macedonian: Debian's Apertium pairs for \
             them go into English only",
            "  en → gl: no en→gl translation here: its Apertium pair is not installed",
            "--pairs gl",
            "--pairs hbs",
        ] {
            assert!(report.contains(line), "missing {line:?} in:\n{report}");
        }
        // No route through Spanish is offered for French.
        assert!(!report.contains("en → fr  "), "{report}");
    }
}
