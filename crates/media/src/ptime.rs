//! Packets of 20, 40 or 60 ms on top of a pipeline that runs on 20 ms frames.
//!
//! Capture, the jitter buffer and playout all tick every 20 ms. Only the packets change
//! length: at the low bitrate steps one packet carries 40 or 60 ms, so the ~82 bytes of
//! headers every packet pays on the wire are paid half or a third as often
//! (`aparte_call_policy::bitrate`).
//!
//! - Sending, [`Packetizer`] gathers 20 ms frames and encodes one Opus packet once it holds
//!   the packet time's worth. A new packet time takes effect at the next packet boundary, so a
//!   switch neither drops nor repeats audio.
//! - The packet's **index** (the authenticated e2ee position) counts 20 ms frames, not
//!   packets: a packet of `n` frames takes indices `i..i+n` and the next one starts at `i+n`
//!   (the sender's frame counter advances by `n`, `aparte_session::Session::protect_media_frames`).
//!   So the index stays a clock in 20 ms units whatever the packet time, which is what the
//!   jitter buffer's timing model, its loss accounting and playout order need.
//! - Receiving, [`split`] turns one packet into one jitter buffer entry per 20 ms frame, each
//!   at its own index and at the arrival time it would have had as a 20 ms packet (so the
//!   buffer's delay model sees a steady stream, not a burst every 60 ms). [`Depacketizer`]
//!   takes the buffer's answer for each tick and gives one 20 ms frame: the first entry of a
//!   packet decodes the whole packet, the others take their frame from it.
//! - A lost packet is concealed one 20 ms frame per tick, for as many ticks as it was long.
//!   Opus's in-band FEC in a 40 or 60 ms packet covers the whole packet before it, which
//!   libopus only rebuilds in one piece; by the time the next packet is there, most of the
//!   lost one has been concealed already (see `docs/MEDIA.md` for the measured figures), so
//!   only 20 ms packets use FEC.
//!
//! A packet of any other duration (10 ms, 80 ms, …), or one that does not parse, is kept as a
//! single entry and refused by the decoder (concealed and counted), never a panic.

use crate::codec::{packet_frames, CodecError, Decoder, Encoder};
use crate::jitter::Playout;
use crate::{FRAME_MS, FRAME_SAMPLES};

/// The bytes an entry adds in front of the Opus packet: the packet's first index (8) and the
/// entry's part number (1).
const ENTRY_HEADER: usize = 9;

/// The packet times [`Packetizer`] accepts, in ms.
pub const PACKET_TIMES_MS: [u32; 3] = [20, 40, 60];

/// Frames per packet for a packet time in ms, if it is one of [`PACKET_TIMES_MS`].
pub fn frames_for_ms(packet_ms: u32) -> Option<usize> {
    PACKET_TIMES_MS
        .contains(&packet_ms)
        .then_some((packet_ms / FRAME_MS) as usize)
}

/// Gathers 20 ms frames into packets of the current packet time.
#[derive(Debug)]
pub struct Packetizer {
    encoder: Encoder,
    /// Frames per packet for the packet being gathered.
    frames: usize,
    /// Frames per packet from the next packet on.
    next_frames: usize,
    gathered: Vec<f32>,
}

impl Packetizer {
    /// A packetizer sending 20 ms packets with this encoder.
    pub fn new(encoder: Encoder) -> Self {
        Self {
            encoder,
            frames: 1,
            next_frames: 1,
            gathered: Vec::with_capacity(3 * FRAME_SAMPLES),
        }
    }

    /// The encoder (to change its bitrate or loss hint; those apply to the next packet
    /// encoded, so change them at a packet boundary, [`Self::at_boundary`], to keep every
    /// packet of a step the same size).
    pub fn encoder_mut(&mut self) -> &mut Encoder {
        &mut self.encoder
    }

