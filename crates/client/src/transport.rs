//! The WebRTC transport (webrtc-rs 0.17), behind a small surface so the rest of the client
//! never touches webrtc-rs types and a move to another WebRTC stack stays local to this file.
//!
//! It carries three things and understands none of them: the opaque audio payload of each RTP
//! packet (already e2ee-protected), data-channel messages (already e2ee-protected), and the SDP
//! and ICE candidates that the caller relays over signaling. Pitfalls of webrtc-rs 0.17 that
//! shape this code are listed in `docs/WEBRTC.md`.
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, Mutex};
use webrtc::api::interceptor_registry::configure_rtcp_reports;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::data_channel::data_channel_init::RTCDataChannelInit;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::ice_transport::ice_candidate_pair::RTCIceCandidatePair;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::certificate::RTCCertificate;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::packet::Packet as RtcpPacket;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::reception_report::ReceptionReport;
use webrtc::rtcp::sender_report::SenderReport;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;

use crate::sdp::{dtls_fingerprint, FingerprintError, PinnedFingerprint};

/// Opus payload type, as browsers use it.
const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Largest payload we hand to the RTP track: webrtc-rs receivers read at most 1460-byte packets.
pub const MAX_MEDIA_PAYLOAD: usize = 1200;
/// Largest data-channel message (webrtc-rs breaks a channel on messages of 64 KiB).
pub const MAX_DATA_MESSAGE: usize = 16 * 1024;
/// Queue of events to the caller. Media is dropped (and counted) rather than blocking
/// webrtc-rs internals when the caller falls behind.
const EVENT_QUEUE: usize = 1024;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// A round-trip time above this (one minute, in 1/65536 s) is a bogus report, not a path.
const MAX_RTT_UNITS: u32 = 60 << 16;
/// A sequence-number jump beyond this (either way) is a sender restart, not loss
/// (RFC 3550 appendix A.1 uses 3000 as the largest dropout).
const MAX_SEQUENCE_JUMP: i32 = 3000;
/// Nothing received on the selected ICE pair for this long: the link is reported
/// `Disconnected` (webrtc-rs's default is 5 s). Media flows every 20 ms in both directions, so
/// 3 s of silence is an outage, not a pause.
const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(3);
/// The longest a mid-call webrtc-rs operation (an ICE restart's offer or answer, closing) may
/// take. One did not return at all in our tests (`docs/WEBRTC.md` §9): a bound keeps the call
/// loop alive, so the call can still end cleanly.
const WEBRTC_OP_TIMEOUT: Duration = Duration::from_secs(3);
/// After `Disconnected`, this much longer without a packet: `Failed` (webrtc-rs's default).
/// The call restarts ICE on `Disconnected` already; webrtc-rs also gives up the first
/// connectivity checks after disconnected + failed, so a shorter value would cut short a slow
/// first connection on a lossy path.
const ICE_FAILED_AFTER: Duration = Duration::from_secs(25);

/// A STUN or TURN server, as the signaling server's join answer lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:host:port` or `turn:host:port` URLs (UDP only in webrtc-rs 0.17).
    pub urls: Vec<String>,
    /// TURN username (empty for STUN).
    pub username: String,
    /// TURN password (empty for STUN).
    pub credential: String,
}

/// How to build the peer connection.
#[derive(Debug, Clone, Default)]
pub struct TransportConfig {
    /// STUN/TURN servers.
    pub ice_servers: Vec<IceServer>,
    /// Use only relayed (TURN) candidates, so the peer never learns our address.
    pub relay_only: bool,
    /// Gather only loopback host candidates (tests and single-machine demos).
    pub loopback_only: bool,
    /// How `turns:` relays are verified (`None`: the usual web roots). See
    /// [`aparte_turn_tunnel::tls_client_config`].
    pub turn_tls: Option<Arc<rustls::ClientConfig>>,
}

/// Which side of the SDP exchange this transport plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpRole {
    /// Creates the offer (and initiates the e2ee handshake).
    Offerer,
    /// Answers.
    Answerer,
}

/// Something to relay to the peer over signaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// An SDP offer.
    Offer(String),
    /// An SDP answer.
    Answer(String),
    /// One trickled ICE candidate (the `candidate:` line).
    Candidate(String),
}

/// The transport's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// ICE and DTLS in progress.
    Connecting,
    /// Media can flow.
    Connected,
    /// Connectivity lost; ICE may still recover.
    Disconnected,
    /// ICE gave up.
    Failed,
    /// Closed.
    Closed,
}

