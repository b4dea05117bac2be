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
//! [`Topology::build_ipv6_only`] builds the same shape with IPv6-only homes (global addresses
//! behind stateful firewalls, no NAT) and a dual-stack VPS.
//!
//! Every address lives in namespaces this module creates; nothing is sent anywhere else. The
//! namespaces (and with them every interface and rule) are removed on drop. Needs root,
//! iproute2 and nftables (`scripts/install-deps`).

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The VPS's public address.
pub const VPS_IP: &str = "203.0.113.10";

/// The VPS's public IPv6 address in [`Topology::build_ipv6_only`].
pub const VPS_IP6: &str = "2001:db8::10";

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
    /// `/etc/netns/NS` folders made by [`Topology::add_host_name`].
    hosts_files: Vec<std::path::PathBuf>,
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

/// Creates interfaces between namespaces, with names unique to one topology.
struct Wiring {
    tag: String,
    k: u32,
}

impl Wiring {
    /// A veth pair from `ns` (named `inside` there, with `addr`) to `other_ns` (named `other`).
    fn wire(&mut self, ns: &str, inside: &str, addr: &str, other_ns: &str, other: &str) {
        self.k += 1;
        let (x, y) = (
            format!("v{}x{}", self.tag, self.k),
            format!("v{}y{}", self.tag, self.k),
        );
        ip(&["link", "add", &x, "type", "veth", "peer", "name", &y]);
        ip(&["link", "set", &x, "netns", ns]);
        ip(&["link", "set", &y, "netns", other_ns]);
        in_ns(ns, "ip", &["link", "set", &x, "name", inside]);
        in_ns(other_ns, "ip", &["link", "set", &y, "name", other]);
        add_addr(ns, inside, addr);
        in_ns(ns, "ip", &["link", "set", inside, "up"]);
        in_ns(other_ns, "ip", &["link", "set", other, "up"]);
    }
}

/// Adds `addr` (with its prefix length) to `dev` in `ns`. IPv6 addresses skip duplicate
/// address detection, which would leave them unusable ("tentative") for a second or two.
fn add_addr(ns: &str, dev: &str, addr: &str) {
    if addr.contains(':') {
        in_ns(ns, "ip", &["-6", "addr", "add", addr, "dev", dev, "nodad"]);
    } else {
        in_ns(ns, "ip", &["addr", "add", addr, "dev", dev]);
    }
}

