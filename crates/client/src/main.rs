//! `aparte`: place an end-to-end encrypted call, manage identities and peers.
#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aparte_client::audio::{Input, Output};
use aparte_client::call::{run_call, CallOptions, CallReport, CallUpdate, UserAction};
use aparte_client::captions::{CaptionSource, TranslationOptions};
use aparte_client::config::{self, Settings};
use aparte_client::devices::DeviceStats;
use aparte_client::offline;
use aparte_client::outcome::Outcome;
use aparte_client::output_file::PendingFile;
use aparte_client::speak::SpeakOptions;
use aparte_e2ee::identity::{KnownPeers, PeerName};
use aparte_e2ee::store;
use aparte_session::{Policy, SecurityStatus};
use aparte_signaling_protocol::RoomId;
use aparte_translate::apertium::DEFAULT_MODES_DIR;
use aparte_translate::engines::EngineChoice;
use aparte_translate::models::ModelDir;
use aparte_translate::Language;
use aparte_tts::MixMode;
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

mod demo;

/// `aparte call --help`'s list of exit codes (docs/CLIENT.md has the same table).
const CALL_EXIT_CODES: &str = "Exit codes:
  0  the call completed with verified or accepted keys
  1  a local failure (sound device, file, internal error)
  2  bad usage (a flag, value or config file); nothing was attempted
  3  security: SAS mismatch or rejected, identity CHANGED (or missing), the key exchange
     failed a check, or every frame received failed authentication
  4  no network path: ICE found no working pair, the relay was unreachable, or the link was
     lost for good
  5  signaling: the server was unreachable or did not answer, TLS failed, or it refused the
     join (token, full room)
  6  incomplete: the call ended before the keys were verified or accepted
--stats-json is written in every case, with `outcome`, `exit_code` and `ended_by`.";

/// A command's failure: the one line to print and the exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: Outcome::Usage.exit_code(),
            message: message.into(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            code: Outcome::Failed.exit_code(),
            message,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// aparté: two-party voice calls that nobody in between can listen to.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Where aparté keeps its identity key and known peers (default: `home` in the config file,
    /// else the platform config dir, e.g. ~/.config/aparte).
    #[arg(long, env = "APARTE_HOME", global = true)]
    home: Option<PathBuf>,
    /// Config file with defaults (default: config.toml in the home folder). Flags override it.
    #[arg(long, env = "APARTE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Place (or answer) a call in a room.
    #[command(after_help = CALL_EXIT_CODES)]
    Call(Box<CallArgs>),
    /// Room helpers.
    Room {
        #[command(subcommand)]
        command: RoomCommand,
    },
    /// Show this machine's identity fingerprint (created on first use).
    Id,
    /// List known peers and whether they are verified.
    Peers,
    /// List microphones and speakers (names for --input-device / --output-device).
    Devices,
    /// The config file: where it is, whether it is valid, an example.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Which languages this machine can caption and translate, and which models it has.
    Languages {
        /// Where the speech models are.
        #[arg(long, env = "APARTE_MODEL_DIR")]
        model_dir: Option<PathBuf>,
    },
    /// Caption and translate a WAV file on this machine, with the pipeline calls use (no
    /// network involved). Prints one line per utterance.
    Translate {
        /// The WAV file (any common format).
        file: PathBuf,
        /// The language spoken in it.
        #[arg(long)]
        lang: String,
        /// The caption language [default: --lang, i.e. a transcript].
        #[arg(long)]
        to: Option<String>,
        /// Also write the captions as WebVTT.
        #[arg(long)]
        captions: Option<PathBuf>,
        /// Print each caption as a JSON line (the wire format).
        #[arg(long)]
        json: bool,
        /// Where the speech models are.
        #[arg(long, env = "APARTE_MODEL_DIR")]
        model_dir: Option<PathBuf>,
    },
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

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the config file's path (and say on stderr whether it exists).
    Path,
    /// Parse the config file and print the settings it holds.
    Check,
    /// Print a commented example config file.
    Example,
}

