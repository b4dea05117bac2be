//! Getting a call's media path back after it broke mid-call.
//!
//! A network change (new Wi-Fi, a new address from the ISP) kills the media path and, usually,
//! the signaling WebSocket with it, silently: TCP does not notice a dead path for a long time,
//! and the server's heartbeat takes seconds. Waiting for either costs the call ~10 s of
//! silence. So the rules are:
//!
//! 1. **Media silent for [`RecoveryConfig::silence_suspect_ms`]** (it flows every 20 ms in both
//!    directions) → check the signaling connection now: [`Action::ProbeSignaling`], a ping
//!    that must be answered within [`RecoveryConfig::probe_deadline_ms`]. Silence alone is not
//!    an outage (the peer's input may have ended); it only triggers the cheap check.
//! 2. **The link is lost** when ICE reports it, when the probe goes unanswered (our own network
//!    changed), or when the peer came back on a new signaling connection while media is silent
//!    (its network changed). The outage counts from the last packet received.
//! 3. **An unanswered probe** → reconnect signaling ([`Action::ReconnectSignaling`]) at once,
//!    in parallel with everything else; the server lets the new connection take the old one's
//!    seat (a resume token), so there is no wait for the old one to time out.
//! 4. **The offerer restarts ICE** ([`Action::RestartIce`]) as soon as the link is lost and
//!    signaling is up, again at once when signaling comes back or the peer reappears (an
//!    earlier offer may have gone to a dead connection), a second time after
//!    [`RecoveryConfig::first_retry_ms`] (flagged `previous_failed`: the caller then builds a
//!    new peer connection rather than trusting the same ICE agent again), and then every
//!    [`RecoveryConfig::restart_retry_ms`]. The answerer follows the offers it gets.
//! 5. **Give up** ([`Action::GiveUp`]) after [`RecoveryConfig::give_up_after_ms`] without the
//!    link.

/// Timings of the rules (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// Media silence after which the signaling connection is checked.
    pub silence_suspect_ms: u64,
    /// How long a probe may go unanswered before the connection is taken for dead.
    pub probe_deadline_ms: u64,
    /// The first ICE restart of an outage that has not brought the link back after this
    /// long is tried again.
    pub first_retry_ms: u64,
    /// Later restarts are tried again after this long.
    pub restart_retry_ms: u64,
    /// A link down this long is given up.
    pub give_up_after_ms: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            // 35 frames missed in a row: never jitter, and short enough that the whole
            // recovery (probe, reconnect, restart) fits in about 3 s.
            silence_suspect_ms: 700,
            // A WebSocket ping over a working path returns in well under a second, even from
            // a thin uplink; a dead path never answers.
            probe_deadline_ms: 1000,
            // A restart that works takes well under a second (0.1–0.3 s measured between
            // two homes); one that does not (webrtc-rs's agent sometimes never pairs after a
            // restart, or stays "gathering") is followed soon by a harder try.
            first_retry_ms: 1500,
            restart_retry_ms: 8000,
            give_up_after_ms: 40_000,
        }
    }
}

/// What the call must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a ping on the signaling connection and report the answer (or its absence after
    /// the deadline) with [`Recovery::probe_answered`] / [`Recovery::probe_unanswered`].
    ProbeSignaling,
    /// Take the signaling connection for dead and reconnect (with the resume token).
    ReconnectSignaling,
    /// Restart ICE (offerer only); `attempt` counts from 1 in each outage. Report it with
    /// [`Recovery::restart_sent`].
    RestartIce {
        /// Restarts tried in this outage, this one included.
        attempt: u32,
        /// The previous restart of this outage had the whole retry interval to bring the link
        /// back and did not (rather than this one being asked at once because signaling or the
        /// peer came back). The caller may then try harder (a new peer connection).
        previous_failed: bool,
    },
    /// The link has been down too long: end the call.
    GiveUp,
}