/// What the transport reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// Relay this to the peer.
    Signal(Signal),
    /// The link state changed.
    Link(LinkState),
    /// An RTP packet's payload, untouched (still e2ee-protected).
    Media {
        /// RTP sequence number.
        sequence: u16,
        /// RTP timestamp (48 kHz).
        timestamp: u32,
        /// The payload.
        payload: Bytes,
    },
    /// A data-channel message, untouched (still e2ee-protected).
    Data(Bytes),
    /// The data channel is open.
    DataOpen,
}

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// webrtc-rs reported an error.
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::Error),
    /// A signal arrived that does not fit the SDP role or state.
    #[error("unexpected signal: {0}")]
    UnexpectedSignal(&'static str),
    /// The SDP has no usable DTLS fingerprint.
    #[error("SDP without a single, consistent DTLS fingerprint")]
    NoFingerprint,
    /// A later SDP of the call names another DTLS certificate than the first one.
    #[error("the peer's DTLS fingerprint changed during the call; SDP refused")]
    FingerprintChanged,
    /// An ICE restart cannot start yet (webrtc-rs is still gathering candidates); try later.
    #[error("ICE is still gathering candidates; restart later")]
    StillGathering,
    /// A webrtc-rs operation did not finish in time.
    #[error("webrtc-rs did not finish {0} within {WEBRTC_OP_TIMEOUT:?}")]
    TimedOut(&'static str),
    /// An empty media payload (it would never be sent).
    #[error("empty media payload")]
    EmptyPayload,
    /// A payload exceeds what the path can carry.
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Size given.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// Round-trip time and packet loss of the media stream, from RTCP and from the sequence
/// numbers of the RTP packets received.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkStats {
    /// Round-trip time from the peer's last RTCP receiver report (RFC 3550 section 6.4.1:
    /// arrival − LSR − DLSR), in ms. `None` until a report that answers one of our sender
    /// reports has arrived.
    pub rtt_ms: Option<f64>,
    /// Share of our packets lost between the peer's last two receiver reports, percent
    /// (from their cumulative counts and what we sent in between; webrtc-rs's own 8-bit
    /// "fraction lost" read 0 % on a path losing 9 %, so it is not used). `None` until the
    /// peer has reported.
    pub peer_loss_percent: Option<f64>,
    /// Our packets the peer reported lost since the call started (RTCP cumulative count).
    pub peer_packets_lost: u64,
    /// Our packets sent when that report arrived (the base for the peer's total loss).
    pub packets_sent_at_report: u64,
    /// Reception reports that gave a new loss figure so far (a new one changes this).
    pub reports: u64,
    /// RTP packets we received (counted before decryption, before any queue).
    pub received_packets: u64,
    /// Packets missing from what we received, by sequence number (expected − received).
    pub received_lost: u64,
}

impl LinkStats {
    /// Packets missing from what we received, in percent of those expected.
    pub fn received_loss_percent(&self) -> f64 {
        let expected = self.received_packets.saturating_add(self.received_lost);
        if expected == 0 {
            0.0
        } else {
            self.received_lost as f64 * 100.0 / expected as f64
        }
    }

    /// Our packets the peer reported lost since the call started, in percent (`None` before
    /// its first report).
    pub fn peer_total_loss_percent(&self) -> Option<f64> {
        (self.peer_loss_percent.is_some() && self.packets_sent_at_report > 0).then(|| {
            (self.peer_packets_lost as f64 * 100.0 / self.packets_sent_at_report as f64).min(100.0)
        })
    }

    /// Takes in one RTCP reception report about our stream, received when the middle 32
    /// bits of the NTP clock read `now_ntp_mid`, with `sent` packets sent so far.
    pub fn on_reception_report(
        &mut self,
        report: &ReceptionReportData,
        now_ntp_mid: u32,
        sent: u64,
    ) {
        if let Some(rtt) = rtt_units(now_ntp_mid, report.last_sender_report, report.delay) {
            self.rtt_ms = Some(f64::from(rtt) * 1000.0 / 65536.0);
        }
        let lost = u64::from(report.total_lost);
        let (d_lost, d_sent) = match self.peer_loss_percent {
            Some(_) => (
                lost.saturating_sub(self.peer_packets_lost),
                sent.saturating_sub(self.packets_sent_at_report),
            ),
            None => (lost, sent),
        };
        if d_sent > 0 || self.peer_loss_percent.is_none() {
            let percent = if d_sent == 0 {
                0.0
            } else {
                d_lost as f64 * 100.0 / d_sent as f64
            };
            self.peer_loss_percent = Some(percent.min(100.0));
            self.reports = self.reports.saturating_add(1);
        }
        self.peer_packets_lost = lost;
        self.packets_sent_at_report = sent;
    }
}

/// The fields of an RTCP reception report (RFC 3550 section 6.4.1) that [`LinkStats`] uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceptionReportData {
    /// Packets lost since the stream began (24 bits on the wire).
    pub total_lost: u32,
    /// LSR: the middle 32 bits of the NTP timestamp of the last sender report received, or 0.
    pub last_sender_report: u32,
    /// DLSR: delay since that sender report, in 1/65536 s.
    pub delay: u32,
}

impl From<&ReceptionReport> for ReceptionReportData {
    fn from(r: &ReceptionReport) -> Self {
        Self {
            total_lost: r.total_lost,
            last_sender_report: r.last_sender_report,
            delay: r.delay,
        }
    }
}

/// Round-trip time in 1/65536 s from a report that echoes one of our sender reports: `None`
/// when it does not (LSR 0) or the result is not plausible (negative, or over a minute).
fn rtt_units(now_ntp_mid: u32, lsr: u32, dlsr: u32) -> Option<u32> {
    if lsr == 0 {
        return None;
    }
    // The NTP field wraps every 18 hours: modular arithmetic, then a sanity bound.
    let rtt = now_ntp_mid.wrapping_sub(lsr).wrapping_sub(dlsr);
    (rtt <= MAX_RTT_UNITS).then_some(rtt)
}

/// The middle 32 bits of the current NTP time (what LSR echoes), from the system clock, as
/// webrtc-rs stamps its sender reports.
fn ntp_mid_now() -> u32 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_unix.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    // Truncation is the point: RFC 3550's "middle 32 bits" of the 64-bit NTP time.
    ((secs << 16) | (frac >> 16)) as u32
}

/// Counts packets missing from a received RTP stream by sequence number (RFC 3550 A.3:
/// expected = highest − first + 1, lost = expected − received), across wraparound. A jump of
/// more than 3000 either way starts a new count (a sender restart), keeping the totals so far.
/// Reordered packets are not loss; duplicates (which SRTP already refuses) do not hide loss
/// beyond their own count. Sans-IO; no input panics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequenceLoss {
    /// (first, highest) extended sequence numbers of the current run.
    run: Option<(u64, u64)>,
    received_in_run: u64,
    expected_before: u64,
    received_before: u64,
}

impl SequenceLoss {
    /// Records one received packet.
    pub fn on_packet(&mut self, sequence: u16) {
        let ext = match self.run {
            None => None,
            Some((_, highest)) => {
                // Truncation is the point: the difference is taken modulo 2^16.
                let delta = i32::from(sequence.wrapping_sub(highest as u16) as i16);
                (delta.abs() <= MAX_SEQUENCE_JUMP)
                    .then(|| highest.saturating_add_signed(i64::from(delta)))
            }
        };
        match (ext, self.run.as_mut()) {
            (Some(ext), Some((first, highest))) => {
                *first = (*first).min(ext);
                *highest = (*highest).max(ext);
                self.received_in_run = self.received_in_run.saturating_add(1);
            }
            _ => {
                self.expected_before = self.expected_before.saturating_add(self.expected_in_run());
                self.received_before = self.received_before.saturating_add(self.received_in_run);
                let start = (1u64 << 32) + u64::from(sequence);
                self.run = Some((start, start));
                self.received_in_run = 1;
            }
        }
    }

