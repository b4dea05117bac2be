//! The WebRTC transport (webrtc-rs 0.17), behind a small surface so the rest of the client
//! never touches webrtc-rs types and a move to another WebRTC stack stays local to this file.
//!
//! It carries three things and understands none of them: the opaque audio payload of each RTP
//! packet (already e2ee-protected), data-channel messages (already e2ee-protected), and the SDP
//! and ICE candidates that the caller relays over signaling. Pitfalls of webrtc-rs 0.17 that
//! shape this code are listed in `docs/WEBRTC.md`.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Mutex};
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::data_channel::data_channel_init::RTCDataChannelInit;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;

use crate::sdp::dtls_fingerprint;

/// Opus payload type, as browsers use it.
const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Largest payload we hand to the RTP track: webrtc-rs receivers read at most 1460-byte packets.
pub const MAX_MEDIA_PAYLOAD: usize = 1200;
/// Largest data-channel message (webrtc-rs breaks a channel on messages of 64 KiB).
pub const MAX_DATA_MESSAGE: usize = 16 * 1024;
/// Queue of events to the caller. Media is dropped (and counted) rather than blocking
/// webrtc-rs internals when the caller falls behind.
const EVENT_QUEUE: usize = 1024;

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

/// One WebRTC peer connection carrying one audio track and one data channel.
pub struct Transport {
    role: SdpRole,
    pc: Arc<RTCPeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    data: Arc<RTCDataChannel>,
    /// Remote candidates that arrived before the remote description.
    early_candidates: Mutex<Option<Vec<String>>>,
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
        let mut media = MediaEngine::default();
        media.register_codec(
            RTCRtpCodecParameters {
                capability: opus_capability(),
                payload_type: OPUS_PAYLOAD_TYPE,
                ..Default::default()
            },
            RTPCodecType::Audio,
        )?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let mut settings = SettingEngine::default();
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        settings.set_network_types(vec![NetworkType::Udp4]);
        // webrtc-rs waits before nominating non-host pairs (srflx 500 ms, prflx 1 s, relay
        // 2 s). On a two-party call the first working pair is good enough; a peer-reflexive
        // pair (common when a candidate's check beats its signaling) otherwise costs a second
        // of setup.
        settings.set_host_acceptance_min_wait(Some(Duration::ZERO));
        settings.set_srflx_acceptance_min_wait(Some(Duration::ZERO));
        settings.set_prflx_acceptance_min_wait(Some(Duration::ZERO));
        settings.set_relay_acceptance_min_wait(Some(Duration::ZERO));
        if config.loopback_only {
            settings.set_include_loopback_candidate(true);
            settings.set_ip_filter(Box::new(|ip: std::net::IpAddr| ip.is_loopback()));
        }
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .build();
        let rtc_config = RTCConfiguration {
            ice_servers: config
                .ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone(),
                    credential: s.credential.clone(),
                })
                .collect(),
            ice_transport_policy: if config.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            },
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
        // RTCP must be read for the report interceptors (loss, RTT) to work.
        tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });

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
        install_handlers(&pc, &data, &events);

        let transport = Self {
            role,
            pc,
            track,
            data,
            early_candidates: Mutex::new(Some(Vec::new())),
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
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        let local = self
            .pc
            .local_description()
            .await
            .ok_or(TransportError::UnexpectedSignal("no local description"))?;
        Ok(Signal::Offer(local.sdp))
    }

    /// Applies a signal from the peer; an offer yields the answer to relay.
    pub async fn apply_signal(&self, signal: Signal) -> Result<Option<Signal>, TransportError> {
        match (signal, self.role) {
            (Signal::Offer(sdp), SdpRole::Answerer) => {
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

    /// Sends one audio payload (one 20 ms frame) as one RTP packet.
    pub async fn send_media(&self, payload: Bytes) -> Result<(), TransportError> {
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
                duration: Duration::from_millis(20),
                ..Default::default()
            })
            .await?;
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
        let pair = self
            .pc
            .sctp()
            .transport()
            .ice_transport()
            .get_selected_candidate_pair()
            .await;
        matches!(pair, Some(p) if p.local.typ == RTCIceCandidateType::Relay)
    }

    /// Closes the connection.
    pub async fn close(&self) -> Result<(), TransportError> {
        self.pc.close().await?;
        Ok(())
    }
}

/// Wires webrtc-rs callbacks to the event queue. Callbacks capture only the queue, never the
/// peer connection (a strong self-reference would leak it), and never block on the caller
/// (webrtc-rs holds a lock while they run).
fn install_handlers(
    pc: &Arc<RTCPeerConnection>,
    data: &Arc<RTCDataChannel>,
    events: &mpsc::Sender<TransportEvent>,
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
    pc.on_track(Box::new(move |track: Arc<TrackRemote>, _, _| {
        let tx = tx.clone();
        Box::pin(async move {
            tokio::spawn(read_track(track, tx));
        })
    }));

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

async fn read_track(track: Arc<TrackRemote>, tx: mpsc::Sender<TransportEvent>) {
    let mut errors = 0u32;
    loop {
        match track.read_rtp().await {
            Ok((packet, _)) => {
                errors = 0;
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
            Err(webrtc::Error::ErrClosedPipe) | Err(webrtc::Error::ErrRTPReceiverNil) => return,
            Err(e) if e.to_string().contains("closed") => return,
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
