//! Two call endpoints in one process, joined by a real WebRTC connection over loopback UDP
//! (ICE, DTLS-SRTP, SCTP), with the e2ee handshake relayed the way the signaling server will
//! relay it. Audio frames go both ways; the test checks that what the RTP layer hands the
//! receiver is ciphertext, that every frame decrypts, and that the SAS exchange over the data
//! channel verifies the call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aparte_client::transport::{
    LinkState, SdpRole, Signal, Transport, TransportConfig, TransportEvent,
};
use aparte_e2ee::frame::{ReceiverConfig, SenderConfig};
use aparte_e2ee::handshake::{CallParams, Role};
use aparte_e2ee::identity::KnownPeers;
use aparte_session::{CallSecurity, Event, Policy, SecurityStatus, SessionConfig, VerifiedBy};
use bytes::Bytes;
use rand_core::OsRng;
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;

const FRAMES: u32 = 50;
const MARKER: &[u8] = b"OPUS-PLAINTEXT";

struct Peer {
    transport: Transport,
    events: Receiver<TransportEvent>,
    security: Option<CallSecurity>,
    connected: bool,
    data_open: bool,
    decoded: Vec<u32>,
    ciphertext_seen: usize,
}

impl Peer {
    async fn new(role: SdpRole) -> Self {
        let config = TransportConfig {
            loopback_only: true,
            turn_tls: None,
            ..Default::default()
        };
        let (transport, events) = Transport::new(&config, role).await.unwrap();
        Self {
            transport,
            events,
            security: None,
            connected: false,
            data_open: false,
            decoded: Vec::new(),
            ciphertext_seen: 0,
        }
    }

    async fn start_security(&mut self, role: Role) -> Vec<Event> {
        let (local, remote) = self.transport.dtls_fingerprints().await.unwrap();
        let config = SessionConfig {
            role,
            params: CallParams::new(b"room-webrtc-test".to_vec(), local, remote).unwrap(),
            identity: None,
            peer_name: None,
            policy: Policy::Interactive,
            sender: SenderConfig::default(),
            receiver: ReceiverConfig::default(),
        };
        let (security, events) = CallSecurity::new(config, KnownPeers::new(), &mut OsRng).unwrap();
        self.security = Some(security);
        events
    }

    fn security(&mut self) -> &mut CallSecurity {
        self.security.as_mut().unwrap()
    }

    /// Handles one transport event; returns a signal to relay to the other peer, if any.
    async fn handle(&mut self, event: TransportEvent) -> Option<Signal> {
        match event {
            TransportEvent::Signal(s) => return Some(s),
            TransportEvent::Link(LinkState::Connected) => self.connected = true,
            TransportEvent::Link(_) => {}
            TransportEvent::DataOpen => self.data_open = true,
            TransportEvent::Media { payload, .. } => {
                assert!(
                    !payload.windows(MARKER.len()).any(|w| w == MARKER),
                    "the RTP layer handed us plaintext"
                );
                self.ciphertext_seen += 1;
                let plain = self.security().unprotect_media(&payload, 0).unwrap();
                assert!(plain.starts_with(MARKER));
                self.decoded.push(u32::from_be_bytes(
                    plain[MARKER.len()..][..4].try_into().unwrap(),
                ));
            }
            TransportEvent::Data(frame) => {
                let events = self.security().on_data_frame(&frame, 0, 1).unwrap();
                self.carry_out(events).await;
            }
        }
        None
    }

    async fn carry_out(&mut self, events: Vec<Event>) {
        for event in events {
            if let Event::SendData(frame) = event {
                self.transport.send_data(Bytes::from(frame)).await.unwrap();
            }
        }
    }
}

