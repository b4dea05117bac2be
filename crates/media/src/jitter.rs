//! A sans-IO adaptive jitter buffer for 20 ms audio packets.
//!
//! The network side calls [`JitterBuffer::push_frame`] with each packet, its frame index and
//! its arrival time. The playout side calls [`JitterBuffer::pop`] once per 20 ms tick with the
//! current time and gets a [`Playout`]: decode this packet, rebuild the frame from the next
//! packet's FEC, conceal, or wait (nothing to play yet). There is no clock and no thread inside:
//! every time is a millisecond count the caller passes in, so tests run a whole call in
//! microseconds and reproduce exactly.
//!
//! ## Frame indices
//!
//! The index says where a frame sits in the sender's stream: one more per 20 ms frame. Playout
//! order, duplicate detection, the timing model and the loss accounting all follow it. In a
//! call it is the **authenticated** index the e2ee layer returns
//! (`aparte_session::MediaFrame::index`: the key epoch and frame counter, both covered by the
//! AEAD), never the RTP sequence number, which anything inside SRTP (an SFU, a relay) can
//! rewrite to reorder authentic frames or have them dropped as duplicates. The RTP sequence
//! number stays useful only as a hint for transport loss statistics.
//!
//! [`JitterBuffer::push`] still takes a `u16` RTP-style sequence number (65535 is followed by
//! 0), extended to an index relative to the highest number seen, for streams that have no
//! authenticated index.
//!
//! ## Algorithm
//!
//! * **Jitter measurement.** For each packet the buffer records its transit offset,
//!   `arrival_ms - 20 * seq` (sender and receiver clocks need not agree: only differences
//!   matter). Over a sliding window of recent packets, the relative delay of a packet is its
//!   offset minus the smallest offset in the window. The target delay is the
//!   [`quantile_percent`](JitterConfig::quantile_percent) quantile of relative delays (95 % by
//!   default, so about 5 % of packets may come too late under steady jitter), clamped to the
//!   floor and ceiling (20 and 100 ms by default). Late packets count too: they are what
//!   tells the buffer its delay is too short. When the jitter goes away, the large values
//!   leave the window and the target comes back down. The RFC 3550 inter-arrival jitter is also
//!   kept, for statistics.
//! * **Playout delay.** At each tick the current delay is how long after its earliest plausible
//!   arrival (smallest offset + 20 ms × seq) the next frame is being played.
//! * **Start.** The first frame plays once it has been held for the target delay.
//! * **Missing frame.** If the current delay is below the target, the buffer waits for the
//!   frame: it answers [`Playout::Conceal`] *without* moving on, which stretches the delay by one
//!   frame (this is how the delay grows). Otherwise the frame is declared lost: if the next
//!   packet is there the answer is [`Playout::FecFrom`] with that packet, else
//!   [`Playout::Conceal`], and playout moves on.
//! * **Too much delay.** If the current delay is more than one frame above the target and at
//!   least two frames are buffered, one frame is dropped (at most once every
//!   [`shrink_interval_ticks`](JitterConfig::shrink_interval_ticks) ticks) to bring it down,
//!   but never during the first [`start_grace_ms`](JitterConfig::start_grace_ms) after
//!   playout starts: at start-up the timing window holds a handful of samples, and one frame
//!   that came late (two arriving together) made the buffer throw away the opening of the
//!   call to win back 20 ms.
//! * **Idle.** After [`idle_after_ms`](JitterConfig::idle_after_ms) of nothing but concealment
//!   with an empty buffer (the peer stopped sending), the buffer goes back to waiting, answers
//!   [`Playout::Wait`] and starts afresh when packets come back. The concealment it did
//!   since the last packet is then counted as [`concealed_at_end`](JitterStats::concealed_at_end)
//!   rather than as loss: those frames were, as far as the buffer can tell, never sent.
//! * **End of stream.** When the caller knows the stream has ended (the peer said goodbye, or
//!   the call is ending), [`JitterBuffer::end_of_stream`] goes idle as soon as what is
//!   buffered has played, with the same accounting, instead of concealing for
//!   `idle_after_ms` first.
//! * **Resynchronisation.** A packet at least [`capacity`](JitterConfig::capacity) frames ahead
//!   of playout (over a second of loss) or a run of packets that far behind (a sender restart)
//!   makes the buffer drop what it holds and start again from the new packets. Before playout
//!   starts, the packets held never span more than `capacity` frames either.
//!
//! ## Bounds
//!
//! At most [`capacity`](JitterConfig::capacity) packets of at most
//! [`max_packet_bytes`](JitterConfig::max_packet_bytes) each are held, plus a fixed window of
//! timing samples and recently seen indices. Late packets (behind playout) and duplicates are
//! dropped and counted. No input panics, whatever the indices and times.
//!
//! ## Accounting
//!
//! Every packet pushed ends up in exactly one counter of [`JitterStats`]: played, dropped (for
//! latency, buffer full, reset, late, duplicate, invalid) or still buffered. The buffer also
//! tracks which indices it has seen over the whole stream (lowest, highest, how many
//! distinct), so frames that never arrived can be counted; [`crate::accounting`] puts these
//! together with the sender's and the e2ee layer's counts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::FRAME_MS;

const FRAME: i64 = FRAME_MS as i64;
/// Consecutive far-behind packets that make the buffer assume the sender restarted.
const FAR_LATE_RESYNC: u32 = 8;
/// Base of the extended sequence space, so unwrapping backwards never goes below zero.
const EXT_BASE: u64 = 1 << 32;
/// How many recent distinct indices the stream accounting remembers to tell a repeat from a
/// first arrival: twice the e2ee replay window (512), so any frame the e2ee layer accepts is
/// within it.
const ACCOUNTING_WINDOW: usize = 1024;

/// What went wrong configuring the jitter buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JitterError {
    /// A configuration field is out of range.
    #[error("invalid jitter buffer configuration: {0}")]
    InvalidConfig(&'static str),
}

/// Jitter buffer settings. The defaults suit a two-party call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// The smallest target delay, in ms. Default 20.
    pub min_delay_ms: u32,
    /// The largest target delay, in ms. Default 100.
    pub max_delay_ms: u32,
    /// The most packets held at once; also how far ahead of playout (in frames) a packet may be
    /// before the buffer resynchronises. Default 50 (one second).
    pub capacity: usize,
    /// The largest packet accepted, in bytes. Default 1500.
    pub max_packet_bytes: usize,
    /// How many recent packets the jitter measurement looks at. Default 150 (three seconds).
    pub window_packets: usize,
    /// The quantile of relative delays the target aims to cover, in percent (50..=100).
    /// Default 95.
    pub quantile_percent: u8,
    /// At most one frame is dropped to reduce the delay per this many ticks. Default 10 (200 ms).
    pub shrink_interval_ticks: u32,
    /// After this long of concealment with nothing buffered, playout stops and waits. Default
    /// 1000 ms.
    pub idle_after_ms: u32,
    /// For this long after playout starts (or restarts), no frame is dropped to reduce the
    /// delay. Default 1000 ms.
    pub start_grace_ms: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            min_delay_ms: 20,
            max_delay_ms: 100,
            capacity: 50,
            max_packet_bytes: 1500,
            window_packets: 150,
            quantile_percent: 95,
            shrink_interval_ticks: 10,
            idle_after_ms: 1000,
            start_grace_ms: 1000,
        }
    }
}

impl JitterConfig {
    /// Checks that the fields are in range and consistent.
    pub fn validate(&self) -> Result<(), JitterError> {
        let bad = |m| Err(JitterError::InvalidConfig(m));
        if self.min_delay_ms > self.max_delay_ms {
            return bad("min_delay_ms must not exceed max_delay_ms");
        }
        if self.max_delay_ms > 10_000 {
            return bad("max_delay_ms must be at most 10000");
        }
        if !(2..=10_000).contains(&self.capacity) {
            return bad("capacity must be within 2..=10000 packets");
        }
        if (self.capacity as u64) * u64::from(FRAME_MS) < u64::from(self.max_delay_ms) + 40 {
            return bad("capacity must hold max_delay_ms plus two frames");
        }
        if self.max_packet_bytes == 0 || self.max_packet_bytes > 65_536 {
            return bad("max_packet_bytes must be within 1..=65536");
        }
        if !(2..=10_000).contains(&self.window_packets) {
            return bad("window_packets must be within 2..=10000");
        }
        if !(50..=100).contains(&self.quantile_percent) {
            return bad("quantile_percent must be within 50..=100");
        }
        if self.shrink_interval_ticks == 0 {
            return bad("shrink_interval_ticks must be at least 1");
        }
        if self.idle_after_ms < FRAME_MS {
            return bad("idle_after_ms must be at least one frame");
        }
        if self.start_grace_ms > 60_000 {
            return bad("start_grace_ms must be at most 60000");
        }
        Ok(())
    }
}

