//! The deployment of `tests/tests/field_deploy.rs`, held up for a caller outside Rust (the
//! browser's field test, `web/test/field.test.js`): two NATed homes and a VPS in network
//! namespaces (`aparte_e2e_tests::netns`), docs/DEPLOY.md's certificate and token blocks run
//! verbatim in DIR, and the signaling server on the VPS with TLS on 443 and its TURN relay, as
//! that test starts it. Needs root.
//!
//! `field_vps DIR [symmetric]` prints one JSON line
//! `{"vps_ip":…,"vps":NS,"home_a":NS,"home_b":NS,"room":…,"tokens":[…,…]}` once the server
//! listens, then holds everything until stdin closes, and tears it down.
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

use aparte_e2e_tests::field::{run_block, Running};
use aparte_e2e_tests::netns::{Nat, Topology, VPS_IP};
use aparte_e2e_tests::{binary, WAIT};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: field_vps DIR [symmetric]");
        std::process::exit(2);
    };
    let nat = match args.get(1).map(String::as_str) {
        None => Nat::Masquerade,
        Some("symmetric") => Nat::Symmetric,
        Some(other) => {
            eprintln!("unknown NAT {other} (symmetric, or nothing for masquerade)");
            std::process::exit(2);
        }
    };
    let topo = Topology::build(nat);
    // DEPLOY.md §4 Option D, §3 and §6, §5: as tests/tests/field_deploy.rs does.
    run_block("certificates", &dir, &[]);
    let rand_hex = || {
        let out = Command::new("openssl")
            .args(["rand", "-hex", "32"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (token_secret, turn_secret) = (rand_hex(), rand_hex());
    let mut server = Topology::command(&topo.vps, binary("aparte-signaling"));
    server
        .current_dir(&dir)
        .env("APARTE_TOKEN_SECRET", &token_secret)
        .env("APARTE_TURN_SECRET", &turn_secret)
        .args(["--listen", "0.0.0.0:443"])
        .args(["--tls-cert", "cert.pem", "--tls-key", "key.pem"])
        .args(["--turn-listen", "0.0.0.0:3478", "--turn-public-ip", VPS_IP])
        .args(["--stun-url", &format!("stun:{VPS_IP}:3478")]);
    let mut server = Running::start(server);
    server.wait_for("listening on https://", WAIT);
    let tokens = run_block(
        "tokens",
        &dir,
        &[("APARTE_TOKEN_SECRET", token_secret.as_str())],
    );
    let lines: Vec<&str> = tokens.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "room, two tokens: {tokens}");
    let room = lines[0].strip_prefix("room: ").expect("room: ID");
    let out = serde_json::json!({
        "vps_ip": VPS_IP,
        "vps": topo.vps,
        "home_a": topo.a.host,
        "home_b": topo.b.host,
        "room": room,
        "tokens": [lines[1], lines[2]],
    });
    println!("{out}");
    // Held until the caller closes stdin (or exits).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(server);
    drop(topo);
}
