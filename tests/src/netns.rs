//! "Two homes and a VPS" on one machine: network namespaces joined by a bridge that stands for
//! the internet, each home behind its own NAT router (nftables `masquerade`, optionally
//! `fully-random`, which gives a symmetric NAT). Tests run real processes inside them with
//! `ip netns exec`, so a call crosses NATs the way it does between two real homes.
//!
//! ```text
//!                       "internet" bridge 203.0.113.0/24 (namespace P-inet)
//!          ┌──────────────────┬──────────────────┬─────────────────┐
//!     vps 203.0.113.10   router A .21        router B .22
//!   (namespace P-vps)   (P-ra, NAT)         (P-rb, NAT)
//!                           │ 192.168.1.1        │ 192.168.2.1
//!                       home A 192.168.1.2   home B 192.168.2.2
//!                        (P-a)                (P-b)
//! ```
//!
//! Every address lives in namespaces this module creates; nothing is sent anywhere else. The
//! namespaces (and with them every interface and rule) are removed on drop. Needs root,
//! iproute2 and nftables (`scripts/install-deps`).

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The VPS's public address.
pub const VPS_IP: &str = "203.0.113.10";

/// How each home router translates addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// `masquerade`: one public port per inside address and port (a typical home router).
    Masquerade,
    /// `masquerade fully-random`: a new public port per destination (symmetric NAT), so only
    /// a relay can connect two such homes.
    Symmetric,
}

/// One home: the router's and the host's namespaces and addresses.
#[derive(Debug, Clone)]
pub struct Home {
    /// The host's namespace (run the peer here).
    pub host: String,
    /// The router's namespace.
    pub router: String,
    /// The router's public address.
    pub public_ip: String,
    /// The host's address on the home LAN.
    pub lan_ip: String,
}

/// The namespaces of one topology; removed on drop.
#[derive(Debug)]
pub struct Topology {
    /// The VPS's namespace.
    pub vps: String,
    /// Home A.
    pub a: Home,
    /// Home B.
    pub b: Home,
    namespaces: Vec<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output if it fails.
fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required (scripts/install-deps): {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run("ip", args);
}

fn in_ns(ns: &str, program: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all);
}

impl Topology {
    /// Builds the VPS and two homes behind `nat`.
    pub fn build(nat: Nat) -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        // Short and unique per test process: interface names are at most 15 bytes.
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let name = |role: &str| format!("ap{tag}-{role}");
        let mut topo = Topology {
            vps: name("vps"),
            a: Home {
                host: name("a"),
                router: name("ra"),
                public_ip: "203.0.113.21".into(),
                lan_ip: "192.168.1.2".into(),
            },
            b: Home {
                host: name("b"),
                router: name("rb"),
                public_ip: "203.0.113.22".into(),
                lan_ip: "192.168.2.2".into(),
            },
            namespaces: Vec::new(),
        };
        let inet = name("inet");
        for ns in [
            &inet,
            &topo.vps,
            &topo.a.router,
            &topo.a.host,
            &topo.b.router,
            &topo.b.host,
        ] {
            ip(&["netns", "add", ns]);
            topo.namespaces.push(ns.clone());
            in_ns(ns, "ip", &["link", "set", "lo", "up"]);
        }
        in_ns(&inet, "ip", &["link", "add", "br0", "type", "bridge"]);
        in_ns(&inet, "ip", &["link", "set", "br0", "up"]);
        // A veth pair from `ns` (named `inside` there, with `addr`) to the bridge.
        let mut k = 0;
        let mut wire = |ns: &str, inside: &str, addr: &str, other_ns: &str, other: &str| {
            k += 1;
            let (x, y) = (format!("v{tag}x{k}"), format!("v{tag}y{k}"));
            ip(&["link", "add", &x, "type", "veth", "peer", "name", &y]);
            ip(&["link", "set", &x, "netns", ns]);
            ip(&["link", "set", &y, "netns", other_ns]);
            in_ns(ns, "ip", &["link", "set", &x, "name", inside]);
            in_ns(other_ns, "ip", &["link", "set", &y, "name", other]);
            in_ns(ns, "ip", &["addr", "add", addr, "dev", inside]);
            in_ns(ns, "ip", &["link", "set", inside, "up"]);
            in_ns(other_ns, "ip", &["link", "set", other, "up"]);
        };
        wire(&topo.vps, "eth0", &format!("{VPS_IP}/24"), &inet, "p-vps");
        in_ns(&inet, "ip", &["link", "set", "p-vps", "master", "br0"]);
        for (home, port, lan_net) in [(&topo.a, "p-a", "192.168.1"), (&topo.b, "p-b", "192.168.2")]
        {
            wire(
                &home.router,
                "wan",
                &format!("{}/24", home.public_ip),
                &inet,
                port,
            );
            in_ns(&inet, "ip", &["link", "set", port, "master", "br0"]);
            wire(
                &home.host,
                "eth0",
                &format!("{}/24", home.lan_ip),
                &home.router,
                "lan",
            );
            in_ns(
                &home.router,
                "ip",
                &["addr", "add", &format!("{lan_net}.1/24"), "dev", "lan"],
            );
            in_ns(
                &home.host,
                "ip",
                &["route", "add", "default", "via", &format!("{lan_net}.1")],
            );
            in_ns(
                &home.router,
                "sysctl",
                &["-q", "-w", "net.ipv4.ip_forward=1"],
            );
            in_ns(&home.router, "nft", &["add table ip nat"]);
            in_ns(
                &home.router,
                "nft",
                &["add chain ip nat post { type nat hook postrouting priority 100 ; }"],
            );
            let masquerade = if nat == Nat::Symmetric {
                "add rule ip nat post oifname wan masquerade fully-random"
            } else {
                "add rule ip nat post oifname wan masquerade"
            };
            in_ns(&home.router, "nft", &[masquerade]);
        }
        topo
    }

    /// The ISP gives `home` a new public address (`new_ip`, on the "internet" subnet): the
    /// router's WAN address changes, the kernel drops the NAT mappings made with the old one,
    /// and every connection from the home dies silently, as after a real re-addressing. The
    /// host itself sees nothing change.
    pub fn renumber(home: &mut Home, new_ip: &str) {
        // Deleted first: deleting a primary address also deletes secondaries in its subnet.
        let old = format!("{}/24", home.public_ip);
        in_ns(&home.router, "ip", &["addr", "del", &old, "dev", "wan"]);
        let new = format!("{new_ip}/24");
        in_ns(&home.router, "ip", &["addr", "add", &new, "dev", "wan"]);
        // (The kernel drops the masquerade mappings of a removed address by itself.)
        home.public_ip = new_ip.into();
    }

    /// A thin uplink: `home`'s router sends at most `kbit` kbit/s towards the internet
    /// (`tc tbf`, which counts whole Ethernet frames; 300 ms of queue, then drops).
    pub fn limit_uplink(home: &Home, kbit: u32) {
        let rate = format!("{kbit}kbit");
        in_ns(
            &home.router,
            "tc",
            &[
                "qdisc", "add", "dev", "wan", "root", "tbf", "rate", &rate, "burst", "3000",
                "latency", "300ms",
            ],
        );
    }

    /// Makes `home`'s router an office firewall: it forwards no UDP but DNS (TCP passes).
    pub fn block_udp(home: &Home) {
        in_ns(&home.router, "nft", &["add table inet office"]);
        in_ns(
            &home.router,
            "nft",
            &["add chain inet office forward { type filter hook forward priority 0 ; }"],
        );
        in_ns(
            &home.router,
            "nft",
            &["add rule inet office forward meta l4proto udp udp dport != 53 drop"],
        );
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
