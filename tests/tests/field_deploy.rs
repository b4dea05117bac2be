//! docs/DEPLOY.md followed end to end, the way a user meets it: the signaling server with its
//! TURN relay on a "VPS", TLS on port 443 with a certificate made by the commands in DEPLOY.md
//! ("Option D: your own CA"), join tokens minted on the VPS, and two peers in two "homes"
//! behind NAT routers, each placing `aparte call --server wss://…` with the CA file. All of it
//! in network namespaces (`aparte_e2e_tests::netns`), real processes, real sockets.
//!
//! Two kinds of home router: `masquerade` (a typical home NAT; peers may connect directly
//! through it) and `masquerade fully-random` (symmetric NAT: only the relay can connect them).
//! What must hold in both: both calls exit 0, show the same SAS, decrypt what the other sent,
//! reject nothing, and both reports agree on whether the call was relayed (under symmetric
//! NAT: both say relayed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use aparte_e2e_tests::field::{deploy_block, run_block, Running};
use aparte_e2e_tests::netns::{Nat, Topology, VPS_IP};
use aparte_e2e_tests::{binary, frames_rejected_total, read_stats, speak, WAIT};

fn call_between_homes(nat: Nat) {
    let topo = Topology::build(nat);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // DEPLOY.md §4 Option D: a CA and a certificate for the VPS, made on the VPS.
    run_block("certificates", d, &[]);
    // §3: the two secrets (`openssl rand -hex 32` each), then the server as in Option C (TLS
    // in the server itself, port 443) with the embedded TURN relay of §6.
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
        .current_dir(d)
        .env("APARTE_TOKEN_SECRET", &token_secret)
        .env("APARTE_TURN_SECRET", &turn_secret)
        .args(["--listen", "0.0.0.0:443"])
        .args(["--tls-cert", "cert.pem", "--tls-key", "key.pem"])
        .args(["--turn-listen", "0.0.0.0:3478", "--turn-public-ip", VPS_IP])
        .args(["--stun-url", &format!("stun:{VPS_IP}:3478")]);
    let mut server = Running::start(server);
    server.wait_for("listening on https://", WAIT);

    // §5: a room and one token per person, minted on the VPS.
    let tokens = run_block(
        "tokens",
        d,
        &[("APARTE_TOKEN_SECRET", token_secret.as_str())],
    );
    let lines: Vec<&str> = tokens.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "room, alice's token, bob's token: {tokens}");
    let room = lines[0].strip_prefix("room: ").expect("room: ID");
    let (alice_token, bob_token) = (lines[1], lines[2]);

    // Each person, at home, with the CA file handed over with the token (§9).
    speak(
        "Hello Bob, this is Alice, calling from home through the server.",
        &d.join("alice.wav"),
    );
    speak(
        "Hi Alice, Bob here, I hear you through two routers.",
        &d.join("bob.wav"),
    );
    let url = format!("wss://{VPS_IP}/ws");
    let person = |home: &str, name: &str, peer: &str, token: &str| {
        let mut cmd = Topology::command(home, binary("aparte"));
        cmd.current_dir(d)
            .env("APARTE_HOME", d.join(format!("home-{name}")))
            .args(["call", "--server", &url, "--ca-file", "ca.pem"])
            .arg(format!("--room={room}"))
            .args(["--token", token, "--peer", peer, "--tofu"])
            .args(["--input", &format!("{name}.wav")])
            .args(["--output", &format!("{name}-heard.wav")])
            .args(["--stats-json", &format!("{name}.json")]);
        Running::start(cmd)
    };
    let mut alice = person(&topo.a.host, "alice", "bob", alice_token);
    alice.wait_for("waiting for the peer", WAIT);
    let mut bob = person(&topo.b.host, "bob", "alice", bob_token);
    for p in [&mut alice, &mut bob] {
        let status = p.finish(Duration::from_secs(90));
        assert_eq!(status.code(), Some(0), "{nat:?}:\n{}", p.seen.join("\n"));
    }
    assert_eq!(alice.sas(), bob.sas(), "{nat:?}");
    let (sa, sb) = (
        read_stats(&d.join("alice.json")),
        read_stats(&d.join("bob.json")),
    );
    println!(
        "{nat:?}: alice {} -> {} ({}), bob {} -> {} ({}), setup {} / {} ms, TCP/TLS relays \
         opened at {} / {} ms",
        sa["local_candidate"],
        sa["remote_candidate"],
        sa["relayed"],
        sb["local_candidate"],
        sb["remote_candidate"],
        sb["relayed"],
        sa["setup_ms"],
        sb["setup_ms"],
        sa["stream_relays_opened_ms"],
        sb["stream_relays_opened_ms"]
    );
    for (me, other) in [(&sa, &sb), (&sb, &sa)] {
        assert_eq!(me["outcome"], "completed", "{me}");
        assert_eq!(frames_rejected_total(me), 0, "{me}");
        let sent = other["frames_sent"].as_u64().unwrap();
        let got = me["frames_decrypted"].as_u64().unwrap();
        assert!(
            sent > 100 && got * 100 >= sent * 95,
            "{got} of {sent}: {me}"
        );
        let lost = aparte_e2e_tests::assert_frames_add_up(me, other);
        println!(
            "{nat:?}: of {sent} frames sent, {got} decrypted, {} refused before the keys, {lost} \
             lost, {} dropped for latency",
            me["frames_refused"], me["frames_dropped_for_latency"]
        );
    }
    assert_eq!(sa["relayed"], sb["relayed"], "both sides agree: {sa}\n{sb}");
    if nat == Nat::Symmetric {
        assert_eq!(sa["relayed"], true, "symmetric NAT needs the relay: {sa}");
    }
    for (said, heard) in [
        ("bob.wav", "alice-heard.wav"),
        ("alice.wav", "bob-heard.wav"),
    ] {
        aparte_e2e_tests::call::assert_heard_matches_said(&d.join(said), &d.join(heard));
        // The start of the call is heard too: frames that beat the key confirmation are held
        // until it, not refused (issue 15; the first second used to score 0 in half the runs).
        let nccs = aparte_e2e_tests::call::segment_nccs(
            &aparte_media::wav::read_mono_48k(d.join(said)).unwrap(),
            &aparte_media::wav::read_mono_48k(d.join(heard)).unwrap(),
        );
        assert!(
            nccs[0] >= aparte_e2e_tests::call::MIN_MEDIAN_NCC,
            "{nat:?} {said} → {heard}: the first second scored {:.3}",
            nccs[0]
        );
    }
    for me in [&sa, &sb] {
        assert_eq!(
            me["frames_refused"], 0,
            "nothing refused before the keys: {me}"
        );
    }
    drop(server);
}