/// What the playout side should produce for this 20 ms tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Decode this packet.
    Packet(Vec<u8>),
    /// The frame was lost but the next packet is here: decode this packet (the *next* one) with
    /// FEC to rebuild the lost frame. The packet stays buffered and is played on the next tick.
    FecFrom(Vec<u8>),
    /// Nothing to decode: run packet-loss concealment for one frame.
    Conceal,
    /// Playout has not started (or has gone idle): play silence, do not touch the decoder.
    Wait,
}

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Buffered for playout.
    Accepted,
    /// Buffered for playout after the buffer resynchronised to a new position.
    Resynced,
    /// Already held or already played; dropped.
    Duplicate,
    /// Its frame has already been played or given up; dropped.
    Late,
    /// Empty or larger than `max_packet_bytes`; dropped.
    Invalid,
}

/// Counters and current state, for the call statistics.
///
/// Every push lands in exactly one of `received`, `late`, `duplicates` and `invalid`
/// ([`pushed`](Self::pushed)), and every packet received in exactly one of `played`,
/// `dropped_for_latency`, `dropped_full`, `dropped_on_reset` and `buffered`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets accepted into the buffer.
    pub received: u64,
    /// Frames played from their own packet ([`Playout::Packet`]).
    pub played: u64,
    /// Ticks answered with [`Playout::Conceal`] (lost frames and waits for a late one), not
    /// counting those in `concealed_at_end`.
    pub concealed: u64,
    /// Ticks answered with [`Playout::Conceal`] after the last packet of a stream, before the
    /// buffer went idle or was told the stream ended: frames never sent, as far as the
    /// buffer can tell, so not counted in `concealed`, `stretched` or `lost`.
    pub concealed_at_end: u64,
    /// Of `concealed`, the ticks that waited for a missing frame to grow the delay.
    pub stretched: u64,
    /// Frames rebuilt from the next packet's FEC ([`Playout::FecFrom`]).
    pub fec_recovered: u64,
    /// Frames declared lost at playout (rebuilt by FEC or concealed): missing or late.
    pub lost: u64,
    /// Packets that arrived after their frame was played or given up.
    pub late: u64,
    /// Packets received twice.
    pub duplicates: u64,
    /// Packets that were empty or too large.
    pub invalid: u64,
    /// Frames dropped to bring the delay down to the target.
    pub dropped_for_latency: u64,
    /// Packets dropped because the buffer was full.
    pub dropped_full: u64,
    /// Packets that were held when the buffer resynchronised or was reset, and dropped.
    pub dropped_on_reset: u64,
    /// Times the buffer started afresh after a big jump or a sender restart.
    pub resyncs: u64,
    /// The target delay now, in ms.
    pub target_delay_ms: u32,
    /// The playout delay measured at the last tick, in ms (0 before playout starts).
    pub current_delay_ms: u32,
    /// RFC 3550 inter-arrival jitter estimate, in ms (rounded).
    pub jitter_ms: u32,
    /// Packets held now.
    pub buffered: u32,
    /// Distinct indices pushed over the whole stream, whatever became of the packets
    /// (resets and resyncs do not clear it). With an authenticated index each frame is
    /// pushed at most once, so this equals [`pushed`](Self::pushed).
    pub distinct_frames: u64,
    /// The lowest index pushed, if any.
    pub lowest_index: Option<u64>,
    /// The highest index pushed, if any.
    pub highest_index: Option<u64>,
    /// Indices between the lowest and the highest that were never pushed: frames that never
    /// reached the buffer (lost on the way, rejected, or dropped before it). Frames before the
    /// lowest and after the highest need the sender's count (see [`crate::accounting`]).
    pub missing: u64,
}

impl JitterStats {
    /// Every packet pushed: `received + late + duplicates + invalid`.
    pub fn pushed(&self) -> u64 {
        self.received
            .saturating_add(self.late)
            .saturating_add(self.duplicates)
            .saturating_add(self.invalid)
    }

    /// Every packet pushed but not played and not held now, all reasons:
    /// `late + duplicates + invalid + dropped_for_latency + dropped_full + dropped_on_reset`.
    pub fn dropped(&self) -> u64 {
        [
            self.late,
            self.duplicates,
            self.invalid,
            self.dropped_for_latency,
            self.dropped_full,
            self.dropped_on_reset,
        ]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b))
    }
}

/// Which indices a stream has brought, for counting frames that never arrived. Bounded: it
/// remembers the last [`ACCOUNTING_WINDOW`] distinct indices; an index older than all of them
/// is taken as a first arrival (with an authenticated index, a repeat that old cannot pass
/// the e2ee replay window).
#[derive(Debug, Clone, Default)]
struct Coverage {
    recent: BTreeSet<u64>,
    distinct: u64,
    lowest: Option<u64>,
    highest: Option<u64>,
}

impl Coverage {
    fn note(&mut self, index: u64) {
        if self.recent.contains(&index) {
            return;
        }
        self.recent.insert(index);
        while self.recent.len() > ACCOUNTING_WINDOW {
            self.recent.pop_first();
        }
        self.distinct = self.distinct.saturating_add(1);
        self.lowest = Some(self.lowest.map_or(index, |l| l.min(index)));
        self.highest = Some(self.highest.map_or(index, |h| h.max(index)));
    }

    fn missing(&self) -> u64 {
        match (self.lowest, self.highest) {
            (Some(l), Some(h)) => h
                .saturating_sub(l)
                .saturating_add(1)
                .saturating_sub(self.distinct),
            _ => 0,
        }
    }
}

/// The adaptive jitter buffer. See the [module docs](self) for the algorithm.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    config: JitterConfig,
    packets: BTreeMap<u64, Vec<u8>>,
    /// Highest index accepted since the last reset.
    highest: Option<u64>,
    /// For [`push`](Self::push): the extended sequence number that `u16` numbers are
    /// unwrapped against.
    seq_highest: Option<u64>,
    /// When playout last started (`now` of the starting tick), for the start grace.
    started_at: Option<i64>,
    coverage: Coverage,
    /// Next frame to play; `None` while waiting to start.
    next: Option<u64>,
    /// While waiting after an idle period: frames below this were already played.
    floor: Option<u64>,
    /// Recently accepted sequence numbers, for duplicate detection.
    seen: BTreeSet<u64>,
    /// Transit offsets (arrival − 20 ms × seq) of recent packets, oldest first.
    transits: VecDeque<i64>,
    last_transit: Option<i64>,
    /// RFC 3550 jitter, in 1/16 ms.
    jitter_q4: i64,
    target_ms: u32,
    ticks_since_shrink: u32,
    /// Consecutive concealments with an empty buffer.
    empty_ticks: u32,
    /// Of those, how many gave a frame up (counted in `lost`) and how many waited (counted
    /// in `stretched`): undone if the run turns out to be the end of the stream.
    run_lost: u64,
    run_stretched: u64,
    /// The stream has ended: go idle as soon as the buffer runs dry.
    ending: bool,
    far_late_run: u32,
    stats: JitterStats,
}

