//! TURN over TCP and TLS (RFC 5766 §2.1, RFC 6062 framing) for the `turn` crate, whose server
//! reads and writes packets only.
//!
//! On a stream, STUN messages and ChannelData messages follow each other back to back. A STUN
//! message says its own length (20-byte header + the header's length field); a ChannelData
//! message has a 4-byte header with its length, and over a stream it is padded to a multiple of
//! 4 bytes. [`Framer`] cuts a byte stream into those messages, strictly: anything else closes
//! the stream.
//!
//! [`StreamMux`] (server side) puts every client stream of one transport behind one
//! `webrtc_util::Conn`, which is what the `turn` crate's server takes: each stream is known by
//! its real remote address, so the allocation's 5-tuple is the TCP connection, as the RFC
//! wants. Inbound messages of every stream go into one bounded queue that the crate reads;
//! packets the crate sends to an address go into that stream's own bounded queue, written by the
//! stream's own task, so a slow client never blocks the relay or another client. When that
//! queue is full the packet is dropped and counted (TURN's data is datagrams: a drop is a loss,
//! as on UDP); a stream whose writes make no progress for [`WRITE_STALL`] is closed.
//!
//! [`StreamClientConn`] is the client side: one stream to one TURN server, as a `Conn` for the
//! crate's client. Tests and `aparte-signaling-load` use it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc_util::Conn;

use crate::limits::ConnSlot;
use crate::metrics::{Metrics, Transport, TransportReason};

/// The largest message accepted from a stream, padding included: the `turn` crate's server
/// reads packets into a 1500-byte buffer and would silently cut a longer one.
pub const MAX_FRAME_BYTES: usize = 1500;

/// The STUN magic cookie (RFC 5389 §6).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

const STUN_HEADER: usize = 20;
const CHANNEL_HEADER: usize = 4;

/// Why a stream's bytes are not TURN; the stream is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first two bits are neither `00` (STUN) nor `01` (ChannelData).
    #[error("neither a STUN nor a ChannelData message")]
    NotTurn,
    /// A STUN header without the magic cookie.
    #[error("STUN header without the magic cookie")]
    BadCookie,
    /// A STUN length that is not a multiple of 4.
    #[error("STUN length not a multiple of 4")]
    BadLength,
    /// A message longer than [`MAX_FRAME_BYTES`].
    #[error("message longer than {MAX_FRAME_BYTES} bytes")]
    TooLarge,
}

impl FrameError {
    /// The metric label (`reason`) of a stream closed for this.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameError::NotTurn => "not_turn",
            FrameError::BadCookie => "bad_cookie",
            FrameError::BadLength => "bad_length",
            FrameError::TooLarge => "too_large",
        }
    }
}

/// Where the message at the start of a buffer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLen {
    /// Bytes the message takes on the stream (with ChannelData padding).
    pub on_wire: usize,
    /// Bytes of the message itself (without the padding).
    pub message: usize,
}

/// The length of the message that starts `buf`: `Ok(None)` while its header is incomplete,
/// an error as soon as the bytes seen cannot start a TURN message.
pub fn frame_len(buf: &[u8]) -> Result<Option<FrameLen>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    match first >> 6 {
        0b00 => {
            // The cookie is checked as soon as it has arrived, so garbage that happens to start
            // with 00 is refused without waiting for a whole header.
            if let Some(cookie) = buf.get(4..8) {
                if cookie != MAGIC_COOKIE.to_be_bytes() {
                    return Err(FrameError::BadCookie);
                }
            }
            if buf.len() < STUN_HEADER {
                return Ok(None);
            }
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            if !len.is_multiple_of(4) {
                return Err(FrameError::BadLength);
            }
            let total = STUN_HEADER + len;
            if total > MAX_FRAME_BYTES {
                return Err(FrameError::TooLarge);
            }
            Ok(Some(FrameLen {
                on_wire: total,
                message: total,
            }))
        }
        0b01 => {
            if buf.len() < CHANNEL_HEADER {
                return Ok(None);
            }
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            let message = CHANNEL_HEADER + len;
            let on_wire = message.next_multiple_of(4);
            if on_wire > MAX_FRAME_BYTES {
                return Err(FrameError::TooLarge);
            }
            Ok(Some(FrameLen { on_wire, message }))
        }
        _ => Err(FrameError::NotTurn),
    }
}

