//! Prints the e2ee overhead (protected frame length minus payload length) of real frames at
//! counters 0, 2^8, 2^16 and 2^24, measured by protecting that many frames.
//! Run: `cargo run --release -p aparte-e2ee --example overhead -- --json`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use aparte_e2ee::frame::{Direction, FrameSender, SenderConfig};
use aparte_e2ee::keys::Secret32;

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let config = SenderConfig {
        rekey_after_frames: None,
        ..SenderConfig::default()
    };
    let mut sender = FrameSender::new(
        Direction::InitiatorToResponder,
        Secret32::from_bytes([1; 32]),
        config,
    );
    let payload = [0u8; 60];
    let mut frame = Vec::new();
    let mut rows = Vec::new();
    for target in [0u64, 1 << 8, 1 << 16, 1 << 24] {
        while sender.next_counter() < target {
            sender.protect_into(&[], &mut frame).unwrap();
        }
        sender.protect_into(&payload, &mut frame).unwrap();
        rows.push((target, frame.len() - payload.len()));
    }
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|(c, o)| format!("{{\"counter\":{c},\"overhead_bytes\":{o}}}"))
            .collect();
        println!("{{\"payload_bytes\":60,\"frames\":[{}]}}", items.join(","));
    } else {
        for (c, o) in rows {
            println!("counter {c:>10}: {o} bytes of overhead");
        }
    }
}
