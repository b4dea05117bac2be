//! `aparte`: place an end-to-end encrypted call, manage identities and peers.
#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aparte_client::audio::{Input, Output};
use aparte_client::call::{run_call, CallOptions, CallReport, CallUpdate, UserAction};
use aparte_e2ee::identity::{KnownPeers, PeerName};
use aparte_e2ee::store;
use aparte_session::{Policy, SecurityStatus};
use aparte_signaling_protocol::RoomId;
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

mod demo;

/// aparté: two-party voice calls that nobody in between can listen to.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Where aparté keeps its identity key and known peers (default: the platform config dir,
    /// e.g. ~/.config/aparte).
    #[arg(long, env = "APARTE_HOME", global = true)]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Place (or answer) a call in a room.
    Call(CallArgs),
    /// Room helpers.
    Room {
        #[command(subcommand)]
        command: RoomCommand,
    },
    /// Show this machine's identity fingerprint (created on first use).
    Id,
    /// List known peers and whether they are verified.
    Peers,
    /// Run a complete encrypted call on this machine: a signaling server with its TURN relay
    /// on loopback, and two peers (Alice and Bob) speaking to each other through the relay.
    Demo {
        /// Where to write the speech samples, what each side heard, and the call statistics.
        #[arg(long, default_value = "aparte-demo")]
        out_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum RoomCommand {
    /// Print a new unguessable room id (128 random bits).
    New {
        /// Signaling server URL to build a shareable link with.
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct CallArgs {
    /// Signaling server URL, e.g. ws://127.0.0.1:8080/ or wss://signal.example.org/.
    #[arg(long, env = "APARTE_SERVER")]
    server: String,
    /// Room id (make one with `aparte room new`).
    #[arg(long)]
    room: String,
    /// Join token, when the server requires one.
    #[arg(long, env = "APARTE_TOKEN")]
    token: Option<String>,
    /// What to send: a WAV file path, `tone` (440 Hz) or `silence`.
    #[arg(long, default_value = "tone")]
    input: String,
    /// Where received audio goes: a WAV file path or `null`.
    #[arg(long, default_value = "null")]
    output: String,
    /// Use only the TURN relay: the peer never learns your address.
    #[arg(long)]
    relay_only: bool,
    /// Use only loopback addresses (single-machine tests).
    #[arg(long, hide = true)]
    loopback_only: bool,
    /// Hang up after this many seconds of media (default: when a WAV input ends, else never).
    #[arg(long)]
    duration: Option<f64>,
    /// Write call statistics as JSON to this file when the call ends.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// Local name of the peer, to pin its identity and detect a later change (key continuity).
    #[arg(long)]
    peer: Option<String>,
    /// Scripted calls: accept only this SAS (four words or eight digits). RISK: only as safe
    /// as the channel that told you the expected SAS.
    #[arg(long, conflicts_with = "tofu")]
    expect_sas: Option<String>,
    /// Scripted calls: trust whatever identity the peer shows the first time, without a SAS
    /// check. RISK: a man-in-the-middle on THIS call is not detected; later calls are
    /// protected by the pinned identity.
    #[arg(long)]
    tofu: bool,
    /// Call without a long-term identity (no key continuity).
    #[arg(long)]
    no_identity: bool,
}

fn home(cli_home: &Option<PathBuf>) -> PathBuf {
    cli_home.clone().unwrap_or_else(|| {
        dirs::config_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("aparte")
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let home = home(&cli.home);
    let result = match cli.command {
        Command::Call(args) => call(args, &home).await,
        Command::Demo { out_dir } => demo::run(&out_dir).await,
        Command::Room {
            command: RoomCommand::New { server },
        } => {
            let room = RoomId::random(&mut rand_core::OsRng);
            match server {
                Some(s) => println!("{room}\n{}?room={room}", s.trim_end_matches('/')),
                None => println!("{room}"),
            }
            Ok(())
        }
        Command::Id => identity(&home).map(|(id, created)| {
            if created {
                eprintln!("created a new identity in {}", home.display());
            }
            println!("{}", id.public().fingerprint());
        }),
        Command::Peers => store::load_known_peers(&home.join("known_peers"))
            .map_err(|e| e.to_string())
            .map(|peers| {
                if peers.is_empty() {
                    println!("no known peers");
                }
                for (name, record) in peers.iter() {
                    let state = if record.verified {
                        "verified"
                    } else {
                        "unverified"
                    };
                    println!(
                        "{:<24} {}  {}",
                        name.as_str(),
                        record.identity.fingerprint(),
                        state
                    );
                }
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn identity(home: &std::path::Path) -> Result<(aparte_e2ee::identity::IdentityKey, bool), String> {
    store::load_or_create_identity(&home.join("identity"), &mut rand_core::OsRng)
        .map_err(|e| e.to_string())
}

async fn call(args: CallArgs, home: &std::path::Path) -> Result<(), String> {
    let room = RoomId::parse(&args.room).map_err(|e| format!("--room: {e}"))?;
    let input = match args.input.as_str() {
        "tone" => Input::Tone(440.0),
        "silence" => Input::Silence,
        path => Input::Wav(PathBuf::from(path)),
    };
    let output = match args.output.as_str() {
        "null" => Output::Null,
        path => Output::Wav(PathBuf::from(path)),
    };
    let duration = match args.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => return Err("--duration must be a positive number of seconds".into()),
        None => None,
    };
    let identity = if args.no_identity {
        None
    } else {
        Some(identity(home)?.0)
    };
    let peers_path = home.join("known_peers");
    let known_peers = store::load_known_peers(&peers_path).map_err(|e| e.to_string())?;
    let peer_name = args
        .peer
        .as_deref()
        .map(PeerName::new)
        .transpose()
        .map_err(|e| format!("--peer: {e}"))?;
    let policy = match (&args.expect_sas, args.tofu) {
        (Some(sas), _) => Policy::ExpectSas(sas.clone()),
        (None, true) => Policy::TrustOnFirstUse,
        (None, false) => Policy::Interactive,
    };
    let interactive = policy == Policy::Interactive;
    let options = CallOptions {
        server: args.server.clone(),
        room,
        token: args.token.clone(),
        input,
        output,
        relay_only: args.relay_only,
        loopback_only: args.loopback_only,
        duration,
        policy,
        identity,
        peer_name,
        known_peers,
    };

    let (actions_tx, actions) = mpsc::channel(8);
    let (updates_tx, mut updates) = mpsc::channel(64);
    if interactive && std::io::stdin().is_terminal() {
        let tx = actions_tx.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let action = match line.trim() {
                    "y" | "yes" => UserAction::ConfirmSas,
                    "n" | "no" => UserAction::RejectSas,
                    "override" => UserAction::OverrideIdentityChange,
                    "q" | "quit" => UserAction::HangUp,
                    _ => continue,
                };
                if tx.blocking_send(action).is_err() {
                    break;
                }
            }
        });
    }
    {
        let tx = actions_tx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = tx.send(UserAction::HangUp).await;
            }
        });
    }
    drop(actions_tx);

    let display = tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        while let Some(update) = updates.recv().await {
            show(update, tty, interactive, &peers_path);
        }
    });
    let result = run_call(options, actions, updates_tx).await;
    let _ = display.await;
    let report = result.map_err(|e| e.to_string())?;
    eprintln!(
        "\ncall ended ({}): {}, {} frames sent, {} decrypted, {} rejected, {} concealed",
        report.ended_by,
        report.security,
        report.frames_sent,
        report.frames_decrypted,
        report.frames_rejected.values().sum::<u64>(),
        report.frames_concealed
    );
    if let Some(path) = &args.stats_json {
        write_report(path, &report)?;
    }
    Ok(())
}

