//! The sending and receiving halves of one direction of frame protection, with the rekey
//! ratchet.
//!
//! Key ids: `kid = (epoch mod 4) << 1 | direction`, so a key id always fits in the config
//! byte's three inline bits and the header stays one byte plus the counter. The counter
//! restarts at 0 in each epoch (each epoch has its own key and salt, so nonces never repeat).
//! A receiver holds the current epoch and, for a grace period after a switch, the previous
//! one. A frame whose epoch is one or two ahead is tried with the ratcheted key and moves the
//! receiver forward only if it authenticates.
//!
//! Every frame that authenticates comes with its [`FramePosition`]: the full epoch of the key
//! that opened it (not just the two bits in the key id) and its counter. Both are
//! authenticated, so a receiver may order frames by them, which it must not do by anything a
//! relay can rewrite (RTP sequence numbers). With fixed-length epochs
//! ([`EPOCH_FRAMES`]), [`FramePosition::index`] turns a position into a gap-free stream index.
#![forbid(unsafe_code)]

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};

use super::header::FrameHeader;
use super::replay::ReplayWindow;
use super::{MAX_FRAME_LEN, MAX_PAYLOAD_LEN, TAG_LEN};
use crate::error::{FrameError, RejectReason};
use crate::keys::{epoch_keys, next_chain, Secret32};

/// Which endpoint sends the frames of a key chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Frames sent by the handshake initiator (key id low bit 0).
    InitiatorToResponder,
    /// Frames sent by the handshake responder (key id low bit 1).
    ResponderToInitiator,
}

impl Direction {
    fn bit(self) -> u64 {
        match self {
            Self::InitiatorToResponder => 0,
            Self::ResponderToInitiator => 1,
        }
    }
}

/// The key id of `epoch` in `direction`.
pub fn key_id(epoch: u64, direction: Direction) -> u64 {
    ((epoch % 4) << 1) | direction.bit()
}

/// The protocol's epoch length: a sender moves to the next key after exactly this many frames
/// (counters 0..=16,383), so a receiver can number every frame of a stream as
/// `epoch × EPOCH_FRAMES + counter` ([`FramePosition::index`]). 16,384 frames is about 5.5
/// minutes of 20 ms audio and keeps the counter within two bytes.
pub const EPOCH_FRAMES: u64 = 16_384;

/// Where an authenticated frame sits in its sender's stream. Both fields are covered by the
/// AEAD: the counter is in the header (the AAD) and the nonce, and the epoch is the one whose
/// key opened the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FramePosition {
    /// The sender's epoch (its number of rekeys before this frame).
    pub epoch: u64,
    /// The frame's counter within that epoch.
    pub counter: u64,
}

impl FramePosition {
    /// The frame's index in its stream when every epoch holds exactly `epoch_frames` frames:
    /// `epoch × epoch_frames + counter`. Consecutive frames get consecutive indices, across
    /// rekeys. `None` if `counter` is not below `epoch_frames` (the sender broke the rule, and
    /// the index would collide with the next epoch's) or the index does not fit in a `u64`.
    pub fn index(&self, epoch_frames: u64) -> Option<u64> {
        if self.counter >= epoch_frames {
            return None;
        }
        self.epoch
            .checked_mul(epoch_frames)?
            .checked_add(self.counter)
    }
}

/// Sender policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderConfig {
    /// Move to the next key after this many frames in an epoch (`None`: only on request).
    /// The default is the protocol's [`EPOCH_FRAMES`]; a receiver that numbers frames by
    /// [`FramePosition::index`] assumes it, so only tests should change it (on both sides,
    /// with [`ReceiverConfig::epoch_frames`]).
    pub rekey_after_frames: Option<u64>,
    /// The sender refuses to use a counter at or above this in one epoch. It exists so the
    /// "exhaustion is an error, never a wrap" rule can be exercised; the default is `u64::MAX`.
    pub counter_limit: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            rekey_after_frames: Some(EPOCH_FRAMES),
            counter_limit: u64::MAX,
        }
    }
}

