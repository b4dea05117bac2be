//! End-to-end tests of the embedded TURN relay with a real TURN client (webrtc-rs `turn`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aparte_signaling_protocol::{turn_rest, IceServer, ServerMessage};
use common::{room, Server, WAIT};
use tokio::net::UdpSocket;
use turn::client::{Client as TurnClient, ClientConfig};
use webrtc_util::Conn;

const TURN_SECRET: &str = "turn-secret-for-tests";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A `turn` client on loopback of `server`'s family, listening.
async fn turn_client(server: SocketAddr, username: &str, password: &str) -> TurnClient {
    let local = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let conn = UdpSocket::bind(local).await.unwrap();
    let client = TurnClient::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: "aparte".to_owned(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--turn-listen", "127.0.0.1:0", "--turn-secret", TURN_SECRET];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Joins a room and returns the TURN entry of the join answer.
async fn turn_entry(srv: &Server) -> IceServer {
    let mut c = srv.connect().await;
    c.hello().await;
    c.send(&aparte_signaling_protocol::ClientMessage::Join {
        room: room(),
        token: None,
        resume: None,
    })
    .await;
    match c.recv().await {
        ServerMessage::Joined { ice_servers, .. } => ice_servers
            .into_iter()
            .find(|s| s.urls.iter().any(|u| u.starts_with("turn:")))
            .expect("a TURN server in the join answer"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_with_rest_credentials_from_join_relays_data() {
    let srv = start(&[]);
    let turn_addr = srv.turn_addr.expect("turn address printed");
    let entry = turn_entry(&srv).await;
    assert_eq!(
        entry.urls,
        vec![
            format!("turn:127.0.0.1:{}?transport=udp", turn_addr.port()),
            // TURN over TCP is on by default.
            format!(
                "turn:127.0.0.1:{}?transport=tcp",
                srv.turn_tcp_addr.unwrap().port()
            ),
        ]
    );
    let username = entry.username.unwrap();
    let password = entry.credential.unwrap();
    // The credentials are exactly the TURN REST scheme that coturn checks.
    let (expiry, label) = turn_rest::check_username(&username, now()).unwrap();
    assert!(expiry > now() + 3600);
    assert!(label.starts_with("peer"));
    assert_eq!(
        password,
        turn_rest::password(TURN_SECRET.as_bytes(), &username)
    );

    let client = turn_client(turn_addr, &username, &password).await;
    let relay = tokio::time::timeout(WAIT, client.allocate())
        .await
        .expect("allocate timed out")
        .expect("allocation with valid credentials");
    let relay_addr = relay.local_addr().unwrap();
    assert_eq!(relay_addr.ip().to_string(), "127.0.0.1");

    // Client -> relay -> peer, and back.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    relay
        .send_to(b"hello through the relay", peer_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .expect("peer got nothing")
        .unwrap();
    assert_eq!(&buf[..n], b"hello through the relay");
    assert_eq!(from, relay_addr);
    peer.send_to(b"and back", relay_addr).await.unwrap();
    let (n, from) = tokio::time::timeout(WAIT, relay.recv_from(&mut buf))
        .await
        .expect("client got nothing back")
        .unwrap();
    assert_eq!(&buf[..n], b"and back");
    assert_eq!(from, peer_addr);

    assert_eq!(
        srv.metric("aparte_signaling_turn_allocations{transport=\"udp\"} "),
        1.0
    );
    assert!(
        srv.metric("aparte_signaling_turn_allocations_created_total{transport=\"udp\"} ") >= 1.0
    );
    assert!(srv.metric("aparte_signaling_turn_relayed_bytes_total{transport=\"udp\"} ") >= 31.0);
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

/// `--turn-listen6`: the join answer adds the IPv6 UDP URL, and a client that reaches the relay
/// over IPv6 gets an allocation whose relayed address is the IPv4 public one (RFC 6156's
/// default family), which relays to IPv4 peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_client_allocates_on_the_ipv6_port_and_relays_to_ipv4_peers() {
    let srv = start(&["--turn-listen6", "[::1]:0"]);
    let entry = turn_entry(&srv).await;
    let url6 = entry
        .urls
        .iter()
        .find(|u| u.starts_with("turn:[::1]:"))
        .unwrap_or_else(|| panic!("no IPv6 TURN URL in {:?}", entry.urls));
    let port6: u16 = url6
        .trim_start_matches("turn:[::1]:")
        .trim_end_matches("?transport=udp")
        .parse()
        .unwrap();
    assert_ne!(port6, 0);
    let server6: SocketAddr = format!("[::1]:{port6}").parse().unwrap();
    let client = turn_client(
        server6,
        &entry.username.unwrap(),
        &entry.credential.unwrap(),
    )
    .await;
    // The IPv6 port answers STUN with the client's IPv6 address (its server-reflexive one).
    let mapped = tokio::time::timeout(WAIT, client.send_binding_request())
        .await
        .expect("binding timed out")
        .unwrap();
    assert!(mapped.is_ipv6(), "{mapped}");
    let relay = tokio::time::timeout(WAIT, client.allocate())
        .await
        .expect("allocate timed out")
        .expect("allocation over IPv6");
    let relay_addr = relay.local_addr().unwrap();
    assert_eq!(relay_addr.ip().to_string(), "127.0.0.1");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay
        .send_to(b"from an IPv6 client", peer.local_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .expect("peer got nothing")
        .unwrap();
    assert_eq!(&buf[..n], b"from an IPv6 client");
    assert_eq!(from, relay_addr);
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_expired_credentials_are_refused() {
    let srv = start(&[]);
    let turn_addr = srv.turn_addr.unwrap();

    // Wrong password.
    let username = format!("{}:mallory", now() + 600);
    let client = turn_client(turn_addr, &username, "not-the-password").await;
    let res = tokio::time::timeout(WAIT, client.allocate())
        .await
        .expect("timed out");
    assert!(res.is_err(), "allocation with a bad password must fail");
    client.close().await.unwrap();

    // Right password for an expired username.
    let username = format!("{}:late", now() - 10);
    let password = turn_rest::password(TURN_SECRET.as_bytes(), &username);
    let client = turn_client(turn_addr, &username, &password).await;
    let res = tokio::time::timeout(WAIT, client.allocate())
        .await
        .expect("timed out");
    assert!(
        res.is_err(),
        "allocation with expired credentials must fail"
    );
    client.close().await.unwrap();

    // Credentials minted under another secret.
    let creds = turn_rest::mint(b"other secret", "eve", now(), 600);
    let client = turn_client(turn_addr, &creds.username, &creds.password).await;
    let res = tokio::time::timeout(WAIT, client.allocate())
        .await
        .expect("timed out");
    assert!(
        res.is_err(),
        "allocation with foreign credentials must fail"
    );
    client.close().await.unwrap();

    assert_eq!(
        srv.metric("aparte_signaling_turn_allocations{transport=\"udp\"} "),
        0.0
    );
    assert!(
        srv.metric("aparte_signaling_turn_rejects_total{transport=\"udp\",reason=\"expired\"} ")
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_per_user_and_bandwidth() {
    let srv = start(&[
        "--turn-max-allocations-per-user",
        "1",
        "--turn-max-bandwidth",
        "2000",
    ]);
    let turn_addr = srv.turn_addr.unwrap();
    let creds = turn_rest::mint(TURN_SECRET.as_bytes(), "carol", now(), 600);
    let c1 = turn_client(turn_addr, &creds.username, &creds.password).await;
    let relay = c1.allocate().await.expect("first allocation");
    let c2 = turn_client(turn_addr, &creds.username, &creds.password).await;
    let res = tokio::time::timeout(WAIT, c2.allocate())
        .await
        .expect("timed out");
    assert!(
        res.is_err(),
        "second allocation for the same user must fail"
    );
    assert!(
        srv.metric(
            "aparte_signaling_turn_rejects_total{transport=\"udp\",reason=\"too_many_allocations_per_user\"} "
        ) >= 1.0
    );

    // 2,000 bytes/s cap: of 40 x 500 bytes sent at once, about 4 get through.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    relay.send_to(b"x", peer_addr).await.unwrap();
    let mut buf = [0u8; 1500];
    tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..40 {
        relay.send_to(&[7u8; 500], peer_addr).await.unwrap();
    }
    let mut got = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buf)).await
    {
        got += 1;
    }
    assert!(
        (1..=8).contains(&got),
        "bandwidth cap not applied: {got} of 40 arrived"
    );
    assert!(
        srv.metric("aparte_signaling_turn_dropped_bytes_total{transport=\"udp\"} ") >= 10_000.0
    );

    // Closing the first allocation frees the user's slot.
    relay.close().await.unwrap();
    c1.close().await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while srv.metric("aparte_signaling_turn_allocations{transport=\"udp\"} ") != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "allocation not released"
        );
        tokio::task::yield_now().await;
    }
    c2.close().await.unwrap();
}
