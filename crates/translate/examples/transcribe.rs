//! Recognizes WAV files with a Whisper model and prints the text, the time taken and, when a
//! `FILE.txt` with the reference text sits next to `FILE.wav`, the word error rate. The last
//! line is a JSON summary (real-time factor, mean latency, WER). `scripts/bench-translate`
//! drives it; see docs/TRANSLATION.md.
//!
//! `cargo run --release -p aparte-translate --example transcribe -- MODEL FILE.wav...`
//!
//! Environment: `BEAM` (0 = per-model default), `INT8` (1/0), `PAD` (encoder window padding in
//! seconds, 0 = Whisper's full 30 s), `MIN_WINDOW` (shortest encoder window in seconds),
//! `NGRAM` (no_repeat_ngram_size), `PENALTY` (repetition_penalty), `THREADS`, `LANG_CODE`
//! (spoken language), `TRANSLATE` (set: Whisper's translate-to-English task), `HYP_OUT` (also
//! append `ID<TAB>ms<TAB>text` per file to this file, for `examples/score.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use aparte_translate::models::{ModelDir, ModelName};
use aparte_translate::resample::Downsampler;
use aparte_translate::wer::{normalize_words, word_error_rate};
use aparte_translate::whisper::{WhisperConfig, WhisperRecognizer};
use aparte_translate::{AsrTask, SpeechRecognizer};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((model, files)) = args.split_first() else {
        eprintln!("usage: transcribe MODEL FILE.wav...");
        std::process::exit(2);
    };
    let model: ModelName = model.parse().unwrap();
    let defaults = WhisperConfig::default();
    let config = WhisperConfig {
        beam_size: env("BEAM", defaults.beam_size),
        int8: env("INT8", 1u8) == 1,
        window_pad_s: env("PAD", defaults.window_pad_s),
        min_window_s: env("MIN_WINDOW", defaults.min_window_s),
        no_repeat_ngram_size: env("NGRAM", defaults.no_repeat_ngram_size),
        repetition_penalty: env("PENALTY", defaults.repetition_penalty),
        threads: env("THREADS", defaults.threads),
    };
    let loading = Instant::now();
    let mut asr = WhisperRecognizer::load(&ModelDir::default_location(), model, config.clone())
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
    let load_ms = loading.elapsed().as_secs_f64() * 1000.0;
    let task = AsrTask {
        language: std::env::var("LANG_CODE").ok().map(|l| l.parse().unwrap()),
        translate_to_english: std::env::var("TRANSLATE").is_ok(),
    };
    let mut hyp_out = std::env::var("HYP_OUT").ok().map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    });
    let (mut busy_s, mut audio_s, mut errors, mut words) = (0.0, 0.0, 0.0, 0usize);
    let mut latencies = Vec::new();
    for file in files {
        let audio = aparte_media::wav::read_mono_48k(file).unwrap();
        let mut down = Downsampler::new().unwrap();
        let mut audio16 = down.push(&audio);
        audio16.extend(down.push(&vec![0.0; 9600]));
        let t = Instant::now();
        let got = asr.recognize(&audio16, &task).unwrap();
        let took = t.elapsed().as_secs_f64();
        busy_s += took;
        audio_s += audio16.len() as f64 / 16_000.0;
        latencies.push(took * 1000.0);
        if let Some(out) = hyp_out.as_mut() {
            use std::io::Write;
            let id = std::path::Path::new(file)
                .file_stem()
                .unwrap()
                .to_string_lossy();
            let text = got.text.replace(['\t', '\n'], " ");
            writeln!(out, "{id}\t{:.1}\t{text}", took * 1000.0).unwrap();
        }
        let reference = std::fs::read_to_string(std::path::Path::new(file).with_extension("txt"));
        let wer = reference.as_ref().ok().map(|r| {
            let n = normalize_words(r).len();
            let w = word_error_rate(r, &got.text);
            errors += w * n as f64;
            words += n;
            w
        });
        println!(
            "{:>6.0} ms | {:.2} s audio | wer {} | {}",
            took * 1000.0,
            audio16.len() as f64 / 16_000.0,
            wer.map_or("-".into(), |w| format!("{w:.2}")),
            got.text
        );
    }
    latencies.sort_by(f64::total_cmp);
    let p50 = latencies.get(latencies.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{{\"model\":\"{model}\",\"files\":{},\"load_ms\":{load_ms:.0},\"real_time_factor\":{:.3},\"p50_ms\":{p50:.0},\"max_ms\":{:.0},\"wer\":{},\"words\":{words},\"beam\":{},\"int8\":{},\"pad_s\":{},\"min_window_s\":{},\"threads\":{}}}",
        files.len(),
        if audio_s > 0.0 { busy_s / audio_s } else { 0.0 },
        latencies.last().copied().unwrap_or(0.0),
        if words > 0 { format!("{:.4}", errors / words as f64) } else { "null".into() },
        config.beam_size,
        config.int8,
        config.window_pad_s,
        config.min_window_s,
        config.threads
    );
}