/// Receiver policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// How long the previous epoch's key stays usable after the sender moves on, in the
    /// caller's milliseconds. Late or reordered frames from before the switch still decode.
    pub grace_period_ms: u64,
    /// The epoch length the peer keeps to ([`EPOCH_FRAMES`] by default). A frame whose counter
    /// is at or above it is rejected as malformed before any cryptography: no conforming
    /// sender uses such a counter, and accepting it would give two frames the same
    /// [`FramePosition::index`]. `None` accepts any counter (positions then still order
    /// frames, but [`FramePosition::index`] may not apply).
    pub epoch_frames: Option<u64>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            grace_period_ms: 2_000,
            epoch_frames: Some(EPOCH_FRAMES),
        }
    }
}

/// One epoch's AEAD state.
struct EpochCipher {
    epoch: u64,
    chain: Secret32,
    aead: ChaCha20Poly1305,
    salt: [u8; 12],
}

impl EpochCipher {
    fn new(epoch: u64, chain: Secret32) -> Self {
        let keys = epoch_keys(&chain);
        Self {
            epoch,
            aead: ChaCha20Poly1305::new((&keys.key).into()),
            salt: keys.salt,
            chain,
        }
    }

    fn next(&self) -> Option<Self> {
        Some(Self::new(
            self.epoch.checked_add(1)?,
            next_chain(&self.chain),
        ))
    }

    /// nonce = salt XOR counter, the counter big-endian in the nonce's last eight bytes.
    fn nonce(&self, counter: u64) -> Nonce {
        let mut nonce = self.salt;
        for (n, c) in nonce.iter_mut().skip(4).zip(counter.to_be_bytes()) {
            *n ^= c;
        }
        nonce.into()
    }
}

impl Drop for EpochCipher {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.salt.zeroize();
        // `chain` and `aead` wipe themselves on drop.
    }
}

/// Protects outgoing frames of one direction.
pub struct FrameSender {
    direction: Direction,
    config: SenderConfig,
    cipher: EpochCipher,
    counter: u64,
}

impl FrameSender {
    /// A sender starting at epoch 0 of `chain`.
    pub fn new(direction: Direction, chain: Secret32, config: SenderConfig) -> Self {
        Self {
            direction,
            config,
            cipher: EpochCipher::new(0, chain),
            counter: 0,
        }
    }

    /// Protects `payload` into a new frame.
    pub fn protect(&mut self, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(payload.len().saturating_add(17 + TAG_LEN));
        self.protect_into(payload, &mut out)?;
        Ok(out)
    }

    /// Protects `payload` into `out` (cleared first), reusing its allocation.
    pub fn protect_into(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        if matches!(self.config.rekey_after_frames, Some(n) if self.counter >= n) {
            self.rekey()?;
        }
        if self.counter >= self.config.counter_limit {
            return Err(FrameError::CounterExhausted);
        }
        let header = FrameHeader {
            key_id: key_id(self.cipher.epoch, self.direction),
            counter: self.counter,
        };
        out.clear();
        header.encode(out);
        let header_len = out.len();
        out.extend_from_slice(payload);
        let nonce = self.cipher.nonce(self.counter);
        let (aad, body) = out.split_at_mut(header_len);
        let tag = self
            .cipher
            .aead
            .encrypt_in_place_detached(&nonce, aad, body)
            .map_err(|_| FrameError::TooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            })?;
        out.extend_from_slice(&tag);
        // The counter was used: it is never used again under this key.
        self.counter = self.counter.saturating_add(1);
        Ok(())
    }

    /// Protects `payload` as `span` consecutive positions (a packet of `span` 20 ms audio
    /// frames): the frame carries the first counter and the next frame starts after the last,
    /// so a receiver's [`FramePosition::index`] keeps counting 20 ms frames whatever the packet
    /// time. A span never straddles two epochs: if it would not fit in this one, the sender
    /// moves to the next epoch first, leaving this one's last counters unused. A `span` of 0
    /// is taken as 1.
    pub fn protect_span(&mut self, payload: &[u8], span: u64) -> Result<Vec<u8>, FrameError> {
        let span = span.max(1);
        if matches!(self.config.rekey_after_frames, Some(n) if self.counter > 0 && self.counter.saturating_add(span) > n)
        {
            self.rekey()?;
        }
        if self.counter.saturating_add(span) > self.config.counter_limit {
            return Err(FrameError::CounterExhausted);
        }
        let out = self.protect(payload)?;
        // `protect` used one counter; the rest of the span is never used under this key.
        self.counter = self.counter.saturating_add(span.saturating_sub(1));
        Ok(out)
    }

    /// Moves to the next epoch now (the ratchet): a new key id, key and salt, and the
    /// counter back to 0. The old chain secret is wiped.
    pub fn rekey(&mut self) -> Result<(), FrameError> {
        self.cipher = self.cipher.next().ok_or(FrameError::CounterExhausted)?;
        self.counter = 0;
        Ok(())
    }

    /// The current epoch (0 until the first rekey).
    pub fn epoch(&self) -> u64 {
        self.cipher.epoch
    }

    /// The counter the next frame will carry (before any automatic rekey).
    pub fn next_counter(&self) -> u64 {
        self.counter
    }

    /// The position the next frame will take (before any automatic rekey). With fixed-length
    /// epochs, `next_position().index(n)` is the number of frames protected so far.
    pub fn next_position(&self) -> FramePosition {
        FramePosition {
            epoch: self.cipher.epoch,
            counter: self.counter,
        }
    }

    /// The direction this sender protects.
    pub fn direction(&self) -> Direction {
        self.direction
    }
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender")
            .field("direction", &self.direction)
            .field("epoch", &self.cipher.epoch)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// Counts of accepted and rejected frames, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Frames that authenticated and were returned.
    pub accepted: u64,
    /// Rejected frames per reason, in [`RejectReason::ALL`] order.
    rejected: [u64; 7],
    /// Epoch switches followed.
    pub rekeys: u64,
}

