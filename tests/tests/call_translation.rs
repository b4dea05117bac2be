//! Translation stays on the endpoints.
//!
//! 1. A real relay-only call between two `aparte` processes through a real `aparte-signaling`
//!    process and its TURN relay. Alice speaks English (espeak-ng) with `--lang en
//!    --peer-lang es`: her endpoint recognizes (Whisper tiny.en) and translates (Apertium) and
//!    sends the captions inside the call's encryption. Bob writes what he receives as WebVTT.
//!    - the remote caption's WER against the script is at most 10 %;
//!    - each Spanish caption equals what one-shot `apertium -u eng-spa` gives for its text;
//!    - tcpdump captures ALL loopback traffic during the call (signaling and relay included),
//!      and no caption text, nor any 4-word run of it, appears in it. Positive control: the
//!      same scan finds a marker the test itself sent over loopback UDP during the capture.
//! 2. A listener without a translating peer recognizes the peer's decoded audio itself
//!    (`--translate-incoming`), with the same accuracy bound.
//! 3. The same pipeline runs in a network namespace with only a downed loopback, under
//!    strace: it still captions, and no engine opens an Internet socket.
//!
//! Needs the models (`bash scripts/install-models`), Apertium, espeak-ng, tcpdump, strace and
//! unshare; `scripts/test` installs them all. Runs as root (CI does).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use aparte_e2e_tests::{binary, new_room, SignalingServer};
use aparte_media::wav::{read_mono_48k, write_mono_48k};
use aparte_translate::apertium::tidy;
use aparte_translate::wer::{normalize_words, word_error_rate};

const SCRIPT: [&str; 4] = [
    "Please call me tomorrow morning at the office.",
    "We will meet at the train station after lunch.",
    "Can you send me the report before Friday?",
    "Do you know where I can buy a new phone?",
];

/// Spanish sentences for the spoken-translation test.
const SPANISH_SCRIPT: [&str; 3] = [
    "Mi casa es muy grande.",
    "Vamos a la playa con mis amigos.",
    "El tren sale mañana por la mañana.",
];

/// The script as one WAV: espeak-ng English, one second of silence after each sentence.
fn speech(path: &Path) {
    speech_in(path, "en", &SCRIPT);
}

/// `script` spoken by espeak-ng's `voice`, one second of silence after each sentence.
fn speech_in(path: &Path, voice: &str, script: &[&str]) {
    let dir = path.parent().unwrap();
    let mut all = Vec::new();
    for (i, sentence) in script.iter().enumerate() {
        let part = dir.join(format!("part{i}.wav"));
        let status = Command::new("espeak-ng")
            .args(["-v", voice, "-s", "160", "-w"])
            .arg(&part)
            .arg(sentence)
            .status()
            .expect("espeak-ng is needed: bash scripts/install-deps");
        assert!(status.success());
        all.extend(read_mono_48k(&part).unwrap());
        all.extend(std::iter::repeat_n(0.0, 48_000));
    }
    write_mono_48k(path, &all).unwrap();
}

/// tcpdump on loopback, writing every packet to `pcap` as it is captured.
struct Capture(Child);

