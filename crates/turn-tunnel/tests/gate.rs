//! The tunnel's gate (issue 16, "UDP first"): held requests wait without a connection and go
//! out, the newest only, when the gate opens; declined ones are answered at once with a STUN
//! 403 carrying the request's transaction id. Real loopback sockets; every wait is for an
//! event (a datagram, an accepted connection, a close event) bounded by a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use aparte_turn_tunnel::{CloseReason, Gate, Tunnel, TunnelConfig, TunnelEvent, Upstream};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

/// A Binding request whose transaction id is twelve times `id`.
fn binding_request(id: u8) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[id; 12]);
    m
}

async fn tunnel_to(listener: &TcpListener) -> Tunnel {
    let port = listener.local_addr().unwrap().port();
    Tunnel::start(TunnelConfig::new(Upstream::Tcp {
        host: "127.0.0.1".into(),
        port,
    }))
    .await
    .unwrap()
}

#[tokio::test]
async fn a_held_request_goes_out_when_the_gate_opens_and_only_the_newest() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel = tunnel_to(&listener).await;
    tunnel.set_gate(Gate::Hold);
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for id in 1..=3 {
        client
            .send_to(&binding_request(id), tunnel.local_addr())
            .await
            .unwrap();
    }
    // Held: no connection comes (bounded look; an early connection fails the test).
    assert!(
        timeout(Duration::from_millis(300), listener.accept())
            .await
            .is_err(),
        "the tunnel connected while held"
    );
    assert_eq!(tunnel.stats().streams_connected, 0);
    tunnel.set_gate(Gate::Open);
    let (mut upstream, _) = timeout(STEP, listener.accept()).await.unwrap().unwrap();
    let mut got = vec![0u8; 20];
    timeout(STEP, upstream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        binding_request(3),
        "the newest held request goes first"
    );
    // Later datagrams follow on the same stream.
    client
        .send_to(&binding_request(4), tunnel.local_addr())
        .await
        .unwrap();
    timeout(STEP, upstream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, binding_request(4));
    tunnel.close().await;
}

/// The 403 error response the tunnel answers `request` with, checked field by field.
fn assert_declined(response: &[u8], id: u8) {
    let mut m = stun::message::Message::new();
    m.unmarshal_binary(response).unwrap();
    assert_eq!(m.typ.class, stun::message::CLASS_ERROR_RESPONSE);
    assert_eq!(m.typ.method, stun::message::METHOD_BINDING);
    assert_eq!(m.transaction_id.0, [id; 12]);
    let mut code = stun::error_code::ErrorCodeAttribute::default();
    stun::message::Getter::get_from(&mut code, &m).unwrap();
    assert_eq!(code.code.0, stun::error_code::CODE_FORBIDDEN.0);
}

async fn answer(client: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    let (n, _) = timeout(STEP, client.recv_from(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn declined_requests_are_answered_at_once_without_a_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel = tunnel_to(&listener).await;
    tunnel.set_gate(Gate::Decline);
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&binding_request(7), tunnel.local_addr())
        .await
        .unwrap();
    assert_declined(&answer(&client).await, 7);
    // A response (not a request) is never answered.
    let mut response = binding_request(8);
    response[0..2].copy_from_slice(&[0x01, 0x01]);
    client
        .send_to(&response, tunnel.local_addr())
        .await
        .unwrap();
    client
        .send_to(&binding_request(9), tunnel.local_addr())
        .await
        .unwrap();
    assert_declined(&answer(&client).await, 9);
    assert_eq!(tunnel.stats().declined, 2);
    assert_eq!(tunnel.stats().streams_opened, 0);
    assert!(
        timeout(Duration::from_millis(100), listener.accept())
            .await
            .is_err(),
        "a declined tunnel connected"
    );
    tunnel.close().await;
}

#[tokio::test]
async fn a_held_request_is_declined_when_the_gate_declines() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel = tunnel_to(&listener).await;
    let mut events = tunnel.events();
    tunnel.set_gate(Gate::Hold);
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&binding_request(5), tunnel.local_addr())
        .await
        .unwrap();
    // The held stream task has the datagram once the tunnel counts its stream as opened.
    tokio::time::timeout(STEP, async {
        while tunnel.stats().streams_opened == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    tunnel.set_gate(Gate::Decline);
    assert_declined(&answer(&client).await, 5);
    match timeout(STEP, events.recv()).await.unwrap().unwrap() {
        TunnelEvent::Closed { reason, .. } => assert_eq!(reason, CloseReason::Declined),
        other => panic!("{other:?}"),
    }
    assert_eq!(tunnel.stats().streams_connected, 0);
    tunnel.close().await;
}
