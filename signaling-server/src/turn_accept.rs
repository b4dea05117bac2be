//! Accepting TURN client streams: the TURN-over-TCP and TURN-over-TLS listeners, and the
//! acceptor that shares the HTTPS port between HTTPS/WebSocket and TURN over TLS.
//!
//! On the shared port every connection is a TLS connection; after the handshake it is told
//! apart by its ALPN (`stun.turn`, RFC 7443, is TURN; `http/1.1` is HTTP) or, when the client
//! offered none, by its first bytes: a STUN header starts with two zero bits and carries the
//! magic cookie in bytes 4 to 8, which no HTTP request line can (its first byte is an upper-case
//! letter).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::limits::ConnLimiter;
use crate::metrics::Metrics;
use crate::turn_stream::{StreamMux, MAGIC_COOKIE};

/// The ALPN protocol id of TURN (RFC 7443 §4).
pub(crate) const TURN_ALPN: &[u8] = b"stun.turn";

/// A rustls configuration for a TURN-over-TLS port: the same certificate as `base`, with only
/// the TURN ALPN (a client that offers no ALPN is served too).
pub(crate) fn turn_tls_config(base: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut cfg = base.clone();
    cfg.alpn_protocols = vec![TURN_ALPN.to_vec()];
    Arc::new(cfg)
}

/// The rustls configuration of the shared HTTPS port: `base` plus the TURN ALPN.
pub(crate) fn shared_tls_config(base: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut cfg = base.clone();
    cfg.alpn_protocols.push(TURN_ALPN.to_vec());
    Arc::new(cfg)
}

/// Everything a listener needs to hand a stream to the relay.
#[derive(Clone)]
pub(crate) struct TurnStreams {
    /// Where the streams go.
    pub(crate) mux: Arc<StreamMux>,
    /// The TURN stream caps (total and per IP).
    pub(crate) limiter: ConnLimiter,
    /// For refusals.
    pub(crate) metrics: Arc<Metrics>,
}

impl TurnStreams {
    /// Takes a connection slot for `peer` and serves `stream` on a task of its own; a refused
    /// stream is counted and dropped.
    fn hand_over<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        match self.limiter.try_acquire(peer.ip()) {
            Ok(slot) => {
                tokio::spawn(Arc::clone(&self.mux).serve(stream, peer, slot));
            }
            Err(refused) => {
                self.metrics
                    .turn_reject(self.mux.transport(), refused.as_str());
                tracing::debug!(%peer, reason = refused.as_str(), "TURN stream refused");
            }
        }
    }
}

/// Accepts TURN-over-TCP clients until `stop`.
pub(crate) async fn accept_tcp(listener: TcpListener, to: TurnStreams, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                // Out of file descriptors and the like: the listener itself is fine.
                Err(_) => continue,
            },
            () = stop.cancelled() => return,
        };
        // Every write is whole TURN messages; Nagle would only delay one behind another.
        let _ = stream.set_nodelay(true);
        to.hand_over(stream, peer);
    }
}

/// Accepts TURN-over-TLS clients until `stop`; the handshake must end within the handshake
/// timeout.
pub(crate) async fn accept_tls(
    listener: TcpListener,
    tls: TlsAcceptor,
    to: TurnStreams,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(_) => continue,
            },
            () = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        // The slot is taken before the handshake, so handshakes count against the caps.
        let slot = match to.limiter.try_acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                to.metrics.turn_reject(to.mux.transport(), refused.as_str());
                continue;
            }
        };
        let (tls, mux) = (tls.clone(), Arc::clone(&to.mux));
        tokio::spawn(async move {
            match tokio::time::timeout(mux.handshake_timeout(), tls.accept(stream)).await {
                Ok(Ok(stream)) => mux.serve(stream, peer, slot).await,
                Ok(Err(_)) => mux.count_close("tls_handshake_failed"),
                Err(_) => mux.count_close("handshake_timeout"),
            }
        });
    }
}

/// A stream that first yields bytes already read from it (by the demultiplexer), then reads on.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(inner: S, prefix: Vec<u8>) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a TLS connection on the shared port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Turn,
}

/// Decides from the first bytes of a connection that offered no ALPN; `None` while more bytes
/// are needed. HTTP is decided at the first byte (a method starts with a letter, whose top
/// bits are `01`); STUN needs the cookie.
fn sniff(prefix: &[u8]) -> Option<Protocol> {
    let first = *prefix.first()?;
    if first >> 6 != 0 {
        return Some(Protocol::Http);
    }
    let cookie = prefix.get(4..8)?;
    Some(if cookie == MAGIC_COOKIE.to_be_bytes() {
        Protocol::Turn
    } else {
        Protocol::Http
    })
}

/// The acceptor of the shared HTTPS port (`--turns-on-listen`): TLS handshake, then HTTPS or
/// TURN. A TURN connection is handed to the relay and ends here (the HTTP server sees an
/// accept error, which it ignores).
#[derive(Clone)]
pub(crate) struct DemuxAcceptor {
    pub(crate) tls: TlsAcceptor,
    pub(crate) turn: TurnStreams,
}

type Accepted<S> = io::Result<(Prefixed<TlsStream<TcpStream>>, S)>;

impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for DemuxAcceptor {
    type Stream = Prefixed<TlsStream<TcpStream>>;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = Accepted<S>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let _ = stream.set_nodelay(true);
            let peer = stream.peer_addr()?;
            let deadline = tokio::time::Instant::now() + this.turn.mux.handshake_timeout();
            let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout");
            let mut tls = tokio::time::timeout_at(deadline, this.tls.accept(stream))
                .await
                .map_err(|_| timed_out())??;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let (protocol, prefix) = match alpn.as_deref() {
                Some(TURN_ALPN) => (Protocol::Turn, Vec::new()),
                // A TLS-ALPN-01 validation: the handshake was all the CA wanted.
                Some(b"acme-tls/1") => return Err(io::Error::other("ACME validation handshake")),
                Some(_) => (Protocol::Http, Vec::new()),
                None => {
                    let mut prefix = Vec::with_capacity(8);
                    let mut chunk = [0u8; 8];
                    loop {
                        if let Some(p) = sniff(&prefix) {
                            break (p, prefix);
                        }
                        let want = 8 - prefix.len();
                        let n = tokio::time::timeout_at(deadline, tls.read(&mut chunk[..want]))
                            .await
                            .map_err(|_| timed_out())??;
                        if n == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        prefix.extend_from_slice(&chunk[..n]);
                    }
                }
            };
            match protocol {
                Protocol::Http => Ok((Prefixed::new(tls, prefix), service)),
                Protocol::Turn => {
                    this.turn.hand_over(Prefixed::new(tls, prefix), peer);
                    Err(io::Error::other("TURN stream handed to the relay"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_http_from_stun() {
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"G"), Some(Protocol::Http));
        assert_eq!(sniff(b"GET /ws HTTP/1.1"), Some(Protocol::Http));
        assert_eq!(sniff(&[0x00, 0x03, 0x00, 0x00]), None);
        assert_eq!(
            sniff(&[0x00, 0x03, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]),
            Some(Protocol::Turn)
        );
        // Two zero bits but no cookie: not STUN, left to the HTTP server to refuse.
        assert_eq!(
            sniff(&[0x00, 0x03, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x43]),
            Some(Protocol::Http)
        );
    }
}
