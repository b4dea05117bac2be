//! Transcribes WAV files with a Whisper model and prints the text and timing.
//!
//! `cargo run --release -p aparte-translate --example transcribe -- MODEL BEAM INT8(0|1) FILE.wav...`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use aparte_translate::models::ModelDir;
use aparte_translate::resample::Downsampler;
use aparte_translate::whisper::{WhisperConfig, WhisperRecognizer};
use aparte_translate::{AsrTask, SpeechRecognizer};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args[0].parse().unwrap();
    let config = WhisperConfig {
        beam_size: args[1].parse().unwrap(),
        int8: args[2] == "1",
        window_pad_s: std::env::var("PAD").map_or(0.0, |t| t.parse().unwrap()),
        threads: std::env::var("THREADS").map_or(1, |t| t.parse().unwrap()),
    };
    let mut asr = WhisperRecognizer::load(&ModelDir::default_location(), model, config).unwrap();
    for file in &args[3..] {
        let audio = aparte_media::wav::read_mono_48k(file).unwrap();
        let mut down = Downsampler::new().unwrap();
        let mut audio16 = down.push(&audio);
        audio16.extend(down.push(&vec![0.0; 9600]));
        let t = Instant::now();
        let task = AsrTask {
            language: std::env::var("LANG_CODE").ok().map(|l| l.parse().unwrap()),
            translate_to_english: std::env::var("TRANSLATE").is_ok(),
        };
        let got = asr.recognize(&audio16, &task).unwrap();
        println!(
            "{:.0} ms | {:.2} s audio | {}",
            t.elapsed().as_secs_f64() * 1000.0,
            audio16.len() as f64 / 16000.0,
            got.text
        );
    }
}
