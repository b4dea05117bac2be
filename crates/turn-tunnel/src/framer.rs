//! TURN message framing on a byte stream (RFC 5766 §2.1 and §11.5), sans-IO.
//!
//! Over UDP every datagram is one message. Over TCP/TLS the messages follow each other on the
//! stream and delimit themselves:
//!
//! - a STUN message starts with two zero bits and a 20-byte header whose length field counts the
//!   attribute bytes (always a multiple of 4), and carries the magic cookie `0x2112A442`;
//! - a ChannelData message starts with a channel number in `0x4000..=0x7FFF` and a 4-byte header
//!   whose length field counts the application data; over a stream it is padded with zeros to a
//!   multiple of 4 bytes, and the padding is not counted in the length.
//!
//! Anything else (first two bits `10` or `11`, a STUN message without the cookie, a length
//! above the configured limit) is not TURN, and the stream cannot be resynchronised after it,
//! so the caller closes the stream.

/// Size of a STUN message header.
const STUN_HEADER: usize = 20;
/// Size of a ChannelData header.
const CHANNEL_DATA_HEADER: usize = 4;
/// The STUN magic cookie (RFC 5389 §6), in network byte order.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// Which kind of TURN message a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A STUN message (TURN control: Allocate, Refresh, CreatePermission, Send/Data indications…).
    Stun,
    /// A ChannelData message (relayed application data on a bound channel).
    ChannelData,
}

/// Why bytes are not an acceptable TURN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first bytes are neither a STUN header with the magic cookie nor a ChannelData header.
    #[error("not a STUN or ChannelData message")]
    Garbage,
    /// The message declares more bytes than the configured limit.
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    Oversize {
        /// Declared size of the whole message (header and body, without padding).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A datagram is shorter than its header says (only for [`check_datagram`]).
    #[error("datagram shorter than its header says")]
    Truncated,
    /// A datagram carries bytes after its message beyond the allowed padding
    /// (only for [`check_datagram`]).
    #[error("datagram has trailing bytes after its message")]
    Trailing,
}

/// What the first bytes of a message say about it: its kind, the message length without
/// padding, and the number of bytes it occupies on a stream (with padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: FrameKind,
    len: usize,
    on_stream: usize,
}

/// Reads a message header from at least 4 bytes (STUN needs 8 to check the cookie).
/// `Ok(None)` means more bytes are needed to decide.
fn header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < CHANNEL_DATA_HEADER {
        return Ok(None);
    }
    let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let h = match buf[0] >> 6 {
        0b00 => {
            if buf.len() < 8 {
                return Ok(None);
            }
            // A STUN body is a sequence of 4-byte aligned attributes, and TURN is only
            // defined for RFC 5389 STUN, which always carries the cookie.
            if buf[4..8] != MAGIC_COOKIE || declared % 4 != 0 {
                return Err(FrameError::Garbage);
            }
            let len = STUN_HEADER + declared;
            Header {
                kind: FrameKind::Stun,
                len,
                on_stream: len,
            }
        }
        0b01 => {
            let len = CHANNEL_DATA_HEADER + declared;
            Header {
                kind: FrameKind::ChannelData,
                len,
                on_stream: len.next_multiple_of(4),
            }
        }
        _ => return Err(FrameError::Garbage),
    };
    if h.len > max {
        return Err(FrameError::Oversize { len: h.len, max });
    }
    Ok(Some(h))
}

/// Checks that a UDP datagram from the local TURN client is exactly one TURN message no larger
/// than `max` bytes, and returns its kind and the bytes to write on the stream: the datagram
/// itself, with zero padding added to a ChannelData message that was sent unpadded (padding is
/// optional over UDP but required over TCP).
pub fn check_datagram(datagram: &[u8], max: usize) -> Result<(FrameKind, Vec<u8>), FrameError> {
    let h = header(datagram, max)?.ok_or(FrameError::Truncated)?;
    if datagram.len() < h.len {
        return Err(FrameError::Truncated);
    }
    if datagram.len() > h.on_stream {
        return Err(FrameError::Trailing);
    }
    let mut out = Vec::with_capacity(h.on_stream);
    out.extend_from_slice(datagram);
    out.resize(h.on_stream, 0);
    Ok((h.kind, out))
}

