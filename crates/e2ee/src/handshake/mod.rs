//! The commit-before-reveal handshake: a sans-IO state machine.
//!
//! ```text
//! Initiator                                   Responder
//!   Commit   { H(E_i, S_i) }          ──▶
//!                                     ◀──    Response { E_r, S_r? }
//!   Reveal   { E_i, S_i?, mac_i }     ──▶    check H, derive, check mac_i
//!   check mac_r                       ◀──    Confirm  { mac_r }
//! ```
//!
//! The initiator commits to its ephemeral key before it sees the responder's, and the
//! responder picks its key before it sees the initiator's: whoever relays the messages gets one
//! guess at a SAS collision instead of a search. Each side proves with a MAC that it derived
//! the same keys before any media flows. Feed every incoming message to
//! [`Handshake::receive`], send back what it returns, and call [`Handshake::finish`] once
//! [`Handshake::is_complete`].
#![forbid(unsafe_code)]

pub mod messages;

use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use crate::codec::put_len_prefixed;
use crate::error::HandshakeError;
use crate::frame::{Direction, FrameReceiver, FrameSender, ReceiverConfig, SenderConfig};
use crate::identity::{IdentityKey, IdentityPublic};
use crate::keys::{derive_call_secrets, labels, sha256, CallSecrets};
use crate::sas::Sas;
use crate::SUITE_X25519_CHACHA20POLY1305_SHA256;
use messages::{Commit, Confirm, Message, Response, Reveal};

/// Longest room id or DTLS fingerprint accepted, in bytes.
pub const MAX_PARAM_LEN: usize = 1024;

/// Which side of the handshake this endpoint plays. The call layer decides, for example the
/// peer that sends the SDP offer initiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends Commit and Reveal.
    Initiator,
    /// Sends Response and Confirm.
    Responder,
}

/// What the call binds into its keys, as this endpoint sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallParams {
    room_id: Vec<u8>,
    local_fingerprint: Vec<u8>,
    remote_fingerprint: Vec<u8>,
}

impl CallParams {
    /// `room_id` and the two DTLS certificate fingerprints (exactly the bytes of the SDP
    /// `a=fingerprint` values, for example `b"sha-256 AB:CD:…"`): this endpoint's own and the
    /// one the SDP says the peer has. Each must be 1 to [`MAX_PARAM_LEN`] bytes.
    pub fn new(
        room_id: Vec<u8>,
        local_fingerprint: Vec<u8>,
        remote_fingerprint: Vec<u8>,
    ) -> Result<Self, HandshakeError> {
        for (value, what) in [
            (&room_id, "room id must be 1 to 1024 bytes"),
            (
                &local_fingerprint,
                "local fingerprint must be 1 to 1024 bytes",
            ),
            (
                &remote_fingerprint,
                "remote fingerprint must be 1 to 1024 bytes",
            ),
        ] {
            if value.is_empty() || value.len() > MAX_PARAM_LEN {
                return Err(HandshakeError::InvalidParams(what));
            }
        }
        Ok(Self {
            room_id,
            local_fingerprint,
            remote_fingerprint,
        })
    }

    /// The fingerprints in protocol order: (initiator's, responder's).
    fn fingerprints(&self, role: Role) -> (&[u8], &[u8]) {
        match role {
            Role::Initiator => (&self.local_fingerprint, &self.remote_fingerprint),
            Role::Responder => (&self.remote_fingerprint, &self.local_fingerprint),
        }
    }
}

/// Where the handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeState {
    /// Initiator: Commit sent, waiting for Response.
    AwaitingResponse,
    /// Responder: waiting for Commit.
    AwaitingCommit,
    /// Responder: Response sent, waiting for Reveal.
    AwaitingReveal,
    /// Initiator: Reveal sent, waiting for Confirm.
    AwaitingConfirm,
    /// Keys confirmed on this side; call [`Handshake::finish`].
    Complete,
    /// A cryptographic check failed; the call must not proceed.
    Failed,
}

impl HandshakeState {
    fn describe(self) -> &'static str {
        match self {
            Self::AwaitingResponse => "awaiting Response",
            Self::AwaitingCommit => "awaiting Commit",
            Self::AwaitingReveal => "awaiting Reveal",
            Self::AwaitingConfirm => "awaiting Confirm",
            Self::Complete => "complete",
            Self::Failed => "failed",
        }
    }
}

enum State {
    AwaitingResponse {
        ephemeral: StaticSecret,
        commitment: [u8; 32],
    },
    AwaitingCommit {
        ephemeral: StaticSecret,
    },
    AwaitingReveal {
        ephemeral: StaticSecret,
        commitment: [u8; 32],
    },
    AwaitingConfirm(Box<Keys>),
    Complete(Box<Keys>),
    Failed,
}