    fn expected_in_run(&self) -> u64 {
        self.run.map_or(0, |(first, highest)| highest - first + 1)
    }

    /// Packets received.
    pub fn received(&self) -> u64 {
        self.received_before.saturating_add(self.received_in_run)
    }

    /// Packets missing (never negative: duplicates only offset loss in their own run).
    pub fn lost(&self) -> u64 {
        let run_lost = self.expected_in_run().saturating_sub(self.received_in_run);
        let before_lost = self.expected_before.saturating_sub(self.received_before);
        run_lost.saturating_add(before_lost)
    }
}

/// What the transport's background tasks measure, read by [`Transport::link_stats`].
#[derive(Debug, Default)]
struct SharedStats {
    rtcp: LinkStats,
    sequence: SequenceLoss,
    /// Media packets handed to the track.
    sent: u64,
}

/// One WebRTC peer connection carrying one audio track and one data channel.
pub struct Transport {
    role: SdpRole,
    pc: Arc<RTCPeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    data: Arc<RTCDataChannel>,
    /// Remote candidates that arrived before the remote description.
    early_candidates: Mutex<Option<Vec<String>>>,
    /// The peer's DTLS fingerprint from its first SDP; later SDPs must repeat it.
    remote_fingerprint: StdMutex<PinnedFingerprint>,
    /// RTT and loss, updated by the RTP reader and the RTCP statistics poller.
    stats: Arc<StdMutex<SharedStats>>,
    /// Our DTLS certificate, kept for [`Transport::rebuilt`] (webrtc-rs moves the one it is
    /// given out of the peer connection's configuration).
    certificate: RTCCertificate,
    /// TURN-over-TCP/TLS tunnels this peer connection's ICE agent uses (closed with it).
    tunnels: StdMutex<Vec<aparte_turn_tunnel::Tunnel>>,
}

/// The selected ICE pair, as the call's report gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSummary {
    /// Our candidate type (`host`, `srflx`, `prflx`, `relay`).
    pub local_type: String,
    /// The peer's candidate type.
    pub remote_type: String,
    /// 4 or 6: the IP version of the pair's addresses (ICE pairs one family only; for a
    /// relayed pair, the relay's addresses, whatever carries the traffic to the relay).
    pub ip_version: u8,
    /// When our candidate is a relay: how we reach the TURN server, `udp`, `tcp` or `tls`.
    pub relay_transport: Option<&'static str>,
}

/// A new self-signed ECDSA P-256 DTLS certificate, as webrtc-rs would make, with a random
/// subject name: DTLS 1.2 sends the certificate in clear, so a fixed name would tell the
/// network which application this is.
fn new_certificate() -> Result<RTCCertificate, TransportError> {
    let mut name = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut name);
    let certificate =
        webrtc::dtls::crypto::Certificate::generate_self_signed(vec![hex::encode(name)])
            .map_err(|e| TransportError::WebRtc(webrtc::Error::new(e.to_string())))?;
    // Only checked when a peer connection is made with it; a call's rebuilds come within
    // minutes of the first.
    let expires = SystemTime::now() + Duration::from_secs(30 * 24 * 3600);
    Ok(RTCCertificate::from_existing(certificate, expires))
}

fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        // RFC 7587 requires opus/48000/2 in SDP even for mono; we encode mono.
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

impl Transport {
    /// Builds the peer connection. Events arrive on the returned receiver.
    pub async fn new(
        config: &TransportConfig,
        role: SdpRole,
    ) -> Result<(Self, mpsc::Receiver<TransportEvent>), TransportError> {
        Self::build(
            config,
            role,
            new_certificate()?,
            PinnedFingerprint::default(),
        )
        .await
    }

    /// A fresh peer connection for the same call: same role, same DTLS certificate (so both
    /// fingerprints, and with them the e2ee session bound to them, stay valid) and the same
    /// pinned remote fingerprint. It starts from scratch: new ICE, new DTLS handshake, and it
    /// needs a new offer and answer. This is the way out of webrtc-rs's DTLS last-flight
    /// deadlock (docs/WEBRTC.md), which no ICE restart can clear. `self` is left as it is;
    /// the caller closes it.
    pub async fn rebuilt(
        &self,
        config: &TransportConfig,
    ) -> Result<(Self, mpsc::Receiver<TransportEvent>), TransportError> {
        let pinned = self
            .remote_fingerprint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Self::build(config, self.role, self.certificate.clone(), pinned).await
    }

