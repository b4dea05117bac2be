//! The per-call security state machine.
#![forbid(unsafe_code)]

use aparte_e2ee::frame::{FramePosition, ReceiverConfig, ReceiverStats, SenderConfig};
use aparte_e2ee::handshake::{CallParams, Channels, Handshake, Role, SessionInfo};
use aparte_e2ee::identity::{IdentityKey, IdentityPublic, KnownPeers, PeerName, PeerStatus};
use aparte_e2ee::sas::Sas;
use aparte_e2ee::{FrameError, HandshakeError};
use rand_core::CryptoRngCore;

use crate::control::Control;
use crate::policy::Policy;

/// Data frames that arrive before the keys exist (the data channel can outrun the signaling
/// path that carries the last handshake message) are held, up to this many, then replayed.
pub const MAX_EARLY_DATA_FRAMES: usize = 16;

/// Everything a call's security depends on.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Initiator (sends the SDP offer) or responder.
    pub role: Role,
    /// Room and DTLS fingerprints bound into the keys.
    pub params: CallParams,
    /// This endpoint's long-term identity, if it has one.
    pub identity: Option<IdentityKey>,
    /// The local name under which the peer's identity is pinned (for example from `--peer`).
    /// Without it, key continuity is off and every call needs a SAS check.
    pub peer_name: Option<PeerName>,
    /// How to trust the peer.
    pub policy: Policy,
    /// Frame sender policy (rekeying). Its `rekey_after_frames` must equal
    /// `receiver.epoch_frames`: both endpoints of a call keep the same epoch length (the
    /// protocol's [`EPOCH_FRAMES`](aparte_e2ee::frame::EPOCH_FRAMES) unless a test changes it
    /// on both), because the peer numbers our frames by it.
    pub sender: SenderConfig,
    /// Frame receiver policy (grace period, the peer's epoch length).
    pub receiver: ReceiverConfig,
}

/// An incoming audio frame that authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    /// The decrypted payload (an Opus packet).
    pub payload: Vec<u8>,
    /// The frame's index in the peer's stream: 0 for its first frame, one more for each
    /// frame after, across rekeys (`epoch × epoch_frames + counter`). Authenticated, unlike
    /// the RTP sequence number, so it is what playout order, duplicate detection and loss
    /// counting follow.
    pub index: u64,
    /// The authenticated (epoch, counter) the index comes from.
    pub position: FramePosition,
}

/// How a call came to be verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifiedBy {
    /// Both people confirmed the SAS on this call.
    Sas,
    /// The peer proved an identity that was verified on an earlier call.
    PinnedIdentity,
}

/// Why a call's security failed. The call must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// The handshake failed a cryptographic check.
    Handshake(HandshakeError),
    /// The SAS differs from the one the script expected ([`Policy::ExpectSas`]).
    SasMismatch,
    /// The local person said the SAS does not match.
    SasRejectedLocally,
    /// The peer said the SAS does not match.
    SasRejectedByPeer,
}

impl std::fmt::Display for FailReason {
    /// A sentence for people: what happened and what it may mean.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handshake(e) => write!(
                f,
                "the end-to-end key exchange failed: {e}; someone may be tampering with the \
                 signaling path"
            ),
            Self::SasMismatch => f.write_str(
                "the SAS is not the one expected (--expect-sas): someone may be in the middle; \
                 call refused",
            ),
            Self::SasRejectedLocally => {
                f.write_str("you said the SAS does not match: someone may be in the middle")
            }
            Self::SasRejectedByPeer => {
                f.write_str("the peer said the SAS does not match: someone may be in the middle")
            }
        }
    }
}

/// What the call UI must show now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityStatus {
    /// Handshake in progress; no media.
    Connecting,
    /// End-to-end encrypted, not (yet) verified: show the SAS for the people to compare.
    Encrypted {
        /// The SAS.
        sas: Sas,
        /// Whether the local person already confirmed it (waiting for the peer).
        confirmed_locally: bool,
    },
    /// End-to-end encrypted and verified.
    Verified {
        /// How.
        by: VerifiedBy,
        /// The SAS (still worth showing).
        sas: Sas,
    },
    /// WARNING: the peer presents a different identity than the one pinned under its name, or
    /// none at all (a man-in-the-middle who cannot prove the pinned key simply shows none, so
    /// "no identity" must raise the same alarm, never a downgrade to a stranger).
    /// No media until [`CallSecurity::override_identity_change`].
    IdentityChanged {
        /// The identity that was pinned.
        pinned: IdentityPublic,
        /// The identity the peer proved now; `None` when it showed no identity.
        presented: Option<IdentityPublic>,
        /// The SAS, to verify the new identity by voice.
        sas: Sas,
    },
    /// Security failed; the call must end.
    Failed(FailReason),
    /// A side hung up.
    Ended {
        /// Whether the peer hung up (rather than us).
        by_peer: bool,
    },
}