/// Splits the bytes read from a TURN stream into messages.
///
/// Feed it whatever a read returned with [`Framer::push`], then take complete messages with
/// [`Framer::next_frame`] until it returns `Ok(None)`. It never holds more than one message
/// (at most `max` bytes plus padding) beyond what `push` was given at once; after an error the
/// stream is unusable and must be closed.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as frames; compacted lazily to avoid shifting on every
    /// frame.
    start: usize,
    max: usize,
    failed: Option<FrameError>,
}

impl Framer {
    /// A framer that accepts messages of at most `max` bytes (header included, padding not).
    pub fn new(max: usize) -> Self {
        Framer {
            buf: Vec::new(),
            start: 0,
            max,
            failed: None,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.max {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Number of bytes received but not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message, without its stream padding (ready to send as one datagram),
    /// `Ok(None)` if more bytes are needed, or the reason the stream is not TURN.
    pub fn next_frame(&mut self) -> Result<Option<(FrameKind, &[u8])>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let rest = &self.buf[self.start..];
        let h = match header(rest, self.max) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.failed = Some(e);
                return Err(e);
            }
        };
        if rest.len() < h.on_stream {
            return Ok(None);
        }
        let begin = self.start;
        self.start += h.on_stream;
        Ok(Some((h.kind, &self.buf[begin..begin + h.len])))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A STUN Binding request with `body` attribute bytes (any content; framing ignores it).
    fn stun(body_len: usize, fill: u8) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&u16::try_from(body_len).unwrap().to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend(std::iter::repeat_n(fill, body_len));
        m
    }

    /// A ChannelData message on channel 0x4001, without padding.
    fn chan(data_len: usize, fill: u8) -> Vec<u8> {
        let mut m = vec![0x40, 0x01];
        m.extend_from_slice(&u16::try_from(data_len).unwrap().to_be_bytes());
        m.extend(std::iter::repeat_n(fill, data_len));
        m
    }