/// Cuts a byte stream into TURN messages. It holds at most one incomplete message plus one
/// read, so its memory is bounded by [`MAX_FRAME_BYTES`] plus the caller's read size.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Start of the bytes not yet returned.
    start: usize,
}

impl Framer {
    /// An empty framer.
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            // Everything before `start` has been returned: move the rest to the front.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message (without padding), `Ok(None)` when more bytes are needed.
    /// After an error the stream is not TURN and must be closed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let rest = &self.buf[self.start..];
        let Some(len) = frame_len(rest)? else {
            return Ok(None);
        };
        if rest.len() < len.on_wire {
            return Ok(None);
        }
        let begin = self.start;
        self.start += len.on_wire;
        Ok(Some(&self.buf[begin..begin + len.message]))
    }

    /// Bytes held that do not yet form a message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Packets queued for one client stream before further ones are dropped: about 5 s of audio at
/// 50 packets/s, enough to ride out a congestion hiccup, small enough (≤ 384 KiB) that a stalled
/// client costs little.
pub(crate) const STREAM_QUEUE: usize = 256;

/// A stream whose writes make no progress for this long is closed (`write_stalled`).
pub(crate) const WRITE_STALL: Duration = Duration::from_secs(5);

/// A stream with no complete message for this long is closed (`idle_timeout`): a client refreshes
/// its allocation and permissions at least every 5 minutes (RFC 5766 §8, §9), and an allocation
/// not refreshed within its 10-minute default lifetime is gone anyway.
pub(crate) const STREAM_IDLE: Duration = Duration::from_secs(600);

/// Messages from every stream waiting for the `turn` crate's read loop.
const INBOUND_QUEUE: usize = 1024;

/// Timeouts of the client streams.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamTimeouts {
    /// From accept to the first complete message (TLS handshake included).
    pub(crate) handshake: Duration,
    /// Between complete messages.
    pub(crate) idle: Duration,
    /// For a write to make progress.
    pub(crate) write_stall: Duration,
}

struct StreamEntry {
    out: mpsc::Sender<Vec<u8>>,
    /// Cancelled when the stream ends; its allocation's relay socket then fails, which makes
    /// the crate drop the allocation (it belongs to the stream).
    gone: CancellationToken,
}

/// Every client stream of one transport, behind one packet connection for the `turn` server.
pub(crate) struct StreamMux {
    transport: Transport,
    local_addr: SocketAddr,
    inbound_tx: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    inbound_rx: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    streams: Mutex<HashMap<SocketAddr, StreamEntry>>,
    metrics: Arc<Metrics>,
    timeouts: StreamTimeouts,
    queue: usize,
    closed: CancellationToken,
}

impl StreamMux {
    /// A multiplexer for `transport`; `local_addr` is the listening address (the 5-tuple's
    /// server side).
    pub(crate) fn new(
        transport: Transport,
        local_addr: SocketAddr,
        metrics: Arc<Metrics>,
        timeouts: StreamTimeouts,
        queue: usize,
    ) -> Arc<StreamMux> {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        Arc::new(StreamMux {
            transport,
            local_addr,
            inbound_tx,
            inbound_rx: tokio::sync::Mutex::new(inbound_rx),
            streams: Mutex::default(),
            metrics,
            timeouts,
            queue: queue.max(1),
            closed: CancellationToken::new(),
        })
    }

