//! Configuration: command-line flags, then environment variables, then a TOML file, then
//! built-in defaults, in that order of precedence.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::ice_url;

/// Shown after `--help` and `serve --help`.
const AFTER_HELP: &str = "Every option can also be set with the environment variable shown, or in \
    the TOML file given by --config (same names, with '_' for '-'). Flags win over the \
    environment, which wins over the file; they may come before or after `serve`. Durations are \
    written like 5s, 250ms, 12h.\n\n\
    Signals: SIGTERM or SIGINT drains the connections and stops; SIGHUP re-reads \
    --tls-cert/--tls-key.\n\n\
    Exit status:\n  \
    0  stopped by SIGTERM/SIGINT, or a subcommand succeeded\n  \
    1  failed while running\n  \
    2  bad usage or configuration: a flag, a value, the config file, a certificate or key file, \
    the state file (fix it; restarting will not help)\n  \
    3  a listen address cannot be bound: in use, not on this host, or a port below 1024 without \
    CAP_NET_BIND_SERVICE";

/// Command line of `aparte-signaling`.
#[derive(Debug, Parser)]
#[command(
    name = "aparte-signaling",
    version,
    about = "aparté signaling server: a dumb, hardened mailbox that introduces the two peers of a \
             call and relays opaque messages between them. It never sees a key.",
    long_about = None,
    after_help = AFTER_HELP
)]
pub(crate) struct Cli {
    /// What to do; without a subcommand the server runs.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// Server options.
    #[command(flatten)]
    pub(crate) opts: ServeOpts,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server (the default).
    #[command(after_help = AFTER_HELP)]
    Serve,
    /// Mint a join token signed with the token secret (from --token-secret, the environment or the
    /// config file) and print it.
    Token(TokenArgs),
    /// Room helpers.
    Room {
        /// What to do with rooms.
        #[command(subcommand)]
        command: RoomCommand,
    },
}

/// `room` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum RoomCommand {
    /// Print a fresh, unguessable room id (128 random bits), or a link when --base-url is given.
    New {
        /// Print `<base-url><room id>` instead of the bare id, e.g. `https://call.example/#`.
        #[arg(long)]
        base_url: Option<String>,
    },
}

/// Arguments of `token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The room the token grants, or `any` for every room.
    #[arg(long)]
    pub(crate) room: String,
    /// How long the token is valid, e.g. `1h`, `30m`.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub(crate) ttl: Duration,
    /// A user label shown to the other peer (A-Z a-z 0-9 . _ @ -, at most 64).
    #[arg(long)]
    pub(crate) label: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Every server option. All are optional here so that the file and the defaults can fill in.
/// Every flag is global: it may come before or after `serve`.
#[derive(Debug, Default, Args, Deserialize)]
#[command(next_help_heading = "Server options")]
#[serde(deny_unknown_fields)]
pub(crate) struct ServeOpts {
    /// TOML configuration file.
    #[arg(long, env = "APARTE_CONFIG", global = true)]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,

    /// Address and port to listen on for WebSocket and HTTP (port 0 picks a free port; the bound
    /// address is printed on stdout). [default: 0.0.0.0:8443]
    #[arg(long, env = "APARTE_LISTEN", global = true)]
    pub(crate) listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS. Without --tls-cert/--tls-key the server speaks plain HTTP
    /// (put it behind a TLS reverse proxy).
    #[arg(long, env = "APARTE_TLS_CERT", requires = "tls_key", global = true)]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "APARTE_TLS_KEY", requires = "tls_cert", global = true)]
    pub(crate) tls_key: Option<PathBuf>,

