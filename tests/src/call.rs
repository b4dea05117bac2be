//! Two call endpoints in one process over a real WebRTC connection (ICE, DTLS-SRTP, SCTP on
//! loopback UDP, optionally relay-only through a TURN relay), with the e2ee handshake relayed
//! directly between the two sessions, as the signaling server would relay it.
//!
//! Each peer's transport events are drained by a background task as they come, so every RTP
//! payload is stamped with its real arrival time; the test reads them from
//! [`CallPeer::media`]. Playout is then simulated on those arrival times
//! ([`play_out`]): the jitter buffer is sans-IO and takes time as an input, so feeding it the
//! recorded arrivals on a 20 ms tick is what the audio thread would do, without making the
//! result depend on how busy the test machine's scheduler is.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aparte_client::transport::{
    LinkState, SdpRole, Signal, Transport, TransportConfig, TransportEvent,
};
use aparte_e2ee::frame::{ReceiverConfig, SenderConfig};
use aparte_e2ee::handshake::{CallParams, Role};
use aparte_e2ee::identity::KnownPeers;
use aparte_media::codec::{Decoder, Encoder, EncoderConfig};
use aparte_media::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use aparte_media::metrics::{align_segments, rms};
use aparte_media::wav::read_mono_48k;
use aparte_media::FRAME_SAMPLES;
use aparte_session::{CallSecurity, Event, Policy, SessionConfig};
use bytes::Bytes;
use rand_core::OsRng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long a call may take to connect (relay-only over an impaired path needs DTLS
/// retransmissions, which start at one second).
pub const CONNECT_WITHIN: Duration = Duration::from_secs(30);

/// After how long a set-up with one side connected and the other still on a working ICE
/// pair is taken for webrtc-rs's DTLS last-flight deadlock (see [`Call::connect`]).
const DEADLOCK_AFTER: Duration = Duration::from_secs(12);

/// Why [`Call::try_connect`] returned without a connected call.
enum Unconnected {
    /// The DTLS last-flight deadlock (the half-built call, to close; which side is stuck).
    DtlsDeadlock(Box<Call>, String),
    /// Anything else: what the links looked like.
    Other(String),
}

/// One RTP payload as the receiving transport handed it over.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// RTP sequence number.
    pub sequence: u16,
    /// Milliseconds since the call's epoch ([`Call::now_ms`]) when it arrived.
    pub arrival_ms: u64,
    /// The payload, untouched.
    pub payload: Bytes,
}

/// One endpoint of the call.
pub struct CallPeer {
    /// Its WebRTC transport.
    pub transport: Arc<Transport>,
    /// Its e2ee session (keys confirmed once [`Call::connect`] returns).
    pub security: CallSecurity,
    /// RTP payloads received, in arrival order.
    pub media: mpsc::UnboundedReceiver<Arrival>,
    link: watch::Receiver<LinkState>,
    router: JoinHandle<()>,
}

impl CallPeer {
    /// Protects one Opus frame with the e2ee session and sends it as one RTP packet.
    pub async fn send_protected(&mut self, opus: &[u8]) {
        let frame = self.security.protect_media(opus).expect("protect a frame");
        self.send_raw(frame).await;
    }

    /// Sends `payload` as one RTP packet, as is (no e2ee).
    pub async fn send_raw(&self, payload: Vec<u8>) {
        self.transport
            .send_media(Bytes::from(payload), Duration::from_millis(20))
            .await
            .expect("send a media payload");
    }

    /// The next RTP payload received, or `None` if none comes within `within`.
    pub async fn next_media(&mut self, within: Duration) -> Option<Arrival> {
        timeout(within, self.media.recv()).await.ok().flatten()
    }
}

/// Two connected endpoints: Alice offered and initiated the e2ee handshake, Bob answered.
pub struct Call {
    /// The offerer and handshake initiator.
    pub alice: CallPeer,
    /// The answerer and handshake responder.
    pub bob: CallPeer,
    /// Alice's first offer (SDP), as Bob applied it.
    pub first_offer: String,
    /// Whether Bob has Alice's SDP (Alice's candidates are held until then), and the reverse.
    bob_ready: watch::Sender<bool>,
    alice_ready: watch::Sender<bool>,
    epoch: Instant,
}