#[test]
fn a_tls_call_between_two_homes_behind_nat_follows_deploy_md() {
    call_between_homes(Nat::Masquerade);
}

#[test]
fn a_tls_call_between_two_homes_behind_symmetric_nat_is_relayed_on_both_sides() {
    call_between_homes(Nat::Symmetric);
}

/// The TURN relay of the UDP-blocked calls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Relay {
    /// The embedded relay over UDP only (no TURN over TCP/TLS at all).
    UdpOnly,
    /// The embedded relay, with TURN over TLS on the HTTPS port (DEPLOY.md's 443-only setup).
    EmbeddedOn443,
    /// coturn beside the signaling server, TURN over TLS on 5349, started by DEPLOY.md's own
    /// blocks ("coturn as the TURN server"); the signaling server runs no relay and hands out
    /// coturn's URLs with credentials under the shared secret.
    Coturn,
}

/// What a UDP-blocked call left behind: the two finished calls (alice, bob), their folder
/// (stats files) and one line per packet the VPS saw from the homes.
type Blocked = (Vec<Running>, tempfile::TempDir, Vec<String>);

/// Both homes behind an office firewall that forwards no UDP but DNS, the signaling server on
/// 443 with TLS, and the TURN relay `relay`.
fn udp_blocked_call(relay: Relay) -> Blocked {
    let topo = Topology::build(Nat::Masquerade);
    Topology::block_udp(&topo.a);
    Topology::block_udp(&topo.b);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_block("certificates", d, &[]);
    let turn_secret = "0123456789abcdef0123456789abcdef";
    let mut server = Topology::command(&topo.vps, binary("aparte-signaling"));
    server
        .current_dir(d)
        .env("APARTE_TURN_SECRET", turn_secret)
        .args([
            "--listen",
            "0.0.0.0:443",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ])
        .args(["--stun-url", &format!("stun:{VPS_IP}:3478")]);
    let mut coturn = None;
    match relay {
        Relay::UdpOnly | Relay::EmbeddedOn443 => {
            server
                .args(["--turn-listen", "0.0.0.0:3478", "--turn-public-ip", VPS_IP])
                .args(["--turn-tcp-listen", "off"]);
            if relay == Relay::EmbeddedOn443 {
                server.arg("--turns-on-listen");
            }
        }
        Relay::Coturn => {
            // DEPLOY.md's configuration block, then its foreground command, as written.
            run_block("coturn-config", d, &[("APARTE_TURN_SECRET", turn_secret)]);
            let mut run = Topology::command(&topo.vps, "sh");
            run.current_dir(d)
                .args(["-e", "-c", &deploy_block("coturn-run")]);
            let mut running = Running::start(run);
            running.wait_for("Total General servers", WAIT);
            coturn = Some(running);
            server
                .args(["--turn-url", &format!("turn:{VPS_IP}:3478?transport=udp")])
                .args(["--turn-url", &format!("turns:{VPS_IP}:5349?transport=tcp")]);
        }
    }
    let mut server = Running::start(server);
    server.wait_for("listening on https://", WAIT);
    // Everything the homes send to the VPS, as the VPS sees it.
    let mut capture = Topology::command(&topo.vps, "tcpdump");
    capture
        .args(["-n", "-l", "-i", "eth0", "-q"])
        .arg("src host 203.0.113.21 or src host 203.0.113.22");
    let mut capture = Running::start(capture);
    capture.wait_for("listening on eth0", WAIT);
    let room = aparte_e2e_tests::new_room();
    let url = format!("wss://{VPS_IP}/ws");
    let person = |home: &str, name: &str| {
        let mut cmd = Topology::command(home, binary("aparte"));
        cmd.current_dir(d)
            .env("APARTE_HOME", d.join(format!("home-{name}")))
            .args(["call", "--server", &url, "--ca-file", "ca.pem"])
            .arg(format!("--room={room}"))
            .args(["--tofu", "--input", "tone", "--duration", "4"])
            .args(["--stats-json", &format!("{name}.json")]);
        Running::start(cmd)
    };
    let mut alice = person(&topo.a.host, "alice");
    alice.wait_for("waiting for the peer", WAIT);
    let bob = person(&topo.b.host, "bob");
    let mut calls = vec![alice, bob];
    for p in &mut calls {
        p.finish(Duration::from_secs(60));
    }
    // What the VPS saw from the homes, one line per packet.
    let _ = Command::new("kill")
        .args(["-INT", &capture.child.id().to_string()])
        .status();
    capture.finish(WAIT);
    let seen = capture.seen.clone();
    drop(server);
    drop(coturn);
    drop(topo);
    (calls, dir, seen)
}

