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

/// Why a remote SDP is refused by [`PinnedFingerprint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// No single, consistent DTLS fingerprint in the SDP.
    #[error("SDP without a single, consistent DTLS fingerprint")]
    Missing,
    /// A later SDP (an ICE-restart offer or answer) names another certificate than the first.
    #[error("the peer's DTLS fingerprint changed during the call")]
    Changed,
}

/// The peer's DTLS fingerprint, pinned by its first SDP. The e2ee handshake is bound to it,
/// so every later SDP of the call (ICE restarts re-send offer and answer) must name the same
/// certificate: a signaling server cannot swap it in mid-call. Sans-IO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinnedFingerprint(Option<Vec<u8>>);

impl PinnedFingerprint {
    /// Checks a remote SDP before it is applied: the first one pins its fingerprint, later
    /// ones must match it.
    pub fn check(&mut self, sdp: &str) -> Result<(), FingerprintError> {
        let found = dtls_fingerprint(sdp).ok_or(FingerprintError::Missing)?;
        match &self.0 {
            Some(pinned) if *pinned != found => Err(FingerprintError::Changed),
            Some(_) => Ok(()),
            None => {
                self.0 = Some(found);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_fingerprint_is_pinned_and_a_changed_one_refused() {
        let mut pin = PinnedFingerprint::default();
        assert_eq!(
            pin.check("v=0\r\n"),
            Err(FingerprintError::Missing),
            "nothing to pin"
        );
        pin.check("a=fingerprint:sha-256 AB:CD\r\n").unwrap();
        // The same certificate, written differently (an ICE-restart offer): accepted.
        pin.check("m=audio\r\na=fingerprint:SHA-256 ab:cd\r\n")
            .unwrap();
        assert_eq!(
            pin.check("a=fingerprint:sha-256 AB:CE\r\n"),
            Err(FingerprintError::Changed)
        );
        // A refused SDP does not move the pin.
        pin.check("a=fingerprint:sha-256 AB:CD\r\n").unwrap();
    }

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