impl Capture {
    fn start(pcap: &Path) -> Self {
        let mut child = Command::new("tcpdump")
            .args(["-i", "lo", "-U", "-n", "-s", "0", "-w"])
            .arg(pcap)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("tcpdump is needed: bash scripts/install-deps");
        // Wait for "listening on lo": only then is nothing missed.
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => continue,
                _ => panic!("tcpdump did not start (run as root)"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self(child)
    }

    fn stop(mut self) {
        // SIGINT makes tcpdump flush and close the file.
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every run of 4 consecutive words of `text` (or the whole text if shorter).
fn four_word_runs(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 4 {
        return vec![words.join(" ")];
    }
    words.windows(4).map(|w| w.join(" ")).collect()
}

/// (translation, original) of each cue in a WebVTT file written by `aparte`.
fn cues(vtt: &str) -> Vec<(String, String)> {
    vtt.split("\n\n")
        .filter(|block| block.contains("-->"))
        .map(|block| {
            let lines: Vec<&str> = block.lines().skip(2).collect();
            let translation = lines.first().copied().unwrap_or_default().to_string();
            let original = lines
                .get(1)
                .map(|l| l.trim_start_matches('(').trim_end_matches(')').to_string())
                .unwrap_or_default();
            (translation, original)
        })
        .collect()
}

fn apertium_oneshot(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("apertium")
        .args(["-u", "eng-spa"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("apertium is needed: bash scripts/install-models");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Waits for both calls and checks both ended well; returns their outputs.
fn both_succeed(alice: Child, bob: Child) -> (Output, Output) {
    let (alice, bob) = (
        alice.wait_with_output().unwrap(),
        bob.wait_with_output().unwrap(),
    );
    assert!(alice.status.success(), "alice:\n{}", log(&alice));
    assert!(bob.status.success(), "bob:\n{}", log(&bob));
    (alice, bob)
}

fn log(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn call(server: &SignalingServer, room: &str, home: &Path, args: &[&str]) -> Child {
    Command::new(binary("aparte"))
        .env("APARTE_HOME", home)
        .args(["call", "--server", &server.url()])
        .arg(format!("--room={room}"))
        .args(["--loopback-only", "--tofu", "--relay-only"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aparte call")
}

#[test]
fn translated_captions_cross_a_real_call_and_the_servers_never_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    speech(&p("alice.wav"));

    let server = SignalingServer::start(&["--turn-listen", "127.0.0.1:0"]);
    let room = new_room();
    let capture = Capture::start(&p("loopback.pcap"));

    let alice = call(
        &server,
        &room,
        &p("home-a"),
        &[
            "--input",
            p("alice.wav").to_str().unwrap(),
            "--lang",
            "en",
            "--peer-lang",
            "es",
            "--stats-json",
            p("alice.json").to_str().unwrap(),
        ],
    );
    let bob = call(
        &server,
        &room,
        &p("home-b"),
        &[
            "--input",
            "silence",
            "--captions",
            p("bob.vtt").to_str().unwrap(),
            "--show-source",
            "--stats-json",
            p("bob.json").to_str().unwrap(),
        ],
    );
    let (alice, _bob) = both_succeed(alice, bob);
    // Positive control for the scan: plaintext that does cross loopback is found.
    let marker = format!("aparte positive control {room}");
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(marker.as_bytes(), "127.0.0.1:9")
        .unwrap();
    // tcpdump writes each packet as it is captured (-U); once the marker is in the file,
    // everything before it is too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read(p("loopback.pcap")).is_ok_and(|pcap| contains(&pcap, marker.as_bytes()))
        && std::time::Instant::now() < deadline
    {
        std::thread::yield_now();
    }
    capture.stop();
    drop(server);

    // What Bob received: one cue per sentence, each Apertium's translation of its text.
    let vtt = std::fs::read_to_string(p("bob.vtt")).unwrap();
    let cues = cues(&vtt);
    assert_eq!(cues.len(), SCRIPT.len(), "{vtt}\nalice:\n{}", log(&alice));
    let heard: Vec<&str> = cues.iter().map(|(_, o)| o.as_str()).collect();
    let wer = word_error_rate(&SCRIPT.join(" "), &heard.join(" "));
    println!(
        "remote captions: WER {:.1}% over {} words",
        wer * 100.0,
        normalize_words(&SCRIPT.join(" ")).len()
    );
    assert!(wer <= 0.10, "WER {wer}: {heard:?}");
    for (translation, original) in &cues {
        assert_eq!(
            translation,
            &tidy(original, &apertium_oneshot(original)),
            "for '{original}'"
        );
    }

    // The figures the endpoints kept.
    let stats = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p(f)).unwrap()).unwrap()
    };
    let (sa, sb) = (stats("alice.json"), stats("bob.json"));
    let sent = &sa["captions"];
    let got = &sb["captions"];
    assert_eq!(sent["sent_finals"], SCRIPT.len() as u64, "{sa}");
    assert_eq!(got["received_finals"], sent["sent_finals"], "{sb}");
    assert_eq!(got["received_malformed"], 0);
    let outgoing = &sent["outgoing"];
    assert_eq!(outgoing["frames_dropped"], 0, "{outgoing}");
    assert_eq!(outgoing["utterances_dropped"], 0, "{outgoing}");
    println!(
        "caption lag at Bob (ms after the audio played): {}; Alice's processing (ms): {}",
        got["received_lag_ms"], sent["processing_ms"]
    );
    // Translation never cost the call audio a frame.
    assert_eq!(sb["frames_decrypted"], sa["frames_sent"], "{sa}\n{sb}");
    assert_eq!(sa["relayed"], true);
    assert_eq!(sb["relayed"], true);

    // Nothing of the captions crossed the network in the clear.
    let pcap = std::fs::read(p("loopback.pcap")).unwrap();
    println!("captured {} bytes of loopback traffic", pcap.len());
    assert!(
        contains(&pcap, marker.as_bytes()),
        "positive control: the marker sent in the clear must be found"
    );
    for (translation, original) in &cues {
        for run in four_word_runs(original)
            .into_iter()
            .chain(four_word_runs(translation))
        {
            assert!(
                !contains(&pcap, run.as_bytes()),
                "caption text '{run}' crossed the network in the clear"
            );
        }
    }
}

#[test]
fn the_pipeline_works_with_no_network_and_opens_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    speech(&wav);
    let trace = dir.path().join("trace.txt");
    // A new network namespace has only a loopback interface, and it is down.
    let out = Command::new("unshare")
        .args([
            "--net",
            "--",
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=socket,connect",
            "-o",
        ])
        .arg(&trace)
        .arg(binary("aparte"))
        .args(["translate", "--lang", "en", "--to", "es", "--json"])
        .arg(&wav)
        .output()
        .expect("unshare and strace are needed: bash scripts/install-deps");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let captions: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(captions.len(), SCRIPT.len(), "{stderr}");
    for c in &captions {
        assert_eq!(c["translation"]["lang"], "es");
        assert!(!c["translation"]["text"].as_str().unwrap().is_empty());
    }
    let trace = std::fs::read_to_string(&trace).unwrap();
    let inet: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("AF_INET") || l.contains("AF_INET6") || l.contains("AF_PACKET"))
        .collect();
    assert!(
        inet.is_empty(),
        "network sockets opened:\n{}",
        inet.join("\n")
    );
    println!(
        "no network: {} captions, {} socket/connect calls traced (none for the Internet)",
        captions.len(),
        trace.lines().filter(|l| l.contains("socket(")).count()
    );
}

#[test]
fn a_listener_can_translate_the_peers_audio_itself() {
    // Alice has no translation; Bob recognizes her decoded audio (after Opus, the jitter
    // buffer and the relay) on his own machine and reads it in Spanish.
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    speech(&p("alice.wav"));
    let server = SignalingServer::start(&["--turn-listen", "127.0.0.1:0"]);
    let room = new_room();
    let alice = call(
        &server,
        &room,
        &p("home-a"),
        &["--input", p("alice.wav").to_str().unwrap()],
    );
    let bob = call(
        &server,
        &room,
        &p("home-b"),
        &[
            "--input",
            "silence",
            "--lang",
            "es",
            "--peer-lang",
            "en",
            "--translate-incoming",
            "--captions",
            p("bob.vtt").to_str().unwrap(),
            "--show-source",
            "--stats-json",
            p("bob.json").to_str().unwrap(),
        ],
    );
    let (_alice, bob) = both_succeed(alice, bob);
    let vtt = std::fs::read_to_string(p("bob.vtt")).unwrap();
    let cues = cues(&vtt);
    let heard: Vec<&str> = cues.iter().map(|(_, o)| o.as_str()).collect();
    // The call ends when Alice's file does, so Bob's last utterance may still be in his
    // recognizer then; every cue he did write must be right.
    assert!(cues.len() >= SCRIPT.len() - 1, "{vtt}\nbob:\n{}", log(&bob));
    let reference: Vec<&str> = SCRIPT[..cues.len()].to_vec();
    let wer = word_error_rate(&reference.join(" "), &heard.join(" "));
    println!(
        "captions of the peer made here: WER {:.1}% over {} cues",
        wer * 100.0,
        cues.len()
    );
    assert!(wer <= 0.10, "WER {wer}: {heard:?}");
    for (translation, original) in &cues {
        assert_eq!(
            translation,
            &tidy(original, &apertium_oneshot(original)),
            "for '{original}'"
        );
    }
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("bob.json")).unwrap()).unwrap();
    assert_eq!(
        stats["captions"]["incoming"]["frames_dropped"], 0,
        "{stats}"
    );
}

/// Speech to speech on the listener's endpoint: Alice speaks Spanish and sends English
/// captions (recognized and translated on her machine); Bob's endpoint speaks each one in
/// English (espeak-ng, in-process) instead of Alice's voice (`--speak-only`). Whisper then
/// recognizes Bob's recording, and what it hears must be the captions Bob received.
#[test]
fn the_listener_hears_the_translation_spoken() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    speech_in(&p("alice.wav"), "es", &SPANISH_SCRIPT);
    let server = SignalingServer::start(&["--turn-listen", "127.0.0.1:0"]);
    let room = new_room();
    let alice = call(
        &server,
        &room,
        &p("home-a"),
        &[
            "--input",
            p("alice.wav").to_str().unwrap(),
            "--lang",
            "es",
            "--peer-lang",
            "en",
        ],
    );
    let bob = call(
        &server,
        &room,
        &p("home-b"),
        &[
            "--input",
            "silence",
            "--lang",
            "en",
            "--speak-only",
            "--speak-rate",
            "160",
            "--output",
            p("bob-heard.wav").to_str().unwrap(),
            "--captions",
            p("bob.vtt").to_str().unwrap(),
            "--stats-json",
            p("bob.json").to_str().unwrap(),
        ],
    );
    let (alice, bob) = both_succeed(alice, bob);
    let vtt = std::fs::read_to_string(p("bob.vtt")).unwrap();
    let cues = cues(&vtt);
    assert_eq!(
        cues.len(),
        SPANISH_SCRIPT.len(),
        "{vtt}\nalice:\n{}",
        log(&alice)
    );

    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("bob.json")).unwrap()).unwrap();
    let speech = &stats["captions"]["speech"];
    println!("spoken translation at Bob: {speech}");
    let n = cues.len() as u64;
    assert_eq!(speech["requested"], n, "{speech}\n{}", log(&bob));
    assert_eq!(speech["synthesized"], n, "{speech}");
    assert_eq!(speech["mixer_finished"], n, "{speech}");
    for counter in ["dropped_busy", "failed", "mixer_dropped_full"] {
        assert_eq!(speech[counter], 0, "{counter}: {speech}");
    }

    // What Bob heard, recognized by Whisper (tiny.en) on this machine: with --speak-only,
    // the English captions spoken, and nothing of Alice's Spanish. The reference beside it:
    // the same captions spoken by the espeak-ng program at the same rate, recognized the
    // same way (the captions come from recognizing synthetic Spanish, so some are odd
    // English that Whisper mishears however it is spoken).
    let said: Vec<&str> = cues.iter().map(|(t, _)| t.as_str()).collect();
    speech_in(&p("reference.wav"), "en", &said);
    let heard = transcribe_english(&p("bob-heard.wav"));
    let reference = transcribe_english(&p("reference.wav"));
    let wer = word_error_rate(&said.join(" "), &heard.join(" "));
    let reference_wer = word_error_rate(&said.join(" "), &reference.join(" "));
    println!(
        "spoken translation recognized by Whisper tiny.en: WER {:.1}% (espeak-ng program, \
         same captions: {:.1}%) over {} words; captions {said:?}, heard {heard:?}, \
         reference {reference:?}",
        wer * 100.0,
        reference_wer * 100.0,
        normalize_words(&said.join(" ")).len()
    );
    assert!(
        wer <= reference_wer + 0.10,
        "WER {wer} against {reference_wer} for the reference: captions {said:?}, heard {heard:?}"
    );
}

/// What Whisper tiny.en recognizes in an English recording (`aparte translate`).
fn transcribe_english(wav: &Path) -> Vec<String> {
    let out = Command::new(binary("aparte"))
        .args(["translate", "--lang", "en", "--json"])
        .arg(wav)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", log(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let c: serde_json::Value = serde_json::from_str(l).unwrap();
            c["text"].as_str().unwrap().to_string()
        })
        .collect()
}
