//! The per-path bench of issue 16: one real call on each kind of network a user meets, in
//! network namespaces (a VPS running `aparte-signaling` with TLS on 443 and its TURN relay, two
//! homes), and for each the figures a user would ask about: set-up time, whether it was relayed
//! and how the relay was reached, loss, one-way latency, the bitrate (and packet time) the call
//! settled on, and how well the speech was understood at the receiver (Whisper tiny.en WER of
//! what Bob heard, next to the WER of Alice's own file).
//!
//! ```sh
//! cargo build --bins && cargo build -p aparte-e2e-tests --example paths
//! sudo target/debug/examples/paths            # a table
//! sudo target/debug/examples/paths --json     # one JSON object per path
//! sudo target/debug/examples/paths --only ipv6-only,uplink-32k
//! ```
//!
//! Needs root (namespaces), iproute2, nftables, tc, espeak-ng (`scripts/install-deps`) and the
//! Whisper models (`scripts/install-models`, `APARTE_MODEL_DIR`). One-way latency is half the
//! RTT the RTCP reports measured (the namespaces add no delay of their own: what it shows is
//! queueing, relaying and the stack). A failed call is reported as such and the bench goes on;
//! it exits 1 if any path failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use aparte_e2e_tests::field::{transcript, Field, Running};
use aparte_e2e_tests::netns::{Nat, Topology, VPS_IP, VPS_IP6};
use aparte_e2e_tests::{read_stats, speak, WAIT};
use aparte_translate::wer::word_error_rate;

/// What Alice says on every path.
const SCRIPT: &str = "I am calling you from home to see how the line holds up. Tell me if you \
                      can hear every word I say, and whether the sound stays clear until the \
                      very end of this sentence.";

/// The name in the VPS's certificate (DEPLOY.md's own-CA recipe).
const VPS_NAME: &str = "signal.example.org";

/// One kind of network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Both people on home A's LAN.
    Lan,
    /// Two homes behind ordinary NAT (masquerade).
    Nat,
    /// Two homes behind symmetric NAT: only a relay connects them.
    SymmetricNat,
    /// Both homes forward no UDP but DNS; the server shares 443 with TURN over TLS.
    UdpBlocked,
    /// Two IPv6-only homes.
    Ipv6Only,
    /// Two IPv6-only homes that block UDP.
    Ipv6OnlyUdpBlocked,
    /// Alice's home gets a new public address mid-call.
    AddressChange,
    /// Alice's uplink is limited to this many kbit/s.
    Uplink(u32),
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Lan => "lan".into(),
            Kind::Nat => "nat".into(),
            Kind::SymmetricNat => "symmetric-nat".into(),
            Kind::UdpBlocked => "udp-blocked".into(),
            Kind::Ipv6Only => "ipv6-only".into(),
            Kind::Ipv6OnlyUdpBlocked => "ipv6-only-udp-blocked".into(),
            Kind::AddressChange => "address-change".into(),
            Kind::Uplink(k) => format!("uplink-{k}k"),
        }
    }
}

const ALL: [Kind; 9] = [
    Kind::Lan,
    Kind::Nat,
    Kind::SymmetricNat,
    Kind::UdpBlocked,
    Kind::Ipv6Only,
    Kind::Ipv6OnlyUdpBlocked,
    Kind::AddressChange,
    Kind::Uplink(64),
    Kind::Uplink(32),
];

/// The VPS and the homes for `kind`, with the server started.
fn field(kind: Kind) -> Field {
    let ipv6 = matches!(kind, Kind::Ipv6Only | Kind::Ipv6OnlyUdpBlocked);
    let mut topo = if ipv6 {
        Topology::build_ipv6_only()
    } else if kind == Kind::SymmetricNat {
        Topology::build(Nat::Symmetric)
    } else {
        Topology::build(Nat::Masquerade)
    };
    for home in [topo.a.host.clone(), topo.b.host.clone()] {
        topo.add_host_name(&home, VPS_NAME, if ipv6 { VPS_IP6 } else { VPS_IP });
    }
    if matches!(kind, Kind::UdpBlocked | Kind::Ipv6OnlyUdpBlocked) {
        Topology::block_udp(&topo.a);
        Topology::block_udp(&topo.b);
    }
    if let Kind::Uplink(kbit) = kind {
        Topology::limit_uplink(&topo.a, kbit);
    }
    let stun = format!("stun:{VPS_IP}:3478");
    let mut args = vec![
        "--listen",
        "[::]:443",
        "--turn-listen",
        "0.0.0.0:3478",
        "--turn-public-ip",
        VPS_IP,
        "--stun-url",
        &stun,
        "--turns-on-listen",
        "--turns-host",
        VPS_NAME,
    ];
    if ipv6 {
        args.extend(["--turn-listen6", "[::]:3478", "--turn-public-ip6", VPS_IP6]);
    }
    Field::start(topo, &format!("wss://{VPS_NAME}/ws"), &args)
}

