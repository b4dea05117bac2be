//! Checks this implementation byte for byte against `tests/vectors/v1.json`, which an
//! independent Python implementation of `docs/PROTOCOL.md` generated (`vectors/generate.py`).
//! Every handshake message, the transcript hash, the SAS, every epoch key and every protected
//! frame must match; the chain secrets are checked through the frames they produce.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aparte_e2ee::frame::ReceiverConfig;
use aparte_e2ee::frame::{FrameSender, SenderConfig};
use aparte_e2ee::handshake::{CallParams, Channels, Handshake};
use aparte_e2ee::identity::IdentityKey;
use aparte_e2ee::keys::{epoch_keys, next_chain, Secret32};
use common::FixedRng;
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    version: u8,
    suite: u16,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    room_id: String,
    initiator_fingerprint: String,
    responder_fingerprint: String,
    initiator_ephemeral_secret: String,
    responder_ephemeral_secret: String,
    initiator_identity_secret: Option<String>,
    responder_identity_secret: Option<String>,
    commit: String,
    response: String,
    reveal: String,
    confirm: String,
    transcript_hash: String,
    secrets: Secrets,
    sas_value: u32,
    sas_words: String,
    sas_digits: String,
    frames: Vec<Frame>,
}

#[derive(Deserialize)]
struct Secrets {
    media_i2r: String,
    media_r2i: String,
    data_i2r: String,
    data_r2i: String,
}

#[derive(Deserialize)]
struct Frame {
    chain: String,
    epoch: u64,
    counter: u64,
    payload: String,
    key: String,
    salt: String,
    frame: String,
}

fn bytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn key32(s: &str) -> [u8; 32] {
    bytes(s).try_into().unwrap()
}

fn load() -> File {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/v1.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn vectors_cover_the_cases_we_promise() {
    let file = load();
    assert_eq!(file.version, aparte_e2ee::PROTOCOL_VERSION);
    assert_eq!(
        file.suite,
        aparte_e2ee::SUITE_X25519_CHACHA20POLY1305_SHA256
    );
    let names: Vec<_> = file.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "no-identities",
            "both-identities",
            "initiator-identity-only"
        ]
    );
}

#[test]
fn handshake_messages_transcript_and_sas_match_byte_for_byte() {
    for case in load().cases {
        let (alice, bob) = run_case(&case);
        let info = alice.info();
        assert_eq!(
            hex::encode(info.transcript_hash()),
            case.transcript_hash,
            "{}",
            case.name
        );
        assert_eq!(bob.info().transcript_hash(), info.transcript_hash());
        assert_eq!(info.sas().value(), case.sas_value, "{}", case.name);
        assert_eq!(info.sas().words_string(), case.sas_words, "{}", case.name);
        assert_eq!(info.sas().digits(), case.sas_digits, "{}", case.name);
    }
}

#[test]
fn epoch_keys_and_protected_frames_match_byte_for_byte() {
    for case in load().cases {
        let (alice, bob) = run_case(&case);
        let config = SenderConfig {
            rekey_after_frames: None,
            ..SenderConfig::default()
        };
        let alice: Channels = alice.into_channels(config, ReceiverConfig::default());
        let bob: Channels = bob.into_channels(config, ReceiverConfig::default());
        let mut senders = [
            ("media_i2r", alice.media_sender, &case.secrets.media_i2r),
            ("media_r2i", bob.media_sender, &case.secrets.media_r2i),
            ("data_i2r", alice.data_sender, &case.secrets.data_i2r),
            ("data_r2i", bob.data_sender, &case.secrets.data_r2i),
        ];
        let mut checked = 0;
        for frame in &case.frames {
            let (_, sender, chain_hex) = senders
                .iter_mut()
                .find(|(name, ..)| *name == frame.chain)
                .unwrap();
            // The epoch's key and salt from the published chain secret.
            let mut chain = Secret32::from_bytes(key32(chain_hex));
            for _ in 0..frame.epoch {
                chain = next_chain(&chain);
            }
            let keys = epoch_keys(&chain);
            let what = format!(
                "{} {} e{} c{}",
                case.name, frame.chain, frame.epoch, frame.counter
            );
            assert_eq!(hex::encode(keys.key), frame.key, "{what}");
            assert_eq!(hex::encode(keys.salt), frame.salt, "{what}");
            // The frame from the handshake's own sender, advanced to (epoch, counter).
            assert_eq!(
                hex::encode(protect_at(
                    sender,
                    frame.epoch,
                    frame.counter,
                    &bytes(&frame.payload)
                )),
                frame.frame,
                "{what}"
            );
            checked += 1;
        }
        assert!(checked >= 10, "{}: only {checked} frames", case.name);
    }
}

fn protect_at(sender: &mut FrameSender, epoch: u64, counter: u64, payload: &[u8]) -> Vec<u8> {
    assert!(
        sender.epoch() <= epoch,
        "vectors must be in order per chain"
    );
    while sender.epoch() < epoch {
        sender.rekey().unwrap();
    }
    assert!(
        sender.next_counter() <= counter,
        "vectors must be in order per chain"
    );
    while sender.next_counter() < counter {
        sender.protect(&[]).unwrap();
    }
    sender.protect(payload).unwrap()
}

fn run_case(
    case: &Case,
) -> (
    aparte_e2ee::handshake::Session,
    aparte_e2ee::handshake::Session,
) {
    let room = bytes(&case.room_id);
    let fp_i = bytes(&case.initiator_fingerprint);
    let fp_r = bytes(&case.responder_fingerprint);
    let id = |s: &Option<String>| s.as_deref().map(|s| IdentityKey::from_bytes(key32(s)));
    let alice_id = id(&case.initiator_identity_secret);
    let bob_id = id(&case.responder_identity_secret);
    let alice_params = CallParams::new(room.clone(), fp_i.clone(), fp_r.clone()).unwrap();
    let bob_params = CallParams::new(room, fp_r, fp_i).unwrap();

    let mut rng = FixedRng(bytes(&case.initiator_ephemeral_secret));
    let (mut alice, commit) =
        Handshake::initiator(alice_params, alice_id.as_ref(), &mut rng).unwrap();
    let mut rng = FixedRng(bytes(&case.responder_ephemeral_secret));
    let mut bob = Handshake::responder(bob_params, bob_id.as_ref(), &mut rng).unwrap();
    assert_eq!(hex::encode(&commit), case.commit, "{} commit", case.name);
    let response = bob.receive(&commit).unwrap().unwrap();
    assert_eq!(
        hex::encode(&response),
        case.response,
        "{} response",
        case.name
    );
    let reveal = alice.receive(&response).unwrap().unwrap();
    assert_eq!(hex::encode(&reveal), case.reveal, "{} reveal", case.name);
    let confirm = bob.receive(&reveal).unwrap().unwrap();
    assert_eq!(hex::encode(&confirm), case.confirm, "{} confirm", case.name);
    assert!(alice.receive(&confirm).unwrap().is_none());
    (alice.finish().unwrap(), bob.finish().unwrap())
}
