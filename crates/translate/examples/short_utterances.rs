//! Bench of Whisper on short utterances (1–3 s, the corpus of `tests/short_utterances.rs`):
//! for each decoder configuration given, the WER, how many transcripts repeat a word or phrase
//! the script did not repeat (a looping decoder), and the real-time factor. It chose the
//! default encoder window; docs/TRANSLATION.md has the figures.
//!
//! `cargo run -p aparte-translate --example short_utterances -- [--json] [--model M] [CONFIG...]`
//!
//! A CONFIG is `key=value` pairs joined by commas: `pad` (seconds of padding after the audio,
//! 0 = Whisper's full 30 s window), `min` (shortest window in seconds), `ngram` (CTranslate2's
//! `no_repeat_ngram_size`), `penalty` (its `repetition_penalty`), `beam`. Unset keys keep the
//! defaults; `default` alone is the default configuration. Without a CONFIG it compares the
//! windows: `min=0` (audio + 3 s), `min=10` (at least 10 s) and `pad=0` (the full 30 s).
//! `--json` prints one JSON object per configuration instead of each transcript.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/short_corpus.rs"]
mod short_corpus;

use aparte_translate::models::{ModelDir, ModelName};
use aparte_translate::whisper::{WhisperConfig, WhisperRecognizer};

fn parse(spec: &str) -> WhisperConfig {
    let mut config = WhisperConfig::default();
    for pair in spec.split(',').filter(|p| *p != "default") {
        let (key, value) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("'{pair}' is not key=value"));
        let number: f32 = value
            .parse()
            .unwrap_or_else(|_| panic!("'{value}' is not a number"));
        match key {
            "pad" => config.window_pad_s = number,
            "min" => config.min_window_s = number,
            "ngram" => config.no_repeat_ngram_size = number as usize,
            "penalty" => config.repetition_penalty = number,
            "beam" => config.beam_size = number as usize,
            other => panic!("unknown key '{other}'"),
        }
    }
    config
}

fn main() {
    let mut json = false;
    let mut model = ModelName::TinyEn;
    let mut specs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--model" => model = args.next().expect("--model NAME").parse().unwrap(),
            _ => specs.push(arg),
        }
    }
    if specs.is_empty() {
        specs = vec!["min=0".into(), "min=10".into(), "pad=0".into()];
    }
    let clips = short_corpus::clips();
    for spec in &specs {
        let config = parse(spec);
        let mut asr = WhisperRecognizer::load(&ModelDir::default_location(), model, config)
            .unwrap_or_else(|e| panic!("{e}"));
        if !json {
            println!("==> {model} {spec}");
        }
        let summary = short_corpus::run(&mut asr, &clips, |clip, heard| {
            if !json {
                println!(
                    "{:>5.0} ms | wer {:.2} | {}{} {} | {} | {}",
                    heard.ms,
                    heard.wer,
                    if heard.repeated.is_some() {
                        "LOOP "
                    } else {
                        ""
                    },
                    clip.voice,
                    clip.rate,
                    clip.text,
                    heard.text
                );
            }
        });
        println!(
            "{{\"model\":\"{model}\",\"config\":\"{spec}\",\"clips\":{},\"words\":{},\"audio_s\":{:.1},\"wer\":{:.4},\"repeated\":{},\"real_time_factor\":{:.3},\"p50_ms\":{:.0},\"max_ms\":{:.0}}}",
            summary.clips,
            summary.words,
            summary.audio_s,
            summary.wer,
            summary.repeated,
            summary.real_time_factor,
            summary.p50_ms,
            summary.max_ms
        );
    }
}
