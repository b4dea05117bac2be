//! Strict checks of the STUN and TURN URIs handed to clients (RFC 7064, RFC 7065).
//!
//! A bad URI is not the server's problem at run time but every client's: a browser or webrtc-rs
//! refuses the whole ICE configuration, so every call breaks. The server therefore refuses to
//! start with one.
//!
//! Accepted forms: `stun:HOST[:PORT]`, `stuns:HOST[:PORT]`,
//! `turn:HOST[:PORT][?transport=udp|tcp]`, `turns:HOST[:PORT][?transport=tcp]`, where HOST is a
//! DNS name, an IPv4 address or a bracketed IPv6 address.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Which list a URI is for; decides the schemes and queries allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `--stun-url`: `stun:` or `stuns:`, no query.
    Stun,
    /// `--turn-url`: `turn:` or `turns:`, optional `?transport=`.
    Turn,
}

/// Checks one URI; the error says what is wrong with it (without repeating it).
pub(crate) fn check(kind: Kind, url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once(':')
        .filter(|(scheme, _)| !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphabetic()))
        .ok_or_else(|| format!("no scheme; expected {}", shape(kind)))?;
    let secure = match (kind, scheme) {
        (Kind::Stun, "stun") | (Kind::Turn, "turn") => false,
        (Kind::Stun, "stuns") | (Kind::Turn, "turns") => true,
        _ => {
            return Err(format!(
                "scheme `{scheme}:` is not allowed here; expected {}",
                shape(kind)
            ))
        }
    };
    if rest.starts_with("//") {
        return Err(format!(
            "`{scheme}:` URIs have no `//` (write {scheme}:host:port, not {scheme}://host:port)"
        ));
    }
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    check_hostport(hostport)?;
    match (kind, query) {
        (_, None) => Ok(()),
        (Kind::Stun, Some(_)) => Err("a STUN URI takes no `?` query".to_owned()),
        (Kind::Turn, Some("transport=udp")) if !secure => Ok(()),
        (Kind::Turn, Some("transport=tcp")) => Ok(()),
        (Kind::Turn, Some("transport=udp")) => {
            Err("`turns:` runs over TLS, so its transport is tcp".to_owned())
        }
        (Kind::Turn, Some(_)) => {
            Err("the only query allowed is `?transport=udp` or `?transport=tcp`".to_owned())
        }
    }
}

fn shape(kind: Kind) -> &'static str {
    match kind {
        Kind::Stun => "stun:HOST[:PORT] (or stuns:)",
        Kind::Turn => "turn:HOST[:PORT][?transport=udp|tcp] (or turns:)",
    }
}

fn check_hostport(hp: &str) -> Result<(), String> {
    if hp.is_empty() {
        return Err("no host".to_owned());
    }
    let (host, port) = if let Some(v6) = hp.strip_prefix('[') {
        let (ip, after) = v6
            .split_once(']')
            .ok_or_else(|| "an IPv6 host needs its closing `]`".to_owned())?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{ip}` is not an IPv6 address"))?;
        match after {
            "" => return Ok(()),
            _ => match after.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return Err("only `:PORT` may follow `]`".to_owned()),
            },
        }
    } else {
        match hp.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        }
    };
    if !hp.starts_with('[') {
        check_host(host)?;
    }
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n != 0);
        if !ok {
            return Err(format!("`{p}` is not a port (1-65535)"));
        }
    }
    Ok(())
}

/// Whether `host` is a DNS name: dot-separated labels of 1 to 63 letters, digits and inner
/// hyphens, 253 characters at most.
pub(crate) fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    // Bare IPv6 without brackets has several ':' and was split at the first one.
    if is_dns_name(host) {
        Ok(())
    } else {
        Err(format!(
            "`{host}` is not a host name or IP address (an IPv6 address goes in brackets: [::1]:3478)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        for u in [
            "stun:stun.example.org",
            "stun:stun.example.org:3478",
            "stuns:stun.example.org:5349",
            "stun:203.0.113.10:3478",
            "stun:[2001:db8::1]:3478",
            "stun:[::1]",
        ] {
            assert_eq!(check(Kind::Stun, u), Ok(()), "{u}");
        }
        for u in [
            "turn:turn.example.org:3478?transport=udp",
            "turn:turn.example.org",
            "turn:127.0.0.1:3478?transport=tcp",
            "turns:turn.example.org:5349?transport=tcp",
            "turns:turn.example.org:5349",
            "turn:[2001:db8::1]:3478?transport=udp",
        ] {
            assert_eq!(check(Kind::Turn, u), Ok(()), "{u}");
        }
    }

    #[test]
    fn refuses_what_breaks_clients() {
        for (kind, u) in [
            (Kind::Stun, "stun.example.org:3478"),
            (Kind::Stun, "stun://stun.example.org:3478"),
            (Kind::Stun, "turn:turn.example.org"),
            (Kind::Stun, "stun:"),
            (Kind::Stun, "stun:host:0"),
            (Kind::Stun, "stun:host:70000"),
            (Kind::Stun, "stun:host:34x"),
            (Kind::Stun, "stun:host:"),
            (Kind::Stun, "stun:host?transport=udp"),
            (Kind::Stun, "stun:2001:db8::1"),
            (Kind::Stun, "stun:[2001:db8::1"),
            (Kind::Stun, "stun:[nonsense]:1"),
            (Kind::Stun, "stun:bad_host"),
            (Kind::Stun, "stun:-bad.example"),
            (Kind::Stun, "stun:a..b"),
            (Kind::Stun, "stun:user@host"),
            (Kind::Stun, "stun:host/path"),
            (Kind::Turn, "stun:host"),
            (Kind::Turn, "turn:host?transport=sctp"),
            (Kind::Turn, "turn:host?transport=udp&x=1"),
            (Kind::Turn, "turns:host?transport=udp"),
            (Kind::Turn, "turn:host:3478?"),
            (Kind::Turn, "TURN:host"),
            (Kind::Turn, ""),
        ] {
            assert!(check(kind, u).is_err(), "{u} accepted");
        }
    }
}