    /// The encoder, read-only.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Sets the packet time, ms (20, 40 or 60), from the next packet on: the packet being
    /// gathered keeps its length, so no audio is dropped or repeated.
    pub fn set_packet_ms(&mut self, packet_ms: u32) -> Result<(), CodecError> {
        let frames = frames_for_ms(packet_ms).ok_or(CodecError::InvalidConfig(
            "packet time must be 20, 40 or 60 ms",
        ))?;
        self.next_frames = frames;
        if self.gathered.is_empty() {
            self.frames = frames;
        }
        Ok(())
    }

    /// The packet time of the packet being gathered (or the next one), ms.
    pub fn packet_ms(&self) -> u32 {
        self.frames as u32 * FRAME_MS
    }

    /// No frame is waiting: the next frame starts a new packet.
    pub fn at_boundary(&self) -> bool {
        self.gathered.is_empty()
    }

    /// Takes one 20 ms frame; returns `(packet, frames in it)` when a packet is complete.
    /// On an encoding error the gathered frames are dropped (the packet is lost, as if on
    /// the network) and the next frame starts afresh.
    pub fn push_frame(&mut self, frame: &[f32]) -> Result<Option<(Vec<u8>, usize)>, CodecError> {
        if frame.len() != FRAME_SAMPLES {
            return Err(CodecError::WrongFrameLength { got: frame.len() });
        }
        self.gathered.extend_from_slice(frame);
        if self.gathered.len() < self.frames * FRAME_SAMPLES {
            return Ok(None);
        }
        let frames = self.frames;
        let result = self.encoder.encode_f32(&self.gathered);
        self.gathered.clear();
        self.frames = self.next_frames;
        result.map(|packet| Some((packet, frames)))
    }

    /// Completes the packet being gathered with silence (the input ended) and returns it, if
    /// any frame was waiting.
    pub fn flush(&mut self) -> Result<Option<(Vec<u8>, usize)>, CodecError> {
        if self.gathered.is_empty() {
            return Ok(None);
        }
        let mut out = None;
        while out.is_none() {
            out = self.push_frame(&[0.0; FRAME_SAMPLES])?;
        }
        Ok(out)
    }

    /// Drops the frames gathered so far (sending paused: they would be stale once it
    /// resumes). Returns how many were dropped.
    pub fn discard(&mut self) -> usize {
        let n = self.gathered.len() / FRAME_SAMPLES;
        self.gathered.clear();
        self.frames = self.next_frames;
        n
    }
}

/// One jitter buffer entry per 20 ms frame of `packet`, whose first frame has `index` and
/// which arrived at `arrival_ms`: `(index, arrival_ms, entry)` for
/// [`JitterBuffer::push_frame`](crate::jitter::JitterBuffer::push_frame). A packet whose
/// duration is not 20, 40 or 60 ms gives one entry, which [`Depacketizer`] refuses.
pub fn split(index: u64, arrival_ms: u64, packet: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let frames = packet_frames(packet).unwrap_or(1);
    (0..frames)
        .map(|part| {
            let mut entry = Vec::with_capacity(ENTRY_HEADER + packet.len());
            entry.extend_from_slice(&index.to_be_bytes());
            entry.push(part as u8);
            entry.extend_from_slice(packet);
            let step = part as u64 * u64::from(FRAME_MS);
            (
                index.saturating_add(part as u64),
                arrival_ms.saturating_add(step),
                entry,
            )
        })
        .collect()
}

/// An entry made by [`split`]: (the packet's first index, this entry's part, the packet).
fn parse_entry(entry: &[u8]) -> Option<(u64, usize, &[u8])> {
    let (first, rest) = entry.split_first_chunk::<8>()?;
    let (&part, packet) = rest.split_first()?;
    Some((u64::from_be_bytes(*first), usize::from(part), packet))
}