#[derive(clap::Args, Debug)]
struct CallArgs {
    /// Signaling server URL, e.g. ws://127.0.0.1:8443/ws or wss://signal.example.org/ws
    /// (config: `server`).
    #[arg(long, env = "APARTE_SERVER")]
    server: Option<String>,
    /// Also trust the CA certificates in this PEM file for wss:// (a self-signed server);
    /// the usual web roots stay trusted (config: `ca_file`).
    #[arg(long, env = "APARTE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Room id (make one with `aparte room new`).
    #[arg(long)]
    room: String,
    /// Join token, when the server requires one.
    #[arg(long, env = "APARTE_TOKEN")]
    token: Option<String>,
    /// What to send: `mic` (a microphone), a WAV file path, `tone` (440 Hz) or `silence`
    /// [default: tone].
    #[arg(long)]
    input: Option<String>,
    /// Where received audio goes: `speaker`, a WAV file path or `null` [default: null].
    #[arg(long)]
    output: Option<String>,
    /// The microphone for `--input mic` (a name from `aparte devices`; default: the system's).
    #[arg(long)]
    input_device: Option<String>,
    /// The speaker for `--output speaker` (a name from `aparte devices`; default: the
    /// system's).
    #[arg(long)]
    output_device: Option<String>,
    /// Use only the TURN relay: the peer never learns your address.
    #[arg(long, overrides_with = "no_relay_only")]
    relay_only: bool,
    /// Allow direct paths even if the config file sets `relay_only = true`.
    #[arg(long, overrides_with = "relay_only")]
    no_relay_only: bool,
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
    /// The language you speak (e.g. en, es). Turns on captions of your speech, recognized on
    /// this machine and sent to the peer inside the call's encryption (see `aparte languages`).
    #[arg(long)]
    lang: Option<String>,
    /// The language the peer reads: your captions are translated into it on this machine
    /// [default: same as --lang, i.e. captions without translation].
    #[arg(long)]
    peer_lang: Option<String>,
    /// Also recognize and translate the peer's incoming audio here (for a peer without
    /// translation); needs --peer-lang (what they speak) and --lang (what you read).
    #[arg(long)]
    translate_incoming: bool,
    /// Write the captions of what the peer says as WebVTT to this file.
    #[arg(long)]
    captions: Option<PathBuf>,
    /// Speak the translations of what the peer says aloud, here, in your language (--lang),
    /// with the peer's own voice lowered under them (espeak-ng, on this machine).
    #[arg(long)]
    speak_translation: bool,
    /// Like --speak-translation, but the peer's own voice is not played at all.
    #[arg(long)]
    speak_only: bool,
    /// Speaking rate of the spoken translations, in words per minute.
    #[arg(long, default_value_t = aparte_tts::DEFAULT_WORDS_PER_MINUTE,
          value_parser = clap::value_parser!(u16).range(80..=450))]
    speak_rate: u16,
    /// Show what the peer said beside each translated caption (here and in --captions), so a
    /// bad translation never hides the words.
    #[arg(long)]
    show_source: bool,
    /// Where the speech models are [default: $APARTE_MODEL_DIR or ~/.local/share/aparte/models].
    #[arg(long, env = "APARTE_MODEL_DIR")]
    model_dir: Option<PathBuf>,
}

fn translate_command(
    file: &std::path::Path,
    lang: &str,
    to: Option<&str>,
    captions: Option<&std::path::Path>,
    json: bool,
    model_dir: &Option<PathBuf>,
) -> Result<(), String> {
    let spoken: Language = lang.parse().map_err(|e| format!("--lang: {e}"))?;
    let caption: Language = match to {
        Some(code) => code.parse().map_err(|e| format!("--to: {e}"))?,
        None => spoken,
    };
    let choice = EngineChoice {
        models: model_dir
            .clone()
            .map_or_else(ModelDir::default_location, ModelDir::new),
        ..EngineChoice::new(spoken, caption)
    };
    offline::translate_file(file, choice, captions, json)
}

