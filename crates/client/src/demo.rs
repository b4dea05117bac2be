//! `aparte demo`: a whole encrypted call on one machine, through the real signaling server and
//! its TURN relay, with the two people played by the demo. It compares the two SAS values the
//! way people would (they must be equal), confirms them on both sides, and reports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aparte_client::audio::{Input, Output};
use aparte_client::call::{run_call, CallOptions, CallReport, CallUpdate, UserAction};
use aparte_client::captions::{CaptionSource, TranslationOptions};
use aparte_e2ee::identity::KnownPeers;
use aparte_session::{Policy, SecurityStatus};
use aparte_signaling_protocol::RoomId;
use aparte_translate::engines::EngineChoice;
use aparte_translate::Language;
use tokio::sync::mpsc;

const ALICE_SAYS: &str = "Hello Bob, this is Alice. This call is encrypted end to end, and the relay in between cannot hear a word.";
const BOB_SAYS: &str =
    "Hi Alice, Bob here. I can hear you clearly. Let us compare the safety words.";

/// Runs the demo, writing its files under `out_dir`.
pub(crate) async fn run(out_dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let file = |name: &str| out_dir.join(name);
    println!(
        "aparté demo: a two-person call through a signaling server and TURN relay on this machine"
    );
    speak(ALICE_SAYS, &file("alice-says.wav"))?;
    speak(BOB_SAYS, &file("bob-says.wav"))?;

    // The real server, in this process: the same code as the `aparte-signaling` binary.
    let server = aparte_signaling_server::Embedded::start_loopback()
        .await
        .map_err(|e| format!("cannot start the signaling server on loopback: {e}"))?;
    let url = server.ws_url();
    println!(
        "signaling server at {url}, TURN relay at udp {}, both in this process; calls are relay-only",
        server.turn_addr()
    );
    let room = RoomId::random(&mut rand_core::OsRng);
    // Each side captions its own speech (Whisper tiny.en) and translates it into Spanish
    // (Apertium) on its own CPU; the peer gets the captions inside the call's encryption.
    let translation = |captions: &str| TranslationOptions {
        outgoing: Some(EngineChoice::new(Language::English, Language::Spanish)),
        incoming: None,
        captions_file: Some(file(captions)),
        speak: None,
        // The demo shows what was said beside Apertium's Spanish.
        show_source: true,
    };
    translation("-")
        .outgoing
        .as_ref()
        .map(EngineChoice::check)
        .transpose()
        .map_err(|e| format!("the demo shows translated captions: {e}"))?;
    let tls = aparte_client::tls::client_config(None).map_err(|e| e.to_string())?;
    let options = |input: &str, output: &str, captions: &str| CallOptions {
        server: url.clone(),
        tls: std::sync::Arc::clone(&tls),
        turn_tls: None,
        room: room.clone(),
        token: None,
        input: Input::Wav(file(input)),
        output: Output::Wav(file(output)),
        relay_only: true,
        loopback_only: true,
        duration: None,
        policy: Policy::Interactive,
        identity: None,
        peer_name: None,
        known_peers: KnownPeers::new(),
        translation: translation(captions),
    };
    let (alice_actions, alice_rx) = mpsc::channel(4);
    let (bob_actions, bob_rx) = mpsc::channel(4);
    let (alice_updates, alice_updates_rx) = mpsc::channel(64);
    let (bob_updates, bob_updates_rx) = mpsc::channel(64);
    let people = tokio::spawn(play_the_people(
        alice_updates_rx,
        bob_updates_rx,
        alice_actions,
        bob_actions,
    ));
    let alice = run_call(
        options("alice-says.wav", "alice-heard.wav", "alice-read.vtt"),
        alice_rx,
        alice_updates,
    );
    // Bob joins second, so he sends the offer and initiates the handshake.
    let bob = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        run_call(
            options("bob-says.wav", "bob-heard.wav", "bob-read.vtt"),
            bob_rx,
            bob_updates,
        )
        .await
    };
    let (alice, bob) = tokio::join!(alice, bob);
    let sas_equal = people.await.map_err(|e| e.to_string())?;
    server.stop().await;
    let (alice, bob) = (
        alice.map_err(|e| e.to_string())?,
        bob.map_err(|e| e.to_string())?,
    );

    for (name, report) in [("alice", &alice), ("bob", &bob)] {
        let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
        std::fs::write(file(&format!("{name}-stats.json")), json + "\n")
            .map_err(|e| e.to_string())?;
        print_report(name, report);
    }
    println!();
    println!("what Alice heard: {}", file("alice-heard.wav").display());
    println!("what Bob heard:   {}", file("bob-heard.wav").display());
    println!("captions Alice read: {}", file("alice-read.vtt").display());
    println!("captions Bob read:   {}", file("bob-read.vtt").display());
    println!("statistics:       {}", file("alice-stats.json").display());
    let received = |r: &CallReport| r.captions.as_ref().map_or(0, |c| c.received_finals);
    if received(&alice) == 0 || received(&bob) == 0 {
        return Err("no translated caption crossed the call".into());
    }
    if !sas_equal || !alice.verified || !bob.verified {
        return Err("the call did not verify".into());
    }
    Ok(())
}