/// A link outage: since when, and the restarts tried for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// When the last packet before it arrived (or it was noticed, with none before), ms.
    pub since_ms: u64,
    /// ICE restarts sent for it.
    pub restarts: u32,
    /// When the next restart is due (0: at once).
    pub next_restart_ms: u64,
    /// The next restart is due because the previous one's retry interval ran out.
    pub retrying: bool,
}

/// How long after restart number `restarts` of an outage the next one is due.
fn retry_after(config: &RecoveryConfig, restarts: u32) -> u64 {
    if restarts <= 1 {
        config.first_retry_ms
    } else {
        config.restart_retry_ms
    }
}

/// The state of the signaling probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// No probe for the current silence yet.
    Idle,
    /// Sent at this time, not answered yet.
    InFlight { sent_ms: u64 },
    /// Answered (or reconnection asked for) during the current silence: not again until
    /// media flows again.
    Done,
}

/// The recovery state machine of one call (see the module doc).
#[derive(Debug, Clone)]
pub struct Recovery {
    config: RecoveryConfig,
    offerer: bool,
    set_up: bool,
    signaling_up: bool,
    last_packet_ms: Option<u64>,
    last_recovered_ms: Option<u64>,
    outage: Option<Outage>,
    probe: Probe,
    down_total_ms: u64,
    recoveries: u32,
    gave_up: bool,
}

impl Recovery {
    /// A call's recovery; only the `offerer` restarts ICE.
    pub fn new(config: RecoveryConfig, offerer: bool) -> Self {
        Recovery {
            config,
            offerer,
            set_up: false,
            signaling_up: true,
            last_packet_ms: None,
            last_recovered_ms: None,
            outage: None,
            probe: Probe::Idle,
            down_total_ms: 0,
            recoveries: 0,
            gave_up: false,
        }
    }

    /// The call is set up (keys confirmed on a connected link): from now on a broken path is
    /// recovered rather than the call failing.
    pub fn set_up(&mut self) {
        self.set_up = true;
    }

    /// A media packet arrived. Media flowing again ends an outage (ICE may not report the
    /// link back at all: after a restart webrtc-rs can stay "connected" throughout); returns
    /// the outage that just ended, with its length in ms.
    pub fn packet(&mut self, now_ms: u64) -> Option<u64> {
        self.last_packet_ms = Some(now_ms);
        // A later silence gets its own probe (one in flight still runs to its answer).
        if self.probe == Probe::Done {
            self.probe = Probe::Idle;
        }
        self.end_outage(now_ms)
    }

    /// ICE reports the link connected (`true`) or disconnected, failed or closed (`false`).
    /// Returns the outage that just ended, with its length in ms.
    pub fn link(&mut self, connected: bool, now_ms: u64) -> Option<u64> {
        if connected {
            self.end_outage(now_ms)
        } else {
            self.lose_link(now_ms);
            None
        }
    }

    fn end_outage(&mut self, now_ms: u64) -> Option<u64> {
        let outage = self.outage.take()?;
        let down = now_ms.saturating_sub(outage.since_ms);
        self.down_total_ms += down;
        self.recoveries += 1;
        self.last_recovered_ms = Some(now_ms);
        self.probe = Probe::Idle;
        Some(down)
    }

    /// The signaling connection was lost (closed, timed out) or given up by a probe. A
    /// probe still in flight on it is moot.
    pub fn signaling_lost(&mut self) {
        self.signaling_up = false;
        self.settle_probe();
    }

    /// We are back on the signaling server (a new connection joined the room). During an
    /// outage the offerer restarts at once: an earlier offer may have gone nowhere.
    pub fn signaling_back(&mut self) {
        self.signaling_up = true;
        // A probe of the old connection says nothing about the new one, which just worked.
        self.settle_probe();
        self.restart_now();
    }

    fn settle_probe(&mut self) {
        if matches!(self.probe, Probe::InFlight { .. }) {
            self.probe = Probe::Done;
        }
    }

