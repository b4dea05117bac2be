//! The README's "run it" command, `aparte demo`, as a test: the real binary, with its
//! in-process signaling server and TURN relay, two peers speaking espeak-ng English to each
//! other relay-only, captioned (Whisper tiny.en) and translated (Apertium) on each endpoint.
//!
//! - it exits successfully, both sides print the same SAS and both end verified;
//! - each side's `--stats-json`-style report says the call was relayed, with no frame rejected;
//! - what each side heard matches what the other said: per-segment normalized
//!   cross-correlation after delay alignment, median ≥ 0.80 and mean ≥ 0.60
//!   (`call::assert_heard_matches_said`, the bar `call_processes.rs` uses too).
//!
//! Needs espeak-ng, Apertium and the tiny.en model; `scripts/test` installs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use aparte_e2e_tests::call::assert_heard_matches_said;
use aparte_e2e_tests::{binary, frames_rejected_total, read_stats};

#[test]
fn the_readme_demo_runs_a_verified_relayed_call_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let output = Command::new(binary("aparte"))
        .arg("demo")
        .arg("--out-dir")
        .arg(&out_dir)
        .env("APARTE_HOME", dir.path().join("home"))
        .output()
        .expect("run aparte demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "aparte demo failed:\n{stdout}\n{stderr}"
    );

    let sas_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("sees the SAS:"))
        .collect();
    assert_eq!(sas_lines.len(), 2, "one SAS line per side:\n{stdout}");
    let sas = |line: &str| {
        line.split_once("sees the SAS:")
            .unwrap()
            .1
            .trim()
            .to_owned()
    };
    assert_eq!(sas(sas_lines[0]), sas(sas_lines[1]), "the two SAS differ");
    assert!(stdout.contains("alice: encrypted and VERIFIED"), "{stdout}");
    assert!(stdout.contains("bob: encrypted and VERIFIED"), "{stdout}");
    assert!(
        stdout.contains("both in this process"),
        "the demo's server runs in-process:\n{stdout}"
    );

    for name in ["alice", "bob"] {
        let report = read_stats(&out_dir.join(format!("{name}-stats.json")));
        assert_eq!(report["relayed"], true, "{name}: {report}");
        assert_eq!(frames_rejected_total(&report), 0, "{name}: {report}");
        assert!(
            report["frames_decrypted"].as_u64().unwrap() >= 200,
            "{name} decrypted too few frames: {report}"
        );
    }
    let stats = |name: &str| read_stats(&out_dir.join(format!("{name}-stats.json")));
    let (a, b) = (stats("alice"), stats("bob"));
    aparte_e2e_tests::assert_frames_add_up(&a, &b);
    aparte_e2e_tests::assert_frames_add_up(&b, &a);

    for (said, heard) in [("alice-says", "bob-heard"), ("bob-says", "alice-heard")] {
        assert_heard_matches_said(
            &out_dir.join(format!("{said}.wav")),
            &out_dir.join(format!("{heard}.wav")),
        );
    }
}