/// One side's summary line. Its CPU figure is the whole process's since that call began: both
/// peers, their caption pipelines and the server all run in this one process.
fn print_report(name: &str, r: &CallReport) {
    let rejected: u64 = r.frames_rejected.values().sum();
    println!(
        "{name:>5}: {} | relayed: {} | sent {} frames, decrypted {}, rejected {}, concealed {} | e2ee overhead {:.1} B/frame | setup {} ms | process CPU {:.2} s",
        r.security,
        r.relayed,
        r.frames_sent,
        r.frames_decrypted,
        rejected,
        r.frames_concealed,
        r.e2ee_overhead_bytes_per_frame,
        r.setup_ms.map_or("-".into(), |m| m.to_string()),
        r.cpu_seconds
    );
}

/// Plays both people: waits until each side shows its SAS, compares them as two people
/// reading them aloud would, and confirms on both sides only if they match.
async fn play_the_people(
    mut alice: mpsc::Receiver<CallUpdate>,
    mut bob: mpsc::Receiver<CallUpdate>,
    alice_actions: mpsc::Sender<UserAction>,
    bob_actions: mpsc::Sender<UserAction>,
) -> bool {
    let (mut sas_a, mut sas_b) = (None, None);
    let mut decided = None;
    loop {
        let (who, update) = tokio::select! {
            Some(u) = alice.recv() => ("alice", u),
            Some(u) = bob.recv() => ("bob", u),
            else => break,
        };
        match update {
            CallUpdate::Security(SecurityStatus::Encrypted {
                sas,
                confirmed_locally: false,
            }) => {
                println!(
                    "{who:>5} sees the SAS: \"{}\" ({})",
                    sas.words_string(),
                    sas.digits()
                );
                if who == "alice" {
                    sas_a = Some(sas);
                } else {
                    sas_b = Some(sas);
                }
            }
            CallUpdate::Security(SecurityStatus::Verified { .. }) => {
                println!("{who:>5}: encrypted and VERIFIED");
            }
            CallUpdate::Security(status) => println!("{who:>5}: {}", status.label()),
            CallUpdate::Link(state) => println!("{who:>5}: link {state:?}"),
            CallUpdate::Caption(CaptionSource::Peer, caption) if caption.is_final => {
                let speaker = if who == "alice" { "Bob" } else { "Alice" };
                println!(
                    "{who:>5} reads {speaker}'s caption, translated on {speaker}'s machine: \"{}\"  ({}: \"{}\")",
                    caption.display_text(),
                    caption.lang,
                    caption.text
                );
            }
            CallUpdate::Translation(news) => println!("{who:>5}: {news}"),
            _ => {}
        }
        if decided.is_none() {
            if let (Some(a), Some(b)) = (&sas_a, &sas_b) {
                let equal = a == b;
                println!(
                    "the two people compare their SAS: {}",
                    if equal {
                        "they match"
                    } else {
                        "MISMATCH: someone is in the middle"
                    }
                );
                let action = if equal {
                    UserAction::ConfirmSas
                } else {
                    UserAction::RejectSas
                };
                let _ = alice_actions.send(action).await;
                let _ = bob_actions.send(action).await;
                decided = Some(equal);
            }
        }
    }
    decided.unwrap_or(false)
}

fn speak(text: &str, path: &PathBuf) -> Result<(), String> {
    let status = Command::new("espeak-ng")
        .args(["-v", "en", "-s", "160", "-w"])
        .arg(path)
        .arg(text)
        .status()
        .map_err(|e| format!("espeak-ng is needed for the demo's speech samples ({e}); install it with `bash scripts/install-deps`"))?;
    if status.success() {
        Ok(())
    } else {
        Err("espeak-ng failed".into())
    }
}