    /// The peer came back on a new signaling connection (it left and rejoined). While media
    /// is silent that means its network changed: the link is lost, and the offerer restarts
    /// at once (its earlier offer may have gone to the peer's dead connection).
    pub fn peer_back(&mut self, now_ms: u64) {
        if self.silent_for(now_ms) >= self.config.silence_suspect_ms {
            self.lose_link(now_ms);
        }
        self.restart_now();
    }

    /// The probe was answered: our signaling connection works.
    pub fn probe_answered(&mut self) {
        if matches!(self.probe, Probe::InFlight { .. }) {
            self.probe = Probe::Done;
        }
    }

    /// The offerer sent the restart that [`Action::RestartIce`] asked for (`sent`), or tried
    /// and webrtc-rs failed: the retry interval applies either way, so a stuck stack is not
    /// asked on every tick.
    pub fn restart_sent(&mut self, now_ms: u64, sent: bool) {
        let config = self.config;
        if let Some(outage) = self.outage.as_mut() {
            if sent {
                outage.restarts += 1;
            }
            outage.next_restart_ms = now_ms.saturating_add(retry_after(&config, outage.restarts));
            outage.retrying = true;
        }
    }

    /// The restart could not be made yet (ICE still gathering): ask again after `wait_ms`.
    pub fn restart_deferred(&mut self, now_ms: u64, wait_ms: u64) {
        if let Some(outage) = self.outage.as_mut() {
            outage.next_restart_ms = now_ms.saturating_add(wait_ms);
            outage.retrying = false;
        }
    }

    /// The timings it follows.
    pub fn config(&self) -> &RecoveryConfig {
        &self.config
    }

    /// The current outage, if the link is down.
    pub fn outage(&self) -> Option<Outage> {
        self.outage
    }

    /// Total time the link was down after set-up, the current outage included, ms.
    pub fn down_total_ms(&self, now_ms: u64) -> u64 {
        self.down_total_ms + self.outage.map_or(0, |o| now_ms.saturating_sub(o.since_ms))
    }

    /// Outages recovered.
    pub fn recoveries(&self) -> u32 {
        self.recoveries
    }

    /// What to do now. Call it on every tick and after every event; it returns at most one
    /// action per call, so call it until it returns `None`. [`Action::GiveUp`] comes once.
    pub fn poll(&mut self, now_ms: u64) -> Option<Action> {
        if !self.set_up || self.gave_up {
            return None;
        }
        if let Some(outage) = self.outage {
            if now_ms.saturating_sub(outage.since_ms) >= self.config.give_up_after_ms {
                self.gave_up = true;
                return Some(Action::GiveUp);
            }
        }
        match self.probe {
            Probe::InFlight { sent_ms }
                if now_ms.saturating_sub(sent_ms) >= self.config.probe_deadline_ms =>
            {
                // Our connection is dead, so our own network changed, and (unless media came
                // back meanwhile) the media path with it.
                self.probe = Probe::Done;
                self.signaling_up = false;
                if self.silent_for(now_ms) >= self.config.silence_suspect_ms {
                    self.lose_link(now_ms);
                }
                return Some(Action::ReconnectSignaling);
            }
            Probe::Idle
                if self.signaling_up
                    && self.silent_for(now_ms) >= self.config.silence_suspect_ms =>
            {
                self.probe = Probe::InFlight { sent_ms: now_ms };
                return Some(Action::ProbeSignaling);
            }
            _ => {}
        }
        let outage = self.outage?;
        if self.offerer && self.signaling_up && now_ms >= outage.next_restart_ms {
            // Not again before the retry interval, whatever the caller reports.
            let wait = retry_after(&self.config, outage.restarts + 1);
            if let Some(o) = self.outage.as_mut() {
                o.next_restart_ms = now_ms.saturating_add(wait);
                o.retrying = true;
            }
            return Some(Action::RestartIce {
                attempt: outage.restarts + 1,
                // A restart that had its whole interval and did not bring the link back.
                previous_failed: outage.restarts >= 1 && outage.retrying,
            });
        }
        None
    }

