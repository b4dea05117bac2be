//! `aparte languages` and `aparte translate`: what this machine can translate, and translating
//! a WAV file with the same pipeline a call uses, without any network.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use aparte_translate::caption::WebVttWriter;
use aparte_translate::engines::EngineChoice;
use aparte_translate::languages::{availability, Route};
use aparte_translate::models::{ModelDir, ModelName};
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
    let mut unavailable = Vec::new();
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
            Err(why) => unavailable.push((a.from, a.to, why.clone())),
        }
    }
    let _ = writeln!(
        out,
        "\nnot available here ({} directions); the first few, and why:",
        unavailable.len()
    );
    for (from, to, why) in unavailable.iter().take(6) {
        let _ = writeln!(out, "  {} → {}: {why}", from.code(), to.code());
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
                .and_then(WebVttWriter::new)
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
                    match &caption.translation {
                        Some(t) => println!("{}  ({}: {})", t.text, caption.lang, caption.text),
                        None => println!("{}", caption.text),
                    }
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