    fn padded(mut m: Vec<u8>) -> Vec<u8> {
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    fn drain(f: &mut Framer) -> Vec<(FrameKind, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((k, b)) = f.next_frame().unwrap() {
            out.push((k, b.to_vec()));
        }
        out
    }

    #[test]
    fn merged_frames_come_out_one_by_one_without_padding() {
        let a = stun(8, 1);
        let b = chan(5, 2);
        let c = chan(8, 3);
        let mut stream = a.clone();
        stream.extend(padded(b.clone()));
        stream.extend(padded(c.clone()));
        let mut f = Framer::new(1500);
        f.push(&stream);
        assert_eq!(
            drain(&mut f),
            vec![
                (FrameKind::Stun, a),
                (FrameKind::ChannelData, b),
                (FrameKind::ChannelData, c)
            ]
        );
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn every_split_point_and_byte_by_byte_reads_give_the_same_frames() {
        let a = stun(12, 4);
        let b = chan(3, 5);
        let mut stream = a.clone();
        stream.extend(padded(b.clone()));
        let want = vec![(FrameKind::Stun, a), (FrameKind::ChannelData, b)];
        for cut in 0..=stream.len() {
            let mut f = Framer::new(1500);
            f.push(&stream[..cut]);
            let mut got = drain(&mut f);
            f.push(&stream[cut..]);
            got.extend(drain(&mut f));
            assert_eq!(got, want, "split at {cut}");
        }
        let mut f = Framer::new(1500);
        let mut got = Vec::new();
        for byte in &stream {
            f.push(std::slice::from_ref(byte));
            got.extend(drain(&mut f));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn channel_data_waits_for_its_padding() {
        let b = chan(1, 9);
        let mut f = Framer::new(1500);
        f.push(&b); // 5 bytes: message complete, padding (3 bytes) not yet read
        assert_eq!(f.next_frame().unwrap(), None);
        f.push(&[0, 0, 0]);
        assert_eq!(
            f.next_frame().unwrap(),
            Some((FrameKind::ChannelData, &b[..]))
        );
    }

    #[test]
    fn empty_channel_data_and_header_only_stun_are_frames() {
        let mut f = Framer::new(1500);
        let s = stun(0, 0);
        let c = chan(0, 0);
        f.push(&s);
        f.push(&c);
        assert_eq!(
            drain(&mut f),
            vec![(FrameKind::Stun, s), (FrameKind::ChannelData, c)]
        );
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone_and_stays_refused() {
        let mut f = Framer::new(100);
        f.push(&chan(97, 0)[..4]); // 4 + 97 = 101 declared
        assert_eq!(
            f.next_frame(),
            Err(FrameError::Oversize { len: 101, max: 100 })
        );
        f.push(&stun(0, 0));
        assert!(f.next_frame().is_err());
        let mut f = Framer::new(100);
        f.push(&stun(80, 0)); // exactly 100: fine
        assert_eq!(drain(&mut f).len(), 1);
        let mut f = Framer::new(100);
        f.push(&stun(84, 0)[..8]);
        assert_eq!(
            f.next_frame(),
            Err(FrameError::Oversize { len: 104, max: 100 })
        );
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..], // 'G' = 0x47 reads as a channel number...
            &[0x80, 0, 0, 0, 0, 0, 0, 0][..], // RTP-like, first bits 10
            &[0xC0, 0, 0, 0][..],       // first bits 11
            &[0x16, 0x03, 0x01, 0x00, 0x10, 0, 0, 0][..], // a TLS record: no cookie
        ] {
            let mut f = Framer::new(1500);
            f.push(bad);
            let r = f.next_frame();
            // ...and "T " as a length of 0x5420 (21536): over the limit.
            assert!(r.is_err(), "{bad:?} gave {r:?}");
        }
        // STUN with the cookie but a body length that is not a multiple of 4.
        let mut m = stun(4, 0);
        m[3] = 3;
        let mut f = Framer::new(1500);
        f.push(&m);
        assert_eq!(f.next_frame(), Err(FrameError::Garbage));
    }

    #[test]
    fn a_long_stream_does_not_grow_the_buffer() {
        let mut f = Framer::new(64);
        let m = padded(chan(30, 1));
        for _ in 0..10_000 {
            f.push(&m[..10]);
            f.push(&m[10..]);
            assert_eq!(drain(&mut f).len(), 1);
        }
        assert!(f.buf.capacity() < 1024, "{}", f.buf.capacity());
    }

    #[test]
    fn datagrams_are_checked_and_channel_data_padded_for_the_stream() {
        let s = stun(8, 1);
        assert_eq!(check_datagram(&s, 1500), Ok((FrameKind::Stun, s.clone())));
        let c = chan(5, 2);
        assert_eq!(
            check_datagram(&c, 1500),
            Ok((FrameKind::ChannelData, padded(c.clone())))
        );
        // Already padded (the turn crate pads): unchanged.
        assert_eq!(
            check_datagram(&padded(c.clone()), 1500),
            Ok((FrameKind::ChannelData, padded(c.clone())))
        );
        assert_eq!(
            check_datagram(&c[..c.len() - 1], 1500),
            Err(FrameError::Truncated)
        );
        let mut long = padded(c.clone());
        long.push(0);
        assert_eq!(check_datagram(&long, 1500), Err(FrameError::Trailing));
        let mut long = s.clone();
        long.push(0);
        assert_eq!(check_datagram(&long, 1500), Err(FrameError::Trailing));
        assert_eq!(check_datagram(&[], 1500), Err(FrameError::Truncated));
        assert_eq!(check_datagram(&[0x40], 1500), Err(FrameError::Truncated));
        assert_eq!(check_datagram(&[0x80; 40], 1500), Err(FrameError::Garbage));
        assert!(matches!(
            check_datagram(&chan(100, 0), 64),
            Err(FrameError::Oversize { .. })
        ));
    }
}
