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

mod acme;
mod config;
mod connection;
mod ice_url;
mod limits;
mod logging;
mod metrics;
mod rooms;
mod server;
mod state;
mod tls;
mod turn_accept;
mod turn_relay;
pub mod turn_stream;
mod web;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aparte_signaling_protocol::{token, RoomId};
use clap::Parser;

use crate::config::{Cli, Command, Config, RoomCommand, SecretOrigin, ServeOpts, TokenArgs};
use crate::metrics::Metrics;
use crate::server::AppState;
use crate::tls::{CertFiles, ReloadableCert};
use crate::turn_relay::TurnRelay;

/// Exit statuses of `aparte-signaling` (also listed in `--help` and `docs/SIGNALING.md`).
pub mod exit {
    /// The server ran and stopped on SIGTERM or SIGINT, or a subcommand succeeded.
    pub const OK: u8 = 0;
    /// The server started but failed while running.
    pub const RUNTIME: u8 = 1;
    /// Bad usage or configuration: an unknown flag, a bad value, an unreadable config file, a
    /// bad certificate or key file, a damaged state file. Restarting will not help.
    pub const CONFIG: u8 = 2;
    /// A listen address cannot be bound (already in use, not on this host, or a port below
    /// 1024 without the capability). Restarting may help once the address is free.
    pub const BIND: u8 = 3;
}

/// Why the server did not start or stopped with an error; decides the exit status.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Bind(#[from] BindError),
    #[error("{0}")]
    Runtime(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) => exit::CONFIG,
            Failure::Bind(_) => exit::BIND,
            Failure::Runtime(_) => exit::RUNTIME,
        }
    }
}

/// A listen address that cannot be bound; names the address, the flag and the likely cause.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({flag}): {}", explain(.flag, .source))]
struct BindError {
    addr: SocketAddr,
    flag: &'static str,
    source: std::io::Error,
}

fn explain(flag: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::AddrInUse if flag == "--metrics-listen" => "address already in use; is another \
            aparte-signaling (or a Prometheus server, whose default port is also 9090) running? \
            Set --metrics-listen to a free address, or to off"
            .into(),
        ErrorKind::AddrInUse => {
            "address already in use; is another aparte-signaling running?".into()
        }
        ErrorKind::PermissionDenied => "permission denied; ports below 1024 need the \
            CAP_NET_BIND_SERVICE capability (see docs/DEPLOY.md)"
            .into(),
        ErrorKind::AddrNotAvailable => "this host has no such address".into(),
        _ => e.to_string(),
    }
}

fn bind_tcp(addr: SocketAddr, flag: &'static str) -> Result<std::net::TcpListener, BindError> {
    std::net::TcpListener::bind(addr).map_err(|source| BindError { addr, flag, source })
}

/// The `aparte-signaling` command line: parses the arguments and runs the server (or a helper
/// subcommand) until it stops. Exit statuses are in [`exit`].
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
            Err(e) => fail(&Failure::Config(e.to_string())),
        },
        Some(Command::Serve) | None => match cli.opts.resolve() {
            Ok(cfg) => serve(cfg),
            Err(e) => fail(&Failure::Config(e.to_string())),
        },
    }
}

/// Prints the one error line and returns the matching exit status.
fn fail(e: &Failure) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code())
}

fn mint_token(cfg: &Config, args: &TokenArgs) -> ExitCode {
    let Some(secret) = &cfg.token_secret else {
        return fail(&Failure::Config(
            "no token secret: set --token-secret, APARTE_TOKEN_SECRET or token_secret".into(),
        ));
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
        Err(e) => fail(&Failure::Config(e.to_string())),
    }
}

fn serve(cfg: Config) -> ExitCode {
    logging::init(&cfg);
    let mut builder = if cfg.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&Failure::Runtime(format!("cannot start the runtime: {e}"))),
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => fail(&e),
    }
}