    /// The transport these streams use.
    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// The handshake timeout, also applied by the listeners to the TLS handshake.
    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.timeouts.handshake
    }

    /// A token cancelled when the stream from `addr` ends (already cancelled if there is none).
    pub(crate) fn stream_gone(&self, addr: SocketAddr) -> CancellationToken {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        match streams.get(&addr) {
            Some(e) => e.gone.clone(),
            None => {
                let t = CancellationToken::new();
                t.cancel();
                t
            }
        }
    }

    /// Stops every stream (the relay is closing).
    pub(crate) fn shutdown(&self) {
        self.closed.cancel();
    }

    /// Counts a stream closed (or refused) for `reason`.
    pub(crate) fn count_close(&self, reason: &'static str) {
        self.metrics
            .turn_streams_closed
            .get_or_create(&TransportReason {
                transport: self.transport.as_str(),
                reason,
            })
            .inc();
    }

    /// Serves one accepted client stream until it ends; `slot` is its connection-cap slot,
    /// held as long as the stream lives.
    pub(crate) async fn serve<S>(self: Arc<Self>, stream: S, peer: SocketAddr, slot: ConnSlot)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let _slot = slot;
        let (out_tx, out_rx) = mpsc::channel(self.queue);
        let gone = CancellationToken::new();
        {
            let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
            if streams.contains_key(&peer) {
                // The same remote address on two live streams (possible only across two local
                // ports): the second cannot be told apart, so it is refused.
                drop(streams);
                self.count_close("duplicate_address");
                return;
            }
            streams.insert(
                peer,
                StreamEntry {
                    out: out_tx,
                    gone: gone.clone(),
                },
            );
        }
        let live = self
            .metrics
            .turn_streams
            .get_or_create(&Metrics::transport(self.transport))
            .clone();
        live.inc();
        let (rd, wr) = tokio::io::split(stream);
        let reason = tokio::select! {
            r = self.read_loop(rd, peer) => r,
            r = write_loop(wr, out_rx, self.timeouts.write_stall) => r,
            () = self.closed.cancelled() => "shutdown",
        };
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer);
        gone.cancel();
        live.dec();
        self.count_close(reason);
        tracing::debug!(transport = self.transport.as_str(), %peer, reason, "TURN stream closed");
    }

    async fn read_loop<R: AsyncRead>(&self, rd: R, peer: SocketAddr) -> &'static str {
        tokio::pin!(rd);
        let mut framer = Framer::new();
        let mut chunk = vec![0u8; 4096];
        let mut first = true;
        let mut deadline = tokio::time::Instant::now() + self.timeouts.handshake;
        loop {
            let n = match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
                Err(_) if first => return "handshake_timeout",
                Err(_) => return "idle_timeout",
                Ok(Ok(0)) => return "eof",
                Ok(Err(_)) => return "read_error",
                Ok(Ok(n)) => n,
            };
            framer.push(&chunk[..n]);
            loop {
                match framer.next_frame() {
                    Ok(Some(frame)) => {
                        first = false;
                        deadline = tokio::time::Instant::now() + self.timeouts.idle;
                        // Waiting here when the relay is behind pushes back on this stream's
                        // TCP window; other streams keep their own share of the queue.
                        if self.inbound_tx.send((frame.to_vec(), peer)).await.is_err() {
                            return "shutdown";
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return e.as_str(),
                }
            }
        }
    }
}

/// Writes queued packets; batches what is queued into one flush.
async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    stall: Duration,
) -> &'static str {
    let mut wr = tokio::io::BufWriter::with_capacity(16 * 1024, wr);
    let batch = rx.max_capacity();
    loop {
        let Some(first) = rx.recv().await else {
            return "shutdown";
        };
        let write = async {
            wr.write_all(&first).await?;
            for _ in 1..batch {
                match rx.try_recv() {
                    Ok(p) => wr.write_all(&p).await?,
                    Err(_) => break,
                }
            }
            wr.flush().await
        };
        match tokio::time::timeout(stall, write).await {
            Err(_) => return "write_stalled",
            Ok(Err(_)) => return "write_error",
            Ok(Ok(())) => {}
        }
    }
}

fn closed_error() -> webrtc_util::Error {
    webrtc_util::Error::Other("TURN stream listener closed".into())
}

