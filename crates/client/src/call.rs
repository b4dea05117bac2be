//! One call, from join to hang-up: the async shell that moves bytes between the signaling
//! connection, the WebRTC transport, the security session and the audio thread.
//!
//! Roles: the peer that finds the other already in the room sends the SDP offer and initiates
//! the e2ee handshake; the first one in answers. The handshake travels over the signaling relay
//! (opaque to the server), bound to both DTLS fingerprints from the SDP. No audio is sent or
//! played before key confirmation (`aparte-session` enforces it).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use aparte_call_policy::{
    Action as RecoveryAction, BitrateConfig, BitrateLadder, LinkReport, Recovery, RecoveryConfig,
};
use aparte_e2ee::handshake::{CallParams, Role};
use aparte_e2ee::identity::{IdentityKey, KnownPeers, PeerName};
use aparte_e2ee::RejectReason;
use aparte_media::fec::FecPolicy;
use aparte_session::{CallSecurity, Event, Policy, SecurityStatus, SessionConfig};
use aparte_signaling_protocol::{PeerId, ResumeToken, RoomId};
use bytes::Bytes;
use futures_util::future::OptionFuture;
use serde::Serialize;
use tokio::sync::mpsc;

use std::sync::Arc;

use aparte_translate::{Caption, PipelineEvent};

use crate::audio::{AudioPipeline, AudioStats, Input, Output};
use crate::captions::{CaptionReport, CaptionSource, Captions, Direction, TranslationOptions};
use crate::devices::DeviceStats;
use crate::outcome::{explain_no_path, Achieved, Ending, Outcome, PathFacts, TamperWatch};
use crate::rejoin::Rejoined;
use crate::relay_fallback::RelayFallbackDriver;
use crate::signaling::{Joined, PeerMessage, Signaling, SignalingError, SignalingEvent};
use crate::transport::{
    IceServer, LinkState, SdpRole, Signal, Transport, TransportConfig, TransportError,
    TransportEvent,
};

/// Data frames queued before the data channel opens, at most.
const MAX_PENDING_DATA: usize = 32;
/// Handshake messages held before the security session exists, at most.
const MAX_EARLY_HANDSHAKE: usize = 8;
/// A call whose keys are not confirmed on a connected link this long after both peers joined
/// is given up (ICE or the handshake is stuck).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the end of a call waits for the last received translations to be synthesized
/// (`--speak-translation`).
const SPEECH_SETTLE: Duration = Duration::from_secs(5);

/// How long an interactive call waits for the person to decide about a changed identity
/// before refusing it (nobody may be at the terminal).
const DECISION_TIMEOUT: Duration = Duration::from_secs(300);
/// After the input ends, keep the call up this long so the peer's tail arrives.
const TAIL: Duration = Duration::from_millis(1500);
/// With captions on, wait at most this much longer for the last caption to be made and sent.
const CAPTION_TAIL: Duration = Duration::from_secs(10);
/// Sealed media frames held while our keys are being confirmed, at most (1 s of audio).
const MAX_EARLY_MEDIA: usize = 50;
/// Receiver reports the "recent loss" figure of the report averages (about 5 s).
const RECENT_REPORTS: usize = 5;
/// An ICE restart that could not be made yet (still gathering) is asked again after this.
const RESTART_DEFERRED: Duration = Duration::from_millis(200);
/// After the peer dropped off the signaling server, a call whose link is down (or goes down)
/// waits this long for the peer to come back before ending. While media flows it goes on.
const PEER_AWAY_GRACE: Duration = Duration::from_secs(10);
/// A set-up whose ICE pair has worked this long without the DTLS handshake completing is
/// taken for webrtc-rs's DTLS last-flight deadlock (docs/WEBRTC.md) and started over with new
/// peer connections. DTLS retransmits every second, so a merely slow handshake on a lossy
/// path has completed long before.
const DTLS_STALL_AFTER: Duration = Duration::from_secs(8);
/// Peer connections rebuilt in one call, at most (each side counts what it does).
const MAX_REBUILDS: u32 = 2;

/// Everything a call needs.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Signaling server URL (`ws://host:port/` or `wss://…`).
    pub server: String,
    /// How `wss://` servers are verified (see [`crate::tls::client_config`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// How `turns:` relays are verified (`None`: the usual web roots; see
    /// [`crate::tls::turn_client_config`]).
    pub turn_tls: Option<Arc<rustls::ClientConfig>>,
    /// The room.
    pub room: RoomId,
    /// Join token, if the server needs one.
    pub token: Option<String>,
    /// What to send.
    pub input: Input,
    /// Where received audio goes.
    pub output: Output,
    /// Force the TURN relay path.
    pub relay_only: bool,
    /// Only loopback host candidates (tests, single-machine demo).
    pub loopback_only: bool,
    /// Hang up after this long with media flowing (default: end of a WAV input, or never).
    pub duration: Option<Duration>,
    /// How to trust the peer.
    pub policy: Policy,
    /// Our long-term identity.
    pub identity: Option<IdentityKey>,
    /// The local name the peer's identity is pinned under.
    pub peer_name: Option<PeerName>,
    /// The known-peers store.
    pub known_peers: KnownPeers,
    /// Live captions and translation.
    pub translation: TranslationOptions,
}

/// What the person (or a script) does during a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAction {
    /// The SAS matches.
    ConfirmSas,
    /// The SAS does not match.
    RejectSas,
    /// Accept a changed identity.
    OverrideIdentityChange,
    /// Hang up.
    HangUp,
}

/// Live updates for the UI.
#[derive(Debug, Clone)]
pub enum CallUpdate {
    /// Connecting to the signaling server at this URL.
    Connecting {
        /// The URL.
        server: String,
    },
    /// Frames from the peer keep failing authentication: someone is tampering with the media.
    Tampering {
        /// Frames rejected in the last second.
        rejected: u64,
    },
    /// Joined the room; waiting for the peer or connecting.
    Joined {
        /// Whether the peer was already there.
        peer_present: bool,
    },
    /// The security status changed.
    Security(SecurityStatus),
    /// The WebRTC link state changed.
    Link(LinkState),
    /// The known-peers store changed (persist it).
    PeersChanged(KnownPeers),
    /// Periodic figures.
    Live(LiveStats),
    /// The peer left the room and the call ended.
    PeerLeft,
    /// The peer dropped off the signaling server mid-call; the call goes on while media flows
    /// and waits a few seconds for it to rejoin otherwise.
    PeerAway,
    /// The peer is back in the room (it rejoined, or we did and found it there).
    PeerBack,
    /// We are reconnecting to the signaling server to rejoin the room.
    Rejoining,
    /// We rejoined the room.
    Rejoined,
    /// Rejoining failed for good (for example an expired token); the call goes on without
    /// signaling, so it cannot restart ICE.
    RejoinFailed(String),
    /// The signaling connection was lost (the call continues peer to peer).
    SignalingLost(String),
    /// The bitrate ladder moved: we now send at `bps` (the peer reported `loss_percent` loss
    /// over its last interval).
    Bitrate {
        /// The new Opus bitrate, bit/s.
        bps: u32,
        /// The packet time that goes with it, ms.
        packet_ms: u32,
        /// The loss that the peer's last report gave, percent.
        loss_percent: f64,
    },
    /// The path broke after set-up and we (the offerer) restarted ICE; `attempt` counts
    /// from 1 for each outage.
    IceRestart {
        /// Restarts for this outage so far.
        attempt: u32,
    },
    /// The first frame from the peer was decrypted: the call is set up and audio flows.
    MediaStarted {
        /// Both peers joined → this frame, ms (the `setup_ms` of the report).
        setup_ms: u64,
    },
    /// The DTLS handshake was stuck during set-up (ours, or the peer's, which asked), so the
    /// peer connection is being built again; the keys stay the same.
    Rebuilding {
        /// Rebuilds in this call so far.
        attempt: u32,
    },
    /// The link came back after an outage, with the same keys; how long it was down.
    Reconnected {
        /// From the last packet received before the outage to the link being back, ms.
        outage_ms: u64,
    },
    /// A caption to show.
    Caption(CaptionSource, Caption),
    /// News about translation (models loaded, or why they are not).
    Translation(String),
}

/// Figures for a live status line.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LiveStats {
    /// Seconds since both peers joined.
    pub elapsed_s: f64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Frames decrypted.
    pub frames_decrypted: u64,
    /// Frames lost or late (concealed).
    pub concealed: u64,
    /// Jitter estimate, ms.
    pub jitter_ms: u32,
    /// Playout delay, ms.
    pub playout_delay_ms: u32,
    /// Outgoing bitrate including e2ee overhead, kbit/s.
    pub send_kbps: f64,
    /// Round-trip time from the last RTCP receiver report, ms (`None` until one arrived).
    pub rtt_ms: Option<f64>,
    /// Packets missing from what we receive (RTP sequence gaps), percent, call so far.
    pub loss_percent: f64,
    /// Share of our packets lost between the peer's last two RTCP reports, percent.
    pub peer_loss_percent: Option<f64>,
    /// Input level, dBFS.
    pub input_dbfs: f32,
    /// Output level, dBFS.
    pub output_dbfs: f32,
    /// Microphone and speaker queue counters.
    pub devices: DeviceStats,
}