/// The translation flags as pipeline choices.
fn translation_options(args: &CallArgs, settings: &Settings) -> Result<TranslationOptions, String> {
    let parse = |flag: &str, v: &Option<String>| -> Result<Option<Language>, String> {
        v.as_deref()
            .map(|code| code.parse().map_err(|e| format!("{flag}: {e}")))
            .transpose()
    };
    let lang = parse("--lang", &settings.lang)?;
    let peer_lang = parse("--peer-lang", &settings.peer_lang)?;
    let models = settings
        .model_dir
        .clone()
        .map_or_else(ModelDir::default_location, ModelDir::new);
    let choice = |spoken: Language, caption: Language| EngineChoice {
        models: models.clone(),
        ..EngineChoice::new(spoken, caption)
    };
    let outgoing = lang.map(|l| choice(l, peer_lang.unwrap_or(l)));
    let incoming = match (args.translate_incoming, peer_lang, lang) {
        (true, Some(theirs), Some(mine)) => Some(choice(theirs, mine)),
        (true, _, _) => {
            return Err(
                "--translate-incoming needs --peer-lang (what the peer speaks) and --lang (what you read), as flags or in the config file".into(),
            )
        }
        _ => None,
    };
    let speak = match (args.speak_translation || args.speak_only, lang) {
        (false, _) => None,
        (true, Some(mine)) => Some(SpeakOptions {
            language: mine.code().to_owned(),
            mode: if args.speak_only {
                MixMode::Replace
            } else {
                MixMode::Duck
            },
            words_per_minute: args.speak_rate,
        }),
        (true, None) => {
            return Err(
                "--speak-translation and --speak-only need --lang (the language you listen in), as a flag or in the config file".into(),
            )
        }
    };
    Ok(TranslationOptions {
        outgoing,
        incoming,
        captions_file: args.captions.clone(),
        speak,
        show_source: args.show_source,
    })
}

/// The config file's settings (empty when the default file does not exist).
fn file_settings(cli: &Cli) -> Result<(Option<config::Location>, Settings), String> {
    let location = config::locate(cli.config.as_deref(), cli.home.as_deref());
    let settings = match &location {
        Some(location) => config::load(location).map_err(|e| e.to_string())?,
        None => Settings::default(),
    };
    Ok((location, settings))
}