/// What [`Depacketizer::play`] did for one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Played {
    /// Decoded from its packet (now, or when the packet's first entry played).
    Decoded,
    /// Rebuilt from the next packet's FEC.
    Fec,
    /// Concealed (lost or waited for).
    Concealed,
    /// The packet was refused (wrong duration, corrupt): concealed instead.
    DecodeFailed,
    /// Playout has not started: silence, the decoder untouched.
    Silence,
}

/// The packet last decoded, for its later entries.
#[derive(Debug)]
struct Decoded {
    first: u64,
    samples: Vec<f32>,
}

/// Turns the jitter buffer's per-tick answers into 20 ms frames, decoding each packet once.
#[derive(Debug)]
pub struct Depacketizer {
    decoder: Decoder,
    last: Option<Decoded>,
}

impl Depacketizer {
    /// A depacketizer decoding with `decoder`.
    pub fn new(decoder: Decoder) -> Self {
        Self {
            decoder,
            last: None,
        }
    }

    /// One 20 ms frame for this tick's [`Playout`].
    pub fn play(&mut self, playout: Playout) -> (Vec<f32>, Played) {
        match playout {
            Playout::Packet(entry) => match self.frame_of(&entry, 0) {
                Some(frame) => (frame, Played::Decoded),
                None => (self.conceal(), Played::DecodeFailed),
            },
            Playout::FecFrom(entry) => match parse_entry(&entry) {
                // The next entry starts a packet: rebuild the frame before it from its FEC.
                Some((_, 0, packet)) => match self.decoder.recover_fec_f32(packet) {
                    Ok(frame) => (frame, Played::Fec),
                    Err(_) => (self.conceal(), Played::DecodeFailed),
                },
                // The next entry is inside a packet: the lost frame is the one before it in
                // the same packet (its entry was dropped, not lost on the way).
                Some(_) => match self.frame_of(&entry, 1) {
                    Some(frame) => (frame, Played::Decoded),
                    None => (self.conceal(), Played::DecodeFailed),
                },
                None => (self.conceal(), Played::DecodeFailed),
            },
            Playout::Conceal => (self.conceal(), Played::Concealed),
            Playout::Wait => (vec![0.0; FRAME_SAMPLES], Played::Silence),
        }
    }

    /// The frame `back` frames before `entry`'s own, from its packet (decoded now unless it
    /// already was).
    fn frame_of(&mut self, entry: &[u8], back: usize) -> Option<Vec<f32>> {
        let (first, part, packet) = parse_entry(entry)?;
        let part = part.checked_sub(back)?;
        // A packet's first frame always decodes it afresh: a stale copy of a packet with the
        // same index (a sender that restarted) must not play instead.
        if part == 0 || self.last.as_ref().is_none_or(|d| d.first != first) {
            self.last = None;
            let samples = self.decoder.decode_f32(packet).ok()?;
            self.last = Some(Decoded { first, samples });
        }
        let samples = &self.last.as_ref()?.samples;
        samples
            .get(part * FRAME_SAMPLES..(part + 1) * FRAME_SAMPLES)
            .map(<[f32]>::to_vec)
    }