    async fn build(
        config: &TransportConfig,
        role: SdpRole,
        certificate: RTCCertificate,
        pinned: PinnedFingerprint,
    ) -> Result<(Self, mpsc::Receiver<TransportEvent>), TransportError> {
        let mut media = MediaEngine::default();
        media.register_codec(
            RTCRtpCodecParameters {
                capability: opus_capability(),
                payload_type: OPUS_PAYLOAD_TYPE,
                ..Default::default()
            },
            RTPCodecType::Audio,
        )?;
        // Only the RTCP report interceptors: their sender and receiver reports carry RTT and
        // loss (the live status and the FEC policy use them). webrtc-rs's defaults also add
        // NACK, which it negotiates for video only, and TWCC feedback, which feeds a congestion
        // controller that a constant-bitrate audio call does not have. Both would only run
        // timers and per-packet bookkeeping here (docs/WEBRTC.md).
        let registry = configure_rtcp_reports(Registry::new());
        let mut settings = SettingEngine::default();
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        // IPv4 and IPv6: a home on an IPv6-only network (or a dual-stack one whose IPv4 is
        // behind carrier-grade NAT) gathers its IPv6 addresses as host candidates, and a
        // STUN server reached over IPv6 gives IPv6 server-reflexive ones. ICE pairs only
        // candidates of the same family, so the two families never mix within a pair.
        settings.set_network_types(vec![NetworkType::Udp4, NetworkType::Udp6]);
        // webrtc-rs waits before nominating non-host pairs (srflx 500 ms, prflx 1 s, relay
        // 2 s). On a two-party call the first working pair is good enough; a peer-reflexive
        // pair (common when a candidate's check beats its signaling) otherwise costs a second
        // of setup.
        settings.set_host_acceptance_min_wait(Some(Duration::ZERO));
        settings.set_srflx_acceptance_min_wait(Some(Duration::ZERO));
        settings.set_prflx_acceptance_min_wait(Some(Duration::ZERO));
        settings.set_relay_acceptance_min_wait(Some(Duration::ZERO));
        // Report a dead path within seconds, so the call can restart ICE (keepalive: default).
        settings.set_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(ICE_FAILED_AFTER), None);
        if config.loopback_only {
            settings.set_include_loopback_candidate(true);
            // 127.0.0.1 only: one candidate per side, as before IPv6 was gathered.
            settings.set_ip_filter(Box::new(|ip: std::net::IpAddr| {
                ip.is_loopback() && ip.is_ipv4()
            }));
        } else {
            settings.set_ip_filter(Box::new(is_candidate_address));
        }
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .build();
        let (ice_servers, tunnels) = tunnel_stream_relays(config).await;
        let rtc_config = RTCConfiguration {
            ice_servers,
            ice_transport_policy: if config.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            },
            certificates: vec![certificate.clone()],
            ..Default::default()
        };
        let pc = Arc::new(api.new_peer_connection(rtc_config).await?);
        let (events, rx) = mpsc::channel(EVENT_QUEUE);

        let track = Arc::new(TrackLocalStaticSample::new(
            opus_capability(),
            "audio".to_owned(),
            "aparte".to_owned(),
        ));
        let sender = pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
        // Both sides create the same pre-negotiated channel, so neither waits for the other.
        let data = pc
            .create_data_channel(
                "aparte",
                Some(RTCDataChannelInit {
                    negotiated: Some(0),
                    ordered: Some(true),
                    ..Default::default()
                }),
            )
            .await?;
        let stats = Arc::new(StdMutex::new(SharedStats::default()));
        // The peer's receiver reports on our stream arrive here (RTT, its loss); reading
        // them also keeps webrtc-rs's RTCP interceptors going.
        tokio::spawn(read_sender_rtcp(sender, Arc::clone(&stats)));
        install_handlers(&pc, &data, &events, &stats);

        let transport = Self {
            role,
            pc,
            track,
            data,
            early_candidates: Mutex::new(Some(Vec::new())),
            remote_fingerprint: StdMutex::new(pinned),
            stats,
            certificate,
            tunnels: StdMutex::new(tunnels),
        };
        Ok((transport, rx))
    }

    /// Offerer: creates the offer, sets it locally and returns it for the caller to relay.
    pub async fn create_offer(&self) -> Result<Signal, TransportError> {
        if self.role != SdpRole::Offerer {
            return Err(TransportError::UnexpectedSignal(
                "only the offerer creates an offer",
            ));
        }
        self.offer(None).await
    }

    /// Offerer: restarts ICE on a call whose path broke (RFC 8445 section 9; W3C
    /// `iceRestart`). New ICE credentials, new candidates (a new TURN allocation on a
    /// relay-only call), and a new offer to relay; the peer's webrtc-rs restarts its side when
    /// it applies that offer. DTLS, SRTP and the e2ee session carry on over the new path, so
    /// the call keeps its keys and SAS. Fails with [`TransportError::StillGathering`] while
    /// the previous gathering is still under way (retry later).
    pub async fn restart_ice(&self) -> Result<Signal, TransportError> {
        if self.role != SdpRole::Offerer {
            return Err(TransportError::UnexpectedSignal(
                "only the offerer restarts ICE",
            ));
        }
        let options = RTCOfferOptions {
            ice_restart: true,
            ..Default::default()
        };
        tokio::time::timeout(WEBRTC_OP_TIMEOUT, self.offer(Some(options)))
            .await
            .map_err(|_| TransportError::TimedOut("an ICE-restart offer"))?
            .map_err(|e| match e {
                TransportError::WebRtc(webrtc::Error::Ice(
                    webrtc::ice::Error::ErrRestartWhenGathering,
                )) => TransportError::StillGathering,
                other => other,
            })
    }

    async fn offer(&self, options: Option<RTCOfferOptions>) -> Result<Signal, TransportError> {
        let offer = self.pc.create_offer(options).await?;
        self.pc.set_local_description(offer).await?;
        let local = self
            .pc
            .local_description()
            .await
            .ok_or(TransportError::UnexpectedSignal("no local description"))?;
        Ok(Signal::Offer(local.sdp))
    }

    /// Refuses a remote SDP whose DTLS fingerprint differs from the call's first one.
    fn check_fingerprint(&self, sdp: &str) -> Result<(), TransportError> {
        self.remote_fingerprint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(sdp)
            .map_err(|e| match e {
                FingerprintError::Missing => TransportError::NoFingerprint,
                FingerprintError::Changed => TransportError::FingerprintChanged,
            })
    }

    /// Applies a signal from the peer; an offer yields the answer to relay. A second offer
    /// (or answer) is an ICE restart; it must carry the same DTLS fingerprint as the first.
    pub async fn apply_signal(&self, signal: Signal) -> Result<Option<Signal>, TransportError> {
        tokio::time::timeout(WEBRTC_OP_TIMEOUT, self.apply(signal))
            .await
            .map_err(|_| TransportError::TimedOut("applying the peer's SDP"))?
    }

    async fn apply(&self, signal: Signal) -> Result<Option<Signal>, TransportError> {
        match (signal, self.role) {
            (Signal::Offer(sdp), SdpRole::Answerer) => {
                self.check_fingerprint(&sdp)?;
                self.pc
                    .set_remote_description(RTCSessionDescription::offer(sdp)?)
                    .await?;
                self.flush_early_candidates().await?;
                let answer = self.pc.create_answer(None).await?;
                self.pc.set_local_description(answer).await?;
                let local = self
                    .pc
                    .local_description()
                    .await
                    .ok_or(TransportError::UnexpectedSignal("no local description"))?;
                Ok(Some(Signal::Answer(local.sdp)))
            }
            (Signal::Answer(sdp), SdpRole::Offerer) => {
                self.check_fingerprint(&sdp)?;
                self.pc
                    .set_remote_description(RTCSessionDescription::answer(sdp)?)
                    .await?;
                self.flush_early_candidates().await?;
                Ok(None)
            }
            (Signal::Candidate(candidate), _) => {
                let mut early = self.early_candidates.lock().await;
                match early.as_mut() {
                    Some(queue) => queue.push(candidate),
                    None => {
                        drop(early);
                        self.add_candidate(candidate).await?;
                    }
                }
                Ok(None)
            }
            (Signal::Offer(_), SdpRole::Offerer) => Err(TransportError::UnexpectedSignal(
                "offer received by the offerer",
            )),
            (Signal::Answer(_), SdpRole::Answerer) => Err(TransportError::UnexpectedSignal(
                "answer received by the answerer",
            )),
        }
    }

    async fn flush_early_candidates(&self) -> Result<(), TransportError> {
        let queued = self
            .early_candidates
            .lock()
            .await
            .take()
            .unwrap_or_default();
        for candidate in queued {
            self.add_candidate(candidate).await?;
        }
        Ok(())
    }

    async fn add_candidate(&self, candidate: String) -> Result<(), TransportError> {
        self.pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// (local, remote) DTLS fingerprints from the two SDPs, once both are set.
    pub async fn dtls_fingerprints(&self) -> Result<(Vec<u8>, Vec<u8>), TransportError> {
        let local = self.pc.local_description().await;
        let remote = self.pc.remote_description().await;
        match (local, remote) {
            (Some(l), Some(r)) => Ok((
                dtls_fingerprint(&l.sdp).ok_or(TransportError::NoFingerprint)?,
                dtls_fingerprint(&r.sdp).ok_or(TransportError::NoFingerprint)?,
            )),
            _ => Err(TransportError::NoFingerprint),
        }
    }

    /// Sends one audio payload holding `duration` of audio (20, 40 or 60 ms) as one RTP
    /// packet; the RTP timestamp advances by that duration.
    pub async fn send_media(
        &self,
        payload: Bytes,
        duration: Duration,
    ) -> Result<(), TransportError> {
        if payload.is_empty() {
            // webrtc-rs would drop an empty sample silently.
            return Err(TransportError::EmptyPayload);
        }
        if payload.len() > MAX_MEDIA_PAYLOAD {
            return Err(TransportError::TooLarge {
                len: payload.len(),
                max: MAX_MEDIA_PAYLOAD,
            });
        }
        self.track
            .write_sample(&Sample {
                data: payload,
                duration,
                ..Default::default()
            })
            .await?;
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).sent += 1;
        Ok(())
    }

    /// Sends one data-channel message.
    pub async fn send_data(&self, payload: Bytes) -> Result<(), TransportError> {
        if payload.len() > MAX_DATA_MESSAGE {
            return Err(TransportError::TooLarge {
                len: payload.len(),
                max: MAX_DATA_MESSAGE,
            });
        }
        self.data.send(&payload).await?;
        Ok(())
    }

    /// Whether the selected ICE pair uses a relayed (TURN) local candidate.
    pub async fn is_relayed(&self) -> bool {
        let pair = self.selected_candidate_pair().await;
        matches!(pair, Some(p) if p.local.typ == RTCIceCandidateType::Relay)
    }

    /// The candidate types and IP version of the selected ICE pair. A call is relayed when
    /// either side is `relay`: with one peer relay-only, the other's local candidate is a plain
    /// host address.
    pub async fn selected_pair_summary(&self) -> Option<PairSummary> {
        let pair = self.selected_candidate_pair().await?;
        let ip_version = match pair.local.address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(_)) => 6,
            _ => 4,
        };
        let local_type = pair.local.typ.to_string();
        let relay_transport = (local_type == "relay").then(|| self.relay_transport());
        Some(PairSummary {
            local_type,
            remote_type: pair.remote.typ.to_string(),
            ip_version,
            relay_transport,
        })
    }

    /// How we reach our TURN server when our selected candidate is a relay: through the tunnel
    /// that carried the most ChannelData (media goes in ChannelData once bound), else
    /// webrtc-rs's own UDP.
    fn relay_transport(&self) -> &'static str {
        let tunnels = self.tunnels.lock().unwrap_or_else(|e| e.into_inner());
        tunnels
            .iter()
            .map(|t| (t.stats().channel_data_up, t.upstream()))
            .filter(|(sent, _)| *sent > 0)
            .max_by_key(|(sent, _)| *sent)
            .map_or("udp", |(_, upstream)| match upstream {
                aparte_turn_tunnel::Upstream::Tcp { .. } => "tcp",
                aparte_turn_tunnel::Upstream::Tls { .. } => "tls",
                aparte_turn_tunnel::Upstream::Udp { .. } => "udp",
            })
    }

    async fn selected_candidate_pair(&self) -> Option<RTCIceCandidatePair> {
        let sctp = self.pc.sctp();
        let dtls = sctp.transport();
        let ice = dtls.ice_transport();
        tokio::time::timeout(WEBRTC_OP_TIMEOUT, ice.get_selected_candidate_pair())
            .await
            .ok()
            .flatten()
    }

    /// The selected ICE pair as "local -> remote" addresses (diagnostics, tests), if any.
    pub async fn selected_pair(&self) -> Option<String> {
        let pair = self.selected_candidate_pair().await?;
        Some(format!(
            "{}:{} -> {}:{}",
            pair.local.address, pair.local.port, pair.remote.address, pair.remote.port
        ))
    }

    /// Round-trip time and loss so far. RTT and the peer's loss come from its RTCP receiver
    /// reports (webrtc-rs sends one about once a second); received loss from the RTP
    /// sequence numbers. Cheap: it reads counters the background readers keep.
    pub fn link_stats(&self) -> LinkStats {
        let shared = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        LinkStats {
            received_packets: shared.sequence.received(),
            received_lost: shared.sequence.lost(),
            ..shared.rtcp
        }
    }

    /// Whether this peer connection has TURN relays over TCP/TLS (in-process tunnels; the
    /// UDP tunnels to IPv6 TURN servers are UDP relays, tried first like any other).
    pub fn has_stream_relays(&self) -> bool {
        self.tunnels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(is_stream_tunnel)
    }

    /// Sets the gate of every TURN-over-TCP/TLS tunnel of this peer connection (issue 16's
    /// "UDP first": see [`crate::relay_fallback`]).
    pub fn set_stream_relay_gate(&self, gate: aparte_turn_tunnel::Gate) {
        for tunnel in self
            .tunnels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|t| is_stream_tunnel(t))
        {
            tunnel.set_gate(gate);
        }
    }

    /// Closes the connection.
    pub async fn close(&self) -> Result<(), TransportError> {
        let closed = tokio::time::timeout(WEBRTC_OP_TIMEOUT, self.pc.close())
            .await
            .map_err(|_| TransportError::TimedOut("closing the connection"));
        let tunnels = std::mem::take(&mut *self.tunnels.lock().unwrap_or_else(|e| e.into_inner()));
        for tunnel in tunnels {
            tunnel.close().await;
        }
        closed??;
        Ok(())
    }
}

