//! The socket side of a scripted signaling server (a man in the middle, a forger): a WebSocket
//! listener on loopback that accepts exactly two clients and turns each into a queue of text
//! frames in and an outbox out, so a test's own loop can speak the signaling protocol by hand.

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use futures_util::{SinkExt, StreamExt};

/// Text frames to one client.
pub type Outbox = mpsc::UnboundedSender<String>;

/// Two clients, as they connect.
pub struct TwoClients {
    /// The WebSocket URL to give the clients.
    pub url: String,
    /// Each client's outbox once it has connected, with its index (0 = first to connect).
    pub outboxes: mpsc::UnboundedReceiver<(usize, Outbox)>,
    /// Every text frame received, with the index of the client that sent it.
    pub frames: mpsc::UnboundedReceiver<(usize, String)>,
}

/// Listens on 127.0.0.1 and accepts the first two WebSocket clients.
pub async fn accept_two_clients() -> TwoClients {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback listener");
    let addr = listener.local_addr().expect("listener address");
    let (frames_tx, frames) = mpsc::unbounded_channel::<(usize, String)>();
    let (outboxes_tx, outboxes) = mpsc::unbounded_channel::<(usize, Outbox)>();
    tokio::spawn(async move {
        for index in 0..2usize {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
            if outboxes_tx.send((index, out_tx)).is_err() {
                return;
            }
            tokio::spawn(async move {
                while let Some(text) = out_rx.recv().await {
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
            });
            let frames_tx = frames_tx.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Text(text) = message {
                        let _ = frames_tx.send((index, text.as_str().to_owned()));
                    }
                }
            });
        }
    });
    TwoClients {
        url: format!("ws://{addr}/ws"),
        outboxes,
        frames,
    }
}