/// The home folder: `--home`/`APARTE_HOME`, else the config file's `home`, else the platform
/// default.
fn home(cli_home: &Option<PathBuf>, file: &Settings) -> PathBuf {
    cli_home
        .clone()
        .or_else(|| file.home.clone())
        .or_else(config::default_home)
        .unwrap_or_else(|| PathBuf::from("aparte"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_diagnostic_log();
    let result = run(cli).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// `APARTE_LOG=<filter>` (e.g. `info`, `webrtc_ice=debug,aparte_client=debug`) writes the
/// client's and its libraries' diagnostic log to stderr, for debugging a connection. It shows
/// addresses and ICE details, never a key, a SAS, audio or caption text (our code logs none of
/// them). Off by default.
fn init_diagnostic_log() {
    let Ok(filter) = std::env::var("APARTE_LOG") else {
        return;
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("warning: APARTE_LOG={filter:?} is not a valid log filter ({e}); no log");
            return;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // Only the commands that use settings read the config file, so a broken file does not get
    // in the way of `devices`, `room new`, `demo` or `config path`.
    let settings = || file_settings(&cli).map(|(_, s)| s);
    match &cli.command {
        Command::Call(args) => {
            let file = settings().map_err(Failure::usage)?;
            let home = home(&cli.home, &file);
            call(args, file, &home).await
        }
        Command::Demo { out_dir } => Ok(demo::run(out_dir).await?),
        Command::Languages { model_dir } => {
            let models = model_dir
                .clone()
                .map_or_else(ModelDir::default_location, ModelDir::new);
            print!(
                "{}",
                offline::languages(&models, std::path::Path::new(DEFAULT_MODES_DIR))
            );
            Ok(())
        }
        Command::Translate {
            file,
            lang,
            to,
            captions,
            json,
            model_dir,
        } => Ok(translate_command(
            file,
            lang,
            to.as_deref(),
            captions.as_deref(),
            *json,
            model_dir,
        )?),
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
        Command::Id => {
            let home = home(&cli.home, &settings()?);
            let (id, created) = identity(&home)?;
            if created {
                eprintln!("created a new identity in {}", home.display());
            }
            println!("{}", id.public().fingerprint());
            Ok(())
        }
        Command::Devices => Ok(aparte_client::devices::list()
            .map(|list| print!("{list}"))
            .map_err(|e| e.to_string())?),
        Command::Config { command } => Ok(config_command(&cli, command)?),
        Command::Peers => {
            let home = home(&cli.home, &settings()?);
            Ok(store::load_known_peers(&home.join("known_peers"))
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
                })?)
        }
    }
}

fn config_command(cli: &Cli, command: &ConfigCommand) -> Result<(), String> {
    match command {
        ConfigCommand::Example => {
            print!("{}", config::EXAMPLE);
            Ok(())
        }
        ConfigCommand::Path => {
            let location = config::locate(cli.config.as_deref(), cli.home.as_deref())
                .ok_or("this platform has no config folder; pass --config FILE")?;
            println!("{}", location.path.display());
            if !location.path.exists() {
                eprintln!("(it does not exist yet: built-in defaults apply; `aparte config example` prints a template)");
            }
            Ok(())
        }
        ConfigCommand::Check => {
            let (location, file) = file_settings(cli)?;
            let Some(location) = location else {
                return Err("this platform has no config folder; pass --config FILE".into());
            };
            if !location.path.exists() {
                println!(
                    "{}: does not exist (built-in defaults apply)",
                    location.path.display()
                );
                return Ok(());
            }
            println!("{}: valid", location.path.display());
            let show = |key: &str, value: Option<String>| {
                if let Some(v) = value {
                    println!("  {key} = {v}");
                }
            };
            show("server", file.server.clone());
            show(
                "token",
                file.token.as_ref().map(|_| "(set, not shown)".to_owned()),
            );
            show("input", file.input.clone());
            show("output", file.output.clone());
            show("input_device", file.input_device.clone());
            show("output_device", file.output_device.clone());
            show("relay_only", file.relay_only.map(|b| b.to_string()));
            show("home", file.home.as_ref().map(|h| h.display().to_string()));
            Ok(())
        }
    }
}

fn identity(home: &std::path::Path) -> Result<(aparte_e2ee::identity::IdentityKey, bool), String> {
    store::load_or_create_identity(&home.join("identity"), &mut rand_core::OsRng)
        .map_err(|e| e.to_string())
}

/// The call's settings: flags (and their environment variables) over the config file.
fn call_settings(args: &CallArgs, file: Settings) -> Result<Settings, String> {
    let flags = Settings {
        server: args.server.clone(),
        token: args.token.clone(),
        input: args.input.clone(),
        output: args.output.clone(),
        input_device: args.input_device.clone(),
        output_device: args.output_device.clone(),
        relay_only: match (args.relay_only, args.no_relay_only) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        home: None,
        lang: args.lang.clone(),
        peer_lang: args.peer_lang.clone(),
        model_dir: args.model_dir.clone(),
        ca_file: args.ca_file.clone(),
    };
    let settings = flags.over(file);
    // A device named on the command line but not used is a mistake worth saying; one from the
    // config file is just a default for when the microphone or speaker is used.
    if args.input_device.is_some() && settings.input_or_default() != "mic" {
        return Err("--input-device only applies to --input mic".into());
    }
    if args.output_device.is_some() && settings.output_or_default() != "speaker" {
        return Err("--output-device only applies to --output speaker".into());
    }
    Ok(settings)
}

/// The longest `--duration` accepted (a year): anything longer is a typo, and a far larger
/// value would not fit a timer.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// `--duration` in seconds, checked.
fn parse_duration(seconds: f64) -> Result<Duration, String> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err("--duration must be a positive number of seconds".into());
    }
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "--duration {seconds:e} is too long (at most {} s, a year)",
            MAX_DURATION.as_secs()
        )),
    }
}

