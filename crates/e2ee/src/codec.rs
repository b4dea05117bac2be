//! Strict byte reading for the parsers: every read is bounds-checked and returns `None`
//! instead of panicking, so hostile input can only ever produce an error.
#![forbid(unsafe_code)]

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    pub(crate) fn array32(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }

    /// Reads `n` bytes as a big-endian unsigned integer (1 to 8 bytes).
    pub(crate) fn uint_be(&mut self, n: usize) -> Option<u64> {
        if n == 0 || n > 8 {
            return None;
        }
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Appends `bytes` with a two-byte big-endian length prefix. Callers bound lengths first.
pub(crate) fn put_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes.get(..usize::from(len)).unwrap_or(bytes));
}

/// Number of bytes needed to write `value` big-endian without leading zeros (at least 1).
pub(crate) fn minimal_len(value: u64) -> usize {
    let bits = 64u32.saturating_sub(value.leading_zeros()).max(1);
    usize::try_from(bits.div_ceil(8)).unwrap_or(8)
}

/// Writes the low `len` bytes of `value` big-endian.
pub(crate) fn put_uint_be(out: &mut Vec<u8>, value: u64, len: usize) {
    let bytes = value.to_be_bytes();
    let start = 8usize.saturating_sub(len);
    out.extend_from_slice(bytes.get(start..).unwrap_or(&bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_lengths() {
        assert_eq!(minimal_len(0), 1);
        assert_eq!(minimal_len(255), 1);
        assert_eq!(minimal_len(256), 2);
        assert_eq!(minimal_len(1 << 24), 4);
        assert_eq!(minimal_len(u64::MAX), 8);
    }

    #[test]
    fn uint_round_trip() {
        for v in [0u64, 1, 255, 256, 65_535, 1 << 40, u64::MAX] {
            let mut out = Vec::new();
            put_uint_be(&mut out, v, minimal_len(v));
            assert_eq!(Reader::new(&out).uint_be(out.len()), Some(v));
        }
    }

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(3));
        assert_eq!(r.u8(), None);
        assert!(r.take(1).is_none());
        assert!(r.is_empty());
    }
}
