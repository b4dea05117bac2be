//! End-to-end tests: the real `aparte-signaling` binary, real sockets, real WebSocket clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aparte_signaling_protocol::token::{self, Claims};
use aparte_signaling_protocol::{ClientMessage, LeaveReason, ServerMessage};
use common::{room, Client, Event, Server, SECRET, WAIT};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// hello + join with `resume`; returns the answer.
async fn join_resuming(
    c: &mut Client,
    r: &aparte_signaling_protocol::RoomId,
    resume: Option<aparte_signaling_protocol::ResumeToken>,
) -> ServerMessage {
    c.hello().await;
    c.send(&ClientMessage::Join {
        room: r.clone(),
        token: None,
        resume,
    })
    .await;
    c.recv().await
}

/// A client whose connection died comes back on a new one with its resume token: it takes its
/// old seat at once (no `room_full` while the server still holds the dead connection), the
/// other member sees the old id leave and the new one join, and the old connection is closed.
/// A token from another room, or a stale one, takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_takes_back_the_seat_of_a_lost_connection_at_once() {
    // A long idle timeout: the old connection would hold its seat for a minute.
    let srv = Server::start(&["--ping-interval", "20s", "--idle-timeout", "60s"]);
    let r = room();
    let mut a = srv.connect().await;
    let (a_id, a_token) = match join_resuming(&mut a, &r, None).await {
        ServerMessage::Joined {
            peer_id, resume, ..
        } => (peer_id, resume.expect("a token")),
        other => panic!("{other:?}"),
    };
    let (mut b, b_id) = srv.join(&r).await;
    assert!(matches!(a.recv().await, ServerMessage::PeerJoined { peer_id, .. } if peer_id == b_id));

    // Without the token the room is full while A's old connection lives.
    let mut stranger = srv.connect().await;
    match join_resuming(&mut stranger, &r, None).await {
        ServerMessage::Error { code, .. } => assert_eq!(code.as_str(), "room_full"),
        other => panic!("{other:?}"),
    }
    // A's token in another room takes nothing there (and the room there is new).
    let other_room = room();
    let mut elsewhere = srv.connect().await;
    match join_resuming(&mut elsewhere, &other_room, Some(a_token.clone())).await {
        ServerMessage::Joined { peers, .. } => assert!(peers.is_empty()),
        other => panic!("{other:?}"),
    }

    // A comes back on a new connection with its token: in at once, B is its peer.
    let started = Instant::now();
    let mut a2 = srv.connect().await;
    let (a2_id, a2_token) = match join_resuming(&mut a2, &r, Some(a_token.clone())).await {
        ServerMessage::Joined {
            peer_id,
            peers,
            resume,
            ..
        } => {
            assert_eq!(
                peers.iter().map(|p| p.peer_id).collect::<Vec<_>>(),
                vec![b_id]
            );
            (peer_id, resume.expect("a new token"))
        }
        other => panic!("{other:?}"),
    };
    println!("seat taken back in {:?}", started.elapsed());
    assert_ne!(a2_id, a_id);
    assert_ne!(a2_token, a_token, "a fresh token for the new connection");
    match b.recv().await {
        ServerMessage::PeerLeft { peer_id, reason } => {
            assert_eq!((peer_id, reason), (a_id, LeaveReason::Disconnected));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(b.recv().await, ServerMessage::PeerJoined { peer_id, .. } if peer_id == a2_id)
    );
    a.expect_close(1000).await;
    // The old token is spent: it matches nobody now.
    let mut late = srv.connect().await;
    match join_resuming(&mut late, &r, Some(a_token)).await {
        ServerMessage::Error { code, .. } => assert_eq!(code.as_str(), "room_full"),
        other => panic!("{other:?}"),
    }
    assert_eq!(srv.metric("aparte_signaling_resumes_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_relay_leave() {
    let srv = Server::start(&[]);
    let r = room();
    let (mut a, a_id) = srv.join(&r).await;

    let mut b = srv.connect().await;
    b.hello().await;
    b.send(&ClientMessage::Join {
        room: r.clone(),
        token: None,
        resume: None,
    })
    .await;
    let b_id = match b.recv().await {
        ServerMessage::Joined {
            peer_id,
            peers,
            capacity,
            room: joined_room,
            ice_servers,
            resume,
        } => {
            assert!(resume.is_some(), "every member gets a resume token");
            assert_eq!(joined_room, r);
            assert_eq!(capacity, 2);
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].peer_id, a_id);
            assert!(ice_servers.is_empty());
            peer_id
        }
        other => panic!("{other:?}"),
    };
    match a.recv().await {
        ServerMessage::PeerJoined { peer_id, .. } => assert_eq!(peer_id, b_id),
        other => panic!("{other:?}"),
    }

    // Payloads arrive byte for byte, in both directions, broadcast or addressed.
    let offer = r#"{"kind":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n","n":[1,2.5,null]}"#;
    a.relay(None, offer).await;
    assert_eq!(b.expect_relay().await, (a_id, offer.to_owned()));
    b.relay(Some(a_id), r#""answer""#).await;
    assert_eq!(a.expect_relay().await, (b_id, r#""answer""#.to_owned()));

    // App-level ping.
    a.send(&ClientMessage::Ping).await;
    assert!(matches!(a.recv().await, ServerMessage::Pong));

    // Addressing a peer that is not there is refused, the connection stays.
    a.relay(Some(999_999), "1").await;
    a.expect_error("peer_not_found").await;

    b.send(&ClientMessage::Leave).await;
    b.expect_close(1000).await;
    match a.recv().await {
        ServerMessage::PeerLeft { peer_id, reason } => {
            assert_eq!(peer_id, b_id);
            assert_eq!(reason, LeaveReason::Left);
        }
        other => panic!("{other:?}"),
    }
    // Alone in the room now.
    a.relay(None, "1").await;
    a.expect_error("peer_not_found").await;
    assert!(srv.metric("aparte_signaling_messages_relayed_total ") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_full_and_empty_rooms_vanish() {
    let srv = Server::start(&[]);
    let r = room();
    let (mut a, _) = srv.join(&r).await;
    let (mut b, b_id) = srv.join(&r).await;
    assert!(matches!(a.recv().await, ServerMessage::PeerJoined { .. }));

    let mut c = srv.connect().await;
    c.hello().await;
    c.send(&ClientMessage::Join {
        room: r.clone(),
        token: None,
        resume: None,
    })
    .await;
    c.expect_error("room_full").await;
    c.expect_close(4004).await;

    // The two members are not disturbed.
    a.relay(None, "{}").await;
    assert_eq!(b.expect_relay().await.1, "{}");
    assert_eq!(srv.metric("aparte_signaling_rooms "), 1.0);
    assert_eq!(
        srv.metric("aparte_signaling_rejects_total{reason=\"room_full\"} "),
        1.0
    );
    drop(a);
    match b.recv().await {
        ServerMessage::PeerLeft { .. } => {}
        other => panic!("{other:?}"),
    }
    b.send(&ClientMessage::Leave).await;
    b.expect_close(1000).await;
    let _ = b_id;
    // Empty rooms vanish.
    let deadline = Instant::now() + WAIT;
    while srv.metric("aparte_signaling_rooms ") != 0.0 {
        assert!(Instant::now() < deadline, "room did not vanish");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larger_rooms_when_configured() {
    let srv = Server::start(&["--room-capacity", "3"]);
    let r = room();
    let (mut a, _) = srv.join(&r).await;
    let (mut b, _) = srv.join(&r).await;
    let (mut c, c_id) = srv.join(&r).await;
    assert!(matches!(a.recv().await, ServerMessage::PeerJoined { .. }));
    assert!(matches!(a.recv().await, ServerMessage::PeerJoined { .. }));
    assert!(matches!(b.recv().await, ServerMessage::PeerJoined { .. }));
    c.relay(None, "3").await;
    assert_eq!(a.expect_relay().await, (c_id, "3".into()));
    assert_eq!(b.expect_relay().await, (c_id, "3".into()));
    let mut d = srv.connect().await;
    d.hello().await;
    d.send(&ClientMessage::Join {
        room: r.clone(),
        token: None,
        resume: None,
    })
    .await;
    d.expect_error("room_full").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_left_when_a_client_vanishes_without_close() {
    let srv = Server::start(&[]);
    let r = room();
    let (mut a, _) = srv.join(&r).await;
    let (b, b_id) = srv.join(&r).await;
    assert!(matches!(a.recv().await, ServerMessage::PeerJoined { .. }));
    // Drop the TCP connection without a WebSocket close frame.
    let tcp = b.ws.into_inner();
    drop(tcp);
    match a.recv().await {
        ServerMessage::PeerLeft { peer_id, reason } => {
            assert_eq!(peer_id, b_id);
            assert_eq!(reason, LeaveReason::Disconnected);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_detected_by_heartbeat() {
    let srv = Server::start(&["--ping-interval", "200ms", "--idle-timeout", "1s"]);
    let r = room();
    let (mut a, _) = srv.join(&r).await;
    // b joins, then never reads again: it answers no ping, but its TCP connection stays open.
    let (b, b_id) = srv.join(&r).await;
    assert!(matches!(a.recv().await, ServerMessage::PeerJoined { .. }));
    let started = Instant::now();
    // a keeps answering pings because it keeps reading.
    match a.recv().await {
        ServerMessage::PeerLeft { peer_id, reason } => {
            assert_eq!(peer_id, b_id);
            assert_eq!(reason, LeaveReason::Disconnected);
        }
        other => panic!("{other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "detected too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "detected too late: {took:?}");
    drop(b);
    assert!(srv.metric("aparte_signaling_rejects_total{reason=\"idle_timeout\"} ") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout() {
    let srv = Server::start(&["--handshake-timeout", "300ms"]);
    let mut a = srv.connect().await;
    a.hello().await;
    a.expect_error("handshake_timeout").await;
    a.expect_close(4008).await;
}

async fn join_with(
    srv: &Server,
    r: &aparte_signaling_protocol::RoomId,
    t: Option<String>,
) -> Client {
    let mut c = srv.connect().await;
    c.hello().await;
    c.send(&ClientMessage::Join {
        room: r.clone(),
        token: t,
        resume: None,
    })
    .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens() {
    let srv = Server::start(&["--token-secret", SECRET]);
    let r = room();
    let mint = |room: String, exp: u64, label: Option<&str>| {
        token::mint(
            SECRET.as_bytes(),
            &Claims {
                room,
                exp,
                label: label.map(str::to_owned),
            },
        )
        .unwrap()
    };

    let mut c = join_with(&srv, &r, None).await;
    c.expect_error("token_required").await;
    c.expect_close(4003).await;

    let mut c = join_with(&srv, &r, Some("not.a.token".into())).await;
    c.expect_error("token_invalid").await;
    c.expect_close(4003).await;

    let forged = token::mint(
        b"another-secret-0123456789abcdef-0123",
        &Claims {
            room: r.to_string(),
            exp: now() + 60,
            label: None,
        },
    )
    .unwrap();
    let mut c = join_with(&srv, &r, Some(forged)).await;
    c.expect_error("token_invalid").await;

    let mut c = join_with(&srv, &r, Some(mint(r.to_string(), now() - 1, None))).await;
    c.expect_error("token_expired").await;
    c.expect_close(4003).await;

    let other = room();
    let mut c = join_with(&srv, &r, Some(mint(other.to_string(), now() + 60, None))).await;
    c.expect_error("token_wrong_room").await;
    c.expect_close(4003).await;

    // A valid room token, and an any-room token minted by the binary's own subcommand.
    let mut a = join_with(
        &srv,
        &r,
        Some(mint(r.to_string(), now() + 60, Some("alice"))),
    )
    .await;
    assert!(matches!(a.recv().await, ServerMessage::Joined { .. }));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aparte-signaling"))
        .args(["token", "--room", "any", "--ttl", "5m", "--label", "bob"])
        .env("APARTE_TOKEN_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut b = join_with(&srv, &r, Some(cli_token)).await;
    match b.recv().await {
        ServerMessage::Joined { peers, .. } => {
            assert_eq!(peers[0].label.as_deref(), Some("alice"));
        }
        other => panic!("{other:?}"),
    }
    match a.recv().await {
        ServerMessage::PeerJoined { label, .. } => assert_eq!(label.as_deref(), Some("bob")),
        other => panic!("{other:?}"),
    }
    for reason in [
        "token_required",
        "token_invalid",
        "token_expired",
        "token_wrong_room",
    ] {
        let line = format!("aparte_signaling_rejects_total{{reason=\"{reason}\"}} ");
        assert!(srv.metric(&line) >= 1.0, "{reason} not counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_errors_and_others_keep_being_served() {
    let srv = Server::start(&[]);
    let r = room();
    let (mut a, _) = srv.join(&r).await;
    let (mut b, _) = srv.join(&r).await;
    assert!(matches!(a.recv().await, ServerMessage::PeerJoined { .. }));

    // Oversize (over 64 KiB) but under the hard frame cap: an error, the connection stays.
    let big = format!(
        r#"{{"type":"relay","payload":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    a.send_text(&big).await;
    a.expect_error("message_too_large").await;
    a.send_text("{not json").await;
    a.expect_error("malformed").await;
    a.send_text(r#"{"type":"subscribe","topic":"all"}"#).await;
    a.expect_error("unknown_type").await;
    a.send_text(r#"{"type":"relay","payload":1,"extra":true}"#)
        .await;
    a.expect_error("invalid_message").await;
    a.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    a.expect_error("malformed").await;
    a.send(&ClientMessage::Hello { version: 1 }).await;
    a.expect_error("already_joined").await;

    // a and b still relay.
    a.relay(None, r#"{"still":"here"}"#).await;
    assert_eq!(b.expect_relay().await.1, r#"{"still":"here"}"#);
    b.relay(None, "2").await;
    assert_eq!(a.expect_relay().await.1, "2");

    // Protocol order and version.
    let mut c = srv.connect().await;
    c.send(&ClientMessage::Ping).await;
    c.expect_error("hello_required").await;
    c.send(&ClientMessage::Hello { version: 99 }).await;
    c.expect_error("version_mismatch").await;
    c.expect_close(4001).await;

    // A frame over four times the limit closes that connection only.
    let mut d = srv.connect().await;
    d.hello().await;
    let huge = "y".repeat(300 * 1024);
    let _ = d.ws.send(Message::text(huge)).await;
    match d.next_event().await {
        Event::Closed(code) => assert!(code.is_none() || code == Some(1009), "{code:?}"),
        Event::Msg(m) => panic!("{m:?}"),
    }
    // Invalid UTF-8 in a text frame closes that connection only.
    let mut e = srv.connect().await;
    e.hello().await;
    let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![0xffu8, 0xfe, 0x22],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    let _ = e.ws.send(Message::Frame(frame)).await;
    match e.next_event().await {
        Event::Closed(code) => assert!(code.is_none() || code == Some(1007), "{code:?}"),
        Event::Msg(m) => panic!("{m:?}"),
    }

    // Too many errors end the connection.
    let mut f = srv.connect().await;
    f.hello().await;
    f.relay(None, "1").await;
    f.expect_error("not_joined").await;
    f.send_text(r#"{"type":"join","room":"not/a/room"}"#).await;
    f.expect_error("invalid_room_id").await;
    for _ in 0..15 {
        f.send_text("[]").await;
    }
    f.expect_close(4000).await;

    a.relay(None, "3").await;
    assert_eq!(b.expect_relay().await.1, "3");
    for reason in [
        "message_too_large",
        "malformed",
        "unknown_type",
        "invalid_message",
        "hello_required",
        "version_mismatch",
        "too_many_errors",
        "not_joined",
        "invalid_room_id",
    ] {
        let line = format!("aparte_signaling_rejects_total{{reason=\"{reason}\"}} ");
        assert!(srv.metric(&line) >= 1.0, "{reason} not counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_client_is_rate_limited_while_other_rooms_relay() {
    let srv = Server::start(&["--rate-limit", "20", "--rate-burst", "40"]);
    let r1 = room();
    let (mut flooder, _) = srv.join(&r1).await;
    let (mut victim, _) = srv.join(&r1).await;
    assert!(matches!(
        flooder.recv().await,
        ServerMessage::PeerJoined { .. }
    ));
    let r2 = room();
    let (mut x, _) = srv.join(&r2).await;
    let (mut y, _) = srv.join(&r2).await;
    assert!(matches!(x.recv().await, ServerMessage::PeerJoined { .. }));

    let started = Instant::now();
    let flood = tokio::spawn(async move {
        for i in 0..2000 {
            flooder.relay(None, &i.to_string()).await;
        }
        flooder
    });
    // Meanwhile another room relays normally, every message, in order.
    for i in 0..20 {
        x.relay(None, &format!("{i}")).await;
        assert_eq!(y.expect_relay().await.1, i.to_string());
    }
    let mut flooder = flood.await.unwrap();
    // The flooder was told.
    flooder.expect_error("rate_limited").await;
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), victim.next_event()).await {
            Ok(Event::Msg(ServerMessage::Relay { .. })) => got += 1,
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    // The victim got at most burst + rate * (time the server can have spent on the flood).
    // The bucket counts every frame, so the flooder's hello and join took 2 of the 40: at
    // least 38 relays pass (more if the bucket refilled between join and flood).
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = (40.0 + 20.0 * (elapsed + 0.5)) as usize;
    assert!(got >= 38, "burst not honoured: {got}");
    assert!(got <= allowed, "rate limit not applied: {got} > {allowed}");
    assert!(srv.metric("aparte_signaling_rejects_total{reason=\"rate_limited\"} ") >= 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps() {
    let srv = Server::start(&["--max-connections-per-ip", "2"]);
    let _a = srv.connect().await;
    let _b = srv.connect().await;
    let res = tokio_tungstenite::connect_async(srv.url()).await;
    assert!(res.is_err(), "third connection from one IP must be refused");
    assert_eq!(
        srv.metric("aparte_signaling_rejects_total{reason=\"too_many_connections_per_ip\"} "),
        1.0
    );
    let srv = Server::start(&["--max-connections", "1"]);
    let _a = srv.connect().await;
    assert!(tokio_tungstenite::connect_async(srv.url()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_with_a_reason() {
    let srv = Server::start(&[
        "--send-queue",
        "4",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ]);
    let r = room();
    let (mut fast, _) = srv.join(&r).await;
    let (mut slow, _) = srv.join(&r).await;
    assert!(matches!(
        fast.recv().await,
        ServerMessage::PeerJoined { .. }
    ));
    // `slow` never reads; large messages fill its socket buffers, then its queue.
    let payload = format!("\"{}\"", "z".repeat(60_000));
    let mut left = false;
    for _ in 0..2000 {
        fast.relay(None, &payload).await;
        if srv.metric("aparte_signaling_rejects_total{reason=\"slow_consumer\"} ") >= 1.0 {
            left = true;
            break;
        }
    }
    assert!(left, "slow consumer was never disconnected");
    loop {
        match fast.recv().await {
            ServerMessage::PeerLeft { .. } => break,
            ServerMessage::Error { code, .. } => assert_eq!(code.as_str(), "peer_not_found"),
            other => panic!("{other:?}"),
        }
    }
    // The slow one finds, once it reads, the reason and the close code (or a reset).
    let mut saw_reason = false;
    loop {
        match slow.next_event().await {
            Event::Msg(ServerMessage::Error { code, .. }) => {
                assert_eq!(code.as_str(), "slow_consumer");
                saw_reason = true;
            }
            Event::Msg(_) => continue,
            Event::Closed(code) => {
                assert!(code.is_none() || code == Some(4009), "{code:?}");
                break;
            }
        }
    }
    let _ = saw_reason;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let srv = Server::start(&[]);
    let (status, body) = srv.http_get("/healthz");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body.trim(), "ok");
    // Metrics are on their own listener only; the public port answers 404.
    let (status, _) = srv.http_get("/metrics");
    assert!(status.contains("404"), "{status}");
    let (status, body) = common::http_get(srv.metrics_addr.unwrap(), "/metrics");
    assert!(status.contains("200"), "{status}");
    for name in [
        "aparte_signaling_connections ",
        "aparte_signaling_rooms ",
        "aparte_signaling_messages_relayed_total ",
    ] {
        assert!(body.contains(name), "missing {name}");
    }
    let (status, _) = srv.http_get("/nope");
    assert!(status.contains("404"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown() {
    let mut srv = Server::start(&["--drain-timeout", "3s"]);
    let r = room();
    let (mut a, _) = srv.join(&r).await;
    let (mut b, _) = srv.join(&r).await;
    assert!(matches!(a.recv().await, ServerMessage::PeerJoined { .. }));
    srv.terminate();
    for c in [&mut a, &mut b] {
        match c.recv().await {
            ServerMessage::Shutdown { .. } => {}
            other => panic!("{other:?}"),
        }
        c.expect_close(1001).await;
    }
    let status = srv.wait_exit().await;
    assert!(status.success(), "{status:?}");
    // The process has exited, but its last lines may still be on their way through the
    // reader thread: read until that thread sees end of output.
    let mut rest = Vec::new();
    while let Ok(line) = srv.lines.recv_timeout(std::time::Duration::from_secs(10)) {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(srv.addr).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clients_in_500_rooms_none_lost_none_misrouted() {
    const ROOMS: usize = 500;
    const MSGS: usize = 5;
    let srv = Server::start(&[
        "--max-connections-per-ip",
        "2000",
        "--max-connections",
        "2000",
    ]);
    let url = srv.url();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(ROOMS * 2));
    for i in 0..ROOMS {
        let r = room();
        for side in 0..2 {
            let (url, r, sem, barrier) = (url.clone(), r.clone(), sem.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let (mut c, already) = {
                    let _permit = sem.acquire().await.unwrap();
                    let mut c = Client::connect(&url).await;
                    let (_, already) = c.hello_join_peers(&r, None).await;
                    (c, already)
                };
                // Wait until every client has joined, then everyone talks at once.
                barrier.wait().await;
                // The first to join is told about the second.
                if already == 0 {
                    assert!(matches!(c.recv().await, ServerMessage::PeerJoined { .. }));
                }
                for k in 0..MSGS {
                    c.relay(None, &format!(r#"{{"room":{i},"side":{side},"seq":{k}}}"#))
                        .await;
                }
                let mut seen = Vec::new();
                while seen.len() < MSGS {
                    let (_, p) = c.expect_relay().await;
                    let v: serde_json::Value = serde_json::from_str(&p).unwrap();
                    assert_eq!(v["room"], i, "misrouted: {p}");
                    assert_eq!(v["side"], 1 - side, "echoed: {p}");
                    seen.push(v["seq"].as_u64().unwrap());
                }
                assert_eq!(
                    seen,
                    (0..MSGS as u64).collect::<Vec<_>>(),
                    "lost or reordered"
                );
                c
            }));
        }
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    assert_eq!(clients.len(), ROOMS * 2);
    assert_eq!(
        srv.metric("aparte_signaling_connections "),
        (ROOMS * 2) as f64
    );
    assert_eq!(srv.metric("aparte_signaling_rooms "), ROOMS as f64);
    assert_eq!(
        srv.metric("aparte_signaling_messages_relayed_total "),
        (ROOMS * 2 * MSGS) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed to make a test certificate");
    assert!(status.success());
    let srv = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&cert)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", srv.addr.port()),
        ])
        .arg(format!("https://localhost:{}/healthz", srv.addr.port()))
        .output()
        .expect("curl is needed to check TLS");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    // Plain HTTP on the TLS port is not served: no HTTP answer comes back.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP answered on the TLS port"
    );
}

/// Flags beat environment variables, which beat the TOML file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_precedence_flags_env_file() {
    async fn capacity(srv: &Server) -> usize {
        let mut c = srv.connect().await;
        c.hello().await;
        c.send(&ClientMessage::Join {
            room: room(),
            token: None,
            resume: None,
        })
        .await;
        match c.recv().await {
            ServerMessage::Joined { capacity, .. } => capacity,
            other => panic!("{other:?}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signaling.toml");
    std::fs::write(&file, "room_capacity = 4\nmax_errors = 3\n").unwrap();
    let file = file.to_str().unwrap();

    let srv = Server::start(&["--config", file]);
    assert_eq!(capacity(&srv).await, 4);
    let srv = Server::start_with_env(&["--config", file], &[("APARTE_ROOM_CAPACITY", "3")]);
    assert_eq!(capacity(&srv).await, 3);
    let srv = Server::start_with_env(
        &["--config", file, "--room-capacity", "5"],
        &[("APARTE_ROOM_CAPACITY", "3")],
    );
    assert_eq!(capacity(&srv).await, 5);

    // A bad value anywhere stops the server with a clear message instead of starting it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aparte-signaling"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--config",
            file,
            "--token-secret",
            "short",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token_secret"));
}

/// A TCP connection that never sends its HTTP request is dropped after the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_connections_are_dropped() {
    use std::io::{Read, Write};
    let srv = Server::start(&["--handshake-timeout", "300ms"]);
    let started = Instant::now();
    let mut idle = std::net::TcpStream::connect(srv.addr).unwrap();
    idle.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    let _ = n;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle TCP connection kept open"
    );
    // Same for a client that starts its headers and never finishes them.
    let started = Instant::now();
    let mut slow = std::net::TcpStream::connect(srv.addr).unwrap();
    slow.set_read_timeout(Some(WAIT)).unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow headers kept open"
    );
    // The server still serves others.
    let (status, _) = srv.http_get("/healthz");
    assert!(status.contains("200"), "{status}");
}

/// Behind a local reverse proxy, the per-IP cap applies to the forwarded client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_uses_the_trusted_proxy_header() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let srv = Server::start(&[
        "--max-connections-per-ip",
        "1",
        "--proxy-header",
        "X-Forwarded-For",
    ]);
    let connect = |client: &'static str| {
        let mut req = srv.url().into_client_request().unwrap();
        req.headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let _a = connect("198.51.100.1").await.expect("first client");
    let _b = connect("198.51.100.2").await.expect("another client");
    assert!(connect("198.51.100.1").await.is_err(), "same client twice");
    assert_eq!(
        srv.metric("aparte_signaling_rejects_total{reason=\"too_many_connections_per_ip\"} "),
        1.0
    );
}

/// The example configuration shipped in deploy/ is accepted by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_example_config_starts() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/signaling.toml");
    let srv = Server::start_with_env(
        &[
            "--config",
            file,
            "--turn-listen",
            "127.0.0.1:0",
            "--turn-public-ip",
            "127.0.0.1",
        ],
        &[("APARTE_TOKEN_SECRET", SECRET), ("APARTE_TURN_SECRET", "x")],
    );
    assert!(srv.turn_addr.is_some());
    let (status, _) = srv.http_get("/healthz");
    assert!(status.contains("200"), "{status}");
}