/// Whether `tunnel` carries TURN over TCP or TLS (not UDP to an IPv6 server).
fn is_stream_tunnel(tunnel: &aparte_turn_tunnel::Tunnel) -> bool {
    !matches!(tunnel.upstream(), aparte_turn_tunnel::Upstream::Udp { .. })
}

/// Whether a local address may be offered as a host candidate. IPv6 link-local addresses
/// (`fe80::/10`) are left out: every interface has one, they reach only the same link, and a
/// socket on one needs the interface's scope id, which webrtc-rs 0.17 does not set, so each
/// would only cost a failed bind and a useless candidate. IPv4-mapped IPv6 addresses are not
/// interface addresses and are refused as well.
fn is_candidate_address(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(_) => true,
        std::net::IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !link_local && v6.to_ipv4_mapped().is_none()
        }
    }
}

/// The ICE servers to hand webrtc-rs. Its ICE agent speaks TURN over UDP only (docs/WEBRTC.md),
/// so each `turn:…?transport=tcp` and `turns:` URL is replaced by a local UDP TURN address
/// served by an in-process tunnel that carries the datagrams over TCP or TLS to that server
/// (`aparte-turn-tunnel`, docs/DECISIONS.md D9), with the same credentials. So is a UDP URL
/// to an IPv6 address (`turn:[2001:db8::1]:3478`): webrtc-rs sends UDP TURN from an IPv4
/// socket only, so the tunnel carries those datagrams over IPv6. Other UDP URLs stay as
/// they are, so both kinds of relay candidate are gathered and ICE keeps whichever pair works
/// first: over UDP where UDP passes, over TCP/TLS (port 443 too) where a firewall blocks it.
/// A tunnel that cannot start is left out, with a warning.
async fn tunnel_stream_relays(
    config: &TransportConfig,
) -> (Vec<RTCIceServer>, Vec<aparte_turn_tunnel::Tunnel>) {
    let mut servers = Vec::new();
    let mut tunnels = Vec::new();
    for server in &config.ice_servers {
        let mut urls = Vec::new();
        for url in &server.urls {
            // IPv6 TURN servers over UDP too: webrtc-rs sends UDP TURN from IPv4 sockets only.
            let upstream = aparte_turn_tunnel::upstream_of(url)
                .or_else(|| aparte_turn_tunnel::ipv6_udp_upstream_of(url));
            let Some(upstream) = upstream else {
                // STUN and UDP TURN URLs go to webrtc-rs as they are. A stream URL that does
                // not parse is left out (webrtc-rs would only skip it).
                if url.contains("transport=tcp") || url.starts_with("turns:") {
                    tracing::warn!("ignoring a TURN URL that does not parse: {url}");
                } else {
                    urls.push(url.clone());
                }
                continue;
            };
            let mut tunnel_config = aparte_turn_tunnel::TunnelConfig::new(upstream);
            tunnel_config.tls = config.turn_tls.clone();
            match aparte_turn_tunnel::Tunnel::start(tunnel_config).await {
                Ok(tunnel) => {
                    urls.push(tunnel.turn_url());
                    tunnels.push(tunnel);
                }
                Err(e) => tracing::warn!("TURN through a tunnel to {url} is unavailable: {e}"),
            }
        }
        if !urls.is_empty() {
            servers.push(RTCIceServer {
                urls,
                username: server.username.clone(),
                credential: server.credential.clone(),
            });
        }
    }
    (servers, tunnels)
}

