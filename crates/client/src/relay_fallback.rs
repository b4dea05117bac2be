//! Carries out [`aparte_call_policy::relay_fallback`] ("UDP first, the TCP/TLS relay after about
//! 2 s", issue 16) on the call's transport: the policy decides, this only moves the gate of the
//! transport's TURN-over-TCP/TLS tunnels ([`aparte_turn_tunnel::Gate`]).
//!
//! The gate must be set before webrtc-rs gathers (it gathers when the local description is
//! set: the offer, or the answer), so the call tells [`RelayFallbackDriver::path_started`] about
//! each new transport right after building it and before offering or answering.

use aparte_call_policy::{FallbackAction, FallbackConfig, RelayFallback};
use aparte_turn_tunnel::Gate;

use crate::transport::{Transport, TransportConfig};

/// The call's "UDP first" rule and the transport it acts on.
#[derive(Debug)]
pub struct RelayFallbackDriver {
    policy: RelayFallback,
    /// When the current transport's stream relays were opened (ms on the call's clock).
    opened_at_ms: Option<u64>,
}

impl Default for RelayFallbackDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayFallbackDriver {
    /// The rule with its default timing (2 s).
    pub fn new() -> Self {
        RelayFallbackDriver {
            policy: RelayFallback::new(FallbackConfig::default()),
            opened_at_ms: None,
        }
    }

    /// A new transport built from `config`, before it gathers: holds its stream relays, or
    /// opens them at once (no UDP relay to try first, or they were needed earlier in the call).
    pub fn path_started(&mut self, transport: &Transport, config: &TransportConfig, now_ms: u64) {
        if !transport.has_stream_relays() {
            return;
        }
        let action = self.policy.path_started(now_ms, offers_udp_relay(config));
        self.apply(transport, action, now_ms);
    }

    /// The transport's link came up or went down.
    pub fn link(&mut self, transport: &Transport, connected: bool, now_ms: u64) {
        if let Some(action) = self.policy.link(connected, now_ms) {
            self.apply(transport, action, now_ms);
        }
    }

    /// Call on every tick: opens the stream relays when the grace time ran out.
    pub fn poll(&mut self, transport: &Transport, now_ms: u64) {
        if let Some(action) = self.policy.poll(now_ms) {
            self.apply(transport, action, now_ms);
        }
    }

    /// When the stream relays were last opened (ms on the call's clock), if ever.
    pub fn opened_at_ms(&self) -> Option<u64> {
        self.opened_at_ms
    }

    fn apply(&mut self, transport: &Transport, action: FallbackAction, now_ms: u64) {
        let gate = match action {
            FallbackAction::Hold => Gate::Hold,
            FallbackAction::Decline => Gate::Decline,
            FallbackAction::Open => {
                self.opened_at_ms = Some(now_ms);
                tracing::info!(
                    now_ms,
                    "no UDP path yet: opening the TURN relays over TCP/TLS"
                );
                Gate::Open
            }
        };
        transport.set_stream_relay_gate(gate);
    }
}

/// Whether `config` has a TURN server reached over UDP (a `turn:` URL without
/// `transport=tcp`), i.e. a relay to try before the ones over TCP/TLS.
pub fn offers_udp_relay(config: &TransportConfig) -> bool {
    config
        .ice_servers
        .iter()
        .flat_map(|s| &s.urls)
        .any(|url| url.starts_with("turn:") && !url.contains("transport=tcp"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::IceServer;

    fn config(urls: &[&str]) -> TransportConfig {
        TransportConfig {
            ice_servers: vec![IceServer {
                urls: urls.iter().map(|u| (*u).to_owned()).collect(),
                username: "u".into(),
                credential: "p".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn only_turn_over_udp_counts_as_a_udp_relay() {
        assert!(offers_udp_relay(&config(&[
            "turn:vps:3478?transport=udp",
            "turns:vps:5349?transport=tcp"
        ])));
        assert!(offers_udp_relay(&config(&["turn:vps:3478"])));
        assert!(!offers_udp_relay(&config(&[
            "stun:vps:3478",
            "turn:vps:3478?transport=tcp",
            "turns:vps:443?transport=tcp"
        ])));
        assert!(!offers_udp_relay(&TransportConfig::default()));
    }
}