/// The figures of one path.
#[derive(Debug, Default)]
struct Figures {
    ok: bool,
    why: String,
    setup_ms: Option<u64>,
    relayed: bool,
    pair: String,
    relay_transport: String,
    ip_version: Option<u64>,
    loss_percent: f64,
    loss_recent_percent: f64,
    one_way_ms: Option<f64>,
    bitrate_bps: u64,
    bitrate_lowest_bps: u64,
    packet_ms: Option<u64>,
    gap_ms: Option<u64>,
    wer_heard: f64,
    wer_file: f64,
    seconds: f64,
}

fn run(kind: Kind) -> Figures {
    let started = Instant::now();
    let field = field(kind);
    speak(SCRIPT, &field.path("alice.wav"));
    let (home_a, home_b) = (field.topo.a.host.clone(), field.topo.b.host.clone());
    let bob_home = if kind == Kind::Lan { &home_a } else { &home_b };
    let mut alice = field.person(&home_a, "alice", "bob");
    alice.wait_for("waiting for the peer", WAIT);
    let mut bob = field.person_saying(bob_home, "bob", "alice", "silence", &[]);
    let mut figures = Figures::default();
    let mut field = field;
    if kind == Kind::AddressChange {
        alice.wait_for("media flowing", WAIT);
        // A moment into the call (not a wait for an event: the scenario).
        std::thread::sleep(Duration::from_secs(3));
        Topology::renumber(&mut field.topo.a, "203.0.113.31");
    }
    let finished = [&mut alice, &mut bob].map(|p| p.finish(Duration::from_secs(120)));
    if kind == Kind::AddressChange {
        figures.gap_ms = gap_ms(&alice);
    }
    let (sa, sb) = (
        read_stats(&field.path("alice.json")),
        read_stats(&field.path("bob.json")),
    );
    figures.ok = finished.iter().all(|s| s.code() == Some(0))
        && sa["outcome"] == "completed"
        && sb["outcome"] == "completed";
    if !figures.ok {
        figures.why = format!(
            "alice: {} ({}); bob: {} ({})",
            sa["outcome"], sa["ended_by"], sb["outcome"], sb["ended_by"]
        );
    }
    figures.setup_ms = [&sa, &sb]
        .iter()
        .filter_map(|s| s["setup_ms"].as_u64())
        .max();
    figures.relayed = sa["relayed"] == true;
    figures.pair = format!(
        "{}→{}",
        sa["local_candidate"].as_str().unwrap_or("-"),
        sa["remote_candidate"].as_str().unwrap_or("-")
    );
    figures.relay_transport = [&sa, &sb]
        .iter()
        .filter_map(|s| s["relay_transport"].as_str())
        .collect::<Vec<_>>()
        .join("+");
    figures.ip_version = sa["path_ip_version"].as_u64();
    figures.loss_percent = sb["loss_percent"].as_f64().unwrap_or(f64::NAN);
    figures.loss_recent_percent = sa["peer_loss_percent_recent"].as_f64().unwrap_or(f64::NAN);
    figures.one_way_ms = sa["rtt_ms"].as_f64().map(|rtt| rtt / 2.0);
    figures.bitrate_bps = sa["bitrate_bps"].as_u64().unwrap_or(0);
    figures.bitrate_lowest_bps = sa["bitrate_lowest_bps"].as_u64().unwrap_or(0);
    figures.packet_ms = sa["packet_ms"].as_u64();
    figures.wer_file = word_error_rate(SCRIPT, &transcript(&field.path("alice.wav")));
    figures.wer_heard = if field.path("bob-heard.wav").exists() {
        word_error_rate(SCRIPT, &transcript(&field.path("bob-heard.wav")))
    } else {
        1.0
    };
    figures.seconds = started.elapsed().as_secs_f64();
    figures
}