impl JitterBuffer {
    /// Creates an empty buffer with the given settings.
    pub fn new(config: JitterConfig) -> Result<Self, JitterError> {
        config.validate()?;
        Ok(Self {
            config,
            packets: BTreeMap::new(),
            highest: None,
            seq_highest: None,
            started_at: None,
            coverage: Coverage::default(),
            next: None,
            floor: None,
            seen: BTreeSet::new(),
            transits: VecDeque::with_capacity(config.window_packets),
            last_transit: None,
            jitter_q4: 0,
            target_ms: config.min_delay_ms,
            ticks_since_shrink: 0,
            empty_ticks: 0,
            run_lost: 0,
            run_stretched: 0,
            ending: false,
            far_late_run: 0,
            stats: JitterStats {
                target_delay_ms: config.min_delay_ms,
                ..JitterStats::default()
            },
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &JitterConfig {
        &self.config
    }

    /// Counters and current state.
    pub fn stats(&self) -> JitterStats {
        let mut s = self.stats;
        s.target_delay_ms = self.target_ms;
        s.jitter_ms = u32::try_from((self.jitter_q4 + 8) / 16).unwrap_or(u32::MAX);
        s.buffered = u32::try_from(self.packets.len()).unwrap_or(u32::MAX);
        s.distinct_frames = self.coverage.distinct;
        s.lowest_index = self.coverage.lowest;
        s.highest_index = self.coverage.highest;
        s.missing = self.coverage.missing();
        s
    }

    /// The target delay now, in ms.
    pub fn target_delay_ms(&self) -> u32 {
        self.target_ms
    }

    /// How many packets are held.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Whether playout has started (and not gone idle).
    pub fn is_playing(&self) -> bool {
        self.next.is_some()
    }

    /// Takes in one packet with an RTP-style `u16` sequence number and its arrival time (ms,
    /// any epoch, the same clock as [`pop`](Self::pop)). Only for streams without an
    /// authenticated index: a call's audio goes through [`push_frame`](Self::push_frame).
    pub fn push(&mut self, seq: u16, arrival_ms: u64, packet: Vec<u8>) -> Pushed {
        let ext = match self.seq_highest {
            None => EXT_BASE + u64::from(seq),
            Some(h) => {
                // Truncation to u16 is the point: the difference is taken modulo 2^16.
                let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
                h.saturating_add_signed(delta)
            }
        };
        let outcome = self.push_frame(ext, arrival_ms, packet);
        match outcome {
            // Unwrapping restarts at this packet.
            Pushed::Resynced => self.seq_highest = Some(ext),
            Pushed::Accepted => {
                self.seq_highest = Some(self.seq_highest.map_or(ext, |h| h.max(ext)))
            }
            _ => {}
        }
        outcome
    }

    /// Takes in one packet with its frame index (its position in the sender's stream; in a
    /// call, the authenticated index from the e2ee layer) and its arrival time (ms, any epoch,
    /// the same clock as [`pop`](Self::pop)).
    pub fn push_frame(&mut self, index: u64, arrival_ms: u64, packet: Vec<u8>) -> Pushed {
        let ext = index;
        self.coverage.note(ext);
        if packet.is_empty() || packet.len() > self.config.max_packet_bytes {
            self.stats.invalid += 1;
            return Pushed::Invalid;
        }
        if self.packets.contains_key(&ext) || self.seen.contains(&ext) {
            self.stats.duplicates += 1;
            return Pushed::Duplicate;
        }
        let cap = self.config.capacity as u64;
        let mut outcome = Pushed::Accepted;
        // Packets behind `behind` are late; packets at or past `ahead` mean a jump. Before
        // playout starts, the limits keep everything held within `capacity` frames.
        let limits = match (
            self.next.or(self.floor),
            self.packets.keys().next(),
            self.packets.keys().next_back(),
        ) {
            (Some(r), _, _) => Some((r, r.saturating_add(cap))),
            (None, Some(&first), Some(&last)) => Some((
                last.saturating_add(1).saturating_sub(cap),
                first.saturating_add(cap),
            )),
            _ => None,
        };
        if let Some((behind, ahead)) = limits {
            if ext < behind {
                // Late, unless a run of packets far behind says the sender restarted.
                if ext.saturating_add(cap) < behind {
                    self.far_late_run += 1;
                } else {
                    self.far_late_run = 0;
                }
                if self.far_late_run < FAR_LATE_RESYNC {
                    self.stats.late += 1;
                    if self.far_late_run == 0 {
                        // A late packet is exactly what the target must learn from.
                        self.record_timing(ext, arrival_ms);
                    }
                    return Pushed::Late;
                }
                self.resync();
                outcome = Pushed::Resynced;
            } else if ext >= ahead {
                // Over a second ahead of playout (or of what is held): skip ahead.
                self.resync();
                outcome = Pushed::Resynced;
            }
        }
        self.far_late_run = 0;
        self.ending = false;
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.record_timing(ext, arrival_ms);
        self.packets.insert(ext, packet);
        self.remember(ext);
        self.stats.received += 1;
        // Keep the bound even in odd cases (packets arriving out of order before playout).
        while self.packets.len() > self.config.capacity {
            if self.packets.pop_last().is_some() {
                self.stats.dropped_full += 1;
            }
        }
        outcome
    }

    /// Asks what to play for the 20 ms tick at `now_ms`. Call exactly once per tick.
    pub fn pop(&mut self, now_ms: u64) -> Playout {
        let now = to_i64(now_ms);
        let next = match self.next {
            Some(n) => n,
            None => match self.try_start(now) {
                Some(n) => n,
                None => return Playout::Wait,
            },
        };
        self.ticks_since_shrink = self.ticks_since_shrink.saturating_add(1);
        let delay = self.delay_of(next, now);
        self.stats.current_delay_ms = u32::try_from(delay.max(0)).unwrap_or(u32::MAX);
        let target = i64::from(self.target_ms);

        if self.packets.contains_key(&next) {
            self.reset_run();
            let mut play = next;
            let after = next.saturating_add(1);
            let settled = self
                .started_at
                .is_none_or(|t| now.saturating_sub(t) >= i64::from(self.config.start_grace_ms));
            if delay > target + FRAME
                && settled
                && self.ticks_since_shrink >= self.config.shrink_interval_ticks
                && after != next
                && self.packets.contains_key(&after)
            {
                self.packets.remove(&next);
                self.stats.dropped_for_latency += 1;
                self.ticks_since_shrink = 0;
                play = after;
            }
            self.next = Some(play.saturating_add(1));
            return match self.packets.remove(&play) {
                Some(p) => {
                    self.stats.played += 1;
                    Playout::Packet(p)
                }
                None => Playout::Conceal,
            };
        }

        if delay < target {
            // The frame may still come: wait for it, which grows the delay by one frame.
            self.stats.concealed += 1;
            self.stats.stretched += 1;
            return self.note_empty(false);
        }
        // Give the frame up.
        self.stats.lost += 1;
        let after = next.saturating_add(1);
        self.next = Some(after);
        if let Some(p) = self.packets.get(&after).filter(|_| after != next).cloned() {
            self.reset_run();
            self.stats.fec_recovered += 1;
            return Playout::FecFrom(p);
        }
        self.stats.concealed += 1;
        self.note_empty(true)
    }

    /// Tells the buffer that the stream has ended (the peer said goodbye, or the call is
    /// ending). If nothing is buffered it goes idle now; otherwise as soon as what is buffered
    /// has played. Concealment since the last packet moves to
    /// [`concealed_at_end`](JitterStats::concealed_at_end). A packet pushed afterwards cancels
    /// this (the stream goes on after all).
    pub fn end_of_stream(&mut self) {
        if !self.packets.is_empty() {
            self.ending = true;
            return;
        }
        if self.next.is_some() {
            self.discount_run(0);
            self.go_idle();
        }
    }

    /// Drops everything held and starts again, keeping the counters and the stream
    /// accounting.
    pub fn reset(&mut self) {
        self.stats.dropped_on_reset += self.packets.len() as u64;
        self.packets.clear();
        self.highest = None;
        self.seq_highest = None;
        self.started_at = None;
        self.next = None;
        self.floor = None;
        self.seen.clear();
        self.clear_timing();
    }

    fn resync(&mut self) {
        self.stats.resyncs += 1;
        self.reset();
    }

    fn clear_timing(&mut self) {
        self.transits.clear();
        self.last_transit = None;
        self.target_ms = self.config.min_delay_ms;
        self.ticks_since_shrink = 0;
        self.reset_run();
        self.far_late_run = 0;
        self.ending = false;
    }

    fn reset_run(&mut self) {
        self.empty_ticks = 0;
        self.run_lost = 0;
        self.run_stretched = 0;
    }

    /// A concealment tick just counted (`gave_up`: in `lost`, else in `stretched`): notes a
    /// run with nothing buffered, and goes idle when the run is long enough or the stream
    /// has ended.
    fn note_empty(&mut self, gave_up: bool) -> Playout {
        if !self.packets.is_empty() {
            self.reset_run();
            return Playout::Conceal;
        }
        self.empty_ticks = self.empty_ticks.saturating_add(1);
        if gave_up {
            self.run_lost += 1;
        } else {
            self.run_stretched += 1;
        }
        let idle = u64::from(self.empty_ticks) * u64::from(FRAME_MS)
            > u64::from(self.config.idle_after_ms);
        if idle || self.ending {
            // The peer stopped sending: go idle and start afresh when it comes back, with new
            // timing (its sequence numbers may resume after a pause in time). This tick
            // answers Wait, so it is not concealment at all.
            self.discount_run(1);
            self.go_idle();
            return Playout::Wait;
        }
        Playout::Conceal
    }

    /// The current run of concealment with nothing buffered was the end of the stream, not
    /// loss: moves it out of `concealed`, `lost` and `stretched`. The last `not_played` ticks
    /// of the run did not answer Conceal after all.
    fn discount_run(&mut self, not_played: u32) {
        let run = u64::from(self.empty_ticks);
        self.stats.concealed = self.stats.concealed.saturating_sub(run);
        self.stats.lost = self.stats.lost.saturating_sub(self.run_lost);
        self.stats.stretched = self.stats.stretched.saturating_sub(self.run_stretched);
        self.stats.concealed_at_end += run.saturating_sub(u64::from(not_played));
        self.reset_run();
    }

    /// Stops playout until packets come again. Frames after the last one received were never
    /// sent, as far as we know.
    fn go_idle(&mut self) {
        self.floor = self.highest.map(|h| h.saturating_add(1)).or(self.next);
        self.next = None;
        self.clear_timing();
    }

    fn try_start(&mut self, now: i64) -> Option<u64> {
        let (&first, _) = self.packets.first_key_value()?;
        if self.delay_of(first, now) < i64::from(self.target_ms) {
            return None;
        }
        self.next = Some(first);
        self.floor = None;
        self.started_at = Some(now);
        self.ticks_since_shrink = 0;
        self.reset_run();
        Some(first)
    }

    /// How long after its earliest plausible arrival frame `ext` is played at `now`.
    fn delay_of(&self, ext: u64, now: i64) -> i64 {
        let base = self.transits.iter().copied().min().unwrap_or(0);
        now.saturating_sub(base.saturating_add(frame_time(ext)))
    }

    fn remember(&mut self, ext: u64) {
        self.seen.insert(ext);
        let limit = self.config.capacity.saturating_mul(4);
        while self.seen.len() > limit {
            self.seen.pop_first();
        }
    }

    fn record_timing(&mut self, ext: u64, arrival_ms: u64) {
        let transit = to_i64(arrival_ms).saturating_sub(frame_time(ext));
        if let Some(last) = self.last_transit {
            // RFC 3550 section 6.4.1, in 1/16 ms fixed point.
            let d = transit.saturating_sub(last).saturating_abs().min(1 << 40);
            self.jitter_q4 += d - ((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
        if self.transits.len() >= self.config.window_packets {
            self.transits.pop_front();
        }
        self.transits.push_back(transit);
        self.update_target();
    }

    fn update_target(&mut self) {
        let Some(&base) = self.transits.iter().min() else {
            return;
        };
        let mut rel: Vec<i64> = self
            .transits
            .iter()
            .map(|t| t.saturating_sub(base))
            .collect();
        rel.sort_unstable();
        let q = usize::from(self.config.quantile_percent);
        let idx = (rel.len() * q)
            .div_ceil(100)
            .saturating_sub(1)
            .min(rel.len() - 1);
        let want = rel.get(idx).copied().unwrap_or(0);
        let lo = i64::from(self.config.min_delay_ms);
        let hi = i64::from(self.config.max_delay_ms);
        self.target_ms = u32::try_from(want.clamp(lo, hi)).unwrap_or(self.config.max_delay_ms);
    }
}

fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn frame_time(ext: u64) -> i64 {
    to_i64(ext).saturating_mul(FRAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    fn jb() -> JitterBuffer {
        JitterBuffer::new(JitterConfig::default()).unwrap()
    }

    fn payload(seq: u16) -> Vec<u8> {
        seq.to_be_bytes().to_vec()
    }

    fn seq_of(p: &[u8]) -> u16 {
        u16::from_be_bytes([p[0], p[1]])
    }

    /// What one tick produced, in a compact form for assertions.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Out {
        P(u16),
        Fec(u16),
        C,
        W,
    }

    fn compact(p: Playout) -> Out {
        match p {
            Playout::Packet(b) => Out::P(seq_of(&b)),
            Playout::FecFrom(b) => Out::Fec(seq_of(&b)),
            Playout::Conceal => Out::C,
            Playout::Wait => Out::W,
        }
    }

    /// Runs a call: `arrivals` are (seq, arrival_ms); the playout side ticks every 20 ms from
    /// 0 and, before each tick, every packet that has arrived by then is pushed. It stops when
    /// every packet has been pushed and the buffer is empty (the call ended), or at `end_ms`.
    fn run(buf: &mut JitterBuffer, arrivals: &[(u16, u64)], end_ms: u64) -> Vec<Out> {
        let mut sorted: Vec<(u16, u64)> = arrivals.to_vec();
        sorted.sort_by_key(|&(_, t)| t);
        let mut it = sorted.into_iter().peekable();
        let mut out = Vec::new();
        let mut now = 0;
        while now <= end_ms {
            while let Some(&(seq, t)) = it.peek() {
                if t > now {
                    break;
                }
                buf.push(seq, t, payload(seq));
                it.next();
            }
            out.push(compact(buf.pop(now)));
            if it.peek().is_none() && buf.is_empty() {
                break;
            }
            now += 20;
        }
        out
    }

    fn steady(first: u16, count: u16, delay_ms: u64) -> Vec<(u16, u64)> {
        (0..count)
            .map(|i| (first.wrapping_add(i), u64::from(i) * 20 + delay_ms))
            .collect()
    }

    fn played(out: &[Out]) -> Vec<u16> {
        out.iter()
            .filter_map(|o| match o {
                Out::P(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn audio(out: &[Out]) -> Vec<Out> {
        out.iter().copied().filter(|o| *o != Out::W).collect()
    }

    #[test]
    fn in_order_stream_plays_every_packet_once_in_order() {
        let mut b = jb();
        let out = run(&mut b, &steady(0, 100, 5), 100 * 20 + 200);
        let a = audio(&out);
        let expected: Vec<Out> = (0..100).map(Out::P).collect();
        assert_eq!(&a[..100], &expected[..]);
        assert!(
            out.iter().take_while(|o| **o == Out::W).count() >= 1,
            "buffers before playing"
        );
        let s = b.stats();
        assert_eq!(
            (s.received, s.played, s.late, s.duplicates, s.lost),
            (100, 100, 0, 0, 0)
        );
        assert_eq!(s.target_delay_ms, 20);
        assert!(
            s.current_delay_ms >= 20 && s.current_delay_ms <= 40,
            "{s:?}"
        );
    }

    #[test]
    fn reordered_packets_are_played_in_order() {
        let mut b = jb();
        let mut arr = steady(0, 60, 5);
        // 10 arrives 5 ms after 11; 30 arrives 2 ms after 31.
        arr[10].1 = arr[11].1 + 5;
        arr[30].1 = arr[31].1 + 2;
        let out = run(&mut b, &arr, 60 * 20 + 300);
        assert_eq!(played(&out), (0..60).collect::<Vec<u16>>());
        let s = b.stats();
        assert_eq!((s.late, s.lost, s.fec_recovered), (0, 0, 0), "{s:?}");
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let mut b = jb();
        let mut arr = steady(0, 40, 5);
        arr.push((5, 5 * 20 + 8)); // while still buffered or just played
        arr.push((5, 30 * 20)); // long after it was played
        arr.push((39, 39 * 20 + 6));
        let out = run(&mut b, &arr, 40 * 20 + 200);
        assert_eq!(played(&out), (0..40).collect::<Vec<u16>>());
        assert_eq!(b.stats().duplicates, 3);
        assert_eq!(b.stats().late, 0);
    }

    #[test]
    fn late_packet_is_dropped_and_counted_and_fec_used() {
        let mut b = jb();
        let mut arr = steady(0, 40, 5);
        arr[10].1 += 300;
        let out = run(&mut b, &arr, 40 * 20 + 400);
        let a = audio(&out);
        let i = a.iter().position(|o| *o == Out::P(9)).unwrap();
        assert_eq!(&a[i..i + 3], &[Out::P(9), Out::Fec(11), Out::P(11)]);
        let s = b.stats();
        assert_eq!((s.late, s.fec_recovered, s.lost, s.played), (1, 1, 1, 39));
    }

    #[test]
    fn single_and_double_losses() {
        let mut b = jb();
        let arr: Vec<(u16, u64)> = steady(0, 50, 5)
            .into_iter()
            .filter(|(s, _)| ![10, 20, 21].contains(s))
            .collect();
        let out = run(&mut b, &arr, 50 * 20 + 200);
        let a = audio(&out);
        let i = a.iter().position(|o| *o == Out::P(9)).unwrap();
        assert_eq!(&a[i..i + 3], &[Out::P(9), Out::Fec(11), Out::P(11)]);
        let j = a.iter().position(|o| *o == Out::P(19)).unwrap();
        assert_eq!(
            &a[j..j + 4],
            &[Out::P(19), Out::C, Out::Fec(22), Out::P(22)]
        );
        let s = b.stats();
        assert_eq!(
            (s.lost, s.fec_recovered, s.concealed, s.played),
            (3, 2, 1, 47)
        );
    }

    #[test]
    fn burst_loss_is_concealed_then_playout_resumes_in_time() {
        let mut b = jb();
        let arr: Vec<(u16, u64)> = steady(0, 80, 5)
            .into_iter()
            .filter(|(s, _)| !(10..20).contains(s))
            .collect();
        let out = run(&mut b, &arr, 80 * 20 + 200);
        let a = audio(&out);
        let i = a.iter().position(|o| *o == Out::P(9)).unwrap();
        let mut expect = vec![Out::P(9)];
        expect.extend(std::iter::repeat_n(Out::C, 9));
        expect.extend([Out::Fec(20), Out::P(20), Out::P(21)]);
        assert_eq!(&a[i..i + expect.len()], &expect[..]);
        let s = b.stats();
        assert_eq!((s.lost, s.late, s.played), (10, 0, 70));
        // The delay did not grow during the burst.
        assert!(s.current_delay_ms <= 40, "{s:?}");
    }

    #[test]
    fn silence_longer_than_idle_goes_back_to_waiting() {
        let mut b = jb();
        let mut arr = steady(0, 20, 5);
        // The sender pauses 3 s, then goes on with the next sequence numbers.
        arr.extend((20..40).map(|s| (s, u64::from(s) * 20 + 5 + 3000)));
        let out = run(&mut b, &arr, 40 * 20 + 3400);
        assert_eq!(played(&out), (0..40).collect::<Vec<u16>>());
        let a_end = out.iter().position(|o| *o == Out::P(19)).unwrap();
        let resume = out.iter().position(|o| *o == Out::P(20)).unwrap();
        let gap = &out[a_end + 1..resume];
        assert_eq!(
            gap.iter().filter(|o| **o == Out::C).count(),
            50,
            "1 s of concealment"
        );
        assert!(gap.iter().filter(|o| **o == Out::W).count() > 50);
        let s = b.stats();
        assert_eq!((s.late, s.resyncs), (0, 0));
        assert_eq!(
            (s.concealed, s.lost, s.stretched, s.concealed_at_end),
            (0, 0, 0, 50),
            "the pause is not loss: {s:?}"
        );
        assert!(
            s.current_delay_ms <= 40,
            "fresh timing after the pause: {s:?}"
        );
    }

    /// Pops one tick per 20 ms from `from` to `to` (exclusive) with nothing arriving.
    fn idle_ticks(b: &mut JitterBuffer, from: u64, to: u64) -> Vec<Out> {
        (from / 20..to / 20)
            .map(|t| compact(b.pop(t * 20)))
            .collect()
    }

    #[test]
    fn end_of_stream_stops_concealing_and_does_not_count_the_tail_as_loss() {
        // The stream stops after packet 39 (the last three of them lost); 5 ticks later the
        // caller learns that the peer said goodbye.
        let mut b = jb();
        let arr: Vec<(u16, u64)> = steady(0, 40, 5)
            .into_iter()
            .filter(|(s, _)| *s < 37)
            .collect();
        let out = run(&mut b, &arr, 37 * 20 + 200);
        assert_eq!(played(&out), (0..37).collect::<Vec<u16>>());
        let start = (out.len() as u64) * 20;
        let tail = idle_ticks(&mut b, start, start + 5 * 20);
        assert_eq!(tail, vec![Out::C; 5]);
        assert_eq!(b.stats().concealed, 5, "while it lasts, it looks like loss");
        b.end_of_stream();
        assert!(!b.is_playing());
        let after = idle_ticks(&mut b, start + 100, start + 400);
        assert!(after.iter().all(|o| *o == Out::W), "{after:?}");
        let s = b.stats();
        assert_eq!(
            (s.concealed, s.lost, s.stretched, s.concealed_at_end),
            (0, 0, 0, 5),
            "{s:?}"
        );

        // Told before the buffer runs dry: plays what it holds, then waits at once.
        let mut b = jb();
        for (seq, t) in steady(0, 10, 5) {
            b.push(seq, t, payload(seq));
        }
        b.end_of_stream();
        let out = idle_ticks(&mut b, 200, 200 + 20 * 20);
        assert_eq!(played(&out), (0..10).collect::<Vec<u16>>());
        assert!(!out.contains(&Out::C), "{out:?}");
        assert_eq!(b.stats().concealed + b.stats().concealed_at_end, 0);

        // A real loss in mid-stream is still loss, and a packet after end_of_stream
        // resumes playout.
        let mut b = jb();
        let arr: Vec<(u16, u64)> = steady(0, 30, 5)
            .into_iter()
            .filter(|(s, _)| ![12, 13].contains(s))
            .collect();
        run(&mut b, &arr, 30 * 20 + 100);
        b.end_of_stream();
        let s = b.stats();
        assert_eq!(
            (s.lost, s.concealed, s.concealed_at_end),
            (2, 1, 0),
            "{s:?}"
        );
        b.push(30, 30 * 20 + 5, payload(30));
        let out = idle_ticks(&mut b, 30 * 20 + 20, 30 * 20 + 200);
        assert!(out.contains(&Out::P(30)), "{out:?}");
    }

    #[test]
    fn big_jump_ahead_resyncs() {
        let mut b = jb();
        let mut arr = steady(0, 20, 5);
        arr.extend((0..20).map(|i| (5000 + i, (20 + u64::from(i)) * 20 + 5)));
        let out = run(&mut b, &arr, 40 * 20 + 200);
        let p = played(&out);
        assert_eq!(&p[p.len() - 20..], &(5000..5020).collect::<Vec<u16>>()[..]);
        assert_eq!(b.stats().resyncs, 1);
    }

    #[test]
    fn sender_restart_far_behind_resyncs_after_a_few_packets() {
        let mut b = jb();
        let mut arr = steady(30_000, 20, 5);
        arr.extend((0..30).map(|i| (100 + i, (20 + u64::from(i)) * 20 + 5)));
        let out = run(&mut b, &arr, 50 * 20 + 200);
        let s = b.stats();
        assert_eq!(s.resyncs, 1);
        assert_eq!(s.late, u64::from(FAR_LATE_RESYNC - 1));
        assert!(played(&out).contains(&129));
    }

    #[test]
    fn held_packets_stay_within_capacity_before_playout_starts() {
        let mut b = jb();
        assert_eq!(b.push(100, 0, payload(100)), Pushed::Accepted);
        assert_eq!(
            b.push(99, 1, payload(99)),
            Pushed::Accepted,
            "reordered before start"
        );
        assert_eq!(
            b.push(40, 2, payload(40)),
            Pushed::Late,
            "would stretch the span past 50"
        );
        assert_eq!(b.push(5000, 3, payload(5000)), Pushed::Resynced);
        assert_eq!(b.len(), 1);
        assert_eq!(b.stats().resyncs, 1);
        // Playout starts at 5000 without concealing the gap.
        let out: Vec<Out> = (0..4).map(|i| compact(b.pop(3 + i * 20))).collect();
        assert_eq!(out, [Out::W, Out::P(5000), Out::C, Out::C]);
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let mut b = jb();
        let mut arr = steady(65_500, 100, 5);
        arr.swap(35, 36); // reorder right at the wrap (65535, 0)
        let out = run(&mut b, &arr, 100 * 20 + 200);
        let expected: Vec<u16> = (0..100u16).map(|i| 65_500u16.wrapping_add(i)).collect();
        assert_eq!(played(&out), expected);
        assert_eq!(b.stats().late, 0);
    }

    /// Arrivals with uniform random extra delay in 0..`spread_ms`, seeded.
    fn jittery(first: u16, count: u16, spread_ms: u64, seed: u64) -> Vec<(u16, u64)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..count)
            .map(|i| {
                let extra = if spread_ms == 0 {
                    0
                } else {
                    rng.random_range(0..spread_ms)
                };
                let seq = first.wrapping_add(i);
                (seq, u64::from(seq) * 20 + 5 + extra)
            })
            .collect()
    }

    #[test]
    fn target_adapts_up_under_jitter_and_back_down_after() {
        let mut b = jb();
        // 4 s calm, 10 s with 0..60 ms of jitter, 10 s calm again.
        let mut arr = jittery(0, 200, 0, 1);
        arr.extend(jittery(200, 500, 60, 2));
        arr.extend(jittery(700, 500, 0, 3));
        let mut sorted = arr.clone();
        sorted.sort_by_key(|&(_, t)| t);
        let mut it = sorted.into_iter().peekable();
        let (mut calm_target, mut peak_target, mut peak_delay, mut late_at_8s) = (0, 0, 0, 0);
        let mut now = 0u64;
        while now <= 1200 * 20 + 200 {
            while let Some(&(seq, t)) = it.peek() {
                if t > now {
                    break;
                }
                b.push(seq, t, payload(seq));
                it.next();
            }
            b.pop(now);
            if now == 4000 {
                calm_target = b.target_delay_ms();
            }
            if now == 8000 {
                late_at_8s = b.stats().late;
            }
            if (8000..14_000).contains(&now) {
                peak_target = peak_target.max(b.target_delay_ms());
                peak_delay = peak_delay.max(b.stats().current_delay_ms);
            }
            now += 20;
        }
        let s = b.stats();
        println!(
            "target: calm {calm_target} ms, under jitter up to {peak_target} ms (delay up to \
             {peak_delay} ms), late by 8 s {late_at_8s}, after {s:?}"
        );
        assert_eq!(calm_target, 20);
        assert!(
            peak_delay >= 50,
            "the playout delay followed the target: {peak_delay}"
        );
        assert!(
            (50..=60).contains(&peak_target),
            "target under 0..60 ms jitter: {peak_target}"
        );
        // Once adapted, few packets are late (the 95 % quantile allows about 5 %).
        let late_after = s.late - late_at_8s;
        assert!(
            late_after <= 300 / 20,
            "late in the adapted 6 s: {late_after}"
        );
        assert_eq!(s.target_delay_ms, 20, "target back at the floor");
        assert!(s.current_delay_ms <= 20 + 40, "delay came back down: {s:?}");
        assert!(s.dropped_for_latency > 0);
    }

    #[test]
    fn target_is_capped_at_the_ceiling() {
        let mut b = jb();
        let arr = jittery(0, 500, 400, 9);
        run(&mut b, &arr, 500 * 20 + 500);
        assert_eq!(b.target_delay_ms(), 100);
    }

    #[test]
    fn memory_is_bounded_under_a_flood() {
        let mut b = jb();
        let cap = b.config().capacity;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..20_000u64 {
            b.push(rng.random(), i / 10, vec![0xAB; 100]);
            assert!(b.len() <= cap);
        }
        // Sequential flood without playout.
        let mut b = jb();
        for i in 0..20_000u64 {
            b.push(i as u16, i, vec![1]);
            assert!(b.len() <= cap);
        }
        assert!(b.seen.len() <= cap * 4 && b.transits.len() <= b.config().window_packets);
        let s = b.stats();
        assert_eq!(
            s.received,
            s.played
                + s.dropped_for_latency
                + s.dropped_full
                + s.dropped_on_reset
                + u64::from(s.buffered)
        );
    }

    #[test]
    fn invalid_packets_and_configs_are_refused() {
        let mut b = jb();
        assert_eq!(b.push(1, 0, vec![]), Pushed::Invalid);
        assert_eq!(b.push(1, 0, vec![0; 1501]), Pushed::Invalid);
        assert_eq!(b.stats().invalid, 2);
        assert!(b.is_empty());
        for bad in [
            JitterConfig {
                min_delay_ms: 200,
                ..JitterConfig::default()
            },
            JitterConfig {
                capacity: 1,
                ..JitterConfig::default()
            },
            JitterConfig {
                capacity: 5,
                ..JitterConfig::default()
            },
            JitterConfig {
                window_packets: 0,
                ..JitterConfig::default()
            },
            JitterConfig {
                quantile_percent: 101,
                ..JitterConfig::default()
            },
            JitterConfig {
                shrink_interval_ticks: 0,
                ..JitterConfig::default()
            },
            JitterConfig {
                idle_after_ms: 0,
                ..JitterConfig::default()
            },
            JitterConfig {
                max_packet_bytes: 0,
                ..JitterConfig::default()
            },
        ] {
            assert!(JitterBuffer::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let mut b = jb();
        b.push(0, u64::MAX, vec![1]);
        b.push(1, 0, vec![1]);
        b.pop(u64::MAX);
        b.pop(0);
        b.push(2, u64::MAX / 2, vec![1]);
        for t in [0, u64::MAX, 1, u64::MAX - 1] {
            b.pop(t);
        }
    }

    // ---- Frames ordered by their authenticated index ----

    use aparte_e2ee::frame::{
        FrameReceiver, FrameSender, ReceiverConfig, SenderConfig, EPOCH_FRAMES,
    };
    use aparte_e2ee::handshake::{CallParams, Handshake};

    /// One direction of an honest call's audio protection: (alice's sender, bob's receiver).
    fn e2ee(sender: SenderConfig, receiver: ReceiverConfig) -> (FrameSender, FrameReceiver) {
        let mut rng = rand_core::OsRng;
        let fa = b"sha-256 AA".to_vec();
        let fb = b"sha-256 BB".to_vec();
        let pa = CallParams::new(b"room".to_vec(), fa.clone(), fb.clone()).unwrap();
        let pb = CallParams::new(b"room".to_vec(), fb, fa).unwrap();
        let (mut a, commit) = Handshake::initiator(pa, None, &mut rng).unwrap();
        let mut b = Handshake::responder(pb, None, &mut rng).unwrap();
        let response = b.receive(&commit).unwrap().unwrap();
        let reveal = a.receive(&response).unwrap().unwrap();
        let confirm = b.receive(&reveal).unwrap().unwrap();
        assert!(a.receive(&confirm).unwrap().is_none());
        let a = a.finish().unwrap().into_channels(sender, receiver);
        let b = b.finish().unwrap().into_channels(sender, receiver);
        (a.media_sender, b.media_receiver)
    }

    /// A packet as the network delivers it: the RTP sequence number (which a relay inside
    /// SRTP may have rewritten), the arrival time and the protected frame.
    #[derive(Clone)]
    struct Rtp {
        seq: u16,
        at: u64,
        frame: Vec<u8>,
    }

    /// `n` frames whose plaintext is their send number (u64), sent every 20 ms with RTP
    /// sequence numbers from 65,400 (so they wrap), arriving 5 + 0..`jitter` ms later.
    fn protected_stream(sender: &mut FrameSender, n: u64, jitter: u64, seed: u64) -> Vec<Rtp> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| Rtp {
                seq: 65_400u16.wrapping_add(i as u16),
                at: i * 20 + 5 + rng.random_range(0..jitter.max(1)),
                frame: sender.protect(&i.to_be_bytes()).unwrap(),
            })
            .collect()
    }

    /// What one tick produced, by the plaintext's send number.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Said {
        P(u64),
        Fec(u64),
        C,
        W,
    }

    fn said(p: Playout) -> Said {
        let n = |b: Vec<u8>| u64::from_be_bytes(b.try_into().unwrap());
        match p {
            Playout::Packet(b) => Said::P(n(b)),
            Playout::FecFrom(b) => Said::Fec(n(b)),
            Playout::Conceal => Said::C,
            Playout::Wait => Said::W,
        }
    }

    fn said_played(out: &[Said]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Said::P(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// The receiving side of a call: each packet, in arrival order, is decrypted and pushed
    /// by its authenticated index (`by_index`) or, as before, by its RTP sequence number;
    /// the playout ticks every 20 ms.
    fn receive(
        receiver: &mut FrameReceiver,
        buf: &mut JitterBuffer,
        packets: &[Rtp],
        by_index: bool,
        epoch_frames: u64,
    ) -> Vec<Said> {
        let mut sorted = packets.to_vec();
        sorted.sort_by_key(|p| p.at);
        let end = sorted.last().map_or(0, |p| p.at) + 400;
        let mut it = sorted.into_iter().peekable();
        let mut out = Vec::new();
        let mut now = 0;
        while now <= end {
            while let Some(p) = it.next_if(|p| p.at <= now) {
                let (plain, position) = receiver.unprotect_with_position(&p.frame, p.at).unwrap();
                if by_index {
                    buf.push_frame(position.index(epoch_frames).unwrap(), p.at, plain);
                } else {
                    buf.push(p.seq, p.at, plain);
                }
                if it.peek().is_none() {
                    // The peer said goodbye: the silence after it is not loss.
                    buf.end_of_stream();
                }
            }
            out.push(said(buf.pop(now)));
            now += 20;
        }
        out
    }

    /// How a relay inside SRTP rewrites sequence numbers (the frames stay untouched).
    #[derive(Debug, Clone, Copy)]
    enum Rewrite {
        /// Neighbours swap numbers.
        Swap,
        /// Every fifth packet repeats its predecessor's number.
        Repeat,
        /// A stretch of packets is moved 1,000 numbers ahead.
        Shift,
        /// Random numbers.
        Random,
    }

    fn rewrite(packets: &mut [Rtp], how: Rewrite, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        match how {
            Rewrite::Swap => {
                for pair in packets.chunks_mut(2) {
                    if let [a, b] = pair {
                        std::mem::swap(&mut a.seq, &mut b.seq);
                    }
                }
            }
            Rewrite::Repeat => {
                for i in (5..packets.len()).step_by(5) {
                    packets[i].seq = packets[i - 1].seq;
                }
            }
            Rewrite::Shift => {
                for p in &mut packets[100..160] {
                    p.seq = p.seq.wrapping_add(1000);
                }
            }
            Rewrite::Random => {
                for p in packets.iter_mut() {
                    p.seq = rng.random();
                }
            }
        }
    }

    #[test]
    fn rewritten_rtp_sequence_numbers_change_nothing_when_ordering_by_the_e2ee_index() {
        let n = 300;
        for (k, how) in [
            Rewrite::Swap,
            Rewrite::Repeat,
            Rewrite::Shift,
            Rewrite::Random,
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 40 + k as u64;
            // The same arrivals and rewrites, under fresh keys for each receiver.
            let stream = |sender: &mut FrameSender| {
                let mut packets = protected_stream(sender, n, 8, seed);
                // A little genuine reordering too: two pairs arrive swapped.
                for i in [30, 200] {
                    let (a, b) = (packets[i].at, packets[i + 1].at);
                    packets[i].at = b;
                    packets[i + 1].at = a;
                }
                rewrite(&mut packets, how, seed);
                packets
            };
            let (mut s2, mut by_index_rx) =
                e2ee(SenderConfig::default(), ReceiverConfig::default());
            let packets_2 = stream(&mut s2);

            // A roomy delay floor and no drops for latency within the test's 6 s: this test
            // is about order, not about timing.
            let roomy = JitterConfig {
                min_delay_ms: 60,
                start_grace_ms: 60_000,
                ..JitterConfig::default()
            };
            let mut b = JitterBuffer::new(roomy).unwrap();
            let out = receive(&mut by_index_rx, &mut b, &packets_2, true, EPOCH_FRAMES);

            assert_eq!(
                said_played(&out),
                (0..n).collect::<Vec<_>>(),
                "{how:?}: every authentic frame, in the order it was said: {:?}",
                b.stats()
            );
            let s = b.stats();
            assert_eq!(
                (s.duplicates, s.late, s.lost, s.resyncs, s.missing),
                (0, 0, 0, 0, 0),
                "{how:?}: {s:?}"
            );
            assert_eq!(s.distinct_frames, n);

            // Control: the same packets ordered by RTP sequence number go wrong, so this
            // test would catch a buffer that still listened to RTP.
            let (mut s3, mut by_rtp_rx) = e2ee(SenderConfig::default(), ReceiverConfig::default());
            let packets_3 = stream(&mut s3);
            let mut control = JitterBuffer::new(roomy).unwrap();
            let out = receive(
                &mut by_rtp_rx,
                &mut control,
                &packets_3,
                false,
                EPOCH_FRAMES,
            );
            let c = control.stats();
            assert!(
                said_played(&out) != (0..n).collect::<Vec<_>>()
                    || c.duplicates + c.late + c.dropped_on_reset > 0,
                "{how:?}: the rewrite should fool an RTP-ordered buffer: {c:?}"
            );
        }
    }

    #[test]
    fn frames_across_rekeys_play_in_order_with_steady_timing() {
        let (mut sender, mut receiver) = e2ee(SenderConfig::default(), ReceiverConfig::default());
        // Skip to 40 frames before the end of epoch 0, then stream 80 frames across the
        // switch to epoch 1 (counter back to 0).
        for _ in 0..EPOCH_FRAMES - 40 {
            sender.protect(b"earlier").unwrap();
        }
        let first = EPOCH_FRAMES - 40;
        let mut packets: Vec<Rtp> = (0..80u64)
            .map(|i| Rtp {
                seq: i as u16,
                at: (first + i) * 20 + 5,
                frame: sender.protect(&(first + i).to_be_bytes()).unwrap(),
            })
            .collect();
        assert_eq!(sender.epoch(), 1);
        // The last frame of epoch 0 arrives after the first of epoch 1, and the third of
        // epoch 1 is lost.
        packets[39].at = packets[40].at + 3;
        packets.remove(42);
        let base = first * 20;
        for p in &mut packets {
            p.at -= base;
        }
        let mut b = jb();
        let out = receive(&mut receiver, &mut b, &packets, true, EPOCH_FRAMES);
        let expect: Vec<u64> = (first..first + 80)
            .filter(|i| *i != EPOCH_FRAMES + 2)
            .collect();
        assert_eq!(said_played(&out), expect, "{:?}", b.stats());
        let i = out
            .iter()
            .position(|o| *o == Said::P(EPOCH_FRAMES + 1))
            .unwrap();
        assert_eq!(
            &out[i..i + 3],
            &[
                Said::P(EPOCH_FRAMES + 1),
                Said::Fec(EPOCH_FRAMES + 3),
                Said::P(EPOCH_FRAMES + 3)
            ],
            "the lost frame is one frame, rebuilt from the next one's FEC"
        );
        let s = b.stats();
        assert_eq!(
            (
                s.lost,
                s.late,
                s.resyncs,
                s.concealed,
                s.dropped_for_latency
            ),
            (1, 0, 0, 0, 0),
            "{s:?}"
        );
        assert_eq!((s.missing, s.distinct_frames), (1, 79));
        assert!(
            s.current_delay_ms <= 40,
            "timing unchanged by the rekey: {s:?}"
        );

        // Control: the counter alone (which restarts at 0) as the order breaks playout.
        let (mut sender, mut receiver) = e2ee(SenderConfig::default(), ReceiverConfig::default());
        for _ in 0..first {
            sender.protect(b"earlier").unwrap();
        }
        let packets: Vec<Rtp> = (0..80u64)
            .map(|i| {
                let frame = sender.protect(&(first + i).to_be_bytes()).unwrap();
                let counter = aparte_e2ee::frame::FrameHeader::parse(&frame)
                    .unwrap()
                    .0
                    .counter;
                Rtp {
                    seq: counter as u16,
                    at: i * 20 + 5,
                    frame,
                }
            })
            .collect();
        let mut control = jb();
        let out = receive(&mut receiver, &mut control, &packets, false, EPOCH_FRAMES);
        let c = control.stats();
        assert!(
            said_played(&out) != (first..first + 80).collect::<Vec<_>>() || c.late > 0,
            "{c:?}"
        );
    }

    /// Frame `k` sent at 20·k ms arrives at 20·k + 5, except frame 0, which arrives 40 ms
    /// late, together with frame 2: the start-up burst seen in `aparte demo`.
    fn startup_burst() -> Vec<(u64, u64)> {
        let mut arr: Vec<(u64, u64)> = (0..150).map(|k| (k, k * 20 + 5)).collect();
        arr[0].1 = arr[2].1;
        arr
    }

    /// Runs `arrivals` (index, time) through `buf`; returns the ticks' outputs and the times
    /// of the ticks that dropped a frame for latency, and when playout started.
    fn run_indexed(buf: &mut JitterBuffer, arrivals: &[(u64, u64)]) -> (Vec<Said>, Vec<u64>, u64) {
        let mut sorted = arrivals.to_vec();
        sorted.sort_by_key(|a| a.1);
        let end = sorted.last().map_or(0, |a| a.1) + 400;
        let mut it = sorted.into_iter().peekable();
        let (mut out, mut drops, mut start) = (Vec::new(), Vec::new(), None);
        let mut now = 0;
        while now <= end {
            while let Some((k, at)) = it.next_if(|a| a.1 <= now) {
                buf.push_frame(k, at, k.to_be_bytes().to_vec());
                if it.peek().is_none() {
                    buf.end_of_stream();
                }
            }
            let before = buf.stats().dropped_for_latency;
            let o = said(buf.pop(now));
            if start.is_none() && o != Said::W {
                start = Some(now);
            }
            if buf.stats().dropped_for_latency > before {
                drops.push(now);
            }
            out.push(o);
            now += 20;
        }
        (out, drops, start.unwrap_or(0))
    }

    #[test]
    fn a_startup_burst_drops_nothing_in_the_first_second() {
        let mut b = jb();
        let (out, drops, start) = run_indexed(&mut b, &startup_burst());
        let played = said_played(&out);
        assert_eq!(
            &played[..50],
            &(0..50).collect::<Vec<_>>()[..],
            "the opening plays whole"
        );
        assert!(
            drops.iter().all(|&t| t >= start + 1000),
            "no drop for latency in the first second: start {start}, drops at {drops:?}"
        );
        // Afterwards the buffer still brings its delay down, as before.
        assert_eq!(b.stats().dropped_for_latency, 1, "{:?}", b.stats());

        // Control: without the grace period the same arrivals lose a frame within the first
        // second (what the demo measured).
        let mut b = JitterBuffer::new(JitterConfig {
            start_grace_ms: 0,
            ..JitterConfig::default()
        })
        .unwrap();
        let (_, drops, start) = run_indexed(&mut b, &startup_burst());
        assert!(
            drops.iter().any(|&t| t < start + 1000),
            "start {start}, drops at {drops:?}"
        );
    }

    #[test]
    fn the_start_grace_applies_again_after_an_idle_restart() {
        let mut arr = startup_burst();
        // The peer pauses 3 s after frame 99, and resumes with the same burst at start.
        for a in &mut arr[100..] {
            a.1 += 3000;
        }
        arr[100].1 = arr[102].1;
        let mut b = jb();
        let (out, drops, _) = run_indexed(&mut b, &arr);
        let resumed = out.iter().position(|o| *o == Said::P(100)).unwrap() as u64 * 20;
        assert!(
            drops
                .iter()
                .all(|&t| !(resumed..resumed + 1000).contains(&t)),
            "resumed at {resumed}, drops at {drops:?}"
        );
        let played = said_played(&out);
        let at = played.iter().position(|&k| k == 100).unwrap();
        assert_eq!(played[at..at + 20], (100..120).collect::<Vec<_>>()[..]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push { seq: u16, dt: u16, len: u16 },
        PushFrame { index: u64, dt: u16, len: u16 },
        Pop { dt: u16 },
        Reset,
        End,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (any::<u16>(), 0u16..200, 0u16..1600).prop_map(|(seq, dt, len)| Op::Push { seq, dt, len }),
            1 => (0u16..40).prop_map(|d| Op::Push { seq: d, dt: 0, len: 2 }),
            // Indices anywhere, near the start and at the very top of the space.
            3 => (any::<u64>(), 0u16..200, 0u16..1600).prop_map(|(index, dt, len)| Op::PushFrame { index, dt, len }),
            3 => (0u64..3000, 0u16..60).prop_map(|(index, dt)| Op::PushFrame { index, dt, len: 2 }),
            2 => (0u64..200, 0u16..60).prop_map(|(i, dt)| Op::PushFrame { index: u64::MAX - i, dt, len: 2 }),
            6 => (0u16..60).prop_map(|dt| Op::Pop { dt }),
            1 => Just(Op::Reset),
            1 => Just(Op::End),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_push_pop_never_panics_and_stays_bounded(
            ops in proptest::collection::vec(op(), 0..400),
            capacity in 6usize..60,
            start in any::<u64>(),
        ) {
            let config = JitterConfig { capacity, max_delay_ms: 60, ..JitterConfig::default() };
            let mut b = JitterBuffer::new(config).unwrap();
            let mut now = start;
            let (mut packets, mut fec, mut conceal, mut pushes) = (0u64, 0u64, 0u64, 0u64);
            for op in ops {
                match op {
                    Op::Push { seq, dt, len } => {
                        now = now.wrapping_add(u64::from(dt));
                        b.push(seq, now, vec![7; usize::from(len)]);
                        pushes += 1;
                    }
                    Op::PushFrame { index, dt, len } => {
                        now = now.wrapping_add(u64::from(dt));
                        b.push_frame(index, now, vec![7; usize::from(len)]);
                        pushes += 1;
                    }
                    Op::End => b.end_of_stream(),
                    Op::Pop { dt } => {
                        now = now.wrapping_add(u64::from(dt));
                        match b.pop(now) {
                            Playout::Packet(p) => { packets += 1; prop_assert!(!p.is_empty()); }
                            Playout::FecFrom(p) => { fec += 1; prop_assert!(!p.is_empty()); }
                            Playout::Conceal => conceal += 1,
                            Playout::Wait => {}
                        }
                    }
                    Op::Reset => b.reset(),
                }
                prop_assert!(b.len() <= capacity);
                prop_assert!(b.seen.len() <= capacity * 4);
                prop_assert!(b.coverage.recent.len() <= ACCOUNTING_WINDOW);
                let s = b.stats();
                prop_assert_eq!(s.pushed(), pushes);
                prop_assert!(s.distinct_frames <= pushes);
                prop_assert!(s.target_delay_ms >= config.min_delay_ms && s.target_delay_ms <= config.max_delay_ms);
                prop_assert_eq!(s.received, s.played + s.dropped_for_latency + s.dropped_full + s.dropped_on_reset + u64::from(s.buffered));
                prop_assert_eq!((s.played, s.fec_recovered, s.concealed + s.concealed_at_end), (packets, fec, conceal));
                prop_assert!(s.lost <= s.fec_recovered + s.concealed);
            }
        }

        /// An honest authenticated stream (each index at most once, any loss, any reordering
        /// within 200 ms): playout is in index order, nothing is a duplicate, and the frame
        /// accounting balances with the sender's count.
        #[test]
        fn an_honest_indexed_stream_plays_in_order_and_balances(
            n in 1u64..400,
            loss_per_mille in 0u32..300,
            spread in 0u64..200,
            seed in any::<u64>(),
        ) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut arrivals: Vec<(u64, u64)> = Vec::new();
            for k in 0..n {
                let extra = rng.random_range(0..spread.max(1));
                if rng.random_range(0..1000) >= loss_per_mille {
                    arrivals.push((k, k * 20 + 5 + extra));
                }
            }
            let mut b = jb();
            let (out, _, _) = run_indexed(&mut b, &arrivals);
            let played = said_played(&out);
            prop_assert!(played.windows(2).all(|w| w[0] < w[1]), "{:?}", played);
            let s = b.stats();
            prop_assert_eq!(s.duplicates, 0);
            prop_assert_eq!(s.distinct_frames, arrivals.len() as u64);
            let counts = crate::accounting::FrameCounts {
                sent: n,
                arrived: Some(arrivals.len() as u64),
                decrypted: arrivals.len() as u64,
                jitter: s,
                ..Default::default()
            };
            let r = counts.reconcile();
            prop_assert!(r.is_balanced(), "{:?}", r);
            prop_assert_eq!(r.lost, n - arrivals.len() as u64);
        }
    }
}
