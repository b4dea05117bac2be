//! Helpers shared by the end-to-end tests: spawn the real server binary, talk to it over real
//! WebSockets.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use aparte_signaling_protocol::{ClientMessage, PeerId, RoomId, ServerMessage, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one event before failing.
pub const WAIT: Duration = Duration::from_secs(10);

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// A running server process; killed on drop.
pub struct Server {
    pub child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    pub turn_addr: Option<SocketAddr>,
    /// TURN over TCP, when on.
    pub turn_tcp_addr: Option<SocketAddr>,
    /// TURN over TLS on its own port, when on.
    pub turns_addr: Option<SocketAddr>,
    /// The separate metrics listener (tests start it on an ephemeral loopback port).
    pub metrics_addr: Option<SocketAddr>,
    pub lines: std_mpsc::Receiver<String>,
}

impl Server {
    /// Starts the real binary with `--listen 127.0.0.1:0` plus `args`, and waits for it to
    /// print the address it bound.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// Like [`Server::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aparte-signaling"))
            .args(["--listen", "127.0.0.1:0", "--log", "warn,turn=off"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut turn_addr = None;
        let mut turn_tcp_addr = None;
        let mut turns_addr = None;
        let mut metrics_addr = None;
        let addr = loop {
            let line = lines.recv_timeout(WAIT).expect("server did not start");
            if let Some(a) = line.strip_prefix("turn listening on udp ") {
                turn_addr = Some(a.parse().expect("turn addr"));
            }
            if let Some(a) = line.strip_prefix("turn listening on tcp ") {
                turn_tcp_addr = Some(a.parse().expect("turn tcp addr"));
            }
            if let Some(a) = line.strip_prefix("turn listening on tls ") {
                // The shared HTTPS port is announced with a suffix; this is the own port.
                if let Ok(a) = a.parse() {
                    turns_addr = Some(a);
                }
            }
            if let Some(a) = line
                .strip_prefix("metrics listening on http://")
                .and_then(|a| a.strip_suffix("/metrics"))
            {
                metrics_addr = Some(a.parse().expect("metrics addr"));
            }
            if let Some(a) = line
                .strip_prefix("listening on http://")
                .or_else(|| line.strip_prefix("listening on https://"))
            {
                break a.parse().expect("addr");
            }
        };
        Server {
            pid: child.id(),
            child: Some(child),
            addr,
            turn_addr,
            turn_tcp_addr,
            turns_addr,
            metrics_addr,
            lines,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("child");
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send((status, child));
        });
        match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok((status, child))) => {
                self.child = Some(child);
                status.expect("wait")
            }
            _ => {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.pid.to_string()])
                    .status();
                panic!("server did not exit")
            }
        }
    }

    /// A joined client.
    pub async fn join(&self, room: &RoomId) -> (Client, PeerId) {
        let mut c = self.connect().await;
        let id = c.hello_join(room, None).await;
        (c, id)
    }

    /// GET `path` from the main port over plain HTTP/1.0; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        http_get(self.addr, path)
    }

    /// The value of a metric line that starts with `prefix` (name and labels), scraped from
    /// the metrics listener.
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = http_get(self.metrics_addr.expect("metrics listener"), "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(prefix).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (e.g. `HUP`) to the server.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// GET `path` from `addr` over plain HTTP/1.0; returns (status line, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (
            head.lines().next().unwrap_or("").to_owned(),
            body.to_owned(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn room() -> RoomId {
    RoomId::random(&mut rand_core::OsRng)
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the protocol.
pub struct Client {
    pub ws: Ws,
}

/// What a client saw next.
#[derive(Debug)]
pub enum Event {
    Msg(ServerMessage),
    Closed(Option<u16>),
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        Client { ws }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    pub async fn send(&mut self, msg: &ClientMessage) {
        self.send_text(&msg.to_json()).await;
    }

    /// The next message or close, skipping pings and pongs.
    pub async fn next_event(&mut self) -> Event {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the server");
            match frame {
                None => return Event::Closed(None),
                Some(Err(_)) => return Event::Closed(None),
                Some(Ok(Message::Text(t))) => {
                    let msg = ServerMessage::parse(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent an invalid message: {e}: {t}"));
                    return Event::Msg(msg);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(frame.map(|f: CloseFrame| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn recv(&mut self) -> ServerMessage {
        match self.next_event().await {
            Event::Msg(m) => m,
            Event::Closed(c) => panic!("connection closed ({c:?}) while waiting for a message"),
        }
    }

    /// Expects an `error` message with `code`.
    pub async fn expect_error(&mut self, code: &str) {
        match self.recv().await {
            ServerMessage::Error { code: c, .. } => assert_eq!(c.as_str(), code),
            other => panic!("expected error {code}, got {other:?}"),
        }
    }

    /// Expects the server to close with `code` (messages before it are skipped).
    pub async fn expect_close(&mut self, code: u16) {
        loop {
            match self.next_event().await {
                Event::Msg(_) => continue,
                Event::Closed(c) => {
                    assert_eq!(c, Some(code), "close code");
                    return;
                }
            }
        }
    }

    pub async fn hello(&mut self) {
        self.send(&ClientMessage::Hello {
            version: PROTOCOL_VERSION,
        })
        .await;
        match self.recv().await {
            ServerMessage::Welcome { version, .. } => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// hello + join; returns the peer id.
    pub async fn hello_join(&mut self, room: &RoomId, token: Option<String>) -> PeerId {
        self.hello_join_peers(room, token).await.0
    }

    /// hello + join; returns the peer id and how many peers were already in the room.
    pub async fn hello_join_peers(
        &mut self,
        room: &RoomId,
        token: Option<String>,
    ) -> (PeerId, usize) {
        self.hello().await;
        self.send(&ClientMessage::Join {
            room: room.clone(),
            token,
            resume: None,
        })
        .await;
        match self.recv().await {
            ServerMessage::Joined { peer_id, peers, .. } => (peer_id, peers.len()),
            other => panic!("expected joined, got {other:?}"),
        }
    }

    pub async fn relay(&mut self, to: Option<PeerId>, payload: &str) {
        let payload = serde_json::value::RawValue::from_string(payload.to_owned()).expect("json");
        self.send(&ClientMessage::Relay { to, payload }).await;
    }

    /// Expects a relayed payload; returns (from, payload text).
    pub async fn expect_relay(&mut self) -> (PeerId, String) {
        match self.recv().await {
            ServerMessage::Relay { from, payload } => (from, payload.get().to_owned()),
            other => panic!("expected relay, got {other:?}"),
        }
    }
}