impl SecurityStatus {
    /// A one-line label for status displays, without the SAS.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Encrypted { .. } => "encrypted, not verified",
            Self::Verified { .. } => "encrypted and verified",
            Self::IdentityChanged { .. } => "WARNING: peer identity CHANGED",
            Self::Failed(_) => "security failure",
            Self::Ended { .. } => "ended",
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send these handshake bytes to the peer (over the signaling relay).
    SendHandshake(Vec<u8>),
    /// Send this protected frame on the data channel.
    SendData(Vec<u8>),
    /// The status changed; update the UI.
    Status(SecurityStatus),
    /// The known-peers store changed; persist [`CallSecurity::known_peers`].
    PeersChanged,
    /// Application data from the peer (for example a caption).
    App(Vec<u8>),
}

/// Errors from the media and data paths.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Media or data may not flow in the current state (no keys yet, identity changed, failed).
    #[error("media is not allowed in state '{0}'")]
    NotAllowed(&'static str),
    /// The frame was rejected.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The decrypted data message does not parse.
    #[error("bad data-channel message: {0}")]
    Control(#[from] crate::control::ControlError),
    /// The handshake rejected a message.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The requested action does not fit the current state.
    #[error("cannot {action} while {state}")]
    WrongState {
        /// What was asked.
        action: &'static str,
        /// The current state's label.
        state: &'static str,
    },
}

/// The security session of one call.
pub struct CallSecurity {
    policy: Policy,
    peer_name: Option<PeerName>,
    sender_config: SenderConfig,
    receiver_config: ReceiverConfig,
    handshake: Option<Handshake>,
    channels: Option<Channels>,
    info: Option<SessionInfo>,
    status: SecurityStatus,
    peers: KnownPeers,
    confirmed_locally: bool,
    confirmed_by_peer: bool,
    early_data: Vec<Vec<u8>>,
    /// The peer's epoch length, for [`MediaFrame::index`].
    epoch_frames: u64,
    /// Incoming media frames refused because media was not allowed.
    media_refused: u64,
}

impl CallSecurity {
    /// Starts the session. An initiator's first event is the Commit to send.
    pub fn new(
        config: SessionConfig,
        peers: KnownPeers,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Vec<Event>), HandshakeError> {
        let epoch_frames =
            match (
                config.sender.rekey_after_frames,
                config.receiver.epoch_frames,
            ) {
                (Some(sent), Some(received)) if sent == received && sent > 0 => received,
                _ => return Err(HandshakeError::InvalidParams(
                    "the sender's rekey interval and the receiver's epoch length must be equal \
                     and set (the protocol fixes both at 16384 frames)",
                )),
            };
        let mut events = Vec::new();
        let handshake = match config.role {
            Role::Initiator => {
                let (hs, commit) =
                    Handshake::initiator(config.params, config.identity.as_ref(), rng)?;
                events.push(Event::SendHandshake(commit));
                hs
            }
            Role::Responder => Handshake::responder(config.params, config.identity.as_ref(), rng)?,
        };
        let session = Self {
            policy: config.policy,
            peer_name: config.peer_name,
            sender_config: config.sender,
            receiver_config: config.receiver,
            handshake: Some(handshake),
            channels: None,
            info: None,
            status: SecurityStatus::Connecting,
            peers,
            confirmed_locally: false,
            confirmed_by_peer: false,
            early_data: Vec::new(),
            epoch_frames,
            media_refused: 0,
        };
        Ok((session, events))
    }

    /// The current status.
    pub fn status(&self) -> &SecurityStatus {
        &self.status
    }

    /// Whether audio (and captions) may be sent and played now.
    pub fn media_allowed(&self) -> bool {
        matches!(
            self.status,
            SecurityStatus::Encrypted { .. } | SecurityStatus::Verified { .. }
        )
    }

    /// The known-peers store, to persist after [`Event::PeersChanged`].
    pub fn known_peers(&self) -> &KnownPeers {
        &self.peers
    }

    /// Facts about the completed handshake.
    pub fn info(&self) -> Option<&SessionInfo> {
        self.info.as_ref()
    }

    /// Incoming audio frame counts (accepted and rejected by reason). Frames refused before
    /// decryption are in [`media_refused`](Self::media_refused) instead.
    pub fn media_stats(&self) -> Option<&ReceiverStats> {
        self.channels.as_ref().map(|c| c.media_receiver.stats())
    }

    /// Incoming audio frames refused without being looked at because media was not allowed
    /// (before key confirmation, after an identity change, a failure or the end). They
    /// arrived, so they are neither decrypted, rejected nor lost, and the frame accounting
    /// needs them.
    pub fn media_refused(&self) -> u64 {
        self.media_refused
    }

    /// How many audio frames this side has protected: the peer's sent count, as the peer
    /// numbers them ([`MediaFrame::index`] runs from 0 to this minus one). 0 before keys.
    pub fn media_frames_protected(&self) -> u64 {
        self.channels.as_ref().map_or(0, |c| {
            let p = c.media_sender.next_position();
            // A full epoch has counter == epoch_frames until the next frame rekeys; the sum
            // is the same either way.
            p.epoch
                .saturating_mul(self.epoch_frames)
                .saturating_add(p.counter)
        })
    }

    /// Feeds one handshake message from the peer. `now_unix` dates known-peer records.
    /// A non-fatal rejection returns `Err` and changes nothing; a fatal one also emits
    /// `Status(Failed)`.
    pub fn on_handshake(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
        now_unix: u64,
    ) -> Result<Vec<Event>, SessionError> {
        let Some(handshake) = self.handshake.as_mut() else {
            return Err(self.wrong_state("accept a handshake message"));
        };
        let result = handshake.receive(bytes);
        let complete = handshake.is_complete();
        let mut events = Vec::new();
        match result {
            Ok(reply) => events.extend(reply.map(Event::SendHandshake)),
            Err(e) if e.is_fatal() => {
                self.handshake = None;
                let failed = SecurityStatus::Failed(FailReason::Handshake(e.clone()));
                self.set_status(failed);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        if complete {
            if let Some(done) = self.handshake.take() {
                let session = done.finish()?;
                self.info = Some(session.info().clone());
                self.channels =
                    Some(session.into_channels(self.sender_config, self.receiver_config));
                self.on_keys_confirmed(now_unix, &mut events);
                for frame in std::mem::take(&mut self.early_data) {
                    // Early frames were unauthenticated junk or genuine; either way a
                    // rejection here is counted by the receiver and otherwise ignored.
                    if let Ok(more) = self.on_data_frame(&frame, now_ms, now_unix) {
                        events.extend(more);
                    }
                }
            }
        }
        Ok(events)
    }

    fn on_keys_confirmed(&mut self, now_unix: u64, events: &mut Vec<Event>) {
        let Some(sas) = self.info.as_ref().map(|i| i.sas().clone()) else {
            return;
        };
        let presented = self.info.as_ref().and_then(|i| i.peer_identity().copied());
        if let Some(name) = self.peer_name.clone() {
            let status = match &presented {
                Some(presented) => self.peers.check(&name, presented),
                // Pinned, but no identity shown: as alarming as another identity.
                None => match self.peers.get(&name) {
                    Some(record) => PeerStatus::Changed {
                        pinned: record.identity,
                        was_verified: record.verified,
                    },
                    None => PeerStatus::New,
                },
            };
            match (status, presented) {
                (PeerStatus::Changed { pinned, .. }, presented) => {
                    events.push(self.set_status(SecurityStatus::IdentityChanged {
                        pinned,
                        presented,
                        sas,
                    }));
                    return;
                }
                (PeerStatus::Matches { verified: true }, Some(presented)) => {
                    if self.peers.record_seen(&name, &presented, now_unix).is_ok() {
                        events.push(Event::PeersChanged);
                    }
                    events.push(self.set_status(SecurityStatus::Verified {
                        by: VerifiedBy::PinnedIdentity,
                        sas,
                    }));
                    return;
                }
                (PeerStatus::New | PeerStatus::Matches { .. }, Some(presented)) => {
                    if self.peers.record_seen(&name, &presented, now_unix).is_ok() {
                        events.push(Event::PeersChanged);
                    }
                }
                // Nothing pinned and nothing shown: nothing to pin either.
                (_, None) => {}
            }
        }
        self.apply_policy(sas, now_unix, events);
    }

    fn apply_policy(&mut self, sas: Sas, now_unix: u64, events: &mut Vec<Event>) {
        match self.policy.clone() {
            Policy::ExpectSas(expected) if !Policy::sas_matches(&expected, &sas) => {
                events.extend(self.send_control(&Control::SasRejected));
                events.push(self.set_status(SecurityStatus::Failed(FailReason::SasMismatch)));
            }
            Policy::ExpectSas(_) => {
                events.push(self.set_status(SecurityStatus::Encrypted {
                    sas,
                    confirmed_locally: false,
                }));
                if let Ok(more) = self.confirm_sas(now_unix) {
                    events.extend(more);
                }
            }
            Policy::Interactive | Policy::TrustOnFirstUse => {
                events.push(self.set_status(SecurityStatus::Encrypted {
                    sas,
                    confirmed_locally: false,
                }));
            }
        }
    }

    /// The local person confirms that the SAS matches. The call becomes verified once the
    /// peer confirms too.
    pub fn confirm_sas(&mut self, now_unix: u64) -> Result<Vec<Event>, SessionError> {
        let SecurityStatus::Encrypted { sas, .. } = &self.status else {
            return Err(self.wrong_state("confirm the SAS"));
        };
        let sas = sas.clone();
        self.confirmed_locally = true;
        let mut events = self.send_control(&Control::SasConfirmed);
        self.update_verification(sas, now_unix, &mut events);
        Ok(events)
    }

    /// The local person says the SAS does NOT match: tell the peer and fail the call.
    pub fn reject_sas(&mut self) -> Vec<Event> {
        let mut events = self.send_control(&Control::SasRejected);
        events.push(self.set_status(SecurityStatus::Failed(FailReason::SasRejectedLocally)));
        events
    }

    /// After an identity-changed warning, the person accepts the change explicitly. A new
    /// identity replaces the pinned one (unverified); a peer that showed none leaves the pin
    /// as it is (the next call that proves the pinned key is verified again). Either way the
    /// call continues unverified, asking for the SAS: a changed identity is never trusted
    /// silently, whatever the policy.
    pub fn override_identity_change(&mut self, now_unix: u64) -> Result<Vec<Event>, SessionError> {
        let SecurityStatus::IdentityChanged { presented, sas, .. } = &self.status else {
            return Err(self.wrong_state("override an identity change"));
        };
        let (presented, sas) = (*presented, sas.clone());
        let mut events = Vec::new();
        if let (Some(name), Some(presented)) = (&self.peer_name, presented) {
            self.peers.replace(name, &presented, now_unix);
            events.push(Event::PeersChanged);
        }
        if let Policy::TrustOnFirstUse = self.policy {
            self.policy = Policy::Interactive;
        }
        self.apply_policy(sas, now_unix, &mut events);
        Ok(events)
    }

    /// Hangs up: the Bye to send, and the new status.
    pub fn hang_up(&mut self) -> Vec<Event> {
        let mut events = self.send_control(&Control::Bye);
        events.push(self.set_status(SecurityStatus::Ended { by_peer: false }));
        events
    }

    /// Protects an outgoing audio frame; refused unless media is allowed.
    pub fn protect_media(&mut self, payload: &[u8]) -> Result<Vec<u8>, SessionError> {
        let state = self.status.label();
        match (self.media_allowed(), self.channels.as_mut()) {
            (true, Some(c)) => Ok(c.media_sender.protect(payload)?),
            _ => Err(SessionError::NotAllowed(state)),
        }
    }

    /// Protects an outgoing audio packet of `frames` 20 ms frames (1 for a 20 ms packet, 3
    /// for 60 ms): it takes that many positions, so the peer's [`MediaFrame::index`] counts
    /// 20 ms frames whatever the packet time (see `FrameSender::protect_span`). Refused unless
    /// media is allowed.
    pub fn protect_media_frames(
        &mut self,
        payload: &[u8],
        frames: u64,
    ) -> Result<Vec<u8>, SessionError> {
        let state = self.status.label();
        match (self.media_allowed(), self.channels.as_mut()) {
            (true, Some(c)) => Ok(c.media_sender.protect_span(payload, frames)?),
            _ => Err(SessionError::NotAllowed(state)),
        }
    }

    /// Verifies and decrypts an incoming audio frame; refused unless media is allowed.
    /// Prefer [`unprotect_media_frame`](Self::unprotect_media_frame), which also gives the
    /// frame's authenticated index.
    pub fn unprotect_media(&mut self, frame: &[u8], now_ms: u64) -> Result<Vec<u8>, SessionError> {
        self.unprotect_media_frame(frame, now_ms).map(|f| f.payload)
    }

    /// Verifies and decrypts an incoming audio frame and gives its authenticated index in the
    /// peer's stream; refused (and counted in [`media_refused`](Self::media_refused)) unless
    /// media is allowed. Rejections are counted in [`media_stats`](Self::media_stats).
    pub fn unprotect_media_frame(
        &mut self,
        frame: &[u8],
        now_ms: u64,
    ) -> Result<MediaFrame, SessionError> {
        let state = self.status.label();
        let allowed = self.media_allowed();
        let Some(c) = self.channels.as_mut().filter(|_| allowed) else {
            self.media_refused = self.media_refused.saturating_add(1);
            return Err(SessionError::NotAllowed(state));
        };
        let (payload, position) = c.media_receiver.unprotect_with_position(frame, now_ms)?;
        // The receiver refuses counters at or beyond the epoch length, so this cannot fail
        // with the lengths `new` checked; if it ever did, saturate rather than panic.
        let index = position.index(self.epoch_frames).unwrap_or(u64::MAX);
        Ok(MediaFrame {
            payload,
            index,
            position,
        })
    }

    /// Sends application data (a caption) over the encrypted data channel.
    pub fn send_app(&mut self, payload: Vec<u8>) -> Result<Event, SessionError> {
        if !self.media_allowed() {
            return Err(SessionError::NotAllowed(self.status.label()));
        }
        self.send_control(&Control::App(payload))
            .pop()
            .ok_or(SessionError::NotAllowed("no keys"))
    }

    /// Feeds one frame from the data channel.
    pub fn on_data_frame(
        &mut self,
        frame: &[u8],
        now_ms: u64,
        now_unix: u64,
    ) -> Result<Vec<Event>, SessionError> {
        let Some(channels) = self.channels.as_mut() else {
            if self.early_data.len() < MAX_EARLY_DATA_FRAMES
                && matches!(self.status, SecurityStatus::Connecting)
            {
                self.early_data.push(frame.to_vec());
                return Ok(Vec::new());
            }
            return Err(SessionError::NotAllowed(self.status.label()));
        };
        let plaintext = channels.data_receiver.unprotect(frame, now_ms)?;
        let mut events = Vec::new();
        match Control::parse(&plaintext)? {
            Control::SasConfirmed => {
                self.confirmed_by_peer = true;
                if let SecurityStatus::Encrypted { sas, .. } = &self.status {
                    let sas = sas.clone();
                    self.update_verification(sas, now_unix, &mut events);
                }
            }
            Control::SasRejected => {
                if !matches!(self.status, SecurityStatus::Failed(_)) {
                    events.push(
                        self.set_status(SecurityStatus::Failed(FailReason::SasRejectedByPeer)),
                    );
                }
            }
            Control::Bye => events.push(self.set_status(SecurityStatus::Ended { by_peer: true })),
            Control::App(body) if self.media_allowed() => events.push(Event::App(body)),
            Control::App(_) => return Err(SessionError::NotAllowed(self.status.label())),
        }
        Ok(events)
    }

    fn update_verification(&mut self, sas: Sas, now_unix: u64, events: &mut Vec<Event>) {
        if !(self.confirmed_locally && self.confirmed_by_peer) {
            events.push(self.set_status(SecurityStatus::Encrypted {
                sas,
                confirmed_locally: self.confirmed_locally,
            }));
            return;
        }
        let presented = self.info.as_ref().and_then(|i| i.peer_identity().copied());
        if let (Some(name), Some(presented)) = (&self.peer_name, presented) {
            if self.peers.mark_verified(name, &presented, now_unix).is_ok() {
                events.push(Event::PeersChanged);
            }
        }
        events.push(self.set_status(SecurityStatus::Verified {
            by: VerifiedBy::Sas,
            sas,
        }));
    }

    fn send_control(&mut self, message: &Control) -> Vec<Event> {
        match self.channels.as_mut() {
            Some(c) => c
                .data_sender
                .protect(&message.encode())
                .map(Event::SendData)
                .into_iter()
                .collect(),
            None => Vec::new(),
        }
    }

    fn set_status(&mut self, status: SecurityStatus) -> Event {
        self.status = status.clone();
        Event::Status(status)
    }

    fn wrong_state(&self, action: &'static str) -> SessionError {
        SessionError::WrongState {
            action,
            state: self.status.label(),
        }
    }
}

impl std::fmt::Debug for CallSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSecurity")
            .field("status", &self.status.label())
            .finish_non_exhaustive()
    }
}