/// Wires webrtc-rs callbacks to the event queue. Callbacks capture only the queue, never the
/// peer connection (a strong self-reference would leak it), and never block on the caller
/// (webrtc-rs holds a lock while they run).
fn install_handlers(
    pc: &Arc<RTCPeerConnection>,
    data: &Arc<RTCDataChannel>,
    events: &mpsc::Sender<TransportEvent>,
    stats: &Arc<StdMutex<SharedStats>>,
) {
    let tx = events.clone();
    pc.on_ice_candidate(Box::new(move |candidate: Option<RTCIceCandidate>| {
        let tx = tx.clone();
        Box::pin(async move {
            if let Some(init) = candidate.and_then(|c| c.to_json().ok()) {
                let _ = tx
                    .send(TransportEvent::Signal(Signal::Candidate(init.candidate)))
                    .await;
            }
        })
    }));

    let tx = events.clone();
    pc.on_peer_connection_state_change(Box::new(move |state: RTCPeerConnectionState| {
        let link = match state {
            RTCPeerConnectionState::Connected => Some(LinkState::Connected),
            RTCPeerConnectionState::Disconnected => Some(LinkState::Disconnected),
            RTCPeerConnectionState::Failed => Some(LinkState::Failed),
            RTCPeerConnectionState::Closed => Some(LinkState::Closed),
            RTCPeerConnectionState::Connecting => Some(LinkState::Connecting),
            _ => None,
        };
        let tx = tx.clone();
        Box::pin(async move {
            if let Some(link) = link {
                let _ = tx.try_send(TransportEvent::Link(link));
            }
        })
    }));

    let tx = events.clone();
    let stats = Arc::clone(stats);
    pc.on_track(Box::new(
        move |track: Arc<TrackRemote>, receiver: Arc<RTCRtpReceiver>, _| {
            let tx = tx.clone();
            let stats = Arc::clone(&stats);
            Box::pin(async move {
                tokio::spawn(read_track(track, tx, stats));
                // The peer's sender reports must be read for our receiver reports to echo them
                // (LSR/DLSR), which is what gives the peer its RTT.
                tokio::spawn(drain_receiver_rtcp(receiver));
            })
        },
    ));

    let tx = events.clone();
    data.on_open(Box::new(move || {
        Box::pin(async move {
            let _ = tx.send(TransportEvent::DataOpen).await;
        })
    }));
    let tx = events.clone();
    data.on_message(Box::new(move |message: DataChannelMessage| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(TransportEvent::Data(message.data)).await;
        })
    }));
}

