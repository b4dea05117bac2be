//! One endpoint of the e2ee protocol driven line by line over stdin/stdout, so another
//! implementation (the browser peer's JavaScript, `web/test/interop.test.js`) can run a
//! handshake and exchange frames with this crate. Test tool only: it prints the SAS and
//! frames, which a real endpoint never does.
//!
//! Usage: `interop initiator|responder ROOM_HEX LOCAL_FP_HEX REMOTE_FP_HEX [IDENTITY_HEX]`.
//!
//! Input lines: `hs HEX` (a handshake message from the peer), `seal media|data HEX` (protect a
//! payload), `span N HEX` (protect a media payload as a packet of N 20 ms frames, as the CLI
//! does at its 40 and 60 ms packet times: `FrameSender::protect_span`), `open media|data HEX`
//! (verify and decrypt a frame), `quit`.
//! Output lines: `hs HEX` (send to the peer), `done SAS_VALUE PEER_IDENTITY_HEX|-` (keys
//! confirmed), `frame HEX`, `plain HEX`, `reject REASON`, `error WHAT`; a line `.` ends the
//! answer to each input line (and the start-up output).
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, Write};

use aparte_e2ee::frame::{ReceiverConfig, SenderConfig};
use aparte_e2ee::handshake::{CallParams, Channels, Handshake};
use aparte_e2ee::identity::IdentityKey;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!(
            "usage: interop initiator|responder ROOM_HEX LOCAL_FP_HEX REMOTE_FP_HEX [IDENTITY_HEX]"
        );
        std::process::exit(2);
    }
    let hex = |s: &str| hex::decode(s).expect("hex argument");
    let params = CallParams::new(hex(&args[1]), hex(&args[2]), hex(&args[3])).expect("params");
    let identity = args
        .get(4)
        .map(|s| IdentityKey::from_bytes(hex(s).try_into().expect("32-byte identity")));
    let mut out = std::io::stdout().lock();
    let mut rng = rand_core::OsRng;
    let mut handshake = Some(match args[0].as_str() {
        "initiator" => {
            let (hs, commit) = Handshake::initiator(params, identity.as_ref(), &mut rng).unwrap();
            writeln!(out, "hs {}", hex::encode(commit)).unwrap();
            writeln!(out, ".").unwrap();
            hs
        }
        "responder" => {
            writeln!(out, ".").unwrap();
            Handshake::responder(params, identity.as_ref(), &mut rng).unwrap()
        }
        other => panic!("unknown role {other}"),
    });
    out.flush().unwrap();
    let mut channels: Option<Channels> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut words = line.split(' ');
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("quit"), ..) => break,
            (Some("span"), Some(span), Some(data)) => match (channels.as_mut(), span.parse()) {
                (None, _) => "error no keys yet".to_owned(),
                (_, Err(_)) => "error bad span".to_owned(),
                (Some(c), Ok(span)) => frame(
                    c.media_sender
                        .protect_span(&hex::decode(data).unwrap_or_default(), span),
                ),
            },
            (Some("hs"), Some(data), None) => on_handshake(
                &mut handshake,
                &mut channels,
                &hex::decode(data).unwrap_or_default(),
            ),
            (Some(op @ ("seal" | "open")), Some(chain), Some(data)) => match channels.as_mut() {
                None => "error no keys yet".to_owned(),
                Some(c) => {
                    let data = hex::decode(data).unwrap_or_default();
                    match (op, chain) {
                        ("seal", "media") => frame(c.media_sender.protect(&data)),
                        ("seal", "data") => frame(c.data_sender.protect(&data)),
                        ("open", "media") => plain(c.media_receiver.unprotect(&data, 0)),
                        ("open", "data") => plain(c.data_receiver.unprotect(&data, 0)),
                        _ => "error unknown chain".to_owned(),
                    }
                }
            },
            _ => "error unknown command".to_owned(),
        };
        if !reply.is_empty() {
            writeln!(out, "{reply}").unwrap();
        }
        writeln!(out, ".").unwrap();
        out.flush().unwrap();
    }
}

fn on_handshake(
    handshake: &mut Option<Handshake>,
    channels: &mut Option<Channels>,
    bytes: &[u8],
) -> String {
    let Some(hs) = handshake.as_mut() else {
        return "error handshake over".to_owned();
    };
    let mut lines = Vec::new();
    match hs.receive(bytes) {
        Ok(Some(reply)) => lines.push(format!("hs {}", hex::encode(reply))),
        Ok(None) => {}
        Err(e) => return format!("error {e}"),
    }
    if hs.is_complete() {
        let session = handshake.take().unwrap().finish().unwrap();
        let info = session.info();
        let peer = info
            .peer_identity()
            .map_or_else(|| "-".to_owned(), |p| p.to_hex());
        lines.push(format!("done {} {peer}", info.sas().value()));
        *channels = Some(session.into_channels(SenderConfig::default(), ReceiverConfig::default()));
    }
    lines.join("\n")
}

fn frame(result: Result<Vec<u8>, aparte_e2ee::FrameError>) -> String {
    match result {
        Ok(f) => format!("frame {}", hex::encode(f)),
        Err(e) => format!("error {e}"),
    }
}

fn plain(result: Result<Vec<u8>, aparte_e2ee::FrameError>) -> String {
    match result {
        Ok(p) => format!("plain {}", hex::encode(p)),
        Err(e) => format!(
            "reject {}",
            e.reject_reason().map_or("other", |r| r.as_str())
        ),
    }
}