    /// Get the TLS certificate automatically from an ACME CA for this domain (repeatable),
    /// instead of --tls-cert/--tls-key. The CA checks the domain with TLS-ALPN-01 on port 443,
    /// so --listen must be reachable there (e.g. 0.0.0.0:443).
    #[arg(
        long = "acme-domain",
        env = "APARTE_ACME_DOMAINS",
        value_delimiter = ',',
        global = true
    )]
    #[serde(default)]
    pub(crate) acme_domains: Vec<String>,
    /// Contact e-mail for the ACME account (required with --acme-domain).
    #[arg(long, env = "APARTE_ACME_EMAIL", global = true)]
    pub(crate) acme_email: Option<String>,
    /// ACME directory URL. [default: Let's Encrypt production,
    /// https://acme-v02.api.letsencrypt.org/directory]
    #[arg(long, env = "APARTE_ACME_DIRECTORY", global = true)]
    pub(crate) acme_directory: Option<String>,
    /// Where the ACME account key and certificates are kept (directory 0700, files 0600).
    /// [default: <state directory>/acme]
    #[arg(long, env = "APARTE_ACME_CACHE", global = true)]
    pub(crate) acme_cache: Option<PathBuf>,
    /// PEM CA certificate(s) trusted for the ACME directory's HTTPS instead of the built-in web
    /// roots: for a private CA or a test CA such as pebble. [default: web roots]
    #[arg(long, env = "APARTE_ACME_CA_FILE", global = true)]
    pub(crate) acme_ca_file: Option<PathBuf>,

    /// Secret (at least 32 bytes) that signs join tokens. Without it the server is OPEN: anyone
    /// who knows a room id can join it.
    #[arg(
        long,
        env = "APARTE_TOKEN_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub(crate) token_secret: Option<String>,

    /// Behind a reverse proxy on this host: take the client IP (for the per-IP cap and logs) from
    /// the right-most address in this header, e.g. `X-Forwarded-For`. Only honoured for
    /// connections from a loopback address. [default: off]
    #[arg(long, env = "APARTE_PROXY_HEADER", global = true)]
    pub(crate) proxy_header: Option<String>,

    /// Web origin (`https://host[:port]`) whose pages may open the WebSocket, besides the
    /// server's own origin (repeatable). A browser always sends `Origin`; a WebSocket from any
    /// other origin is refused with 403. Clients that send no `Origin` (the CLI) are not
    /// affected.
    #[arg(
        long = "allowed-origin",
        env = "APARTE_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    #[serde(default)]
    pub(crate) allowed_origins: Vec<String>,

    /// Members per room. [default: 2]
    #[arg(long, env = "APARTE_ROOM_CAPACITY", global = true)]
    pub(crate) room_capacity: Option<usize>,
    /// Largest accepted message, in bytes; larger ones get `message_too_large`, and frames over
    /// four times this close the connection. [default: 65536]
    #[arg(long, env = "APARTE_MAX_MESSAGE_BYTES", global = true)]
    pub(crate) max_message_bytes: Option<usize>,
    /// Sustained messages per second per connection (token bucket rate). [default: 20]
    #[arg(long, env = "APARTE_RATE_LIMIT", global = true)]
    pub(crate) rate_limit: Option<f64>,
    /// Messages a connection may send in a burst (token bucket size). [default: 40]
    #[arg(long, env = "APARTE_RATE_BURST", global = true)]
    pub(crate) rate_burst: Option<u32>,
    /// Maximum simultaneous WebSocket connections. [default: 10000]
    #[arg(long, env = "APARTE_MAX_CONNECTIONS", global = true)]
    pub(crate) max_connections: Option<usize>,
    /// Maximum simultaneous connections from one IP address. [default: 16]
    #[arg(long, env = "APARTE_MAX_CONNECTIONS_PER_IP", global = true)]
    pub(crate) max_connections_per_ip: Option<usize>,
    /// Time allowed from connect to a completed hello and join. [default: 10s]
    #[arg(long, env = "APARTE_HANDSHAKE_TIMEOUT", value_parser = parse_duration, global = true)]
    #[serde(default, with = "opt_duration")]
    pub(crate) handshake_timeout: Option<Duration>,
    /// A WebSocket ping goes to a connection after this long without a frame from it.
    /// [default: 2s]
    #[arg(long, env = "APARTE_PING_INTERVAL", value_parser = parse_duration, global = true)]
    #[serde(default, with = "opt_duration")]
    pub(crate) ping_interval: Option<Duration>,
    /// A connection from which nothing (not even a pong) arrives for this long is dead; its peer
    /// gets `peer_left`. [default: 6s]
    #[arg(long, env = "APARTE_IDLE_TIMEOUT", value_parser = parse_duration, global = true)]
    #[serde(default, with = "opt_duration")]
    pub(crate) idle_timeout: Option<Duration>,
    /// Messages queued for one connection before it is disconnected as a slow consumer.
    /// [default: 64]
    #[arg(long, env = "APARTE_SEND_QUEUE", global = true)]
    pub(crate) send_queue: Option<usize>,
    /// Protocol errors tolerated on one connection before it is closed. [default: 16]
    #[arg(long, env = "APARTE_MAX_ERRORS", global = true)]
    pub(crate) max_errors: Option<u32>,
    /// How long shutdown waits for clients to close after telling them. [default: 5s]
    #[arg(long, env = "APARTE_DRAIN_TIMEOUT", value_parser = parse_duration, global = true)]
    #[serde(default, with = "opt_duration")]
    pub(crate) drain_timeout: Option<Duration>,

    /// Runtime worker threads; 1 runs everything on one thread, which costs the least CPU per
    /// message on a small VPS. [default: 1]
    #[arg(long, env = "APARTE_THREADS", global = true)]
    pub(crate) threads: Option<usize>,

    /// Log format. [default: text]
    #[arg(long, env = "APARTE_LOG_FORMAT", value_enum, global = true)]
    pub(crate) log_format: Option<LogFormat>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `aparte_signaling=debug`. The TURN
    /// crate logs every bad packet at error level, hence its default `off`.
    /// [default: info,turn=off]
    #[arg(long, env = "APARTE_LOG", global = true)]
    pub(crate) log: Option<String>,

    /// Serve Prometheus metrics (`GET /metrics`) on this separate plain-HTTP address, or `off`.
    /// The public WebSocket port does not serve them: keep this address on loopback or a private
    /// network. [default: 127.0.0.1:9090]
    #[arg(long, env = "APARTE_METRICS_LISTEN", global = true)]
    pub(crate) metrics_listen: Option<String>,
    /// Directory for what the server keeps across restarts (the TURN secret it generates when
    /// none is configured). [default: $STATE_DIRECTORY when systemd sets it, else
    /// $XDG_STATE_HOME/aparte, else ~/.local/state/aparte]
    #[arg(long, env = "APARTE_STATE_DIR", global = true)]
    pub(crate) state_dir: Option<PathBuf>,

    /// STUN URL handed to clients (repeatable), e.g. `stun:stun.example.org:3478`.
    #[arg(
        long = "stun-url",
        env = "APARTE_STUN_URLS",
        value_delimiter = ',',
        global = true
    )]
    #[serde(default)]
    pub(crate) stun_urls: Vec<String>,
    /// External TURN URL handed to clients with REST credentials (repeatable), e.g.
    /// `turn:turn.example.org:3478?transport=udp`.
    #[arg(
        long = "turn-url",
        env = "APARTE_TURN_URLS",
        value_delimiter = ',',
        global = true
    )]
    #[serde(default)]
    pub(crate) turn_urls: Vec<String>,
    /// Shared secret for TURN REST credentials (coturn's static-auth-secret). Required with
    /// --turn-url; with the embedded relay and none set, one is generated once and kept in the
    /// state directory (--state-dir), so credentials survive a restart.
    #[arg(
        long,
        env = "APARTE_TURN_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub(crate) turn_secret: Option<String>,
    /// Lifetime of minted TURN credentials. [default: 12h]
    #[arg(long, env = "APARTE_TURN_TTL", value_parser = parse_duration, global = true)]
    #[serde(default, with = "opt_duration")]
    pub(crate) turn_ttl: Option<Duration>,

    /// Run the embedded TURN relay on this UDP address, e.g. `0.0.0.0:3478`.
    #[arg(long, env = "APARTE_TURN_LISTEN", global = true)]
    pub(crate) turn_listen: Option<SocketAddr>,
    /// Also run the TURN relay's UDP port on this IPv6 address, e.g. `[::]:3478`, for clients
    /// on IPv6-only networks (relayed addresses stay on --turn-public-ip; the join answer adds
    /// a `turn:[IPv6]:PORT` URL). [default: off]
    #[arg(long, env = "APARTE_TURN_LISTEN6", global = true)]
    pub(crate) turn_listen6: Option<SocketAddr>,
    /// Public IPv6 address of this host, put in the advertised IPv6 TURN URL.
    /// [default: the --turn-listen6 IP]
    #[arg(long, env = "APARTE_TURN_PUBLIC_IP6", global = true)]
    pub(crate) turn_public_ip6: Option<std::net::Ipv6Addr>,
    /// Run TURN over TCP (RFC 5766 §2.1) on this address, or `off`. [default: the --turn-listen
    /// address and port, when --turn-listen is set]
    #[arg(long, env = "APARTE_TURN_TCP_LISTEN", global = true)]
    pub(crate) turn_tcp_listen: Option<String>,
    /// Run TURN over TLS on this address with the server's certificate (--tls-cert/--tls-key or
    /// ACME), e.g. `0.0.0.0:5349`, or `off`. [default: off]
    #[arg(long, env = "APARTE_TURNS_LISTEN", global = true)]
    pub(crate) turns_listen: Option<String>,
    /// Also serve TURN over TLS on the --listen port (e.g. 443, so a client behind a firewall
    /// that only lets HTTPS out can relay): each TLS connection goes to HTTPS/WebSocket or to
    /// TURN by its ALPN (`stun.turn`, RFC 7443) or, without ALPN, by its first bytes.
    /// [default: false]
    #[arg(
        long,
        env = "APARTE_TURNS_ON_LISTEN",
        num_args = 0..=1,
        default_missing_value = "true",
        global = true
    )]
    pub(crate) turns_on_listen: Option<bool>,
    /// Host name put in the advertised `turns:` URLs, which clients check the certificate
    /// against. [default: the first --acme-domain, else the TURN public IP]
    #[arg(long, env = "APARTE_TURNS_HOST", global = true)]
    pub(crate) turns_host: Option<String>,
    /// Public IP of this host, announced as the relay address and in the advertised TURN URL.
    /// [default: the --turn-listen IP]
    #[arg(long, env = "APARTE_TURN_PUBLIC_IP", global = true)]
    pub(crate) turn_public_ip: Option<IpAddr>,
    /// TURN realm. [default: aparte]
    #[arg(long, env = "APARTE_TURN_REALM", global = true)]
    pub(crate) turn_realm: Option<String>,
    /// Lowest UDP port for relayed addresses. [default: 49152]
    #[arg(long, env = "APARTE_TURN_MIN_PORT", global = true)]
    pub(crate) turn_min_port: Option<u16>,
    /// Highest UDP port for relayed addresses. [default: 65535]
    #[arg(long, env = "APARTE_TURN_MAX_PORT", global = true)]
    pub(crate) turn_max_port: Option<u16>,
    /// Live allocations per TURN user label. [default: 4]
    #[arg(long, env = "APARTE_TURN_MAX_ALLOCATIONS_PER_USER", global = true)]
    pub(crate) turn_max_allocations_per_user: Option<usize>,
    /// Live allocations in total. [default: 1000]
    #[arg(long, env = "APARTE_TURN_MAX_ALLOCATIONS", global = true)]
    pub(crate) turn_max_allocations: Option<usize>,
    /// Hard cap on an allocation's age, refreshes included. [default: 12h]
    #[arg(long, env = "APARTE_TURN_MAX_LIFETIME", value_parser = parse_duration, global = true)]
    #[serde(default, with = "opt_duration")]
    pub(crate) turn_max_lifetime: Option<Duration>,
    /// Relayed bandwidth cap per allocation and direction, bytes per second; excess datagrams are
    /// dropped and counted. [default: 262144]
    #[arg(long, env = "APARTE_TURN_MAX_BANDWIDTH", global = true)]
    pub(crate) turn_max_bandwidth: Option<u64>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A secret that never shows in `Debug` output (and so never in a log line).