#[async_trait]
impl Conn for StreamMux {
    async fn connect(&self, _addr: SocketAddr) -> Result<(), webrtc_util::Error> {
        Err(webrtc_util::Error::Other(
            "a listener does not connect".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<usize, webrtc_util::Error> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), webrtc_util::Error> {
        let mut rx = self.inbound_rx.lock().await;
        let (msg, from) = tokio::select! {
            m = rx.recv() => m.ok_or_else(closed_error)?,
            () = self.closed.cancelled() => return Err(closed_error()),
        };
        // Never longer than MAX_FRAME_BYTES, which is the crate's buffer size.
        let n = msg.len().min(buf.len());
        buf[..n].copy_from_slice(&msg[..n]);
        Ok((n, from))
    }

    async fn send(&self, _buf: &[u8]) -> Result<usize, webrtc_util::Error> {
        Err(webrtc_util::Error::Other("send needs an address".into()))
    }

    /// Queues `buf` for the stream from `target`; never waits. A packet for a stream that has
    /// gone, or whose queue is full, is dropped (and counted), as a UDP datagram would be lost.
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<usize, webrtc_util::Error> {
        let out = {
            let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
            streams.get(&target).map(|e| e.out.clone())
        };
        let reason = match out.map(|o| o.try_send(buf.to_vec())) {
            Some(Ok(())) => return Ok(buf.len()),
            Some(Err(mpsc::error::TrySendError::Full(_))) => "queue_full",
            Some(Err(mpsc::error::TrySendError::Closed(_))) | None => "stream_gone",
        };
        self.metrics
            .turn_stream_dropped_packets
            .get_or_create(&TransportReason {
                transport: self.transport.as_str(),
                reason,
            })
            .inc();
        Ok(buf.len())
    }

    fn local_addr(&self) -> Result<SocketAddr, webrtc_util::Error> {
        Ok(self.local_addr)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> Result<(), webrtc_util::Error> {
        self.closed.cancel();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The client side of TURN over a stream: one TCP or TLS stream to one TURN server, as a
/// packet connection for the `turn` crate's client (`turn::client::ClientConfig::conn`).
/// Every packet sent goes to the server whatever the address given; every message received
/// comes from `server`.
pub struct StreamClientConn {
    reader: tokio::sync::Mutex<(Box<dyn AsyncRead + Send + Unpin>, Framer)>,
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    server: SocketAddr,
    local: SocketAddr,
}

impl StreamClientConn {
    /// Wraps a connected stream to the TURN server at `server`; `local` is reported as the
    /// connection's local address.
    pub fn new<S>(stream: S, server: SocketAddr, local: SocketAddr) -> StreamClientConn
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        StreamClientConn {
            reader: tokio::sync::Mutex::new((Box::new(rd), Framer::new())),
            writer: tokio::sync::Mutex::new(Box::new(wr)),
            server,
            local,
        }
    }
}

#[async_trait]
impl Conn for StreamClientConn {
    async fn connect(&self, _addr: SocketAddr) -> Result<(), webrtc_util::Error> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<usize, webrtc_util::Error> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), webrtc_util::Error> {
        let mut guard = self.reader.lock().await;
        let (rd, framer) = &mut *guard;
        let mut chunk = [0u8; 4096];
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    let n = frame.len().min(buf.len());
                    buf[..n].copy_from_slice(&frame[..n]);
                    return Ok((n, self.server));
                }
                Ok(None) => {}
                Err(e) => return Err(webrtc_util::Error::Other(e.to_string())),
            }
            let n = rd.read(&mut chunk).await?;
            if n == 0 {
                return Err(webrtc_util::Error::Other("the TURN server closed".into()));
            }
            framer.push(&chunk[..n]);
        }
    }

    async fn send(&self, buf: &[u8]) -> Result<usize, webrtc_util::Error> {
        self.send_to(buf, self.server).await
    }

    /// Writes one message; a ChannelData message is padded to 4 bytes, as a stream requires.
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> Result<usize, webrtc_util::Error> {
        let pad = match buf.first() {
            Some(b) if b >> 6 == 0b01 => buf.len().next_multiple_of(4) - buf.len(),
            _ => 0,
        };
        let mut w = self.writer.lock().await;
        w.write_all(buf).await?;
        if pad > 0 {
            w.write_all(&[0u8; 3][..pad]).await?;
        }
        w.flush().await?;
        Ok(buf.len())
    }

