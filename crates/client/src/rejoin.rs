//! Getting back into the room after the signaling connection dropped in the middle of a call.
//!
//! Media does not need the signaling server once a call is set up, but an ICE restart does
//! (its offer and answer travel through it), and a network change that breaks the media path
//! usually breaks the WebSocket too. So a call that loses signaling reconnects and rejoins the
//! same room, with the same token, retrying until it works or the call ends. It presents the
//! old connection's resume token, so the server gives it the old connection's seat at once
//! rather than holding it until its heartbeat notices the old one is dead. (A server that
//! restarted knows no token: the old seat is gone with it.) A `room_full` answer (our old seat
//! still held, the token unknown) is retried like a network error. Any other refusal (an
//! expired token, a room the server no longer admits us to) is final and is reported.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use aparte_signaling_protocol::{ResumeToken, RoomId};
use tokio::sync::mpsc;

use crate::signaling::{Joined, Signaling, SignalingError, SignalingEvent};

/// The longest one attempt (connect, hello, join) may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A rejoined signaling connection: the connection, the join answer and its events.
pub type Rejoined = (Signaling, Joined, mpsc::Receiver<SignalingEvent>);

/// The wait before each attempt: none for the first (the call is silent until it works),
/// then quick (a brief outage), then once a second.
pub fn backoff(attempt: u32) -> Duration {
    match attempt {
        0 => Duration::ZERO,
        1 => Duration::from_millis(250),
        2 => Duration::from_millis(500),
        _ => Duration::from_secs(1),
    }
}

/// Whether a failed attempt is worth retrying.
pub fn retryable(error: &SignalingError) -> bool {
    match error {
        SignalingError::Refused { code, .. } => code == "room_full",
        SignalingError::WrongPath(_)
        | SignalingError::BadPeerMessage(_)
        | SignalingError::BadUrl { .. }
        | SignalingError::Tls(_) => false,
        _ => true,
    }
}

/// Reconnects and rejoins `room`, retrying (see [`backoff`], [`retryable`]) until it works or
/// a refusal is final. Runs until then; the caller aborts it when the call ends.
pub async fn rejoin(
    server: String,
    tls: Arc<rustls::ClientConfig>,
    room: RoomId,
    token: Option<String>,
    resume: Option<ResumeToken>,
) -> Result<Rejoined, SignalingError> {
    let mut attempt = 0u32;
    loop {
        tokio::time::sleep(backoff(attempt)).await;
        // A connect into a black hole (the old network) would otherwise wait for the
        // kernel's TCP timeout, minutes.
        let join = Signaling::join(&server, &tls, &room, token.clone(), resume.clone());
        match tokio::time::timeout(ATTEMPT_TIMEOUT, join).await {
            Ok(Ok(rejoined)) => return Ok(rejoined),
            Ok(Err(e)) if !retryable(&e) => return Err(e),
            Ok(Err(_)) | Err(_) => attempt = attempt.saturating_add(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_quick_then_steady() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn only_a_full_room_and_network_errors_are_retried() {
        let refused = |code: &str| SignalingError::Refused {
            code: code.into(),
            message: String::new(),
        };
        assert!(retryable(&refused("room_full")));
        assert!(retryable(&SignalingError::Closed));
        assert!(retryable(&SignalingError::IdleTimeout(10)));
        assert!(!retryable(&refused("token_expired")));
        assert!(!retryable(&refused("unauthorized")));
        assert!(!retryable(&SignalingError::WrongPath("ws://x/".into())));
    }
}
