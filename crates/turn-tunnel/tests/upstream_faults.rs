//! The tunnel against upstreams that misbehave: dead, silent, idle, sending garbage or
//! oversize messages; and local datagrams that are not TURN. Real loopback sockets; every wait
//! is for an event (a [`TunnelEvent`], a datagram, an accepted connection), bounded by a
//! timeout, so a hang fails the test instead of stalling it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aparte_turn_tunnel::{CloseReason, Limits, Tunnel, TunnelConfig, TunnelEvent, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

fn binding_request() -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[3; 12]);
    m
}

fn tcp(port: u16) -> Upstream {
    Upstream::Tcp {
        host: "127.0.0.1".into(),
        port,
    }
}

async fn start(upstream: Upstream, limits: Limits) -> Tunnel {
    let mut config = TunnelConfig::new(upstream);
    config.limits = limits;
    Tunnel::start(config).await.unwrap()
}

/// Sends one Binding request from a new local client; returns the client socket.
async fn poke(tunnel: &Tunnel) -> UdpSocket {
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&binding_request(), tunnel.local_addr())
        .await
        .unwrap();
    client
}

/// The next `Closed` event, skipping `Connected`.
async fn closed(
    events: &mut tokio::sync::broadcast::Receiver<TunnelEvent>,
) -> (SocketAddr, CloseReason) {
    loop {
        match timeout(STEP, events.recv())
            .await
            .expect("no close event")
            .unwrap()
        {
            TunnelEvent::Closed { client, reason } => return (client, reason),
            TunnelEvent::Connected { .. } => {}
        }
    }
}

#[tokio::test]
async fn a_dead_upstream_is_reported_at_once() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // nothing listens there now: connection refused
    let tunnel = start(tcp(port), Limits::default()).await;
    let mut events = tunnel.events();
    let started = Instant::now();
    let client = poke(&tunnel).await;
    let (who, reason) = closed(&mut events).await;
    eprintln!("refused reported in {:?}", started.elapsed());
    assert_eq!(who, client.local_addr().unwrap());
    assert_eq!(reason, CloseReason::ConnectFailed);
    let stats = tunnel.stats();
    assert_eq!(stats.closed(CloseReason::ConnectFailed), 1);
    assert_eq!(stats.streams_connected, 0);
    tunnel.close().await;
}

#[tokio::test]
async fn a_silent_tls_upstream_times_out() {
    // Accepts TCP, never answers the TLS ClientHello.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let _keep = s;
        std::future::pending::<()>().await;
    });
    let limits = Limits {
        connect_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let tunnel = start(
        Upstream::Tls {
            host: "localhost".into(),
            port,
        },
        limits,
    )
    .await;
    let mut events = tunnel.events();
    let started = Instant::now();
    let _client = poke(&tunnel).await;
    let (_, reason) = closed(&mut events).await;
    let took = started.elapsed();
    eprintln!("silent TLS upstream closed after {took:?}");
    assert_eq!(reason, CloseReason::ConnectTimeout);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert_eq!(tunnel.stats().closed(CloseReason::ConnectTimeout), 1);
    tunnel.close().await;
    hold.abort();
}

/// An upstream that reads the first message, answers `reply`, and keeps the connection open.
async fn answering_upstream(reply: Vec<u8>) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = vec![0u8; 20];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(&reply).await.unwrap();
        // Hold the stream open until the tunnel closes it.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        got
    });
    (port, task)
}

#[tokio::test]
async fn garbage_from_the_upstream_closes_the_stream() {
    let (port, upstream) = answering_upstream(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()).await;
    let tunnel = start(tcp(port), Limits::default()).await;
    let mut events = tunnel.events();
    let _client = poke(&tunnel).await;
    // "HT" reads as ChannelData on channel 0x4854 of length "TP" = 0x5450: over the limit.
    assert_eq!(closed(&mut events).await.1, CloseReason::Oversize);
    // Bytes with the top bits 10/11 are garbage outright:
    let (port, _u2) = answering_upstream(vec![0x80; 32]).await;
    let tunnel2 = start(tcp(port), Limits::default()).await;
    let mut events2 = tunnel2.events();
    let _client2 = poke(&tunnel2).await;
    assert_eq!(closed(&mut events2).await.1, CloseReason::Garbage);
    assert_eq!(tunnel2.stats().closed(CloseReason::Garbage), 1);
    // The upstream saw the tunnel's binding request intact and then its close.
    assert_eq!(
        timeout(STEP, upstream).await.unwrap().unwrap(),
        binding_request()
    );
    tunnel.close().await;
    tunnel2.close().await;
}

