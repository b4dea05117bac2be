//! How a call ended, for the person (one line that says what to do) and for scripts (an exit
//! code per kind of failure, also written to `--stats-json`).
//!
//! | code | outcome | meaning |
//! |---|---|---|
//! | 0 | `completed` | the call ran and ended normally with verified or accepted keys |
//! | 1 | `failed` | a local failure: sound device, file, an internal error |
//! | 2 | `usage` | a bad flag, value or config file; nothing was attempted |
//! | 3 | `security` | SAS mismatch or rejection, identity changed, the key exchange failed a check, or every received frame failed authentication |
//! | 4 | `no_path` | no network path: ICE found no working pair, the relay is unreachable, or the link was lost for good |
//! | 5 | `signaling` | the signaling server: unreachable, no answer, TLS failure, refused token, room full, or lost before the call was set up |
//! | 6 | `incomplete` | the call ended (hung up, peer left) before keys were verified or accepted |
//!
//! Pure: no I/O, so every rule here is unit-tested.
#![forbid(unsafe_code)]

use serde::Serialize;

/// The kind of ending, as a script tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ended normally with verified or accepted keys.
    #[default]
    Completed,
    /// A local failure (sound device, file, internal).
    Failed,
    /// Bad usage: a flag, value or config file.
    Usage,
    /// A security failure: the call may have been attacked.
    Security,
    /// No network path between the peers.
    NoPath,
    /// The signaling server failed or refused.
    Signaling,
    /// Ended before keys were verified or accepted.
    Incomplete,
}

impl Outcome {
    /// Every outcome, in exit-code order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Completed,
        Outcome::Failed,
        Outcome::Usage,
        Outcome::Security,
        Outcome::NoPath,
        Outcome::Signaling,
        Outcome::Incomplete,
    ];

    /// The process exit code for this outcome.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Completed => 0,
            Outcome::Failed => 1,
            Outcome::Usage => 2,
            Outcome::Security => 3,
            Outcome::NoPath => 4,
            Outcome::Signaling => 5,
            Outcome::Incomplete => 6,
        }
    }

    /// The name written to `--stats-json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Usage => "usage",
            Outcome::Security => "security",
            Outcome::NoPath => "no_path",
            Outcome::Signaling => "signaling",
            Outcome::Incomplete => "incomplete",
        }
    }
}

/// Why the call ended: the outcome, or `None` for an ordinary ending (hang-up, end of input,
/// the duration, the peer leaving) whose outcome depends on whether the keys were accepted
/// (see [`Ending::resolve`]), and a human reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The outcome, when the ending itself decides it.
    pub outcome: Option<Outcome>,
    /// What happened, for people.
    pub reason: String,
}

impl Ending {
    /// An ordinary ending.
    pub fn normal(reason: impl Into<String>) -> Self {
        Self {
            outcome: None,
            reason: reason.into(),
        }
    }

    /// An ending that is a failure of this kind.
    pub fn failure(outcome: Outcome, reason: impl Into<String>) -> Self {
        Self {
            outcome: Some(outcome),
            reason: reason.into(),
        }
    }

    /// The final outcome and reason, given what the call achieved.
    pub fn resolve(&self, achieved: &Achieved) -> (Outcome, String) {
        if let Some(outcome) = self.outcome {
            return (outcome, self.reason.clone());
        }
        // Frames came from the peer and not one authenticated: whoever sent them does not
        // hold the keys. The call "worked" only in the sense that nothing was heard.
        if achieved.frames_decrypted == 0 && achieved.frames_rejected > 0 {
            return (
                Outcome::Security,
                format!(
                    "{}, but every one of the {} frames received failed authentication: someone \
                     is tampering with the media",
                    self.reason, achieved.frames_rejected
                ),
            );
        }
        if achieved.keys_accepted {
            return (Outcome::Completed, self.reason.clone());
        }
        let why = if achieved.keys_agreed {
            "the keys were never verified or accepted (the SAS was not confirmed)"
        } else {
            "the keys were never agreed"
        };
        (Outcome::Incomplete, format!("{}; {why}", self.reason))
    }
}

/// What a call achieved, for [`Ending::resolve`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Achieved {
    /// The key exchange completed (the SAS was shown).
    pub keys_agreed: bool,
    /// The keys were verified (SAS or pinned identity) or accepted (this side confirmed the
    /// SAS, a script's expected SAS matched, or trust on first use).
    pub keys_accepted: bool,
    /// Audio frames from the peer that authenticated.
    pub frames_decrypted: u64,
    /// Audio frames from the peer rejected by the e2ee layer.
    pub frames_rejected: u64,
}

