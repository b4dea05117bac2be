//! Prometheus metrics, served as text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `reason` label of rejects.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    pub(crate) reason: &'static str,
}

/// The transport a TURN client reaches the relay over.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Plain UDP (`turn:…?transport=udp`).
    Udp,
    /// TURN over TCP (`turn:…?transport=tcp`, RFC 5766 §2.1).
    Tcp,
    /// TURN over TLS (`turns:…?transport=tcp`), on its own port or on the HTTPS port.
    Tls,
}

impl Transport {
    /// The metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// The `transport` label of the TURN metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransportLabel {
    pub(crate) transport: &'static str,
}

/// The `transport` and `reason` labels of TURN refusals and stream closes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransportReason {
    pub(crate) transport: &'static str,
    pub(crate) reason: &'static str,
}

/// Every metric the server exports.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Live WebSocket connections.
    pub(crate) connections: Gauge,
    /// WebSocket connections accepted since start.
    pub(crate) connections_total: Counter,
    /// Live rooms.
    pub(crate) rooms: Gauge,
    /// Messages relayed (counted once per receiving peer).
    pub(crate) messages_relayed: Counter,
    /// Bytes of relayed messages as sent to receivers.
    pub(crate) relayed_message_bytes: Counter,
    /// Rejections, by reason (error code or connection-level reason).
    pub(crate) rejects: Family<Reason, Counter>,
    /// Joins that took over an earlier connection's seat with its resume token.
    pub(crate) resumes: Counter,
    /// Live TURN allocations, by client transport.
    pub(crate) turn_allocations: Family<TransportLabel, Gauge>,
    /// TURN allocations created since start, by client transport.
    pub(crate) turn_allocations_total: Family<TransportLabel, Counter>,
    /// Bytes relayed by the TURN relay (both directions), by client transport.
    pub(crate) turn_relayed_bytes: Family<TransportLabel, Counter>,
    /// Bytes dropped by the TURN bandwidth cap, by client transport.
    pub(crate) turn_dropped_bytes: Family<TransportLabel, Counter>,
    /// TURN refusals, by client transport and reason.
    pub(crate) turn_rejects: Family<TransportReason, Counter>,
    /// Live TURN client streams (TCP or TLS connections to the relay).
    pub(crate) turn_streams: Family<TransportLabel, Gauge>,
    /// TURN client streams closed, by transport and reason.
    pub(crate) turn_streams_closed: Family<TransportReason, Counter>,
    /// Packets for a TURN client stream dropped before they were written (its queue was full).
    pub(crate) turn_stream_dropped_packets: Family<TransportReason, Counter>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub(crate) fn new() -> Metrics {
        let mut m = Metrics::default();
        let mut r = Registry::with_prefix("aparte_signaling");
        r.register(
            "connections",
            "Live WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "WebSocket connections accepted",
            m.connections_total.clone(),
        );
        r.register("rooms", "Live rooms", m.rooms.clone());
        r.register(
            "messages_relayed",
            "Messages relayed, once per receiving peer",
            m.messages_relayed.clone(),
        );
        r.register(
            "relayed_message_bytes",
            "Bytes of relayed messages as sent to receivers",
            m.relayed_message_bytes.clone(),
        );
        r.register(
            "resumes",
            "Joins that took back an earlier connection's seat with its resume token",
            m.resumes.clone(),
        );
        r.register(
            "rejects",
            "Rejected messages and connections, by reason",
            m.rejects.clone(),
        );
        r.register(
            "turn_allocations",
            "Live TURN allocations",
            m.turn_allocations.clone(),
        );
        r.register(
            "turn_allocations_created",
            "TURN allocations created",
            m.turn_allocations_total.clone(),
        );
        r.register(
            "turn_relayed_bytes",
            "Bytes relayed by the embedded TURN relay, both directions",
            m.turn_relayed_bytes.clone(),
        );
        r.register(
            "turn_dropped_bytes",
            "Bytes dropped by the TURN bandwidth cap",
            m.turn_dropped_bytes.clone(),
        );
        r.register(
            "turn_rejects",
            "TURN authentication and quota refusals, by client transport and reason",
            m.turn_rejects.clone(),
        );
        r.register(
            "turn_streams",
            "Live TURN client streams (TCP or TLS connections)",
            m.turn_streams.clone(),
        );
        r.register(
            "turn_streams_closed",
            "TURN client streams closed, by transport and reason",
            m.turn_streams_closed.clone(),
        );
        r.register(
            "turn_stream_dropped_packets",
            "Packets to a TURN client stream dropped because its queue was full",
            m.turn_stream_dropped_packets.clone(),
        );
        m.registry = r;
        m
    }

    /// Counts one rejection.
    pub(crate) fn reject(&self, reason: &'static str) {
        self.rejects.get_or_create(&Reason { reason }).inc();
    }

    /// Counts one TURN refusal.
    pub(crate) fn turn_reject(&self, transport: Transport, reason: &'static str) {
        self.turn_rejects
            .get_or_create(&TransportReason {
                transport: transport.as_str(),
                reason,
            })
            .inc();
    }

    /// The `transport` label set.
    pub(crate) fn transport(transport: Transport) -> TransportLabel {
        TransportLabel {
            transport: transport.as_str(),
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The content type of [`Metrics::render`].
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_reasons() {
        let m = Metrics::new();
        m.connections.inc();
        m.reject("room_full");
        m.reject("room_full");
        let text = m.render();
        assert!(text.contains("aparte_signaling_connections 1"), "{text}");
        assert!(
            text.contains("aparte_signaling_rejects_total{reason=\"room_full\"} 2"),
            "{text}"
        );
    }
}