impl Call {
    /// Builds both transports, relays SDP, ICE candidates and the e2ee handshake, and waits
    /// until both links are connected and media may flow.
    ///
    /// One known failure is retried, once, with new transports: webrtc-rs's DTLS server does
    /// not answer a retransmitted final client flight (RFC 6347 §4.2.4), so when its own last
    /// flight is lost on an impaired path, its side reports Connected and the other side stays
    /// Connecting on a working ICE pair for good (docs/WEBRTC.md, "DTLS last-flight
    /// deadlock"). The client gets out of it the same way, with new peer connections
    /// (`check_dtls_stall` in `call.rs`, tested by `tests/call_dtls_deadlock.rs`); this
    /// harness drives transports without the client's call loop, so it retries itself. The
    /// retry is printed.
    pub async fn connect(alice: &TransportConfig, bob: &TransportConfig) -> Self {
        match Self::try_connect(alice, bob).await {
            Ok(call) => call,
            Err(Unconnected::DtlsDeadlock(call, what)) => {
                println!("DTLS last-flight deadlock ({what}); retrying once with new transports");
                call.close().await;
                match Self::try_connect(alice, bob).await {
                    Ok(call) => call,
                    Err(Unconnected::DtlsDeadlock(_, what) | Unconnected::Other(what)) => {
                        panic!("the second attempt did not connect either: {what}")
                    }
                }
            }
            Err(Unconnected::Other(what)) => panic!("{what}"),
        }
    }

    async fn try_connect(
        alice: &TransportConfig,
        bob: &TransportConfig,
    ) -> Result<Self, Unconnected> {
        let epoch = Instant::now();
        let (a, a_events) = Transport::new(alice, SdpRole::Offerer)
            .await
            .expect("alice's transport");
        let (b, b_events) = Transport::new(bob, SdpRole::Answerer)
            .await
            .expect("bob's transport");
        let (a, b) = (Arc::new(a), Arc::new(b));
        let (a_media_tx, a_media) = mpsc::unbounded_channel();
        let (b_media_tx, b_media) = mpsc::unbounded_channel();
        let (a_link_tx, a_link) = watch::channel(LinkState::Connecting);
        let (b_link_tx, b_link) = watch::channel(LinkState::Connecting);
        // Whether each side has applied the other's SDP, so candidates can be applied.
        let (a_ready_tx, a_ready) = watch::channel(false);
        let (b_ready_tx, b_ready) = watch::channel(false);
        let a_router = tokio::spawn(route(
            a_events,
            Arc::clone(&b),
            b_ready,
            a_media_tx,
            a_link_tx,
            epoch,
        ));
        let b_router = tokio::spawn(route(
            b_events,
            Arc::clone(&a),
            a_ready,
            b_media_tx,
            b_link_tx,
            epoch,
        ));

        let offer = a.create_offer().await.expect("offer");
        let Signal::Offer(first_offer) = offer.clone() else {
            panic!("create_offer made no offer");
        };
        let answer = b
            .apply_signal(offer)
            .await
            .expect("bob applies the offer")
            .expect("an answer");
        let _ = b_ready_tx.send(true);
        a.apply_signal(answer)
            .await
            .expect("alice applies the answer");
        let _ = a_ready_tx.send(true);

        // Both fingerprints are known now: bind them into the e2ee handshake.
        let (mut a_sec, first) = security(&a, Role::Initiator).await;
        let (mut b_sec, _) = security(&b, Role::Responder).await;
        relay_handshake(&mut a_sec, &mut b_sec, first);
        assert!(
            a_sec.media_allowed() && b_sec.media_allowed(),
            "keys confirmed"
        );
        assert_eq!(
            a_sec.info().expect("alice's session").sas(),
            b_sec.info().expect("bob's session").sas(),
            "no one in the middle: equal SAS"
        );

        let mut call = Self {
            alice: CallPeer {
                transport: a,
                security: a_sec,
                media: a_media,
                link: a_link,
                router: a_router,
            },
            bob: CallPeer {
                transport: b,
                security: b_sec,
                media: b_media,
                link: b_link,
                router: b_router,
            },
            first_offer,
            bob_ready: b_ready_tx,
            alice_ready: a_ready_tx,
            epoch,
        };
        let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
        let both = async {
            let _ = call
                .alice
                .link
                .wait_for(|s| *s == LinkState::Connected)
                .await;
            let _ = call.bob.link.wait_for(|s| *s == LinkState::Connected).await;
        };
        // A deadlocked handshake never completes; a slow one (DTLS retransmits every second)
        // has completed long before this.
        if timeout(DEADLOCK_AFTER, both).await.is_err() {
            if let Some(what) = call.dtls_deadlock().await {
                return Err(Unconnected::DtlsDeadlock(Box::new(call), what));
            }
        }
        for (name, peer) in [("alice", &mut call.alice), ("bob", &mut call.bob)] {
            let connected = tokio::time::timeout_at(
                deadline,
                peer.link.wait_for(|s| *s == LinkState::Connected),
            )
            .await
            .map(|state| state.is_ok());
            if connected != Ok(true) {
                // What the next engineer needs to chase a rare setup failure on an impaired
                // path: which side, in which state, and on which ICE pair, if any.
                let state = *peer.link.borrow();
                let pair = peer.transport.selected_pair().await;
                return Err(Unconnected::Other(format!(
                    "the WebRTC link did not connect in {CONNECT_WITHIN:?}: {name} is \
                     {state:?}, selected pair {pair:?}"
                )));
            }
        }
        println!("connected in {} ms", call.now_ms());
        Ok(call)
    }

