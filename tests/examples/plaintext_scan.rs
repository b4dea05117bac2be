//! Searches a file (a packet capture) for plaintext frames with the CLI tests' scanner
//! (`aparte_e2e_tests::relay::PlaintextScanner`: a frame counts as found when any of its
//! 16-byte windows with at least 8 distinct byte values occurs), for callers outside Rust (the
//! browser tests, `web/test/call-cli.test.js`, which get the browser's plaintext Opus frames
//! from a test-only tap in the page's worker).
//!
//! `plaintext_scan FRAMES.hex CAPTURE` (one frame in hex per line) prints
//! `{"frames":…,"scannable":…,"found":[frame indexes…]}` on stdout.
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use aparte_e2e_tests::relay::PlaintextScanner;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [frames, capture] = args.as_slice() else {
        eprintln!("usage: plaintext_scan FRAMES.hex CAPTURE");
        std::process::exit(2);
    };
    let frames: Vec<Vec<u8>> = std::fs::read_to_string(frames)
        .expect("read FRAMES")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| hex::decode(l).expect("a frame in hex"))
        .collect();
    let capture = std::fs::read(capture).expect("read CAPTURE");
    let scanner = PlaintextScanner::new(&frames);
    let mut found: Vec<usize> = scanner.find(&capture).into_iter().collect();
    found.sort_unstable();
    let out = serde_json::json!({
        "frames": frames.len(),
        "scannable": scanner.scannable(),
        "found": found,
    });
    println!("{out}");
}
