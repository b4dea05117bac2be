//! Per-segment NCC of a recording against what a looping source played, as JSON: the check
//! the CLI tests make (`aparte_e2e_tests::call::segment_nccs`), for callers outside Rust (the
//! browser tests, `web/test/call-cli.test.js`, whose fake microphone loops a WAV file from
//! before the call starts, so the recording begins anywhere in the loop).
//!
//! `heard_ncc SAID.wav HEARD.wav` finds where the loop of SAID sits in HEARD (the best
//! normalized cross-correlation of one whole loop against the recording), lays the loop over
//! the recording from its second second to 250 ms before its end, and prints
//! `{"lag":…,"global_ncc":…,"nccs":[…],"mean":…,"median":…}` on stdout: the NCC of every
//! 1 s speech segment, each aligned on its own within ±250 ms (the jitter buffer moves the
//! delay by whole frames), 0 for a segment that finds no alignment.
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use aparte_e2e_tests::call::segment_nccs;
use aparte_media::metrics::align;
use aparte_media::wav::read_mono_48k;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [said, heard] = args.as_slice() else {
        eprintln!("usage: heard_ncc SAID.wav HEARD.wav");
        std::process::exit(2);
    };
    let said = read_mono_48k(said).expect("read SAID");
    let heard = read_mono_48k(heard).expect("read HEARD");
    let n = said.len();
    assert!(
        n > 0 && heard.len() >= n,
        "the recording is shorter than one loop"
    );
    let found = align(&said, &heard, heard.len()).expect("the loop is not found in the recording");
    let n_i = i64::try_from(n).unwrap();
    // heard[i + lag] ≈ said[i]: position j of the recording holds said[(j - lag) mod n].
    // The first second is left silent (skipped: the capture's and the jitter buffer's start),
    // and the loop stops at the last whole second that ends 250 ms before the recording does,
    // so every segment has its whole ±250 ms search window inside the recording.
    let (second, slack) = (48_000, 12_000);
    let len = heard.len().saturating_sub(slack) / second * second;
    let looped: Vec<f32> = (0..len)
        .map(|j| {
            if j < second {
                return 0.0;
            }
            said[usize::try_from((i64::try_from(j).unwrap() - found.lag).rem_euclid(n_i)).unwrap()]
        })
        .collect();
    let nccs = segment_nccs(&looped, &heard);
    let mean = nccs.iter().sum::<f64>() / nccs.len() as f64;
    let mut sorted = nccs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let out = serde_json::json!({
        "lag": found.lag,
        "global_ncc": found.ncc,
        "nccs": nccs,
        "mean": mean,
        "median": median,
    });
    println!("{out}");
}