/// The figures written by `--stats-json` at the end of a call (also when it fails early: then
/// most counters are zero and `ended_by` says why).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallReport {
    /// How the call ended, as a script tells it apart (see [`crate::outcome`]).
    pub outcome: Outcome,
    /// The process exit code `aparte call` ends with.
    pub exit_code: u8,
    /// Whether we sent the offer (and initiated the handshake).
    pub offerer: bool,
    /// Final security state label.
    pub security: String,
    /// Whether the call was verified (SAS or pinned identity).
    pub verified: bool,
    /// Whether the selected path went through a TURN relay (ours or the peer's).
    pub relayed: bool,
    /// Our candidate type on the selected ICE pair (`host`, `srflx`, `prflx`, `relay`).
    pub local_candidate: Option<String>,
    /// The peer's candidate type on the selected ICE pair.
    pub remote_candidate: Option<String>,
    /// 4 or 6: the IP version of the selected pair (for a relayed pair, of the relay's
    /// addresses).
    pub path_ip_version: Option<u8>,
    /// When our selected candidate is a relay: how we reach the TURN server (`udp`, `tcp` or
    /// `tls`; a TCP/TLS relay goes through the in-process tunnel).
    pub relay_transport: Option<String>,
    /// 20 ms frames encoded and sent (a 60 ms packet is three).
    pub frames_sent: u64,
    /// Packets sent (each holds 20, 40 or 60 ms).
    pub packets_sent: u64,
    /// Frames protected by the e2ee layer: the authenticated indices used (`0..this`). The
    /// peer's frame accounting starts from this count (a protected frame that then failed to
    /// send still used its index).
    pub frames_protected: u64,
    /// RTP packets received.
    pub frames_received: u64,
    /// 20 ms frames in the packets that authenticated and decrypted (the frame accounting's
    /// unit, the one the authenticated index counts).
    pub frames_decrypted: u64,
    /// Packets that authenticated and decrypted.
    pub packets_decrypted: u64,
    /// Frames rejected, by reason.
    pub frames_rejected: std::collections::BTreeMap<String, u64>,
    /// Media packets refused before decryption because the keys were not confirmed yet
    /// (media can outrun the last handshake message).
    pub frames_refused: u64,
    /// Decrypted 20 ms frames dropped before the jitter buffer (its queue was full).
    pub frames_dropped_before_buffer: u64,
    /// Packets the jitter buffer dropped as copies of a frame it already had.
    pub frames_duplicate: u64,
    /// Packets the jitter buffer dropped as empty or too large.
    pub frames_invalid: u64,
    /// Packets dropped because the jitter buffer was full.
    pub frames_dropped_full: u64,
    /// Packets held when the jitter buffer resynchronised, and dropped.
    pub frames_dropped_on_reset: u64,
    /// Frames still in the jitter buffer when the call ended.
    pub frames_buffered_at_end: u64,
    /// Frames the jitter buffer took in (not late, not a copy, valid).
    pub frames_into_buffer: u64,
    /// Frames played from their own packet (not rebuilt or concealed).
    pub frames_played_from_packet: u64,
    /// Decrypted packets the Opus decoder refused (concealed instead), counted once per 20 ms
    /// tick they should have filled.
    pub frames_decode_failed: u64,
    /// Indices between the lowest and highest received that never reached the buffer.
    pub frames_missing: u64,
    /// Distinct authenticated indices received.
    pub frames_distinct: u64,
    /// Lowest and highest authenticated index received.
    pub lowest_index: Option<u64>,
    /// See `lowest_index`.
    pub highest_index: Option<u64>,
    /// Frames concealed by the jitter buffer (lost or late), not counting the end of the
    /// peer's stream.
    pub frames_concealed: u64,
    /// Frames concealed after the peer's last packet, before its stream was known to have
    /// ended (not loss: those frames were never sent, as far as we can tell).
    pub frames_concealed_at_end: u64,
    /// Frames rebuilt from FEC.
    pub frames_fec_recovered: u64,
    /// Late packets dropped by the jitter buffer.
    pub frames_late: u64,
    /// Frames the jitter buffer skipped to bring its delay back down to its target (after a
    /// burst of arrivals): decrypted, never played.
    pub frames_dropped_for_latency: u64,
    /// Frames written to the output.
    pub frames_played: u64,
    /// Our input frames that went by unsent while the link was down mid-call (the speech of
    /// an outage is lost; the input keeps its pace so what follows stays in step).
    pub frames_skipped_link_down: u64,
    /// e2ee bytes added per audio frame (average).
    pub e2ee_overhead_bytes_per_frame: f64,
    /// Both peers in the room → first decrypted frame, ms.
    pub setup_ms: Option<u64>,
    /// Jitter buffer playout delay at the end, ms.
    pub playout_delay_ms: u32,
    /// Jitter estimate at the end, ms.
    pub jitter_ms: u32,
    /// Round-trip time from the last RTCP receiver report, ms (`None` if none arrived).
    pub rtt_ms: Option<f64>,
    /// RTP packets received from the peer (before decryption).
    pub packets_received: u64,
    /// RTP packets from the peer missing by sequence number over the call.
    pub packets_lost: u64,
    /// `packets_lost` in percent of the packets expected.
    pub loss_percent: f64,
    /// Our packets the peer reported lost over the call (RTCP), percent (`None` if it never
    /// reported).
    pub peer_loss_percent: Option<f64>,
    /// The packet loss, in percent, our encoder planned in-band FEC for at the end (it follows
    /// the loss the peer reports; see `aparte_media::fec`).
    pub fec_expected_loss_percent: u8,
    /// The most it planned for during the call.
    pub fec_peak_expected_loss_percent: u8,
    /// The Opus bitrate at the end of the call, bit/s (it follows the link; CBR within a
    /// step).
    pub bitrate_bps: u32,
    /// The lowest Opus bitrate the call used, bit/s.
    pub bitrate_lowest_bps: u32,
    /// The packet time at the end of the call, ms (20, 40 or 60: it goes with the bitrate
    /// step).
    pub packet_ms: u32,
    /// The packet time of the lowest step the call used, ms (the longest it used).
    pub packet_lowest_ms: u32,
    /// Times the bitrate changed.
    pub bitrate_changes: u32,
    /// Our packets the peer reported lost over its last few reports (up to 5, about 5 s),
    /// percent: the loss once the bitrate has followed the link (`None` before any report).
    pub peer_loss_percent_recent: Option<f64>,
    /// Times we reconnected to the signaling server and rejoined the room mid-call.
    pub signaling_rejoins: u32,
    /// ICE restarts we started (only the offerer restarts; the answerer follows).
    pub ice_restarts: u32,
    /// Times the peer connection was rebuilt during set-up because the DTLS handshake was
    /// stuck (webrtc-rs's DTLS last-flight deadlock; either side may ask for it).
    pub transport_rebuilds: u32,
    /// When the TURN relays over TCP/TLS were last opened, ms after both joined: no UDP path
    /// within about 2 s (`None`: UDP did, or none was offered).
    pub stream_relays_opened_ms: Option<u64>,
    /// Times the link went down after set-up and came back.
    pub link_recoveries: u32,
    /// Total time the link was down after set-up, ms: for each outage, from the last packet
    /// received before it to the link being back (or the end of the call).
    pub link_down_ms: u64,
    /// Process CPU seconds used (user + system) over the call.
    pub cpu_seconds: f64,
    /// Call length from both-joined to hang-up, seconds.
    pub duration_s: f64,
    /// How the call ended, in words.
    pub ended_by: String,
    /// Microphone and speaker overruns and underruns (all zero without a sound device).
    pub audio_devices: DeviceStats,
    /// Captions and translation (absent when not asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captions: Option<CaptionReport>,
}