#[derive(Clone)]
pub(crate) struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub(crate) fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The secret bytes.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The embedded TURN relay's settings.
#[derive(Debug, Clone)]
pub(crate) struct TurnRelayConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) public_ip: IpAddr,
    pub(crate) realm: String,
    pub(crate) min_port: u16,
    pub(crate) max_port: u16,
    pub(crate) max_allocations_per_user: usize,
    pub(crate) max_allocations: usize,
    pub(crate) max_lifetime: Duration,
    pub(crate) max_bandwidth: u64,
    /// TURN over TCP; `None` when `off`.
    pub(crate) tcp_listen: Option<SocketAddr>,
    /// TURN over TLS on its own port; `None` when off.
    pub(crate) tls_listen: Option<SocketAddr>,
    /// TURN over TLS also on the `--listen` port.
    pub(crate) tls_on_listen: bool,
    /// The host of the advertised `turns:` URLs.
    pub(crate) tls_host: String,
    /// The UDP port on IPv6, and the address advertised for it.
    pub(crate) listen6: Option<(SocketAddr, std::net::Ipv6Addr)>,
}

/// ACME settings (`--acme-*`).
#[derive(Debug, Clone)]
pub(crate) struct AcmeSettings {
    pub(crate) domains: Vec<String>,
    pub(crate) email: String,
    pub(crate) directory: String,
    pub(crate) cache: PathBuf,
    pub(crate) ca_file: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) listen: SocketAddr,
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) token_secret: Option<Secret>,
    pub(crate) proxy_header: Option<axum::http::HeaderName>,
    /// Extra web origins allowed to open the WebSocket (lowercase, no trailing slash).
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) room_capacity: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) rate_limit: f64,
    pub(crate) rate_burst: u32,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) send_queue: usize,
    pub(crate) max_errors: u32,
    pub(crate) drain_timeout: Duration,
    pub(crate) threads: usize,
    pub(crate) log_format: LogFormat,
    pub(crate) log: String,
    pub(crate) stun_urls: Vec<String>,
    pub(crate) turn_urls: Vec<String>,
    pub(crate) turn_secret: Option<Secret>,
    /// Where `turn_secret` came from, for the start-up line (never the secret itself).
    pub(crate) turn_secret_origin: SecretOrigin,
    pub(crate) turn_ttl: Duration,
    pub(crate) turn_relay: Option<TurnRelayConfig>,
    /// The separate metrics listener; `None` when `off`.
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// The state directory; `None` when no default could be worked out (no `HOME`).
    pub(crate) state_dir: Option<PathBuf>,
    /// Automatic certificates; exclusive with `tls`.
    pub(crate) acme: Option<AcmeSettings>,
}