/// The assertions of a UDP-blocked call that must go through a stream relay: both calls exit
/// 0 relayed, decrypt the peer's frames, every frame is accounted for, and the VPS saw from the
/// homes only TCP to `ports` (with each of `ports` used).
fn assert_relayed_over_tcp_only(blocked: Blocked, ports: &[u16]) {
    let (mut calls, dir, seen) = blocked;
    for (name, p) in ["alice", "bob"].iter().zip(&mut calls) {
        let status = p.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{name}:\n{}", p.seen.join("\n"));
        let s = read_stats(&dir.path().join(format!("{name}.json")));
        assert_eq!(s["relayed"], true, "{s}");
        assert!(s["frames_decrypted"].as_u64().unwrap() > 100, "{s}");
        // UDP first: the relays over TCP/TLS were held, then opened for lack of a UDP path.
        assert!(s["stream_relays_opened_ms"].is_u64(), "{s}");
        assert_eq!(s["relay_transport"], "tls", "{s}");
        println!(
            "{name}: {} -> {}, setup {} ms (TCP/TLS relays opened at {} ms), decrypted {} of the \
             peer's frames",
            s["local_candidate"],
            s["remote_candidate"],
            s["setup_ms"],
            s["stream_relays_opened_ms"],
            s["frames_decrypted"]
        );
    }
    let (sa, sb) = (
        read_stats(&dir.path().join("alice.json")),
        read_stats(&dir.path().join("bob.json")),
    );
    aparte_e2e_tests::assert_frames_add_up(&sa, &sb);
    aparte_e2e_tests::assert_frames_add_up(&sb, &sa);
    // ICMP errors the home routers send back (port unreachable, for datagrams the relay
    // tried towards the homes' other candidates) are the routers', not the peers' traffic.
    let packets: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains(" > ") && !l.contains(": ICMP "))
        .collect();
    let icmp = seen.iter().filter(|l| l.contains(": ICMP ")).count();
    let to_port =
        |l: &str, port: u16| l.contains(" tcp ") && l.contains(&format!("{VPS_IP}.{port}:"));
    let off: Vec<&&String> = packets
        .iter()
        .filter(|l| !ports.iter().any(|&p| to_port(l, p)))
        .collect();
    let per_port: Vec<(u16, usize)> = ports
        .iter()
        .map(|&p| (p, packets.iter().filter(|l| to_port(l, p)).count()))
        .collect();
    println!(
        "the VPS saw {} packets from the peers, TCP per port {per_port:?}, {} others (and \
         {icmp} ICMP errors from the home routers)",
        packets.len(),
        off.len()
    );
    assert!(
        packets.len() > 200,
        "the capture saw the call: {}",
        packets.len()
    );
    assert!(
        off.is_empty(),
        "only TCP to {ports:?} from the homes: {:?}",
        &off[..off.len().min(5)]
    );
    for (port, n) in &per_port {
        assert!(*n > 0, "nothing to TCP port {port}: {per_port:?}");
    }
}