impl ReceiverStats {
    /// Frames rejected for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected
            .get(reason_index(reason))
            .copied()
            .unwrap_or(0)
    }

    /// Frames rejected for any reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }

    fn count(&mut self, reason: RejectReason) {
        if let Some(n) = self.rejected.get_mut(reason_index(reason)) {
            *n = n.saturating_add(1);
        }
    }
}

fn reason_index(reason: RejectReason) -> usize {
    RejectReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

/// An epoch the receiver can decrypt, with its replay window.
struct ReceiveEpoch {
    cipher: EpochCipher,
    window: ReplayWindow,
}

/// Verifies and decrypts incoming frames of one direction.
pub struct FrameReceiver {
    direction: Direction,
    config: ReceiverConfig,
    current: ReceiveEpoch,
    /// The epoch before `current`, with the time its grace period ends.
    previous: Option<(ReceiveEpoch, u64)>,
    stats: ReceiverStats,
}

/// Which key a frame's key id selects.
enum KeySlot {
    Current,
    Previous,
    /// `n` epochs ahead of the current one.
    Ahead(u64),
}

impl FrameReceiver {
    /// A receiver for frames that the peer sends in `direction`, starting at epoch 0.
    pub fn new(direction: Direction, chain: Secret32, config: ReceiverConfig) -> Self {
        Self {
            direction,
            config,
            current: ReceiveEpoch {
                cipher: EpochCipher::new(0, chain),
                window: ReplayWindow::new(),
            },
            previous: None,
            stats: ReceiverStats::default(),
        }
    }

    /// Verifies and decrypts `frame`. `now_ms` is the caller's monotonic clock, used only for
    /// the rekey grace period. Every rejection is counted in [`FrameReceiver::stats`], and a
    /// rejected frame never changes the receiver's state.
    pub fn unprotect(&mut self, frame: &[u8], now_ms: u64) -> Result<Vec<u8>, FrameError> {
        self.unprotect_with_position(frame, now_ms).map(|(p, _)| p)
    }

    /// Like [`FrameReceiver::unprotect`], also returning the frame's authenticated position
    /// in the sender's stream.
    pub fn unprotect_with_position(
        &mut self,
        frame: &[u8],
        now_ms: u64,
    ) -> Result<(Vec<u8>, FramePosition), FrameError> {
        let mut out = Vec::with_capacity(frame.len());
        let position = self.unprotect_at(frame, now_ms, &mut out)?;
        Ok((out, position))
    }

    /// Like [`FrameReceiver::unprotect`], writing the payload into `out` (cleared first) to
    /// reuse its allocation. On error `out` holds no plaintext.
    pub fn unprotect_into(
        &mut self,
        frame: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        self.unprotect_at(frame, now_ms, out).map(|_| ())
    }

    /// Like [`FrameReceiver::unprotect_into`], returning the frame's authenticated position.
    pub fn unprotect_at(
        &mut self,
        frame: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<FramePosition, FrameError> {
        out.clear();
        let result = self.unprotect_inner(frame, now_ms, out);
        if result.is_err() {
            out.clear();
        }
        match &result {
            Ok(_) => self.stats.accepted = self.stats.accepted.saturating_add(1),
            Err(e) => {
                if let Some(reason) = e.reject_reason() {
                    self.stats.count(reason);
                }
            }
        }
        result
    }

    /// The counts so far.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// The epoch of the newest key this receiver has followed.
    pub fn epoch(&self) -> u64 {
        self.current.cipher.epoch
    }

    fn unprotect_inner(
        &mut self,
        frame: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<FramePosition, FrameError> {
        if frame.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                len: frame.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let (header, header_len) = FrameHeader::parse(frame)?;
        if frame.len() < header_len.saturating_add(TAG_LEN) {
            return Err(FrameError::Malformed("shorter than header and tag"));
        }
        if header.key_id > 7 {
            return Err(FrameError::UnknownKeyId(header.key_id));
        }
        if header.key_id & 1 != self.direction.bit() {
            return Err(FrameError::Reflected);
        }
        if matches!(self.config.epoch_frames, Some(n) if header.counter >= n) {
            return Err(FrameError::Malformed("counter beyond the epoch length"));
        }
        if matches!(self.previous, Some((_, until)) if now_ms >= until) {
            self.previous = None;
        }
        let (aad, rest) = frame.split_at(header_len);
        let (ciphertext, tag) = rest.split_at(rest.len().saturating_sub(TAG_LEN));
        let tag = Tag::from_slice(tag);

        let counter = header.counter;
        let at = |epoch: u64| FramePosition { epoch, counter };
        match self.slot(header.key_id)? {
            KeySlot::Current => {
                open(&mut self.current, counter, aad, ciphertext, tag, out)?;
                Ok(at(self.current.cipher.epoch))
            }
            KeySlot::Previous => match self.previous.as_mut() {
                Some((epoch, _)) => {
                    open(epoch, counter, aad, ciphertext, tag, out)?;
                    Ok(at(epoch.cipher.epoch))
                }
                None => Err(FrameError::UnknownKeyId(header.key_id)),
            },
            KeySlot::Ahead(steps) => {
                let mut candidate = ReceiveEpoch {
                    cipher: self
                        .current
                        .cipher
                        .next()
                        .ok_or(FrameError::UnknownKeyId(header.key_id))?,
                    window: ReplayWindow::new(),
                };
                for _ in 1..steps {
                    candidate.cipher = candidate
                        .cipher
                        .next()
                        .ok_or(FrameError::UnknownKeyId(header.key_id))?;
                }
                open(&mut candidate, counter, aad, ciphertext, tag, out)?;
                let position = at(candidate.cipher.epoch);
                // Authenticated under the next key: follow the sender.
                let old = std::mem::replace(&mut self.current, candidate);
                let grace_end = now_ms.saturating_add(self.config.grace_period_ms);
                self.previous = (steps == 1).then_some((old, grace_end));
                self.stats.rekeys = self.stats.rekeys.saturating_add(1);
                Ok(position)
            }
        }
    }

    fn slot(&self, key_id: u64) -> Result<KeySlot, FrameError> {
        let current = self.current.cipher.epoch;
        let frame_epoch_mod = key_id >> 1;
        let ahead = frame_epoch_mod.wrapping_sub(current % 4) % 4;
        match ahead {
            0 => Ok(KeySlot::Current),
            3 if self.previous.is_some() => Ok(KeySlot::Previous),
            1 | 2 => Ok(KeySlot::Ahead(ahead)),
            _ => Err(FrameError::UnknownKeyId(key_id)),
        }
    }
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("direction", &self.direction)
            .field("epoch", &self.current.cipher.epoch)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Replay check, decrypt, then record: the window only learns authenticated counters.
fn open(
    epoch: &mut ReceiveEpoch,
    counter: u64,
    aad: &[u8],
    ciphertext: &[u8],
    tag: &Tag,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    epoch.window.check(counter)?;
    out.extend_from_slice(ciphertext);
    let nonce = epoch.cipher.nonce(counter);
    epoch
        .cipher
        .aead
        .decrypt_in_place_detached(&nonce, aad, out, tag)
        .map_err(|_| FrameError::AuthenticationFailed)?;
    epoch.window.mark(counter);
    Ok(())
}