/// The gap a call printed in "link back after N ms".
fn gap_ms(peer: &Running) -> Option<u64> {
    peer.seen.iter().find_map(|l| {
        let rest = l.split_once("link back after ")?.1;
        rest.split_once(" ms")?.0.trim().parse().ok()
    })
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let only: Option<Vec<String>> = args.iter().position(|a| a == "--only").map(|i| {
        args.get(i + 1)
            .unwrap_or_else(|| {
                eprintln!("error: --only needs a comma-separated list of paths");
                std::process::exit(2)
            })
            .split(',')
            .map(str::to_owned)
            .collect()
    });
    if let Some(unknown) = args
        .iter()
        .enumerate()
        .find(|(i, a)| *a != "--json" && *a != "--only" && !(*i > 0 && args[i - 1] == "--only"))
        .map(|(_, a)| a)
    {
        eprintln!("error: unknown argument {unknown:?} (use --json, --only a,b)");
        std::process::exit(2);
    }
    let kinds: Vec<Kind> = ALL
        .into_iter()
        .filter(|k| only.as_ref().is_none_or(|o| o.contains(&k.name())))
        .collect();
    if kinds.is_empty() {
        let names: Vec<String> = ALL.iter().map(|k| k.name()).collect();
        eprintln!("error: no such path; the paths are {}", names.join(", "));
        std::process::exit(2);
    }
    if !json {
        println!(
            "{:<22} {:>4} {:>8} {:>7} {:<12} {:<9} {:>4} {:>6} {:>6} {:>7} {:>13} {:>5} {:>6} {:>10}",
            "path", "ok", "setup ms", "relayed", "pair", "relay via", "IP", "loss%",
            "last%", "1-way ms", "bitrate (low)", "ptime", "gap ms", "WER heard/file"
        );
    }
    let mut failed = 0;
    for kind in kinds {
        eprintln!("… {}", kind.name());
        let f = run(kind);
        failed += usize::from(!f.ok);
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "path": kind.name(),
                    "ok": f.ok,
                    "why": f.why,
                    "setup_ms": f.setup_ms,
                    "relayed": f.relayed,
                    "pair": f.pair,
                    "relay_transport": f.relay_transport,
                    "ip_version": f.ip_version,
                    "loss_percent": f.loss_percent,
                    "loss_recent_percent": f.loss_recent_percent,
                    "one_way_ms": f.one_way_ms,
                    "bitrate_bps": f.bitrate_bps,
                    "bitrate_lowest_bps": f.bitrate_lowest_bps,
                    "packet_ms": f.packet_ms,
                    "gap_ms": f.gap_ms,
                    "wer_heard": f.wer_heard,
                    "wer_file": f.wer_file,
                    "seconds": f.seconds,
                })
            );
        } else {
            println!(
                "{:<22} {:>4} {:>8} {:>7} {:<12} {:<9} {:>4} {:>6.1} {:>6.1} {:>7} {:>6}k ({:>2}k) {:>5} {:>6} {:>5.1}/{:<4.1}{}",
                kind.name(),
                if f.ok { "yes" } else { "NO" },
                opt(f.setup_ms),
                f.relayed,
                f.pair,
                if f.relay_transport.is_empty() { "-" } else { &f.relay_transport },
                opt(f.ip_version),
                f.loss_percent,
                f.loss_recent_percent,
                opt(f.one_way_ms.map(|v| format!("{v:.1}"))),
                f.bitrate_bps / 1000,
                f.bitrate_lowest_bps / 1000,
                opt(f.packet_ms),
                opt(f.gap_ms),
                f.wer_heard * 100.0,
                f.wer_file * 100.0,
                if f.ok { String::new() } else { format!("  {}", f.why) },
            );
        }
    }
    if failed > 0 {
        eprintln!("error: {failed} path(s) failed");
        std::process::exit(1);
    }
}