/// Where the TURN secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretOrigin {
    /// Not configured.
    Unset,
    /// `--turn-secret`.
    Flag,
    /// `APARTE_TURN_SECRET`.
    Environment,
    /// `turn_secret` in this config file.
    File(PathBuf),
    /// Chosen by the embedding program (`aparte demo`), kept in memory only.
    Embedded,
}

impl std::fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretOrigin::Unset => f.write_str("not configured"),
            SecretOrigin::Flag => f.write_str("from --turn-secret"),
            SecretOrigin::Environment => f.write_str("from the environment (APARTE_TURN_SECRET)"),
            SecretOrigin::File(p) => write!(f, "from the config file {}", p.display()),
            SecretOrigin::Embedded => f.write_str("random, in memory (embedded server)"),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("invalid {flag} {value:?}: {why}")]
    BadValue {
        flag: &'static str,
        value: String,
        why: String,
    },
}

fn load_file(path: &Path) -> Result<ServeOpts, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Checks and completes the ACME settings; `None` without `--acme-domain`.
fn resolve_acme(
    domains: Vec<String>,
    email: Option<String>,
    directory: Option<String>,
    cache: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    state_dir: Option<&Path>,
) -> Result<Option<AcmeSettings>, ConfigError> {
    let bad = |flag: &'static str, value: &str, why: &str| ConfigError::BadValue {
        flag,
        value: value.to_owned(),
        why: why.to_owned(),
    };
    if domains.is_empty() {
        if email.is_some() || directory.is_some() || cache.is_some() || ca_file.is_some() {
            return Err(ConfigError::Invalid(
                "the --acme-* options need --acme-domain".into(),
            ));
        }
        return Ok(None);
    }
    for d in &domains {
        if !ice_url::is_dns_name(d) || !d.contains('.') {
            return Err(bad(
                "--acme-domain",
                d,
                "expected a fully qualified DNS name, e.g. signal.example.org",
            ));
        }
    }
    let email = email.ok_or_else(|| {
        ConfigError::Invalid("--acme-domain needs --acme-email (the ACME account contact)".into())
    })?;
    let (user, host) = email.split_once('@').unwrap_or(("", ""));
    if user.is_empty()
        || !ice_url::is_dns_name(host)
        || email
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad(
            "--acme-email",
            &email,
            "expected an address like admin@example.org",
        ));
    }
    let directory = directory.unwrap_or_else(|| crate::acme::LETS_ENCRYPT.to_owned());
    if !directory.starts_with("https://") || directory.len() > 2048 {
        return Err(bad(
            "--acme-directory",
            &directory,
            "expected an https:// URL",
        ));
    }
    let cache = match (cache, state_dir) {
        (Some(c), _) => c,
        (None, Some(s)) => s.join("acme"),
        (None, None) => {
            return Err(ConfigError::Invalid(
                "no directory for the ACME cache (no state directory): set --acme-cache".into(),
            ))
        }
    };
    Ok(Some(AcmeSettings {
        domains,
        email,
        directory,
        cache,
        ca_file,
    }))
}

