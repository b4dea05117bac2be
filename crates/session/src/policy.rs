//! How a call decides to trust the peer without, or before, a person confirming the SAS.
#![forbid(unsafe_code)]

use aparte_e2ee::sas::Sas;

/// The trust policy of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Both people read the SAS aloud and confirm it with a key press. The default.
    Interactive,
    /// Scripted calls: the SAS must equal this value, given as the four words or the eight
    /// digits (spaces, dashes and case ignored). A mismatch ends the call. Only as safe as the
    /// channel that delivered the expected value to the script.
    ExpectSas(String),
    /// Scripted calls: accept whatever key the peer has on first contact and pin it
    /// (unverified). Protects later calls against a new man-in-the-middle, but not this one.
    TrustOnFirstUse,
}

impl Policy {
    /// Whether `expected` (words or digits, loosely formatted) names `sas`.
    pub fn sas_matches(expected: &str, sas: &Sas) -> bool {
        let norm = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        let want = norm(expected);
        !want.is_empty() && (want == norm(&sas.words_string()) || want == norm(&sas.digits()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_sas_matches_words_or_digits_loosely() {
        let sas = Sas::from_bytes(&[0xAB, 0xCD, 0xEF, 0]);
        let words = sas.words_string();
        assert!(Policy::sas_matches(&words.to_uppercase(), &sas));
        assert!(Policy::sas_matches(&words.replace(' ', "-"), &sas));
        assert!(Policy::sas_matches("1125-9375", &sas));
        assert!(Policy::sas_matches("11259375", &sas));
        assert!(!Policy::sas_matches("1125 9376", &sas));
        assert!(!Policy::sas_matches("", &sas));
    }
}
