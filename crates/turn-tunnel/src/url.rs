//! `turn:` / `turns:` URLs (RFC 7065) to the upstream they name.

use crate::Upstream;

/// Default port of `turn:` (RFC 7065 §3).
const TURN_PORT: u16 = 3478;
/// Default port of `turns:` (RFC 7065 §3).
const TURNS_PORT: u16 = 5349;
/// Longest URL looked at: a host name is at most 253 bytes.
const MAX_URL: usize = 512;

/// Parses a TURN URL into the stream [`Upstream`] it names:
///
/// - `turn:HOST[:PORT]?transport=tcp` → [`Upstream::Tcp`] (default port 3478),
/// - `turns:HOST[:PORT]` or `turns:HOST[:PORT]?transport=tcp` → [`Upstream::Tls`] (default port
///   5349; RFC 7065 makes TCP the default transport of `turns:`).
///
/// Returns `None` for URLs the tunnel has nothing to do with: UDP (`turn:` without
/// `transport=tcp`, which webrtc-rs handles itself), DTLS (`turns:…?transport=udp`), and
/// anything malformed (unknown scheme or query, empty host, bad port, user info, a path).
/// IPv6 literals are written in brackets: `turn:[2001:db8::1]:3478?transport=tcp`.
pub fn upstream_of(url: &str) -> Option<Upstream> {
    let parsed = parse(url)?;
    if !parsed.transport_tcp {
        return None;
    }
    let host = parsed.host.to_owned();
    let port = parsed.port;
    Some(if parsed.tls {
        Upstream::Tls { host, port }
    } else {
        Upstream::Tcp { host, port }
    })
}

/// Parses a UDP TURN URL whose host is an **IPv6 literal** (`turn:[2001:db8::1]:3478`, with
/// or without `?transport=udp`) into an [`Upstream::Udp`]: webrtc-rs 0.17 sends UDP TURN from
/// an IPv4 socket only, so such a server is reachable only through the tunnel. Returns `None`
/// for every other URL (IPv4 or host name: webrtc-rs handles those itself; stream URLs:
/// [`upstream_of`]; malformed ones).
pub fn ipv6_udp_upstream_of(url: &str) -> Option<Upstream> {
    let parsed = parse(url)?;
    if parsed.tls || parsed.transport_tcp {
        return None;
    }
    parsed.host.parse::<std::net::Ipv6Addr>().ok()?;
    Some(Upstream::Udp {
        host: parsed.host.to_owned(),
        port: parsed.port,
    })
}

/// A TURN URL's parts.
struct Parsed<'a> {
    tls: bool,
    transport_tcp: bool,
    host: &'a str,
    port: u16,
}

fn parse(url: &str) -> Option<Parsed<'_>> {
    if url.len() > MAX_URL {
        return None;
    }
    let (tls, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "turns:") {
        (true, rest)
    } else if let Some(rest) = strip_prefix_ignore_case(url, "turn:") {
        (false, rest)
    } else {
        return None;
    };
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let transport_tcp = match query {
        None => tls,
        Some(q) => match q.to_ascii_lowercase().as_str() {
            "transport=tcp" => true,
            "transport=udp" => false,
            _ => return None,
        },
    };
    let (host, port) = split_host_port(authority)?;
    let port = port.unwrap_or(if tls { TURNS_PORT } else { TURN_PORT });
    Some(Parsed {
        tls,
        transport_tcp,
        host,
        port,
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the host keeps no brackets.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !valid_host {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|&p| p != 0)?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Option<Upstream> {
        Some(Upstream::Tcp {
            host: host.into(),
            port,
        })
    }
    fn tls(host: &str, port: u16) -> Option<Upstream> {
        Some(Upstream::Tls {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn stream_urls() {
        assert_eq!(
            upstream_of("turn:turn.example.org:3478?transport=tcp"),
            tcp("turn.example.org", 3478)
        );
        assert_eq!(
            upstream_of("turn:example.org?transport=tcp"),
            tcp("example.org", 3478)
        );
        assert_eq!(
            upstream_of("turns:example.org:443?transport=tcp"),
            tls("example.org", 443)
        );
        assert_eq!(upstream_of("turns:example.org"), tls("example.org", 5349));
        assert_eq!(
            upstream_of("TURNS:Example.org:443?Transport=TCP"),
            tls("Example.org", 443)
        );
        assert_eq!(
            upstream_of("turn:127.0.0.1:3478?transport=tcp"),
            tcp("127.0.0.1", 3478)
        );
        assert_eq!(
            upstream_of("turn:[2001:db8::1]:3478?transport=tcp"),
            tcp("2001:db8::1", 3478)
        );
        assert_eq!(upstream_of("turns:[::1]"), tls("::1", 5349));
    }

    #[test]
    fn udp_and_dtls_urls_are_not_for_the_tunnel() {
        assert_eq!(upstream_of("turn:example.org:3478"), None);
        assert_eq!(upstream_of("turn:example.org:3478?transport=udp"), None);
        assert_eq!(upstream_of("turns:example.org:5349?transport=udp"), None);
        assert_eq!(upstream_of("stun:example.org:3478"), None);
    }

    #[test]
    fn malformed_urls_are_refused() {
        for bad in [
            "",
            "turn:",
            "turn:?transport=tcp",
            "turn::3478?transport=tcp",
            "turn:example.org:?transport=tcp",
            "turn:example.org:0?transport=tcp",
            "turn:example.org:65536?transport=tcp",
            "turn:example.org:34x8?transport=tcp",
            "turn:example.org:3478?transport=sctp",
            "turn:example.org:3478?transport=tcp&x=1",
            "turn:user@example.org?transport=tcp",
            "turn:example.org/path?transport=tcp",
            "turn:[2001:db8::1?transport=tcp",
            "turn:[nothost]:3478?transport=tcp",
            "turn:[::1]3478?transport=tcp",
            "turns:exa mple.org",
            "turns:é.org",
            "turns",
        ] {
            assert_eq!(upstream_of(bad), None, "{bad}");
        }
        assert_eq!(upstream_of(&format!("turns:{}", "a".repeat(600))), None);
    }

    #[test]
    fn only_udp_urls_to_an_ipv6_literal_go_through_the_udp_tunnel() {
        let udp = |host: &str, port| {
            Some(Upstream::Udp {
                host: host.into(),
                port,
            })
        };
        assert_eq!(
            ipv6_udp_upstream_of("turn:[2001:db8::1]:3478?transport=udp"),
            udp("2001:db8::1", 3478)
        );
        assert_eq!(ipv6_udp_upstream_of("turn:[::1]"), udp("::1", 3478));
        for other in [
            "turn:192.0.2.1:3478?transport=udp",
            "turn:turn.example.org:3478",
            "turn:[2001:db8::1]:3478?transport=tcp",
            "turns:[2001:db8::1]:443?transport=tcp",
            "turns:[2001:db8::1]:5349?transport=udp",
            "stun:[2001:db8::1]:3478",
            "turn:[2001:db8::1]:0",
            "turn:[2001:db8::1",
        ] {
            assert_eq!(ipv6_udp_upstream_of(other), None, "{other}");
        }
    }
}