fn write_report(path: &std::path::Path, report: &CallReport) -> Result<(), String> {
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

fn show(update: CallUpdate, tty: bool, interactive: bool, peers_path: &std::path::Path) {
    let mut err = std::io::stderr().lock();
    match update {
        CallUpdate::Joined { peer_present } => {
            let _ = writeln!(
                err,
                "joined the room; {}",
                if peer_present {
                    "peer is here, connecting"
                } else {
                    "waiting for the peer"
                }
            );
        }
        CallUpdate::Security(status) => {
            let _ = write!(
                err,
                "{}[{}]",
                if tty { "\r\x1b[K" } else { "" },
                status.label()
            );
            match &status {
                SecurityStatus::Encrypted {
                    sas,
                    confirmed_locally,
                } => {
                    let _ = write!(err, " SAS: \"{}\"  ({})", sas.words_string(), sas.digits());
                    if interactive && !confirmed_locally {
                        let _ = write!(
                            err,
                            "\n  read it aloud with your peer; type y if it matches, n if not"
                        );
                    }
                }
                SecurityStatus::Verified { sas, .. } => {
                    let _ = write!(err, " SAS: \"{}\"", sas.words_string());
                }
                SecurityStatus::IdentityChanged {
                    pinned, presented, ..
                } => {
                    let _ = write!(
                        err,
                        "\n  !!! the peer's identity CHANGED: pinned {} now {}\n  !!! this may be a man-in-the-middle. Type `override` only if you know why it changed.",
                        pinned.fingerprint(),
                        presented.fingerprint()
                    );
                }
                SecurityStatus::Failed(reason) => {
                    let _ = write!(err, " {reason:?}");
                }
                _ => {}
            }
            let _ = writeln!(err);
        }
        CallUpdate::Link(state) => {
            let _ = writeln!(err, "link: {state:?}");
        }
        CallUpdate::PeersChanged(peers) => {
            if let Err(e) = save_peers(peers_path, &peers) {
                let _ = writeln!(err, "warning: could not save known peers: {e}");
            }
        }
        CallUpdate::Live(live) => {
            if tty {
                let _ = write!(
                    err,
                    "\r\x1b[K{:>6.1}s  sent {}  recv {}  lost {}  jitter {} ms  delay {} ms  {:.1} kbit/s  in {:.0} dBFS  out {:.0} dBFS",
                    live.elapsed_s,
                    live.frames_sent,
                    live.frames_decrypted,
                    live.concealed,
                    live.jitter_ms,
                    live.playout_delay_ms,
                    live.send_kbps,
                    live.input_dbfs,
                    live.output_dbfs
                );
            }
        }
        CallUpdate::PeerLeft => {
            let _ = writeln!(err, "\nthe peer left the call");
        }
        CallUpdate::SignalingLost(reason) => {
            let _ = writeln!(
                err,
                "\nsignaling connection lost ({reason}); the call continues peer to peer"
            );
        }
    }
}

fn save_peers(path: &std::path::Path, peers: &KnownPeers) -> Result<(), String> {
    store::save_known_peers(path, peers).map_err(|e| e.to_string())
}