/// Whether two paths name the same file, existing or not (an output that does not exist yet
/// is compared by its folder and name).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    let resolve = |p: &std::path::Path| -> Option<PathBuf> {
        if let Ok(full) = p.canonicalize() {
            return Some(full);
        }
        let parent = match p.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.canonicalize().ok()?,
            _ => std::env::current_dir().ok()?,
        };
        Some(parent.join(p.file_name()?))
    };
    a == b || matches!((resolve(a), resolve(b)), (Some(x), Some(y)) if x == y)
}

/// Refuses a call whose files would overwrite each other (`--input x.wav --output x.wav`
/// would wipe the input).
fn check_files_distinct(files: &[(&str, Option<&std::path::Path>)]) -> Result<(), String> {
    for (i, (flag_a, a)) in files.iter().enumerate() {
        for (flag_b, b) in &files[i + 1..] {
            if let (Some(a), Some(b)) = (a, b) {
                if same_file(a, b) {
                    return Err(format!(
                        "{flag_a} and {flag_b} name the same file ({}): the call would overwrite it",
                        a.display()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Everything about a call that can be decided from the flags and config alone (no identity
/// file, no network): checked here so that bad usage fails at once, with exit code 2.
#[derive(Debug)]
struct CallPlan {
    server: String,
    room: RoomId,
    input: Input,
    output: Output,
    duration: Option<Duration>,
    policy: Policy,
    peer_name: Option<PeerName>,
    translation: TranslationOptions,
}

fn plan_call(args: &CallArgs, settings: &Settings) -> Result<CallPlan, String> {
    let room = RoomId::parse(&args.room).map_err(|e| format!("--room: {e}"))?;
    let server = settings.server.clone().ok_or(
        "no signaling server: pass --server URL, set APARTE_SERVER, or set `server` in the config file (`aparte config path` shows where)",
    )?;
    aparte_client::signaling::check_url(&server).map_err(|e| e.to_string())?;
    let input = match settings.input_or_default() {
        "tone" => Input::Tone(440.0),
        "silence" => Input::Silence,
        "mic" => Input::Mic(settings.input_device.clone()),
        path => Input::Wav(PathBuf::from(path)),
    };
    let output = match settings.output_or_default() {
        "null" => Output::Null,
        "speaker" => Output::Speaker(settings.output_device.clone()),
        path => Output::Wav(PathBuf::from(path)),
    };
    let duration = args.duration.map(parse_duration).transpose()?;
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
    let translation = translation_options(args, settings)?;
    let input_path = match &input {
        Input::Wav(p) => Some(p.as_path()),
        _ => None,
    };
    let output_path = match &output {
        Output::Wav(p) => Some(p.as_path()),
        _ => None,
    };
    check_files_distinct(&[
        ("--input", input_path),
        ("--output", output_path),
        ("--captions", args.captions.as_deref()),
        ("--stats-json", args.stats_json.as_deref()),
    ])?;
    Ok(CallPlan {
        server,
        room,
        input,
        output,
        duration,
        policy,
        peer_name,
        translation,
    })
}

async fn call(args: &CallArgs, file: Settings, home: &std::path::Path) -> Result<(), Failure> {
    // Usage errors are written to --stats-json too, so a script always finds the file.
    let usage = |message: String| {
        let report = CallReport {
            outcome: Outcome::Usage,
            exit_code: Outcome::Usage.exit_code(),
            security: "not started".into(),
            ended_by: message.clone(),
            ..CallReport::default()
        };
        if let Some(path) = &args.stats_json {
            let _ = write_report(path, &report);
        }
        Failure::usage(message)
    };
    let settings = call_settings(args, file).map_err(usage)?;
    let plan = plan_call(args, &settings).map_err(usage)?;
    let tls = aparte_client::tls::client_config(settings.ca_file.as_deref())
        .map_err(|e| usage(e.to_string()))?;
    let turn_tls = aparte_client::tls::turn_client_config(settings.ca_file.as_deref())
        .map_err(|e| usage(e.to_string()))?;
    let identity = if args.no_identity {
        None
    } else {
        Some(identity(home)?.0)
    };
    let peers_path = home.join("known_peers");
    let known_peers = store::load_known_peers(&peers_path).map_err(|e| e.to_string())?;
    let interactive = plan.policy == Policy::Interactive;
    let show_source = plan.translation.show_source;
    let options = CallOptions {
        server: plan.server,
        tls,
        turn_tls,
        room: plan.room,
        token: settings.token.clone(),
        input: plan.input,
        output: plan.output,
        relay_only: settings.relay_only.unwrap_or(false),
        loopback_only: args.loopback_only,
        duration: plan.duration,
        policy: plan.policy,
        identity,
        peer_name: plan.peer_name,
        known_peers,
        translation: plan.translation,
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
    hang_up_on_signals(actions_tx.clone())?;
    drop(actions_tx);

    let display = tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        while let Some(update) = updates.recv().await {
            show(update, tty, interactive, show_source, &peers_path);
        }
    });
    let result = run_call(options, actions, updates_tx).await;
    let _ = display.await;
    let report = match result {
        Ok(report) => {
            eprintln!(
                "\ncall ended ({}): {}, {} frames sent, {} decrypted, {} rejected, {} concealed",
                report.ended_by,
                report.security,
                report.frames_sent,
                report.frames_decrypted,
                report.frames_rejected.values().sum::<u64>(),
                report.frames_concealed
            );
            if report.audio_devices != DeviceStats::default() {
                eprintln!("sound devices: {}", device_counts(&report.audio_devices));
            }
            report
        }
        Err(e) => CallReport::failed_early(&e),
    };
    if let Some(path) = &args.stats_json {
        write_report(path, &report)?;
    }
    match report.exit_code {
        0 => Ok(()),
        code => Err(Failure {
            code,
            message: report.ended_by,
        }),
    }
}

/// SIGINT (Ctrl-C), SIGTERM (`kill`, `systemctl stop`) and SIGHUP (the terminal closed) all
/// hang up cleanly: the recording gets its final header and the stats are written.
fn hang_up_on_signals(actions: mpsc::Sender<UserAction>) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        let mut stream = signal(kind).map_err(|e| format!("cannot watch for signals: {e}"))?;
        let tx = actions.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(UserAction::HangUp).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// Microphone and speaker queue problems, in samples at the device rate (frames for the
/// microphone's short frames).
fn device_counts(d: &DeviceStats) -> String {
    format!(
        "mic dropped {} short {}  speaker gaps {} dropped {}  xruns {} errors {}",
        d.capture_overrun_samples,
        d.capture_underrun_frames,
        d.playout_underrun_samples,
        d.playout_overrun_samples,
        d.driver_xruns,
        d.stream_errors
    )
}

/// Writes the stats beside the target and renames them over it, so a reader never sees half
/// a file.
fn write_report(path: &std::path::Path, report: &CallReport) -> Result<(), String> {
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    let fail = |e: std::io::Error| format!("--stats-json {}: {e}", path.display());
    let pending = PendingFile::create(path).map_err(fail)?;
    std::fs::write(pending.path(), json + "\n").map_err(fail)?;
    pending.commit().map_err(fail)
}

fn show(
    update: CallUpdate,
    tty: bool,
    interactive: bool,
    show_source: bool,
    peers_path: &std::path::Path,
) {
    let mut err = std::io::stderr().lock();
    // On a TTY a status line first clears the live line it replaces.
    let clear = if tty { "\r\x1b[K" } else { "" };
    match update {
        CallUpdate::Connecting { server } => {
            let _ = writeln!(err, "connecting to {server} …");
        }
        CallUpdate::Tampering { rejected } => {
            let _ = writeln!(
                err,
                "{clear}!!! {rejected} frames from the peer failed authentication in the last second: \
                 someone is tampering with the media (nothing forged is played)"
            );
        }
        CallUpdate::Joined { peer_present } => {
            let _ = writeln!(
                err,
                "joined the room; {}",
                if peer_present {
                    "the peer is here, connecting …"
                } else {
                    "waiting for the peer …"
                }
            );
        }
        CallUpdate::Security(status) => {
            let _ = write!(err, "{clear}[{}]", status.label());
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
                    let now = presented.map_or_else(
                        || "NO identity at all".to_owned(),
                        |p| p.fingerprint().to_string(),
                    );
                    let _ = write!(
                        err,
                        "\n  !!! the peer's identity CHANGED: pinned {} now {now}\n  !!! this may be a man-in-the-middle; nothing is sent or played. Type `override` only if you know why it changed.",
                        pinned.fingerprint(),
                    );
                }
                SecurityStatus::Failed(reason) => {
                    let _ = write!(err, " {reason}");
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
                    "\r\x1b[K{:>6.1}s  sent {}  recv {}  lost {}  rtt {} ms  loss {:.1} % (peer {})  jitter {} ms  delay {} ms  {:.1} kbit/s  in {:.0} dBFS  out {:.0} dBFS",
                    live.elapsed_s,
                    live.frames_sent,
                    live.frames_decrypted,
                    live.concealed,
                    live.rtt_ms.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
                    live.loss_percent,
                    live.peer_loss_percent
                        .map_or_else(|| "-".to_owned(), |p| format!("{p:.1} %")),
                    live.jitter_ms,
                    live.playout_delay_ms,
                    live.send_kbps,
                    live.input_dbfs,
                    live.output_dbfs
                );
                if live.devices != DeviceStats::default() {
                    let _ = write!(err, "  {}", device_counts(&live.devices));
                }
            }
        }
        CallUpdate::PeerLeft => {
            let _ = writeln!(err, "\nthe peer left the call");
        }
        CallUpdate::Caption(source, caption) => {
            // Captions are the call's content: shown to the user, never logged.
            let who = match source {
                CaptionSource::Mine => "you",
                CaptionSource::Peer => "peer",
                CaptionSource::PeerRecognizedHere => "peer*",
            };
            if caption.is_final {
                // Our own captions always show what we said: we know it, and it is the check
                // that recognition heard us right.
                let with_source = show_source || source == CaptionSource::Mine;
                let _ = writeln!(err, "{clear}[{who}] {}", caption.display_line(with_source));
            } else if tty {
                let _ = write!(err, "\r\x1b[K[{who} …] {}", caption.display_text());
            }
        }
        CallUpdate::Translation(news) => {
            let _ = writeln!(err, "{clear}translation: {news}");
        }
        CallUpdate::PeerAway => {
            let _ = writeln!(
                err,
                "{clear}the peer dropped off the signaling server; the call goes on while media flows"
            );
        }
        CallUpdate::PeerBack => {
            let _ = writeln!(err, "{clear}the peer is back on the signaling server");
        }
        CallUpdate::Rejoining => {
            let _ = writeln!(
                err,
                "{clear}reconnecting to the signaling server to rejoin the room"
            );
        }
        CallUpdate::Rejoined => {
            let _ = writeln!(err, "{clear}rejoined the room on the signaling server");
        }
        CallUpdate::RejoinFailed(why) => {
            // The text may come from the server: no control characters reach the terminal.
            let why: String = why.chars().filter(|c| !c.is_control()).collect();
            let _ = writeln!(
                err,
                "{clear}cannot rejoin the room ({why}); the call goes on peer to peer but cannot \
                 recover from a network change"
            );
        }
        CallUpdate::Bitrate {
            bps,
            packet_ms,
            loss_percent,
        } => {
            let _ = writeln!(
                err,
                "{clear}bitrate: now {} kbit/s in {packet_ms} ms packets (the peer reports {loss_percent:.0} % loss); constant within the step",
                bps / 1000
            );
        }
        CallUpdate::IceRestart { attempt } => {
            let _ = writeln!(
                err,
                "{clear}link lost: restarting ICE (attempt {attempt}); the keys and SAS stay the same"
            );
        }
        CallUpdate::Rebuilding { attempt } => {
            let _ = writeln!(
                err,
                "{clear}the encrypted link's handshake stalled: connecting again (attempt {attempt}); \
                 the keys and SAS stay the same"
            );
        }
        CallUpdate::MediaStarted { setup_ms } => {
            let _ = writeln!(
                err,
                "{clear}media flowing: first frame from the peer decrypted {setup_ms} ms after both joined"
            );
        }
        CallUpdate::Reconnected { outage_ms } => {
            let _ = writeln!(err, "{clear}link back after {outage_ms} ms, same keys");
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Parses `aparte call` arguments and plans the call, as `call` does before any file or
    /// network is touched.
    fn plan(args: &[String]) -> Option<Result<(), String>> {
        let argv = ["aparte", "call"]
            .into_iter()
            .map(str::to_owned)
            .chain(args.iter().cloned());
        let cli = Cli::try_parse_from(argv).ok()?;
        let Command::Call(call) = cli.command else {
            return None;
        };
        let settings = match call_settings(&call, Settings::default()) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        Some(plan_call(&call, &settings).map(|_| ()))
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[-+]?[0-9]{0,40}(\\.[0-9]{0,10})?(e[-+]?[0-9]{1,4})?",
            Just("NaN".to_owned()),
            Just("inf".to_owned()),
            Just("-0".to_owned()),
            "(ws|wss|http)://[a-z0-9.:\\[\\]]{0,30}(/[a-z]{0,5})?",
            Just("PUZ3L1CZ48JDc3EURQ4wOg".to_owned()),
        ]
    }

    const FLAGS: [&str; 12] = [
        "--server",
        "--room",
        "--duration",
        "--input",
        "--output",
        "--peer",
        "--expect-sas",
        "--lang",
        "--peer-lang",
        "--captions",
        "--stats-json",
        "--ca-file",
    ];

    proptest! {
        /// No flag value makes `aparte call` panic: every one is either accepted or refused
        /// with a message.
        #[test]
        fn no_flag_value_panics(pairs in proptest::collection::vec((0..FLAGS.len(), value()), 0..8)) {
            let mut args = vec!["--room=PUZ3L1CZ48JDc3EURQ4wOg".to_owned(),
                "--server=ws://127.0.0.1:9/ws".to_owned()];
            for (flag, v) in pairs {
                args.push(format!("{}={v}", FLAGS[flag]));
            }
            if let Some(Err(message)) = plan(&args) {
                prop_assert!(!message.is_empty());
            }
        }
    }

    #[test]
    fn durations_are_checked_not_panicked_on() {
        for bad in ["1e30", "1e400", "-1", "0", "NaN", "inf", "31622401"] {
            let args = [
                "--room=PUZ3L1CZ48JDc3EURQ4wOg".to_owned(),
                "--server=ws://127.0.0.1:9/ws".to_owned(),
                format!("--duration={bad}"),
            ];
            match plan(&args) {
                Some(Err(e)) => assert!(e.contains("--duration"), "{bad}: {e}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(parse_duration(2.5), Ok(Duration::from_millis(2500)));
    }

    #[test]
    fn files_that_would_overwrite_each_other_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.wav");
        std::fs::write(&a, b"x").unwrap();
        let via_dot = dir.path().join(".").join("a.wav");
        assert!(same_file(&a, &via_dot));
        assert!(!same_file(&a, &dir.path().join("b.wav")));
        let e = check_files_distinct(&[
            ("--input", Some(a.as_path())),
            ("--output", Some(via_dot.as_path())),
        ])
        .unwrap_err();
        assert!(e.contains("--input and --output"), "{e}");
        assert!(
            check_files_distinct(&[("--input", Some(a.as_path())), ("--output", None)]).is_ok()
        );
    }

    #[test]
    fn server_urls_are_checked() {
        for (url, ok) in [
            ("ws://127.0.0.1:8443/ws", true),
            ("wss://signal.example.org/ws", true),
            ("http://127.0.0.1/ws", false),
            ("ws://", false),
            ("signal.example.org", false),
        ] {
            let args = [
                "--room=PUZ3L1CZ48JDc3EURQ4wOg".to_owned(),
                format!("--server={url}"),
            ];
            assert_eq!(plan(&args).unwrap().is_ok(), ok, "{url}");
        }
    }
}