/// What both sides hold once the DH outputs are known.
struct Keys {
    secrets: CallSecrets,
    transcript_hash: [u8; 32],
    peer_identity: Option<IdentityPublic>,
}

/// The handshake of one call, from one endpoint's side.
pub struct Handshake {
    role: Role,
    params: CallParams,
    identity: Option<IdentityKey>,
    state: State,
}

impl Handshake {
    /// Starts as initiator with a fresh ephemeral key from `rng`. Returns the Commit to send.
    pub fn initiator(
        params: CallParams,
        identity: Option<&IdentityKey>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let ephemeral = StaticSecret::random_from_rng(rng);
        let identity = identity.cloned();
        let commitment = commitment(
            PublicKey::from(&ephemeral).as_bytes(),
            identity.as_ref().map(|i| i.public().0).as_ref(),
        );
        let commit = Message::Commit(Commit { commitment }).encode();
        let hs = Self {
            role: Role::Initiator,
            params,
            identity,
            state: State::AwaitingResponse {
                ephemeral,
                commitment,
            },
        };
        Ok((hs, commit))
    }

    /// Starts as responder with a fresh ephemeral key from `rng`.
    pub fn responder(
        params: CallParams,
        identity: Option<&IdentityKey>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, HandshakeError> {
        Ok(Self {
            role: Role::Responder,
            params,
            identity: identity.cloned(),
            state: State::AwaitingCommit {
                ephemeral: StaticSecret::random_from_rng(rng),
            },
        })
    }

    /// This endpoint's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current state.
    pub fn state(&self) -> HandshakeState {
        match self.state {
            State::AwaitingResponse { .. } => HandshakeState::AwaitingResponse,
            State::AwaitingCommit { .. } => HandshakeState::AwaitingCommit,
            State::AwaitingReveal { .. } => HandshakeState::AwaitingReveal,
            State::AwaitingConfirm(_) => HandshakeState::AwaitingConfirm,
            State::Complete(_) => HandshakeState::Complete,
            State::Failed => HandshakeState::Failed,
        }
    }

    /// Whether keys are confirmed on this side.
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Complete(_))
    }

    /// Processes one incoming message and returns the reply to send, if any.
    ///
    /// A malformed, unexpected or unsupported message is rejected and leaves the state as it
    /// was. A failed cryptographic check ([`HandshakeError::is_fatal`]) moves to
    /// [`HandshakeState::Failed`] and wipes the ephemeral key.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Option<Vec<u8>>, HandshakeError> {
        if matches!(self.state, State::Failed) {
            return Err(HandshakeError::AlreadyFailed);
        }
        let message = Message::parse(bytes)?;
        let state = self.state();
        let unexpected = || HandshakeError::UnexpectedMessage {
            got: message.name(),
            state: state.describe(),
        };
        let current = std::mem::replace(&mut self.state, State::Failed);
        let (next, result) = match (current, &message) {
            (State::AwaitingCommit { ephemeral }, Message::Commit(m)) => {
                let reply = Message::Response(Response {
                    ephemeral: PublicKey::from(&ephemeral).to_bytes(),
                    identity: self.identity.as_ref().map(|i| i.public().0),
                })
                .encode();
                let next = State::AwaitingReveal {
                    ephemeral,
                    commitment: m.commitment,
                };
                (next, Ok(Some(reply)))
            }
            (
                State::AwaitingResponse {
                    ephemeral,
                    commitment,
                },
                Message::Response(m),
            ) => match self.initiator_on_response(&ephemeral, &commitment, m) {
                Ok((keys, reply)) => (State::AwaitingConfirm(Box::new(keys)), Ok(Some(reply))),
                Err(e) => (State::Failed, Err(e)),
            },
            (
                State::AwaitingReveal {
                    ephemeral,
                    commitment,
                },
                Message::Reveal(m),
            ) => match self.responder_on_reveal(&ephemeral, &commitment, m) {
                Ok((keys, reply)) => (State::Complete(Box::new(keys)), Ok(Some(reply))),
                Err(e) => (State::Failed, Err(e)),
            },
            (State::AwaitingConfirm(keys), Message::Confirm(m)) => {
                let expected = confirm_mac(&keys.secrets.confirm_r, &keys.transcript_hash);
                if bool::from(expected.ct_eq(&m.confirm)) {
                    (State::Complete(keys), Ok(None))
                } else {
                    (State::Failed, Err(HandshakeError::ConfirmationFailed))
                }
            }
            (other, _) => (other, Err(unexpected())),
        };
        self.state = next;
        result
    }

    /// The completed session: SAS, peer identity and the keys. Fails unless complete.
    pub fn finish(self) -> Result<Session, HandshakeError> {
        let role = self.role;
        match self.state {
            State::Complete(keys) => {
                let keys = *keys;
                Ok(Session {
                    info: SessionInfo {
                        role,
                        sas: Sas::from_bytes(&keys.secrets.sas),
                        transcript_hash: keys.transcript_hash,
                        peer_identity: keys.peer_identity,
                    },
                    secrets: keys.secrets,
                })
            }
            State::Failed => Err(HandshakeError::AlreadyFailed),
            _ => Err(HandshakeError::NotComplete),
        }
    }

    fn initiator_on_response(
        &self,
        ephemeral: &StaticSecret,
        commitment: &[u8; 32],
        m: &Response,
    ) -> Result<(Keys, Vec<u8>), HandshakeError> {
        let keys = self.agree(ephemeral, commitment, m.ephemeral, m.identity)?;
        let reveal = Message::Reveal(Reveal {
            ephemeral: PublicKey::from(ephemeral).to_bytes(),
            identity: self.identity.as_ref().map(|i| i.public().0),
            confirm: confirm_mac(&keys.secrets.confirm_i, &keys.transcript_hash),
        })
        .encode();
        Ok((keys, reveal))
    }

    fn responder_on_reveal(
        &self,
        ephemeral: &StaticSecret,
        commitment: &[u8; 32],
        m: &Reveal,
    ) -> Result<(Keys, Vec<u8>), HandshakeError> {
        let revealed = self::commitment(&m.ephemeral, m.identity.as_ref());
        if !bool::from(revealed.ct_eq(commitment)) {
            return Err(HandshakeError::CommitmentMismatch);
        }
        let keys = self.agree(ephemeral, commitment, m.ephemeral, m.identity)?;
        let expected = confirm_mac(&keys.secrets.confirm_i, &keys.transcript_hash);
        if !bool::from(expected.ct_eq(&m.confirm)) {
            return Err(HandshakeError::ConfirmationFailed);
        }
        let confirm = Message::Confirm(Confirm {
            confirm: confirm_mac(&keys.secrets.confirm_r, &keys.transcript_hash),
        })
        .encode();
        Ok((keys, confirm))
    }

    /// Key agreement, identical on both sides: the DH outputs in protocol order
    /// (`ee`, then initiator-identity × responder-ephemeral, then initiator-ephemeral ×
    /// responder-identity), the transcript hash, and the call secrets.
    fn agree(
        &self,
        ephemeral: &StaticSecret,
        commitment: &[u8; 32],
        peer_ephemeral: [u8; 32],
        peer_identity: Option<[u8; 32]>,
    ) -> Result<Keys, HandshakeError> {
        let peer_ephemeral_key = PublicKey::from(peer_ephemeral);
        let own_identity_dh = self
            .identity
            .as_ref()
            .map(|id| id.secret().diffie_hellman(&peer_ephemeral_key));
        let peer_identity_dh =
            peer_identity.map(|pk| ephemeral.diffie_hellman(&PublicKey::from(pk)));
        let (initiator_identity_dh, responder_identity_dh) = match self.role {
            Role::Initiator => (own_identity_dh, peer_identity_dh),
            Role::Responder => (peer_identity_dh, own_identity_dh),
        };
        let mut ikm = Zeroizing::new(Vec::with_capacity(96));
        push_dh(&mut ikm, ephemeral.diffie_hellman(&peer_ephemeral_key))?;
        for dh in [initiator_identity_dh, responder_identity_dh]
            .into_iter()
            .flatten()
        {
            push_dh(&mut ikm, dh)?;
        }

        let own = (
            PublicKey::from(ephemeral).to_bytes(),
            self.identity.as_ref().map(|i| i.public().0),
        );
        let peer = (peer_ephemeral, peer_identity);
        let ((i_eph, i_id), (r_eph, r_id)) = match self.role {
            Role::Initiator => (own, peer),
            Role::Responder => (peer, own),
        };
        let th = self.transcript_hash(commitment, &i_eph, i_id.as_ref(), &r_eph, r_id.as_ref());
        Ok(Keys {
            secrets: derive_call_secrets(&th, &ikm),
            transcript_hash: th,
            peer_identity: peer_identity.map(IdentityPublic),
        })
    }

    /// `SHA-256` over the label, suite, room, both fingerprints, the commitment, and both
    /// sides' keys, in initiator-then-responder order.
    fn transcript_hash(
        &self,
        commitment: &[u8; 32],
        initiator_ephemeral: &[u8; 32],
        initiator_identity: Option<&[u8; 32]>,
        responder_ephemeral: &[u8; 32],
        responder_identity: Option<&[u8; 32]>,
    ) -> [u8; 32] {
        let (fp_i, fp_r) = self.params.fingerprints(self.role);
        let mut t = Vec::with_capacity(256);
        t.extend_from_slice(labels::TRANSCRIPT);
        t.extend_from_slice(&SUITE_X25519_CHACHA20POLY1305_SHA256.to_be_bytes());
        put_len_prefixed(&mut t, &self.params.room_id);
        put_len_prefixed(&mut t, fp_i);
        put_len_prefixed(&mut t, fp_r);
        t.extend_from_slice(commitment);
        t.extend_from_slice(initiator_ephemeral);
        put_optional_key(&mut t, initiator_identity);
        t.extend_from_slice(responder_ephemeral);
        put_optional_key(&mut t, responder_identity);
        sha256(&[&t])
    }
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// `SHA-256("aparte/v1 commit" || ephemeral || id_flag || [identity])`.
pub fn commitment(ephemeral: &[u8; 32], identity: Option<&[u8; 32]>) -> [u8; 32] {
    let mut input = Vec::with_capacity(81);
    input.extend_from_slice(labels::COMMIT);
    input.extend_from_slice(ephemeral);
    put_optional_key(&mut input, identity);
    sha256(&[&input])
}