    fn local_addr(&self) -> Result<SocketAddr, webrtc_util::Error> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }

    async fn close(&self) -> Result<(), webrtc_util::Error> {
        let mut w = self.writer.lock().await;
        let _ = w.shutdown().await;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(len: u16) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[7u8; 12]);
        m.extend(std::iter::repeat_n(0xab, usize::from(len)));
        m
    }

    fn chan(len: u16) -> Vec<u8> {
        let mut m = vec![0x40, 0x01];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(0xcd, usize::from(len)));
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    fn drain(f: &mut Framer) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        while let Some(m) = f.next_frame()? {
            out.push(m.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn merged_messages_are_split() {
        let (a, b, c) = (stun(8), chan(5), stun(0));
        let mut f = Framer::new();
        f.push(&[a.clone(), b.clone(), c.clone()].concat());
        let got = drain(&mut f).unwrap();
        // The ChannelData message comes without its 3 bytes of padding.
        assert_eq!(got, vec![a, b[..9].to_vec(), c]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn byte_by_byte_reads_give_the_same_messages() {
        let stream = [stun(12), chan(3), chan(4), stun(4)].concat();
        let mut f = Framer::new();
        let mut got = Vec::new();
        for b in &stream {
            f.push(std::slice::from_ref(b));
            got.extend(drain(&mut f).unwrap());
        }
        assert_eq!(got.len(), 4);
        assert_eq!(got[1].len(), 7);
        assert_eq!(got[2].len(), 8);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn a_partial_message_waits() {
        let m = stun(40);
        let mut f = Framer::new();
        f.push(&m[..30]);
        assert_eq!(f.next_frame().unwrap(), None);
        assert_eq!(f.pending(), 30);
        f.push(&m[30..]);
        assert_eq!(f.next_frame().unwrap(), Some(&m[..]));
    }

    #[test]
    fn oversize_is_refused_from_the_header() {
        // 20 + 1484 = 1504 > 1500, refused before the body arrives.
        let m = stun(1484);
        assert_eq!(frame_len(&m[..20]), Err(FrameError::TooLarge));
        assert_eq!(frame_len(&stun(1480)[..20]).unwrap().unwrap().on_wire, 1500);
        // ChannelData: 4 + 1493 padded to 1500 is fine, 4 + 1497 padded to 1504 is not.
        assert_eq!(frame_len(&chan(1493)[..4]).unwrap().unwrap().on_wire, 1500);
        assert_eq!(frame_len(&chan(1497)[..4]), Err(FrameError::TooLarge));
        assert_eq!(
            frame_len(&[0x7f, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLarge)
        );
    }

    #[test]
    fn garbage_is_refused_early() {
        // "GE" reads as channel 0x4745 and "T " as a length of 21536: refused at once.
        assert_eq!(frame_len(b"GET / HTTP/1.1\r\n"), Err(FrameError::TooLarge));
        assert_eq!(frame_len(&[0x80]), Err(FrameError::NotTurn));
        assert_eq!(frame_len(&[0xff, 0, 0, 0]), Err(FrameError::NotTurn));
        // A STUN-looking header with a wrong cookie, refused at byte 8.
        assert_eq!(
            frame_len(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x43]),
            Err(FrameError::BadCookie)
        );
        let mut bad_len = stun(4);
        bad_len[3] = 5;
        assert_eq!(frame_len(&bad_len), Err(FrameError::BadLength));
        // After a good message, garbage is an error, not a hang.
        let mut f = Framer::new();
        f.push(&[stun(0), vec![0xc0, 0, 0, 0]].concat());
        assert!(f.next_frame().unwrap().is_some());
        assert_eq!(f.next_frame(), Err(FrameError::NotTurn));
        // Nothing yet, or only a short header: wait.
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0, 1, 0]), Ok(None));
        assert_eq!(frame_len(&[0x40, 0]), Ok(None));
    }

    #[test]
    fn random_bytes_never_panic_and_memory_stays_bounded() {
        // A cheap deterministic generator: the framer must not panic on anything, and what it
        // holds must stay below one message plus one read.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut f = Framer::new();
            for _ in 0..8 {
                let mut chunk = vec![0u8; 512];
                for b in &mut chunk {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = (x >> 24) as u8;
                }
                // Start some chunks like a ChannelData header so long runs are explored.
                if x.is_multiple_of(3) {
                    chunk[0] = 0x40 | (chunk[0] & 0x3f);
                }
                f.push(&chunk);
                match drain(&mut f) {
                    Ok(_) => assert!(f.pending() < MAX_FRAME_BYTES + 512),
                    Err(_) => break,
                }
            }
        }
    }
}