/// UDP blocked at both homes, TURN over TLS on 443: the call connects through the in-process
/// tunnel (webrtc-rs's relay candidates over TLS), and the VPS sees the homes use TCP 443 only.
#[test]
fn with_udp_blocked_a_call_goes_through_turn_over_tls_on_443() {
    assert_relayed_over_tcp_only(udp_blocked_call(Relay::EmbeddedOn443), &[443]);
}

/// The same against coturn (Debian's `turnserver`) as the TURN server, deployed as DEPLOY.md
/// says: TURN over TLS on 5349 beside the signaling server on 443. The homes reach the VPS
/// over TCP only, to 443 (signaling) and 5349 (coturn), and the call is relayed by coturn.
#[test]
fn with_udp_blocked_a_call_goes_through_coturn_over_tls_on_5349() {
    assert_relayed_over_tcp_only(udp_blocked_call(Relay::Coturn), &[443, 5349]);
}

/// UDP blocked at both homes and no TURN over TCP/TLS: no path exists. The call must fail
/// loudly, well before anyone waits forever: exit 4 (no network path), a line that says the
/// relay gave no candidate and UDP is probably blocked, and the stats written.
#[test]
fn with_udp_blocked_and_no_stream_relay_a_call_fails_with_exit_4_and_says_why() {
    let (mut calls, dir, _) = udp_blocked_call(Relay::UdpOnly);
    for (name, p) in ["alice", "bob"].iter().zip(&mut calls) {
        let status = p.child.wait().unwrap();
        let all = p.seen.join("\n");
        assert_eq!(status.code(), Some(4), "{name}:\n{all}");
        assert!(
            all.contains("no relay candidate from the TURN server at")
                && all.contains("is UDP to it blocked"),
            "{name}:\n{all}"
        );
        let s = read_stats(&dir.path().join(format!("{name}.json")));
        assert_eq!(s["outcome"], "no_path", "{s}");
        assert_eq!(s["frames_sent"], 0, "{s}");
        println!("{name}: {}", s["ended_by"]);
    }
}