    /// Whether set-up is stuck in webrtc-rs's DTLS last-flight deadlock: one side
    /// Connected, the other Connecting on a selected ICE pair. Says which side is stuck.
    async fn dtls_deadlock(&self) -> Option<String> {
        let (a, b) = (*self.alice.link.borrow(), *self.bob.link.borrow());
        let (name, stuck) = match (a, b) {
            (LinkState::Connected, LinkState::Connecting) => ("bob", &self.bob),
            (LinkState::Connecting, LinkState::Connected) => ("alice", &self.alice),
            _ => return None,
        };
        let pair = stuck.transport.selected_pair().await?;
        Some(format!(
            "{name} Connecting on {pair} after {DEADLOCK_AFTER:?}, its peer Connected"
        ))
    }

    /// Milliseconds since the call started connecting (the clock of [`Arrival::arrival_ms`]).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Holds (`true`) or releases (`false`) the ICE candidates each side trickles to the
    /// other. Around an ICE restart's offer and answer, a signaling server's ordering is what
    /// keeps the new candidates behind the SDP they belong to; a test that applies the SDP by
    /// hand holds them meanwhile.
    pub fn hold_candidates(&self, hold: bool) {
        let _ = self.bob_ready.send(!hold);
        let _ = self.alice_ready.send(!hold);
    }

    /// Closes both transports.
    pub async fn close(self) {
        for peer in [self.alice, self.bob] {
            let _ = peer.transport.close().await;
            peer.router.abort();
        }
    }
}

/// Drains one transport's events: candidates go to the other transport, media is stamped
/// with its arrival time, link changes are published.
///
/// Candidates gathered before the other side has its remote description are held until it
/// does (`other_ready`), as a signaling server's client does: applied early, webrtc-rs
/// refuses them and a relay-only call can be left with no candidate pair at all.
async fn route(
    mut events: mpsc::Receiver<TransportEvent>,
    other: Arc<Transport>,
    mut other_ready: watch::Receiver<bool>,
    media: mpsc::UnboundedSender<Arrival>,
    link: watch::Sender<LinkState>,
    epoch: Instant,
) {
    let mut held = Vec::new();
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
            changed = other_ready.changed(), if !*other_ready.borrow() => {
                if changed.is_ok() && *other_ready.borrow() {
                    for signal in held.drain(..) {
                        relay_signal(&other, signal).await;
                    }
                }
                continue;
            }
        };
        match event {
            TransportEvent::Signal(signal) => {
                if *other_ready.borrow() {
                    relay_signal(&other, signal).await;
                } else {
                    held.push(signal);
                }
            }
            TransportEvent::Link(state) => {
                let _ = link.send(state);
            }
            TransportEvent::Media {
                sequence, payload, ..
            } => {
                let arrival_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                let _ = media.send(Arrival {
                    sequence,
                    arrival_ms,
                    payload,
                });
            }
            TransportEvent::Data(_) | TransportEvent::DataOpen => {}
        }
    }
}