/// Checks every URI of one list; the error names the flag and the bad value.
fn check_urls(flag: &'static str, kind: ice_url::Kind, urls: &[String]) -> Result<(), ConfigError> {
    for u in urls {
        if let Err(why) = ice_url::check(kind, u) {
            return Err(ConfigError::BadValue {
                flag,
                value: u.clone(),
                why,
            });
        }
    }
    Ok(())
}

/// `IP:PORT` or `off` (`None`); `None` given means the default.
fn addr_or_off(
    flag: &'static str,
    value: Option<String>,
    example: &str,
) -> Result<Option<Option<SocketAddr>>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) if v == "off" => Ok(Some(None)),
        Some(v) => match v.parse::<SocketAddr>() {
            Ok(a) => Ok(Some(Some(a))),
            Err(_) => Err(ConfigError::BadValue {
                flag,
                value: v,
                why: format!("expected IP:PORT (e.g. {example}) or off"),
            }),
        },
    }
}

fn merge_vec(a: Vec<String>, b: Vec<String>) -> Vec<String> {
    if a.is_empty() {
        b
    } else {
        a
    }
}

impl ServeOpts {
    /// Overlays `self` (flags and environment) on the config file, if any, and on the defaults.
    pub(crate) fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(p) => load_file(p)?,
            None => ServeOpts::default(),
        };
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));

        let tls = match (
            self.tls_cert.or(file.tls_cert),
            self.tls_key.or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return invalid("tls_cert and tls_key go together"),
        };
        let token_secret = self
            .token_secret
            .or(file.token_secret)
            .map(|s| Secret(s.into_bytes()));
        if token_secret
            .as_ref()
            .is_some_and(|s| s.0.len() < aparte_signaling_protocol::token::MIN_SECRET_LEN)
        {
            return invalid("token_secret must be at least 32 bytes");
        }
        let turn_listen = self.turn_listen.or(file.turn_listen);
        let turn_urls = merge_vec(self.turn_urls, file.turn_urls);
        let stun_urls = merge_vec(self.stun_urls, file.stun_urls);
        check_urls("--stun-url", ice_url::Kind::Stun, &stun_urls)?;
        check_urls("--turn-url", ice_url::Kind::Turn, &turn_urls)?;
        let (turn_secret, turn_secret_origin) = match (self.turn_secret, file.turn_secret) {
            (Some(s), _) => {
                let origin = if std::env::var("APARTE_TURN_SECRET").as_deref() == Ok(s.as_str()) {
                    SecretOrigin::Environment
                } else {
                    SecretOrigin::Flag
                };
                (Some(s), origin)
            }
            (None, Some(s)) => (
                Some(s),
                SecretOrigin::File(self.config.clone().unwrap_or_default()),
            ),
            (None, None) => (None, SecretOrigin::Unset),
        };
        if turn_secret.as_ref().is_some_and(|s| s.trim().is_empty()) {
            return invalid("turn_secret is empty");
        }
        let turn_secret = turn_secret.map(|s| Secret(s.into_bytes()));
        if turn_secret.is_none() && !turn_urls.is_empty() {
            return invalid("turn_url needs turn_secret (the TURN server's static-auth-secret)");
        }
        let metrics_listen = match self.metrics_listen.or(file.metrics_listen) {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            Some(v) if v == "off" => None,
            Some(v) => match v.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    return Err(ConfigError::BadValue {
                        flag: "--metrics-listen",
                        value: v,
                        why: "expected IP:PORT (e.g. 127.0.0.1:9090) or off".into(),
                    })
                }
            },
        };
        let state_dir = self
            .state_dir
            .or(file.state_dir)
            .or_else(|| crate::state::default_dir(|k| std::env::var_os(k)));
        let acme = resolve_acme(
            merge_vec(self.acme_domains, file.acme_domains),
            self.acme_email.or(file.acme_email),
            self.acme_directory.or(file.acme_directory),
            self.acme_cache.or(file.acme_cache),
            self.acme_ca_file.or(file.acme_ca_file),
            state_dir.as_deref(),
        )?;
        if acme.is_some() && tls.is_some() {
            return invalid("--acme-domain and --tls-cert/--tls-key exclude each other");
        }
        let log = self
            .log
            .or(file.log)
            .unwrap_or_else(|| "info,turn=off".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            return Err(ConfigError::BadValue {
                flag: "--log",
                value: log,
                why: e.to_string(),
            });
        }
        let turn_tcp_listen = addr_or_off(
            "--turn-tcp-listen",
            self.turn_tcp_listen.or(file.turn_tcp_listen),
            "0.0.0.0:3478",
        )?;
        let turns_listen = addr_or_off(
            "--turns-listen",
            self.turns_listen.or(file.turns_listen),
            "0.0.0.0:5349",
        )?
        .flatten();
        let turns_on_listen = self
            .turns_on_listen
            .or(file.turns_on_listen)
            .unwrap_or(false);
        let turns_host = self.turns_host.or(file.turns_host);
        if turn_listen.is_none()
            && (turn_tcp_listen.flatten().is_some() || turns_listen.is_some() || turns_on_listen)
        {
            return invalid(
                "turn_tcp_listen, turns_listen and turns_on_listen need turn_listen (the \
                 embedded TURN relay)",
            );
        }
        let turn_listen6 = match (
            self.turn_listen6.or(file.turn_listen6),
            self.turn_public_ip6.or(file.turn_public_ip6),
        ) {
            (None, None) => None,
            (None, Some(_)) => return invalid("turn_public_ip6 needs turn_listen6"),
            (Some(_), _) if turn_listen.is_none() => {
                return invalid("turn_listen6 needs turn_listen (the embedded TURN relay)")
            }
            (Some(SocketAddr::V4(_)), _) => {
                return invalid("turn_listen6 must be an IPv6 address, e.g. [::]:3478")
            }
            (Some(SocketAddr::V6(listen)), public) => {
                let advertised = match public {
                    Some(ip) => ip,
                    None if !listen.ip().is_unspecified() => *listen.ip(),
                    None => return invalid("turn_public_ip6 is needed when turn_listen6 is [::]"),
                };
                if advertised.is_unspecified()
                    || advertised.is_loopback() && !listen.ip().is_loopback()
                {
                    return invalid("turn_public_ip6 must be this host's public IPv6 address");
                }
                Some((SocketAddr::V6(listen), advertised))
            }
        };
        if (turns_listen.is_some() || turns_on_listen) && tls.is_none() && acme.is_none() {
            return invalid(
                "turns_listen and turns_on_listen need a certificate: tls_cert/tls_key or \
                 acme_domain",
            );
        }
        if let Some(h) = &turns_host {
            if !ice_url::is_dns_name(h) && h.parse::<IpAddr>().is_err() {
                return Err(ConfigError::BadValue {
                    flag: "--turns-host",
                    value: h.clone(),
                    why: "expected a DNS name or an IP address".into(),
                });
            }
        }
        let turn_relay = match turn_listen {
            None => None,
            Some(listen) => {
                let public_ip = match self.turn_public_ip.or(file.turn_public_ip) {
                    Some(ip) => ip,
                    None if !listen.ip().is_unspecified() => listen.ip(),
                    None => return invalid("turn_public_ip is needed when turn_listen is 0.0.0.0"),
                };
                let min_port = self.turn_min_port.or(file.turn_min_port).unwrap_or(49152);
                let max_port = self.turn_max_port.or(file.turn_max_port).unwrap_or(65535);
                if min_port == 0 || min_port > max_port {
                    return invalid("turn_min_port must be >= 1 and <= turn_max_port");
                }
                let realm = self
                    .turn_realm
                    .or(file.turn_realm)
                    .unwrap_or_else(|| "aparte".into());
                if realm.is_empty()
                    || realm.len() > 127
                    || !realm.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(ConfigError::BadValue {
                        flag: "--turn-realm",
                        value: realm,
                        why: "expected 1 to 127 printable ASCII characters, no spaces".into(),
                    });
                }
                Some(TurnRelayConfig {
                    listen,
                    public_ip,
                    realm,
                    min_port,
                    max_port,
                    max_allocations_per_user: self
                        .turn_max_allocations_per_user
                        .or(file.turn_max_allocations_per_user)
                        .unwrap_or(4),
                    max_allocations: self
                        .turn_max_allocations
                        .or(file.turn_max_allocations)
                        .unwrap_or(1000),
                    max_lifetime: self
                        .turn_max_lifetime
                        .or(file.turn_max_lifetime)
                        .unwrap_or(Duration::from_secs(12 * 3600)),
                    max_bandwidth: self
                        .turn_max_bandwidth
                        .or(file.turn_max_bandwidth)
                        .unwrap_or(256 * 1024),
                    // TCP and UDP ports are separate: the default shares the number.
                    tcp_listen: turn_tcp_listen.unwrap_or(Some(listen)),
                    tls_listen: turns_listen,
                    tls_on_listen: turns_on_listen,
                    listen6: turn_listen6,
                    tls_host: turns_host
                        .or_else(|| acme.as_ref().and_then(|a| a.domains.first().cloned()))
                        .unwrap_or_else(|| public_ip.to_string()),
                })
            }
        };

        let proxy_header = match self.proxy_header.or(file.proxy_header) {
            None => None,
            Some(h) => match axum::http::HeaderName::try_from(h.as_str()) {
                Ok(name) => Some(name),
                Err(_) => return invalid("proxy_header is not a valid HTTP header name"),
            },
        };
        let mut allowed_origins = Vec::new();
        for origin in merge_vec(self.allowed_origins, file.allowed_origins) {
            match crate::web::normalise_origin(&origin) {
                Some(o) => allowed_origins.push(o),
                None => {
                    return invalid(
                        "allowed_origins: each must be http(s)://HOST[:PORT], with no path",
                    )
                }
            }
        }
        let cfg = Config {
            proxy_header,
            allowed_origins,
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8443))),
            tls,
            token_secret,
            room_capacity: self.room_capacity.or(file.room_capacity).unwrap_or(2),
            max_message_bytes: self
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(aparte_signaling_protocol::DEFAULT_MAX_MESSAGE_BYTES),
            rate_limit: self.rate_limit.or(file.rate_limit).unwrap_or(20.0),
            rate_burst: self.rate_burst.or(file.rate_burst).unwrap_or(40),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(10_000),
            max_connections_per_ip: self
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(16),
            handshake_timeout: self
                .handshake_timeout
                .or(file.handshake_timeout)
                .unwrap_or(Duration::from_secs(10)),
            ping_interval: self
                .ping_interval
                .or(file.ping_interval)
                .unwrap_or(Duration::from_secs(2)),
            idle_timeout: self
                .idle_timeout
                .or(file.idle_timeout)
                .unwrap_or(Duration::from_secs(6)),
            send_queue: self.send_queue.or(file.send_queue).unwrap_or(64),
            max_errors: self.max_errors.or(file.max_errors).unwrap_or(16),
            drain_timeout: self
                .drain_timeout
                .or(file.drain_timeout)
                .unwrap_or(Duration::from_secs(5)),
            threads: self.threads.or(file.threads).unwrap_or(1),
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log,
            stun_urls,
            turn_urls,
            turn_secret,
            turn_secret_origin,
            metrics_listen,
            state_dir,
            acme,
            turn_ttl: self
                .turn_ttl
                .or(file.turn_ttl)
                .unwrap_or(Duration::from_secs(12 * 3600)),
            turn_relay,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