/// Call failures.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Signaling failed before the call started.
    #[error(transparent)]
    Signaling(#[from] crate::signaling::SignalingError),
    /// WebRTC failed.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// The audio pipeline failed.
    #[error(transparent)]
    Audio(#[from] crate::audio::AudioError),
    /// The security session could not start.
    #[error("e2ee: {0}")]
    Handshake(#[from] aparte_e2ee::HandshakeError),
    /// The call was abandoned before the peer arrived.
    #[error("{0}")]
    Aborted(&'static str),
    /// Translation was asked for and cannot run here (the message says what is missing).
    #[error("translation: {0}")]
    Translation(String),
}

impl CallError {
    /// The kind of failure, for the exit code.
    pub fn outcome(&self) -> Outcome {
        match self {
            CallError::Signaling(_) => Outcome::Signaling,
            CallError::Transport(TransportError::FingerprintChanged) | CallError::Handshake(_) => {
                Outcome::Security
            }
            // The peer's SDP arrives through signaling: a bad one is a signaling problem.
            CallError::Transport(
                TransportError::UnexpectedSignal(_) | TransportError::NoFingerprint,
            ) => Outcome::Signaling,
            CallError::Transport(_) | CallError::Audio(_) | CallError::Translation(_) => {
                Outcome::Failed
            }
            CallError::Aborted(_) => Outcome::Incomplete,
        }
    }
}

impl CallReport {
    /// The report of a call that failed before it could count anything.
    pub fn failed_early(error: &CallError) -> Self {
        let outcome = error.outcome();
        CallReport {
            outcome,
            exit_code: outcome.exit_code(),
            security: "not started".into(),
            ended_by: error.to_string(),
            ..CallReport::default()
        }
    }
}

/// Runs one call to its end.
pub async fn run_call(
    options: CallOptions,
    mut actions: mpsc::Receiver<UserAction>,
    updates: mpsc::Sender<CallUpdate>,
) -> Result<CallReport, CallError> {
    let cpu_start = cpu_seconds();
    // Audio first: a missing microphone or unreadable WAV file is reported before we join a
    // room and make the peer wait. Nothing is sent or played until the call is set up.
    // Caption pipelines likewise: a missing model is reported now. Models load in the
    // background while we connect.
    let (mut captions, taps) =
        Captions::start(&options.translation).map_err(CallError::Translation)?;
    let mut audio = AudioPipeline::start_with_taps(&options.input, &options.output, taps)?;
    let _ = updates
        .send(CallUpdate::Connecting {
            server: options.server.clone(),
        })
        .await;
    let join = Signaling::join(
        &options.server,
        &options.tls,
        &options.room,
        options.token.clone(),
        None,
    );
    let (signaling, joined, mut sig_rx) = tokio::select! {
        joined = join => joined?,
        () = hang_up_requested(&mut actions) => {
            return Err(CallError::Aborted("hung up while connecting to the signaling server"))
        }
    };
    let _ = updates
        .send(CallUpdate::Joined {
            peer_present: !joined.peers.is_empty(),
        })
        .await;
    let (peer, role) = match joined.peers.first() {
        Some(p) => (p.peer_id, SdpRole::Offerer),
        None => (
            wait_for_peer(&mut sig_rx, &mut actions).await?,
            SdpRole::Answerer,
        ),
    };
    let both_joined = Instant::now();

    let config = TransportConfig {
        ice_servers: ice_servers(&joined),
        relay_only: options.relay_only,
        loopback_only: options.loopback_only,
        turn_tls: options.turn_tls.clone(),
    };
    let (transport, mut transport_rx) = Transport::new(&config, role).await?;
    let mut call = Call {
        options,
        signaling,
        peer,
        role,
        transport,
        security: None,
        updates,
        early_handshake: VecDeque::new(),
        pending_data: VecDeque::new(),
        data_open: false,
        connected: false,
        frames_sent: 0,
        packets_sent: 0,
        frames_decrypted: 0,
        frames_received: 0,
        overhead_bytes: 0,
        bytes_sent: 0,
        last_security: String::from("connecting"),
        verified: false,
        setup_ms: None,
        media_since: None,
        ended: None,
        both_joined,
        received_app: VecDeque::new(),
        played: Arc::clone(&audio.stats),
        ever_set_up: false,
        peer_away_since: None,
        rejoins: 0,
        rejoin_failed: false,
        fec: FecPolicy::new(),
        recent_peer_loss: VecDeque::new(),
        bitrate: BitrateLadder::new(
            BitrateConfig::default(),
            audio.bitrate.load(std::sync::atomic::Ordering::Relaxed),
        ),
        fec_peak: 0,
        loss_reports_seen: 0,
        own_id: joined.peer_id,
        room_capacity: joined.capacity,
        resume: joined.resume.clone(),
        recovery: Recovery::new(RecoveryConfig::default(), role == SdpRole::Offerer),
        probe: None,
        ice_restarts: 0,
        transport_config: config,
        pair_without_dtls_since: None,
        rebuilds: 0,
        new_transport_events: None,
        signaling_open: true,
        keys_agreed: false,
        keys_accepted: false,
        local_candidate_types: Default::default(),
        remote_candidate_types: Default::default(),
        ever_connected: false,
        tamper: TamperWatch::default(),
        frames_refused_before_session: 0,
        early_media: VecDeque::new(),
        frames_dropped_before_buffer: 0,
        relay_fallback: RelayFallbackDriver::new(),
    };
    // Before anything is gathered: the relays over TCP/TLS wait for UDP to fail (issue 16).
    let now = call.now_ms();
    call.relay_fallback
        .path_started(&call.transport, &call.transport_config, now);
    if role == SdpRole::Offerer {
        if let Signal::Offer(sdp) = call.transport.create_offer().await? {
            call.relay(PeerMessage::Offer { sdp }).await;
        }
    }

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut input_ended_at: Option<Instant> = None;
    let mut settled_ticks = 0u32;
    let mut actions_open = true;
    let mut rejoin: Option<tokio::task::JoinHandle<Result<Rejoined, SignalingError>>> = None;
    while call.ended.is_none() {
        tokio::select! {
            Some(answered) = OptionFuture::from(call.probe.as_mut()) => {
                call.probe = None;
                if answered.unwrap_or(false) {
                    call.recovery.probe_answered();
                }
                call.follow_recovery().await;
            }
            Some(result) = OptionFuture::from(rejoin.as_mut()) => {
                rejoin = None;
                match result {
                    Ok(Ok((signaling, joined, events))) => {
                        sig_rx = events;
                        call.on_rejoined(signaling, &joined).await;
                        call.follow_recovery().await;
                    }
                    Ok(Err(e)) => {
                        call.rejoin_failed = true;
                        let _ = call.updates.send(CallUpdate::RejoinFailed(e.to_string())).await;
                    }
                    // The task panicked or was cancelled: try again on the next turn.
                    Err(_) => {}
                }
            }
            event = sig_rx.recv(), if call.signaling_open => match event {
                Some(event) => call.on_signaling(event).await?,
                None => call.on_signaling_lost("closed".into()).await,
            },
            Some(event) = transport_rx.recv() => call.on_transport(event, &audio).await,
            Some(packet) = audio.outgoing.recv() => call.send_audio(packet).await,
            Some((direction, event)) = captions.next() => {
                call.on_pipeline(direction, event, &mut captions).await
            }
            action = actions.recv(), if actions_open => match action {
                Some(action) => call.on_action(action).await,
                None => actions_open = false,
            },
            _ = tick.tick() => {
                // A person deciding about a changed identity is not a stuck set-up.
                let awaiting_person = call.options.policy == Policy::Interactive
                    && call.security.as_ref().is_some_and(|s| {
                        matches!(s.status(), SecurityStatus::IdentityChanged { .. })
                    });
                if awaiting_person && call.both_joined.elapsed() >= DECISION_TIMEOUT {
                    call.end(Ending::failure(
                        Outcome::Security,
                        "the peer's identity CHANGED (or it showed none) and nobody typed \
                         `override`: call refused, nothing sent",
                    ));
                }
                if !call.ever_set_up && !awaiting_person && call.both_joined.elapsed() >= SETUP_TIMEOUT {
                    let why = call.explain_no_path();
                    call.end(Ending::failure(Outcome::NoPath, why));
                }
                call.check_dtls_stall().await;
                let now = call.now_ms();
                call.relay_fallback.poll(&call.transport, now);
                call.follow_recovery().await;
                call.check_peer_away().await;
                call.follow_loss(&audio);
                if audio.input_ended.load(std::sync::atomic::Ordering::SeqCst) {
                    let at = *input_ended_at.get_or_insert_with(Instant::now);
                    // With captions on, also wait (a bounded time) until the last utterance
                    // has been captioned and sent, two ticks in a row.
                    settled_ticks = if captions.outgoing_settled() { settled_ticks + 1 } else { 0 };
                    let captions_done = !captions.has_outgoing()
                        || settled_ticks >= 2
                        || at.elapsed() >= TAIL + CAPTION_TAIL;
                    if call.options.duration.is_none() && at.elapsed() >= TAIL && captions_done
                        && matches!(call.options.input, Input::Wav(_)) {
                        call.hang_up("input ended").await;
                    }
                }
                if let (Some(limit), Some(since)) = (call.options.duration, call.media_since) {
                    if since.elapsed() >= limit {
                        call.hang_up("duration reached").await;
                    }
                }
                call.watch_for_tampering().await;
                let live = call.live(&audio);
                let _ = call.updates.try_send(CallUpdate::Live(live));
            }
        }
        call.take_received_captions(&mut captions).await;
        if let Some(events) = call.new_transport_events.take() {
            // The old transport's queued events describe a connection that is gone.
            transport_rx = events;
        }
        if !call.early_media.is_empty() {
            call.release_early_media(&audio);
        }
        call.ever_set_up |= call.is_set_up();
        if call.ever_set_up {
            call.recovery.set_up();
        }
        // A set-up call that lost signaling gets back into the room, so it can restart ICE.
        if !call.signaling_open
            && call.ever_set_up
            && !call.rejoin_failed
            && rejoin.is_none()
            && call.ended.is_none()
        {
            rejoin = Some(tokio::spawn(crate::rejoin::rejoin(
                call.options.server.clone(),
                Arc::clone(&call.options.tls),
                call.options.room.clone(),
                call.options.token.clone(),
                call.resume.clone(),
            )));
            let _ = call.updates.send(CallUpdate::Rejoining).await;
        }
        // Audio flows only with confirmed keys on a connected link; re-checked after every
        // event so media starts the moment both hold.
        audio
            .sending
            .store(call.is_set_up(), std::sync::atomic::Ordering::SeqCst);
    }
    if let Some(task) = rejoin {
        task.abort();
    }
    if let Some(task) = call.probe.take() {
        task.abort();
    }
    // Let the Bye and the last frames leave before closing.
    audio
        .sending
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let pair = call.transport.selected_pair_summary().await;
    // Joining the audio thread and waiting for the caption pipelines to finish their last
    // utterance block: off the (single) runtime thread, so the Bye, the last caption and any
    // other call in this process (the demo runs two) keep moving meanwhile. The audio thread
    // holds the pipelines' taps, so it stops first.
    let (audio_stats, caption_report) = tokio::task::spawn_blocking(move || {
        // Translations received in the last moments are synthesized first, so the audio
        // thread plays them out before it stops.
        captions.settle_speech(SPEECH_SETTLE);
        let stats = audio.stop();
        (stats, captions.finish())
    })
    .await
    .map_err(|e| {
        CallError::Aborted(if e.is_panic() {
            "the audio thread panicked"
        } else {
            "cancelled"
        })
    })?;
    // The recording could not be finished (a full disk, say): the call's figures are still
    // written, and the failure is the outcome.
    let audio_stats = audio_stats.unwrap_or_else(|e| {
        // A failure already recorded (a security one, say) stays the outcome.
        if call.ended.as_ref().is_none_or(|end| end.outcome.is_none()) {
            call.ended = Some(Ending::failure(Outcome::Failed, e.to_string()));
        }
        AudioStats::default()
    });
    let caption_report = (call.options.translation.enabled()
        || caption_report.received_finals + caption_report.received_partials > 0)
        .then_some(caption_report);
    call.signaling.leave().await;
    let _ = call.transport.close().await;
    // Frames still held when the call ended never had confirmed keys: refused.
    call.frames_refused_before_session += call.early_media.len() as u64;
    call.early_media.clear();
    let mut report = call.report(audio_stats, pair, cpu_seconds() - cpu_start);
    report.captions = caption_report;
    Ok(report)
}

/// The STUN/TURN servers a join answer lists, for the transport.
fn ice_servers(joined: &Joined) -> Vec<IceServer> {
    joined
        .ice_servers
        .iter()
        .map(|s| IceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        })
        .collect()
}

/// Resolves when the person (or a signal) hangs up; other actions wait for the call.
async fn hang_up_requested(actions: &mut mpsc::Receiver<UserAction>) {
    loop {
        match actions.recv().await {
            Some(UserAction::HangUp) => return,
            Some(_) => continue,
            // Nobody can hang up any more: never resolve.
            None => std::future::pending::<()>().await,
        }
    }
}

async fn wait_for_peer(
    sig_rx: &mut mpsc::Receiver<SignalingEvent>,
    actions: &mut mpsc::Receiver<UserAction>,
) -> Result<PeerId, CallError> {
    loop {
        tokio::select! {
            event = sig_rx.recv() => match event {
                Some(SignalingEvent::PeerJoined(peer)) => return Ok(peer),
                Some(SignalingEvent::Closed(_)) | None => {
                    return Err(CallError::Signaling(SignalingError::Closed))
                }
                Some(_) => continue,
            },
            Some(UserAction::HangUp) = actions.recv() => {
                return Err(CallError::Aborted("hung up before the peer joined"))
            }
        }
    }
}

struct Call {
    options: CallOptions,
    signaling: Signaling,
    peer: PeerId,
    role: SdpRole,
    transport: Transport,
    security: Option<CallSecurity>,
    updates: mpsc::Sender<CallUpdate>,
    early_handshake: VecDeque<Vec<u8>>,
    pending_data: VecDeque<Vec<u8>>,
    data_open: bool,
    connected: bool,
    /// 20 ms frames sent.
    frames_sent: u64,
    packets_sent: u64,
    /// 20 ms frames in the packets decrypted.
    frames_decrypted: u64,
    frames_received: u64,
    overhead_bytes: u64,
    bytes_sent: u64,
    last_security: String,
    verified: bool,
    setup_ms: Option<u64>,
    media_since: Option<Instant>,
    /// Why the call is ending (set once; the first reason wins).
    ended: Option<Ending>,
    both_joined: Instant,
    /// Application data (captions) that arrived, waiting to be handled.
    received_app: VecDeque<Vec<u8>>,
    /// The audio thread's counters (for where playout is when a caption arrives).
    played: Arc<std::sync::Mutex<AudioStats>>,
    /// The call was set up once (keys confirmed on a connected link).
    ever_set_up: bool,
    /// Since when the peer has been off the signaling server (mid-call).
    peer_away_since: Option<Instant>,
    rejoins: u32,
    /// Rejoining the room failed for good.
    rejoin_failed: bool,
    /// How much FEC to send, from the peer's loss reports.
    fec: FecPolicy,
    /// The Opus bitrate step, from the same reports (and the round trip).
    bitrate: BitrateLadder,
    /// The loss of each of the peer's last few reports, percent.
    recent_peer_loss: VecDeque<f64>,
    fec_peak: u8,
    /// Reception reports already given to `fec`.
    loss_reports_seen: u64,
    /// Our own peer id in the room (it changes when we rejoin).
    own_id: PeerId,
    /// How many members the room holds.
    room_capacity: usize,
    /// Our seat's resume token, for a rejoin (it changes when we rejoin).
    resume: Option<ResumeToken>,
    /// When the path counts as broken and what to do about it (sans-IO; see
    /// `aparte_call_policy::recovery`).
    recovery: Recovery,
    /// A ping on the signaling connection awaiting its answer.
    probe: Option<tokio::task::JoinHandle<bool>>,
    ice_restarts: u32,
    /// What the next transport is built from (a rejoin puts fresh TURN credentials here).
    transport_config: TransportConfig,
    /// Since when, during set-up, an ICE pair has been selected without the link connecting.
    pair_without_dtls_since: Option<Instant>,
    /// Peer connections rebuilt in this call.
    rebuilds: u32,
    /// A rebuilt transport's events, for the call loop to switch to.
    new_transport_events: Option<mpsc::Receiver<TransportEvent>>,
    /// UDP first, the relays over TCP/TLS after about 2 s without a link.
    relay_fallback: RelayFallbackDriver,
    /// The signaling connection is up (needed to restart ICE).
    signaling_open: bool,
    /// The key exchange completed (a SAS exists).
    keys_agreed: bool,
    /// This side verified or accepted the keys (see [`Achieved::keys_accepted`]).
    keys_accepted: bool,
    /// Our ICE candidate types gathered, and the peer's received (for a no-path diagnosis).
    local_candidate_types: std::collections::BTreeSet<String>,
    remote_candidate_types: std::collections::BTreeSet<String>,
    /// The link was connected at some point.
    ever_connected: bool,
    /// Watches for frames that keep failing authentication.
    tamper: TamperWatch,
    /// Media packets that arrived before the keys were confirmed and could not be held.
    frames_refused_before_session: u64,
    /// Sealed media frames (and their arrival, ms on the audio clock) that arrived before our
    /// keys were confirmed, held for [`Call::release_early_media`].
    early_media: VecDeque<(Vec<u8>, u64)>,
    /// Decrypted frames the audio thread's queue had no room for.
    frames_dropped_before_buffer: u64,
}

/// The `typ` of an ICE candidate line (`host`, `srflx`, `prflx`, `relay`), if it has a
/// known one.
fn candidate_type(candidate: &str) -> Option<&'static str> {
    let mut words = candidate.split_ascii_whitespace();
    words.find(|w| *w == "typ")?;
    match words.next()? {
        "host" => Some("host"),
        "srflx" => Some("srflx"),
        "prflx" => Some("prflx"),
        "relay" => Some("relay"),
        _ => None,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Call {
    /// Records why the call ends; the first reason wins (a hang-up after a security failure
    /// does not hide the failure).
    fn end(&mut self, ending: Ending) {
        self.ended.get_or_insert(ending);
    }

    /// What the call achieved, for the outcome.
    fn achieved(&self) -> Achieved {
        let media = self.security.as_ref().and_then(|s| s.media_stats());
        Achieved {
            keys_agreed: self.keys_agreed,
            keys_accepted: self.keys_accepted,
            frames_decrypted: media.map_or(0, |m| m.accepted),
            frames_rejected: media.map_or(0, |m| {
                RejectReason::ALL.iter().map(|r| m.rejected(*r)).sum()
            }),
        }
    }

    /// Why set-up has not worked: what was tried, and what probably blocks it.
    fn explain_no_path(&self) -> String {
        let turn_servers = self
            .transport_config
            .ice_servers
            .iter()
            .flat_map(|s| &s.urls)
            .filter_map(|u| turn_host_port(u))
            .collect();
        explain_no_path(&PathFacts {
            relay_only: self.options.relay_only,
            turn_servers,
            local_types: self.local_candidate_types.clone(),
            remote_types: self.remote_candidate_types.clone(),
            link_connected: self.ever_connected,
            keys_agreed: self.keys_agreed,
            waited_s: self.both_joined.elapsed().as_secs(),
        })
    }

    /// Warns the person at once when frames from the peer keep failing authentication.
    async fn watch_for_tampering(&mut self) {
        let achieved = self.achieved();
        let now_ms = self.now_ms();
        if let Some(rejected) =
            self.tamper
                .observe(now_ms, achieved.frames_decrypted, achieved.frames_rejected)
        {
            tracing::warn!(rejected, "frames from the peer are failing authentication");
            let _ = self.updates.send(CallUpdate::Tampering { rejected }).await;
        }
    }

    /// Keys confirmed on a connected link: the call no longer needs the signaling server.
    fn is_set_up(&self) -> bool {
        self.connected && self.security.as_ref().is_some_and(|s| s.media_allowed())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.both_joined.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn relay(&self, message: PeerMessage) {
        // A lost signaling connection is reported through its event queue; nothing to do here.
        let _ = self.signaling.send(Some(self.peer), &message).await;
    }

    async fn on_signaling(&mut self, event: SignalingEvent) -> Result<(), CallError> {
        match event {
            SignalingEvent::Message { from, message } if from == self.peer => {
                self.on_peer_message(message).await?
            }
            // Mid-call, the peer may only have lost its signaling connection (a network
            // change): it gets a grace period to rejoin (see `check_peer_away`).
            SignalingEvent::PeerLeft(peer, _) if peer == self.peer && self.ever_set_up => {
                self.peer_away_since.get_or_insert_with(Instant::now);
                let _ = self.updates.send(CallUpdate::PeerAway).await;
            }
            SignalingEvent::PeerLeft(peer, _) if peer == self.peer => {
                let _ = self.updates.send(CallUpdate::PeerLeft).await;
                self.end(Ending::normal("the peer left"));
            }
            // In a 1:1 room the peer's old session is gone before its new one can join, so
            // whoever joins while our peer is away is the peer rejoining. (A stranger with the
            // room id could not complete the call: its SDP would carry another DTLS
            // fingerprint, which ends the call, and it holds none of the e2ee keys.)
            SignalingEvent::PeerJoined(peer)
                if self.peer_away_since.is_some() && self.room_capacity == 2 =>
            {
                self.adopt_peer(peer);
                let _ = self.updates.send(CallUpdate::PeerBack).await;
            }
            SignalingEvent::Closed(reason) => self.on_signaling_lost(reason).await,
            _ => {}
        }
        Ok(())
    }

    /// Media keeps flowing peer to peer without the signaling server, but a call that is not
    /// set up yet cannot finish its handshake without it (nor restart ICE).
    async fn on_signaling_lost(&mut self, reason: String) {
        self.signaling_open = false;
        self.recovery.signaling_lost();
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
        let _ = self.updates.send(CallUpdate::SignalingLost(reason)).await;
        if !self.ever_set_up {
            self.end(Ending::failure(
                Outcome::Signaling,
                "the signaling connection was lost before the call was set up",
            ));
        }
    }

    /// We are back in the room: signaling works again. In a 1:1 room the one other member is
    /// taken for our peer, whatever its id: a restarted server numbers members from 1 again,
    /// so the peer's new id may equal our own old one. (If it is in fact our own old session,
    /// which the server has not dropped yet, the real peer cannot be in the full room: the
    /// old session soon leaves, which marks the peer away, and the peer's join is then taken.)
    /// In a bigger room only our peer's old id counts, never our own. An empty room means the
    /// peer is away too.
    async fn on_rejoined(&mut self, signaling: Signaling, joined: &Joined) {
        self.signaling = signaling;
        // The join minted fresh TURN credentials (the old ones may have expired, or the
        // server's secret changed): a rebuilt peer connection uses them. (An ICE restart
        // keeps the agent's first credentials: webrtc-rs 0.17 fixes its TURN URLs when the
        // peer connection is built; docs/WEBRTC.md.)
        self.transport_config.ice_servers = ice_servers(joined);
        self.signaling_open = true;
        self.resume = joined.resume.clone();
        self.recovery.signaling_back();
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
        self.rejoins += 1;
        self.room_capacity = joined.capacity;
        let old_self = std::mem::replace(&mut self.own_id, joined.peer_id);
        let _ = self.updates.send(CallUpdate::Rejoined).await;
        let others: Vec<PeerId> = joined.peers.iter().map(|p| p.peer_id).collect();
        let found = if joined.capacity == 2 {
            others.first().copied()
        } else if self.peer != old_self && others.contains(&self.peer) {
            Some(self.peer)
        } else {
            None
        };
        let was_away = self.peer_away_since.is_some();
        match found {
            Some(peer) => {
                self.adopt_peer(peer);
                if was_away {
                    let _ = self.updates.send(CallUpdate::PeerBack).await;
                }
            }
            None if !was_away => {
                self.peer_away_since = Some(Instant::now());
                let _ = self.updates.send(CallUpdate::PeerAway).await;
            }
            None => {}
        }
    }

    /// Signaling messages now go to `peer`. While media is silent that is the peer back from
    /// a network change: the offerer restarts ICE at once (an earlier restart offer may have
    /// gone to the peer's dead session).
    fn adopt_peer(&mut self, peer: PeerId) {
        self.peer = peer;
        self.peer_away_since = None;
        let now = self.now_ms();
        self.recovery.peer_back(now);
    }

    /// Ends the call when the peer has been off the signaling server for the grace period
    /// and the media link has been down as long: it is gone, not just changing networks. (A
    /// peer long off signaling while media flowed still gets the full grace when the link
    /// then drops, so webrtc-rs can recover a brief blip.)
    async fn check_peer_away(&mut self) {
        let Some(since) = self.peer_away_since else {
            return;
        };
        let now = self.now_ms();
        let link_down_long = self.recovery.outage().is_some_and(|o| {
            Duration::from_millis(now.saturating_sub(o.since_ms)) >= PEER_AWAY_GRACE
        });
        if !self.connected && since.elapsed() >= PEER_AWAY_GRACE && link_down_long {
            let _ = self.updates.send(CallUpdate::PeerLeft).await;
            self.end(Ending::normal("the peer left"));
        }
    }

    /// Called on every tick during set-up: a working ICE pair on which the DTLS handshake has
    /// not completed for [`DTLS_STALL_AFTER`] is webrtc-rs's DTLS last-flight deadlock (the
    /// DTLS server never repeats its last flight, so when that flight is lost the client waits
    /// for good while the server reports the link connected). Both sides start over.
    async fn check_dtls_stall(&mut self) {
        if self.connected
            || self.ever_set_up
            || self.security.is_none()
            || self.rebuilds >= MAX_REBUILDS
            || !self.signaling_open
        {
            self.pair_without_dtls_since = None;
            return;
        }
        if self.transport.selected_pair().await.is_none() {
            self.pair_without_dtls_since = None;
            return;
        }
        let since = *self
            .pair_without_dtls_since
            .get_or_insert_with(Instant::now);
        if since.elapsed() >= DTLS_STALL_AFTER {
            tracing::warn!(
                "the DTLS handshake is stuck on a working ICE pair; rebuilding the peer connection"
            );
            self.relay(PeerMessage::Rebuild {}).await;
            self.rebuild().await;
        }
    }

    /// Replaces the peer connection with a fresh one (same certificate, same pinned peer
    /// fingerprint, so the e2ee session stays valid) and, as the offerer, offers again.
    async fn rebuild(&mut self) {
        self.pair_without_dtls_since = None;
        if self.rebuilds >= MAX_REBUILDS {
            return;
        }
        // Mid-call means the peer's media reached us before: the link really worked. (In the
        // DTLS deadlock the DTLS server's side counts as set up, but no frame from the peer
        // ever arrived: that call starts over.)
        let mid_call = self.setup_ms.is_some();
        self.rebuilds += 1;
        let (transport, events) = match self.transport.rebuilt(&self.transport_config).await {
            Ok(built) => built,
            Err(e) => {
                self.end(Ending::failure(
                    Outcome::Failed,
                    format!("could not rebuild the connection: {e}"),
                ));
                return;
            }
        };
        let old = std::mem::replace(&mut self.transport, transport);
        let now = self.now_ms();
        self.relay_fallback
            .path_started(&self.transport, &self.transport_config, now);
        // Closing may wait on webrtc-rs (bounded by its own timeout); the call goes on.
        tokio::spawn(async move {
            let _ = old.close().await;
        });
        self.new_transport_events = Some(events);
        self.connected = false;
        self.data_open = false;
        if !mid_call {
            // The DTLS server's side took the old link for set up, but the peer never got a
            // frame over it: the call starts (its duration, its set-up checks) on the new one.
            self.ever_set_up = false;
            self.media_since = None;
            self.recovery = Recovery::new(*self.recovery.config(), self.role == SdpRole::Offerer);
        }
        let _ = self
            .updates
            .send(CallUpdate::Rebuilding {
                attempt: self.rebuilds,
            })
            .await;
        if self.role == SdpRole::Offerer {
            match self.transport.create_offer().await {
                Ok(Signal::Offer(sdp)) => self.relay(PeerMessage::Offer { sdp }).await,
                Ok(_) | Err(_) => {
                    self.end(Ending::failure(
                        Outcome::Failed,
                        "could not offer on the rebuilt connection",
                    ));
                }
            }
        }
    }

    /// Carries out what the recovery policy asks for now (see `aparte_call_policy::recovery`):
    /// called on every tick and after the events it depends on.
    async fn follow_recovery(&mut self) {
        while self.ended.is_none() {
            let now = self.now_ms();
            let Some(action) = self.recovery.poll(now) else {
                return;
            };
            match action {
                RecoveryAction::ProbeSignaling => {
                    let probe = self.signaling.prober();
                    let deadline = Duration::from_millis(self.recovery.config().probe_deadline_ms);
                    self.probe = Some(tokio::spawn(probe.answered_within(deadline)));
                }
                RecoveryAction::ReconnectSignaling => {
                    self.on_signaling_lost("no answer to a ping: the network changed".into())
                        .await;
                }
                RecoveryAction::RestartIce {
                    attempt,
                    previous_failed,
                } => self.restart_ice(attempt, previous_failed).await,
                RecoveryAction::GiveUp => {
                    let after = self.recovery.config().give_up_after_ms / 1000;
                    self.end(Ending::failure(
                        Outcome::NoPath,
                        format!("the connection was lost and did not come back within {after} s"),
                    ));
                }
            }
        }
    }

    /// Restarts ICE (offerer), or builds a new peer connection when a restart had its whole
    /// retry interval and did not bring the link back. webrtc-rs's agent sometimes never
    /// forms a candidate pair after a restart, or stays "gathering" for many seconds (so every
    /// further restart is refused), and it keeps the TURN credentials it was built with even
    /// when a rejoin minted new ones (the old ones fail once the server's secret changed or
    /// they expired). A new peer connection (same certificate: the keys and SAS stay the same)
    /// starts clean with the fresh credentials; the peer does the same when it gets the
    /// request.
    async fn restart_ice(&mut self, attempt: u32, previous_failed: bool) {
        let now = self.now_ms();
        if previous_failed && self.rebuilds < MAX_REBUILDS {
            self.recovery.restart_sent(now, true);
            tracing::info!(
                "ICE restart did not bring the link back: rebuilding the peer connection"
            );
            self.relay(PeerMessage::Rebuild {}).await;
            self.rebuild().await;
            return;
        }
        match self.transport.restart_ice().await {
            Ok(Signal::Offer(sdp)) => {
                self.recovery.restart_sent(self.now_ms(), true);
                self.ice_restarts += 1;
                self.relay(PeerMessage::Offer { sdp }).await;
                let _ = self.updates.send(CallUpdate::IceRestart { attempt }).await;
            }
            // Still gathering: ask again shortly.
            Err(TransportError::StillGathering) | Ok(_) => {
                let wait = u64::try_from(RESTART_DEFERRED.as_millis()).unwrap_or(200);
                self.recovery.restart_deferred(self.now_ms(), wait);
            }
            // Failed or timed out: wait the retry interval, so a stuck webrtc-rs does not
            // hold the call loop every tick.
            Err(_) => self.recovery.restart_sent(self.now_ms(), false),
        }
    }

    /// Gives each new loss report from the peer to the FEC policy, and the result to the
    /// encoder.
    fn follow_loss(&mut self, audio: &AudioPipeline) {
        let link = self.transport.link_stats();
        if link.reports == self.loss_reports_seen {
            return;
        }
        self.loss_reports_seen = link.reports;
        if let Some(percent) = self.fec.on_report(link.peer_loss_percent.unwrap_or(0.0)) {
            audio
                .expected_loss
                .store(percent, std::sync::atomic::Ordering::Relaxed);
        }
        self.fec_peak = self.fec_peak.max(self.fec.expected_loss_percent());
        let report = LinkReport {
            loss_percent: link.peer_loss_percent.unwrap_or(0.0),
            rtt_ms: link.rtt_ms,
        };
        if self.recent_peer_loss.len() == RECENT_REPORTS {
            self.recent_peer_loss.pop_front();
        }
        self.recent_peer_loss.push_back(report.loss_percent);
        let now = self.now_ms();
        if self.recovery.outage().is_some() {
            // The path is down: the loss is the outage's, not congestion's.
            self.bitrate.path_interrupted(now);
        }
        if let Some(bps) = self.bitrate.on_report(report, now) {
            // The audio thread applies both at its next packet boundary.
            let packet_ms = self.bitrate.packet_ms();
            audio
                .packet_ms
                .store(packet_ms, std::sync::atomic::Ordering::Relaxed);
            audio
                .bitrate
                .store(bps, std::sync::atomic::Ordering::Relaxed);
            let _ = self.updates.try_send(CallUpdate::Bitrate {
                bps,
                packet_ms,
                loss_percent: report.loss_percent,
            });
        }
    }

    /// Tracks the link state for outages and recoveries.
    fn on_link(&mut self, state: LinkState) {
        self.connected = state == LinkState::Connected;
        self.ever_connected |= self.connected;
        let now = self.now_ms();
        self.relay_fallback
            .link(&self.transport, self.connected, now);
        if self.connected {
            if let Some(outage_ms) = self.recovery.link(true, now) {
                self.bitrate.path_interrupted(now);
                let _ = self.updates.try_send(CallUpdate::Reconnected { outage_ms });
            }
        } else if matches!(
            state,
            LinkState::Disconnected | LinkState::Failed | LinkState::Closed
        ) {
            self.recovery.link(false, now);
        }
    }

    async fn on_peer_message(&mut self, message: PeerMessage) -> Result<(), CallError> {
        match message {
            // A second offer or answer is an ICE restart: the path changes, the keys do not,
            // so the security session is started only once.
            PeerMessage::Offer { sdp } => {
                let answer = match self.transport.apply_signal(Signal::Offer(sdp)).await {
                    Ok(answer) => answer,
                    Err(e) if self.security.is_some() => return self.refuse_renegotiation(e),
                    Err(e) => return Err(e.into()),
                };
                if let Some(Signal::Answer(answer)) = answer {
                    self.relay(PeerMessage::Answer { sdp: answer }).await;
                    if self.security.is_none() {
                        self.start_security(Role::Responder).await?;
                    }
                }
            }
            PeerMessage::Answer { sdp } => {
                match self.transport.apply_signal(Signal::Answer(sdp)).await {
                    Ok(_) => {}
                    Err(e) if self.security.is_some() => return self.refuse_renegotiation(e),
                    Err(e) => return Err(e.into()),
                }
                if self.security.is_none() {
                    self.start_security(Role::Initiator).await?;
                }
            }
            PeerMessage::Candidate { candidate } => {
                if let Some(typ) = candidate_type(&candidate) {
                    self.remote_candidate_types.insert(typ.to_owned());
                }
                // A bad candidate from the peer is not fatal; ICE uses the others.
                let _ = self
                    .transport
                    .apply_signal(Signal::Candidate(candidate))
                    .await;
            }
            // The peer's DTLS handshake is stuck, or its path broke and it needs new TURN
            // credentials: start over on our side too. Only while no frame from the peer has
            // reached us (a stuck peer has never sent one) or while our link is down, so a
            // signaling server that forges the message cannot tear down a working call; and
            // bounded, so repeating it cannot keep a call rebuilding.
            PeerMessage::Rebuild {} if self.setup_ms.is_none() || !self.connected => {
                self.rebuild().await
            }
            PeerMessage::Rebuild {} => {}
            PeerMessage::Handshake { data } => {
                let Ok(bytes) = hex::decode(&data) else {
                    return Ok(());
                };
                if self.security.is_none() {
                    if self.early_handshake.len() < MAX_EARLY_HANDSHAKE {
                        self.early_handshake.push_back(bytes);
                    }
                    return Ok(());
                }
                self.on_handshake(&bytes).await;
            }
        }
        Ok(())
    }

    /// A renegotiation (ICE restart) the transport refused mid-call. A changed DTLS
    /// fingerprint is an attack on the call (the e2ee handshake is bound to the first one):
    /// it ends the call. Anything else leaves the current path as it is.
    fn refuse_renegotiation(&mut self, e: TransportError) -> Result<(), CallError> {
        if matches!(e, TransportError::FingerprintChanged) {
            self.end(Ending::failure(
                Outcome::Security,
                format!("call refused: {e}"),
            ));
        }
        Ok(())
    }

    async fn start_security(&mut self, role: Role) -> Result<(), CallError> {
        let (local, remote) = self.transport.dtls_fingerprints().await?;
        let config = SessionConfig {
            role,
            params: CallParams::new(
                self.options.room.as_str().as_bytes().to_vec(),
                local,
                remote,
            )?,
            identity: self.options.identity.clone(),
            peer_name: self.options.peer_name.clone(),
            policy: self.options.policy.clone(),
            sender: Default::default(),
            receiver: Default::default(),
        };
        let (security, events) = CallSecurity::new(
            config,
            self.options.known_peers.clone(),
            &mut rand_core::OsRng,
        )?;
        self.security = Some(security);
        self.carry_out(events).await;
        while let Some(early) = self.early_handshake.pop_front() {
            self.on_handshake(&early).await;
        }
        Ok(())
    }

    async fn on_handshake(&mut self, bytes: &[u8]) {
        let now_ms = self.now_ms();
        let Some(security) = self.security.as_mut() else {
            return;
        };
        // Non-fatal rejections (junk) are ignored; fatal ones arrive as a Failed status.
        if let Ok(events) = security.on_handshake(bytes, now_ms, unix_now()) {
            self.carry_out(events).await;
        } else if let SecurityStatus::Failed(reason) = security.status() {
            let (status, reason) = (security.status().clone(), reason.to_string());
            let _ = self.updates.send(CallUpdate::Security(status)).await;
            self.end(Ending::failure(Outcome::Security, reason));
        }
    }

    async fn carry_out(&mut self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::SendHandshake(bytes) => {
                    self.relay(PeerMessage::Handshake {
                        data: hex::encode(bytes),
                    })
                    .await
                }
                Event::SendData(frame) => self.send_data(frame).await,
                Event::Status(status) => {
                    if !matches!(status, SecurityStatus::Ended { .. }) {
                        self.last_security = status.label().to_owned();
                    }
                    self.verified |= matches!(status, SecurityStatus::Verified { .. });
                    self.keys_agreed |= !matches!(
                        status,
                        SecurityStatus::Connecting | SecurityStatus::Failed(_)
                    );
                    self.keys_accepted |= match &status {
                        SecurityStatus::Verified { .. } => true,
                        SecurityStatus::Encrypted {
                            confirmed_locally, ..
                        } => *confirmed_locally || self.options.policy == Policy::TrustOnFirstUse,
                        _ => false,
                    };
                    match &status {
                        SecurityStatus::Failed(reason) => {
                            self.end(Ending::failure(Outcome::Security, reason.to_string()))
                        }
                        // A scripted call has nobody to accept a changed identity: refuse it.
                        SecurityStatus::IdentityChanged { .. }
                            if self.options.policy != Policy::Interactive =>
                        {
                            self.end(Ending::failure(
                                Outcome::Security,
                                "the peer's identity CHANGED (or it showed none) and this \
                                 scripted call cannot ask anyone: call refused, nothing sent",
                            ))
                        }
                        SecurityStatus::Ended { by_peer: true } => {
                            self.end(Ending::normal("the peer hung up"))
                        }
                        _ => {}
                    }
                    let _ = self.updates.send(CallUpdate::Security(status)).await;
                }
                Event::PeersChanged => {
                    if let Some(s) = &self.security {
                        let peers = s.known_peers().clone();
                        let _ = self.updates.send(CallUpdate::PeersChanged(peers)).await;
                    }
                }
                Event::App(body) => {
                    if self.received_app.len() < MAX_PENDING_DATA {
                        self.received_app.push_back(body);
                    }
                }
            }
        }
    }

    async fn send_data(&mut self, frame: Vec<u8>) {
        if self.data_open {
            let _ = self.transport.send_data(Bytes::from(frame)).await;
        } else if self.pending_data.len() < MAX_PENDING_DATA {
            self.pending_data.push_back(frame);
        }
    }

    async fn on_transport(&mut self, event: TransportEvent, audio: &AudioPipeline) {
        match event {
            TransportEvent::Signal(Signal::Candidate(candidate)) => {
                if let Some(typ) = candidate_type(&candidate) {
                    self.local_candidate_types.insert(typ.to_owned());
                }
                self.relay(PeerMessage::Candidate { candidate }).await
            }
            TransportEvent::Signal(_) => {}
            TransportEvent::Link(state) => {
                self.on_link(state);
                let _ = self.updates.send(CallUpdate::Link(state)).await;
            }
            TransportEvent::DataOpen => {
                self.data_open = true;
                while let Some(frame) = self.pending_data.pop_front() {
                    let _ = self.transport.send_data(Bytes::from(frame)).await;
                }
            }
            TransportEvent::Data(frame) => {
                let now_ms = self.now_ms();
                if let Some(security) = self.security.as_mut() {
                    if let Ok(events) = security.on_data_frame(&frame, now_ms, unix_now()) {
                        self.carry_out(events).await;
                    }
                }
            }
            TransportEvent::Media { payload, .. } => {
                self.frames_received += 1;
                let now_ms = self.now_ms();
                if let Some(outage_ms) = self.recovery.packet(now_ms) {
                    // The peer's next reports cover the gap: not congestion.
                    self.bitrate.path_interrupted(now_ms);
                    let _ = self.updates.try_send(CallUpdate::Reconnected { outage_ms });
                }
                let arrival_ms = audio.now_ms();
                // The peer may confirm the keys first: its first frames then beat its
                // confirmation here (the media path is quicker than the signaling relay).
                // They are held, still sealed, and opened once our keys are confirmed, so the
                // start of what was said is heard. Bounded; beyond it they are refused.
                let still_connecting = self
                    .security
                    .as_ref()
                    .is_none_or(|s| matches!(s.status(), SecurityStatus::Connecting));
                if still_connecting {
                    if self.early_media.len() < MAX_EARLY_MEDIA {
                        self.early_media.push_back((payload.to_vec(), arrival_ms));
                    } else {
                        self.frames_refused_before_session += 1;
                    }
                    return;
                }
                self.accept_media(&payload, arrival_ms, audio);
            }
        }
    }

    /// Opens the frames held while the keys were being confirmed, in arrival order, once
    /// media is allowed. (Whatever else the session says now, they get its verdict.)
    fn release_early_media(&mut self, audio: &AudioPipeline) {
        let decided = self
            .security
            .as_ref()
            .is_some_and(|s| !matches!(s.status(), SecurityStatus::Connecting));
        if !decided {
            return;
        }
        while let Some((payload, arrival_ms)) = self.early_media.pop_front() {
            self.accept_media(&payload, arrival_ms, audio);
        }
    }

    /// Authenticates and decrypts one media frame and hands it to the audio thread.
    fn accept_media(&mut self, payload: &[u8], arrival_ms: u64, audio: &AudioPipeline) {
        let now_ms = self.now_ms();
        let Some(security) = self.security.as_mut() else {
            self.frames_refused_before_session += 1;
            return;
        };
        // Ordered by its authenticated index from here on (the RTP sequence number only feeds
        // the loss statistics; anyone inside SRTP can rewrite it).
        if let Ok(frame) = security.unprotect_media_frame(payload, now_ms) {
            if self.setup_ms.is_none() {
                self.setup_ms = Some(now_ms);
                let _ = self
                    .updates
                    .try_send(CallUpdate::MediaStarted { setup_ms: now_ms });
            }
            // Never block: a full queue drops the frame (counted), which the jitter buffer
            // conceals.
            // A packet of another duration counts as one frame: the audio thread refuses it.
            let frames = aparte_media::codec::packet_frames(&frame.payload).unwrap_or(1) as u64;
            self.frames_decrypted += frames;
            if audio
                .incoming
                .try_send((frame.index, arrival_ms, frame.payload))
                .is_err()
            {
                self.frames_dropped_before_buffer += frames;
            }
        }
    }

    async fn send_audio(&mut self, opus: Vec<u8>) {
        let Some(security) = self.security.as_mut() else {
            return;
        };
        // The packet takes one index per 20 ms frame, and the RTP timestamp advances by its
        // duration (our audio thread only makes 20, 40 and 60 ms packets).
        let frames = aparte_media::codec::packet_frames(&opus).unwrap_or(1);
        if let Ok(frame) = security.protect_media_frames(&opus, frames as u64) {
            let (len, overhead) = (frame.len() as u64, (frame.len() - opus.len()) as u64);
            let duration = Duration::from_millis(u64::from(aparte_media::FRAME_MS) * frames as u64);
            if self
                .transport
                .send_media(Bytes::from(frame), duration)
                .await
                .is_ok()
            {
                self.overhead_bytes += overhead;
                self.bytes_sent += len;
                self.frames_sent += frames as u64;
                self.packets_sent += 1;
                self.media_since.get_or_insert_with(Instant::now);
            }
        }
    }

    async fn on_action(&mut self, action: UserAction) {
        let now = unix_now();
        let Some(security) = self.security.as_mut() else {
            if action == UserAction::HangUp {
                self.end(Ending::normal("hung up"));
            }
            return;
        };
        let events = match action {
            UserAction::ConfirmSas => security.confirm_sas(now).unwrap_or_default(),
            UserAction::RejectSas => security.reject_sas(),
            UserAction::OverrideIdentityChange => {
                security.override_identity_change(now).unwrap_or_default()
            }
            UserAction::HangUp => {
                self.hang_up("hung up").await;
                return;
            }
        };
        self.carry_out(events).await;
    }

    async fn hang_up(&mut self, why: &str) {
        if let Some(security) = self.security.as_mut() {
            let events = security.hang_up();
            self.carry_out(events).await;
        }
        self.end(Ending::normal(why));
    }

    fn live(&self, audio: &AudioPipeline) -> LiveStats {
        let stats = audio.snapshot();
        let decrypted = self.frames_decrypted;
        let elapsed = self.both_joined.elapsed().as_secs_f64();
        let sent_bits = self.bytes_sent as f64 * 8.0;
        let link = self.transport.link_stats();
        LiveStats {
            elapsed_s: elapsed,
            frames_sent: self.frames_sent,
            frames_decrypted: decrypted,
            concealed: stats.jitter.concealed,
            jitter_ms: stats.jitter.jitter_ms,
            playout_delay_ms: stats.jitter.current_delay_ms,
            send_kbps: self.media_since.map_or(0.0, |t| {
                sent_bits / t.elapsed().as_secs_f64().max(0.001) / 1000.0
            }),
            rtt_ms: link.rtt_ms,
            loss_percent: link.received_loss_percent(),
            peer_loss_percent: link.peer_loss_percent,
            input_dbfs: stats.input_dbfs,
            output_dbfs: stats.output_dbfs,
            devices: stats.devices,
        }
    }

    fn report(
        &self,
        audio: AudioStats,
        pair: Option<crate::transport::PairSummary>,
        cpu: f64,
    ) -> CallReport {
        let ending = self
            .ended
            .clone()
            .unwrap_or_else(|| Ending::normal("ended"));
        let (outcome, ended_by) = ending.resolve(&self.achieved());
        let path_ip_version = pair.as_ref().map(|p| p.ip_version);
        let relay_transport = pair
            .as_ref()
            .and_then(|p| p.relay_transport)
            .map(str::to_owned);
        let (local_candidate, remote_candidate) =
            pair.map(|p| (p.local_type, p.remote_type)).unzip();
        let relayed = [&local_candidate, &remote_candidate]
            .iter()
            .any(|t| t.as_deref() == Some("relay"));
        let media = self.security.as_ref().and_then(|s| s.media_stats());
        let frames_rejected = RejectReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), media.map_or(0, |m| m.rejected(*r))))
            .collect();
        let link = self.transport.link_stats();
        CallReport {
            outcome,
            exit_code: outcome.exit_code(),
            local_candidate,
            remote_candidate,
            path_ip_version,
            relay_transport,
            offerer: self.role == SdpRole::Offerer,
            security: self.last_security.clone(),
            verified: self.verified,
            relayed,
            frames_sent: self.frames_sent,
            packets_sent: self.packets_sent,
            frames_protected: self
                .security
                .as_ref()
                .map_or(0, |s| s.media_frames_protected()),
            frames_received: self.frames_received,
            frames_decrypted: self.frames_decrypted,
            packets_decrypted: media.map_or(0, |m| m.accepted),
            frames_rejected,
            frames_refused: self.frames_refused_before_session
                + self.security.as_ref().map_or(0, |s| s.media_refused()),
            frames_dropped_before_buffer: self.frames_dropped_before_buffer,
            frames_duplicate: audio.jitter.duplicates,
            frames_invalid: audio.jitter.invalid,
            frames_dropped_full: audio.jitter.dropped_full,
            frames_dropped_on_reset: audio.jitter.dropped_on_reset,
            frames_buffered_at_end: u64::from(audio.jitter.buffered),
            frames_into_buffer: audio.jitter.received,
            frames_played_from_packet: audio.jitter.played,
            frames_decode_failed: audio.decode_errors,
            frames_missing: audio.jitter.missing,
            frames_distinct: audio.jitter.distinct_frames,
            lowest_index: audio.jitter.lowest_index,
            highest_index: audio.jitter.highest_index,
            frames_concealed: audio.jitter.concealed,
            frames_concealed_at_end: audio.jitter.concealed_at_end,
            frames_fec_recovered: audio.jitter.fec_recovered,
            frames_late: audio.jitter.late,
            frames_dropped_for_latency: audio.jitter.dropped_for_latency,
            frames_played: audio.frames_played,
            frames_skipped_link_down: audio.frames_skipped_link_down,
            e2ee_overhead_bytes_per_frame: if self.packets_sent == 0 {
                0.0
            } else {
                self.overhead_bytes as f64 / self.packets_sent as f64
            },
            setup_ms: self.setup_ms,
            playout_delay_ms: audio.jitter.current_delay_ms,
            jitter_ms: audio.jitter.jitter_ms,
            rtt_ms: link.rtt_ms,
            packets_received: link.received_packets,
            packets_lost: link.received_lost,
            loss_percent: link.received_loss_percent(),
            peer_loss_percent: link.peer_total_loss_percent(),
            fec_expected_loss_percent: self.fec.expected_loss_percent(),
            fec_peak_expected_loss_percent: self.fec_peak.max(self.fec.expected_loss_percent()),
            bitrate_bps: self.bitrate.bitrate(),
            bitrate_lowest_bps: self.bitrate.lowest(),
            packet_ms: self.bitrate.packet_ms(),
            packet_lowest_ms: self.bitrate.lowest_packet_ms(),
            bitrate_changes: self.bitrate.changes(),
            peer_loss_percent_recent: (!self.recent_peer_loss.is_empty()).then(|| {
                self.recent_peer_loss.iter().sum::<f64>() / self.recent_peer_loss.len() as f64
            }),
            signaling_rejoins: self.rejoins,
            ice_restarts: self.ice_restarts,
            transport_rebuilds: self.rebuilds,
            stream_relays_opened_ms: self.relay_fallback.opened_at_ms(),
            link_recoveries: self.recovery.recoveries(),
            link_down_ms: self.recovery.down_total_ms(self.now_ms()),
            cpu_seconds: cpu,
            duration_s: self.both_joined.elapsed().as_secs_f64(),
            ended_by,
            audio_devices: audio.devices,
            captions: None,
        }
    }

    /// A caption pipeline reported something.
    async fn on_pipeline(
        &mut self,
        direction: Direction,
        event: PipelineEvent,
        captions: &mut Captions,
    ) {
        let update = match event {
            PipelineEvent::Ready => CallUpdate::Translation(match direction {
                Direction::Outgoing => "captions of your speech are on".into(),
                Direction::Incoming => "captions of the peer's speech are on".into(),
            }),
            PipelineEvent::Failed(why) => {
                captions.report.errors.push(why.clone());
                CallUpdate::Translation(format!("translation is off: {why}"))
            }
            PipelineEvent::Caption(caption, timing) => {
                if caption.is_final {
                    captions.report.processing_ms.push(timing.total_ms());
                }
                let source = match direction {
                    Direction::Outgoing => {
                        self.send_caption(&caption, &mut captions.report).await;
                        CaptionSource::Mine
                    }
                    Direction::Incoming => CaptionSource::PeerRecognizedHere,
                };
                captions.shown(source, &caption);
                CallUpdate::Caption(source, caption)
            }
        };
        let _ = self.updates.try_send(update);
    }

    async fn send_caption(&mut self, caption: &Caption, report: &mut CaptionReport) {
        let event = self
            .security
            .as_mut()
            .filter(|_| self.connected)
            .and_then(|s| s.send_app(caption.encode()).ok());
        match event {
            Some(event) => {
                self.carry_out(vec![event]).await;
                if caption.is_final {
                    report.sent_finals += 1;
                } else {
                    report.sent_partials += 1;
                }
            }
            None => report.send_failed += 1,
        }
    }

    /// Handles captions that arrived from the peer (already authenticated and decrypted by
    /// the session: a forged or replayed frame never gets here).
    async fn take_received_captions(&mut self, captions: &mut Captions) {
        while let Some(body) = self.received_app.pop_front() {
            let Ok(caption) = Caption::decode(&body) else {
                captions.report.received_malformed += 1;
                continue;
            };
            if caption.is_final {
                captions.report.received_finals += 1;
                let played_ms = self
                    .played
                    .lock()
                    .map_or(0, |s| s.frames_played)
                    .saturating_mul(u64::from(aparte_media::FRAME_MS));
                captions
                    .report
                    .received_lag_ms
                    .push(played_ms.saturating_sub(caption.end_ms));
            } else {
                captions.report.received_partials += 1;
            }
            captions.shown(CaptionSource::Peer, &caption);
            let _ = self
                .updates
                .try_send(CallUpdate::Caption(CaptionSource::Peer, caption));
        }
    }
}

/// `turn:HOST:PORT?transport=udp` (or `turns:`) as `HOST:PORT (udp)`; `None` for STUN URLs.
fn turn_host_port(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("turn:")
        .or_else(|| url.strip_prefix("turns:"))?;
    let (host, query) = rest.split_once('?').unwrap_or((rest, ""));
    let transport = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("transport="))
        .unwrap_or(if url.starts_with("turns:") {
            "tls"
        } else {
            "udp"
        });
    Some(format!("{host} ({transport})"))
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    cpu_time::ProcessTime::try_now()
        .map(|t| t.as_duration().as_secs_f64())
        .unwrap_or(0.0)
}
