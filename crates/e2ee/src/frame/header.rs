//! The frame header: RFC 9605's one-byte config followed by the key id and counter, each
//! inline in three bits when below 8 and otherwise in the fewest big-endian bytes.
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! +-+-+-+-+-+-+-+-+----------------+------------------+
//! |X|  K  |Y|  C  | KID (0-8 bytes)| CTR (0-8 bytes)  |
//! +-+-+-+-+-+-+-+-+----------------+------------------+
//! ```
//!
//! X=0: K is the key id. X=1: K+1 bytes of key id follow. Likewise Y, C and the counter.
//! Parsing is strict: a non-minimal encoding is rejected, so every (key id, counter) pair has
//! exactly one header.
#![forbid(unsafe_code)]

use crate::codec::{minimal_len, put_uint_be, Reader};
use crate::error::FrameError;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The key id.
    pub key_id: u64,
    /// The frame counter under that key.
    pub counter: u64,
}

/// Largest value carried inline in the config byte.
const INLINE_MAX: u64 = 7;

impl FrameHeader {
    /// Number of bytes [`FrameHeader::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        1usize
            .saturating_add(field_len(self.key_id))
            .saturating_add(field_len(self.counter))
    }

    /// Appends the header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (k_bits, k_len) = field_bits(self.key_id);
        let (c_bits, c_len) = field_bits(self.counter);
        out.push((k_bits << 4) | c_bits);
        put_uint_be(out, self.key_id, k_len);
        put_uint_be(out, self.counter, c_len);
    }

    /// Parses the header at the start of `frame`; returns it and its length.
    pub fn parse(frame: &[u8]) -> Result<(Self, usize), FrameError> {
        let mut r = Reader::new(frame);
        let config = r.u8().ok_or(FrameError::Malformed("empty frame"))?;
        let key_id = read_field(&mut r, config >> 4)?;
        let counter = read_field(&mut r, config & 0x0F)?;
        let len = frame.len().saturating_sub(r.remaining().len());
        Ok((Self { key_id, counter }, len))
    }
}

/// Bytes a field takes after the config byte.
fn field_len(value: u64) -> usize {
    if value <= INLINE_MAX {
        0
    } else {
        minimal_len(value)
    }
}

/// The 4 config bits for a field (X|K or Y|C) and the number of trailing bytes.
fn field_bits(value: u64) -> (u8, usize) {
    if value <= INLINE_MAX {
        (u8::try_from(value).unwrap_or(0), 0)
    } else {
        let len = minimal_len(value);
        (0x8 | u8::try_from(len.saturating_sub(1)).unwrap_or(7), len)
    }
}

fn read_field(r: &mut Reader<'_>, bits: u8) -> Result<u64, FrameError> {
    let small = u64::from(bits & 0x7);
    if bits & 0x8 == 0 {
        return Ok(small);
    }
    let len = usize::try_from(small).unwrap_or(8).saturating_add(1);
    let value = r
        .uint_be(len)
        .ok_or(FrameError::Malformed("truncated header"))?;
    if value <= INLINE_MAX || minimal_len(value) != len {
        return Err(FrameError::Malformed("non-minimal header encoding"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(key_id: u64, counter: u64) -> Vec<u8> {
        let h = FrameHeader { key_id, counter };
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), h.encoded_len());
        out.extend_from_slice(b"payload");
        assert_eq!(FrameHeader::parse(&out), Ok((h, h.encoded_len())));
        out.truncate(h.encoded_len());
        out
    }

    #[test]
    fn sizes_match_rfc_9605_minimal_encoding() {
        assert_eq!(round_trip(0, 0), [0x00]);
        assert_eq!(round_trip(3, 7), [0x37]);
        assert_eq!(round_trip(1, 8), [0x18, 8]);
        assert_eq!(round_trip(1, 256), [0x19, 1, 0]);
        assert_eq!(round_trip(1, 1 << 16).len(), 4);
        assert_eq!(round_trip(1, 1 << 24).len(), 5);
        assert_eq!(round_trip(8, 0), [0x80, 8]);
        assert_eq!(round_trip(u64::MAX, u64::MAX).len(), 17);
    }

    #[test]
    fn non_minimal_and_truncated_headers_are_rejected() {
        // Counter 5 written as one extra byte.
        assert!(FrameHeader::parse(&[0x08, 5]).is_err());
        // Counter 256 written with a leading zero byte.
        assert!(FrameHeader::parse(&[0x0A, 0, 1, 0]).is_err());
        // Key id bytes missing.
        assert!(FrameHeader::parse(&[0x90, 1]).is_err());
        assert!(FrameHeader::parse(&[]).is_err());
    }
}