impl Config {
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !(1..=64).contains(&self.room_capacity) {
            return bad("room_capacity must be 1 to 64");
        }
        if !(256..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return bad("max_message_bytes must be 256 to 16777216");
        }
        if !(self.rate_limit.is_finite() && self.rate_limit > 0.0) || self.rate_burst == 0 {
            return bad("rate_limit and rate_burst must be positive");
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 || self.send_queue == 0 {
            return bad("max_connections, max_connections_per_ip and send_queue must be positive");
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            return bad("idle_timeout must be longer than ping_interval, which must be positive");
        }
        if !(1..=256).contains(&self.threads) {
            return bad("threads must be 1 to 256");
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout must be positive");
        }
        if self.turn_ttl.is_zero() {
            return bad("turn_ttl must be positive");
        }
        if let Some(r) = &self.turn_relay {
            if r.max_allocations == 0
                || r.max_allocations_per_user == 0
                || r.max_bandwidth == 0
                || r.max_lifetime.is_zero()
            {
                return bad("turn_max_allocations, turn_max_allocations_per_user, turn_max_bandwidth and turn_max_lifetime must be positive");
            }
            if r.tcp_listen
                .is_some_and(|a| a == self.listen && a.port() != 0)
            {
                return bad("turn_tcp_listen and listen are the same address");
            }
            if r.tls_listen
                .is_some_and(|a| a == self.listen && a.port() != 0)
            {
                return bad(
                    "turns_listen and listen are the same address: use turns_on_listen to serve \
                     TURN over TLS on the listen port",
                );
            }
            if r.tls_listen
                .is_some_and(|a| Some(a) == r.tcp_listen && a.port() != 0)
            {
                return bad("turns_listen and turn_tcp_listen are the same address");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("aparte-signaling").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn defaults() {
        let cfg = ServeOpts::default().resolve().unwrap();
        assert_eq!(cfg.room_capacity, 2);
        assert_eq!(cfg.max_message_bytes, 65536);
        assert!(cfg.token_secret.is_none());
        let cli = parse(&["--token-secret", "0123456789abcdef0123456789abcdef-secret"]);
        let cfg = cli.opts.resolve().unwrap();
        assert!(!format!("{cfg:?}").contains("0123456789abcdef"));
        assert_eq!(cfg.token_secret.unwrap().expose().len(), 39);
        assert!(cfg.turn_relay.is_none());
    }

    #[test]
    fn the_ipv6_turn_port_needs_the_relay_an_ipv6_address_and_a_public_ip() {
        let relay = [
            "--turn-listen",
            "0.0.0.0:3478",
            "--turn-public-ip",
            "192.0.2.1",
        ];
        let with = |extra: &[&str]| {
            let mut args = relay.to_vec();
            args.extend_from_slice(extra);
            parse(&args).opts.resolve()
        };
        let cfg = with(&[
            "--turn-listen6",
            "[::]:3478",
            "--turn-public-ip6",
            "2001:db8::1",
        ])
        .unwrap();
        assert_eq!(
            cfg.turn_relay.unwrap().listen6,
            Some(("[::]:3478".parse().unwrap(), "2001:db8::1".parse().unwrap()))
        );
        let cfg = with(&["--turn-listen6", "[2001:db8::5]:3478"]).unwrap();
        assert_eq!(
            cfg.turn_relay.unwrap().listen6.unwrap().1,
            "2001:db8::5".parse::<std::net::Ipv6Addr>().unwrap()
        );
        for (bad, why) in [
            (
                &["--turn-listen6", "[::]:3478"][..],
                "turn_public_ip6 is needed",
            ),
            (
                &["--turn-listen6", "0.0.0.0:3478"][..],
                "must be an IPv6 address",
            ),
            (
                &["--turn-public-ip6", "2001:db8::1"][..],
                "needs turn_listen6",
            ),
            (
                &["--turn-listen6", "[::]:3478", "--turn-public-ip6", "::"][..],
                "public IPv6",
            ),
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let e = parse(&[
            "--turn-listen6",
            "[::]:3478",
            "--turn-public-ip6",
            "2001:db8::1",
        ])
        .opts
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs turn_listen"), "{e}");
    }

    #[test]
    fn flags_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "room_capacity = 5\nmax_errors = 3\nidle_timeout = \"30s\"\nstun_urls = [\"stun:a\"]\n",
        )
        .unwrap();
        let cli = parse(&["--config", path.to_str().unwrap(), "--room-capacity", "3"]);
        let cfg = cli.opts.resolve().unwrap();
        assert_eq!(cfg.room_capacity, 3);
        assert_eq!(cfg.max_errors, 3);
        assert_eq!(cfg.idle_timeout, Duration::from_secs(30));
        assert_eq!(cfg.stun_urls, vec!["stun:a".to_string()]);
    }

    #[test]
    fn allowed_origins_from_flags_or_file_are_checked_and_normalised() {
        let cli = parse(&[
            "--allowed-origin",
            "https://App.example",
            "--allowed-origin",
            "http://127.0.0.1:8080",
        ]);
        let cfg = cli.opts.resolve().unwrap();
        assert_eq!(
            cfg.allowed_origins,
            ["https://app.example", "http://127.0.0.1:8080"]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "allowed_origins = [\"https://a.example/path\"]\n").unwrap();
        let cli = parse(&["--config", path.to_str().unwrap()]);
        assert!(cli.opts.resolve().is_err(), "an origin with a path");
        assert!(ServeOpts::default()
            .resolve()
            .unwrap()
            .allowed_origins
            .is_empty());
    }

    #[test]
    fn rejects_unknown_file_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "room_capacty = 5\n").unwrap();
        let cli = parse(&["--config", path.to_str().unwrap()]);
        assert!(cli.opts.resolve().is_err());
        let cli = parse(&["--token-secret", "short"]);
        assert!(cli.opts.resolve().is_err());
        let cli = parse(&["--ping-interval", "20s"]);
        assert!(cli.opts.resolve().is_err());
        let cli = parse(&["--turn-url", "turn:x"]);
        assert!(cli.opts.resolve().is_err());
    }