    /// How long no media has arrived (since set-up if none ever did), ms.
    fn silent_for(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_heard().unwrap_or(now_ms))
    }

    /// The last packet, but never before the end of the previous outage (no packet may have
    /// arrived since it).
    fn last_heard(&self) -> Option<u64> {
        match (self.last_packet_ms, self.last_recovered_ms) {
            (Some(p), Some(r)) => Some(p.max(r)),
            (p, r) => p.or(r),
        }
    }

    /// Starts an outage (if none is on), counted from the last packet, but never before the
    /// end of the previous outage (no packet may have arrived since).
    fn lose_link(&mut self, now_ms: u64) {
        if !self.set_up || self.outage.is_some() {
            return;
        }
        let since_ms = self.last_heard().unwrap_or(now_ms);
        self.outage = Some(Outage {
            since_ms: since_ms.min(now_ms),
            restarts: 0,
            next_restart_ms: 0,
            retrying: false,
        });
    }

    /// Makes a restart due at once (if an outage is on).
    fn restart_now(&mut self) {
        if let Some(o) = self.outage.as_mut() {
            o.next_restart_ms = 0;
            o.retrying = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call set up at t = 0 with media every 20 ms until `until_ms`.
    fn flowing(offerer: bool, until_ms: u64) -> Recovery {
        let mut r = Recovery::new(RecoveryConfig::default(), offerer);
        r.set_up();
        for t in (0..=until_ms).step_by(20) {
            assert_eq!(r.packet(t), None);
            assert_eq!(r.poll(t), None, "nothing to do while media flows (t = {t})");
        }
        r
    }

    /// Polls every 200 ms (the call's tick) from `from_ms` to `to_ms`, collecting actions.
    fn tick(r: &mut Recovery, from_ms: u64, to_ms: u64) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        for t in (from_ms..=to_ms).step_by(200) {
            while let Some(a) = r.poll(t) {
                out.push((t, a));
            }
        }
        out
    }

    #[test]
    fn nothing_happens_before_set_up() {
        let mut r = Recovery::new(RecoveryConfig::default(), true);
        r.link(false, 100);
        assert_eq!(tick(&mut r, 0, 60_000), vec![]);
        assert_eq!(r.outage(), None);
    }

    #[test]
    fn silence_alone_only_probes_and_an_answer_ends_it_there() {
        // The peer's input ended: no media, but the path is fine.
        let mut r = flowing(true, 10_000);
        let actions = tick(&mut r, 10_200, 10_800);
        assert_eq!(actions, vec![(10_800, Action::ProbeSignaling)]);
        r.probe_answered();
        assert_eq!(
            tick(&mut r, 11_000, 30_000),
            vec![],
            "one probe per silence"
        );
        assert_eq!(r.outage(), None);
        // Media again, then silence again: a new probe.
        assert_eq!(r.packet(30_000), None);
        assert_eq!(
            tick(&mut r, 30_200, 30_800),
            vec![(30_800, Action::ProbeSignaling)]
        );
    }

    /// Our own address changed: the probe goes unanswered, so signaling is reconnected and
    /// the link taken for lost; the offerer restarts as soon as signaling is back.
    #[test]
    fn an_unanswered_probe_reconnects_and_the_offerer_restarts_when_back() {
        let mut r = flowing(true, 10_000);
        let actions = tick(&mut r, 10_200, 11_800);
        assert_eq!(
            actions,
            vec![
                (10_800, Action::ProbeSignaling),
                (11_800, Action::ReconnectSignaling)
            ]
        );
        let outage = r.outage().expect("the link is lost");
        assert_eq!(outage.since_ms, 10_000, "counted from the last packet");
        // No restart while signaling is down: the offer would go nowhere.
        assert_eq!(tick(&mut r, 12_000, 12_000), vec![]);
        r.signaling_back();
        assert_eq!(
            r.poll(12_050),
            Some(Action::RestartIce {
                attempt: 1,
                previous_failed: false
            })
        );
        r.restart_sent(12_050, true);
        assert_eq!(
            r.link(true, 12_400),
            Some(2_400),
            "back 2.4 s after the last packet"
        );
        assert_eq!(r.recoveries(), 1);
        assert_eq!(r.down_total_ms(20_000), 2_400);
    }

    /// The peer's address changed: our probe is answered, and the peer reappears on a new
    /// signaling connection while media is silent. The offerer restarts at once.
    #[test]
    fn the_peer_back_on_a_new_connection_during_silence_is_an_outage() {
        let mut r = flowing(true, 10_000);
        assert_eq!(
            tick(&mut r, 10_200, 10_800),
            vec![(10_800, Action::ProbeSignaling)]
        );
        r.probe_answered();
        r.peer_back(12_000);
        assert_eq!(
            r.poll(12_000),
            Some(Action::RestartIce {
                attempt: 1,
                previous_failed: false
            })
        );
        assert_eq!(r.outage().unwrap().since_ms, 10_000);
    }

    /// The probe went out on the old connection, which then closed, and we rejoined before
    /// its deadline: its silence says nothing about the new connection.
    #[test]
    fn a_probe_of_a_connection_since_replaced_is_forgotten() {
        let mut r = flowing(true, 10_000);
        assert_eq!(r.poll(10_800), Some(Action::ProbeSignaling));
        r.signaling_lost();
        r.link(false, 11_000);
        r.signaling_back();
        assert_eq!(
            r.poll(11_100),
            Some(Action::RestartIce {
                attempt: 1,
                previous_failed: false
            })
        );
        r.restart_sent(11_100, true);
        assert_eq!(
            tick(&mut r, 11_200, 12_000),
            vec![],
            "no reconnect for the old probe"
        );
    }

    /// A restart asked at once (signaling back) right after another is not a failed one.
    #[test]
    fn a_prompt_second_restart_is_not_taken_for_a_failed_first() {
        let mut r = flowing(true, 10_000);
        // ICE noticed before the silence reached the probe's threshold.
        r.link(false, 10_500);
        assert!(matches!(
            r.poll(10_500),
            Some(Action::RestartIce { attempt: 1, .. })
        ));
        r.restart_sent(10_500, true);
        r.peer_back(10_600);
        assert_eq!(
            r.poll(10_600),
            Some(Action::RestartIce {
                attempt: 2,
                previous_failed: false
            })
        );
    }

    #[test]
    fn the_peer_reconnecting_while_media_flows_is_no_outage() {
        let mut r = flowing(true, 10_000);
        r.peer_back(10_010);
        assert_eq!(r.outage(), None);
        assert_eq!(r.poll(10_010), None);
    }

    #[test]
    fn the_answerer_never_restarts_but_reconnects() {
        let mut r = flowing(false, 10_000);
        let actions = tick(&mut r, 10_200, 60_000);
        assert_eq!(
            actions.iter().map(|a| a.1).collect::<Vec<_>>(),
            vec![
                Action::ProbeSignaling,
                Action::ReconnectSignaling,
                Action::GiveUp
            ]
        );
        r.signaling_back();
        assert!(!matches!(r.poll(20_000), Some(Action::RestartIce { .. })));
    }

    #[test]
    fn ice_down_restarts_at_once_again_soon_then_every_retry_interval_then_gives_up() {
        let mut r = flowing(true, 10_000);
        r.link(false, 13_000);
        let mut restarts = Vec::new();
        let mut gave_up = None;
        for t in (13_000..=60_000).step_by(200) {
            while let Some(a) = r.poll(t) {
                match a {
                    Action::ProbeSignaling => r.probe_answered(),
                    Action::RestartIce { attempt, .. } => {
                        restarts.push((t, attempt));
                        r.restart_sent(t, true);
                    }
                    Action::GiveUp => gave_up = gave_up.or(Some(t)),
                    Action::ReconnectSignaling => panic!("the probe was answered"),
                }
            }
            if gave_up.is_some() {
                break;
            }
        }
        assert_eq!(
            restarts,
            vec![
                (13_000, 1),
                (14_600, 2),
                (22_600, 3),
                (30_600, 4),
                (38_600, 5),
                (46_600, 6)
            ]
        );
        assert_eq!(gave_up, Some(50_000), "40 s after the last packet");
    }

    #[test]
    fn a_restart_that_could_not_be_made_is_asked_again_soon() {
        let mut r = flowing(true, 10_000);
        r.probe_answered();
        r.link(false, 13_000);
        assert_eq!(r.poll(13_000), Some(Action::ProbeSignaling));
        r.probe_answered();
        assert_eq!(
            r.poll(13_000),
            Some(Action::RestartIce {
                attempt: 1,
                previous_failed: false
            })
        );
        r.restart_deferred(13_000, 200);
        assert_eq!(r.poll(13_100), None);
        assert_eq!(
            r.poll(13_200),
            Some(Action::RestartIce {
                attempt: 1,
                previous_failed: false
            })
        );
        r.restart_sent(13_200, true);
        assert_eq!(r.poll(14_600), None);
        assert_eq!(
            r.poll(14_700),
            Some(Action::RestartIce {
                attempt: 2,
                previous_failed: true
            })
        );
        r.restart_sent(14_700, true);
        assert_eq!(r.poll(22_600), None);
        assert_eq!(
            r.poll(22_700),
            Some(Action::RestartIce {
                attempt: 3,
                previous_failed: true
            })
        );
    }

    #[test]
    fn media_flowing_again_ends_the_outage_even_if_ice_never_said_it_was_down() {
        let mut r = flowing(false, 10_000);
        r.peer_back(11_000);
        assert!(r.outage().is_some());
        assert_eq!(r.packet(12_100), Some(2_100));
        assert_eq!(r.outage(), None);
        assert_eq!(r.link(true, 12_200), None, "already over");
        assert_eq!(r.recoveries(), 1);
    }

    #[test]
    fn a_new_outage_counts_from_the_end_of_the_previous_one() {
        let mut r = flowing(true, 10_000);
        r.link(false, 13_000);
        r.link(true, 15_000);
        // No packet since: the next outage starts at the recovery, not at 10 s.
        r.link(false, 16_000);
        assert_eq!(r.outage().unwrap().since_ms, 15_000);
        assert_eq!(r.down_total_ms(16_000), 5_000 + 1_000);
    }

    proptest::proptest! {
        /// Whatever the events, actions never come before set-up, restarts only from the
        /// offerer with signaling up, and an outage never starts after `now`.
        #[test]
        fn actions_follow_the_rules(
            offerer: bool,
            events in proptest::collection::vec((0u8..8, 0u64..500), 0..200),
        ) {
            let mut r = Recovery::new(RecoveryConfig::default(), offerer);
            let mut now = 0u64;
            let mut set_up = false;
            let mut signaling_up = true;
            for (kind, dt) in events {
                now += dt;
                match kind {
                    0 => { r.set_up(); set_up = true; }
                    1 => { r.packet(now); }
                    2 => { r.link(true, now); }
                    3 => { r.link(false, now); }
                    4 => { r.signaling_lost(); signaling_up = false; }
                    5 => { r.signaling_back(); signaling_up = true; }
                    6 => r.peer_back(now),
                    _ => r.probe_answered(),
                }
                while let Some(a) = r.poll(now) {
                    proptest::prop_assert!(set_up);
                    match a {
                        Action::RestartIce { .. } => {
                            proptest::prop_assert!(offerer && signaling_up);
                            r.restart_sent(now, true);
                        }
                        Action::ReconnectSignaling => signaling_up = false,
                        Action::ProbeSignaling => proptest::prop_assert!(signaling_up),
                        Action::GiveUp => break,
                    }
                }
                if let Some(o) = r.outage() {
                    proptest::prop_assert!(o.since_ms <= now);
                }
            }
        }
    }
}
