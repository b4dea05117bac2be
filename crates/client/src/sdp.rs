//! The few facts the client reads from SDP text.
#![forbid(unsafe_code)]

/// The DTLS certificate fingerprint an SDP declares, normalised as `"<alg> <HEX:HEX:…>"`
/// (algorithm lowercase, hex uppercase), ready to bind into the e2ee handshake.
///
/// The attribute may sit at session level or in each media section; every occurrence must agree,
/// otherwise the SDP is ambiguous and `None` is returned (the call must not proceed on it).
pub fn dtls_fingerprint(sdp: &str) -> Option<Vec<u8>> {
    let mut found: Option<String> = None;
    for line in sdp.lines() {
        let Some(value) = line.trim_end().strip_prefix("a=fingerprint:") else {
            continue;
        };
        let (alg, hex) = value.trim().split_once(' ')?;
        let normalised = format!(
            "{} {}",
            alg.to_ascii_lowercase(),
            hex.trim().to_ascii_uppercase()
        );
        match &found {
            Some(previous) if *previous != normalised => return None,
            _ => found = Some(normalised),
        }
    }
    found.map(String::into_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_session_or_media_level_fingerprints() {
        let sdp = "v=0\r\na=fingerprint:SHA-256 ab:cd\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
        assert_eq!(dtls_fingerprint(sdp).unwrap(), b"sha-256 AB:CD");
        let both = "a=fingerprint:sha-256 AB:CD\r\nm=audio\r\na=fingerprint:sha-256 ab:cd\r\n";
        assert_eq!(dtls_fingerprint(both).unwrap(), b"sha-256 AB:CD");
    }

    #[test]
    fn conflicting_or_missing_fingerprints_are_refused() {
        assert!(dtls_fingerprint("v=0\r\n").is_none());
        assert!(
            dtls_fingerprint("a=fingerprint:sha-256 AB\r\na=fingerprint:sha-256 CD\r\n").is_none()
        );
        assert!(dtls_fingerprint("a=fingerprint:garbage\r\n").is_none());
    }
}