    #[test]
    fn acme_settings() {
        let ok = parse(&[
            "--acme-domain",
            "signal.example.org",
            "--acme-email",
            "admin@example.org",
            "--state-dir",
            "/var/lib/aparte",
        ])
        .opts
        .resolve()
        .unwrap()
        .acme
        .unwrap();
        assert_eq!(ok.directory, crate::acme::LETS_ENCRYPT);
        assert_eq!(ok.cache, PathBuf::from("/var/lib/aparte/acme"));
        for bad in [
            &["--acme-domain", "signal.example.org"][..],
            &[
                "--acme-domain",
                "localhost",
                "--acme-email",
                "a@example.org",
            ],
            &[
                "--acme-domain",
                "bad_name.org",
                "--acme-email",
                "a@example.org",
            ],
            &[
                "--acme-domain",
                "signal.example.org",
                "--acme-email",
                "nobody",
            ],
            &[
                "--acme-domain",
                "signal.example.org",
                "--acme-email",
                "a@example.org",
                "--acme-directory",
                "http://insecure.example/dir",
            ],
            &[
                "--acme-domain",
                "signal.example.org",
                "--acme-email",
                "a@example.org",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
            ],
            &["--acme-email", "a@example.org"],
        ] {
            assert!(parse(bad).opts.resolve().is_err(), "{bad:?} accepted");
        }
    }
}
