//! The aparté signaling server: a dumb, hardened mailbox that a user runs on a VPS they do not
//! trust with content.
//!
//! It introduces the two peers of a room and relays opaque messages between them (SDP, ICE
//! candidates, end-to-end handshake messages); it never sees a key. It hands out STUN/TURN
//! servers with TURN REST credentials and can run a TURN relay itself. See `docs/SIGNALING.md`
//! for the protocol and `docs/DEPLOY.md` for running it.
//!
//! The `aparte-signaling` binary is [`run_cli`]. [`Embedded`] starts the same server inside
//! another program's tokio runtime, on loopback: `aparte demo` uses it, so the demo needs no
//! second binary.
#![forbid(unsafe_code)]

mod config;
mod connection;
mod limits;
mod metrics;
mod rooms;
mod server;
mod tls;
mod turn_relay;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aparte_signaling_protocol::{token, RoomId};
use clap::Parser;

use crate::config::{Cli, Command, Config, LogFormat, RoomCommand, ServeOpts, TokenArgs};
use crate::metrics::Metrics;
use crate::server::AppState;
use crate::turn_relay::TurnRelay;

/// The `aparte-signaling` command line: parses the arguments and runs the server (or a helper
/// subcommand) until it stops.
pub fn run_cli() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Room {
            command: RoomCommand::New { base_url },
        }) => {
            let id = RoomId::random(&mut rand_core::OsRng);
            match base_url {
                Some(base) => println!("{base}{id}"),
                None => println!("{id}"),
            }
            ExitCode::SUCCESS
        }
        Some(Command::Token(args)) => match cli.opts.resolve() {
            Ok(cfg) => mint_token(&cfg, &args),
            Err(e) => fail(&e),
        },
        Some(Command::Serve) | None => match cli.opts.resolve() {
            Ok(cfg) => serve(cfg),
            Err(e) => fail(&e),
        },
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("aparte-signaling: {e}");
    ExitCode::FAILURE
}

fn mint_token(cfg: &Config, args: &TokenArgs) -> ExitCode {
    let Some(secret) = &cfg.token_secret else {
        return fail(&"no token secret: set --token-secret, APARTE_TOKEN_SECRET or token_secret");
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let room = if args.room == "any" {
        token::ANY_ROOM.to_owned()
    } else {
        args.room.clone()
    };
    let claims = token::Claims {
        room,
        exp: now.saturating_add(args.ttl.as_secs()),
        label: args.label.clone(),
    };
    match token::mint(secret.expose(), &claims) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(cfg: Config) -> ExitCode {
    init_logging(&cfg);
    let mut builder = if cfg.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            fail(&e)
        }
    }
}

/// Prints a line on stdout that tools and tests can read, and flushes it.
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn run(cfg: Config) -> std::io::Result<()> {
    let mut server = Running::start(cfg).await?;
    if let Some(turn) = server.turn_addr() {
        announce(&format!("turn listening on udp {turn}"));
    }
    announce(&format!(
        "listening on {}://{}",
        server.scheme, server.local
    ));
    tokio::select! {
        res = &mut server.serving => {
            return match res {
                Ok(r) => r,
                Err(e) => Err(std::io::Error::other(e)),
            };
        }
        () = shutdown_signal() => {}
    }
    server.shutdown().await;
    announce("stopped");
    Ok(())
}

/// A started server: its HTTP/WebSocket listener and, when configured, its TURN relay.
struct Running {
    state: Arc<AppState>,
    handle: axum_server::Handle<SocketAddr>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    turn: Option<TurnRelay>,
    local: SocketAddr,
    scheme: &'static str,
    drain_timeout: Duration,
}