impl Topology {
    /// The namespaces (loopback up) and the "internet" bridge, with no addresses yet; each
    /// home is given as (router's public address, host's LAN address).
    fn skeleton(a: (&str, &str), b: (&str, &str)) -> (Self, String, Wiring) {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        // Short and unique per test process: interface names are at most 15 bytes.
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let name = |role: &str| format!("ap{tag}-{role}");
        let named = |(public_ip, lan_ip): (&str, &str), side: &str| Home {
            host: name(side),
            router: name(&format!("r{side}")),
            public_ip: public_ip.into(),
            lan_ip: lan_ip.into(),
        };
        let mut topo = Topology {
            vps: name("vps"),
            a: named(a, "a"),
            b: named(b, "b"),
            namespaces: Vec::new(),
            hosts_files: Vec::new(),
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
        (topo, inet, Wiring { tag, k: 0 })
    }

    /// Builds the VPS and two homes behind `nat`.
    pub fn build(nat: Nat) -> Self {
        let (topo, inet, mut w) = Self::skeleton(
            ("203.0.113.21", "192.168.1.2"),
            ("203.0.113.22", "192.168.2.2"),
        );
        w.wire(&topo.vps, "eth0", &format!("{VPS_IP}/24"), &inet, "p-vps");
        in_ns(&inet, "ip", &["link", "set", "p-vps", "master", "br0"]);
        for (home, port, lan_net) in [(&topo.a, "p-a", "192.168.1"), (&topo.b, "p-b", "192.168.2")]
        {
            w.wire(
                &home.router,
                "wan",
                &format!("{}/24", home.public_ip),
                &inet,
                port,
            );
            in_ns(&inet, "ip", &["link", "set", port, "master", "br0"]);
            w.wire(
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

    /// Builds two **IPv6-only** homes and a dual-stack VPS ([`VPS_IP`] and [`VPS_IP6`]).
    ///
    /// ```text
    ///                  "internet" bridge 2001:db8::/64 (and 203.0.113.0/24 for the VPS)
    ///     vps 2001:db8::10, 203.0.113.10    router A 2001:db8::21     router B 2001:db8::22
    ///                                      home A 2001:db8:1::2/64   home B 2001:db8:2::2/64
    /// ```
    ///
    /// As on real IPv6 access networks there is no NAT: every host has a global address, and
    /// each home router is a stateful firewall that forwards replies but drops unsolicited
    /// inbound traffic (nftables `ct state`), so a direct path between the homes only opens when
    /// both sides send (ICE's connectivity checks do). No home has any IPv4 address but
    /// loopback, and no IPv4 route.
    pub fn build_ipv6_only() -> Self {
        let (topo, inet, mut w) = Self::skeleton(
            ("2001:db8::21", "2001:db8:1::2"),
            ("2001:db8::22", "2001:db8:2::2"),
        );
        w.wire(&topo.vps, "eth0", &format!("{VPS_IP6}/64"), &inet, "p-vps");
        add_addr(&topo.vps, "eth0", &format!("{VPS_IP}/24"));
        in_ns(&inet, "ip", &["link", "set", "p-vps", "master", "br0"]);
        let homes = [
            (&topo.a, "p-a", "2001:db8:1"),
            (&topo.b, "p-b", "2001:db8:2"),
        ];
        for (home, port, lan_net) in homes {
            w.wire(
                &home.router,
                "wan",
                &format!("{}/64", home.public_ip),
                &inet,
                port,
            );
            in_ns(&inet, "ip", &["link", "set", port, "master", "br0"]);
            w.wire(
                &home.host,
                "eth0",
                &format!("{}/64", home.lan_ip),
                &home.router,
                "lan",
            );
            add_addr(&home.router, "lan", &format!("{lan_net}::1/64"));
            in_ns(
                &home.host,
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{lan_net}::1"),
                ],
            );
            in_ns(
                &home.router,
                "sysctl",
                &["-q", "-w", "net.ipv6.conf.all.forwarding=1"],
            );
            // The home's prefix, routed to its router by the VPS (standing for the ISP).
            in_ns(
                &topo.vps,
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{lan_net}::/64"),
                    "via",
                    &home.public_ip,
                ],
            );
            in_ns(&home.router, "nft", &["add table inet fw"]);
            in_ns(
                &home.router,
                "nft",
                &["add chain inet fw forward { type filter hook forward priority 0 ; }"],
            );
            in_ns(
                &home.router,
                "nft",
                &["add rule inet fw forward ct state established,related accept"],
            );
            in_ns(
                &home.router,
                "nft",
                &["add rule inet fw forward iifname wan drop"],
            );
        }
        // Each router reaches the other home's prefix directly over the "internet".
        for (from, to, to_net) in [
            (&topo.a, &topo.b, "2001:db8:2"),
            (&topo.b, &topo.a, "2001:db8:1"),
        ] {
            in_ns(
                &from.router,
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{to_net}::/64"),
                    "via",
                    &to.public_ip,
                ],
            );
        }
        topo
    }

    /// Makes `name` resolve to `addr` for programs run in namespace `ns` (`ip netns exec`
    /// bind-mounts `/etc/netns/NS/hosts` over `/etc/hosts`); removed with the topology.
    pub fn add_host_name(&mut self, ns: &str, name: &str, addr: &str) {
        let dir = std::path::PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hosts");
        let mut hosts = std::fs::read_to_string(&file)
            .unwrap_or_else(|_| "127.0.0.1 localhost\n::1 localhost\n".into());
        hosts.push_str(&format!("{addr} {name}\n"));
        std::fs::write(&file, hosts).unwrap();
        if !self.hosts_files.contains(&dir) {
            self.hosts_files.push(dir);
        }
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
        for dir in &self.hosts_files {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