fn put_optional_key(out: &mut Vec<u8>, key: Option<&[u8; 32]>) {
    match key {
        Some(k) => {
            out.push(1);
            out.extend_from_slice(k);
        }
        None => out.push(0),
    }
}

fn push_dh(ikm: &mut Vec<u8>, shared: SharedSecret) -> Result<(), HandshakeError> {
    if !shared.was_contributory() {
        return Err(HandshakeError::NonContributory);
    }
    ikm.extend_from_slice(shared.as_bytes());
    Ok(())
}

fn confirm_mac(key: &crate::keys::Secret32, transcript_hash: &[u8; 32]) -> [u8; 32] {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key.expose()) else {
        // Unreachable: HMAC accepts keys of any length.
        return [0; 32];
    };
    mac.update(labels::CONFIRM_MSG);
    mac.update(transcript_hash);
    mac.finalize().into_bytes().into()
}

/// Public facts about a completed handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    role: Role,
    sas: Sas,
    transcript_hash: [u8; 32],
    peer_identity: Option<IdentityPublic>,
}

impl SessionInfo {
    /// This endpoint's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The SAS both people compare.
    pub fn sas(&self) -> &Sas {
        &self.sas
    }

    /// The transcript hash (equal on both sides unless someone is in the middle).
    pub fn transcript_hash(&self) -> &[u8; 32] {
        &self.transcript_hash
    }