    fn conceal(&mut self) -> Vec<f32> {
        self.decoder
            .conceal_f32()
            .unwrap_or_else(|_| vec![0.0; FRAME_SAMPLES])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::speechlike;
    use crate::codec::EncoderConfig;
    use crate::jitter::{JitterBuffer, JitterConfig};
    use crate::metrics;

    /// A sent packet: its first index, the Opus bytes, how many frames.
    struct Sent {
        index: u64,
        packet: Vec<u8>,
        frames: usize,
    }

    /// Encodes `input` frame by frame, the packet time following `packet_ms_at(frame)` as the
    /// call's ladder would set it; indices advance by the frames in each packet, as the
    /// session's `protect_media_frames` numbers them.
    fn send(input: &[f32], bitrate: u32, packet_ms_at: &dyn Fn(usize) -> u32) -> Vec<Sent> {
        let encoder = Encoder::new(EncoderConfig {
            bitrate,
            ..EncoderConfig::default()
        })
        .unwrap();
        let mut p = Packetizer::new(encoder);
        let mut next_index = 0;
        let mut out = Vec::new();
        for (k, frame) in input.chunks_exact(FRAME_SAMPLES).enumerate() {
            p.set_packet_ms(packet_ms_at(k)).unwrap();
            if let Some((packet, frames)) = p.push_frame(frame).unwrap() {
                out.push(Sent {
                    index: next_index,
                    packet,
                    frames,
                });
                next_index += frames as u64;
            }
        }
        if let Some((packet, frames)) = p.flush().unwrap() {
            out.push(Sent {
                index: next_index,
                packet,
                frames,
            });
        }
        out
    }

    /// Plays `sent` through split → jitter buffer → depacketizer on a simulated clock; each
    /// packet arrives 15 ms after its last frame was captured, unless `lost(packet number)`.
    /// Returns what was played from the first audible tick on, and how each tick was made.
    fn receive(sent: &[Sent], lost: &dyn Fn(usize) -> bool) -> (Vec<f32>, Vec<Played>) {
        let (out, how, _) = receive_with_stats(sent, lost);
        (out, how)
    }

    /// [`receive`], with the jitter buffer's counters at the end.
    fn receive_with_stats(
        sent: &[Sent],
        lost: &dyn Fn(usize) -> bool,
    ) -> (Vec<f32>, Vec<Played>, crate::jitter::JitterStats) {
        let mut jitter = JitterBuffer::new(JitterConfig::default()).unwrap();
        let mut depacketizer = Depacketizer::new(Decoder::new().unwrap());
        let arrivals: Vec<(u64, &Sent)> = sent
            .iter()
            .enumerate()
            .filter(|(n, _)| !lost(*n))
            .map(|(_, s)| ((s.index + s.frames as u64) * 20 + 15, s))
            .collect();
        let end = sent.last().map_or(0, |s| s.index + s.frames as u64) * 20 + 400;
        let mut next = 0;
        let (mut out, mut how) = (Vec::new(), Vec::new());
        for now in (0..end).step_by(20) {
            while next < arrivals.len() && arrivals[next].0 <= now {
                let (at, s) = arrivals[next];
                for (i, a, e) in split(s.index, at, &s.packet) {
                    jitter.push_frame(i, a, e);
                }
                next += 1;
            }
            if next == arrivals.len() && jitter.is_empty() {
                jitter.end_of_stream();
            }
            let (frame, played) = depacketizer.play(jitter.pop(now));
            assert_eq!(frame.len(), FRAME_SAMPLES);
            if played != Played::Silence {
                out.extend(frame);
                how.push(played);
            }
        }
        (out, how, jitter.stats())
    }

    #[test]
    fn sixty_ms_packets_play_as_20_ms_frames_with_nothing_lost() {
        let input = speechlike(150);
        let sent = send(&input, 12_000, &|_| 60);
        assert_eq!(sent.len(), 50);
        assert!(sent.iter().all(|s| s.frames == 3));
        let (out, how) = receive(&sent, &|_| false);
        assert_eq!(out.len(), input.len(), "every frame played once");
        assert!(how.iter().all(|p| *p == Played::Decoded), "{how:?}");
        let a = metrics::align(&input, &out, 2 * FRAME_SAMPLES).unwrap();
        println!(
            "12 kbit/s in 60 ms packets through the jitter buffer: NCC {:.3}",
            a.ncc
        );
        assert!(a.ncc > 0.75, "NCC {:.3}", a.ncc);
    }

    /// Switching 20 → 60 → 40 → 20 ms mid-stream: the switches wait for a packet boundary,
    /// the indices stay gap-free and overlap-free, every frame is sent once and none is played
    /// twice or out of order. The receiver must follow the sender's gathering delay, though:
    /// when packets grow from 20 to 60 ms the frame after the switch arrives 40 ms later than
    /// its predecessors' pace. The jitter buffer waits one tick (its target is 20 ms) and then
    /// gives that frame up, so the switch costs 40 ms of concealment and one 20 ms frame that
    /// arrives late (measured here; docs/MEDIA.md). Shorter packets only lower the delay.
    #[test]
    fn switching_packet_time_mid_stream_neither_drops_nor_repeats() {
        let input = speechlike(200);
        let plan = |k: usize| match k {
            0..=40 => 20,
            41..=100 => 60,
            101..=150 => 40,
            _ => 20,
        };
        let sent = send(&input, 16_000, &plan);
        let mut expect = 0;
        for s in &sent {
            assert_eq!(s.index, expect, "indices are gap-free");
            assert_eq!(packet_frames(&s.packet), Some(s.frames));
            expect += s.frames as u64;
        }
        assert_eq!(expect, 200);
        let lengths: Vec<usize> = sent.iter().map(|s| s.frames).collect();
        assert!(lengths.contains(&1) && lengths.contains(&2) && lengths.contains(&3));
        let (out, how, stats) = receive_with_stats(&sent, &|_| false);
        println!(
            "20/60/40/20 ms: played {}, waited {} ticks, given up {} (late {}), dropped {} for \
             latency",
            stats.played, stats.stretched, stats.lost, stats.late, stats.dropped_for_latency
        );
        // Every frame is played, dropped to win back delay, or given up and then late; none
        // is played twice or lost on the way.
        assert_eq!(
            stats.played + stats.dropped_for_latency + stats.late,
            200,
            "{stats:?}"
        );
        assert_eq!(stats.duplicates, 0);
        assert_eq!(
            stats.lost, stats.late,
            "only the frame that came late is given up"
        );
        // The growth to 60 ms packets costs at most two ticks (40 ms, the added delay).
        assert!(stats.stretched + stats.lost <= 2, "{stats:?}");
        assert!(stats.dropped_for_latency <= 2, "{stats:?}");
        let decoded: Vec<f32> = out
            .chunks_exact(FRAME_SAMPLES)
            .zip(&how)
            .filter(|(_, p)| **p == Played::Decoded)
            .flat_map(|(f, _)| f.to_vec())
            .collect();
        assert_eq!(decoded.len() as u64, stats.played * FRAME_SAMPLES as u64);
        // The decoded frames are the input in order: before the switch, and after it shifted
        // by the frames given up (a repeat or a misplaced frame would break either).
        let frames = |a: usize, b: usize| a * FRAME_SAMPLES..b * FRAME_SAMPLES;
        let gone = (stats.lost + stats.dropped_for_latency) as usize;
        let before = metrics::align(&input[frames(0, 40)], &decoded[frames(0, 40)], 960).unwrap();
        let after = metrics::align(
            &input[frames(60 + gone, 140)],
            &decoded[frames(60, 140 - gone)],
            960,
        )
        .unwrap();
        println!(
            "before the switch NCC {:.3} (lag {}), after {:.3} (lag {})",
            before.ncc, before.lag, after.ncc, after.lag
        );
        assert!(before.ncc > 0.75 && after.ncc > 0.75);
        assert!(before.lag.abs_diff(after.lag) <= 10);
    }

    /// A lost 60 ms packet is concealed for exactly its three ticks, and the next packet
    /// plays in its place in time.
    #[test]
    fn a_lost_sixty_ms_packet_is_concealed_for_its_whole_duration() {
        let input = speechlike(90);
        let sent = send(&input, 12_000, &|_| 60);
        let (out, how) = receive(&sent, &|n| n == 10);
        assert_eq!(out.len(), input.len(), "the gap is filled, not skipped");
        let concealed: Vec<usize> = how
            .iter()
            .enumerate()
            .filter(|(_, p)| **p != Played::Decoded)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(concealed, vec![30, 31, 32], "{how:?}");
        assert_eq!(
            how[32],
            Played::Fec,
            "the last frame before a packet tries its FEC"
        );
        // The rest still lines up with the input.
        let a = metrics::align(&input[40 * 960..], &out[40 * 960..], 2 * FRAME_SAMPLES).unwrap();
        assert!(a.ncc > 0.75, "NCC {:.3}", a.ncc);
    }

    /// Hostile or odd input: packets of other durations, garbage, malformed entries. Each
    /// is concealed and reported, never a panic.
    #[test]
    fn other_durations_and_garbage_are_concealed_not_played() {
        let mut raw = opus::Encoder::new(
            crate::SAMPLE_RATE,
            opus::Channels::Mono,
            opus::Application::Voip,
        )
        .unwrap();
        let ten_ms = raw.encode_vec_float(&[0.0; 480], 400).unwrap();
        let eighty_ms = raw.encode_vec_float(&[0.0; 3840], 4000).unwrap();
        let mut d = Depacketizer::new(Decoder::new().unwrap());
        for packet in [ten_ms, eighty_ms, vec![0xff; 7], vec![]] {
            let entries = split(5, 100, &packet);
            assert_eq!(entries.len(), 1, "one entry, refused when played");
            let (frame, played) = d.play(Playout::Packet(entries[0].2.clone()));
            assert_eq!(frame.len(), FRAME_SAMPLES);
            assert_eq!(played, Played::DecodeFailed);
            let (_, played) = d.play(Playout::FecFrom(entries[0].2.clone()));
            assert_eq!(played, Played::DecodeFailed);
        }
        for entry in [
            vec![],
            vec![1, 2, 3],
            vec![0; 9],
            vec![0, 0, 0, 0, 0, 0, 0, 0, 7, 1],
        ] {
            let (frame, played) = d.play(Playout::Packet(entry));
            assert_eq!((frame.len(), played), (FRAME_SAMPLES, Played::DecodeFailed));
        }
        // An entry numbered beyond its packet's frames.
        let mut enc = Encoder::new(EncoderConfig::default()).unwrap();
        let p = enc.encode_f32(&[0.0; FRAME_SAMPLES]).unwrap();
        let mut entry = split(9, 0, &p).remove(0).2;
        entry[8] = 2;
        assert_eq!(d.play(Playout::Packet(entry)).1, Played::DecodeFailed);
        // Indices at the very end of the range saturate instead of overflowing.
        let mut enc = Packetizer::new(Encoder::new(EncoderConfig::default()).unwrap());
        enc.set_packet_ms(60).unwrap();
        let mut last = None;
        for _ in 0..3 {
            last = enc.push_frame(&[0.0; FRAME_SAMPLES]).unwrap();
        }
        let (p, _) = last.unwrap();
        let e = split(u64::MAX - 1, u64::MAX, &p);
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].0, u64::MAX);
        assert!(
            Packetizer::new(Encoder::new(EncoderConfig::default()).unwrap())
                .set_packet_ms(30)
                .is_err()
        );
    }

    #[test]
    fn flush_and_discard_finish_or_drop_a_partial_packet() {
        let mut p = Packetizer::new(Encoder::new(EncoderConfig::default()).unwrap());
        p.set_packet_ms(60).unwrap();
        assert_eq!(p.push_frame(&[0.1; FRAME_SAMPLES]).unwrap(), None);
        // A change while gathering waits for the boundary.
        p.set_packet_ms(20).unwrap();
        assert_eq!(p.packet_ms(), 60);
        let (packet, frames) = p.flush().unwrap().unwrap();
        assert_eq!((frames, packet_frames(&packet)), (3, Some(3)));
        assert_eq!(p.packet_ms(), 20);
        assert!(p.at_boundary() && p.flush().unwrap().is_none());
        p.set_packet_ms(40).unwrap();
        p.push_frame(&[0.1; FRAME_SAMPLES]).unwrap();
        assert_eq!(p.discard(), 1);
        assert!(p.at_boundary());
        assert!(p.push_frame(&[0.0; 10]).is_err());
    }
}