async fn relay_signal(other: &Transport, signal: Signal) {
    if let Err(e) = other.apply_signal(signal).await {
        eprintln!("relaying a signal failed: {e}");
    }
}

async fn security(transport: &Transport, role: Role) -> (CallSecurity, Vec<Event>) {
    let (local, remote) = transport
        .dtls_fingerprints()
        .await
        .expect("both SDPs carry a DTLS fingerprint");
    let config = SessionConfig {
        role,
        params: CallParams::new(b"room-e2e-harness".to_vec(), local, remote)
            .expect("call parameters"),
        identity: None,
        peer_name: None,
        policy: Policy::Interactive,
        sender: SenderConfig::default(),
        receiver: ReceiverConfig::default(),
    };
    CallSecurity::new(config, KnownPeers::new(), &mut OsRng).expect("e2ee session")
}

/// Relays handshake messages between the two sessions until neither has more to say.
fn relay_handshake(alice: &mut CallSecurity, bob: &mut CallSecurity, first: Vec<Event>) {
    let handshake = |events: Vec<Event>| -> Vec<Vec<u8>> {
        events
            .into_iter()
            .filter_map(|e| match e {
                Event::SendHandshake(b) => Some(b),
                _ => None,
            })
            .collect()
    };
    let mut to_bob = handshake(first);
    while !to_bob.is_empty() {
        let mut to_alice = Vec::new();
        for m in to_bob.drain(..) {
            to_alice.extend(handshake(
                bob.on_handshake(&m, 0, 1).expect("bob's handshake"),
            ));
        }
        for m in to_alice {
            to_bob.extend(handshake(
                alice.on_handshake(&m, 0, 1).expect("alice's handshake"),
            ));
        }
    }
}

/// Speech from espeak-ng, as 48 kHz mono samples padded to whole 20 ms frames, and its Opus
/// frames encoded with the call's settings (24 kbit/s CBR, in-band FEC).
pub fn speech(text: &str, dir: &Path, name: &str) -> (Vec<f32>, Vec<Vec<u8>>) {
    let wav = dir.join(name);
    crate::speak(text, &wav);
    let mut samples = read_mono_48k(&wav).expect("read the speech WAV");
    samples.resize(samples.len().div_ceil(FRAME_SAMPLES) * FRAME_SAMPLES, 0.0);
    let mut encoder = Encoder::new(EncoderConfig::default()).expect("Opus encoder");
    let frames = samples
        .chunks(FRAME_SAMPLES)
        .map(|f| encoder.encode_f32(f).expect("encode a frame"))
        .collect();
    (samples, frames)
}

/// What playout produced from a stream of received frames.
#[derive(Debug, Clone)]
pub struct Playback {
    /// The audio written out from the first played frame on (as the WAV sink would).
    pub samples: Vec<f32>,
    /// The jitter buffer's counters at the end.
    pub jitter: JitterStats,
    /// Every packet handed to the decoder (played or used for FEC), in order.
    pub decoded_packets: Vec<Vec<u8>>,
    /// Packets the decoder refused (concealed instead).
    pub decode_errors: u64,
}