    /// The identity key the peer proved it holds, if it sent one.
    pub fn peer_identity(&self) -> Option<&IdentityPublic> {
        self.peer_identity.as_ref()
    }
}

/// A completed handshake: its public facts and the call's keys.
pub struct Session {
    info: SessionInfo,
    secrets: CallSecrets,
}

/// The four frame protectors of a call, from one endpoint's side.
#[derive(Debug)]
pub struct Channels {
    /// Protects outgoing audio frames.
    pub media_sender: FrameSender,
    /// Verifies incoming audio frames.
    pub media_receiver: FrameReceiver,
    /// Protects outgoing captions and control messages.
    pub data_sender: FrameSender,
    /// Verifies incoming captions and control messages.
    pub data_receiver: FrameReceiver,
}

impl Session {
    /// SAS, role, transcript hash and peer identity.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Splits the keys into frame protectors. Consuming the session makes it impossible to
    /// build two senders on one key (which would reuse nonces).
    pub fn into_channels(self, sender: SenderConfig, receiver: ReceiverConfig) -> Channels {
        let (out_dir, in_dir) = match self.info.role {
            Role::Initiator => (
                Direction::InitiatorToResponder,
                Direction::ResponderToInitiator,
            ),
            Role::Responder => (
                Direction::ResponderToInitiator,
                Direction::InitiatorToResponder,
            ),
        };
        let s = &self.secrets;
        let (media_out, media_in, data_out, data_in) = match self.info.role {
            Role::Initiator => (&s.media_i2r, &s.media_r2i, &s.data_i2r, &s.data_r2i),
            Role::Responder => (&s.media_r2i, &s.media_i2r, &s.data_r2i, &s.data_i2r),
        };
        Channels {
            media_sender: FrameSender::new(out_dir, media_out.clone(), sender),
            media_receiver: FrameReceiver::new(in_dir, media_in.clone(), receiver),
            data_sender: FrameSender::new(out_dir, data_out.clone(), sender),
            data_receiver: FrameReceiver::new(in_dir, data_in.clone(), receiver),
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}