impl Running {
    /// Binds the listeners and starts serving on the current tokio runtime.
    async fn start(cfg: Config) -> std::io::Result<Running> {
        let metrics = Arc::new(Metrics::new());
        if cfg.token_secret.is_none() {
            tracing::warn!(
                "NO TOKEN SECRET CONFIGURED: this server is OPEN. Anyone who knows a room id can \
                 join it. Set --token-secret (or APARTE_TOKEN_SECRET) on any server reachable \
                 from the internet."
            );
        }
        let turn = match &cfg.turn_relay {
            Some(relay_cfg) => {
                let secret = cfg
                    .turn_secret
                    .as_ref()
                    .map(|s| s.expose().to_vec())
                    .unwrap_or_default();
                let relay = turn_relay::start(relay_cfg, secret, Arc::clone(&metrics))
                    .await
                    .map_err(|e| std::io::Error::other(format!("TURN relay: {e}")))?;
                tracing::info!(addr = %relay.local_addr, "embedded TURN relay listening");
                Some(relay)
            }
            None => None,
        };
        let state = Arc::new(AppState::new(cfg.clone(), metrics));
        if let Some(t) = &turn {
            state
                .turn_port
                .store(t.local_addr.port(), std::sync::atomic::Ordering::Relaxed);
        }

        let listener = std::net::TcpListener::bind(cfg.listen)?;
        let local = listener.local_addr()?;
        let handle = axum_server::Handle::<SocketAddr>::new();
        let app =
            server::router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        // TCP_NODELAY: every write already carries whole frames (queued frames are batched
        // into one write), so Nagle's algorithm can only delay a frame behind an
        // unacknowledged one.
        use axum_server::accept::NoDelayAcceptor;
        // A connection must send its HTTP request (the WebSocket upgrade) within the handshake
        // timeout, with headers of at most 16 KiB: idle or slow-header connections are dropped.
        let limit_http = |b: &mut hyper_util::server::conn::auto::Builder<_>| {
            b.http1()
                .header_read_timeout(cfg.handshake_timeout)
                .max_buf_size(16 * 1024);
        };
        let serving = match &cfg.tls {
            Some((cert, key)) => {
                let tls = tls::load(cert, key).await?;
                let mut srv = axum_server::from_tcp_rustls(listener, tls)?
                    .map(|tls| tls.acceptor(NoDelayAcceptor::new()))
                    .handle(handle.clone())
                    .first_request_timeout(cfg.handshake_timeout);
                limit_http(srv.http_builder());
                tokio::spawn(async move { srv.serve(app).await })
            }
            None => {
                let mut srv = axum_server::from_tcp(listener)?
                    .acceptor(NoDelayAcceptor::new())
                    .handle(handle.clone())
                    .first_request_timeout(cfg.handshake_timeout);
                limit_http(srv.http_builder());
                tokio::spawn(async move { srv.serve(app).await })
            }
        };
        tracing::info!(addr = %local, tls = cfg.tls.is_some(), "signaling server listening");
        Ok(Running {
            state,
            handle,
            serving,
            turn,
            local,
            scheme,
            drain_timeout: cfg.drain_timeout,
        })
    }

    fn turn_addr(&self) -> Option<SocketAddr> {
        self.turn.as_ref().map(|t| t.local_addr)
    }

    /// Graceful shutdown: refuse new connections, tell every client, wait (bounded) for the
    /// connections to drain, then close the TURN relay.
    async fn shutdown(&mut self) {
        tracing::info!("shutting down: refusing new connections and telling clients");
        self.state.shutdown.cancel();
        self.handle.graceful_shutdown(Some(self.drain_timeout));
        self.state.tracker.close();
        if tokio::time::timeout(self.drain_timeout, self.state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: closing remaining connections");
        }
        if let Some(t) = self.turn.take() {
            t.close().await;
        }
        tracing::info!("stopped");
    }
}

impl Drop for Running {
    /// A server dropped without [`Running::shutdown`] (an embedding program that failed half
    /// way) must not keep serving on the runtime: stop accepting and end every connection.
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        self.handle.shutdown();
    }
}

/// The server inside another program's tokio runtime, on loopback: open (no token secret, as
/// on a LAN), with its TURN relay, every limit at its default. `aparte demo` runs its call
/// through it.
pub struct Embedded {
    running: Running,
    turn: SocketAddr,
}

impl Embedded {
    /// Starts the server on `127.0.0.1` (ephemeral ports), with its TURN relay. Neither the
    /// environment nor a config file is read: the embedding program decides everything.
    pub async fn start_loopback() -> std::io::Result<Embedded> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let opts = ServeOpts {
            listen: Some(loopback),
            turn_listen: Some(loopback),
            ..ServeOpts::default()
        };
        let cfg = opts
            .resolve()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let running = Running::start(cfg).await?;
        let turn = running
            .turn_addr()
            .ok_or_else(|| std::io::Error::other("the TURN relay did not start"))?;
        Ok(Embedded { running, turn })
    }

    /// The WebSocket URL clients join with, `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.running.local)
    }

    /// The TURN relay's UDP address.
    pub fn turn_addr(&self) -> SocketAddr {
        self.turn
    }

    /// Shuts down gracefully (clients are told, connections drain within the default drain
    /// timeout).
    pub async fn stop(mut self) {
        self.running.shutdown().await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
