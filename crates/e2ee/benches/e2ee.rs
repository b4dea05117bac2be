//! Criterion benchmarks for the e2ee core, each next to its baseline:
//! protect+unprotect of 20, 60 and 120-byte frames against a bare `chacha20poly1305`
//! encrypt+decrypt of the same sizes (same run, same buffers), and a whole handshake.
//! Run: `cargo bench -p aparte-e2ee --bench e2ee`. Overhead bytes: `cargo run --release -p
//! aparte-e2ee --example overhead -- --json`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use aparte_e2ee::frame::{ReceiverConfig, SenderConfig};
use aparte_e2ee::handshake::{CallParams, Handshake};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand_core::OsRng;
use std::hint::black_box;

fn params() -> (CallParams, CallParams) {
    let room = b"room-4f1c9a2e7b3d".to_vec();
    let (a, b) = (b"sha-256 AA:AA".to_vec(), b"sha-256 BB:BB".to_vec());
    (
        CallParams::new(room.clone(), a.clone(), b.clone()).unwrap(),
        CallParams::new(room, b, a).unwrap(),
    )
}

fn handshake() -> (
    aparte_e2ee::handshake::Session,
    aparte_e2ee::handshake::Session,
) {
    let (a, b) = params();
    let (mut alice, commit) = Handshake::initiator(a, None, &mut OsRng).unwrap();
    let mut bob = Handshake::responder(b, None, &mut OsRng).unwrap();
    let response = bob.receive(&commit).unwrap().unwrap();
    let reveal = alice.receive(&response).unwrap().unwrap();
    let confirm = bob.receive(&reveal).unwrap().unwrap();
    alice.receive(&confirm).unwrap();
    (alice.finish().unwrap(), bob.finish().unwrap())
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for size in [20usize, 60, 120] {
        group.throughput(Throughput::Elements(1));
        let payload = vec![0x42u8; size];

        let (alice, bob) = handshake();
        let mut alice = alice.into_channels(SenderConfig::default(), ReceiverConfig::default());
        let mut bob = bob.into_channels(SenderConfig::default(), ReceiverConfig::default());
        let (mut frame, mut plain) = (Vec::with_capacity(256), Vec::with_capacity(256));
        group.bench_with_input(
            BenchmarkId::new("protect+unprotect", size),
            &size,
            |b, _| {
                b.iter(|| {
                    alice
                        .media_sender
                        .protect_into(black_box(&payload), &mut frame)
                        .unwrap();
                    bob.media_receiver
                        .unprotect_into(black_box(&frame), 0, &mut plain)
                        .unwrap();
                })
            },
        );

        let aead = ChaCha20Poly1305::new(&[7u8; 32].into());
        let mut counter = 0u64;
        let aad = [0x19u8, 1, 0];
        let mut buffer = Vec::with_capacity(256);
        group.bench_with_input(
            BenchmarkId::new("bare_chacha20poly1305", size),
            &size,
            |b, _| {
                b.iter(|| {
                    counter += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&counter.to_be_bytes());
                    buffer.clear();
                    buffer.extend_from_slice(black_box(&payload));
                    let tag = aead
                        .encrypt_in_place_detached(&nonce.into(), &aad, &mut buffer)
                        .unwrap();
                    aead.decrypt_in_place_detached(&nonce.into(), &aad, &mut buffer, &tag)
                        .unwrap();
                })
            },
        );
    }
    group.finish();
}

fn handshakes(c: &mut Criterion) {
    c.bench_function("handshake/both_sides_no_identity", |b| b.iter(handshake));
}

criterion_group!(benches, frames, handshakes);
criterion_main!(benches);