/// Prints a line on stdout that tools and tests can read, and flushes it.
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn run(cfg: Config) -> Result<(), Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let sig =
        |kind| signal(kind).map_err(|e| Failure::Runtime(format!("cannot handle signals: {e}")));
    // Installed before the server announces itself, so a SIGHUP right after start-up is
    // handled (its default action would kill the process).
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    let mut server = Running::start(cfg).await?;
    if let Some(turn) = server.turn_addr() {
        announce(&format!("turn listening on udp {turn}"));
    }
    if let Some(a) = server.turn_udp6_addr {
        announce(&format!("turn listening on udp {a}"));
    }
    if let Some(a) = server.turn_tcp_addr {
        announce(&format!("turn listening on tcp {a}"));
    }
    if let Some(a) = server.turns_addr {
        announce(&format!("turn listening on tls {a}"));
    }
    if server.turns_on_listen {
        announce(&format!(
            "turn listening on tls {} (shared with https)",
            server.local
        ));
    }
    if let Some(m) = server.metrics_addr {
        announce(&format!("metrics listening on http://{m}/metrics"));
    }
    announce(&format!(
        "listening on {}://{}",
        server.scheme, server.local
    ));
    loop {
        tokio::select! {
            res = &mut server.serving => {
                let why = match res {
                    Ok(Ok(())) => "the listener stopped".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(Failure::Runtime(format!("the server stopped: {why}")));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => server.reload_certificate(),
        }
    }
    server.shutdown().await;
    announce("stopped");
    Ok(())
}

/// A started server: its HTTP/WebSocket listener and, when configured, its metrics listener and
/// TURN relay.
struct Running {
    state: Arc<AppState>,
    handle: axum_server::Handle<SocketAddr>,
    metrics_handle: axum_server::Handle<SocketAddr>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    turn: Option<TurnRelay>,
    tls: Option<Arc<ReloadableCert>>,
    local: SocketAddr,
    /// TURN over TCP, when on.
    turn_tcp_addr: Option<SocketAddr>,
    /// The relay's IPv6 UDP port (`--turn-listen6`).
    turn_udp6_addr: Option<SocketAddr>,
    /// TURN over TLS on its own port, when on.
    turns_addr: Option<SocketAddr>,
    /// TURN over TLS on the HTTPS port.
    turns_on_listen: bool,
    metrics_addr: Option<SocketAddr>,
    scheme: &'static str,
    drain_timeout: Duration,
}

impl Running {
    /// Checks the certificate files, obtains the TURN secret, binds every listener (the error
    /// names the one that failed), and starts serving on the current tokio runtime.
    async fn start(mut cfg: Config) -> Result<Running, Failure> {
        let metrics = Arc::new(Metrics::new());
        let tls = match &cfg.tls {
            Some((cert, key)) => {
                let files = CertFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                let reloadable =
                    ReloadableCert::load(files).map_err(|e| Failure::Config(e.to_string()))?;
                Some(Arc::new(reloadable))
            }
            None => None,
        };
        // Said once everything is bound, so a failed start prints only its error.
        let mut notes: Vec<String> = Vec::new();
        let mut secret_file_open = false;
        if cfg.turn_relay.is_some() {
            match &cfg.turn_secret {
                Some(_) => notes.push(format!("TURN secret: {}", cfg.turn_secret_origin)),
                None => {
                    let (secret, how, readable) = state::turn_secret(cfg.state_dir.as_deref())
                        .map_err(|e| Failure::Config(e.to_string()))?;
                    notes.push(format!("TURN secret: {how}"));
                    secret_file_open = readable;
                    cfg.turn_secret = Some(secret);
                }
            }
        }

        // Bind everything before serving anything, so a busy port stops the start cleanly.
        let listener = bind_tcp(cfg.listen, "--listen")?;
        let local = listener
            .local_addr()
            .map_err(|e| Failure::Runtime(e.to_string()))?;
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => Some(bind_tcp(addr, "--metrics-listen")?),
            None => None,
        };
        let mut turn_tcp_listener = None;
        let mut turn_udp6_addr = None;
        let mut turns_listener = None;
        let mut turn_streams = None;
        let mut relay_urls = Vec::new();
        let turn = match &cfg.turn_relay {
            Some(relay_cfg) => {
                let socket =
                    turn_relay::bind_udp(relay_cfg.listen).map_err(|source| BindError {
                        addr: relay_cfg.listen,
                        flag: "--turn-listen",
                        source,
                    })?;
                let udp_addr = socket
                    .local_addr()
                    .map_err(|e| Failure::Runtime(e.to_string()))?;
                let mut listeners = vec![turn_relay::Listener::Udp(socket)];
                let timeouts = turn_stream::StreamTimeouts {
                    handshake: cfg.handshake_timeout,
                    idle: turn_stream::STREAM_IDLE,
                    write_stall: turn_stream::WRITE_STALL,
                };
                let host = match relay_cfg.public_ip {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                };
                let tls_host = match relay_cfg.tls_host.parse::<std::net::Ipv6Addr>() {
                    Ok(ip) => format!("[{ip}]"),
                    Err(_) => relay_cfg.tls_host.clone(),
                };
                relay_urls.push(format!("turn:{host}:{}?transport=udp", udp_addr.port()));
                if let Some((listen6, public6)) = relay_cfg.listen6 {
                    let socket6 =
                        turn_relay::bind_udp_v6_only(listen6).map_err(|source| BindError {
                            addr: listen6,
                            flag: "--turn-listen6",
                            source,
                        })?;
                    let local6 = socket6
                        .local_addr()
                        .map_err(|e| Failure::Runtime(e.to_string()))?;
                    let port6 = local6.port();
                    turn_udp6_addr = Some(local6);
                    listeners.push(turn_relay::Listener::Udp(socket6));
                    relay_urls.push(format!("turn:[{public6}]:{port6}?transport=udp"));
                }
                let new_mux = |transport, local| {
                    turn_stream::StreamMux::new(
                        transport,
                        local,
                        Arc::clone(&metrics),
                        timeouts,
                        turn_stream::STREAM_QUEUE,
                    )
                };
                // TURN streams have caps of their own, as large as the WebSocket ones, so
                // relay clients and signaling clients cannot take each other's slots.
                let limiter =
                    limits::ConnLimiter::new(cfg.max_connections, cfg.max_connections_per_ip);
                if let Some(addr) = relay_cfg.tcp_listen {
                    let l = if addr == relay_cfg.listen && addr.port() == 0 {
                        // Any port was asked for: the same number as UDP if it is free as a
                        // TCP port, else another (the join answer carries the real one).
                        let same = SocketAddr::new(addr.ip(), udp_addr.port());
                        match bind_tcp(same, "--turn-tcp-listen") {
                            Ok(l) => l,
                            Err(_) => bind_tcp(addr, "--turn-tcp-listen")?,
                        }
                    } else {
                        bind_tcp(addr, "--turn-tcp-listen")?
                    };
                    let local = l
                        .local_addr()
                        .map_err(|e| Failure::Runtime(e.to_string()))?;
                    let mux = new_mux(metrics::Transport::Tcp, local);
                    listeners.push(turn_relay::Listener::Streams(Arc::clone(&mux)));
                    relay_urls.push(format!("turn:{host}:{}?transport=tcp", local.port()));
                    turn_tcp_listener = Some((l, local, mux));
                }
                let tls_mux = match (relay_cfg.tls_listen, relay_cfg.tls_on_listen) {
                    (None, false) => None,
                    (tls_listen, _) => {
                        let mut mux_local = local;
                        if let Some(addr) = tls_listen {
                            let l = bind_tcp(addr, "--turns-listen")?;
                            let a = l
                                .local_addr()
                                .map_err(|e| Failure::Runtime(e.to_string()))?;
                            mux_local = a;
                            relay_urls.push(format!("turns:{tls_host}:{}?transport=tcp", a.port()));
                            turns_listener = Some((l, a));
                        }
                        if relay_cfg.tls_on_listen {
                            relay_urls
                                .push(format!("turns:{tls_host}:{}?transport=tcp", local.port()));
                        }
                        let mux = new_mux(metrics::Transport::Tls, mux_local);
                        listeners.push(turn_relay::Listener::Streams(Arc::clone(&mux)));
                        Some(mux)
                    }
                };
                turn_streams = Some((limiter, tls_mux));
                let secret = cfg
                    .turn_secret
                    .as_ref()
                    .map(|s| s.expose().to_vec())
                    .unwrap_or_default();
                let relay = turn_relay::start(relay_cfg, listeners, secret, Arc::clone(&metrics))
                    .await
                    .map_err(|e| Failure::Runtime(format!("TURN relay: {e}")))?;
                tracing::info!(addr = %relay.local_addr, "embedded TURN relay listening");
                Some(relay)
            }
            None => None,
        };
        if !web::page_built() {
            tracing::warn!(
                "the browser page is not built into this binary: / says so. Run \
                 `bash scripts/build-web`, then build the server again."
            );
        }
        if cfg.token_secret.is_none() {
            tracing::warn!(
                "NO TOKEN SECRET CONFIGURED: this server is OPEN. Anyone who knows a room id can \
                 join it. Set --token-secret (or APARTE_TOKEN_SECRET) on any server reachable \
                 from the internet."
            );
        }
        for note in notes {
            tracing::info!("{note}");
        }
        if secret_file_open {
            tracing::warn!("the TURN secret file can be read by other users: chmod 600 it");
        }
        let mut app_state = AppState::new(cfg.clone(), Arc::clone(&metrics));
        app_state.relay_urls = relay_urls;
        let state = Arc::new(app_state);

        let metrics_handle = axum_server::Handle::<SocketAddr>::new();
        let metrics_addr = match metrics_listener {
            Some(l) => {
                let addr = l
                    .local_addr()
                    .map_err(|e| Failure::Runtime(e.to_string()))?;
                let app = server::metrics_router(Arc::clone(&metrics)).into_make_service();
                let srv = axum_server::from_tcp(l)
                    .map_err(|e| Failure::Runtime(e.to_string()))?
                    .handle(metrics_handle.clone());
                tokio::spawn(async move {
                    if let Err(e) = srv.serve(app).await {
                        tracing::error!(error = %e, "metrics listener failed");
                    }
                });
                tracing::info!(%addr, "metrics listening");
                Some(addr)
            }
            None => None,
        };

        let handle = axum_server::Handle::<SocketAddr>::new();
        let app =
            server::router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
        // Ordering starts only now that every address is bound.
        let rustls_cfg = match (&tls, &cfg.acme) {
            (Some(cert), _) => Some(
                cert.server_config()
                    .map_err(|e| Failure::Runtime(format!("TLS: {e}")))?,
            ),
            (None, Some(settings)) => {
                let resolver = acme::start(settings).map_err(Failure::Config)?;
                tracing::info!(
                    domains = %settings.domains.join(","),
                    directory = %settings.directory,
                    cache = %settings.cache.display(),
                    "ACME: certificates from the CA, TLS-ALPN-01 on this listener"
                );
                Some(
                    tls::acme_server_config(resolver)
                        .map_err(|e| Failure::Runtime(format!("TLS: {e}")))?,
                )
            }
            (None, None) => None,
        };
        let scheme = if rustls_cfg.is_some() {
            "https"
        } else {
            "http"
        };
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
        let runtime = |e: std::io::Error| Failure::Runtime(e.to_string());
        // TURN streams: the TCP listener, the TLS listener, and the shared HTTPS port.
        let mut turn_tcp_addr = None;
        let mut turns_addr = None;
        let mut shared = None;
        if let Some((limiter, tls_mux)) = turn_streams {
            let streams = |mux: Arc<turn_stream::StreamMux>| turn_accept::TurnStreams {
                mux,
                limiter: limiter.clone(),
                metrics: Arc::clone(&metrics),
            };
            let stop = state.shutdown.clone();
            if let Some((l, addr, mux)) = turn_tcp_listener {
                l.set_nonblocking(true).map_err(runtime)?;
                let l = tokio::net::TcpListener::from_std(l).map_err(runtime)?;
                tokio::spawn(turn_accept::accept_tcp(l, streams(mux), stop.clone()));
                turn_tcp_addr = Some(addr);
            }
            if let (Some(mux), Some(base)) = (tls_mux, &rustls_cfg) {
                if let Some((l, addr)) = turns_listener {
                    l.set_nonblocking(true).map_err(runtime)?;
                    let l = tokio::net::TcpListener::from_std(l).map_err(runtime)?;
                    let acceptor =
                        tokio_rustls::TlsAcceptor::from(turn_accept::turn_tls_config(base));
                    tokio::spawn(turn_accept::accept_tls(
                        l,
                        acceptor,
                        streams(Arc::clone(&mux)),
                        stop.clone(),
                    ));
                    turns_addr = Some(addr);
                }
                if cfg.turn_relay.as_ref().is_some_and(|r| r.tls_on_listen) {
                    shared = Some(turn_accept::DemuxAcceptor {
                        tls: tokio_rustls::TlsAcceptor::from(turn_accept::shared_tls_config(base)),
                        turn: streams(mux),
                    });
                }
            }
        }
        let turns_on_listen = shared.is_some();
        let serving = match (rustls_cfg, shared) {
            (Some(_), Some(demux)) => {
                let mut srv = axum_server::from_tcp(listener)
                    .map_err(runtime)?
                    .acceptor(demux)
                    .handle(handle.clone())
                    .first_request_timeout(cfg.handshake_timeout);
                limit_http(srv.http_builder());
                if let Some(cert) = &tls {
                    tracing::info!(
                        fingerprint = %cert.current_fingerprint(),
                        "TLS certificate loaded (SIGHUP reloads it); TURN over TLS shares the port"
                    );
                }
                tokio::spawn(async move { srv.serve(app).await })
            }
            (Some(rustls_cfg), None) => {
                let tls_cfg = axum_server::tls_rustls::RustlsConfig::from_config(rustls_cfg);
                let mut srv = axum_server::from_tcp_rustls(listener, tls_cfg)
                    .map_err(runtime)?
                    .map(|tls| tls.acceptor(NoDelayAcceptor::new()))
                    .handle(handle.clone())
                    .first_request_timeout(cfg.handshake_timeout);
                limit_http(srv.http_builder());
                if let Some(cert) = &tls {
                    tracing::info!(
                        fingerprint = %cert.current_fingerprint(),
                        "TLS certificate loaded (SIGHUP reloads it)"
                    );
                }
                tokio::spawn(async move { srv.serve(app).await })
            }
            (None, _) => {
                let mut srv = axum_server::from_tcp(listener)
                    .map_err(runtime)?
                    .acceptor(NoDelayAcceptor::new())
                    .handle(handle.clone())
                    .first_request_timeout(cfg.handshake_timeout);
                limit_http(srv.http_builder());
                tokio::spawn(async move { srv.serve(app).await })
            }
        };
        tracing::info!(addr = %local, tls = scheme == "https", "signaling server listening");
        Ok(Running {
            state,
            handle,
            metrics_handle,
            serving,
            turn,
            tls,
            local,
            turn_tcp_addr,
            turn_udp6_addr,
            turns_addr,
            turns_on_listen,
            metrics_addr,
            scheme,
            drain_timeout: cfg.drain_timeout,
        })
    }

    fn turn_addr(&self) -> Option<SocketAddr> {
        self.turn.as_ref().map(|t| t.local_addr)
    }

    /// SIGHUP: reads the certificate files again. Open connections keep their session; a bad
    /// new file keeps the old certificate.
    fn reload_certificate(&self) {
        let Some(cert) = &self.tls else {
            tracing::info!(
                "SIGHUP: no --tls-cert/--tls-key, nothing to reload (ACME certificates renew by \
                 themselves)"
            );
            return;
        };
        match cert.reload() {
            Ok(fp) => tracing::info!(fingerprint = %fp, "SIGHUP: TLS certificate reloaded"),
            Err(e) => tracing::error!(
                "SIGHUP: TLS certificate NOT reloaded, still serving the previous one \
                 (fingerprint {}): {e}",
                cert.current_fingerprint()
            ),
        }
    }

    /// Graceful shutdown: refuse new connections, tell every client, wait (bounded) for the
    /// connections to drain, then close the TURN relay.
    async fn shutdown(&mut self) {
        tracing::info!("shutting down: refusing new connections and telling clients");
        self.state.shutdown.cancel();
        self.handle.graceful_shutdown(Some(self.drain_timeout));
        self.metrics_handle.shutdown();
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
        self.metrics_handle.shutdown();
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
            // webrtc-rs gathers no TCP relay candidates, so the demo has no use for it.
            turn_tcp_listen: Some("off".into()),
            metrics_listen: Some("off".into()),
            ..ServeOpts::default()
        };
        let mut cfg = opts
            .resolve()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // In memory only: the demo must not write into the user's state directory.
        if cfg.turn_secret.is_none() {
            let mut s = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut s);
            let text = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
            cfg.turn_secret = Some(config::Secret::new(text.into_bytes()));
            cfg.turn_secret_origin = SecretOrigin::Embedded;
        }
        let running = Running::start(cfg)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
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
