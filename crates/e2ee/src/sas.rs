//! The short authentication string (SAS) that the two people read aloud to detect a
//! man-in-the-middle.
//!
//! The SAS is 24 bits taken from the key schedule (label `aparte/v1 sas`). It is shown two
//! ways that carry the same value: four words from a 64-word list (6 bits each), chosen to be
//! distinct when spoken over a noisy line, or eight decimal digits. Because the handshake is
//! commit-before-reveal, an attacker who relays the keys gets a single 1-in-16,777,216 guess
//! at making the two SAS values equal; it cannot grind keys.
#![forbid(unsafe_code)]

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The word list: 64 common English words of two or three syllables, each with a distinct
/// sound, no homophones, and no word a prefix of another. Index = 6-bit value.
pub const WORDLIST: [&str; 64] = [
    "anchor", "apple", "badger", "bamboo", "basket", "bishop", "button", "cactus", //
    "camel", "candle", "canyon", "cobra", "copper", "dolphin", "donkey", "eagle", //
    "engine", "falcon", "forest", "garden", "ginger", "hammer", "harbor", "helmet", //
    "igloo", "island", "jacket", "jungle", "kettle", "koala", "lemon", "lizard", //
    "magnet", "marble", "meadow", "nectar", "noodle", "ocean", "orange", "oyster", //
    "panda", "pepper", "pillow", "pirate", "puzzle", "quartz", "rabbit", "rocket", //
    "saddle", "salmon", "silver", "spider", "tiger", "tomato", "tunnel", "velvet", //
    "violin", "walnut", "window", "winter", "yellow", "yogurt", "zebra", "zipper", //
];

/// Number of bits in a SAS.
pub const SAS_BITS: u32 = 24;

/// A short authentication string. It is sensitive while the call is live: it is never
/// printed by `Debug` and is wiped on drop. Comparison is constant-time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Sas {
    value: u32,
}

impl Sas {
    /// Builds a SAS from the key schedule's SAS bytes (the first three are used).
    pub fn from_bytes(bytes: &[u8; 4]) -> Self {
        let [a, b, c, _] = *bytes;
        Self {
            value: u32::from_be_bytes([0, a, b, c]),
        }
    }

    /// The 24-bit value.
    pub fn value(&self) -> u32 {
        self.value
    }

    /// Four words, most significant 6 bits first.
    pub fn words(&self) -> [&'static str; 4] {
        let word = |shift: u32| {
            let index = usize::try_from((self.value >> shift) & 0x3F).unwrap_or(0);
            WORDLIST.get(index).copied().unwrap_or("?")
        };
        [word(18), word(12), word(6), word(0)]
    }

    /// The words joined by spaces, e.g. `"tiger walnut anchor meadow"`.
    pub fn words_string(&self) -> String {
        self.words().join(" ")
    }

    /// Eight digits in two groups, e.g. `"0123 4567"`.
    pub fn digits(&self) -> String {
        let d = format!("{:08}", self.value);
        let (a, b) = d.split_at(4);
        format!("{a} {b}")
    }
}

impl PartialEq for Sas {
    fn eq(&self, other: &Self) -> bool {
        self.value.ct_eq(&other.value).into()
    }
}

impl Eq for Sas {}

impl std::fmt::Debug for Sas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sas(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wordlist_is_64_unique_lowercase_words_without_prefixes() {
        let set: std::collections::HashSet<_> = WORDLIST.iter().collect();
        assert_eq!(set.len(), 64);
        for a in WORDLIST {
            assert!(a.chars().all(|c| c.is_ascii_lowercase()), "{a}");
            for b in WORDLIST {
                assert!(a == b || !b.starts_with(a), "{a} is a prefix of {b}");
            }
        }
    }

    #[test]
    fn words_and_digits_carry_the_same_24_bits() {
        let sas = Sas::from_bytes(&[0xAB, 0xCD, 0xEF, 0x99]);
        assert_eq!(sas.value(), 0xABCDEF);
        let back = sas.words().iter().fold(0u32, |acc, w| {
            let i = WORDLIST.iter().position(|x| x == w).unwrap() as u32;
            (acc << 6) | i
        });
        assert_eq!(back, 0xABCDEF);
        assert_eq!(sas.digits(), "1125 9375");
        assert_eq!(
            sas.digits().replace(' ', "").parse::<u32>().unwrap(),
            0xABCDEF
        );
    }

    #[test]
    fn extremes_render() {
        assert_eq!(
            Sas::from_bytes(&[0, 0, 0, 0]).words_string(),
            "anchor anchor anchor anchor"
        );
        assert_eq!(
            Sas::from_bytes(&[0xFF; 4]).words_string(),
            "zipper zipper zipper zipper"
        );
        assert_eq!(Sas::from_bytes(&[0xFF; 4]).digits(), "1677 7215");
    }

    #[test]
    fn the_fourth_byte_is_ignored_and_debug_is_redacted() {
        let a = Sas::from_bytes(&[1, 2, 3, 4]);
        let b = Sas::from_bytes(&[1, 2, 3, 5]);
        assert_eq!(a, b);
        assert_ne!(a, Sas::from_bytes(&[1, 2, 4, 4]));
        assert!(!format!("{a:?}").contains("66051"));
    }
}
