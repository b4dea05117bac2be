//! Helpers shared by the e2ee integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use aparte_e2ee::handshake::{CallParams, Channels, Handshake, Session};
use aparte_e2ee::identity::IdentityKey;
use aparte_e2ee::{frame, HandshakeError};
use rand_core::{CryptoRng, OsRng, RngCore};

pub(crate) const ROOM: &[u8] = b"room-4f1c9a2e7b3d";
pub(crate) const FP_ALICE: &[u8] = b"sha-256 AA:AA:AA";
pub(crate) const FP_BOB: &[u8] = b"sha-256 BB:BB:BB";

/// Alice (initiator) and Bob (responder) parameters for an honest call.
pub(crate) fn params() -> (CallParams, CallParams) {
    (
        CallParams::new(ROOM.to_vec(), FP_ALICE.to_vec(), FP_BOB.to_vec()).unwrap(),
        CallParams::new(ROOM.to_vec(), FP_BOB.to_vec(), FP_ALICE.to_vec()).unwrap(),
    )
}

/// Runs a whole handshake between two state machines, relaying every message.
pub(crate) fn run(
    alice_params: CallParams,
    bob_params: CallParams,
    alice_id: Option<&IdentityKey>,
    bob_id: Option<&IdentityKey>,
) -> Result<(Session, Session), HandshakeError> {
    let (mut alice, commit) = Handshake::initiator(alice_params, alice_id, &mut OsRng)?;
    let mut bob = Handshake::responder(bob_params, bob_id, &mut OsRng)?;
    let response = bob.receive(&commit)?.expect("response");
    let reveal = alice.receive(&response)?.expect("reveal");
    let confirm = bob.receive(&reveal)?.expect("confirm");
    assert!(alice.receive(&confirm)?.is_none());
    Ok((alice.finish()?, bob.finish()?))
}

/// An honest call's channels: (alice, bob).
pub(crate) fn channels(
    sender: frame::SenderConfig,
    receiver: frame::ReceiverConfig,
) -> (Channels, Channels) {
    let (a, b) = params();
    let (alice, bob) = run(a, b, None, None).unwrap();
    (
        alice.into_channels(sender, receiver),
        bob.into_channels(sender, receiver),
    )
}

/// An RNG that hands out fixed bytes, so test vectors can pin the ephemeral keys.
pub(crate) struct FixedRng(pub Vec<u8>);

impl RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(self.0.len() >= dest.len(), "FixedRng ran out of bytes");
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FixedRng {}