/// Consecutive read errors after which the track is considered dead.
const MAX_READ_ERRORS: u32 = 100;

/// Whether a read error means the stream is gone for good.
fn is_closed(e: &webrtc::Error) -> bool {
    matches!(
        e,
        webrtc::Error::ErrClosedPipe | webrtc::Error::ErrRTPReceiverNil
    ) || e.to_string().contains("closed")
}

/// Reads the RTCP the peer sends about our stream and keeps RTT and its loss figures. A
/// malformed packet is skipped; persistent errors end the loop.
async fn read_sender_rtcp(sender: Arc<RTCRtpSender>, stats: Arc<StdMutex<SharedStats>>) {
    let mut errors = 0u32;
    loop {
        match sender.read_rtcp().await {
            Ok((packets, _)) => {
                errors = 0;
                let now = ntp_mid_now();
                let mut shared = stats.lock().unwrap_or_else(|e| e.into_inner());
                let sent = shared.sent;
                for report in packets.iter().flat_map(|p| reception_reports(p.as_ref())) {
                    shared.rtcp.on_reception_report(&report.into(), now, sent);
                }
            }
            Err(e) if is_closed(&e) => return,
            Err(_) => {
                errors = errors.saturating_add(1);
                if errors >= MAX_READ_ERRORS {
                    return;
                }
            }
        }
    }
}

/// The reception reports in an RTCP packet (receiver reports, and sender reports of a peer
/// that also sends).
fn reception_reports(packet: &(dyn RtcpPacket + Send + Sync)) -> &[ReceptionReport] {
    let any = packet.as_any();
    if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
        &rr.reports
    } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
        &sr.reports
    } else {
        &[]
    }
}

/// Reads (and discards) the RTCP that arrives for the received track, so webrtc-rs's report
/// interceptor sees the peer's sender reports.
async fn drain_receiver_rtcp(receiver: Arc<RTCRtpReceiver>) {
    let mut errors = 0u32;
    loop {
        match receiver.read_rtcp().await {
            Ok(_) => errors = 0,
            Err(e) if is_closed(&e) => return,
            Err(_) => {
                errors = errors.saturating_add(1);
                if errors >= MAX_READ_ERRORS {
                    return;
                }
            }
        }
    }
}

