//! Calls between two **IPv6-only** homes (issue 16), in the field: a dual-stack VPS running
//! `aparte-signaling` with TLS on 443 (`--listen [::]:443`) and its TURN relay, reached by its
//! IPv6 address or by name (`signal.example.org`, which resolves to that address only), two
//! homes with global IPv6 addresses behind stateful firewalls and no IPv4 at all, real
//! `aparte` processes (`aparte_e2e_tests::netns::Topology::build_ipv6_only`).
//!
//! - **Direct:** each side gathers its IPv6 address as a host candidate; ICE's checks, sent
//!   by both sides at once, open both firewalls, and the call runs host to host over IPv6.
//! - **Relayed over UDP:** with `--relay-only` on both sides and no TURN over TLS offered, the
//!   only way is the relay's IPv6 UDP port (`--turn-listen6`). webrtc-rs cannot send UDP TURN
//!   over IPv6, so the client's tunnel carries it (docs/WEBRTC.md §9).
//! - **An IPv6-only office:** both homes forward no UDP at all (but DNS), so the relay is
//!   reached by TURN over TLS on 443, over IPv6.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aparte_e2e_tests::field::Field;
use aparte_e2e_tests::netns::{Topology, VPS_IP, VPS_IP6};
use aparte_e2e_tests::{frames_rejected_total, read_stats, speak, WAIT};

/// One network setup at a time: each call is two calls' worth of CPU on a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The name in the VPS's certificate (DEPLOY.md's own-CA recipe).
const VPS_NAME: &str = "signal.example.org";

/// The three ways between two IPv6-only homes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Host to host.
    Direct,
    /// Both relay-only; the relay offers UDP only (IPv4 and IPv6).
    RelayedUdp,
    /// Both homes block UDP; the relay also offers TURN over TLS on 443.
    RelayedTls,
}

fn ipv6_call(path: Path) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut topo = Topology::build_ipv6_only();
    for home in [topo.a.host.clone(), topo.b.host.clone()] {
        topo.add_host_name(&home, VPS_NAME, VPS_IP6);
    }
    if path == Path::RelayedTls {
        Topology::block_udp(&topo.a);
        Topology::block_udp(&topo.b);
    }
    let mut server_args = vec![
        // Both families on one socket: IPv6 clients, and IPv4 ones as mapped addresses.
        "--listen",
        "[::]:443",
        "--turn-listen",
        "0.0.0.0:3478",
        "--turn-public-ip",
        VPS_IP,
        // The relay's UDP port on IPv6 too (its relayed addresses stay IPv4).
        "--turn-listen6",
        "[::]:3478",
        "--turn-public-ip6",
        VPS_IP6,
    ];
    if path != Path::RelayedUdp {
        // TURN over TLS on 443, for clients that cannot use the relay's UDP port.
        server_args.extend(["--turns-on-listen", "--turns-host", VPS_NAME]);
    }
    // The direct call reaches the server by its address (DEPLOY.md's certificate names it),
    // the others by name.
    let server_url = if path == Path::Direct {
        format!("wss://[{VPS_IP6}]/ws")
    } else {
        format!("wss://{VPS_NAME}/ws")
    };
    let field = Field::start(topo, &server_url, &server_args);
    let words = "Neither of our homes has an IPv4 address any more. The call should find its \
                 way over IPv6 all the same, with the same keys and the same code on both \
                 screens, and every word should arrive.";
    speak(words, &field.path("alice.wav"));
    speak(words, &field.path("bob.wav"));
    let extra: &[&str] = if path == Path::RelayedUdp {
        &["--relay-only"]
    } else {
        &[]
    };
    let mut alice = field.person_saying(&field.topo.a.host, "alice", "bob", "alice.wav", extra);
    alice.wait_for("waiting for the peer", WAIT);
    let mut bob = field.person_saying(&field.topo.b.host, "bob", "alice", "bob.wav", extra);
    for p in [&mut alice, &mut bob] {
        let status = p.finish(Duration::from_secs(90));
        assert_eq!(status.code(), Some(0), "{}", p.seen.join("\n"));
    }
    assert_eq!(alice.sas(), bob.sas());
    let (sa, sb) = (
        read_stats(&field.path("alice.json")),
        read_stats(&field.path("bob.json")),
    );
    for (name, me, other) in [("alice", &sa, &sb), ("bob", &sb, &sa)] {
        println!(
            "IPv6-only homes, {path:?}: {name} set-up {} ms, pair {} -> {} over IPv{} \
             (our relay over {}), decrypted {} of {} sent",
            me["setup_ms"],
            me["local_candidate"],
            me["remote_candidate"],
            me["path_ip_version"],
            me["relay_transport"],
            me["frames_decrypted"],
            other["frames_sent"],
        );
        assert_eq!(me["outcome"], "completed", "{me}");
        assert_eq!(frames_rejected_total(me), 0, "{me}");
        aparte_e2e_tests::assert_frames_add_up(me, other);
        if path != Path::Direct {
            assert_eq!(me["relayed"], true, "{name}: {me}");
            assert_eq!(me["local_candidate"], "relay", "{name}: {me}");
            let way = if path == Path::RelayedTls {
                "tls"
            } else {
                "udp"
            };
            assert_eq!(me["relay_transport"], way, "{name}: {me}");
        } else {
            assert_eq!(me["relayed"], false, "{name}: {me}");
            assert_eq!(me["local_candidate"], "host", "{name}: {me}");
            assert_eq!(me["path_ip_version"], 6, "{name}: {me}");
        }
    }
    aparte_e2e_tests::call::assert_heard_matches_said(
        &field.path("alice.wav"),
        &field.path("bob-heard.wav"),
    );
    aparte_e2e_tests::call::assert_heard_matches_said(
        &field.path("bob.wav"),
        &field.path("alice-heard.wav"),
    );
}

#[test]
fn between_ipv6_only_homes_a_call_runs_host_to_host_over_ipv6() {
    ipv6_call(Path::Direct);
}

#[test]
fn between_ipv6_only_homes_a_relay_only_call_uses_the_relay_over_ipv6_udp() {
    ipv6_call(Path::RelayedUdp);
}

#[test]
fn between_ipv6_only_offices_that_block_udp_a_call_goes_through_turn_over_tls_on_443() {
    ipv6_call(Path::RelayedTls);
}
