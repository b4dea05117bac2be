//! The log: the operator's `--log` filter, with a cap on every dependency.
//!
//! Our own code never logs a token, SDP, payload or room id (rooms appear as a short hash, see
//! [`crate::rooms::room_tag`]). Dependencies are another matter: at trace level the WebSocket
//! library logs whole frames, join tokens and relayed payloads included. So whatever `--log`
//! asks for, events from any crate other than ours are capped at `info`. Lifting the cap needs
//! `APARTE_LOG_UNCAPPED=1` in the environment, for debugging a dependency on a test server.

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, FilterExt as _};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{Config, LogFormat};

/// The environment variable that lifts the dependency cap.
pub(crate) const UNCAPPED_ENV: &str = "APARTE_LOG_UNCAPPED";

/// Whether an event from `target` at `level` passes the dependency cap.
pub(crate) fn under_cap(target: &str, level: &Level) -> bool {
    target.starts_with("aparte_") || *level <= Level::INFO
}

/// Installs the global subscriber (stderr; text or JSON lines). The filter was validated when
/// the configuration was resolved.
pub(crate) fn init(cfg: &Config) {
    let uncapped = std::env::var_os(UNCAPPED_ENV).is_some_and(|v| v == "1");
    let user = EnvFilter::try_new(&cfg.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = filter_fn(move |meta| uncapped || under_cap(meta.target(), meta.level()));
    let filter = user.and(cap);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    // `try_init` also routes the `log` crate (which tungstenite, turn and rustls use) into the
    // same filter.
    let _ = tracing_subscriber::registry().with(layer).try_init();
    if uncapped {
        tracing::warn!(
            "{UNCAPPED_ENV}=1: dependency logs are not capped; at debug or trace level they can \
             contain join tokens and relayed payloads"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_capped_at_info() {
        assert!(under_cap(
            "aparte_signaling_server::connection",
            &Level::TRACE
        ));
        assert!(under_cap("tungstenite::protocol", &Level::INFO));
        assert!(under_cap("turn::server", &Level::ERROR));
        assert!(!under_cap("tungstenite::protocol", &Level::TRACE));
        assert!(!under_cap("hyper::proto", &Level::DEBUG));
    }
}