async fn read_track(
    track: Arc<TrackRemote>,
    tx: mpsc::Sender<TransportEvent>,
    stats: Arc<StdMutex<SharedStats>>,
) {
    let mut errors = 0u32;
    loop {
        match track.read_rtp().await {
            Ok((packet, _)) => {
                errors = 0;
                stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sequence
                    .on_packet(packet.header.sequence_number);
                let event = TransportEvent::Media {
                    sequence: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    payload: packet.payload,
                };
                if tx.is_closed() {
                    return;
                }
                // Never block the RTP reader: a full queue drops the packet, which the
                // jitter buffer then conceals.
                let _ = tx.try_send(event);
            }
            Err(e) if is_closed(&e) => return,
            // A malformed or oversized packet is dropped; persistent errors end the loop.
            Err(_) => {
                errors = errors.saturating_add(1);
                if errors >= MAX_READ_ERRORS {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered_fingerprint(offer: Signal) -> Vec<u8> {
        let Signal::Offer(sdp) = offer else {
            panic!("not an offer");
        };
        dtls_fingerprint(&sdp).expect("a fingerprint in the offer")
    }

    #[tokio::test]
    async fn a_rebuilt_transport_keeps_its_certificate_and_the_pin() {
        let config = TransportConfig {
            loopback_only: true,
            turn_tls: None,
            ..Default::default()
        };
        let (first, _events) = Transport::new(&config, SdpRole::Offerer).await.unwrap();
        let fingerprint = offered_fingerprint(first.create_offer().await.unwrap());
        first
            .remote_fingerprint
            .lock()
            .unwrap()
            .check("a=fingerprint:sha-256 AA:BB")
            .unwrap();
        let (second, _events) = first.rebuilt(&config).await.unwrap();
        assert_eq!(
            offered_fingerprint(second.create_offer().await.unwrap()),
            fingerprint,
            "same certificate, same fingerprint"
        );
        assert!(matches!(
            second.check_fingerprint("a=fingerprint:sha-256 CC:DD"),
            Err(TransportError::FingerprintChanged)
        ));
        // A fresh transport, for contrast, has a certificate of its own.
        let (other, _events) = Transport::new(&config, SdpRole::Offerer).await.unwrap();
        assert_ne!(
            offered_fingerprint(other.create_offer().await.unwrap()),
            fingerprint
        );
        for t in [first, second, other] {
            t.close().await.unwrap();
        }
    }

    fn count(sequences: impl IntoIterator<Item = u16>) -> SequenceLoss {
        let mut loss = SequenceLoss::default();
        for s in sequences {
            loss.on_packet(s);
        }
        loss
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let loss = count(0..500);
        assert_eq!((loss.received(), loss.lost()), (500, 0));
        assert_eq!(SequenceLoss::default().lost(), 0);
    }

    #[test]
    fn gaps_are_loss_and_reordering_is_not() {
        // 10 and 20..=22 missing; 31 arrives before 30.
        let mut seq: Vec<u16> = (0..50).filter(|s| ![10, 20, 21, 22].contains(s)).collect();
        let i = seq.iter().position(|&s| s == 30).unwrap();
        seq.swap(i, i + 1);
        let loss = count(seq);
        assert_eq!((loss.received(), loss.lost()), (46, 4));
        let stats = LinkStats {
            received_packets: loss.received(),
            received_lost: loss.lost(),
            ..LinkStats::default()
        };
        assert!((stats.received_loss_percent() - 8.0).abs() < 1e-9);
    }

    #[test]
    fn wraparound_and_a_late_first_packet_are_counted() {
        let mut seq: Vec<u16> = (0..100u16).map(|i| 65_500u16.wrapping_add(i)).collect();
        seq.retain(|&s| s != 2);
        seq.swap(0, 1); // the second packet arrives first
        let loss = count(seq);
        assert_eq!((loss.received(), loss.lost()), (99, 1));
    }

    #[test]
    fn a_sender_restart_is_not_thousands_of_losses() {
        let loss = count((0..100).chain(40_000..40_100).chain([40_105]));
        assert_eq!((loss.received(), loss.lost()), (201, 5)); // 40100..=40104
    }

    #[test]
    fn hostile_sequences_never_panic_and_stay_consistent() {
        let mut loss = SequenceLoss::default();
        let mut x: u32 = 12345;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            loss.on_packet((x >> 16) as u16);
        }
        assert_eq!(loss.received(), 100_000);
        let _ = loss.lost();
    }

    #[test]
    fn peer_loss_is_unknown_until_reported() {
        let mut stats = LinkStats::default();
        assert_eq!(stats.peer_total_loss_percent(), None);
        let report = ReceptionReportData {
            total_lost: 5,
            ..ReceptionReportData::default()
        };
        stats.on_reception_report(&report, 1 << 20, 100);
        assert_eq!(stats.peer_loss_percent, Some(5.0));
        assert_eq!(stats.peer_total_loss_percent(), Some(5.0));
        // Next interval: 50 more sent, 10 more lost.
        let next = ReceptionReportData {
            total_lost: 15,
            ..report
        };
        stats.on_reception_report(&next, 1 << 20, 150);
        assert_eq!(stats.peer_loss_percent, Some(20.0));
        assert_eq!(stats.peer_total_loss_percent(), Some(10.0));
        // A hostile report cannot push the figures out of range.
        let hostile = ReceptionReportData {
            total_lost: u32::MAX,
            ..report
        };
        stats.on_reception_report(&hostile, 1 << 20, 151);
        assert_eq!(stats.peer_loss_percent, Some(100.0));
        assert_eq!(stats.peer_total_loss_percent(), Some(100.0));
        assert_eq!(
            stats.rtt_ms, None,
            "no sender report echoed (LSR 0): no RTT"
        );
    }

    #[test]
    fn rtt_is_arrival_minus_lsr_minus_dlsr() {
        // RFC 3550 section 6.4.1's example: A = 0xb710_8000, LSR = 0xb705_2000,
        // DLSR = 0x0005_4000 (5.25 s): RTT = 0x0006_2000 = 6.125 s.
        let mut stats = LinkStats::default();
        let report = ReceptionReportData {
            last_sender_report: 0xb705_2000,
            delay: 0x0005_4000,
            ..ReceptionReportData::default()
        };
        stats.on_reception_report(&report, 0xb710_8000, 10);
        assert_eq!(stats.rtt_ms, Some(6125.0));
        // Across the NTP field's wraparound.
        stats.on_reception_report(
            &ReceptionReportData {
                last_sender_report: u32::MAX - 0x100,
                delay: 0x200,
                ..report
            },
            0x0000_0300,
            10,
        );
        assert_eq!(stats.rtt_ms, Some(f64::from(0x201u32) * 1000.0 / 65536.0));
        // A report from the future (or a forged one) keeps the last good value.
        stats.on_reception_report(
            &ReceptionReportData {
                last_sender_report: 0x1000_0000,
                delay: 0,
                ..report
            },
            0x0fff_0000,
            10,
        );
        assert_eq!(stats.rtt_ms, Some(f64::from(0x201u32) * 1000.0 / 65536.0));
    }

    #[test]
    fn ntp_clock_matches_the_system_clock() {
        let mid = ntp_mid_now();
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let expect = ((unix.as_secs() + NTP_UNIX_OFFSET) & 0xffff) as u32;
        assert!(
            (mid >> 16).wrapping_sub(expect) <= 1,
            "seconds field {} vs {expect}",
            mid >> 16
        );
    }

    #[test]
    fn host_candidates_skip_link_local_and_mapped_ipv6_only() {
        let ok = |s: &str| is_candidate_address(s.parse().unwrap());
        assert!(ok("192.168.1.2"));
        assert!(ok("2001:db8:1::2"));
        assert!(
            ok("fd00::2"),
            "unique-local addresses are routable within a site"
        );
        assert!(!ok("fe80::1"));
        assert!(!ok("febf::1"), "all of fe80::/10 is link-local");
        assert!(ok("fec0::1"), "outside fe80::/10");
        assert!(!ok("::ffff:192.0.2.1"));
    }
}