/// Relays handshake bytes between the two sessions (the signaling server's job).
fn relay_handshake(alice: &mut Peer, bob: &mut Peer, first: Vec<Event>) {
    let mut to_bob: Vec<Vec<u8>> = first
        .into_iter()
        .filter_map(|e| match e {
            Event::SendHandshake(b) => Some(b),
            _ => None,
        })
        .collect();
    while !to_bob.is_empty() {
        let mut to_alice = Vec::new();
        for m in to_bob.drain(..) {
            for e in bob.security().on_handshake(&m, 0, 1).unwrap() {
                if let Event::SendHandshake(b) = e {
                    to_alice.push(b);
                }
            }
        }
        for m in to_alice {
            for e in alice.security().on_handshake(&m, 0, 1).unwrap() {
                if let Event::SendHandshake(b) = e {
                    to_bob.push(b);
                }
            }
        }
    }
}

/// Runs both event loops until `done` holds, relaying ICE candidates.
async fn pump_until(alice: &mut Peer, bob: &mut Peer, done: impl Fn(&Peer, &Peer) -> bool) {
    timeout(Duration::from_secs(20), async {
        while !done(alice, bob) {
            tokio::select! {
                Some(e) = alice.events.recv() => {
                    if let Some(s) = alice.handle(e).await {
                        bob.transport.apply_signal(s).await.unwrap();
                    }
                }
                Some(e) = bob.events.recv() => {
                    if let Some(s) = bob.handle(e).await {
                        alice.transport.apply_signal(s).await.unwrap();
                    }
                }
                else => panic!("both transports closed their event queues"),
            }
        }
    })
    .await
    .expect("timed out waiting for the call to make progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_audio_flows_both_ways_over_real_webrtc_and_the_sas_verifies() {
    let mut alice = Peer::new(SdpRole::Offerer).await;
    let mut bob = Peer::new(SdpRole::Answerer).await;

    let offer = alice.transport.create_offer().await.unwrap();
    let answer = bob.transport.apply_signal(offer).await.unwrap().unwrap();
    alice.transport.apply_signal(answer).await.unwrap();

    // Both fingerprints are known now: bind them into the e2ee handshake.
    let first = alice.start_security(Role::Initiator).await;
    bob.start_security(Role::Responder).await;
    relay_handshake(&mut alice, &mut bob, first);
    assert!(alice.security().media_allowed() && bob.security().media_allowed());
    let sas_a = alice.security().info().unwrap().sas().clone();
    assert_eq!(&sas_a, bob.security().info().unwrap().sas());

    pump_until(&mut alice, &mut bob, |a, b| {
        a.connected && b.connected && a.data_open && b.data_open
    })
    .await;
    assert!(
        !alice.transport.is_relayed().await,
        "loopback host candidates, no relay"
    );

    // 50 frames each way, paced like audio (every 20 ms).
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for i in 0..FRAMES {
        ticker.tick().await;
        for peer in [&mut alice, &mut bob] {
            let mut payload = MARKER.to_vec();
            payload.extend_from_slice(&i.to_be_bytes());
            payload.resize(60, 0);
            let frame = peer.security().protect_media(&payload).unwrap();
            peer.transport
                .send_media(Bytes::from(frame), std::time::Duration::from_millis(20))
                .await
                .unwrap();
        }
    }
    pump_until(&mut alice, &mut bob, |a, b| {
        a.decoded.len() as u32 == FRAMES && b.decoded.len() as u32 == FRAMES
    })
    .await;
    for peer in [&alice, &bob] {
        assert_eq!(peer.decoded, (0..FRAMES).collect::<Vec<_>>());
        assert_eq!(peer.ciphertext_seen as u32, FRAMES);
    }

    // Both people confirm the SAS; the confirmations travel over the encrypted data channel.
    for peer in [&mut alice, &mut bob] {
        let events = peer.security().confirm_sas(1).unwrap();
        peer.carry_out(events).await;
    }
    pump_until(&mut alice, &mut bob, |a, b| {
        [a, b].iter().all(|p| {
            matches!(
                p.security.as_ref().unwrap().status(),
                SecurityStatus::Verified {
                    by: VerifiedBy::Sas,
                    ..
                }
            )
        })
    })
    .await;

    alice.transport.close().await.unwrap();
    bob.transport.close().await.unwrap();
}