/// Runs the receiving audio path on recorded arrivals: `(authenticated index, arrival_ms,
/// opus)` pushed into the jitter buffer at their arrival times, one pop per 20 ms tick,
/// decode / FEC / concealment exactly as `crates/client/src/audio.rs` does.
pub fn play_out(arrivals: &[(u64, u64, Vec<u8>)]) -> Playback {
    let mut jitter = JitterBuffer::new(JitterConfig::default()).expect("jitter buffer");
    let mut decoder = Decoder::new().expect("Opus decoder");
    let mut sorted: Vec<_> = arrivals.iter().collect();
    sorted.sort_by_key(|a| a.1);
    let mut out = Playback {
        samples: Vec::new(),
        jitter: JitterStats::default(),
        decoded_packets: Vec::new(),
        decode_errors: 0,
    };
    let Some(first) = sorted.first() else {
        return out;
    };
    let mut now = first.1;
    let mut next = 0;
    let mut playing = false;
    while next < sorted.len() || !jitter.is_empty() {
        while let Some((index, at, packet)) = sorted.get(next).copied() {
            if *at > now {
                break;
            }
            jitter.push_frame(*index, *at, packet.clone());
            next += 1;
        }
        let decoded = match jitter.pop(now) {
            Playout::Packet(p) => {
                let d = decoder.decode_f32(&p);
                out.decoded_packets.push(p);
                d
            }
            Playout::FecFrom(p) => {
                let d = decoder.recover_fec_f32(&p);
                out.decoded_packets.push(p);
                d
            }
            Playout::Conceal => decoder.conceal_f32(),
            Playout::Wait => Ok(vec![0.0; FRAME_SAMPLES]),
        };
        let samples = decoded.unwrap_or_else(|_| {
            out.decode_errors += 1;
            decoder
                .conceal_f32()
                .unwrap_or_else(|_| vec![0.0; FRAME_SAMPLES])
        });
        playing |= jitter.is_playing();
        if playing {
            out.samples.extend_from_slice(&samples);
        }
        now += u64::from(aparte_media::FRAME_MS);
    }
    out.jitter = jitter.stats();
    out
}

/// Mean normalized cross-correlation over the speech-bearing 1 s segments of `sent`, each
/// aligned on its own within ±250 ms of `received` (see [`segment_nccs`]; the
/// jitter buffer shifts the delay by whole frames during a call). Returns (mean, segments).
pub fn mean_ncc(sent: &[f32], received: &[f32]) -> (f64, usize) {
    let nccs = segment_nccs(sent, received);
    (nccs.iter().sum::<f64>() / nccs.len() as f64, nccs.len())
}

/// Clean-path bar for "what one side heard matches what the other said": the median of the
/// per-segment NCCs ([`segment_nccs`]) must reach this...
pub const MIN_MEDIAN_NCC: f64 = 0.80;
/// ...and their mean at least this.
pub const MIN_MEAN_NCC: f64 = 0.60;

/// Asserts that the WAV `heard` matches the WAV `said` ([`segment_nccs`]: median ≥
/// [`MIN_MEDIAN_NCC`], mean ≥ [`MIN_MEAN_NCC`]), printing the per-segment figures.
pub fn assert_heard_matches_said(said: &Path, heard: &Path) {
    let sent = read_mono_48k(said).unwrap();
    let received = read_mono_48k(heard).unwrap();
    let (said, heard) = (said.display(), heard.display());
    let mut nccs = segment_nccs(&sent, &received);
    let mean = nccs.iter().sum::<f64>() / nccs.len() as f64;
    println!("{said} → {heard}: NCC per speech segment {nccs:.3?}, mean {mean:.3}");
    nccs.sort_by(f64::total_cmp);
    let median = nccs[nccs.len() / 2];
    assert!(
        median >= MIN_MEDIAN_NCC && mean >= MIN_MEAN_NCC,
        "{said} → {heard}: median NCC {median:.3} (≥ {MIN_MEDIAN_NCC}), \
         mean {mean:.3} (≥ {MIN_MEAN_NCC})"
    );
}

/// The normalized cross-correlation of each 1 s segment of `sent` that carries speech with
/// `received`, each segment aligned on its own within ±250 ms (0 for a segment that finds no
/// alignment). Panics if `sent` has no speech at all.
pub fn segment_nccs(sent: &[f32], received: &[f32]) -> Vec<f64> {
    let segment = 48_000;
    let alignments = align_segments(sent, received, segment, 12_000);
    let mut nccs = Vec::new();
    for (k, a) in alignments.iter().enumerate() {
        let seg = &sent[k * segment..((k + 1) * segment).min(sent.len())];
        if rms(seg) < 0.01 {
            continue; // silence: nothing to compare
        }
        nccs.push(a.map_or(0.0, |a| a.ncc));
    }
    assert!(!nccs.is_empty(), "no speech segments");
    nccs
}
