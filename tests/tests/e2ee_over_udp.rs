//! Cross-crate scenario over real loopback sockets: two endpoints run the e2ee handshake
//! over TCP (standing in for the signaling relay) and then exchange protected frames over UDP
//! through a hostile relay that records every byte, flips bits, replays and reorders.
//!
//! What must hold: the receiver accepts exactly the genuine frames, rejects and counts every
//! tampered or replayed one, and nothing the relay saw contains the plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use aparte_e2ee::frame::{ReceiverConfig, SenderConfig};
use aparte_e2ee::handshake::{CallParams, Channels, Handshake};
use aparte_e2ee::RejectReason;
use rand_core::OsRng;

const FRAMES: u32 = 400;
/// A marker inside every plaintext payload; the relay's capture must never contain it.
const MARKER: &[u8] = b"PLAINTEXT-OPUS-FRAME";

fn send_msg(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(&(msg.len() as u16).to_be_bytes()).unwrap();
    stream.write_all(msg).unwrap();
}

fn recv_msg(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut msg).unwrap();
    msg
}

/// Runs the handshake over a real TCP connection; returns (alice, bob) channels and SAS words.
fn handshake_over_tcp() -> (Channels, Channels, String, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let room = b"room-udp-test".to_vec();
    let (fp_a, fp_b) = (b"sha-256 AA".to_vec(), b"sha-256 BB".to_vec());

    let bob_params = CallParams::new(room.clone(), fp_b.clone(), fp_a.clone()).unwrap();
    let bob = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut hs = Handshake::responder(bob_params, None, &mut OsRng).unwrap();
        while !hs.is_complete() {
            let msg = recv_msg(&mut stream);
            if let Some(reply) = hs.receive(&msg).unwrap() {
                send_msg(&mut stream, &reply);
            }
        }
        hs.finish().unwrap()
    });

    let mut stream = TcpStream::connect(addr).unwrap();
    let alice_params = CallParams::new(room, fp_a, fp_b).unwrap();
    let (mut hs, commit) = Handshake::initiator(alice_params, None, &mut OsRng).unwrap();
    send_msg(&mut stream, &commit);
    while !hs.is_complete() {
        let msg = recv_msg(&mut stream);
        if let Some(reply) = hs.receive(&msg).unwrap() {
            send_msg(&mut stream, &reply);
        }
    }
    let alice = hs.finish().unwrap();
    let bob = bob.join().unwrap();
    let (sa, sb) = (
        alice.info().sas().words_string(),
        bob.info().sas().words_string(),
    );
    let config = (SenderConfig::default(), ReceiverConfig::default());
    (
        alice.into_channels(config.0, config.1),
        bob.into_channels(config.0, config.1),
        sa,
        sb,
    )
}

/// What the hostile relay did, so the test knows what the receiver must report.
#[derive(Default, Debug)]
struct RelayReport {
    captured: Vec<Vec<u8>>,
    forwarded_genuine: u32,
    injected_tampered: u32,
    injected_replays: u32,
}

#[test]
fn hostile_udp_relay_sees_only_ciphertext_and_every_attack_is_rejected() {
    let (mut alice, mut bob, sas_a, sas_b) = handshake_over_tcp();
    assert_eq!(sas_a, sas_b);

    let bob_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let alice_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    bob_sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    relay_sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let bob_addr = bob_sock.local_addr().unwrap();
    let relay_addr = relay_sock.local_addr().unwrap();

    // The relay: forwards each datagram; every 7th it also sends a bit-flipped copy first;
    // every 5th it sends again later (a replay); every 10th pair it swaps (reorder). It stops
    // after the sender's "end" datagram.
    let (report_tx, report_rx) = mpsc::channel();
    let relay = thread::spawn(move || {
        let mut report = RelayReport::default();
        let mut held: Option<Vec<u8>> = None;
        let mut buf = [0u8; 2048];
        let mut n_seen = 0u32;
        loop {
            let (n, _) = relay_sock.recv_from(&mut buf).unwrap();
            let datagram = buf[..n].to_vec();
            if datagram == b"end" {
                if let Some(h) = held.take() {
                    relay_sock.send_to(&h, bob_addr).unwrap();
                    report.forwarded_genuine += 1;
                }
                relay_sock.send_to(b"end", bob_addr).unwrap();
                break;
            }
            report.captured.push(datagram.clone());
            n_seen += 1;
            if n_seen.is_multiple_of(7) {
                let mut bad = datagram.clone();
                let bit = (n_seen as usize * 13) % (bad.len() * 8);
                bad[bit / 8] ^= 1 << (bit % 8);
                relay_sock.send_to(&bad, bob_addr).unwrap();
                report.injected_tampered += 1;
            }
            if n_seen.is_multiple_of(10) {
                held = Some(datagram.clone()); // deliver after the next one
            } else {
                relay_sock.send_to(&datagram, bob_addr).unwrap();
                report.forwarded_genuine += 1;
                if let Some(h) = held.take() {
                    relay_sock.send_to(&h, bob_addr).unwrap();
                    report.forwarded_genuine += 1;
                }
            }
            if n_seen.is_multiple_of(5) {
                relay_sock.send_to(&datagram, bob_addr).unwrap();
                report.injected_replays += 1;
            }
        }
        report_tx.send(report).unwrap();
    });

    // Alice sends FRAMES protected audio frames, then "end" (after all frames: one socket, in
    // order on loopback).
    let sender = thread::spawn(move || {
        for i in 0..FRAMES {
            let mut payload = MARKER.to_vec();
            payload.extend_from_slice(&i.to_be_bytes());
            payload.resize(60, 0xA5);
            let frame = alice.media_sender.protect(&payload).unwrap();
            alice_sock.send_to(&frame, relay_addr).unwrap();
        }
        alice_sock.send_to(b"end", relay_addr).unwrap();
    });

    let mut decoded = Vec::new();
    let mut received = 0u64;
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = bob_sock.recv_from(&mut buf).unwrap();
        if &buf[..n] == b"end" {
            break;
        }
        received += 1;
        if let Ok(payload) = bob.media_receiver.unprotect(&buf[..n], 0) {
            assert!(payload.starts_with(MARKER));
            decoded.push(u32::from_be_bytes(
                payload[MARKER.len()..MARKER.len() + 4].try_into().unwrap(),
            ));
        }
    }
    sender.join().unwrap();
    relay.join().unwrap();
    let report = report_rx.recv().unwrap();

    let stats = bob.media_receiver.stats();
    // Loopback UDP may drop under pressure; whatever arrived genuine was decoded exactly once.
    let mut unique = decoded.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), decoded.len(), "a frame was accepted twice");
    assert_eq!(stats.accepted as usize, decoded.len());
    assert!(
        decoded.len() as u32 >= report.forwarded_genuine * 9 / 10,
        "lost too many: {} of {}",
        decoded.len(),
        report.forwarded_genuine
    );
    assert!(report.injected_tampered > 0 && report.injected_replays > 0);
    assert!(stats.rejected(RejectReason::Forged) + stats.rejected(RejectReason::Malformed) >= 1);
    assert!(stats.rejected(RejectReason::Replayed) >= 1);
    assert_eq!(
        stats.accepted + stats.rejected_total(),
        received,
        "every datagram that arrived is either accepted or counted as rejected"
    );

    // The relay saw every frame, and not one contains the plaintext marker.
    assert_eq!(report.captured.len() as u32, FRAMES);
    for datagram in &report.captured {
        assert!(!datagram.windows(MARKER.len()).any(|w| w == MARKER));
    }
}