/// What the call knows when set-up has taken too long, to say what was tried and what
/// probably blocks the path.
#[derive(Debug, Clone, Default)]
pub struct PathFacts {
    /// `--relay-only`.
    pub relay_only: bool,
    /// The TURN servers offered, as `host:port`.
    pub turn_servers: Vec<String>,
    /// Our candidate types gathered (`host`, `srflx`, `relay`).
    pub local_types: std::collections::BTreeSet<String>,
    /// The peer's candidate types received.
    pub remote_types: std::collections::BTreeSet<String>,
    /// The ICE/DTLS link came up at some point.
    pub link_connected: bool,
    /// The e2ee key exchange completed.
    pub keys_agreed: bool,
    /// How long we waited, seconds.
    pub waited_s: u64,
}

/// The one-line reason for a call whose path never worked: what was tried and the likely cause.
pub fn explain_no_path(f: &PathFacts) -> String {
    let list = |set: &std::collections::BTreeSet<String>| {
        if set.is_empty() {
            "none".to_owned()
        } else {
            set.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    };
    let relays = f.turn_servers.join(", ");
    let head = format!("no working network path to the peer after {} s", f.waited_s);
    if f.link_connected && !f.keys_agreed {
        return format!(
            "{head}: the link came up but the end-to-end key exchange did not finish (the \
             signaling server may be dropping the peers' messages)"
        );
    }
    if f.link_connected {
        return format!("{head}: the link came up but not with confirmed keys");
    }
    if f.relay_only && f.turn_servers.is_empty() {
        return format!(
            "{head}: --relay-only, but the signaling server offered no TURN relay (start it \
             with --turn-listen, or configure turn_urls)"
        );
    }
    if !f.turn_servers.is_empty() && !f.local_types.contains("relay") {
        return format!(
            "{head}: no relay candidate from the TURN server at {relays}: is UDP to it blocked \
             by a firewall, or did it refuse the credentials? (tried: {})",
            list(&f.local_types)
        );
    }
    if f.remote_types.is_empty() {
        return format!(
            "{head}: none of the peer's candidates arrived (ours: {}); the peer could not \
             gather any, or signaling lost them",
            list(&f.local_types)
        );
    }
    let relay_hint = if f.turn_servers.is_empty() {
        "; both sides may be behind NATs or firewalls that block direct UDP, and the server \
         offers no TURN relay"
    } else {
        "; the relay answered, so the peer's side may block UDP to it"
    };
    format!(
        "{head}: ICE tried our candidates ({}) against the peer's ({}) and none worked{relay_hint}",
        list(&f.local_types),
        list(&f.remote_types)
    )
}

/// Notices when frames from the peer keep failing authentication, so the person is told at
/// once that someone is tampering, not only at the end of the call.
#[derive(Debug, Clone, Copy, Default)]
pub struct TamperWatch {
    window_start_ms: u64,
    accepted_at_start: u64,
    rejected_at_start: u64,
    last_warning_ms: Option<u64>,
}

impl TamperWatch {
    /// How long one observation window lasts.
    pub const WINDOW_MS: u64 = 1_000;
    /// Rejected frames in one window that count as an attack rather than noise (50 frames
    /// make one second of audio; a corrupted packet now and then is not this).
    pub const MIN_REJECTED: u64 = 25;
    /// The shortest time between two warnings.
    pub const REPEAT_MS: u64 = 10_000;

    /// Feeds the receiver's totals; returns the frames rejected in the window just closed
    /// when a warning is due: at least [`Self::MIN_REJECTED`] rejected, and more rejected
    /// than accepted.
    pub fn observe(&mut self, now_ms: u64, accepted: u64, rejected: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.window_start_ms) < Self::WINDOW_MS {
            return None;
        }
        let new_rejected = rejected.saturating_sub(self.rejected_at_start);
        let new_accepted = accepted.saturating_sub(self.accepted_at_start);
        self.window_start_ms = now_ms;
        self.accepted_at_start = accepted;
        self.rejected_at_start = rejected;
        let quiet = self
            .last_warning_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < Self::REPEAT_MS);
        if new_rejected >= Self::MIN_REJECTED && new_rejected > new_accepted && !quiet {
            self.last_warning_ms = Some(now_ms);
            return Some(new_rejected);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_zero_only_for_completed() {
        let codes: std::collections::BTreeSet<u8> =
            Outcome::ALL.iter().map(|o| o.exit_code()).collect();
        assert_eq!(codes.len(), Outcome::ALL.len());
        for o in Outcome::ALL {
            assert_eq!(o.exit_code() == 0, o == Outcome::Completed, "{o:?}");
            assert_eq!(
                serde_json::to_value(o).ok(),
                Some(serde_json::Value::from(o.as_str()))
            );
        }
    }

    #[test]
    fn an_ordinary_ending_completes_only_with_accepted_keys() {
        let ok = Achieved {
            keys_agreed: true,
            keys_accepted: true,
            frames_decrypted: 10,
            frames_rejected: 0,
        };
        let end = Ending::normal("input ended");
        assert_eq!(end.resolve(&ok).0, Outcome::Completed);
        let unconfirmed = Achieved {
            keys_accepted: false,
            ..ok
        };
        let (outcome, reason) = end.resolve(&unconfirmed);
        assert_eq!(outcome, Outcome::Incomplete);
        assert!(reason.contains("SAS was not confirmed"), "{reason}");
        let never = Achieved::default();
        assert!(end.resolve(&never).1.contains("never agreed"));
    }

    #[test]
    fn all_frames_rejected_is_a_security_failure_even_with_accepted_keys() {
        let forged = Achieved {
            keys_agreed: true,
            keys_accepted: true,
            frames_decrypted: 0,
            frames_rejected: 605,
        };
        let (outcome, reason) = Ending::normal("duration reached").resolve(&forged);
        assert_eq!(outcome, Outcome::Security);
        assert!(reason.contains("tampering"), "{reason}");
        // Some rejected among many accepted is counted, not fatal.
        let some = Achieved {
            frames_decrypted: 500,
            ..forged
        };
        assert_eq!(Ending::normal("x").resolve(&some).0, Outcome::Completed);
    }

    #[test]
    fn a_failure_keeps_its_outcome() {
        let end = Ending::failure(Outcome::NoPath, "no UDP path to the relay");
        assert_eq!(
            end.resolve(&Achieved {
                keys_accepted: true,
                ..Achieved::default()
            }),
            (Outcome::NoPath, "no UDP path to the relay".to_owned())
        );
    }

    #[test]
    fn tamper_watch_warns_on_a_bout_of_rejections_then_stays_quiet_for_a_while() {
        let mut w = TamperWatch::default();
        // Healthy: 50 accepted a second, one stray reject.
        let (mut acc, mut rej) = (0, 0);
        for s in 1..=5u64 {
            acc += 50;
            rej += u64::from(s == 3);
            assert_eq!(w.observe(s * 1000, acc, rej), None);
        }
        // Everything rejected from now on.
        rej += 50;
        assert_eq!(w.observe(6000, acc, rej), Some(50));
        for s in 7..16u64 {
            rej += 50;
            assert_eq!(w.observe(s * 1000, acc, rej), None, "second {s}");
        }
        rej += 50;
        assert_eq!(w.observe(16_000, acc, rej), Some(50));
        // Observations inside one window do not close it.
        assert_eq!(w.observe(16_500, acc, rej + 100), None);
    }

    #[test]
    fn no_path_explanations_name_the_likely_block() {
        let relay = PathFacts {
            relay_only: true,
            turn_servers: vec!["vps.example:3478".into()],
            local_types: ["host".to_owned()].into(),
            waited_s: 30,
            ..PathFacts::default()
        };
        let why = explain_no_path(&relay);
        assert!(why.contains("no relay candidate from the TURN server at vps.example:3478"));
        assert!(why.contains("UDP"), "{why}");
        let no_turn = PathFacts {
            turn_servers: vec![],
            ..relay.clone()
        };
        assert!(explain_no_path(&no_turn).contains("offered no TURN relay"));
        let direct = PathFacts {
            relay_only: false,
            turn_servers: vec![],
            local_types: ["host".to_owned(), "srflx".to_owned()].into(),
            remote_types: ["host".to_owned()].into(),
            ..PathFacts::default()
        };
        let why = explain_no_path(&direct);
        assert!(
            why.contains("host, srflx") && why.contains("block direct UDP"),
            "{why}"
        );
        let silent_peer = PathFacts {
            remote_types: Default::default(),
            ..direct
        };
        assert!(explain_no_path(&silent_peer).contains("none of the peer's candidates"));
    }
}
