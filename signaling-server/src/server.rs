//! HTTP side: the public router (`/ws`, `/healthz`, the browser page of [`crate::web`]), the separate metrics router (`/metrics`)
//! and connection admission.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::limits::ConnLimiter;
use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::rooms::Rooms;

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct AppState {
    /// Resolved configuration.
    pub(crate) cfg: Config,
    /// The room registry.
    pub(crate) rooms: Rooms,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Connection caps.
    pub(crate) limiter: ConnLimiter,
    /// Cancelled when the server shuts down.
    pub(crate) shutdown: CancellationToken,
    /// Tracks live connection tasks for draining.
    pub(crate) tracker: TaskTracker,
    /// Next peer id.
    pub(crate) next_peer: AtomicU64,
    /// The embedded TURN relay's URLs (UDP, TCP, TLS, as bound), empty when it is off.
    pub(crate) relay_urls: Vec<String>,
    /// A fixed instant that heartbeat deadlines are aligned to.
    pub(crate) epoch: tokio::time::Instant,
}

impl AppState {
    /// Fresh state for `cfg`.
    pub(crate) fn new(cfg: Config, metrics: Arc<Metrics>) -> AppState {
        AppState {
            limiter: ConnLimiter::new(cfg.max_connections, cfg.max_connections_per_ip),
            cfg,
            rooms: Rooms::default(),
            metrics,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_peer: AtomicU64::new(1),
            relay_urls: Vec::new(),
            epoch: tokio::time::Instant::now(),
        }
    }
}

/// The HTTP routes.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(healthz))
        .route("/", get(crate::web::index))
        .route("/r/{room}", get(crate::web::room))
        .route("/app.js", get(crate::web::app_js))
        .route("/worker.js", get(crate::web::worker_js))
        .route("/style.css", get(crate::web::style_css))
        .with_state(state)
}

/// The metrics listener's routes: only `/metrics`, so metrics never share the public port.
pub(crate) fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(metrics)
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    if st.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()).into_response()
}

/// The client's IP: the TCP peer, or, behind a trusted local proxy, the right-most address of
/// the configured header.
fn client_ip(cfg: &Config, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let Some(name) = &cfg.proxy_header else {
        return peer.ip();
    };
    if !peer.ip().is_loopback() {
        return peer.ip();
    }
    headers
        .get_all(name)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer.ip())
}

async fn ws_upgrade(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let client = client_ip(&st.cfg, peer, &headers);
    if !crate::web::origin_allowed(&headers, &st.cfg.allowed_origins) {
        st.metrics.reject("origin_not_allowed");
        tracing::info!(%client, reason = %"origin_not_allowed", "connection refused");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if st.shutdown.is_cancelled() {
        st.metrics.reject("shutting_down");
        tracing::info!(%client, reason = %"shutting_down", "connection refused");
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let slot = match st.limiter.try_acquire(client) {
        Ok(slot) => slot,
        Err(refused) => {
            st.metrics.reject(refused.as_str());
            tracing::info!(%client, reason = %refused.as_str(), "connection refused");
            return (StatusCode::SERVICE_UNAVAILABLE, refused.as_str()).into_response();
        }
    };
    let max = st.cfg.max_message_bytes;
    let hard = max.saturating_mul(4);
    let token = st.tracker.token();
    let st2 = Arc::clone(&st);
    // Frames are written out when the buffer passes 8 KiB or on flush, so a batch of queued
    // frames (see `Conn::write_queued`) goes out in one write; a single frame still goes out at
    // once, because every write ends with a flush.
    ws.read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(hard.saturating_mul(2))
        .max_message_size(hard)
        .max_frame_size(hard)
        .on_failed_upgrade(|_| {})
        .on_upgrade(move |socket| async move {
            let _token = token;
            crate::connection::run(st2, socket, slot, client).await;
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeOpts;

    fn cfg(header: Option<&str>) -> Config {
        let opts = ServeOpts {
            proxy_header: header.map(str::to_owned),
            ..ServeOpts::default()
        };
        opts.resolve().unwrap()
    }

    #[test]
    fn client_ip_from_trusted_proxy_header_only() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.9.9.9, 198.51.100.7".parse().unwrap());
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "203.0.113.5:5000".parse().unwrap();
        let with = cfg(Some("X-Forwarded-For"));
        assert_eq!(
            client_ip(&with, local, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Not from the local proxy: the header is ignored.
        assert_eq!(client_ip(&with, remote, &h), remote.ip());
        // Not configured: ignored.
        assert_eq!(client_ip(&cfg(None), local, &h), local.ip());
        // Garbage: the TCP peer.
        h.insert("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(client_ip(&with, local, &h), local.ip());
    }
}