#[tokio::test]
async fn oversize_from_the_upstream_closes_the_stream() {
    // A ChannelData header declaring 2000 bytes against a 1024-byte limit.
    let (port, _upstream) = answering_upstream(vec![0x40, 0x00, 0x07, 0xD0]).await;
    let limits = Limits {
        max_message: 1024,
        ..Limits::default()
    };
    let tunnel = start(tcp(port), limits).await;
    let mut events = tunnel.events();
    let _client = poke(&tunnel).await;
    assert_eq!(closed(&mut events).await.1, CloseReason::Oversize);
    assert_eq!(tunnel.stats().closed(CloseReason::Oversize), 1);
    tunnel.close().await;
}

#[tokio::test]
async fn stream_messages_become_datagrams_without_padding() {
    // Two ChannelData messages (5 bytes of data, padded to 8 on the stream; 8 bytes) and a
    // STUN message, all in one write.
    let c1 = vec![0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
    let c2 = vec![0x40, 0x01, 0x00, 0x08, 9, 9, 9, 9, 9, 9, 9, 9];
    let s = binding_request();
    let mut reply = c1.clone();
    reply.extend_from_slice(&[0, 0, 0]);
    reply.extend_from_slice(&c2);
    reply.extend_from_slice(&s);
    let (port, _upstream) = answering_upstream(reply).await;
    let tunnel = start(tcp(port), Limits::default()).await;
    let client = poke(&tunnel).await;
    let mut buf = [0u8; 256];
    for want in [&c1, &c2, &s] {
        let (n, from) = timeout(STEP, client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, tunnel.local_addr());
        assert_eq!(&buf[..n], &want[..]);
    }
    let stats = tunnel.stats();
    assert_eq!(stats.messages_down, 3);
    assert_eq!(stats.channel_data_down, 2);
    assert_eq!(stats.messages_up, 1);
    tunnel.close().await;
}

#[tokio::test]
async fn an_idle_stream_is_closed() {
    let (port, _upstream) = answering_upstream(Vec::new()).await;
    let limits = Limits {
        idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let tunnel = start(tcp(port), limits).await;
    let mut events = tunnel.events();
    let started = Instant::now();
    let _client = poke(&tunnel).await;
    assert_eq!(closed(&mut events).await.1, CloseReason::Idle);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(tunnel.stats().streams_active, 0);
    tunnel.close().await;
}

#[tokio::test]
async fn local_datagrams_that_are_not_turn_are_dropped_without_a_stream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tunnel = start(tcp(port), Limits::default()).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut truncated = binding_request();
    truncated[3] = 8; // declares 8 attribute bytes it does not carry
    for bad in [&b"hello"[..], &[0x80; 40][..], &truncated[..]] {
        client.send_to(bad, tunnel.local_addr()).await.unwrap();
    }
    // Then a valid message: its stream is the first connection the upstream sees, and it
    // carries that message only.
    client
        .send_to(&binding_request(), tunnel.local_addr())
        .await
        .unwrap();
    let (mut s, _) = timeout(STEP, listener.accept()).await.unwrap().unwrap();
    let mut got = vec![0u8; 20];
    timeout(STEP, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, binding_request());
    let stats = tunnel.stats();
    assert_eq!(stats.dropped_invalid, 3);
    assert_eq!(stats.streams_opened, 1);
    tunnel.close().await;
    // Closing the tunnel closes the stream: the upstream reads end of file.
    let mut rest = Vec::new();
    timeout(STEP, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn an_upstream_that_stops_reading_is_closed_and_the_queue_stays_bounded() {
    // Accepts, then never reads: once the kernel's socket buffers are full, the tunnel's write
    // cannot finish.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let _keep = s;
        std::future::pending::<()>().await;
    });
    let limits = Limits {
        write_timeout: Duration::from_millis(300),
        queue_datagrams: 8,
        ..Limits::default()
    };
    let tunnel = start(tcp(port), limits).await;
    let mut events = tunnel.events();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // 8 KiB ChannelData messages until the tunnel gives up on the stream.
    let mut big = vec![0x40, 0x01, 0x1F, 0xFC];
    big.resize(8192, 0x55);
    let started = Instant::now();
    let reason = loop {
        assert!(started.elapsed() < STEP, "no close: {:?}", tunnel.stats());
        client.send_to(&big, tunnel.local_addr()).await.unwrap();
        match events.try_recv() {
            Ok(TunnelEvent::Closed { reason, .. }) => break reason,
            Ok(TunnelEvent::Connected { .. })
            | Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                // Let the tunnel's tasks run between datagrams.
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let stats = tunnel.stats();
    eprintln!("closed after {:?}: {stats:?}", started.elapsed());
    assert_eq!(reason, CloseReason::WriteTimeout);
    assert_eq!(stats.closed(CloseReason::WriteTimeout), 1);
    assert!(stats.dropped_queue_full > 0, "{stats:?}");
    tunnel.close().await;
    hold.abort();
}
