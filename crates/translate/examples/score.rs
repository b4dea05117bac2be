//! Scores recognitions against a corpus' references with our WER (`aparte_translate::wer`,
//! which reads number words as digits), per source and overall, so two engines' outputs are
//! scored the same way. `scripts/bench-real-speech` drives it.
//!
//! `score TRANSCRIPTS.tsv HYPOTHESES.tsv [NAME]`
//! - TRANSCRIPTS.tsv: `id, duration_s, source, text` with a header (scripts/fetch-speech-corpus);
//! - HYPOTHESES.tsv: `id<TAB>ms<TAB>text` per clip (the `transcribe` example's `HYP_OUT`, or
//!   the faster-whisper runner).
//!
//! Prints one line per source, then a JSON summary: WER, real-time factor, p50 and max ms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};

use aparte_translate::wer::{normalize_words, word_error_rate};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [transcripts, hypotheses, rest @ ..] = args.as_slice() else {
        eprintln!("usage: score TRANSCRIPTS.tsv HYPOTHESES.tsv [NAME]");
        std::process::exit(2);
    };
    let name = rest.first().map_or("engine", String::as_str);
    let hyps: HashMap<String, (f64, String)> = std::fs::read_to_string(hypotheses)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            let id = f.next()?.to_string();
            let ms = f.next()?.parse().ok()?;
            Some((id, (ms, f.next().unwrap_or("").to_string())))
        })
        .collect();
    // source -> (errors, words, clips, audio s, busy ms)
    let mut by_source: BTreeMap<String, (f64, usize, usize, f64, f64)> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut missing = 0;
    for line in std::fs::read_to_string(transcripts)
        .unwrap()
        .lines()
        .skip(1)
    {
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        let [id, seconds, source, text] = f[..] else {
            continue;
        };
        let Some((ms, hyp)) = hyps.get(id) else {
            missing += 1;
            continue;
        };
        let n = normalize_words(text).len();
        if n == 0 {
            continue;
        }
        let entry = by_source.entry(source.to_string()).or_default();
        entry.0 += word_error_rate(text, hyp) * n as f64;
        entry.1 += n;
        entry.2 += 1;
        entry.3 += seconds.parse::<f64>().unwrap_or(0.0);
        entry.4 += ms;
        latencies.push(*ms);
    }
    let (mut errors, mut words, mut audio_s, mut busy_ms) = (0.0, 0, 0.0, 0.0);
    for (source, (e, n, clips, audio, busy)) in &by_source {
        println!(
            "{name:>16} | {source:<22} | {clips:>4} clips | {n:>5} words | WER {:>5.1} % | RTF {:.3}",
            100.0 * e / *n as f64,
            busy / 1000.0 / audio
        );
        errors += e;
        words += n;
        audio_s += audio;
        busy_ms += busy;
    }
    latencies.sort_by(f64::total_cmp);
    let p50 = latencies.get(latencies.len() / 2).copied().unwrap_or(0.0);
    let max = latencies.last().copied().unwrap_or(0.0);
    println!(
        "{{\"engine\":\"{name}\",\"clips\":{},\"missing\":{missing},\"words\":{words},\"wer\":{:.4},\"audio_s\":{audio_s:.1},\"real_time_factor\":{:.4},\"p50_ms\":{p50:.0},\"max_ms\":{max:.0}}}",
        latencies.len(),
        if words > 0 { errors / words as f64 } else { 0.0 },
        if audio_s > 0.0 { busy_ms / 1000.0 / audio_s } else { 0.0 }
    );
}
